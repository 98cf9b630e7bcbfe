-- Storage roots (archive directories) and their marker files. Every directory that holds segment
-- files gets a small marker file (`.video-server-root`) carrying the id recorded here. At start-up
-- and periodically the server reads the marker: only a root whose marker is present and carries
-- this id is trusted to say "a file is gone". An absent or different marker (a disk not mounted
-- yet, the wrong disk) makes the root unavailable: its rows are never marked `missing`, /readyz
-- reports it, and it is reconciled once the marker is back (archive::roots).
CREATE TABLE storage_roots (
    id            UUID PRIMARY KEY,               -- written into the root's marker file
    path          TEXT NOT NULL UNIQUE,           -- absolute directory path, as segment keys start
    created_at_us BIGINT NOT NULL,                -- when the marker was first written (or adopted)
    last_seen_us  BIGINT NOT NULL                 -- last time the marker was found and matched
);

-- File paths compare bytewise (collation "C"), whatever the database's default collation: the
-- rows under one root are the key range `root/` .. `root0`, which only holds for byte order. Only
-- the collation changes (same type), so no row is rewritten.
ALTER TABLE segments ALTER COLUMN storage_key TYPE TEXT COLLATE "C";

-- Segment rows by file path: "is this file indexed?" (reconciliation of files without rows) and
-- "the rows under one root" become index probes instead of table scans.
CREATE INDEX segments_storage_key ON segments (storage_key);

-- Rows whose file was not found: checked at every root check for their file coming back, so they
-- are restored (state `complete`, runs re-derived) without scanning the table.
CREATE INDEX segments_missing ON segments (id) WHERE state = 'missing';
