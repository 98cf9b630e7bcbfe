//! Shared helpers for the integration tests: databases on both engines, app state, HTTP helpers,
//! and a launcher for the real binary.
#![allow(dead_code)]

pub mod binary;
pub mod media;
pub mod s3;

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

/// A migrated, empty database of one engine, isolated from every other test.
pub struct TestDb {
    pub db: Db,
    /// Postgres schema to drop at the end, or the SQLite temp dir to keep alive.
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn engine_name(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Drops the Postgres schema (SQLite files go with the temp dir).
    pub async fn cleanup(self) {
        let TestDb { db, schema, _dir } = self;
        db.close().await;
        if let Some(schema) = schema
            && let Ok(admin) = Db::connect(&pg_url()).await
        {
            if let Db::Postgres(p) = &admin {
                let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await;
            }
            admin.close().await;
        }
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
        schema: None,
        _dir: Some(dir),
    }
}

/// A fresh Postgres schema (named uniquely) on the test server, with `search_path` pointing at it.
pub async fn postgres() -> TestDb {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("Postgres at {} must be reachable: {e}", pg_url()));
    if let Db::Postgres(p) = &admin {
        let sql = format!("CREATE SCHEMA \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(p)
            .await
            .expect("create schema");
    }
    admin.close().await;
    let opts = PgConnectOptions::from_str(&pg_url())
        .expect("pg url")
        .options([("search_path", schema.as_str())]);
    let db = Db::connect_postgres(opts).await.expect("postgres connects");
    db.migrate().await.expect("postgres migrates");
    TestDb {
        db,
        schema: Some(schema),
        _dir: None,
    }
}

/// Runs an async test body once on SQLite and once on Postgres.
#[macro_export]
macro_rules! both_engines {
    ($(#[$m:meta])* async fn $name:ident($db:ident: &TestDb) $body:block) => {
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
    let roots = video_server::archive::markers::MarkedRoots::open(db.clone(), config.clone())
        .await
        .expect("storage roots");
    AppState {
        archive: Arc::new(video_server::archive::Archive::new(&config)),
        roots,
        reconcile: Default::default(),
        config,
        db: db.clone(),
        manager,
        uploads: Default::default(),
        listeners: Default::default(),
    }
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
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(body.into()).expect("request");
    let resp = video_server::api::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
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

/// A fresh Postgres schema on the test server and a URL whose connections use it.
pub async fn pg_schema_url() -> String {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&pg_url()).await.expect("postgres reachable");
    if let Db::Postgres(p) = &admin {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(p)
            .await
            .expect("schema");
    }
    admin.close().await;
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}
