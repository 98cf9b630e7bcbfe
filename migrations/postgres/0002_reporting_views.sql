-- Reporting views (Postgres dialect). The SQLite migration of the same number defines the same
-- views with the same columns. They are for people with `psql` at hand (examples in README.md,
-- "SQL reports"); request paths never read them. Only playable segments count (state 'recording'
-- or 'complete'); times are UTC.

-- One row per stream and UTC day with recording on it.
--   day               DATE (UTC).
--   recorded_seconds  wall-clock time covered by segments on that day. A segment that runs past
--                     midnight is split between the two days (segments are capped at 5 minutes,
--                     config::MAX_MS_PER_FILE, so a segment touches at most two days).
--   bytes             bytes of the segments that start on that day.
--   segment_count     segments that start on that day.
--   gap_count         holes longer than one second (the run gap, db::runs::RUN_GAP_US) that end on
--                     that day: a segment that is not the stream's first and that no earlier
--                     segment of the stream reaches to within one second of its start. (The 5 min
--                     cap bounds how far back an earlier segment can start: 301 s.)
-- Each segment is joined with `parts` (0: its time on its start day; 1: its time after the next
-- midnight, only when it crosses one). A filter on stream_id reaches the (stream_id, start_us)
-- index, so one stream's report reads only that stream's rows; a filter on day does not.
CREATE VIEW report_stream_days AS
SELECT s.stream_id,
       DATE '1970-01-01' + CAST(s.start_us / 86400000000 + parts.part AS INTEGER) AS day,
       CAST(SUM(CASE WHEN parts.part = 0
                THEN LEAST(s.end_us, (s.start_us / 86400000000 + 1) * 86400000000) - s.start_us
                ELSE s.end_us - (s.start_us / 86400000000 + 1) * 86400000000 END)
           AS DOUBLE PRECISION) / 1000000
           AS recorded_seconds,
       CAST(SUM(CASE WHEN parts.part = 0 THEN s.bytes ELSE 0 END) AS BIGINT) AS bytes,
       CAST(SUM(1 - parts.part) AS BIGINT) AS segment_count,
       CAST(SUM(CASE WHEN parts.part = 0
                 AND EXISTS (SELECT 1 FROM segments p
                             WHERE p.stream_id = s.stream_id AND p.start_us <= s.start_us
                               AND (p.start_us < s.start_us OR p.id < s.id)
                               AND p.state IN ('recording', 'complete'))
                 AND NOT EXISTS (SELECT 1 FROM segments p
                             WHERE p.stream_id = s.stream_id
                               AND p.start_us >= s.start_us - 301000000
                               AND p.start_us <= s.start_us
                               AND (p.start_us < s.start_us OR p.id < s.id)
                               AND p.end_us >= s.start_us - 1000000
                               AND p.state IN ('recording', 'complete'))
                THEN 1 ELSE 0 END) AS BIGINT) AS gap_count
FROM segments AS s
CROSS JOIN (SELECT 0 AS part UNION ALL SELECT 1) AS parts
WHERE s.state IN ('recording', 'complete')
  AND (parts.part = 0 OR s.end_us > (s.start_us / 86400000000 + 1) * 86400000000)
GROUP BY s.stream_id, s.start_us / 86400000000 + parts.part;

-- One row per stream that has a `streams` row or playable segments (the archive of a deleted
-- stream is still listed, with a NULL name).
--   name               from `streams`; NULL when the stream row is gone.
--   first_recording    start of the first segment, 'YYYY-MM-DD HH:MM:SS' UTC as text, the same
--                      in both engines (NULL: nothing recorded); first_start_us is exact, and
--                      to_timestamp(first_start_us / 1e6) gives a timestamptz.
--   last_recording     end of the last segment, same format; last_end_us is the exact value.
--   total_bytes, segment_count, recorded_seconds  over all playable segments.
CREATE VIEW report_streams AS
SELECT a.stream_id,
       st.name,
       to_char(to_timestamp(a.first_start_us / 1000000) AT TIME ZONE 'UTC',
               'YYYY-MM-DD HH24:MI:SS') AS first_recording,
       to_char(to_timestamp(a.last_end_us / 1000000) AT TIME ZONE 'UTC',
               'YYYY-MM-DD HH24:MI:SS') AS last_recording,
       a.first_start_us,
       a.last_end_us,
       a.total_bytes,
       a.segment_count,
       a.recorded_seconds
FROM (
    SELECT stream_id,
           MIN(start_us)                                            AS first_start_us,
           MAX(end_us)                                              AS last_end_us,
           CAST(SUM(bytes) AS BIGINT)                               AS total_bytes,
           COUNT(*)                                                 AS segment_count,
           CAST(SUM(end_us - start_us) AS DOUBLE PRECISION) / 1000000 AS recorded_seconds
    FROM segments
    WHERE state IN ('recording', 'complete')
    GROUP BY stream_id
) AS a
LEFT JOIN streams st ON st.id = a.stream_id
UNION ALL
SELECT st.id, st.name, NULL, NULL, NULL, NULL, CAST(0 AS BIGINT), CAST(0 AS BIGINT),
       CAST(0 AS DOUBLE PRECISION)
FROM streams st
WHERE NOT EXISTS (SELECT 1 FROM segments s
                  WHERE s.stream_id = st.id AND s.state IN ('recording', 'complete'));
