-- The S3 bucket of an `s3` segment. A stream may override the `[s3]` bucket (`archive.bucket`, the
-- Go `minio_bucket`), so the object key alone does not say where the bytes are: every reader
-- (playback, export, retention) needs the bucket too. The uploader stores the bucket it wrote to
-- together with the key, in one statement. NULL for filesystem rows, and for S3 rows uploaded
-- before this column existed: readers take those from the `[s3]` bucket. (Rows of a stream that
-- overrode its bucket before this migration point at that bucket only once it is filled in by
-- hand, README "S3 / MinIO archive".) Adding a nullable column without a default rewrites no rows.
ALTER TABLE segments ADD COLUMN bucket TEXT CHECK (bucket IS NULL OR storage = 's3');

-- The covering index of segment pages (0003) must hold every listed column to stay index-only, and
-- pages now list the bucket. Rebuilding it reads the table once, at this migration only.
DROP INDEX segments_stream_page;
CREATE INDEX segments_stream_page ON segments (stream_id, start_us, id)
    INCLUDE (end_us, media_duration_us, bytes, state, storage, upload_state, bucket)
    WHERE state IN ('recording', 'complete');
