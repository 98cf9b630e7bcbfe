//! The `segments` table: one row per archive segment, and time-range queries over it.

use uuid::Uuid;

use super::cluster::{Fence, FenceCheck};
use super::{BeginWrite, Db, DbUuid, Result, with_pool};
// Re-exported: callers name it `segments::TimeRange`; it lives in `db` so that `runs` need not
// import this module (which uses `runs`' macros).
pub use super::TimeRange;
use crate::stream::StorageKind;

/// Longest segment the index holds: twice the longest `ms_per_file` (two hours), above what the
/// recorder can write (`ms_per_file` + `archive::recorder::MAX_OVERSHOOT`); it also bounds
/// imported files. Time queries scan segments starting up to this long before their window
/// ([`scan_start`]), so a longer segment could be missed by a query that starts inside it.
pub const MAX_SEGMENT_US: i64 = crate::config::MAX_MS_PER_FILE as i64 * 1000 * 2;

/// Lowest start a segment overlapping a window that begins at `from_us` can have: the lower
/// bound of the `(stream_id, start_us)` index scan.
pub(crate) fn scan_start(from_us: i64) -> i64 {
    from_us.saturating_sub(MAX_SEGMENT_US)
}

/// Filter and order of a keyset page of a stream's playable segments overlapping `[$4, $3)`
/// after the position `($5, $6)`, at most `$7`; `$2` is the scan start, never below `$5`
/// (see `db::pages` for why the keyset test is spelled this way). A string literal for
/// `concat!`.
macro_rules! page_filter {
    () => {
        "WHERE stream_id = $1 AND start_us >= $2 AND start_us < $3 AND end_us > $4 \
         AND state IN ('recording', 'complete') \
         AND (start_us > $5 OR id > $6) ORDER BY start_us, id LIMIT $7"
    };
}
pub(crate) use page_filter;

/// Lifecycle of a segment row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// The file is being written; `end_us` is advanced as fragments land.
    Recording,
    /// Closed and playable.
    Complete,
    /// The row outlived its file (found at start-up reconciliation).
    Missing,
    /// Retention is deleting it: the file may or may not still exist.
    Deleting,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::Recording => "recording",
            SegmentState::Complete => "complete",
            SegmentState::Missing => "missing",
            SegmentState::Deleting => "deleting",
        }
    }
}

/// What the recorder knows when it opens (or the importer finds) a segment.
#[derive(Debug, Clone)]
pub struct NewSegment {
    pub stream_id: Uuid,
    pub start_us: i64,
    pub end_us: i64,
    pub media_duration_us: i64,
    pub storage: StorageKind,
    pub storage_key: String,
    pub bytes: i64,
    pub state: SegmentState,
}

/// Inserts a segment row on `$conn` (a pool, a connection or a transaction) and evaluates to its
/// id: the one `INSERT INTO segments` every caller uses, so the column list is written once.
/// `$s` is a `&NewSegment`; `$state` overrides `$s.state` (a `&str`).
macro_rules! insert_row {
    ($conn:expr, $s:expr, $state:expr, $init_id:expr, $upload_state:expr, $correction:expr) => {{
        let s: &$crate::db::segments::NewSegment = $s;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, \
             storage_key, bytes, state, created_at_us, init_segment_id, upload_state, \
             clock_correction_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind($crate::db::DbUuid(s.stream_id))
        .bind(s.start_us)
        .bind(s.end_us)
        .bind(s.media_duration_us)
        .bind(s.storage.as_str())
        .bind(s.storage_key.as_str())
        .bind(s.bytes)
        .bind($state)
        .bind($crate::db::now_us())
        .bind($init_id)
        .bind($upload_state)
        .bind($correction)
        .fetch_one($conn)
        .await?;
        id
    }};
}
pub(crate) use insert_row;

/// Stores an init segment on `$conn` once (identical bytes share a row) and evaluates to its id.
macro_rules! upsert_init {
    ($conn:expr, $codecs:expr, $data:expr) => {{
        use sha2::{Digest, Sha256};
        let data: &[u8] = $data;
        let digest: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        sqlx::query(
            "INSERT INTO init_segments (sha256, codecs, data, created_at_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(digest.as_str())
        .bind($codecs)
        .bind(data)
        .bind($crate::db::now_us())
        .execute($conn)
        .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM init_segments WHERE sha256 = $1")
            .bind(digest.as_str())
            .fetch_one($conn)
            .await?;
        id
    }};
}

/// Inserts a segment row and returns its id.
pub async fn insert(db: &Db, s: &NewSegment) -> Result<i64> {
    let id =
        with_pool!(db, p => insert_row!(p, s, s.state.as_str(), None::<i64>, "none", None::<i64>));
    Ok(id)
}

/// Merges the playable segments of `stream_id` that overlap `[from_us, to_us)` into ranges; a hole
/// longer than `gap_us` between one segment's end and the next one's start starts a new range.
///
/// One indexed scan of `(stream_id, start_us)` plus a window function (gaps and islands). Segments
/// are capped in length (`config::MAX_MS_PER_FILE`), so the lower bound on `start_us` keeps the scan
/// inside the index range.
pub async fn ranges(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
    gap_us: i64,
) -> Result<Vec<TimeRange>> {
    const SQL: &str = "
        SELECT MIN(start_us) AS start_us, MAX(end_us) AS end_us FROM (
            SELECT start_us, end_us,
                   SUM(new_run) OVER (ORDER BY start_us, id ROWS UNBOUNDED PRECEDING) AS run
            FROM (
                SELECT id, start_us, end_us,
                       CASE WHEN start_us - MAX(end_us) OVER (ORDER BY start_us, id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > $4
                            THEN 1 ELSE 0 END AS new_run
                FROM segments
                WHERE stream_id = $1 AND start_us >= $2 AND start_us < $3 AND end_us > $5
                  AND state IN ('recording', 'complete')
            ) AS marked
        ) AS numbered
        GROUP BY run
        ORDER BY 1";
    let lower = scan_start(from_us);
    let rows: Vec<(i64, i64)> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(lower)
        .bind(to_us)
        .bind(gap_us)
        .bind(from_us)
        .fetch_all(p)
        .await?);
    Ok(rows
        .into_iter()
        .map(|(start_us, end_us)| TimeRange { start_us, end_us })
        .collect())
}

/// Whether any playable segment of the stream overlaps `[from_us, to_us)`.
pub async fn any_in_range(db: &Db, stream_id: Uuid, from_us: i64, to_us: i64) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM segments WHERE stream_id = $1 \
        AND start_us >= $2 AND start_us < $3 AND end_us > $4 AND state IN ('recording', 'complete'))";
    let lower = scan_start(from_us);
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(DbUuid(stream_id))
        .bind(lower)
        .bind(to_us)
        .bind(from_us)
        .fetch_one(p)
        .await?);
    Ok(found)
}

/// A segment row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SegmentRow {
    pub id: i64,
    #[sqlx(try_from = "DbUuid")]
    pub stream_id: Uuid,
    pub start_us: i64,
    pub end_us: i64,
    pub media_duration_us: i64,
    pub storage: String,
    pub storage_key: String,
    pub bytes: i64,
    pub init_segment_id: Option<i64>,
    pub state: String,
    pub upload_state: String,
    /// The bucket of an `s3` row; `None` for filesystem rows and for S3 rows uploaded before
    /// migration 0004, which are in the `[s3]` bucket.
    pub bucket: Option<String>,
}

const SEGMENT_COLUMNS: &str = "id, stream_id, start_us, end_us, media_duration_us, storage, \
    storage_key, bytes, init_segment_id, state, upload_state, bucket";

/// Inserts a segment row for a file being recorded (state `recording`) with its init segment.
pub async fn insert_recording(
    db: &Db,
    s: &NewSegment,
    init_segment_id: Option<i64>,
    upload_state: &str,
) -> Result<i64> {
    let id = with_pool!(db, p => insert_row!(
        p, s, s.state.as_str(), init_segment_id, upload_state, None::<i64>
    ));
    Ok(id)
}

/// A segment row as the recorder indexes it: the file's init segment is stored (de-duplicated)
/// with it, in the same transaction.
#[derive(Debug, Clone)]
pub struct RecordedSegment {
    pub segment: NewSegment,
    /// RFC 6381 codec list of the init segment.
    pub codecs: String,
    /// The file's `ftyp`+`moov`.
    pub init: bytes::Bytes,
    /// `local` for a stream archived to S3 (the upload outbox), else `none`.
    pub upload_state: &'static str,
    /// Wall-clock correction applied at this segment's start (see migration 0007).
    pub clock_correction_us: Option<i64>,
    /// In cluster mode, the lease the stream is recorded under: the row is written only while it
    /// holds (and records the node, `segments.node_id`). `None` outside cluster mode.
    pub fence: Option<super::cluster::Fence>,
}

/// Indexes a recorded segment in one transaction: its init segment (shared with identical ones),
/// its row, and, for a `complete` segment, its stream's runs. Returns the row id. Idempotent: one
/// transaction, so an interrupted call leaves nothing behind, and a call repeated after a commit
/// whose answer was lost (the connection died) returns the row the first call made.
pub async fn insert_recorded(db: &Db, r: &RecordedSegment) -> Result<i64> {
    // A retry after a commit whose answer was lost finds the row it already made.
    const SAME: &str = "SELECT id FROM segments \
        WHERE stream_id = $1 AND start_us = $2 AND storage_key = $3";
    let s = &r.segment;
    let id: i64 = with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        let existing: Option<i64> = sqlx::query_scalar(SAME)
            .bind(DbUuid(s.stream_id))
            .bind(s.start_us)
            .bind(s.storage_key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = existing {
            return Ok(id);
        }
        (*tx).check_fence(s.stream_id, r.fence.as_ref()).await?;
        let init_id = upsert_init!(&mut *tx, r.codecs.as_str(), &r.init[..]);
        let id = insert_row!(
            &mut *tx, s, s.state.as_str(), Some(init_id), r.upload_state, r.clock_correction_us
        );
        if let Some(f) = &r.fence {
            sqlx::query("UPDATE segments SET node_id = $2 WHERE id = $1")
                .bind(id)
                .bind(&*f.node_id)
                .execute(&mut *tx)
                .await?;
        }
        if s.state == SegmentState::Complete {
            super::runs::add_segment!(&mut *tx, DbUuid(s.stream_id), s.start_us, s.end_us, s.bytes);
        }
        tx.commit().await?;
        id
    });
    Ok(id)
}

/// Advances a recording segment's end as fragments reach the disk.
pub async fn update_progress(
    db: &Db,
    id: i64,
    end_us: i64,
    media_duration_us: i64,
    bytes: i64,
) -> Result<()> {
    with_pool!(db, p => sqlx::query(PROGRESS_SQL)
        .bind(id)
        .bind(end_us)
        .bind(media_duration_us)
        .bind(bytes)
        .execute(p)
        .await
        .map(|_| ()))?;
    Ok(())
}

const PROGRESS_SQL: &str = "UPDATE segments SET end_us = $2, media_duration_us = $3, bytes = $4 \
    WHERE id = $1 AND state = 'recording'";

/// [`update_progress`] under a lease (cluster mode): refused once `fence` no longer holds.
pub async fn update_progress_fenced(
    db: &Db,
    id: i64,
    end_us: i64,
    media_duration_us: i64,
    bytes: i64,
    fence: Option<&Fence>,
) -> Result<()> {
    const STREAM: &str = "SELECT stream_id FROM segments WHERE id = $1";
    if fence.is_none() {
        return update_progress(db, id, end_us, media_duration_us, bytes).await;
    }
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        let stream: Option<DbUuid> = sqlx::query_scalar(STREAM).bind(id).fetch_optional(&mut *tx).await?;
        if let Some(stream) = stream {
            (*tx).check_fence(stream.0, fence).await?;
        }
        sqlx::query(PROGRESS_SQL)
            .bind(id)
            .bind(end_us)
            .bind(media_duration_us)
            .bind(bytes)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// Closes a `recording` row as `complete` and adds it to its stream's runs, in one transaction.
pub async fn finalize(
    db: &Db,
    id: i64,
    end_us: i64,
    media_duration_us: i64,
    bytes: i64,
) -> Result<()> {
    finalize_fenced(db, id, end_us, media_duration_us, bytes, None).await
}

/// [`finalize`] under a lease (cluster mode): refused once `fence` no longer holds.
pub async fn finalize_fenced(
    db: &Db,
    id: i64,
    end_us: i64,
    media_duration_us: i64,
    bytes: i64,
    fence: Option<&Fence>,
) -> Result<()> {
    const SQL: &str = "UPDATE segments SET end_us = $2, media_duration_us = $3, bytes = $4, \
        state = 'complete' WHERE id = $1 AND state = 'recording' RETURNING stream_id, start_us";
    const STREAM: &str = "SELECT stream_id FROM segments WHERE id = $1";
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        if fence.is_some() {
            let stream: Option<DbUuid> = sqlx::query_scalar(STREAM).bind(id).fetch_optional(&mut *tx).await?;
            if let Some(stream) = stream {
                (*tx).check_fence(stream.0, fence).await?;
            }
        }
        let row: Option<(DbUuid, i64)> = sqlx::query_as(SQL)
            .bind(id)
            .bind(end_us)
            .bind(media_duration_us)
            .bind(bytes)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((stream, start_us)) = row {
            super::runs::add_segment!(&mut *tx, stream, start_us, end_us, bytes);
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Segments in a given state (for start-up repair), oldest first.
pub async fn with_state(db: &Db, state: SegmentState) -> Result<Vec<SegmentRow>> {
    // The state is spelled into the statement (one of a few fixed words) and the rows are sorted
    // here: with a bound parameter, or with `ORDER BY id` (SQLite then prefers walking the table
    // in id order to sorting), the partial index of `recording` rows is not used, and start-up,
    // which asks for those before the listeners open, reads the whole table.
    let sql = format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE state = '{}'",
        state.as_str()
    );
    let mut rows: Vec<SegmentRow> = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(p)
        .await?);
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// Who decided that a file is gone: the conditions under which the row may change differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingBy {
    /// Start-up repair and reconciliation, after the file's storage root was verified. A row
    /// being uploaded is left alone: the uploader owns its file until it changes the row.
    Reconcile,
    /// The uploader, whose claimed row's local file is gone: the row also leaves the outbox
    /// (`upload_state = 'none'`).
    Uploader,
}

/// Marks segments whose file is gone `missing`, keeping `runs` in step, in one transaction.
///
/// Each row changes only if it still is what the caller saw: the same state, a filesystem row
/// with the same key (so a row the uploader moved to S3 meanwhile, or one retention marked
/// `deleting`, is left alone), and not being uploaded ([`MissingBy::Reconcile`]) or still in the
/// outbox ([`MissingBy::Uploader`]). The runs that held the `complete` rows marked are re-derived
/// once each. Returns the ids marked.
pub async fn mark_missing(db: &Db, rows: &[SegmentRow], by: MissingBy) -> Result<Vec<i64>> {
    const SQL: &str = "UPDATE segments SET state = 'missing', \
        upload_state = CASE WHEN $4 THEN 'none' ELSE upload_state END \
        WHERE id = $1 AND state = $2 AND state IN ('complete', 'recording') \
          AND storage = 'filesystem' AND storage_key = $3 \
          AND (($4 AND upload_state IN ('local', 'uploading')) \
               OR (NOT $4 AND upload_state <> 'uploading'))";
    let uploader = by == MissingBy::Uploader;
    let mut marked = Vec::new();
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        // (stream, run id, run start, run end) of every run that loses a segment.
        let mut touched: Vec<(Uuid, i64, i64, i64)> = Vec::new();
        for r in rows {
            let n = sqlx::query(SQL)
                .bind(r.id)
                .bind(r.state.as_str())
                .bind(r.storage_key.as_str())
                .bind(uploader)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                continue;
            }
            marked.push(r.id);
            if r.state == SegmentState::Complete.as_str() {
                super::runs::note_touched!(&mut *tx, &mut touched, r.stream_id, r.start_us, r.end_us);
            }
        }
        super::runs::rederive_touched!(&mut *tx, touched);
        tx.commit().await?;
    });
    Ok(marked)
}

/// What a `missing` row's file turned out to hold when it came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub end_us: i64,
    pub media_duration_us: i64,
    pub bytes: i64,
}

/// Brings `missing` rows whose file is back to `complete` with the measured end and size, and adds
/// them to their runs, in one transaction. A row changes only if it is still `missing` with the
/// same filesystem key. A row that left the upload outbox when its file vanished goes back into it
/// if its stream (still) uploads to S3. Returns the ids restored.
pub async fn restore_missing(db: &Db, rows: &[(SegmentRow, Restored)]) -> Result<Vec<i64>> {
    const SQL: &str = "UPDATE segments SET state = 'complete', end_us = $3, \
        media_duration_us = $4, bytes = $5, \
        upload_state = CASE WHEN upload_state = 'none' AND EXISTS (SELECT 1 FROM streams \
            WHERE streams.id = segments.stream_id AND streams.archive_storage = 's3') \
            THEN 'local' ELSE upload_state END \
        WHERE id = $1 AND state = 'missing' AND storage = 'filesystem' AND storage_key = $2 \
        RETURNING stream_id, start_us";
    let mut restored = Vec::new();
    with_pool!(db, p => {
        let mut tx = p.begin_write().await?;
        for (row, m) in rows {
            let changed: Option<(DbUuid, i64)> = sqlx::query_as(SQL)
                .bind(row.id)
                .bind(row.storage_key.as_str())
                .bind(m.end_us)
                .bind(m.media_duration_us)
                .bind(m.bytes)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((stream, start_us)) = changed {
                super::runs::add_segment!(&mut *tx, stream, start_us, m.end_us, m.bytes);
                restored.push(row.id);
            }
        }
        tx.commit().await?;
    });
    Ok(restored)
}

/// `missing` rows after `after_id` (keyset, through the partial index `segments_missing`).
pub async fn missing_after(db: &Db, after_id: i64, limit: u32) -> Result<Vec<SegmentRow>> {
    let sql = format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE state = 'missing' AND id > $1 \
         ORDER BY id LIMIT $2"
    );
    let rows = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// The key range of the files under a directory: keys `> lo` and `< hi` (`dir/` and `dir0`; '0'
/// follows '/' in byte order, and keys compare bytewise, see migration 0006).
pub fn key_range(dir: &str) -> (String, String) {
    let mut lo = dir.to_owned();
    if !lo.ends_with('/') {
        lo.push('/');
    }
    let mut hi = lo.clone();
    hi.pop();
    hi.push('0');
    (lo, hi)
}

/// Filesystem rows in `states` whose key lies under a directory ([`key_range`]), after the key
/// `after` (keyset by key, through `segments_storage_key`), at most `limit`, in key order.
pub async fn under_dir(
    db: &Db,
    dir: &str,
    states: &[SegmentState],
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SegmentRow>> {
    let (lo, hi) = key_range(dir);
    // Keys under the directory are longer than `lo` (the directory and its '/'), so "after `lo`"
    // is every key under it.
    in_key_range(db, after.unwrap_or(&lo), false, &hi, states, limit).await
}

/// Filesystem rows in `states` with `from <= key < hi` (`from < key` unless `inclusive`), at most
/// `limit`, in key order: reconciliation walks one directory's rows with it, jumping over the
/// key ranges of subdirectories it handles separately.
pub async fn in_key_range(
    db: &Db,
    from: &str,
    inclusive: bool,
    hi: &str,
    states: &[SegmentState],
    limit: u32,
) -> Result<Vec<SegmentRow>> {
    let list: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let op = if inclusive { ">=" } else { ">" };
    let sql = format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE storage_key {op} $1 AND storage_key < $2 \
         AND storage = 'filesystem' AND state IN ($4, $5, $6, $7) ORDER BY storage_key LIMIT $3"
    );
    let pick = |i: usize| list.get(i).or(list.first()).copied().unwrap_or("");
    let rows = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(hi)
        .bind(i64::from(limit))
        .bind(pick(0))
        .bind(pick(1))
        .bind(pick(2))
        .bind(pick(3))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// The highest segment id so far (0 for none): rows up to it were made by earlier runs.
pub async fn max_id(db: &Db) -> Result<i64> {
    const SQL: &str = "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM segments";
    let id: i64 = with_pool!(db, p => sqlx::query_scalar(SQL).fetch_one(p).await?);
    Ok(id)
}

/// Wall-clock corrections the recorder applied to a stream's segments starting in
/// `[from_us, to_us)` (camera drift, migration 0007): `(segment id, start_us, correction_us)`.
pub async fn clock_corrections(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<(i64, i64, i64)>> {
    const SQL: &str = "SELECT id, start_us, clock_correction_us FROM segments \
        WHERE stream_id = $1 AND start_us >= $2 AND start_us < $3 \
          AND clock_correction_us IS NOT NULL ORDER BY start_us";
    let rows = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(from_us)
        .bind(to_us)
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// One segment by id.
pub async fn get(db: &Db, id: i64) -> Result<Option<SegmentRow>> {
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE id = $1");
    let row = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(p)
        .await?);
    Ok(row)
}

/// Whether a storage key is already indexed (start-up reconciliation of orphan files).
pub async fn key_exists(db: &Db, storage_key: &str) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM segments WHERE storage_key = $1)";
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(storage_key)
        .fetch_one(p)
        .await?);
    Ok(found)
}

/// Whether a row other than `id` points at `storage_key` (the uploader checks an object key before
/// writing to it).
pub async fn key_taken_by_another(db: &Db, id: i64, storage_key: &str) -> Result<bool> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM segments WHERE storage_key = $1 AND id <> $2)";
    let found: bool = with_pool!(db, p => sqlx::query_scalar(SQL)
        .bind(storage_key)
        .bind(id)
        .fetch_one(p)
        .await?);
    Ok(found)
}

/// A page of a stream's playable segments overlapping `[from_us, to_us)`, ordered by start, after
/// the keyset cursor `(after_start_us, after_id)`. The scan starts at `max(lower, after_start)`,
/// so the keyset test reduces to `start_us > $5 OR id > $6` (see `db::pages` for why it must not
/// be spelled with `start_us = $5`).
pub async fn page(
    db: &Db,
    stream_id: Uuid,
    from_us: i64,
    to_us: i64,
    after: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<SegmentRow>> {
    let lower = scan_start(from_us);
    let (after_start, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
    let sql = format!("SELECT {SEGMENT_COLUMNS} FROM segments {}", page_filter!());
    let rows = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(DbUuid(stream_id))
        .bind(lower.max(after_start))
        .bind(to_us)
        .bind(from_us)
        .bind(after_start)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(p)
        .await?);
    Ok(rows)
}

/// Stores a codec setup (init segment) once and returns its id; identical bytes share a row.
pub async fn upsert_init(db: &Db, codecs: &str, data: &[u8]) -> Result<i64> {
    let id = with_pool!(db, p => upsert_init!(p, codecs, data));
    Ok(id)
}

/// A stored init segment: its codec list and bytes.
pub async fn get_init(db: &Db, id: i64) -> Result<Option<(String, Vec<u8>)>> {
    const SQL: &str = "SELECT codecs, data FROM init_segments WHERE id = $1";
    let row = with_pool!(db, p => sqlx::query_as(SQL).bind(id).fetch_optional(p).await?);
    Ok(row)
}

/// Deletes a segment row (a segment that never got media, or one retention removed).
pub async fn delete(db: &Db, id: i64) -> Result<()> {
    const SQL: &str = "DELETE FROM segments WHERE id = $1";
    with_pool!(db, p => sqlx::query(SQL).bind(id).execute(p).await.map(|_| ()))?;
    Ok(())
}

// ----- S3 upload outbox (`upload_state`: local -> uploading -> remote) -----------------------------
//
// Every query below repeats the predicate of the partial index `segments_upload_pending`
// (`upload_state IN ('local', 'uploading')`) word for word, so both planners use that small index
// instead of scanning the whole table (SQLite only matches a partial index on an identical term).

/// Crash recovery at uploader start: uploads that were in flight when the process died go back to
/// `local` (their local files are still there, since files are removed only after `remote` is
/// committed). Returns the number of rows reset.
pub async fn reset_uploading(db: &Db) -> Result<u64> {
    reset_uploading_for(db, None).await
}

/// [`reset_uploading`] for the rows recorded by cluster node `node` only (`None`: every row).
/// In a cluster each node uploads the segments on its own disk, and resets only its own rows:
/// another node's `uploading` rows are uploads in progress.
pub async fn reset_uploading_for(db: &Db, node: Option<&str>) -> Result<u64> {
    const SQL: &str = "UPDATE segments SET upload_state = 'local' \
        WHERE upload_state IN ('local', 'uploading') AND upload_state = 'uploading'";
    const SQL_NODE: &str = "UPDATE segments SET upload_state = 'local' \
        WHERE upload_state IN ('local', 'uploading') AND upload_state = 'uploading' \
          AND node_id = $1";
    let n = match node {
        None => with_pool!(db, p => sqlx::query(SQL).execute(p).await?.rows_affected()),
        Some(node) => {
            with_pool!(db, p => sqlx::query(SQL_NODE).bind(node).execute(p).await?.rows_affected())
        }
    };
    Ok(n)
}

/// The statement of [`claim_uploads`] (`$1` limit, `$2` after id, `$3` now); `db::plans` explains
/// it. A row under a read lease (`db::leases`) is skipped until the lease has passed.
pub(crate) fn claim_uploads_sql() -> String {
    claim_uploads_sql_for(false)
}

/// [`claim_uploads_sql`], with `by_node`: only the rows of cluster node `$4`.
fn claim_uploads_sql_for(by_node: bool) -> String {
    let node = if by_node { "AND node_id = $4" } else { "" };
    format!(
        "UPDATE segments SET upload_state = 'uploading' WHERE id IN ( \
             SELECT id FROM segments \
             WHERE upload_state IN ('local', 'uploading') AND upload_state = 'local' \
               AND state = 'complete' AND id > $2 {node} \
               AND (lease_until_us IS NULL OR lease_until_us <= $3) \
             ORDER BY id LIMIT $1) \
         AND upload_state = 'local' AND state = 'complete' \
         AND (lease_until_us IS NULL OR lease_until_us <= $3) \
         RETURNING {SEGMENT_COLUMNS}"
    )
}

/// Claims up to `limit` segments ready to upload (closed, `upload_state = 'local'`) with an id
/// above `after_id`, lowest id first, marking them `uploading` in the same statement. Rows claimed
/// by a concurrent caller are not returned twice: the outer condition is re-checked on the row
/// being updated. The cursor lets the uploader go round the queue, so one segment that keeps
/// failing does not hold back the ones after it.
pub async fn claim_uploads(db: &Db, after_id: i64, limit: u32) -> Result<Vec<SegmentRow>> {
    claim_uploads_for(db, None, after_id, limit).await
}

/// [`claim_uploads`] among the rows recorded by cluster node `node` (`None`: every row): a
/// node's segments are on its own disk until uploaded.
pub async fn claim_uploads_for(
    db: &Db,
    node: Option<&str>,
    after_id: i64,
    limit: u32,
) -> Result<Vec<SegmentRow>> {
    let sql = claim_uploads_sql_for(node.is_some());
    let mut rows: Vec<SegmentRow> = with_pool!(db, p => {
        let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .bind(after_id)
            .bind(super::now_us());
        let q = match node {
            Some(node) => q.bind(node),
            None => q,
        };
        q.fetch_all(p).await?
    });
    // RETURNING gives no order guarantee.
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// The statement of [`ready_uploads`] (`$1` limit, `$2` after id, `$3` now); `db::plans` explains
/// it. Rows under a read lease are left out, as [`claim_uploads`] would skip them.
pub(crate) const READY_UPLOADS_SQL: &str = "SELECT id, stream_id FROM segments \
    WHERE upload_state IN ('local', 'uploading') AND upload_state = 'local' \
      AND state = 'complete' AND id > $2 \
      AND (lease_until_us IS NULL OR lease_until_us <= $3) \
    ORDER BY id LIMIT $1";

/// Looks (without claiming) at up to `limit` segments ready to upload with an id above
/// `after_id`, lowest id first: `(id, stream)`. The uploader picks the first whose stream and
/// bucket are not backing off, then claims it with [`claim_uploads`].
pub async fn ready_uploads(db: &Db, after_id: i64, limit: u32) -> Result<Vec<(i64, Uuid)>> {
    ready_uploads_for(db, None, after_id, limit).await
}

/// [`ready_uploads`] among the rows recorded by cluster node `node` (`None`: every row).
pub async fn ready_uploads_for(
    db: &Db,
    node: Option<&str>,
    after_id: i64,
    limit: u32,
) -> Result<Vec<(i64, Uuid)>> {
    const SQL_NODE: &str = "SELECT id, stream_id FROM segments \
        WHERE upload_state IN ('local', 'uploading') AND upload_state = 'local' \
          AND state = 'complete' AND id > $2 \
          AND (lease_until_us IS NULL OR lease_until_us <= $3) AND node_id = $4 \
        ORDER BY id LIMIT $1";
    let rows: Vec<(i64, DbUuid)> = match node {
        None => with_pool!(db, p => sqlx::query_as(READY_UPLOADS_SQL)
            .bind(i64::from(limit))
            .bind(after_id)
            .bind(super::now_us())
            .fetch_all(p)
            .await?),
        Some(node) => with_pool!(db, p => sqlx::query_as(SQL_NODE)
            .bind(i64::from(limit))
            .bind(after_id)
            .bind(super::now_us())
            .bind(node)
            .fetch_all(p)
            .await?),
    };
    Ok(rows.into_iter().map(|(id, s)| (id, s.0)).collect())
}

/// The sizes of the S3 objects of the stream named like its segment file `file_name` (named after
/// second `named_secs`; also under the uploader's distinct name `<stem>~<id>.<ext>`): a local
/// file of one of these sizes is a copy the uploader had not removed yet when the process died (it
/// removes the file only after the row points at the object).
pub async fn uploaded_copy(
    db: &Db,
    stream_id: Uuid,
    named_secs: i64,
    file_name: &str,
) -> Result<Vec<i64>> {
    // A file is named after its start second, bumped forward while the name is taken: the row
    // starts at most a little before it.
    const SQL: &str = "SELECT storage_key, bytes FROM segments \
        WHERE stream_id = $1 AND start_us >= $2 AND start_us < $3 AND storage = 's3'";
    let rows: Vec<(String, i64)> = with_pool!(db, p => sqlx::query_as(SQL)
        .bind(DbUuid(stream_id))
        .bind(named_secs.saturating_sub(600).saturating_mul(1_000_000))
        .bind(named_secs.saturating_add(1).saturating_mul(1_000_000))
        .fetch_all(p)
        .await?);
    // An object renamed because its usual name was taken is `<stem>~<id>.<ext>`.
    let same_name = |key: &str| {
        let object = key.rsplit('/').next().unwrap_or(key);
        object == file_name
            || file_name.rsplit_once('.').is_some_and(|(stem, ext)| {
                object
                    .strip_prefix(stem)
                    .and_then(|rest| rest.strip_prefix('~'))
                    .and_then(|rest| rest.strip_suffix(ext))
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    Ok(rows
        .into_iter()
        .filter(|(key, _)| same_name(key))
        .map(|(_, bytes)| bytes)
        .collect())
}

/// Records a finished upload in one statement: the row now points at the object `object_key` in
/// `bucket`. Returns false (and changes nothing) when the row is no longer a closed segment being
/// uploaded, e.g. retention took it meanwhile, or when a reader leased it during the upload (see
/// [`release_leased_upload`]); the caller then owns the orphan object. Only after this returns
/// true may the local file be removed.
///
/// The bucket is stored even when it is the `[s3]` one, so the row stays readable if `[s3] bucket`
/// is changed later.
pub async fn complete_upload(db: &Db, id: i64, bucket: &str, object_key: &str) -> Result<bool> {
    const SQL: &str = "UPDATE segments \
        SET storage = 's3', bucket = $3, storage_key = $2, upload_state = 'remote' \
        WHERE id = $1 AND upload_state IN ('local', 'uploading') AND upload_state = 'uploading' \
          AND state = 'complete' AND (lease_until_us IS NULL OR lease_until_us <= $4)";
    let n = with_pool!(db, p => sqlx::query(SQL)
        .bind(id)
        .bind(object_key)
        .bind(bucket)
        .bind(super::now_us())
        .execute(p)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// An upload whose row a reader leased meanwhile goes back to `local` (the reader may be reading
/// the local file; the upload is retried once the lease has passed). Returns whether the row was
/// ours and leased; false leaves it alone.
pub async fn release_leased_upload(db: &Db, id: i64) -> Result<bool> {
    const SQL: &str = "UPDATE segments SET upload_state = 'local' \
        WHERE id = $1 AND upload_state IN ('local', 'uploading') AND upload_state = 'uploading' \
          AND state = 'complete' AND lease_until_us > $2";
    let n = with_pool!(db, p => sqlx::query(SQL)
        .bind(id)
        .bind(super::now_us())
        .execute(p)
        .await?
        .rows_affected());
    Ok(n == 1)
}

/// A failed upload goes back to `local`, to be retried. Returns whether the row was `uploading`.
pub async fn release_upload(db: &Db, id: i64) -> Result<bool> {
    const SQL: &str = "UPDATE segments SET upload_state = 'local' \
        WHERE id = $1 AND upload_state IN ('local', 'uploading') AND upload_state = 'uploading'";
    let n = with_pool!(db, p => sqlx::query(SQL).bind(id).execute(p).await?.rows_affected());
    Ok(n == 1)
}

/// The statement of [`count_ready_uploads`]; `db::plans` explains it.
pub(crate) const COUNT_READY_UPLOADS_SQL: &str = "SELECT COUNT(*) FROM segments \
    WHERE upload_state IN ('local', 'uploading') AND upload_state = 'local' \
      AND state = 'complete'";

/// Number of segments ready to upload and not yet claimed (the uploader's backlog).
pub async fn count_ready_uploads(db: &Db) -> Result<i64> {
    let n: i64 =
        with_pool!(db, p => sqlx::query_scalar(COUNT_READY_UPLOADS_SQL).fetch_one(p).await?);
    Ok(n)
}

/// Number of segments in each `upload_state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStateCounts {
    /// Filesystem-only segments (and S3 ones whose file went missing before upload).
    pub none: i64,
    /// Waiting for upload (including segments still being recorded).
    pub local: i64,
    pub uploading: i64,
    pub remote: i64,
}

/// Counts segments by `upload_state`: one row kept current by triggers on `segments` (migration
/// 0007), so this costs the same whatever the size of the archive.
pub async fn upload_state_counts(db: &Db) -> Result<UploadStateCounts> {
    const SQL: &str =
        "SELECT n_none, n_local, n_uploading, n_remote FROM upload_counts WHERE id = 1";
    let row: Option<(i64, i64, i64, i64)> =
        with_pool!(db, p => sqlx::query_as(SQL).fetch_optional(p).await?);
    let (none, local, uploading, remote) =
        row.ok_or_else(|| super::DbError::Corrupt("upload_counts has no row".into()))?;
    Ok(UploadStateCounts {
        none,
        local,
        uploading,
        remote,
    })
}

/// One stream's part of the upload outbox: closed segments not yet in S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadQueue {
    pub stream_id: Uuid,
    /// Closed segments waiting for upload or being uploaded.
    pub segments: i64,
    /// End (µs) of the oldest of them: how long footage has waited for its upload.
    pub oldest_end_us: i64,
}

/// The statement of [`upload_queues`]; `db::plans` explains it.
pub(crate) const UPLOAD_QUEUES_SQL: &str = "SELECT stream_id, COUNT(*), MIN(end_us) FROM segments \
    WHERE upload_state IN ('local', 'uploading') AND state = 'complete' \
    GROUP BY stream_id ORDER BY stream_id";

/// The upload outbox per stream, for metrics. Reads only the partial index
/// `segments_upload_pending` (its predicate repeated word for word), so it costs the outbox's
/// size, not the archive's: nothing when S3 is not used, a few rows when uploads keep up.
pub async fn upload_queues(db: &Db) -> Result<Vec<UploadQueue>> {
    let rows: Vec<(DbUuid, i64, i64)> =
        with_pool!(db, p => sqlx::query_as(UPLOAD_QUEUES_SQL).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(|(id, segments, oldest_end_us)| UploadQueue {
            stream_id: id.0,
            segments,
            oldest_end_us,
        })
        .collect())
}
