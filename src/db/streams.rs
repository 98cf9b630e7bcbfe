//! The `streams` table: cameras and virtual cameras.
//!
//! Policy between the config file and the database: streams in the config file are *seeds*. A
//! config stream whose id is not in the database is inserted at start-up; one that is already there
//! is left alone, so changes made through the API (including deletion marks and disabling) win over
//! the file. To re-apply a file entry, delete the stream through the API and restart.

use uuid::Uuid;

use super::{Db, DbError, DbUuid, Result, now_us, with_pool};
use crate::stream::{
    ArchiveSpec, OutputType, RetentionSpec, RtspTransport, Source, StorageKind, StreamSpec,
    parse_output_type,
};

/// Who created a stream row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// A stream row: the spec plus bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub spec: StreamSpec,
    pub origin: Origin,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: DbUuid,
    name: String,
    source_kind: String,
    url: String,
    rtsp_transport: String,
    file_path: String,
    file_loop: bool,
    output_types: String,
    on_demand: Option<bool>,
    enabled: bool,
    verbose_level: String,
    archive_recording: bool,
    archive_ms_per_file: Option<i32>,
    archive_storage: String,
    archive_directory: Option<String>,
    archive_bucket: Option<String>,
    archive_prefix: Option<String>,
    retention_max_age_s: Option<i64>,
    retention_max_bytes: Option<i64>,
    origin: String,
    created_at_us: i64,
    updated_at_us: i64,
}

const COLUMNS: &str = "id, name, source_kind, url, rtsp_transport, file_path, file_loop, \
    output_types, on_demand, enabled, verbose_level, archive_recording, archive_ms_per_file, \
    archive_storage, archive_directory, archive_bucket, archive_prefix, retention_max_age_s, \
    retention_max_bytes, origin, created_at_us, updated_at_us";

impl TryFrom<Row> for StreamRecord {
    type Error = DbError;

    fn try_from(r: Row) -> Result<Self> {
        let bad = |what: &str| DbError::Corrupt(format!("stream {}: {what}", r.id.0));
        let source = match r.source_kind.as_str() {
            "rtsp" => Source::Rtsp {
                url: r.url.clone(),
                transport: match r.rtsp_transport.as_str() {
                    "udp" => RtspTransport::Udp,
                    _ => RtspTransport::Tcp,
                },
            },
            "file" => Source::File {
                path: r.file_path.clone(),
                looping: r.file_loop,
            },
            other => return Err(bad(&format!("unknown source kind '{other}'"))),
        };
        let outputs = r
            .output_types
            .split(',')
            .filter(|s| !s.is_empty())
            .map(parse_output_type)
            .collect::<Result<Vec<OutputType>, _>>()
            .map_err(|e| bad(&e.to_string()))?;
        let storage = StorageKind::parse(&r.archive_storage)
            .ok_or_else(|| bad(&format!("unknown storage '{}'", r.archive_storage)))?;
        let origin = match r.origin.as_str() {
            "config" => Origin::Config,
            _ => Origin::Api,
        };
        Ok(StreamRecord {
            spec: StreamSpec {
                id: r.id.0,
                name: r.name,
                source,
                outputs,
                on_demand: r.on_demand,
                enabled: r.enabled,
                verbose: r.verbose_level,
                archive: ArchiveSpec {
                    recording: r.archive_recording,
                    ms_per_file: r.archive_ms_per_file.and_then(|v| u32::try_from(v).ok()),
                    storage,
                    directory: r.archive_directory,
                    bucket: r.archive_bucket,
                    prefix: r.archive_prefix,
                },
                retention: RetentionSpec {
                    max_age_s: r.retention_max_age_s,
                    max_bytes: r.retention_max_bytes,
                },
            },
            origin,
            created_at_us: r.created_at_us,
            updated_at_us: r.updated_at_us,
        })
    }
}

fn outputs_text(outputs: &[OutputType]) -> String {
    outputs
        .iter()
        .map(|o| o.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The column values of a spec, in `COLUMNS` order (minus the bookkeeping at the end).
struct Values {
    id: DbUuid,
    name: String,
    source_kind: &'static str,
    url: String,
    transport: &'static str,
    file_path: String,
    file_loop: bool,
    outputs: String,
    on_demand: Option<bool>,
    enabled: bool,
    verbose: String,
    recording: bool,
    ms_per_file: Option<i32>,
    storage: &'static str,
    directory: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    max_age_s: Option<i64>,
    max_bytes: Option<i64>,
}

impl From<&StreamSpec> for Values {
    fn from(s: &StreamSpec) -> Self {
        let (url, transport, file_path, file_loop) = match &s.source {
            Source::Rtsp { url, transport } => {
                (url.clone(), transport.as_str(), String::new(), false)
            }
            Source::File { path, looping } => (String::new(), "tcp", path.clone(), *looping),
        };
        Values {
            id: DbUuid(s.id),
            name: s.name.clone(),
            source_kind: s.source.kind(),
            url,
            transport,
            file_path,
            file_loop,
            outputs: outputs_text(&s.outputs),
            on_demand: s.on_demand,
            enabled: s.enabled,
            verbose: s.verbose.clone(),
            recording: s.archive.recording,
            ms_per_file: s.archive.ms_per_file.and_then(|v| i32::try_from(v).ok()),
            storage: s.archive.storage.as_str(),
            directory: s.archive.directory.clone(),
            bucket: s.archive.bucket.clone(),
            prefix: s.archive.prefix.clone(),
            max_age_s: s.retention.max_age_s,
            max_bytes: s.retention.max_bytes,
        }
    }
}

/// Binds `Values` to a query in `COLUMNS` order; shared by insert and update.
macro_rules! bind_values {
    ($q:expr, $v:expr) => {
        $q.bind($v.id)
            .bind($v.name)
            .bind($v.source_kind)
            .bind($v.url)
            .bind($v.transport)
            .bind($v.file_path)
            .bind($v.file_loop)
            .bind($v.outputs)
            .bind($v.on_demand)
            .bind($v.enabled)
            .bind($v.verbose)
            .bind($v.recording)
            .bind($v.ms_per_file)
            .bind($v.storage)
            .bind($v.directory)
            .bind($v.bucket)
            .bind($v.prefix)
            .bind($v.max_age_s)
            .bind($v.max_bytes)
    };
}

const INSERT: &str = "INSERT INTO streams (id, name, source_kind, url, rtsp_transport, file_path, \
    file_loop, output_types, on_demand, enabled, verbose_level, archive_recording, archive_ms_per_file, \
    archive_storage, archive_directory, archive_bucket, archive_prefix, retention_max_age_s, \
    retention_max_bytes, origin, created_at_us, updated_at_us) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
    $20, $21, $21) ON CONFLICT (id) DO NOTHING";

/// Inserts a new stream. Fails with [`DbError::Conflict`] if the id exists.
pub async fn insert(db: &Db, spec: &StreamSpec, origin: Origin) -> Result<StreamRecord> {
    let v = Values::from(spec);
    let now = now_us();
    let done = with_pool!(db, p => bind_values!(sqlx::query(INSERT), v)
        .bind(origin.as_str())
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
    if done == 0 {
        return Err(DbError::Conflict(spec.id));
    }
    get(db, spec.id)
        .await?
        .ok_or_else(|| DbError::Corrupt(format!("stream {} vanished after insert", spec.id)))
}

/// Inserts the config file's streams that the database does not know yet; returns how many.
pub async fn seed(db: &Db, specs: &[StreamSpec]) -> Result<u64> {
    let mut inserted = 0;
    for spec in specs {
        let v = Values::from(spec);
        let now = now_us();
        inserted += with_pool!(db, p => bind_values!(sqlx::query(INSERT), v)
            .bind(Origin::Config.as_str())
            .bind(now)
            .execute(p)
            .await?
            .rows_affected());
    }
    Ok(inserted)
}

/// Replaces every setting of an existing stream. Returns `None` if it does not exist.
pub async fn update(db: &Db, spec: &StreamSpec) -> Result<Option<StreamRecord>> {
    const SQL: &str = "UPDATE streams SET name = $2, source_kind = $3, url = $4, \
        rtsp_transport = $5, file_path = $6, file_loop = $7, output_types = $8, on_demand = $9, \
        enabled = $10, verbose_level = $11, archive_recording = $12, archive_ms_per_file = $13, \
        archive_storage = $14, archive_directory = $15, archive_bucket = $16, \
        archive_prefix = $17, retention_max_age_s = $18, retention_max_bytes = $19, \
        updated_at_us = $20 WHERE id = $1";
    let v = Values::from(spec);
    let now = now_us();
    let n = with_pool!(db, p => bind_values!(sqlx::query(SQL), v)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
    if n == 0 {
        return Ok(None);
    }
    get(db, spec.id).await
}

/// Enables or disables a stream. Returns false if it does not exist.
pub async fn set_enabled(db: &Db, id: Uuid, enabled: bool) -> Result<bool> {
    const SQL: &str = "UPDATE streams SET enabled = $2, updated_at_us = $3 WHERE id = $1";
    let now = now_us();
    let n = with_pool!(db, p => sqlx::query(SQL)
        .bind(DbUuid(id))
        .bind(enabled)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
    Ok(n > 0)
}

/// Deletes a stream row. Its archive segments stay (they are removed by retention). Returns false
/// if it did not exist.
pub async fn delete(db: &Db, id: Uuid) -> Result<bool> {
    const SQL: &str = "DELETE FROM streams WHERE id = $1";
    let n = with_pool!(db, p => sqlx::query(SQL)
        .bind(DbUuid(id))
        .execute(p)
        .await?
        .rows_affected());
    Ok(n > 0)
}

/// One stream by id.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<StreamRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM streams WHERE id = $1");
    let row: Option<Row> = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(DbUuid(id))
        .fetch_optional(p)
        .await?);
    row.map(StreamRecord::try_from).transpose()
}

/// A page of streams ordered by id, starting after `after` (keyset pagination).
pub async fn list_page(db: &Db, after: Option<Uuid>, limit: u32) -> Result<Vec<StreamRecord>> {
    let rows: Vec<Row> = match after {
        Some(after) => {
            let sql = format!("SELECT {COLUMNS} FROM streams WHERE id > $1 ORDER BY id LIMIT $2");
            with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(DbUuid(after))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?)
        }
        None => {
            let sql = format!("SELECT {COLUMNS} FROM streams ORDER BY id LIMIT $1");
            with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?)
        }
    };
    rows.into_iter().map(StreamRecord::try_from).collect()
}

/// Every stream, ordered by id. Used at start-up and by the Go routes (streams are few).
pub async fn list_all(db: &Db) -> Result<Vec<StreamRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM streams ORDER BY id");
    let rows: Vec<Row> = with_pool!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(p)
        .await?);
    rows.into_iter().map(StreamRecord::try_from).collect()
}
