-- Initial schema (PostgreSQL dialect). The SQLite migration of the same number defines the same tables.
-- Times are integer microseconds since the Unix epoch (UTC) unless a column name says otherwise.

-- A camera or virtual camera. Seeded from the config file on first sight, then owned by the API:
-- once a row exists, the database is the source of truth.
CREATE TABLE streams (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL DEFAULT '',
    source_kind         TEXT NOT NULL CHECK (source_kind IN ('rtsp', 'file')),
    url                 TEXT NOT NULL DEFAULT '',  -- RTSP URL (may embed credentials); '' for files
    rtsp_transport      TEXT NOT NULL DEFAULT 'tcp' CHECK (rtsp_transport IN ('tcp', 'udp')),
    file_path           TEXT NOT NULL DEFAULT '',  -- MP4 path for file sources
    file_loop           BOOLEAN NOT NULL DEFAULT FALSE,
    output_types        TEXT NOT NULL DEFAULT '',  -- comma-separated, in configured order: 'mse,hls'
    on_demand           BOOLEAN,                   -- NULL inherits [on_demand] enabled
    enabled             BOOLEAN NOT NULL DEFAULT TRUE,
    verbose_level       TEXT NOT NULL DEFAULT '',
    archive_recording   BOOLEAN NOT NULL DEFAULT FALSE,
    archive_ms_per_file INTEGER,                   -- NULL inherits [archive] ms_per_file
    archive_storage     TEXT NOT NULL DEFAULT 'filesystem' CHECK (archive_storage IN ('filesystem', 's3')),
    archive_directory   TEXT,                      -- NULL inherits [archive] directory
    archive_bucket      TEXT,                      -- NULL inherits [s3] bucket
    archive_prefix      TEXT,                      -- NULL inherits [s3] prefix
    retention_max_age_s BIGINT,                    -- NULL: keep forever
    retention_max_bytes BIGINT,                    -- NULL: no size cap
    origin              TEXT NOT NULL DEFAULT 'api' CHECK (origin IN ('config', 'api')),
    created_at_us       BIGINT NOT NULL,
    updated_at_us       BIGINT NOT NULL
);

-- One codec setup (the ftyp+moov of a fragmented MP4). Segments that share a setup share a row,
-- so playback can send the init segment without opening a file.
CREATE TABLE init_segments (
    id          BIGSERIAL PRIMARY KEY,
    sha256      TEXT NOT NULL UNIQUE,              -- hex digest of `data`, for de-duplication
    codecs      TEXT NOT NULL,                     -- RFC 6381 list as sent to MSE: 'avc1.42C01E,mp4a.40.2'
    data        BYTEA NOT NULL,                    -- ftyp + moov bytes
    created_at_us BIGINT NOT NULL
);

-- One archive segment: a self-contained fragmented MP4 file (or S3 object).
CREATE TABLE segments (
    id              BIGSERIAL PRIMARY KEY,
    stream_id       UUID NOT NULL,                 -- not a foreign key: archives outlive stream rows
    start_us        BIGINT NOT NULL,               -- wall-clock time of the first frame
    end_us          BIGINT NOT NULL,               -- wall-clock time just after the last frame
    media_duration_us BIGINT NOT NULL DEFAULT 0,   -- sum of frame durations in the file
    storage         TEXT NOT NULL DEFAULT 'filesystem' CHECK (storage IN ('filesystem', 's3')),
    storage_key     TEXT NOT NULL,                 -- file path, or object key in the bucket
    bytes           BIGINT NOT NULL DEFAULT 0,
    init_segment_id BIGINT REFERENCES init_segments (id),
    -- recording: being written; complete: closed and playable; missing: file vanished;
    -- deleting: retention is removing it (crash-consistent delete)
    state           TEXT NOT NULL DEFAULT 'recording'
                    CHECK (state IN ('recording', 'complete', 'missing', 'deleting')),
    -- upload outbox for S3: local -> uploading -> remote ('none' for filesystem-only storage)
    upload_state    TEXT NOT NULL DEFAULT 'none'
                    CHECK (upload_state IN ('none', 'local', 'uploading', 'remote')),
    created_at_us   BIGINT NOT NULL,
    CHECK (end_us >= start_us)
);

-- Every time query is "segments of one stream around a time": keep it one index range.
CREATE INDEX segments_stream_start ON segments (stream_id, start_us);

-- Finding the segment being written (at most one per stream) without scanning the stream's history.
CREATE INDEX segments_recording ON segments (stream_id) WHERE state = 'recording';

-- The S3 upload outbox: rows still to upload, in order.
CREATE INDEX segments_upload_pending ON segments (id) WHERE upload_state IN ('local', 'uploading');

-- One row per contiguous recording run of a stream: closed segments whose gaps are at most one
-- second (db::runs::RUN_GAP_US) belong to one run. Maintained in the transaction that closes a
-- segment and re-derived from `segments` after deletions, so a range query over months reads a
-- handful of rows instead of every segment. `segments` stays the source of truth.
CREATE TABLE runs (
    id            BIGSERIAL PRIMARY KEY,
    stream_id     UUID NOT NULL,
    start_us      BIGINT NOT NULL,               -- start of the first segment
    end_us        BIGINT NOT NULL,               -- end of the last segment
    segment_count BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    CHECK (end_us >= start_us)
);
CREATE INDEX runs_stream_start ON runs (stream_id, start_us);

-- Time ranges retention must never delete (evidence locks), per stream.
CREATE TABLE protected_ranges (
    id            BIGSERIAL PRIMARY KEY,
    stream_id     UUID NOT NULL,
    start_us      BIGINT NOT NULL,
    end_us        BIGINT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    created_at_us BIGINT NOT NULL,
    CHECK (end_us > start_us)
);
CREATE INDEX protected_ranges_stream ON protected_ranges (stream_id, start_us);
