//! The `runs` table: contiguous recording runs per stream, so time-range queries read a handful of
//! rows whatever the length of the window. `segments` stays the source of truth; [`rebuild`]
//! re-derives a stream's runs from it (after deletions, and in tests to check the maintained rows).

use uuid::Uuid;

use super::TimeRange;
use super::{BeginWrite, Db, DbUuid, Result, with_pool};

/// Closed segments separated by at most this much belong to one run. Recorded segments are back to
/// back; a source reconnect leaves a gap of seconds.
pub const RUN_GAP_US: i64 = 1_000_000;

/// Adds a closed segment to its stream's runs inside an open transaction: extends the run it
/// touches, merges runs it bridges, or starts a new one. A macro so the same code runs on a SQLite
/// or a Postgres transaction.
macro_rules! add_segment {
    ($conn:expr, $stream:expr, $start_us:expr, $end_us:expr, $bytes:expr) => {{
        let (stream, start_us, end_us, bytes): (super::DbUuid, i64, i64, i64) =
            ($stream, $start_us, $end_us, $bytes);
        let gap = super::runs::RUN_GAP_US;
        let near: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, start_us, end_us, segment_count, bytes FROM runs \
             WHERE stream_id = $1 AND start_us <= $2 AND end_us >= $3 ORDER BY start_us",
        )
        .bind(stream)
        .bind(end_us + gap)
        .bind(start_us - gap)
        .fetch_all(&mut *$conn)
        .await?;
        match near.split_first() {
            None => {
                sqlx::query(
                    "INSERT INTO runs (stream_id, start_us, end_us, segment_count, bytes) \
                     VALUES ($1, $2, $3, 1, $4)",
                )
                .bind(stream)
                .bind(start_us)
                .bind(end_us)
                .bind(bytes)
                .execute(&mut *$conn)
                .await?;
            }
            Some((first, rest)) => {
                let mut run = (
                    start_us.min(first.1),
                    end_us.max(first.2),
                    first.3 + 1,
                    first.4 + bytes,
                );
                for r in rest {
                    run = (run.0.min(r.1), run.1.max(r.2), run.2 + r.3, run.3 + r.4);
                    sqlx::query("DELETE FROM runs WHERE id = $1")
                        .bind(r.0)
                        .execute(&mut *$conn)
                        .await?;
                }
                sqlx::query(
                    "UPDATE runs SET start_us = $2, end_us = $3, segment_count = $4, bytes = $5 \
                     WHERE id = $1",
                )
                .bind(first.0)
                .bind(run.0)
                .bind(run.1)
                .bind(run.2)
                .bind(run.3)
                .execute(&mut *$conn)
                .await?;
            }
        }
    }};
}
pub(crate) use add_segment;

/// A run as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start_us: i64,
    pub end_us: i64,
    pub segment_count: i64,
    pub bytes: i64,
}

/// Runs of a stream overlapping `[from_us, to_us)`, ordered by start.
pub async fn list(db: &Db, stream_id: Uuid, from_us: i64, to_us: i64) -> Result<Vec<Run>> {
    const SQL: &str = "SELECT start_us, end_us, segment_count, bytes FROM runs \
        WHERE stream_id = $1 AND start_us < $2 AND end_us > $3 ORDER BY start_us";
    let rows: Vec<(i64, i64, i64, i64)> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(to_us)
        .bind(from_us)
        .fetch_all(p)
        .await?);
    Ok(rows
        .into_iter()
        .map(|(start_us, end_us, segment_count, bytes)| Run {
            start_us,
            end_us,
            segment_count,
            bytes,
        })
        .collect())
}

/// Every run of a stream, ordered by start.
pub async fn all(db: &Db, stream_id: Uuid) -> Result<Vec<Run>> {
    list(db, stream_id, i64::MIN, i64::MAX).await
}

/// The run (`id, start_us, end_us`) of stream `$1` holding a segment `[$2, $3)`: the one run
/// that starts at or before the segment and ends at or after it (a stream's runs are disjoint).
pub(crate) const RUN_OF_SQL: &str = "SELECT id, start_us, end_us FROM runs \
    WHERE stream_id = $1 AND start_us <= $2 AND end_us >= $3";

/// Inside an open transaction, notes the run holding a `complete` segment that is leaving the set
/// of complete segments, in `touched` (each run once): `(stream, run id, run start, run end)`.
/// The caller re-derives them with [`rederive_touched!`] after changing every row. A macro so the
/// same code runs on a SQLite or a Postgres transaction.
macro_rules! note_touched {
    ($conn:expr, $touched:expr, $stream:expr, $start_us:expr, $end_us:expr) => {{
        let (stream, start_us, end_us): (uuid::Uuid, i64, i64) = ($stream, $start_us, $end_us);
        let run: Option<(i64, i64, i64)> = sqlx::query_as(super::runs::RUN_OF_SQL)
            .bind(super::DbUuid(stream))
            .bind(start_us)
            .bind(end_us)
            .fetch_optional(&mut *$conn)
            .await?;
        let touched: &mut Vec<(uuid::Uuid, i64, i64, i64)> = $touched;
        if let Some((id, start, end)) = run
            && !touched.iter().any(|t| t.1 == id)
        {
            touched.push((stream, id, start, end));
        }
    }};
}
pub(crate) use note_touched;

/// Inside an open transaction, replaces each run noted by [`note_touched!`] with what its span
/// derives to now.
macro_rules! rederive_touched {
    ($conn:expr, $touched:expr) => {{
        let touched: Vec<(uuid::Uuid, i64, i64, i64)> = $touched;
        for (stream, run_id, start, end) in touched {
            sqlx::query("DELETE FROM runs WHERE id = $1")
                .bind(run_id)
                .execute(&mut *$conn)
                .await?;
            super::runs::insert_derived!(&mut *$conn, super::DbUuid(stream), start, end);
        }
    }};
}
pub(crate) use rederive_touched;

/// A stream's closed recordings in total, summed over its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTotals {
    pub stream_id: Uuid,
    pub start_us: i64,
    pub end_us: i64,
    pub segment_count: i64,
    pub bytes: i64,
}

/// Totals of every stream that has closed segments (also streams whose row is deleted), ordered
/// by stream id. Reads the `runs` table: a few rows per stream however large the archive.
pub async fn totals(db: &Db) -> Result<Vec<StreamTotals>> {
    const SQL: &str = "SELECT stream_id, MIN(start_us), MAX(end_us), \
        CAST(SUM(segment_count) AS BIGINT), CAST(SUM(bytes) AS BIGINT) FROM runs \
        GROUP BY stream_id ORDER BY stream_id";
    let rows: Vec<(DbUuid, i64, i64, i64, i64)> =
        with_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(
            |(id, start_us, end_us, segment_count, bytes)| StreamTotals {
                stream_id: id.into(),
                start_us,
                end_us,
                segment_count,
                bytes,
            },
        )
        .collect())
}

/// Gaps and islands over a stream's (`$1`) complete segments starting in `[$2, $3]`: one row
/// `(start, end, segment count, bytes)` per run of segments separated by at most `$4`, in order.
pub(crate) const DERIVE_SQL: &str = "
    SELECT MIN(start_us), MAX(end_us), COUNT(*), CAST(SUM(bytes) AS BIGINT) FROM (
        SELECT start_us, end_us, bytes,
               SUM(new_run) OVER (ORDER BY start_us, id ROWS UNBOUNDED PRECEDING) AS run
        FROM (
            SELECT id, start_us, end_us, bytes,
                   CASE WHEN start_us - MAX(end_us) OVER (ORDER BY start_us, id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > $4
                        THEN 1 ELSE 0 END AS new_run
            FROM segments
            WHERE stream_id = $1 AND state = 'complete' AND start_us >= $2 AND start_us <= $3
        ) AS marked
    ) AS numbered
    GROUP BY run ORDER BY 1";

/// Inside an open transaction, derives the runs of a stream's complete segments starting in
/// `[from_us, to_us]` ([`DERIVE_SQL`]) and inserts them; the caller has deleted the runs they
/// replace. A macro so the same code runs on a SQLite or a Postgres transaction.
macro_rules! insert_derived {
    ($conn:expr, $stream:expr, $from_us:expr, $to_us:expr) => {{
        let (stream, from_us, to_us): (super::DbUuid, i64, i64) = ($stream, $from_us, $to_us);
        let derived: Vec<(i64, i64, i64, i64)> = sqlx::query_as(super::runs::DERIVE_SQL)
            .bind(stream)
            .bind(from_us)
            .bind(to_us)
            .bind(super::runs::RUN_GAP_US)
            .fetch_all(&mut *$conn)
            .await?;
        for (start_us, end_us, count, bytes) in derived {
            sqlx::query(
                "INSERT INTO runs (stream_id, start_us, end_us, segment_count, bytes) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(stream)
            .bind(start_us)
            .bind(end_us)
            .bind(count)
            .bind(bytes)
            .execute(&mut *$conn)
            .await?;
        }
    }};
}
pub(crate) use insert_derived;

/// Re-derives a stream's runs from its closed segments (gaps and islands), replacing the rows.
pub async fn rebuild(db: &Db, stream_id: Uuid) -> Result<()> {
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        sqlx::query("DELETE FROM runs WHERE stream_id = $1")
            .bind(DbUuid(stream_id))
            .execute(&mut *tx)
            .await?;
        insert_derived!(&mut *tx, DbUuid(stream_id), i64::MIN, i64::MAX);
        tx.commit().await?;
    });
    Ok(())
}

/// Recorded time ranges of a stream overlapping `[from_us, to_us)`: its runs plus the segment being
/// recorded, merged where the hole between them is at most `gap_us` (never less than
/// [`RUN_GAP_US`]). One query that reads only the rows it returns, whatever the window and however
/// long the stream's history:
///
/// * runs: a stream's runs are disjoint (closing a segment merges every run it touches, and
///   [`rebuild`] derives islands), so the only run starting before the window that can reach into
///   it is the last one starting at or before `from_us`; one index probe finds its start, and the
///   scan begins there instead of at the stream's first run;
/// * the segment being recorded: through the partial index `segments_recording` (at most one row
///   per stream), without a time condition that could tempt the planner into the
///   `(stream_id, start_us)` index and the stream's whole history; the window is applied here.
pub async fn ranges(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
    gap_us: i64,
) -> Result<Vec<TimeRange>> {
    const SQL: &str = "
        SELECT start_us, end_us FROM runs
        WHERE stream_id = $1 AND start_us < $2 AND end_us > $3
          AND start_us >= COALESCE((SELECT MAX(start_us) FROM runs
                                    WHERE stream_id = $1 AND start_us <= $3), $3)
        UNION ALL
        SELECT start_us, end_us FROM segments WHERE stream_id = $1 AND state = 'recording'";
    let rows: Vec<(i64, i64)> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(to_us)
        .bind(from_us)
        .fetch_all(p)
        .await?);
    let mut spans: Vec<(i64, i64)> = rows
        .into_iter()
        .filter(|&(start_us, end_us)| start_us < to_us && end_us > from_us)
        .collect();
    spans.sort_unstable();
    let gap = gap_us.max(RUN_GAP_US);
    let mut out: Vec<TimeRange> = Vec::new();
    for (start_us, end_us) in spans {
        match out.last_mut() {
            Some(last) if start_us - last.end_us <= gap => last.end_us = last.end_us.max(end_us),
            _ => out.push(TimeRange { start_us, end_us }),
        }
    }
    Ok(out)
}
