-- Reporting views (Postgres dialect). The SQLite migration of the same number defines the same
-- views with the same columns. They are for people with `psql` at hand (examples in README.md,
-- "SQL reports"); request paths never read them. Only playable segments count (state 'recording'
-- or 'complete'); times are UTC.

-- One row per stream and UTC day with recording on it.
--   day               DATE (UTC).
--   recorded_seconds  wall-clock time covered by segments on that day. A segment that runs past
--                     midnight is split between the two days (segments are capped at 5 minutes,
--                     so a segment touches at most two days).
--   bytes             bytes of the segments that start on that day.
--   segment_count     segments that start on that day.
--   gap_count         holes longer than one second (the run gap, db::runs::RUN_GAP_US) that end on
--                     that day: a segment starting more than 1 s after everything before it of the
--                     same stream. The stream's first segment is not a gap.
-- Filtering on stream_id is pushed into the scan; filtering on day still reads the stream's rows.
CREATE VIEW report_stream_days AS
SELECT stream_id,
       DATE '1970-01-01' + CAST(day_no AS INTEGER)          AS day,
       CAST(SUM(covered_us) AS DOUBLE PRECISION) / 1000000  AS recorded_seconds,
       CAST(SUM(piece_bytes) AS BIGINT)                     AS bytes,
       CAST(SUM(starts) AS BIGINT)                          AS segment_count,
       CAST(SUM(gaps) AS BIGINT)                            AS gap_count
FROM (
    -- Part 0: a segment's time on its start day; part 1: its time after the next midnight.
    SELECT stream_id,
           day_no + part AS day_no,
           CASE WHEN part = 0 THEN LEAST(end_us, (day_no + 1) * 86400000000) - start_us
                ELSE end_us - (day_no + 1) * 86400000000 END AS covered_us,
           CASE WHEN part = 0 THEN bytes ELSE 0 END AS piece_bytes,
           1 - part AS starts,
           CASE WHEN part = 0 THEN gap_before ELSE 0 END AS gaps
    FROM (
        SELECT stream_id, start_us, end_us, bytes,
               start_us / 86400000000 AS day_no,
               CASE WHEN start_us - MAX(end_us) OVER (PARTITION BY stream_id ORDER BY start_us, id
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > 1000000
                    THEN 1 ELSE 0 END AS gap_before
        FROM segments
        WHERE state IN ('recording', 'complete')
    ) AS seg
    CROSS JOIN (SELECT 0 AS part UNION ALL SELECT 1) AS parts
    WHERE part = 0 OR end_us > (day_no + 1) * 86400000000
) AS pieces
GROUP BY stream_id, day_no;

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
