-- A covering index for segment listings (db::pages): one stream's playable segments in
-- (start_us, id) order with every listed column, so a 1000-row page reads a few dozen contiguous
-- index pages instead of ~1000 table pages scattered among other cameras' rows (the recorder
-- interleaves streams in the table). About 100 bytes per segment: 1 GB at 10^7 segments, which
-- index about 75 TB of video.
-- Partial on purpose: a query for `state = 'recording'` cannot use it (SQLite does not derive the
-- IN list from an equality), so it keeps using the tiny segments_recording index instead of
-- scanning the stream's whole history here. segments_stream_start stays for the other scans.
CREATE INDEX segments_stream_page ON segments
    (stream_id, start_us, id, end_us, media_duration_us, bytes, state, storage, upload_state)
    WHERE state IN ('recording', 'complete');
