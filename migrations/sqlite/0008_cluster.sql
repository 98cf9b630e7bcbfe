-- Scale-out (issue 14). Cluster mode needs Postgres; on SQLite the server is single-node (an
-- exclusive lock on the index file keeps a second process out). These tables and the column keep
-- the SQLite schema in step with Postgres (the queries are shared) and stay empty here; their
-- meaning is described in migrations/postgres/0008_cluster.sql.

CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY,
    advertise_host TEXT NOT NULL,
    api_port       INTEGER,
    video_port     INTEGER NOT NULL,
    lease_ms       INTEGER NOT NULL,
    started_us     INTEGER NOT NULL,
    heartbeat_us   INTEGER NOT NULL
);

CREATE TABLE stream_leases (
    stream_id  TEXT PRIMARY KEY,
    owner      TEXT,
    expires_us INTEGER NOT NULL,
    epoch      INTEGER NOT NULL
);

-- Which node recorded a segment; always NULL on SQLite.
ALTER TABLE segments ADD COLUMN node_id TEXT;
