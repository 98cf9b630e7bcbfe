//! The real binary: start-up on a fresh directory, persistence across restarts, CLI spellings.

use std::process::Command;

use serde_json::json;

use crate::support::binary::{ServerProcess, base_config, binary};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn api_created_stream_survives_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    assert!(
        dir.path().join("data/index.db").exists(),
        "SQLite index created"
    );
    let c = http();
    let r = c
        .post(format!("{}/api/v1/streams", server.api))
        .json(&json!({"source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/none"}, "outputs": ["mse"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(server.terminate(), "graceful exit on SIGTERM");

    // The Go flag spelling works as well.
    let server = ServerProcess::start(dir.path(), &["-conf", "conf.toml"], &[]);
    let list: serde_json::Value = c
        .get(format!("{}/list", server.api))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list, json!({"data": [{"stream_id": id}]}));
    let status: serde_json::Value = c
        .get(format!("{}/status", server.api))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let entry = status["streams"][&id]
        .as_object()
        .expect("stream in status");
    for key in [
        "url",
        "status",
        "on_demand",
        "online",
        "streaming",
        "viewers",
        "last_health_check",
        "last_health_error",
        "supported_output_types",
        "codecs",
    ] {
        assert!(entry.contains_key(key), "/status lacks {key}");
    }
    for key in ["api", "video", "streams", "hls", "on_demand"] {
        assert!(status.get(key).is_some(), "/status lacks {key}");
    }
    // Swagger UI and the OpenAPI document are served.
    let r = c
        .get(format!("{}/swagger-ui/", server.api))
        .send()
        .await
        .expect("swagger");
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = c
        .get(format!("{}/openapi.json", server.api))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"].get("/api/v1/streams").is_some());
    assert!(server.terminate());
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("my.conf.toml"), "[video]\nport = \"x\"\n").expect("conf");
    let out = Command::new(binary())
        .current_dir(dir.path())
        .args(["--conf", "./my.conf.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("my.conf.toml") && err.contains("video.port"),
        "{err}"
    );

    let out = Command::new(binary())
        .current_dir(dir.path())
        .args(["-conf=missing.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn openapi_and_migrate_subcommands() {
    let out = Command::new(binary()).arg("openapi").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(text, video_server::api::openapi_json());

    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let out = Command::new(binary())
        .current_dir(dir.path())
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .args(["--conf", "conf.toml", "migrate"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data/index.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn database_url_env_selects_postgres() {
    // VIDEO_SERVER_DATABASE_URL overrides [database] url: run the binary on Postgres.
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = video_server::db::Db::connect(&crate::support::pg_url())
        .await
        .expect("postgres reachable");
    if let video_server::db::Db::Postgres(p) = &admin {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(p)
            .await
            .expect("schema");
    }
    let base = crate::support::pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let server = ServerProcess::start(
        dir.path(),
        &["--conf", "conf.toml"],
        &[("VIDEO_SERVER_DATABASE_URL", url.as_str())],
    );
    assert!(
        !dir.path().join("data/index.db").exists(),
        "SQLite must not be used"
    );
    let r = http()
        .post(format!("{}/api/v1/streams", server.api))
        .json(&json!({"source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/x"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert!(server.terminate());
    if let video_server::db::Db::Postgres(p) = &admin {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{schema}\".streams"
        )))
        .fetch_one(p)
        .await
        .expect("count");
        assert_eq!(n, 1);
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(p)
        .await;
    }
    admin.close().await;
}

/// What a Go user starts the server with keeps working: `-cpuprofile`/`-memprofile` are accepted
/// and ignored with a warning, keys in any case are matched (with a warning naming them), hourly
/// segments are accepted, and an empty `host` listens on IPv6 and IPv4.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_command_line_and_config_work_as_they_did() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = "[API]\nEnabled = true\nHost = \"127.0.0.1\"\nPort = 0\n\
                [Video]\nHost = \"\"\nPort = 0\n\
                [Archive]\nServing = true\nMs_Per_File = 3600000\n\
                [database]\nurl = \"sqlite://data/index.db\"\n";
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    let server = ServerProcess::start(
        dir.path(),
        &[
            "-cpuprofile",
            "cpu.out",
            "-conf",
            "conf.toml",
            "-memprofile=mem.out",
        ],
        &[],
    );
    let logs = server.log_text();
    for expected in [
        "-cpuprofile cpu.out: ignored",
        "-memprofile mem.out: ignored",
        "config key `API` matched as `api`",
        "config key `archive.Ms_Per_File` matched as `archive.ms_per_file`",
        "`archive.ms_per_file` = 3600000",
    ] {
        assert!(logs.contains(expected), "{expected}: {logs}");
    }
    assert!(!dir.path().join("cpu.out").exists());
    let status: serde_json::Value = http()
        .get(format!("{}/status", server.api))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["video"]["host"], "");
    // The video listener answers on both address families.
    let port: u16 = server
        .video
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(server.video.starts_with("[::]"), "{}", server.video);
    for host in ["127.0.0.1", "[::1]"] {
        let r = http()
            .get(format!("http://{host}:{port}/hls/nope.m3u8"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(r.status(), 400, "{host}");
    }
    assert!(server.terminate());
}

/// SIGTERM shuts down gracefully, which waits for requests in flight; a second signal exits at
/// once (status 130) instead of waiting for them (README "Running").
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    use std::io::Write;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let mut server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    // A request in flight that never ends: its body announces 100 bytes and sends one.
    let addr = server.api.trim_start_matches("http://").to_owned();
    let mut request = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        request,
        "POST /api/v1/streams HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{"
    )
    .expect("send");
    request.flush().expect("flush");
    // The request is being read (a stream list answers meanwhile: the server is up).
    let list = http()
        .get(format!("{}/api/v1/streams", server.api))
        .send()
        .await
        .expect("list");
    assert_eq!(list.status(), 200);

    server.signal("TERM");
    server.wait_for_log(
        "shutting down (send the signal again to exit at once)",
        Duration::from_secs(10),
    );
    // Graceful: still waiting for the request after a second.
    assert_eq!(
        server.wait_exit(Duration::from_secs(1)),
        None,
        "the first signal waits for requests in flight"
    );
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(3))
        .expect("the second signal exits at once");
    assert_eq!(status.code(), Some(130), "{status:?}");
    drop(request);
}
