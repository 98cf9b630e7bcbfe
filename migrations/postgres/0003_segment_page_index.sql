-- A covering index for segment listings (db::pages): one stream's playable segments in
-- (start_us, id) order with every listed column, so a 1000-row page is an index-only scan of a
-- few dozen contiguous pages instead of ~1000 heap pages scattered among other cameras' rows (the
-- recorder interleaves streams in the table). Partial like its SQLite twin (rows that are
-- 'missing' or 'deleting' are never listed). segments_stream_start stays for the other scans.
CREATE INDEX segments_stream_page ON segments (stream_id, start_us, id)
    INCLUDE (end_us, media_duration_us, bytes, state, storage, upload_state)
    WHERE state IN ('recording', 'complete');
