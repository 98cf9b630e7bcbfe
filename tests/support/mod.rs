//! Shared helpers for the integration tests: databases on both engines, app state, HTTP helpers,
//! and a launcher for the real binary.
#![allow(dead_code)]

pub mod admin;
pub mod binary;
pub mod browser;
pub mod media;
pub mod pg_private;
pub mod ports;
pub mod routes;
pub mod s3;
pub mod tmpfs;

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sqlx::postgres::PgConnectOptions;
use tower::ServiceExt;
use video_server::api::AppState;
use video_server::config::Config;
use video_server::db::Db;
use video_server::manager::StreamManager;

/// Postgres used by the tests; `scripts/test` makes sure it answers.
pub fn pg_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A Postgres schema of one test's own, dropped with everything in it when the guard is dropped:
/// at the end of the test, and also when the test panics (the drop runs while unwinding).
///
/// Every connection made through [`PgSchema::url`] or [`PgSchema::connect_options`] uses the
/// schema (`search_path`) and carries the schema's name as its `application_name`, so the drop
/// can end connections a failed test left open (a server still running, a pool never closed)
/// instead of waiting on their locks. The name starts with `t_<unix seconds>_`, which lets
/// `scripts/test` sweep schemas left behind by a killed test process.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    /// Creates a fresh schema on the test server.
    pub async fn create() -> PgSchema {
        let name = format!(
            "t_{}_{}",
            chrono::Utc::now().timestamp(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = Db::connect(&pg_url()).await.unwrap_or_else(|e| {
            panic!(
                "Postgres at {} must be reachable (scripts/test starts one): {e}",
                pg_url()
            )
        });
        if let Db::Postgres(p) = &admin {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
                .execute(p)
                .await
                .expect("create schema");
        }
        admin.close().await;
        PgSchema { name }
    }

    /// A `postgres://` URL whose connections use this schema (for servers started by URL).
    pub fn url(&self) -> String {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!(
            "{base}{sep}options=-c%20search_path%3D{0}&application_name={0}",
            self.name
        )
    }

    /// Connection options for this schema (for pools made by the test itself).
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&pg_url())
            .expect("pg url")
            .options([("search_path", self.name.as_str())])
            .application_name(&self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The test's runtime may be unwinding or single-threaded: drop on a thread of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(drop_schema(&name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: Postgres schema {} not dropped: {e}", self.name),
            Err(_) => eprintln!("warning: Postgres schema {} not dropped", self.name),
        }
    }
}

async fn drop_schema(name: &str) -> Result<(), String> {
    let opts = PgConnectOptions::from_str(&pg_url()).map_err(|e| e.to_string())?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&pool)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(&pool)
        .await
    }
    .await;
    pool.close().await;
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// A migrated, empty database of one engine, isolated from every other test. Its Postgres schema
/// is dropped when it is dropped, whatever the outcome of the test.
pub struct TestDb {
    pub db: Db,
    /// Dropped after `db` (field order): the pool closes or dies first, then the schema goes.
    _schema: Option<PgSchema>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn engine_name(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, then drops the Postgres schema (SQLite files go with the temp dir).
    pub async fn cleanup(self) {
        self.db.close().await;
    }
}

/// A fresh SQLite database in a temp dir.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/index.db", dir.path().display());
    let db = Db::connect(&url).await.expect("sqlite connects");
    db.migrate().await.expect("sqlite migrates");
    TestDb {
        db,
        _schema: None,
        _dir: Some(dir),
    }
}

/// A fresh Postgres schema (named uniquely) on the test server, with `search_path` pointing at it.
pub async fn postgres() -> TestDb {
    let schema = PgSchema::create().await;
    let db = Db::connect_postgres(schema.connect_options())
        .await
        .expect("postgres connects");
    db.migrate().await.expect("postgres migrates");
    TestDb {
        db,
        _schema: Some(schema),
        _dir: None,
    }
}

/// Runs an async test body once on SQLite and once on Postgres.
#[macro_export]
macro_rules! both_engines {
    ($(#[$m:meta])* async fn $name:ident($db:ident: &TestDb $(,)?) $body:block) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($db: &$crate::support::TestDb) $body

            #[tokio::test]
            async fn sqlite() {
                let db = $crate::support::sqlite().await;
                run(&db).await;
                db.cleanup().await;
            }

            #[tokio::test]
            async fn postgres() {
                let db = $crate::support::postgres().await;
                run(&db).await;
                db.cleanup().await;
            }
        }
    };
}

/// The index of a whole server under test (in process or the real binary), by URL: a SQLite file
/// in a temp dir, or a Postgres schema of its own (dropped with the value, also on panic).
pub struct Index {
    pub engine: video_server::db::Engine,
    pub url: String,
    _schema: Option<PgSchema>,
    _dir: Option<tempfile::TempDir>,
}

impl Index {
    pub async fn new(engine: video_server::db::Engine) -> Index {
        match engine {
            video_server::db::Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("index.db").display());
                Index {
                    engine,
                    url,
                    _schema: None,
                    _dir: Some(dir),
                }
            }
            video_server::db::Engine::Postgres => {
                let schema = PgSchema::create().await;
                Index {
                    engine,
                    url: schema.url(),
                    _schema: Some(schema),
                    _dir: None,
                }
            }
        }
    }

    /// A new pool on this index (the caller closes it).
    pub async fn connect(&self) -> Db {
        Db::connect(&self.url).await.expect("index connects")
    }
}

/// Runs a whole-server test body (multi-threaded runtime) once with a SQLite index and once with
/// a Postgres one: `on_both_engines!(async fn name(index: &Index) { ... })`.
#[macro_export]
macro_rules! on_both_engines {
    ($(#[$m:meta])* async fn $name:ident($idx:ident: &Index $(,)?) $body:block) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($idx: &$crate::support::Index) $body

            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                let index = $crate::support::Index::new(video_server::db::Engine::Sqlite).await;
                run(&index).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                let index = $crate::support::Index::new(video_server::db::Engine::Postgres).await;
                run(&index).await;
            }
        }
    };
}

/// Parses a TOML config for tests.
pub fn config(toml: &str) -> Config {
    Config::from_toml_str("test.toml", toml).expect("test config is valid")
}

/// An application state over a test database, with streams from the database started.
pub async fn state(db: &Db, config: Config) -> AppState {
    let config = Arc::new(config);
    let manager = StreamManager::new(config.clone(), db.clone());
    for rec in video_server::db::streams::list_all(db)
        .await
        .expect("list streams")
    {
        if rec.spec.enabled {
            manager.lock(rec.spec.id).await.apply(&rec.spec).await;
        }
    }
    let auth = video_server::auth::Auth::new(&config.auth, db.clone())
        .await
        .expect("auth set-up");
    // Entries are written until the test's runtime ends.
    auth.spawn_audit_writer(tokio_util::sync::CancellationToken::new());
    let roots = video_server::archive::markers::MarkedRoots::open(db.clone(), config.clone())
        .await
        .expect("storage roots");
    let limits = Arc::new(video_server::limits::Limits::new(&config));
    AppState {
        archive: Arc::new(video_server::archive::Archive::new(&config)),
        roots,
        reconcile: Default::default(),
        config,
        db: db.clone(),
        manager,
        uploads: Default::default(),
        auth,
        listeners: Default::default(),
        limits,
        metrics: Default::default(),
        webrtc: Default::default(),
    }
}

/// What a restart of the server sees: the old state's streams are stopped (and waited for) first,
/// then a new state is built over the same database. Two managers running the same streams at
/// once would be no restart at all.
pub async fn restart(old: AppState, config: Config) -> AppState {
    old.manager.shutdown().await;
    let db = old.db.clone();
    drop(old);
    state(&db, config).await
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request to the API app.
pub async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Reply {
    call_as(state, None, method, uri, content_type, body).await
}

/// Sends one request to the API app, with `Authorization: Bearer <token>` when a token is given.
pub async fn call_as(
    state: &AppState,
    token: Option<&str>,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(body.into()).expect("request");
    send(video_server::api::app(state.clone()), req).await
}

/// Sends one request to any router (the API app, the video app) and reads the answer in full.
pub async fn send(app: axum::Router, req: Request<Body>) -> Reply {
    let resp = app.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(state: &AppState, uri: &str) -> Reply {
    call(state, "GET", uri, None, Body::empty()).await
}

pub async fn send_json(
    state: &AppState,
    method: &str,
    uri: &str,
    body: &serde_json::Value,
) -> Reply {
    call(
        state,
        method,
        uri,
        Some("application/json"),
        serde_json::to_vec(body).expect("json"),
    )
    .await
}

/// The whole server running in this test process on ephemeral ports, with a SQLite index and HLS
/// directory in a temp dir.
pub struct InProcess {
    pub video: String,
    /// The index's URL (to reconnect after `stop`).
    pub db_url: String,
    pub api: String,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    running: Option<video_server::server::Running>,
}

impl InProcess {
    /// Starts with `extra` TOML appended to a base config (listeners on port 0).
    pub async fn start(extra: &str) -> InProcess {
        Self::start_with_db(extra, None).await
    }

    /// As [`InProcess::start`], with the index at `db_url` (SQLite in the temp dir when `None`).
    pub async fn start_with_db(extra: &str, db_url: Option<String>) -> InProcess {
        let dir = tempfile::tempdir().expect("tmp");
        let db_url =
            db_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("index.db").display()));
        let toml = format!(
            "[api]\nhost = \"127.0.0.1\"\nport = 0\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
             [database]\nurl = \"{db_url}\"\n{extra}\n",
        );
        let db_url = db_url.clone();
        let mut config = Config::from_toml_str("inprocess.toml", &toml).expect("config");
        if !extra.contains("directory") {
            config.hls.directory = dir.path().join("hls").display().to_string();
        }
        if !extra.contains("file_roots") {
            // The bundled clips, and clips a test makes in its temp dir.
            config.sources.file_roots =
                Some(vec!["assets".to_owned(), dir.path().display().to_string()]);
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = video_server::server::start(config, shutdown.clone())
            .await
            .expect("server starts");
        InProcess {
            db_url,
            video: running.video_addr.to_string(),
            api: format!("http://{}", running.api_addr.expect("api enabled")),
            state: running.state.clone(),
            dir,
            shutdown,
            running: Some(running),
        }
    }

    /// Shuts down gracefully; returns the temp dir (the SQLite index lives there).
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(std::time::Duration::from_secs(15), r.wait())
                .await
                .expect("graceful shutdown is prompt");
        }
        self.dir
    }
}

/// Asserts that the OpenAPI document declares `status` on `method path` (lower-case method, the
/// document's path) with the `Retry-After` header: what a test calls after receiving such an
/// answer over a `[limits]` limit, so the document cannot leave it out.
pub fn assert_documented_retry_after(method: &str, path: &str, status: &str) {
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let answer = &doc["paths"][path][method]["responses"][status];
    assert!(
        answer.is_object(),
        "the OpenAPI document does not declare {status} on {method} {path}"
    );
    assert!(
        answer["headers"]["Retry-After"].is_object(),
        "{status} on {method} {path} is declared without its Retry-After header: {answer}"
    );
}
