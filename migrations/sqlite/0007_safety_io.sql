-- Data safety under faults (issue 10): read leases, clock corrections, upload counters, purges.

-- Read lease of a segment: a reader (archive playback, export; of any process sharing this index)
-- sets it to a time shortly ahead and keeps moving it forward while it reads; retention does not
-- delete the segment and the uploader does not move it until the time has passed. A lease is taken
-- by an UPDATE of the row that also checks the row is still playable, and retention marks a row
-- `deleting` by an UPDATE that checks the lease has passed: both write the same row, so one of the
-- two always sees the other. NULL: never leased. Not indexed (only read with the row).
ALTER TABLE segments ADD COLUMN lease_until_us INTEGER;

-- The recorder re-anchors a session's wall clock when the camera's timeline drifts from the server
-- clock by more than `[archive] max_drift_ms`, at the next segment boundary. The correction it
-- applied at this segment's start (new anchor minus the old one, µs; negative when the camera
-- clock ran fast). NULL: no correction at this segment.
ALTER TABLE segments ADD COLUMN clock_correction_us INTEGER;

-- Number of segments per upload_state, maintained by triggers on `segments` so the upload status
-- (GET /api/v1/archive/uploads) never counts the whole table.
CREATE TABLE upload_counts (
    id          INTEGER PRIMARY KEY CHECK (id = 1), -- always 1: the single row
    n_none      INTEGER NOT NULL,                    -- segments with upload_state 'none'
    n_local     INTEGER NOT NULL,                    -- ... 'local' (waiting, or still recording)
    n_uploading INTEGER NOT NULL,                    -- ... 'uploading'
    n_remote    INTEGER NOT NULL                     -- ... 'remote' (in S3)
);
INSERT INTO upload_counts (id, n_none, n_local, n_uploading, n_remote)
SELECT 1,
       COALESCE(SUM(upload_state = 'none'), 0),
       COALESCE(SUM(upload_state = 'local'), 0),
       COALESCE(SUM(upload_state = 'uploading'), 0),
       COALESCE(SUM(upload_state = 'remote'), 0)
FROM segments;

CREATE TRIGGER segments_upload_count_insert AFTER INSERT ON segments
BEGIN
    UPDATE upload_counts SET
        n_none = n_none + (NEW.upload_state = 'none'),
        n_local = n_local + (NEW.upload_state = 'local'),
        n_uploading = n_uploading + (NEW.upload_state = 'uploading'),
        n_remote = n_remote + (NEW.upload_state = 'remote')
    WHERE id = 1;
END;
CREATE TRIGGER segments_upload_count_delete AFTER DELETE ON segments
BEGIN
    UPDATE upload_counts SET
        n_none = n_none - (OLD.upload_state = 'none'),
        n_local = n_local - (OLD.upload_state = 'local'),
        n_uploading = n_uploading - (OLD.upload_state = 'uploading'),
        n_remote = n_remote - (OLD.upload_state = 'remote')
    WHERE id = 1;
END;
CREATE TRIGGER segments_upload_count_update AFTER UPDATE OF upload_state ON segments
WHEN OLD.upload_state IS NOT NEW.upload_state
BEGIN
    UPDATE upload_counts SET
        n_none = n_none + (NEW.upload_state = 'none') - (OLD.upload_state = 'none'),
        n_local = n_local + (NEW.upload_state = 'local') - (OLD.upload_state = 'local'),
        n_uploading = n_uploading + (NEW.upload_state = 'uploading') - (OLD.upload_state = 'uploading'),
        n_remote = n_remote + (NEW.upload_state = 'remote') - (OLD.upload_state = 'remote')
    WHERE id = 1;
END;

-- `DELETE /api/v1/streams/{id}?purge=true`: the stream row is gone, its archive is to be deleted by
-- retention (a crash-consistent delete, in batches, resumed after a restart). Segments overlapping
-- a protected range are kept. The row goes once nothing deletable is left.
CREATE TABLE stream_purges (
    stream_id       TEXT PRIMARY KEY,            -- UUID, hyphenated lower case
    requested_at_us INTEGER NOT NULL             -- segments that started before this are purged
);
