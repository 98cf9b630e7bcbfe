-- Data safety under faults (issue 10): read leases, clock corrections, upload counters, purges.

-- Read lease of a segment: a reader (archive playback, export; of any process sharing this index)
-- sets it to a time shortly ahead and keeps moving it forward while it reads; retention does not
-- delete the segment and the uploader does not move it until the time has passed. A lease is taken
-- by an UPDATE of the row that also checks the row is still playable, and retention marks a row
-- `deleting` by an UPDATE that checks the lease has passed: both write the same row, so one of the
-- two always sees the other. NULL: never leased. Not indexed (only read with the row).
ALTER TABLE segments ADD COLUMN lease_until_us BIGINT;

-- The recorder re-anchors a session's wall clock when the camera's timeline drifts from the server
-- clock by more than `[archive] max_drift_ms`, at the next segment boundary. The correction it
-- applied at this segment's start (new anchor minus the old one, µs; negative when the camera
-- clock ran fast). NULL: no correction at this segment.
ALTER TABLE segments ADD COLUMN clock_correction_us BIGINT;

-- Number of segments per upload_state, maintained by triggers on `segments` so the upload status
-- (GET /api/v1/archive/uploads) never counts the whole table. One row, so a change touching two
-- states locks one row (no lock-order deadlocks between concurrent updates).
CREATE TABLE upload_counts (
    id          INTEGER PRIMARY KEY CHECK (id = 1), -- always 1: the single row
    n_none      BIGINT NOT NULL,                     -- segments with upload_state 'none'
    n_local     BIGINT NOT NULL,                     -- ... 'local' (waiting, or still recording)
    n_uploading BIGINT NOT NULL,                     -- ... 'uploading'
    n_remote    BIGINT NOT NULL                      -- ... 'remote' (in S3)
);
INSERT INTO upload_counts (id, n_none, n_local, n_uploading, n_remote)
SELECT 1,
       COUNT(*) FILTER (WHERE upload_state = 'none'),
       COUNT(*) FILTER (WHERE upload_state = 'local'),
       COUNT(*) FILTER (WHERE upload_state = 'uploading'),
       COUNT(*) FILTER (WHERE upload_state = 'remote')
FROM segments;

CREATE FUNCTION segments_upload_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d_none BIGINT := 0;
    d_local BIGINT := 0;
    d_uploading BIGINT := 0;
    d_remote BIGINT := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        d_none := d_none - (OLD.upload_state = 'none')::int;
        d_local := d_local - (OLD.upload_state = 'local')::int;
        d_uploading := d_uploading - (OLD.upload_state = 'uploading')::int;
        d_remote := d_remote - (OLD.upload_state = 'remote')::int;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        d_none := d_none + (NEW.upload_state = 'none')::int;
        d_local := d_local + (NEW.upload_state = 'local')::int;
        d_uploading := d_uploading + (NEW.upload_state = 'uploading')::int;
        d_remote := d_remote + (NEW.upload_state = 'remote')::int;
    END IF;
    UPDATE upload_counts SET n_none = n_none + d_none, n_local = n_local + d_local,
        n_uploading = n_uploading + d_uploading, n_remote = n_remote + d_remote
    WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER segments_upload_count_insert AFTER INSERT ON segments
    FOR EACH ROW EXECUTE FUNCTION segments_upload_count();
CREATE TRIGGER segments_upload_count_delete AFTER DELETE ON segments
    FOR EACH ROW EXECUTE FUNCTION segments_upload_count();
CREATE TRIGGER segments_upload_count_update AFTER UPDATE OF upload_state ON segments
    FOR EACH ROW WHEN (OLD.upload_state IS DISTINCT FROM NEW.upload_state)
    EXECUTE FUNCTION segments_upload_count();

-- `DELETE /api/v1/streams/{id}?purge=true`: the stream row is gone, its archive is to be deleted by
-- retention (a crash-consistent delete, in batches, resumed after a restart). Segments overlapping
-- a protected range are kept. The row goes once nothing deletable is left.
CREATE TABLE stream_purges (
    stream_id       UUID PRIMARY KEY,
    requested_at_us BIGINT NOT NULL              -- segments that started before this are purged
);
