//! The SQL index: one repository API over SQLite (the embedded default) or PostgreSQL.
//!
//! Only this module contains SQL. Queries are written once where both dialects agree (they do for
//! everything here: `$n` parameters, `ON CONFLICT`, `RETURNING`, window functions) and the
//! [`with_pool!`] macro instantiates the same code for both pool types. Where a type differs between
//! engines (UUID is `TEXT` in SQLite and `UUID` in Postgres) a small wrapper type ([`DbUuid`]) encodes
//! the right thing for each.

pub mod audit;
pub mod cluster;
pub mod import;
pub mod leases;
pub mod pages;
pub mod plans;
pub mod protected;
pub mod reports;
pub mod retention;
pub mod roots;
pub mod runs;
pub mod segments;
pub mod signing_keys;
pub mod streams;
pub mod tokens;

/// A contiguous stretch of recording, `[start_us, end_us)`: what `segments` and `runs` both
/// answer ranges with (here, below both, so neither imports the other for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_us: i64,
    pub end_us: i64,
}

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Decode, Encode, PgPool, Postgres, Sqlite, SqlitePool, Type};
use uuid::Uuid;

/// Errors from the index. The URL in `Connect` never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL '{0}' is not supported (use sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("cannot connect to database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stream {0} already exists")]
    Conflict(Uuid),
    #[error("cluster coordination needs a Postgres index")]
    NeedsPostgres,
    #[error(
        "stream {stream}: segment rows refused, this node's lease (epoch {epoch}) has moved on"
    )]
    Fenced { stream: Uuid, epoch: i64 },
    #[error(
        "the SQLite index {path} is in use by another video-server process (lock file {lock}): a SQLite index serves one process; run several nodes on Postgres with [cluster]"
    )]
    InUse { path: String, lock: String },
    #[error("cannot lock the SQLite index {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database row is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A connection pool to the index. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same block of query code against whichever pool `db` holds. Inside the block `$pool` is
/// a `&SqlitePool` or a `&PgPool`, so the block is type-checked once per engine.
#[macro_export]
#[doc(hidden)]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: the write lock is
/// taken at once, waiting for it under the busy timeout. A deferred `BEGIN` that reads first and
/// writes later cannot wait when another connection has written in between: SQLite refuses the
/// upgrade at once (`database is locked`, SQLITE_BUSY or BUSY_SNAPSHOT) whatever the busy
/// timeout, which 200 recorders opening their first segments together met. On Postgres it is a
/// plain `BEGIN` (row locks and the fence do the work there).
pub(crate) trait BeginWrite {
    type Database: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, Self::Database>, sqlx::Error>,
    > + Send;
}

impl BeginWrite for SqlitePool {
    type Database = Sqlite;
    async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Database = Postgres;
    async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// Largest part of a SQLite database file read through a memory map (`PRAGMA mmap_size`): SQLite's
/// default compile-time cap (`SQLITE_MAX_MMAP_SIZE`), so a larger value would be clamped anyway.
pub const SQLITE_MMAP_BYTES: i64 = 2_147_418_112;

/// How long to wait for a pooled connection before failing a request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Connects by URL scheme (`sqlite:` or `postgres:`/`postgresql:`). For SQLite the file and its
    /// directory are created if missing. Does not migrate: call [`Db::migrate`].
    pub async fn connect(url: &str) -> Result<Db> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| DbError::Connect {
                    url: url.to_owned(),
                    source,
                })?
                .create_if_missing(true)
                // WAL: readers (API queries) never block the writer (recorder) and vice versa.
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL in WAL mode loses at most the last transactions on power loss, never
                // corrupts; segment rows are re-derived from files on start-up anyway.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                // Reads through a memory map instead of a read() per page: a 1000-row segment
                // page touches ~1000 pages and gets twice as fast (docs/benchmarks.md). SQLite
                // only reads through it (writes still go through the journal); this is its
                // compile-time maximum, address space only, not memory.
                .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
            let file = opts.get_filename();
            if let Some(dir) = file.parent()
                && !dir.as_os_str().is_empty()
                && file != Path::new(":memory:")
            {
                std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            Self::connect_sqlite(opts)
                .await
                .map_err(|source| DbError::Connect {
                    url: url.to_owned(),
                    source,
                })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(|source| DbError::Connect {
                url: crate::redact::mask_url(url),
                source,
            })?;
            Self::connect_postgres(opts)
                .await
                .map_err(|source| DbError::Connect {
                    url: crate::redact::mask_url(url),
                    source,
                })
        } else {
            Err(DbError::UnsupportedUrl(crate::redact::mask_url(url)))
        }
    }

    pub async fn connect_sqlite(opts: SqliteConnectOptions) -> Result<Db, sqlx::Error> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    pub async fn connect_postgres(opts: PgConnectOptions) -> Result<Db, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        Ok(Db::Postgres(pool))
    }

    /// A second pool on the same database (same options, `max_connections` of its own), for work
    /// that must not queue behind API requests: the recorders' index writes and the upkeep tasks
    /// (uploader, retention) each get one, so a burst of API queries cannot hold every connection
    /// while footage waits to be indexed. Connects lazily; close it with [`Db::close`].
    pub fn sibling(&self, max_connections: u32) -> Db {
        match self {
            Db::Sqlite(p) => Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
            Db::Postgres(p) => Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with((*p.connect_options()).clone()),
            ),
        }
    }

    /// Connections open and connections busy in this pool (for metrics).
    pub fn pool_usage(&self) -> (u32, u32) {
        with_pool!(self, p => {
            let size = p.size();
            (size, size.saturating_sub(u32::try_from(p.num_idle()).unwrap_or(u32::MAX)))
        })
    }

    pub fn engine(&self) -> Engine {
        match self {
            Db::Sqlite(_) => Engine::Sqlite,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    /// Applies the embedded migrations of this engine.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Db::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await?,
            Db::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    /// Cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

/// Keeps other server processes off a SQLite index: an exclusive lock (`flock`) on
/// `<index file>.lock`, held for as long as the returned file is open (the server keeps it until
/// it has stopped). A second `serve` on the same file fails with [`DbError::InUse`]: two processes
/// would each run recorders, retention and repair against the other's rows. The kernel drops the
/// lock when the process dies, so a crash never leaves it behind. `None` for Postgres and for an
/// in-memory SQLite database. (The lock is on a file of its own, not the index, so it cannot
/// interact with SQLite's own locking of the index file.)
pub fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let opts = SqliteConnectOptions::from_str(url).map_err(|source| DbError::Connect {
        url: url.to_owned(),
        source,
    })?;
    let file = opts.get_filename();
    if file == Path::new(":memory:") || file.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut lock_path = file.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let failed = |source| DbError::Lock {
        path: file.display().to_string(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbError::InUse {
            path: file.display().to_string(),
            lock: lock_path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

/// Current wall-clock time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A UUID column: `TEXT` (hyphenated, lower case) in SQLite, native `UUID` in Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbUuid(pub Uuid);

impl Type<Sqlite> for DbUuid {
    fn type_info() -> <Sqlite as sqlx::Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as sqlx::Database>::TypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for DbUuid {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.hyphenated().to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbUuid {
    fn decode(value: <Sqlite as sqlx::Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(DbUuid(Uuid::parse_str(s)?))
    }
}

impl Type<Postgres> for DbUuid {
    fn type_info() -> <Postgres as sqlx::Database>::TypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbUuid {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbUuid {
    fn decode(value: <Postgres as sqlx::Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbUuid(<Uuid as Decode<Postgres>>::decode(value)?))
    }
}

impl From<DbUuid> for Uuid {
    fn from(v: DbUuid) -> Uuid {
        v.0
    }
}
