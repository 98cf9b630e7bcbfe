//! Hardening (issue 9), tried the way an attacker's script would: camera passwords never come
//! back out, health errors give categories instead of banners, file sources and archive
//! directories stay inside their roots, cross-site requests and rebinding hosts are refused.
//! Each runs with auth off (both engines) and with auth on and the admin token (`_with_auth_on`):
//! a deployment as the README recommends it must hold every defence too.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::InProcess;
use crate::support::admin::Auth;
use crate::support::binary::ServerProcess;
use crate::support::media::RtspServer;

/// The bootstrap admin token of the servers run with auth on.
const ADMIN: &str = "security-test-admin-token-0123456789abcdef";

/// Every body the session saw, to search for secrets at the end.
#[derive(Default)]
struct Transcript {
    bodies: Vec<(String, String)>,
}

impl Transcript {
    /// Sends `req`, records the body under `what`, returns status and JSON (or `Null`).
    async fn send(&mut self, what: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.bodies.push((what.to_owned(), text));
        (status, value)
    }

    fn hits(&self, secret: &str) -> Vec<String> {
        self.bodies
            .iter()
            .filter(|(_, body)| body.contains(secret))
            .map(|(what, body)| format!("{what}: {body}"))
            .collect()
    }
}

/// Polls a stream's status until its source is online with codecs (`Ok`) or reports a health
/// error (`Err(category)`).
async fn health(
    t: &mut Transcript,
    c: &reqwest::Client,
    api: &str,
    id: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, st) = t
            .send(
                "stream status",
                c.get(format!("{api}/api/v1/streams/{id}/status")),
            )
            .await;
        assert_eq!(status, 200, "{st}");
        let error = st["last_health_error"].as_str().unwrap_or("").to_owned();
        if st["online"] == json!(true) && st["codecs"].as_array().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        if !error.is_empty() {
            return Err(error);
        }
        assert!(Instant::now() < deadline, "no health verdict: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A scripted session against the real binary: a camera with a password (the GStreamer server
/// with `--auth`) is created, read back every way there is, updated with the masked URL (PUT and
/// PATCH: the camera must still authenticate), disabled and enabled through the Go routes, and
/// given a wrong password (the control: `auth_failed`). Neither password may appear in any body
/// or in the server's debug log.
async fn secrets_never_leave_the_server(db_url: &str, auth: Auth) {
    const PW: &str = "Hunter2q8Zx";
    const WRONG: &str = "Wr0ngk3Jv";
    let rtsp = RtspServer::start_with_auth(&format!("cam:{PW}"));
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("conf.toml"),
        format!(
            "[api]\nhost = \"127.0.0.1\"\nport = 0\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
             [database]\nurl = \"{db_url}\"\n{}",
            auth.section(dir.path())
        ),
    )
    .expect("conf");
    let server = ServerProcess::start(
        dir.path(),
        &["--conf", "conf.toml"],
        &[("RUST_LOG", "debug")],
    );
    let api = server.api.clone();
    let c = auth.http();
    let mut t = Transcript::default();
    let url = format!("rtsp://cam:{PW}@127.0.0.1:{}/test", rtsp.port);
    let masked = format!("rtsp://cam:***@127.0.0.1:{}/test", rtsp.port);

    let (status, created) = t
        .send(
            "create",
            c.post(format!("{api}/api/v1/streams")).json(&json!({
                "name": "door",
                "source": {"kind": "rtsp", "url": url},
                "outputs": ["mse"],
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"]["url"], json!(masked));
    let id = created["id"].as_str().expect("id").to_owned();
    health(&mut t, &c, &api, &id)
        .await
        .expect("the camera authenticates");

    // Read it back every way there is.
    for (what, path) in [
        ("list", "/api/v1/streams".to_owned()),
        ("get", format!("/api/v1/streams/{id}")),
        ("go status", "/status".to_owned()),
        ("go list", "/list".to_owned()),
        ("healthz", "/healthz".to_owned()),
        ("audit", "/api/v1/audit?limit=1000".to_owned()),
        ("metrics", "/metrics".to_owned()),
        ("storage", "/api/v1/storage".to_owned()),
        ("uploads", "/api/v1/archive/uploads".to_owned()),
        ("status", format!("/api/v1/streams/{id}/status")),
    ] {
        let (status, body) = t.send(what, c.get(format!("{api}{path}"))).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    // Ready or not (the archive directory may lack its marker yet), it names no secret.
    let (status, body) = t.send("readyz", c.get(format!("{api}/readyz"))).await;
    assert!(status == 200 || status == 503, "readyz: {status} {body}");
    let (_, list) = t.send("list", c.get(format!("{api}/api/v1/streams"))).await;
    assert_eq!(list["items"][0]["source"]["url"], json!(masked));
    let (_, go) = t.send("go status", c.get(format!("{api}/status"))).await;
    assert_eq!(go["streams"][&id]["url"], json!(masked));

    // PUT with the masked URL keeps the password: the restarted source authenticates again.
    let mut body = created.clone();
    for k in ["id", "origin", "created_at", "updated_at"] {
        body.as_object_mut().expect("object").remove(k);
    }
    body["name"] = json!("front door");
    let (status, put) = t
        .send(
            "put masked",
            c.put(format!("{api}/api/v1/streams/{id}")).json(&body),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["source"]["url"], json!(masked));
    health(&mut t, &c, &api, &id)
        .await
        .expect("PUT with the masked URL kept the password");

    // PATCH with the masked URL and another path on the same camera: still authenticates.
    let (status, patched) = t
        .send(
            "patch masked",
            c.patch(format!("{api}/api/v1/streams/{id}"))
                .header("content-type", "application/merge-patch+json")
                .body(
                    json!({"source": {"url": masked.replace("/test", "/av")}, "outputs": ["mse"]})
                        .to_string(),
                ),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["source"]["url"],
        json!(masked.replace("/test", "/av"))
    );
    health(&mut t, &c, &api, &id)
        .await
        .expect("PATCH with the masked URL kept the password");

    // The masked password is never carried to another server.
    let (status, refused) = t
        .send(
            "put masked elsewhere",
            c.put(format!("{api}/api/v1/streams/{id}")).json(&json!({
                "source": {"kind": "rtsp", "url": masked.replace("127.0.0.1", "127.0.0.2")},
            })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], json!("source.url"));

    // The Go routes: disable and enable answer with the status document.
    for route in ["disable_camera", "enable_camera"] {
        let (status, doc) = t
            .send(
                route,
                c.post(format!("{api}/{route}")).json(&json!({"guid": id})),
            )
            .await;
        assert_eq!(status, 200, "{route}: {doc}");
    }
    health(&mut t, &c, &api, &id)
        .await
        .expect("re-enabled with the stored password");

    // The control: a wrong password is what `auth_failed` looks like.
    let (status, _) = t
        .send(
            "patch wrong password",
            c.patch(format!("{api}/api/v1/streams/{id}"))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"source": {"url": url.replace(PW, WRONG)}}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        health(&mut t, &c, &api, &id).await,
        Err("auth_failed".to_owned())
    );
    let (_, go) = t.send("go status", c.get(format!("{api}/status"))).await;
    assert_eq!(
        go["streams"][&id]["last_health_error"],
        json!("auth_failed")
    );

    // The audit log and the metrics once more, after every change.
    for (what, path) in [
        ("audit at the end", "/api/v1/audit?limit=1000"),
        ("metrics at the end", "/metrics"),
    ] {
        let (status, body) = t.send(what, c.get(format!("{api}{path}"))).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let logs = server.log_text();
    assert!(
        logs.contains("stream started") && logs.contains(&masked),
        "the log was captured and names the (masked) source"
    );
    for secret in [PW, WRONG] {
        assert_eq!(t.hits(secret), Vec::<String>::new(), "{secret} in a body");
        let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} in the log: {leaked:#?}");
    }
    assert!(server.terminate(), "graceful exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_server_sqlite() {
    secrets_never_leave_the_server("sqlite://data/index.db", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_server_with_auth_on() {
    secrets_never_leave_the_server("sqlite://data/index.db", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_server_postgres() {
    let schema = crate::support::PgSchema::create().await;
    secrets_never_leave_the_server(&schema.url(), Auth::Off).await;
}

/// The index of an in-process server of `engine`; keep it alive as long as the server (a Postgres
/// schema is dropped with it).
async fn engine_db(engine: &str) -> crate::support::Index {
    crate::support::Index::new(match engine {
        "postgres" => video_server::db::Engine::Postgres,
        _ => video_server::db::Engine::Sqlite,
    })
    .await
}

/// Secrets in query parameters are masked too, and a URL that does not parse (it can only come
/// from a config file) is shown as `<redacted>`, never raw.
async fn masking_fails_closed(engine: &str) {
    let index = engine_db(engine).await;
    let s = InProcess::start_with_db(
        "[[rtsp_streams]]\nguid = \"566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c\"\n\
         url = \"rtsp://admin:p/Hunter2x@127.0.0.1:1/s\"\noutput_types = [\"mse\"]\n",
        Some(index.url.clone()),
    )
    .await;
    let c = Auth::Off.http();
    let r = c
        .post(format!("{}/api/v1/streams", s.api))
        .json(&json!({
            "source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/s?user=admin&password=Qsecret9&channel=2"},
            "enabled": false,
        }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let body = r.text().await.expect("body");
    assert!(
        body.contains("rtsp://127.0.0.1:1/s?user=admin&password=***&channel=2"),
        "{body}"
    );
    let list = c
        .get(format!("{}/api/v1/streams", s.api))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    let status = c
        .get(format!("{}/status", s.api))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("body");
    for text in [&body, &list, &status] {
        assert!(
            !text.contains("Qsecret9") && !text.contains("Hunter2x"),
            "{text}"
        );
    }
    assert!(list.contains("\"url\":\"<redacted>\""), "{list}");
    assert!(status.contains("\"url\":\"<redacted>\""), "{status}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn masking_fails_closed_sqlite() {
    masking_fails_closed("sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn masking_fails_closed_postgres() {
    masking_fails_closed("postgres").await;
}

/// An HTTP server on 127.0.0.1 with a recognisable banner, answering every connection.
/// An HTTP server that answers everything with a 400 page carrying `marker` in a header and in
/// the body.
async fn banner_server(marker: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = format!("<html>InternalAdminPanel {marker}</html>");
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nServer: SecretBanner/{marker}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(reply.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    port
}

/// A camera URL pointing at a closed port and at an HTTP server: `last_health_error` says
/// `connection_refused` and `not_rtsp`, and nothing the HTTP server sent shows up anywhere.
async fn health_errors_are_categories(engine: &str, auth: Auth) {
    // A bound socket that does not listen: connecting is refused, and nothing can take the port.
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    // A marker no response could contain by chance (a fixed number could turn up in a timestamp,
    // a port or an id).
    let marker = format!("build-{}", Uuid::new_v4().simple());
    let http_port = banner_server(&marker).await;
    let index = engine_db(engine).await;
    let keep = tempfile::tempdir().expect("tmp");
    let s = InProcess::start_with_db(&auth.section(keep.path()), Some(index.url.clone())).await;
    let c = auth.http();
    let mut t = Transcript::default();
    let mut ids = Vec::new();
    for port in [closed_port, http_port] {
        let (status, created) = t
            .send(
                "create",
                c.post(format!("{}/api/v1/streams", s.api)).json(&json!({
                    "source": {"kind": "rtsp", "url": format!("rtsp://127.0.0.1:{port}/cam")},
                    "outputs": ["mse"],
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(
        health(&mut t, &c, &s.api, &ids[0]).await,
        Err("connection_refused".to_owned())
    );
    assert_eq!(
        health(&mut t, &c, &s.api, &ids[1]).await,
        Err("not_rtsp".to_owned())
    );
    let (_, go) = t
        .send("go status", c.get(format!("{}/status", s.api)))
        .await;
    assert_eq!(
        go["streams"][&ids[1]]["last_health_error"],
        json!("not_rtsp")
    );
    for banner in [
        "SecretBanner",
        marker.as_str(),
        "InternalAdminPanel",
        "HTTP/1.1",
    ] {
        assert_eq!(t.hits(banner), Vec::<String>::new(), "{banner} leaked");
    }
    s.stop().await;
    drop(closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_errors_are_categories_sqlite() {
    health_errors_are_categories("sqlite", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_errors_are_categories_with_auth_on() {
    health_errors_are_categories("sqlite", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_errors_are_categories_postgres() {
    health_errors_are_categories("postgres", Auth::Off).await;
}

/// POSTs a stream and returns status and JSON body.
async fn create(c: &reqwest::Client, api: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(format!("{api}/api/v1/streams"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn expect_422(what: &str, (status, body): (u16, Value), field: &str, names: &str) {
    assert_eq!(status, 422, "{what}: {body}");
    assert_eq!(body["error"]["field"], json!(field), "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(names),
        "{what}: '{names}' not in {message}"
    );
}

/// File sources: only regular files under `[sources] file_roots` (here the bundled assets and the
/// server's temp dir) or the exact files the config names. `/etc/passwd`, `/proc/self/environ`,
/// `../` escapes and symlinks out of a root are 422 naming the roots.
async fn file_sources_stay_in_their_roots(engine: &str, auth: Auth) {
    let outside = tempfile::tempdir().expect("tmp");
    let named = outside.path().join("named.mp4");
    std::fs::copy("assets/demo.mp4", &named).expect("copy");
    std::fs::copy("assets/demo.mp4", outside.path().join("other.mp4")).expect("copy");
    let index = engine_db(engine).await;
    let s = InProcess::start_with_db(
        &format!(
            "[[local_files]]\nguid = \"13bf3e5c-d537-4f10-98e8-9d0afca8b070\"\nfile = \"{}\"\n\
             output_types = [\"mse\"]\nloop = true\n{}",
            named.display(),
            auth.section(outside.path())
        ),
        Some(index.url.clone()),
    )
    .await;
    let c = auth.http();
    let root = s.dir.path();
    std::fs::copy("assets/demo.mp4", root.join("clip.mp4")).expect("copy");
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.mp4")).expect("link");
    std::os::unix::fs::symlink(outside.path().join("other.mp4"), root.join("out.mp4"))
        .expect("link");
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    let roots = root.display().to_string();
    for bad in [
        "/etc/passwd".to_owned(),
        "/proc/self/environ".to_owned(),
        "/proc/self/pagemap".to_owned(),
        "assets/../Cargo.toml".to_owned(),
        format!("{}/sub/../../x.mp4", root.display()),
        format!("{}/passwd.mp4", root.display()),
        format!("{}/out.mp4", root.display()),
        format!("{}/sub", root.display()),
        outside.path().join("other.mp4").display().to_string(),
    ] {
        let r = create(
            &c,
            &s.api,
            json!({"source": {"kind": "file", "path": bad}, "enabled": false}),
        )
        .await;
        expect_422(&bad, r, "source.path", &roots);
    }
    for good in [
        "assets/demo.mp4".to_owned(),
        format!("{}/clip.mp4", root.display()),
        named.display().to_string(),
    ] {
        let (status, body) = create(
            &c,
            &s.api,
            json!({"source": {"kind": "file", "path": good}, "enabled": false}),
        )
        .await;
        assert_eq!(status, 201, "{good}: {body}");
    }
    // The config file's own entry outside the roots plays.
    let mut t = Transcript::default();
    health(&mut t, &c, &s.api, "13bf3e5c-d537-4f10-98e8-9d0afca8b070")
        .await
        .expect("the config-named file plays");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sources_stay_in_their_roots_sqlite() {
    file_sources_stay_in_their_roots("sqlite", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sources_stay_in_their_roots_with_auth_on() {
    file_sources_stay_in_their_roots("sqlite", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sources_stay_in_their_roots_postgres() {
    file_sources_stay_in_their_roots("postgres", Auth::Off).await;
}

/// Archive directories must lie under `[archive] directory` or `[archive] roots`, buckets must
/// be the `[s3]` bucket or one of `[s3] buckets`; POST, PUT and PATCH alike.
async fn storage_stays_in_its_roots(engine: &str, auth: Auth) {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path();
    for d in ["mp4/cams", "extra", "elsewhere"] {
        std::fs::create_dir_all(base.join(d)).expect("mkdir");
    }
    std::os::unix::fs::symlink(base.join("elsewhere"), base.join("mp4/out")).expect("link");
    let index = engine_db(engine).await;
    let s = InProcess::start_with_db(
        &format!(
            "[hls]\ndirectory = \"{b}/hls\"\n[archive]\ndirectory = \"{b}/mp4\"\n\
             roots = [\"{b}/extra\"]\n\
             [s3]\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\naccess_key = \"a\"\n\
             secret_key = \"s\"\nbucket = \"archive\"\nbuckets = [\"cams-a\"]\n{auth}",
            b = base.display(),
            auth = auth.section(base)
        ),
        Some(index.url.clone()),
    )
    .await;
    let c = auth.http();
    let rtsp = |archive: Value| {
        json!({"source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/x"}, "enabled": false,
               "archive": archive})
    };
    let b = base.display();
    for bad in [
        "/etc".to_owned(),
        "/tmp".to_owned(),
        format!("{b}/mp4/../elsewhere"),
        format!("{b}/mp4/out"),
        format!("{b}/mp4/out/new"),
        format!("{b}/mp4x"),
    ] {
        let r = create(&c, &s.api, rtsp(json!({"directory": bad}))).await;
        expect_422(&bad, r, "archive.directory", &format!("{b}/extra"));
    }
    for bucket in ["other", "archive2", ""] {
        let r = create(&c, &s.api, rtsp(json!({"storage": "s3", "bucket": bucket}))).await;
        assert_eq!(r.0, 422, "{bucket}: {}", r.1);
        assert_eq!(r.1["error"]["field"], json!("archive.bucket"));
    }
    let mut ok_id = String::new();
    for good in [
        json!({"directory": format!("{b}/mp4")}),
        json!({"directory": format!("{b}/mp4/cams/new")}),
        json!({"directory": format!("{b}/extra")}),
        json!({"storage": "s3", "bucket": "archive"}),
        json!({"storage": "s3", "bucket": "cams-a"}),
    ] {
        let (status, body) = create(&c, &s.api, rtsp(good.clone())).await;
        assert_eq!(status, 201, "{good}: {body}");
        ok_id = body["id"].as_str().expect("id").to_owned();
    }
    let r = c
        .patch(format!("{}/api/v1/streams/{ok_id}", s.api))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"archive": {"directory": "/var/tmp"}}).to_string())
        .send()
        .await
        .expect("patch");
    let status = r.status().as_u16();
    expect_422(
        "patch",
        (status, r.json().await.expect("json")),
        "archive.directory",
        &format!("{b}/mp4"),
    );
    let r = c
        .put(format!("{}/api/v1/streams/{ok_id}", s.api))
        .json(&rtsp(json!({"storage": "s3", "bucket": "stolen"})))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422);
    assert!(!Path::new(&format!("{b}/mp4x")).exists());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_stays_in_its_roots_sqlite() {
    storage_stays_in_its_roots("sqlite", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_stays_in_its_roots_with_auth_on() {
    storage_stays_in_its_roots("sqlite", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_stays_in_its_roots_postgres() {
    storage_stays_in_its_roots("postgres", Auth::Off).await;
}

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

/// A server on `engine` with `auth` playing the demo clip as a live stream, with a trusted
/// foreign origin; the index and the token file's directory are kept for as long as the server.
async fn start_demo_with_trusted_origin(
    engine: &str,
    auth: Auth,
) -> (InProcess, crate::support::Index, tempfile::TempDir) {
    let index = engine_db(engine).await;
    let keep = tempfile::tempdir().expect("tmp");
    let config = format!(
        "[[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\n\
         loop = true\n[cors]\nenabled = true\nallow_origins = [\"http://trusted.example\"]\n{}",
        auth.section(keep.path())
    );
    let s = InProcess::start_with_db(&config, Some(index.url.clone())).await;
    (s, index, keep)
}

/// Sends `req` with the optional `Origin` and returns status and JSON body.
async fn with_origin(req: reqwest::RequestBuilder, origin: Option<&str>) -> (u16, Value) {
    let req = match origin {
        Some(o) => req.header("origin", o),
        None => req,
    };
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Opens a WebSocket with the given `Origin`: `Ok(first binary message)` or `Err(HTTP status)`.
async fn ws_with_origin(url: &str, origin: &str, auth: Auth) -> Result<Vec<u8>, u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    if let Some(token) = auth.bearer() {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))) => {
                    return Ok(b.to_vec());
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("{url}: no binary message: {other:?}"),
            }
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// A page elsewhere cannot change anything or open a WebSocket: POST/PUT/DELETE and upgrades with
/// a foreign `Origin` (or `null`, or `Sec-Fetch-Site: cross-site`) are 403 in the route's error
/// shape and change nothing; the server's own listeners, a configured origin and clients without
/// `Origin` (curl) pass.
async fn cross_site_requests_are_refused(engine: &str, auth: Auth) {
    let (s, _index, _keep) = start_demo_with_trusted_origin(engine, auth).await;
    let c = auth.http();
    let api_port = s.api.rsplit(':').next().expect("port").to_owned();
    let video_port = s.video.rsplit(':').next().expect("port").to_owned();
    let stream = |name: &str| {
        json!({"name": name, "source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/x"},
               "enabled": false})
    };
    let streams = format!("{}/api/v1/streams", s.api);
    for foreign in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, body) =
            with_origin(c.post(&streams).json(&stream("evil")), Some(foreign)).await;
        assert_eq!(status, 403, "{foreign}: {body}");
        assert_eq!(body["error"]["code"], json!("cross_site_request"));
        // A form post to a Go route (`text/plain` needs no preflight): Go's error shape.
        let (status, body) = with_origin(
            c.post(format!("{}/disable_camera", s.api))
                .header("content-type", "text/plain")
                .body(format!("{{\"guid\":\"{DEMO}\"}}")),
            Some(foreign),
        )
        .await;
        assert_eq!(status, 403, "{foreign}: {body}");
        assert!(body["Error"].is_string(), "{body}");
        let (status, _) = with_origin(c.delete(format!("{streams}/{DEMO}")), Some(foreign)).await;
        assert_eq!(status, 403);
    }
    let (status, _) = with_origin(
        c.post(&streams)
            .header("sec-fetch-site", "cross-site")
            .json(&stream("evil")),
        None,
    )
    .await;
    assert_eq!(status, 403, "no Origin but a cross-site fetch");
    // Nothing changed: no stream created, the demo still enabled and listed.
    let (_, list) = with_origin(c.get(&streams), Some("http://evil.example")).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["items"][0]["enabled"], json!(true));

    for (name, origin) in [
        ("from video", Some(format!("http://127.0.0.1:{video_port}"))),
        ("from api", Some(format!("http://127.0.0.1:{api_port}"))),
        ("trusted", Some("http://trusted.example".to_owned())),
        ("curl", None),
    ] {
        let (status, body) =
            with_origin(c.post(&streams).json(&stream(name)), origin.as_deref()).await;
        assert_eq!(status, 201, "{name}: {body}");
    }

    // WebSocket upgrades on the video listener.
    let live = format!("ws://{}/ws/live?stream_id={DEMO}", s.video);
    assert_eq!(
        ws_with_origin(&live, "http://evil.example", auth).await,
        Err(403)
    );
    let archive = format!("ws://{}/ws/archive?stream_id={DEMO}&start=0", s.video);
    assert_eq!(
        ws_with_origin(&archive, "http://evil.example", auth).await,
        Err(403)
    );
    let first = ws_with_origin(&live, &format!("http://127.0.0.1:{video_port}"), auth)
        .await
        .expect("same-server page may watch");
    assert_eq!(first.first(), Some(&0x09));
    let first = ws_with_origin(&live, "http://trusted.example", auth)
        .await
        .expect("a configured origin may watch");
    assert_eq!(first.first(), Some(&0x09));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_are_refused_sqlite() {
    cross_site_requests_are_refused("sqlite", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_are_refused_with_auth_on() {
    cross_site_requests_are_refused("sqlite", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_are_refused_postgres() {
    cross_site_requests_are_refused("postgres", Auth::Off).await;
}

/// DNS rebinding: listeners bound to 127.0.0.1 answer 421 to any `Host` that is not a loopback
/// name or address, on every route of both listeners.
async fn rebinding_hosts_are_misdirected(engine: &str, auth: Auth) {
    let (s, _index, _keep) = start_demo_with_trusted_origin(engine, auth).await;
    let c = auth.http();
    let video = format!("http://{}", s.video);
    for (base, path) in [
        (&s.api, "/api/v1/streams"),
        (&s.api, "/status"),
        (&s.api, "/"),
        (&video, &*format!("/hls/{DEMO}.m3u8")),
        (&video, "/api/v1/server"),
    ] {
        let port = base.rsplit(':').next().expect("port");
        for host in [
            format!("evil.example:{port}"),
            "rebind.attacker.test".to_owned(),
        ] {
            let (status, body) =
                with_origin(c.get(format!("{base}{path}")).header("host", &host), None).await;
            assert_eq!(status, 421, "{path} with Host {host}: {body}");
        }
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ] {
            let r = c
                .get(format!("{base}{path}"))
                .header("host", &host)
                .send()
                .await
                .expect("send");
            assert_ne!(r.status().as_u16(), 421, "{path} with Host {host}");
        }
    }
    let (status, body) = with_origin(
        c.get(format!("{}/api/v1/streams", s.api))
            .header("host", "evil.example"),
        None,
    )
    .await;
    assert_eq!(status, 421);
    assert_eq!(body["error"]["code"], json!("misdirected_request"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebinding_hosts_are_misdirected_sqlite() {
    rebinding_hosts_are_misdirected("sqlite", Auth::Off).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebinding_hosts_are_misdirected_with_auth_on() {
    rebinding_hosts_are_misdirected("sqlite", Auth::Admin(ADMIN)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rebinding_hosts_are_misdirected_postgres() {
    rebinding_hosts_are_misdirected("postgres", Auth::Off).await;
}
