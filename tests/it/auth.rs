//! Access control against real servers with `[auth] enabled = true`: every route of both routers
//! (enumerated from the routers, not listed here) × {no credentials, wrong scope, expired token,
//! right scope, admin}; scoped reads; signed URLs on HLS, both WebSockets and export; tokens and
//! the audit log on both engines; the `token` and `key` CLI.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;
use video_server::api::policy::{self, Access, RoutePolicy, Shape, StreamRef};
use video_server::auth::TokenSpec;
use video_server::auth::scope::{Action, Actions, Streams};
use video_server::auth::signing::SignedQuery;

use crate::both_engines;
use crate::support::admin::admin_token_section;
use crate::support::binary::{ServerProcess, base_config, binary};
use crate::support::{InProcess, TestDb, call_as};

/// The bootstrap admin token of every test server here.
const ADMIN: &str = "bootstrap-admin-0123456789abcdef0123456789";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// An in-process server with auth on.
struct Secured {
    s: InProcess,
    http: reqwest::Client,
    tokens: HashMap<(Vec<String>, Vec<String>), String>,
    _tmp: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Secured {
    async fn start(extra: &str) -> Secured {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = InProcess::start(&format!(
            "{}{extra}",
            admin_token_section(tmp.path(), ADMIN)
        ))
        .await;
        Secured {
            s,
            http: http(),
            tokens: HashMap::new(),
            _tmp: tmp,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.s.api)
    }

    fn video(&self, path: &str) -> String {
        format!("http://{}{path}", self.s.video)
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self.http.request(method.parse().expect("method"), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("body").to_vec(),
        }
    }

    /// `GET` with a bearer token.
    async fn get(&self, url: &str, token: &str) -> Answer {
        self.send("GET", url, Some(token), None).await
    }

    /// A token with this scope, created through the API by the admin (cached per scope).
    async fn token(&mut self, streams: &[String], actions: &[&str]) -> String {
        let key = (
            streams.to_vec(),
            actions.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
        );
        if let Some(t) = self.tokens.get(&key) {
            return t.clone();
        }
        let a = self
            .send(
                "POST",
                &self.api("/api/v1/tokens"),
                Some(ADMIN),
                Some(&json!({"name": "test", "streams": streams, "actions": actions})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        let t = a.json()["token"].as_str().expect("token").to_owned();
        self.tokens.insert(key, t.clone());
        t
    }

    /// A token with this scope that expired a second ago (written straight to the index).
    async fn expired_token(&self, streams: &[String], actions: &[&str]) -> String {
        let spec = TokenSpec {
            name: "expired".into(),
            admin: false,
            streams: Streams::parse_list(&streams.join(",")).expect("streams"),
            actions: Actions::parse_list(&actions.join(",")).expect("actions"),
            expires_at_us: Some(video_server::db::now_us() - 1_000_000),
        };
        video_server::auth::create_token(&self.s.state.db, &spec, None)
            .await
            .expect("token")
            .1
    }
}

/// Every route both listeners really serve (read from the routers' route tables), with the
/// policy table that must cover it.
type Route = (&'static [RoutePolicy], &'static str, String, String);

async fn served_routes() -> Vec<Route> {
    let t = crate::support::sqlite().await;
    let state = crate::support::state(&t.db, crate::support::config("")).await;
    let mut out = Vec::new();
    for (table, listener, app) in [
        (policy::API, "api", video_server::api::app(state.clone())),
        (
            policy::VIDEO,
            "video",
            video_server::live::app(state.clone()),
        ),
    ] {
        for (method, path) in crate::support::routes::routes(&app) {
            out.push((table, listener, method, path));
        }
    }
    state.manager.shutdown().await;
    t.cleanup().await;
    out
}

#[tokio::test]
async fn the_policy_table_covers_exactly_the_served_routes() {
    let all = served_routes().await;
    assert!(all.len() > 25, "{all:?}");
    for (table, listener, method, path) in &all {
        assert!(
            policy::find(table, &method.parse().expect("method"), path).is_some(),
            "{listener} route {method} {path} has no access policy: add it to api::policy"
        );
    }
    for (table, listener) in [(policy::API, "api"), (policy::VIDEO, "video")] {
        for row in table {
            assert!(
                all.iter()
                    .any(|(_, l, m, p)| l == &listener && m == row.method && p == row.path),
                "policy row {} {} of the {listener} listener matches no route",
                row.method,
                row.path
            );
        }
    }
    // The published document states the policy: security and 401 on every protected operation.
    let doc: Value = serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    // The video listener's media routes name that listener as their server.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let table = if item.get("servers").is_some() {
            policy::VIDEO
        } else {
            policy::API
        };
        let route = video_server::api::media_doc::route_of(path);
        for (method, op) in item.as_object().expect("item") {
            if method == "servers" {
                continue;
            }
            let policy = policy::find(
                table,
                &method.to_uppercase().parse().expect("method"),
                route,
            )
            .unwrap_or_else(|| panic!("{method} {path} has no policy"));
            if policy.access == Access::Public {
                assert!(op["security"].is_null(), "{method} {path}");
                continue;
            }
            assert_eq!(op["security"][0], json!({"bearer": []}), "{method} {path}");
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
            if policy.access != Access::Listing {
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
        }
    }
}

/// A request path for a route template, about stream `a`.
fn concrete(template: &str, a: Uuid) -> String {
    let p = template
        .replace("{id}", &a.to_string())
        .replace("{stream_id}", &a.to_string())
        .replace("{range_id}", "1")
        .replace("{session_id}", &Uuid::nil().to_string())
        .replace("{token_id}", "0123456789abcdef")
        .replace("{file}", &format!("{a}.m3u8"))
        .replace("{any}", "live")
        .replace("{*rest}", "index.html")
        .replace("{*path}", "index.html");
    assert!(
        !p.contains('{'),
        "unknown parameter in route {template}: teach concrete() about it"
    );
    p
}

/// The scope that satisfies a policy (`None`: an admin token).
fn right_scope(access: Access, a: Uuid) -> Option<(Vec<String>, Vec<&'static str>)> {
    match access {
        Access::Stream(action) => Some((vec![a.to_string()], vec![action.as_str()])),
        Access::StreamAny | Access::Listing | Access::Public => {
            Some((vec![a.to_string()], vec!["live"]))
        }
        Access::CreateStream => Some((vec!["*".into()], vec!["manage"])),
        // Internal routes: no token opens them (see every_route_enforces_its_policy).
        Access::Admin | Access::Metrics | Access::Node => None,
    }
}

const ALL: [&str; 4] = ["live", "archive", "export", "manage"];

/// Scopes that must be refused with 403.
fn wrong_scopes(access: Access, a: Uuid, b: Uuid) -> Vec<(Vec<String>, Vec<&'static str>)> {
    let others = |x: &str| ALL.iter().copied().filter(|y| *y != x).collect::<Vec<_>>();
    match access {
        Access::Stream(action) => vec![
            (vec![b.to_string()], ALL.to_vec()),
            (vec![a.to_string()], others(action.as_str())),
        ],
        Access::StreamAny => vec![(vec![b.to_string()], ALL.to_vec())],
        Access::CreateStream => vec![
            (vec![a.to_string()], vec!["manage"]),
            (vec!["*".into()], others("manage")),
        ],
        Access::Admin | Access::Metrics => vec![(vec!["*".into()], ALL.to_vec())],
        Access::Listing | Access::Public | Access::Node => Vec::new(),
    }
}

fn check_shape(policy: &RoutePolicy, a: &Answer, code: &str, what: &str) {
    let j = a.json();
    match policy.shape {
        Shape::V1 => assert_eq!(j["error"]["code"], code, "{what}: {j}"),
        Shape::GoUpper => assert!(j["Error"].is_string(), "{what}: {j}"),
        Shape::GoLower => assert!(j["error"].is_string(), "{what}: {j}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_enforces_its_policy() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut s = Secured::start(&format!(
        "[archive]\nserving = true\n\
         [[rtsp_streams]]\nguid = \"{a}\"\nurl = \"rtsp://127.0.0.1:9/a\"\noutput_types = [\"mse\"]\n\
         [[rtsp_streams]]\nguid = \"{b}\"\nurl = \"rtsp://127.0.0.1:9/b\"\noutput_types = [\"mse\"]\n"
    ))
    .await;
    let mut all = served_routes().await;
    // Deleting the stream goes last, so the other routes still find it.
    all.sort_by_key(|(_, _, m, p)| (m == "DELETE" && p == "/api/v1/streams/{id}", p.clone()));
    let mut checked = 0;
    for (table, listener, method, template) in &all {
        let policy = policy::find(table, &method.parse().expect("method"), template)
            .expect("policy (checked by the_policy_table_covers_exactly_the_served_routes)");
        let mut path = concrete(template, a);
        if let StreamRef::Query(name) = policy.stream {
            path = format!("{path}?{name}={a}");
        }
        let url = if *listener == "api" {
            s.api(&path)
        } else {
            s.video(&path)
        };
        let body = match (policy.stream, method.as_str()) {
            (StreamRef::CameraBody, _) => Some(json!({"guid": a})),
            (_, "POST" | "PUT" | "PATCH") => Some(json!({})),
            _ => None,
        };
        let what = |case: &str| format!("{method} {path} ({case})");
        let allowed = |ans: &Answer, case: &str| {
            assert!(
                !matches!(ans.status.as_u16(), 401 | 403 | 500),
                "{}: {} {}",
                what(case),
                ans.status,
                String::from_utf8_lossy(&ans.body)
            );
        };

        // No credentials.
        let ans = s.send(method, &url, None, body.as_ref()).await;
        if policy.access == Access::Public {
            allowed(&ans, "no credentials, public route");
        } else {
            assert_eq!(ans.status, 401, "{}", what("no credentials"));
            check_shape(policy, &ans, "unauthorized", &what("no credentials"));
            let challenge = ans
                .headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or(""));
            assert!(
                challenge.is_some_and(|c| c.starts_with("Bearer")),
                "{}",
                what("WWW-Authenticate")
            );
        }

        // A token whose scope would do, but expired.
        let right = right_scope(policy.access, a);
        let (streams, actions) = right.clone().unwrap_or((vec!["*".into()], ALL.to_vec()));
        let expired = s.expired_token(&streams, &actions).await;
        let ans = s.send(method, &url, Some(&expired), body.as_ref()).await;
        if policy.access == Access::Public {
            allowed(&ans, "expired token, public route");
        } else {
            assert_eq!(ans.status, 401, "{}", what("expired token"));
            check_shape(policy, &ans, "unauthorized", &what("expired token"));
        }

        // Internal routes take a node proof (over the `key` parameter), never a token: even the
        // admin token is 401 there.
        if policy.access == Access::Node {
            let ans = s.send(method, &url, Some(ADMIN), body.as_ref()).await;
            assert_eq!(
                ans.status,
                401,
                "{}",
                what("admin token on an internal route")
            );
            check_shape(policy, &ans, "unauthorized", &what("admin token"));
            let key = url
                .split_once('?')
                .and_then(|(_, q)| policy::query_param(Some(q), "key"))
                .unwrap_or_default();
            let proof = s.s.state.auth.node_proof(&key, 60).await.expect("proof");
            let ans = s
                .http
                .get(&url)
                .header(
                    video_server::auth::signing::NODE_PROOF_HEADER,
                    proof.to_header(),
                )
                .send()
                .await
                .expect("send");
            assert!(
                !matches!(ans.status().as_u16(), 401 | 403 | 500),
                "{}: {}",
                what("node proof"),
                ans.status()
            );
            checked += 1;
            continue;
        }

        // Scopes that do not cover the route.
        for (streams, actions) in wrong_scopes(policy.access, a, b) {
            let t = s.token(&streams, &actions).await;
            let ans = s.send(method, &url, Some(&t), body.as_ref()).await;
            let case = format!("wrong scope {actions:?} on {streams:?}");
            assert_eq!(ans.status, 403, "{}", what(&case));
            check_shape(policy, &ans, "forbidden", &what(&case));
        }

        // The right scope, then the admin.
        if let Some((streams, actions)) = right {
            let t = s.token(&streams, &actions).await;
            let ans = s.send(method, &url, Some(&t), body.as_ref()).await;
            allowed(&ans, &format!("right scope {actions:?}"));
        }
        let ans = s.send(method, &url, Some(ADMIN), body.as_ref()).await;
        allowed(&ans, "admin");
        checked += 1;
    }
    assert_eq!(checked, all.len());

    let _ = s.s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_are_authorised_exactly_as_the_handlers_read_them() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut s = Secured::start(&format!(
        "[[rtsp_streams]]\nguid = \"{a}\"\nurl = \"rtsp://127.0.0.1:9/a\"\noutput_types = [\"mse\"]\n"
    ))
    .await;
    let t = s.token(&[b.to_string()], &ALL).await;
    // Percent-encoded ids decode to `a` in the handlers, so they are `a` to the policy too.
    let text = a.to_string();
    let encoded = format!("%{:02X}{}", text.as_bytes()[0], &text[1..]);
    for url in [
        s.api(&format!("/api/v1/streams/{encoded}")),
        s.api(&format!("/api/v1/streams/{encoded}/status")),
        s.api(&format!("/archive/{encoded}/ranges")),
        s.video(&format!("/ws/live?stream_id={encoded}")),
        s.video(&format!("/ws/live?stream_id={a}&stream_id={b}")),
        s.video(&format!("/hls/{encoded}.m3u8")),
    ] {
        let ans = s.get(&url, &t).await;
        assert_eq!(ans.status, 403, "{url}");
    }
    // Methods a route does not serve stay 405 (the policy only runs on matched routes).
    let ans = s.send("PUT", &s.api("/list"), None, None).await;
    assert_eq!(ans.status, 405);
    assert_eq!(
        ans.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET"[..])
    );
    // JSON escapes in a Go body decode to `a` too.
    let escaped = format!("\\u{:04x}{}", text.as_bytes()[0], &text[1..]);
    let resp = s
        .http
        .post(s.api("/disable_camera"))
        .bearer_auth(&t)
        .body(format!("{{\"guid\":\"{escaped}\"}}"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    let _ = s.s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scoped_reads_show_only_the_scope_and_sources_need_manage() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut s = Secured::start(&format!(
        "[[rtsp_streams]]\nguid = \"{a}\"\nurl = \"rtsp://127.0.0.1:9/a\"\noutput_types = [\"mse\"]\n\
         [[rtsp_streams]]\nguid = \"{b}\"\nurl = \"rtsp://127.0.0.1:9/b\"\noutput_types = [\"mse\"]\n"
    ))
    .await;
    let (sa, sb) = (a.to_string(), b.to_string());
    let ids = |j: &Value| -> Vec<String> {
        j["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let mut both = vec![sa.clone(), sb.clone()];
    both.sort();

    let live_a = s.token(std::slice::from_ref(&sa), &["live"]).await;
    let j = s.get(&s.api("/api/v1/streams"), &live_a).await.json();
    assert_eq!(ids(&j), vec![sa.clone()]);
    assert!(j["items"][0]["source"].is_null(), "{j}");
    let j = s
        .get(&s.api(&format!("/api/v1/streams/{a}")), &live_a)
        .await
        .json();
    assert!(j["source"].is_null() && j["id"] == sa, "{j}");
    let j = s.get(&s.api("/list"), &live_a).await.json();
    assert_eq!(j, json!({"data": [{"stream_id": sa}]}));
    let j = s.get(&s.api("/status"), &live_a).await.json();
    let streams = j["streams"].as_object().expect("streams");
    assert_eq!(streams.keys().collect::<Vec<_>>(), vec![&sa]);
    assert_eq!(streams[&sa]["url"], "", "{j}");
    assert!(!j.to_string().contains("127.0.0.1:9"), "{j}");
    for path in [
        format!("/api/v1/streams/{b}"),
        format!("/api/v1/streams/{b}/status"),
    ] {
        let ans = s.get(&s.api(&path), &live_a).await;
        assert_eq!(ans.status, 403, "{path}");
    }

    // `manage` shows the source, of that stream only.
    let manage_a = s.token(std::slice::from_ref(&sa), &["manage"]).await;
    let j = s.get(&s.api("/api/v1/streams"), &manage_a).await.json();
    assert_eq!(ids(&j), vec![sa.clone()]);
    assert!(
        j["items"][0]["source"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("127.0.0.1:9/a")),
        "{j}"
    );
    let j = s.get(&s.api("/status"), &manage_a).await.json();
    assert!(
        j["streams"][&sa]["url"]
            .as_str()
            .is_some_and(|u| u.contains("127.0.0.1:9/a"))
    );

    // Every stream, no sources; a scoped listing pages like the full one.
    let live_all = s.token(&["*".into()], &["live"]).await;
    let j = s.get(&s.api("/api/v1/streams"), &live_all).await.json();
    assert_eq!(ids(&j), both);
    assert!(
        j["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["source"].is_null())
    );
    let two = s.token(&[sa.clone(), sb.clone()], &["archive"]).await;
    let p1 = s.get(&s.api("/api/v1/streams?limit=1"), &two).await.json();
    assert_eq!(ids(&p1), vec![both[0].clone()]);
    let cursor = p1["next_cursor"].as_str().expect("cursor");
    let p2 = s
        .get(
            &s.api(&format!("/api/v1/streams?limit=1&cursor={cursor}")),
            &two,
        )
        .await
        .json();
    assert_eq!(ids(&p2), vec![both[1].clone()]);
    assert!(p2["next_cursor"].is_null(), "{p2}");
    let j = s.get(&s.api("/api/v1/streams"), ADMIN).await.json();
    assert_eq!(ids(&j), both);
    assert!(
        j["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["source"]["url"].is_string())
    );

    // Readiness is public, but names streams only to admins.
    let anon = s.send("GET", &s.api("/readyz"), None, None).await.json();
    let admin = s.get(&s.api("/readyz"), ADMIN).await.json();
    let roots = |j: &Value| j["storage"].as_array().expect("storage").clone();
    assert_eq!(roots(&anon).len(), roots(&admin).len(), "{anon} {admin}");
    assert!(!roots(&anon).is_empty(), "{anon}");
    for r in roots(&anon) {
        assert_eq!(r["streams"], json!([]), "{anon}");
        assert!(!r["name"].as_str().expect("name").contains(' '), "{anon}");
    }
    assert!(!anon.to_string().contains(&sa) && !anon.to_string().contains(&sb));

    // Creating a stream needs `manage` on every stream, through either API.
    let c = Uuid::new_v4();
    let manage_c = s.token(&[c.to_string()], &["manage"]).await;
    let body = json!({"guid": c, "url": "rtsp://127.0.0.1:9/c", "output_types": ["mse"]});
    let ans = s
        .send(
            "POST",
            &s.api("/enable_camera"),
            Some(&manage_c),
            Some(&body),
        )
        .await;
    assert_eq!(ans.status, 403);
    assert!(
        ans.json()["Error"]
            .as_str()
            .is_some_and(|e| e.contains("every stream"))
    );
    let new = json!({"id": c, "source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:9/c"}});
    let ans = s
        .send(
            "POST",
            &s.api("/api/v1/streams"),
            Some(&manage_c),
            Some(&new),
        )
        .await;
    assert_eq!(ans.status, 403);
    let manage_all = s.token(&["*".into()], &["manage"]).await;
    let ans = s
        .send(
            "POST",
            &s.api("/enable_camera"),
            Some(&manage_all),
            Some(&body),
        )
        .await;
    assert_eq!(ans.status, 200);
    // Once it exists, `manage` on it is enough to change it.
    let ans = s
        .send(
            "POST",
            &s.api("/disable_camera"),
            Some(&manage_c),
            Some(&json!({"guid": c})),
        )
        .await;
    assert_eq!(ans.status, 200);
    let _ = s.s.stop().await;
}

/// Reads the current signing keys straight from the index (to forge expired signatures).
async fn keys(db: &video_server::db::Db) -> Vec<video_server::db::signing_keys::SigningKey> {
    video_server::db::signing_keys::valid(db, video_server::db::now_us())
        .await
        .expect("keys")
}

/// The HTTP status of a refused WebSocket handshake, or 101.
async fn ws_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Polls `f` until it returns true, or panics after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_open_exactly_what_they_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (live, rec) = (Uuid::new_v4(), Uuid::new_v4());
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
    let mut s = Secured::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{dir}/mp4\"\n\
         [hls]\ndirectory = \"{dir}/hls\"\nms_per_segment = 2000\n\
         [[local_files]]\nguid = \"{live}\"\nfile = \"{demo}\"\noutput_types = [\"mse\", \"hls\"]\nloop = true\n\
         [[rtsp_streams]]\nguid = \"{rec}\"\nurl = \"rtsp://127.0.0.1:9/r\"\noutput_types = [\"mse\"]\n\
         [webrtc]\nudp_port = 0\n",
        dir = tmp.path().display(),
        demo = demo.display()
    ))
    .await;
    let wall0 = 1_760_000_000_000_000i64;
    crate::playback::synthesize(&s.s.state.db, &tmp.path().join("mp4"), rec, wall0, 2).await;

    let holder = s
        .send(
            "POST",
            &s.api("/api/v1/tokens"),
            Some(ADMIN),
            Some(&json!({"streams": [live, rec], "actions": ["live", "archive", "export"]})),
        )
        .await
        .json();
    let (token, token_id) = (
        holder["token"].as_str().expect("token").to_owned(),
        holder["id"].as_str().expect("id").to_owned(),
    );
    let sign = async |s: &Secured, stream: Uuid, actions: &[&str], ttl: u64| -> String {
        let a = s
            .send(
                "POST",
                &s.api(&format!("/api/v1/streams/{stream}/sign")),
                Some(&token),
                Some(&json!({"actions": actions, "ttl_s": ttl})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let j = a.json();
        assert!(j["expires"].is_string() && j["exp"].is_i64(), "{j}");
        j["query"].as_str().expect("query").to_owned()
    };

    // HLS: the playlist through a signed URL lists signed segment and map URIs.
    let q = sign(&s, live, &["live"], 120).await;
    assert!(
        q.contains("exp=") && q.contains("sig=") && q.contains(&format!("tok={token_id}")),
        "{q}"
    );
    let playlist_url = s.video(&format!("/hls/{live}.m3u8?{q}"));
    wait_until("the first playlist", Duration::from_secs(30), async || {
        s.send("GET", &playlist_url, None, None).await.status == 200
    })
    .await;
    let playlist = s.send("GET", &playlist_url, None, None).await;
    assert_eq!(
        playlist.status,
        200,
        "{}",
        String::from_utf8_lossy(&playlist.body)
    );
    let text = String::from_utf8(playlist.body).expect("utf-8");
    let uris: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!uris.is_empty(), "{text}");
    assert!(uris.iter().all(|u| u.ends_with(&format!("?{q}"))), "{text}");
    let map = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-MAP:"))
        .expect("map");
    assert!(map.contains(&format!("?{q}\"")), "{map}");
    let segment = s
        .send("GET", &s.video(&format!("/hls/{}", uris[0])), None, None)
        .await;
    assert_eq!(segment.status, 200);
    assert!(!segment.body.is_empty());
    let unsigned = uris[0].split('?').next().expect("name");
    let ans = s
        .send("GET", &s.video(&format!("/hls/{unsigned}")), None, None)
        .await;
    assert_eq!(ans.status, 401);
    assert!(ans.json()["Error"].is_string());

    // Live WebSocket: the codec message comes first.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws/live?stream_id={live}&{q}",
        s.s.video
    ))
    .await
    .expect("signed live WebSocket");
    let first = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("codec message in time")
        .expect("message")
        .expect("ok");
    assert!(
        matches!(&first, Message::Binary(b) if b.first() == Some(&9)),
        "{first:?}"
    );
    drop(ws);

    // Wrong action, wrong stream, tampered, malformed, expired.
    let video = s.s.video.clone();
    let live_url = |stream: Uuid, q: &str| format!("ws://{video}/ws/live?stream_id={stream}&{q}");
    let archive_url = |q: &str| {
        format!(
            "ws://{video}/ws/archive?stream_id={rec}&start={}&duration=5&{q}",
            wall0 / 1_000_000
        )
    };
    let q_rec_live = sign(&s, rec, &["live"], 120).await;
    assert_eq!(
        ws_status(&archive_url(&q_rec_live)).await,
        403,
        "live does not open the archive"
    );
    assert_eq!(
        ws_status(&live_url(rec, &q)).await,
        401,
        "another stream's signature"
    );
    let flip = |q: &str, from: &str, to: &str| q.replacen(from, to, 1);
    let sig = q.rsplit("sig=").next().expect("sig").to_owned();
    let last = if sig.ends_with('A') { "B" } else { "A" };
    for bad in [
        flip(
            &q,
            &format!("sig={sig}"),
            &format!("sig={}{last}", &sig[..sig.len() - 1]),
        ),
        flip(&q, "act=live", "act=live,archive"),
        flip(&q, "exp=", "exp=1"),
        flip(&q, &format!("tok={token_id}"), "tok=0000000000000000"),
        flip(&q, "act=live&", ""),
        q.split("&sig=").next().expect("head").to_owned(),
    ] {
        let status = ws_status(&live_url(live, &bad)).await;
        assert_eq!(status, 401, "{bad}");
    }
    let key = keys(&s.s.state.db).await.remove(0);
    let now_s = video_server::db::now_us() / 1_000_000;
    let live_only: Actions = [Action::Live].into_iter().collect();
    let old = SignedQuery::sign(&key, live, live_only, now_s - 1, Some(token_id.clone()));
    let ans = s
        .send(
            "GET",
            &s.video(&format!("/hls/{live}.m3u8?{}", old.to_query())),
            None,
            None,
        )
        .await;
    assert_eq!(ans.status, 401);
    assert!(
        ans.json()["Error"]
            .as_str()
            .is_some_and(|e| e.contains("expired"))
    );

    // WHEP: a signed URL opens a WebRTC session of its stream (and closes it); an expired,
    // tampered, other stream's or other action's signature opens nothing.
    let whep = async |stream: Uuid, q: &str| {
        s.http
            .post(s.video(&format!("/whep/{stream}?{q}")))
            .header("content-type", "application/sdp")
            .body(crate::webrtc::OFFER)
            .send()
            .await
            .expect("POST /whep")
    };
    let r = whep(live, &q).await;
    assert_eq!(r.status(), 201, "signed WHEP offer");
    let location = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("Location")
        .to_owned();
    assert!(r.text().await.expect("answer").starts_with("v=0"));
    let r = s
        .http
        .delete(s.video(&format!("{location}?{q}")))
        .send()
        .await
        .expect("DELETE");
    assert!(r.status().is_success(), "signed DELETE: {}", r.status());
    let q_live_archive = sign(&s, live, &["archive"], 120).await;
    assert_eq!(
        whep(live, &q_live_archive).await.status(),
        403,
        "wrong action"
    );
    assert_eq!(
        whep(rec, &q).await.status(),
        401,
        "another stream's signature"
    );
    let tampered = flip(
        &q,
        &format!("sig={sig}"),
        &format!("sig={}{last}", &sig[..sig.len() - 1]),
    );
    assert_eq!(whep(live, &tampered).await.status(), 401, "tampered");
    assert_eq!(
        whep(live, &flip(&q, "act=live", "act=live,archive"))
            .await
            .status(),
        401,
        "tampered actions"
    );
    let r = whep(live, &old.to_query()).await;
    assert_eq!(r.status(), 401, "expired");
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("expired")),
        "{body}"
    );

    // Archive WebSocket and export with their own signatures.
    let q_arch = sign(&s, rec, &["archive"], 120).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(archive_url(&q_arch))
        .await
        .expect("signed archive");
    let first = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("in time");
    assert!(matches!(first, Some(Ok(Message::Binary(b))) if b.first() == Some(&9)));
    drop(ws);
    let q_exp = sign(&s, rec, &["export"], 120).await;
    let (start, end) = (wall0 / 1_000_000, wall0 / 1_000_000 + 5);
    let export = s
        .send(
            "GET",
            &s.api(&format!(
                "/api/v1/streams/{rec}/export.mp4?start={start}&end={end}&{q_exp}"
            )),
            None,
            None,
        )
        .await;
    assert_eq!(
        export.status,
        200,
        "{}",
        String::from_utf8_lossy(&export.body)
    );
    assert_eq!(crate::support::media::first_box(&export.body), "ftyp");
    // A signature is only honoured on media routes.
    let ans = s
        .send(
            "GET",
            &s.api(&format!("/api/v1/streams/{rec}/ranges?{q_exp}")),
            None,
            None,
        )
        .await;
    assert_eq!(ans.status, 401);

    // Signing: only what the signer holds; media actions only; bounded lifetime.
    let live_only_token = s.token(&[live.to_string()], &["live"]).await;
    for (body, status) in [
        (json!({"actions": ["archive"], "ttl_s": 60}), 403),
        (json!({"actions": ["manage"], "ttl_s": 60}), 422),
        (json!({"actions": [], "ttl_s": 60}), 422),
        (json!({"actions": ["live"], "ttl_s": 86_401}), 422),
        (json!({"actions": ["live"], "ttl_s": 0}), 422),
        (json!({"actions": ["fly"]}), 422),
    ] {
        let a = s
            .send(
                "POST",
                &s.api(&format!("/api/v1/streams/{live}/sign")),
                Some(&live_only_token),
                Some(&body),
            )
            .await;
        assert_eq!(a.status, status, "{body}");
    }

    // Key rotation: with a grace period old URLs keep working and new ones use the new key;
    // rotating with no grace ends the old URLs (within the key cache time).
    let db = s.s.state.db.clone();
    video_server::auth::rotate_signing_key(&db, Duration::from_secs(3600))
        .await
        .expect("rotate");
    assert_eq!(
        ws_status(&live_url(live, &q)).await,
        101,
        "old key within its grace"
    );
    let newest = keys(&db).await.remove(0);
    wait_until(
        "signatures by the new key",
        Duration::from_secs(15),
        async || {
            let q2 = sign(&s, live, &["live"], 60).await;
            let parsed = SignedQuery::from_query(Some(&q2))
                .expect("sig")
                .expect("valid");
            parsed.verify(std::slice::from_ref(&newest), live)
        },
    )
    .await;
    let q_new = sign(&s, live, &["live"], 60).await;
    video_server::auth::rotate_signing_key(&db, Duration::ZERO)
        .await
        .expect("rotate");
    wait_until(
        "the old key to stop verifying",
        Duration::from_secs(15),
        async || ws_status(&live_url(live, &q)).await == 401,
    )
    .await;
    wait_until(
        "the previous key to stop verifying too",
        Duration::from_secs(15),
        async || ws_status(&live_url(live, &q_new)).await == 401,
    )
    .await;
    let q_now = sign(&s, live, &["live"], 60).await;
    assert_eq!(ws_status(&live_url(live, &q_now)).await, 101);

    // Deleting the signer ends its URLs at once, and the sessions they opened within seconds.
    let (mut open_ws, _) = tokio_tungstenite::connect_async(live_url(live, &q_now))
        .await
        .expect("open");
    let ans = s
        .send(
            "DELETE",
            &s.api(&format!("/api/v1/tokens/{token_id}")),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(ans.status, 204);
    assert_eq!(ws_status(&live_url(live, &q_now)).await, 401);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = open_ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the open session outlived its revoked token");
    let _ = s.s.stop().await;
}

/// Every change and every media session is in the audit log with who (token id), what (action),
/// which stream, the route and the result: a live WebSocket, an archive WebSocket, an HLS fetch,
/// an export, a stream PATCH and `/enable_camera`, each by a scoped token.
#[tokio::test(flavor = "multi_thread")]
async fn media_sessions_and_changes_are_audited() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tmp = tempfile::tempdir().expect("tmp");
    let (live, rec) = (Uuid::new_v4(), Uuid::new_v4());
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
    let s = Secured::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{dir}/mp4\"\n\
         [hls]\ndirectory = \"{dir}/hls\"\nms_per_segment = 2000\n\
         [[local_files]]\nguid = \"{live}\"\nfile = \"{demo}\"\noutput_types = [\"mse\", \"hls\"]\nloop = true\n\
         [[rtsp_streams]]\nguid = \"{rec}\"\nurl = \"rtsp://127.0.0.1:9/r\"\noutput_types = [\"mse\"]\n",
        dir = tmp.path().display(),
        demo = demo.display()
    ))
    .await;
    let wall0 = 1_760_000_000_000_000i64;
    crate::playback::synthesize(&s.s.state.db, &tmp.path().join("mp4"), rec, wall0, 2).await;
    let created = s
        .send(
            "POST",
            &s.api("/api/v1/tokens"),
            Some(ADMIN),
            Some(&json!({"name": "operator", "streams": [live, rec],
                         "actions": ["live", "archive", "export", "manage"]})),
        )
        .await
        .json();
    let token = created["token"].as_str().expect("token").to_owned();
    let token_id = created["id"].as_str().expect("id").to_owned();

    // A media session: the WebSocket opens (101) and gets its first message.
    let session = async |url: String| {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("WebSocket");
        assert_eq!(resp.status(), 101);
        let first = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("first message in time");
        assert!(matches!(first, Some(Ok(Message::Binary(_)))), "{first:?}");
    };
    session(format!("ws://{}/ws/live?stream_id={live}", s.s.video)).await;
    session(format!(
        "ws://{}/ws/archive?stream_id={rec}&start={}&duration=5",
        s.s.video,
        wall0 / 1_000_000
    ))
    .await;
    let playlist = s.video(&format!("/hls/{live}.m3u8"));
    wait_until("the playlist", Duration::from_secs(30), async || {
        s.get(&playlist, &token).await.status == 200
    })
    .await;
    let (start, end) = (wall0 / 1_000_000, wall0 / 1_000_000 + 5);
    let export = s
        .get(
            &s.api(&format!(
                "/api/v1/streams/{rec}/export.mp4?start={start}&end={end}"
            )),
            &token,
        )
        .await;
    assert_eq!(export.status, 200);
    let patched = s
        .http
        .patch(s.api(&format!("/api/v1/streams/{rec}")))
        .bearer_auth(&token)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"name":"renamed"}"#)
        .send()
        .await
        .expect("PATCH");
    assert_eq!(patched.status(), 200);
    let enabled = s
        .send(
            "POST",
            &s.api("/enable_camera"),
            Some(&token),
            Some(&json!({"guid": rec, "url": "rtsp://127.0.0.1:9/r"})),
        )
        .await;
    assert_eq!(
        enabled.status,
        200,
        "{}",
        String::from_utf8_lossy(&enabled.body)
    );

    // (route, action, stream, status) of each, by this token: the log is written off the
    // request path, so wait for the last one.
    let expected = [
        ("GET /ws/{any}", "live", live, 101),
        ("GET /ws/archive", "archive", rec, 101),
        ("GET /hls/{file}", "live", live, 200),
        ("GET /api/v1/streams/{id}/export.mp4", "export", rec, 200),
        ("PATCH /api/v1/streams/{id}", "manage", rec, 200),
        ("POST /enable_camera", "manage", rec, 200),
    ];
    let mut entries = Vec::new();
    wait_until("the audit entries", Duration::from_secs(20), async || {
        let page = s.get(&s.api("/api/v1/audit?limit=1000"), ADMIN).await;
        assert_eq!(page.status, 200);
        entries = page.json()["items"].as_array().expect("items").clone();
        expected.iter().all(|(route, ..)| {
            entries
                .iter()
                .any(|e| e["route"] == *route && e["token_id"] == token_id.as_str())
        })
    })
    .await;
    for (route, action, stream, status) in expected {
        let found = entries
            .iter()
            .filter(|e| e["route"] == route && e["token_id"] == token_id.as_str())
            .find(|e| e["status"] == status)
            .unwrap_or_else(|| panic!("no audit entry {route} {status}: {entries:?}"));
        assert_eq!(found["action"], action, "{found}");
        assert_eq!(found["stream_id"], stream.to_string(), "{found}");
        assert_eq!(found["credential"], "token", "{found}");
        assert_eq!(found["client"], format!("token:{token_id}"), "{found}");
    }
    let _ = s.s.stop().await;
}

/// Answers of the API app for a test database, as the bootstrap admin or another token.
async fn secured_state(t: &TestDb, dir: &Path) -> video_server::api::AppState {
    crate::support::state(
        &t.db,
        crate::support::config(&admin_token_section(dir, ADMIN)),
    )
    .await
}

both_engines! {
    async fn tokens_api_and_audit_paging(t: &TestDb) {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = secured_state(t, tmp.path()).await;
        let post = async |token: Option<&str>, body: &Value| {
            call_as(&state, token, "POST", "/api/v1/tokens", Some("application/json"), serde_json::to_vec(body).expect("json")).await
        };
        let a = Uuid::new_v4();
        let r = post(None, &json!({"streams": [a], "actions": ["live"]})).await;
        assert_eq!(r.status, 401);

        let r = post(Some(ADMIN), &json!({"name": "viewer", "streams": [a], "actions": ["live", "archive"], "expires_in_s": 3600})).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let created = r.json();
        let viewer = created["token"].as_str().expect("token").to_owned();
        let id = created["id"].as_str().expect("id").to_owned();
        assert!(viewer.starts_with(&format!("vs_{id}_")), "{viewer}");
        assert_eq!(created["actions"], json!(["live", "archive"]));
        assert_eq!(created["streams"], json!([a]));
        assert!(created["expires_at"].is_string() && created["expired"] == false, "{created}");

        // `3600.0` is an integer to JSON Schema (and so to the document): taken as 3600.
        let r = post(Some(ADMIN), &json!({"streams": ["*", a], "actions": ["live"], "expires_in_s": 3600.0})).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["streams"], json!(["*"]));
        let r = post(Some(ADMIN), &json!({"streams": ["*"], "actions": ["live"], "expires_in_s": 3600.5})).await;
        assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));

        // Scoped tokens cannot make tokens.
        let r = post(Some(&viewer), &json!({"streams": ["*"], "actions": ["manage"]})).await;
        assert_eq!(r.status, 403);

        // Listing never shows a secret.
        let r = call_as(&state, Some(ADMIN), "GET", "/api/v1/tokens", None, Vec::new()).await;
        assert_eq!(r.status, 200);
        let secret = &viewer[3 + 16 + 1..];
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(secret) && !text.contains("secret"), "{text}");
        assert!(r.json()["items"].as_array().expect("items").iter().any(|i| i["id"] == id.as_str()));

        for (body, field) in [
            (json!({"streams": [], "actions": ["live"]}), "streams"),
            (json!({"streams": ["nope"], "actions": ["live"]}), "streams"),
            // Each item is one id or `*`, as the document's pattern says: no blank item, no list.
            (json!({"streams": [""], "actions": ["live"]}), "streams"),
            (json!({"streams": [format!("{a},{a}")], "actions": ["live"]}), "streams"),
            (json!({"streams": [format!("{{{a}}}")], "actions": ["live"]}), "streams"),
            (json!({"streams": ["*"], "actions": []}), "actions"),
            (json!({"streams": ["*"], "actions": ["fly"]}), "actions[0]"),
            (json!({"admin": true, "streams": ["*"]}), "admin"),
            (json!({"streams": ["*"], "actions": ["live"], "expires_in_s": 0}), "expires_in_s"),
            (json!({"streams": ["*"], "actions": ["live"], "secret": "x"}), ""),
        ] {
            let r = post(Some(ADMIN), &body).await;
            assert_eq!(r.status, 422, "{body}");
            if !field.is_empty() {
                assert_eq!(r.json()["error"]["field"], field, "{body}");
            }
        }

        // The token works, until it is deleted.
        let status_a = format!("/api/v1/streams/{a}/status");
        let r = call_as(&state, Some(&viewer), "GET", &status_a, None, Vec::new()).await;
        assert_eq!(r.status, 404, "authorised; the stream does not exist");
        let r = call_as(&state, Some(ADMIN), "DELETE", &format!("/api/v1/tokens/{id}"), None, Vec::new()).await;
        assert_eq!(r.status, 204);
        let r = call_as(&state, Some(&viewer), "GET", &status_a, None, Vec::new()).await;
        assert_eq!(r.status, 401);
        let r = call_as(&state, Some(ADMIN), "DELETE", &format!("/api/v1/tokens/{id}"), None, Vec::new()).await;
        assert_eq!(r.status, 404);

        // More changes, for paging: a few admin tokens created and deleted.
        for _ in 0..3 {
            let r = post(Some(ADMIN), &json!({"admin": true})).await;
            let id = r.json()["id"].as_str().expect("id").to_owned();
            call_as(&state, Some(ADMIN), "DELETE", &format!("/api/v1/tokens/{id}"), None, Vec::new()).await;
        }

        // The audit log: written off the request path, so wait for the last change to show up.
        let page = async |q: &str| {
            let r = call_as(&state, Some(ADMIN), "GET", &format!("/api/v1/audit?{q}"), None, Vec::new()).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        };
        let entries = |j: &Value| j["items"].as_array().expect("items").clone();
        // 24 = the 401, two 201, 403 and eleven 422 answers of POST /api/v1/tokens, the 204, 401
        // and 404 around the deletion, and three creations and deletions.
        wait_until("audit entries", Duration::from_secs(20), async || {
            entries(&page("limit=1000").await).len() >= 24
        })
        .await;
        let all = entries(&page("limit=1000").await);
        let routes: Vec<(String, i64)> = all
            .iter()
            .map(|e| (e["route"].as_str().expect("route").to_owned(), e["status"].as_i64().expect("status")))
            .collect();
        assert!(routes.contains(&("POST /api/v1/tokens".into(), 201)), "{routes:?}");
        assert!(routes.contains(&("POST /api/v1/tokens".into(), 401)), "{routes:?}");
        assert!(routes.contains(&("POST /api/v1/tokens".into(), 403)), "{routes:?}");
        assert!(routes.contains(&("DELETE /api/v1/tokens/{token_id}".into(), 204)), "{routes:?}");
        let created_entry = all
            .iter()
            .find(|e| e["route"] == "POST /api/v1/tokens" && e["status"] == 201)
            .expect("entry");
        assert_eq!(created_entry["token_id"], "bootstrap");
        assert_eq!(created_entry["credential"], "bootstrap");
        assert_eq!(created_entry["action"], "admin");
        let refused = all
            .iter()
            .find(|e| e["route"] == "POST /api/v1/tokens" && e["status"] == 403)
            .expect("entry");
        assert_eq!(refused["token_id"], id.as_str());
        assert_eq!(refused["client"], format!("token:{id}"));
        let viewer_read = all
            .iter()
            .find(|e| e["status"] == 401 && e["route"] == "GET /api/v1/streams/{id}/status")
            .expect("refusal of the deleted token");
        assert_eq!(viewer_read["stream_id"], a.to_string());
        assert_eq!(viewer_read["token_id"], id.as_str(), "the claimed id is kept");

        // Keyset pages of two: newest first, every entry once, a null cursor at the end.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("limit=2&cursor={c}"),
                None => "limit=2".to_owned(),
            };
            let j = page(&q).await;
            let items = entries(&j);
            assert!(items.len() <= 2);
            seen.extend(items.iter().map(|e| e["id"].as_i64().expect("id")));
            match j["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().expect("id")).collect();
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
        assert_eq!(seen, ids, "pages agree with one big page");
        for bad in ["cursor=abc", "cursor=-1", "limit=0", "limit=1001"] {
            let r = call_as(&state, Some(ADMIN), "GET", &format!("/api/v1/audit?{bad}"), None, Vec::new()).await;
            assert_eq!(r.status, 400, "{bad}");
        }
        let r = call_as(&state, Some(&viewer), "GET", "/api/v1/audit", None, Vec::new()).await;
        assert_eq!(r.status, 401);
    }
}

fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binary())
        .current_dir(dir)
        .args(["--conf", "conf.toml"])
        .args(args)
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .env_remove("VIDEO_SERVER_ADMIN_TOKEN")
        .output()
        .expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_key_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = format!("{}[auth]\nenabled = true\n", base_config());
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    let d = dir.path();

    let (code, admin, err) = run_cli(d, &["token", "create", "--admin", "--name", "ops"]);
    assert_eq!(code, 0, "{err}");
    let admin = admin.trim().to_owned();
    assert!(admin.starts_with("vs_") && !admin.contains('\n'), "{admin}");
    assert!(err.contains("shown only once"), "{err}");

    for bad in [
        vec!["token", "create", "--streams", "*", "--actions", "live,fly"],
        vec!["token", "create", "--streams", "nope", "--actions", "live"],
        vec![
            "token",
            "create",
            "--streams",
            "*",
            "--actions",
            "live",
            "--ttl",
            "3y",
        ],
        vec!["token", "create"],
        vec!["token", "create", "--admin", "--streams", "*"],
        vec!["key", "rotate", "--grace", "soon"],
    ] {
        let (code, out, err) = run_cli(d, &bad);
        assert_eq!(code, 2, "{bad:?}: {out} {err}");
        assert!(out.is_empty(), "{bad:?} printed a token");
    }
    let cam = Uuid::new_v4();
    let (code, viewer, err) = run_cli(
        d,
        &[
            "token",
            "create",
            "--streams",
            &cam.to_string(),
            "--actions",
            "live,archive",
            "--ttl",
            "1h",
            "--name",
            "wall",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let viewer = viewer.trim().to_owned();
    let viewer_id = viewer[3..19].to_owned();
    let (code, list, _) = run_cli(d, &["token", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains("\tops\tadmin\tno expiry"), "{list}");
    assert!(
        list.contains(&format!(
            "{viewer_id}\twall\tlive,archive on {cam}\texpires "
        )),
        "{list}"
    );
    assert!(!list.contains(&viewer[20..]), "no secrets in the listing");

    let server = ServerProcess::start(d, &["--conf", "conf.toml"], &[]);
    let c = http();
    let health: Value = c
        .get(format!("{}/healthz", server.api))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(health["auth"], "on");
    let get = async |path: &str, token: &str| {
        c.get(format!("{}{path}", server.api))
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
            .status()
    };
    assert_eq!(get("/api/v1/tokens", &admin).await, 200);
    assert_eq!(get("/api/v1/tokens", &viewer).await, 403);

    // A URL signed by the viewer token; the stream does not exist, so "authorised" is a 404.
    let signed: Value = c
        .post(format!("{}/api/v1/streams/{cam}/sign", server.api))
        .bearer_auth(&viewer)
        .json(&json!({"actions": ["live"], "ttl_s": 600}))
        .send()
        .await
        .expect("sign")
        .json()
        .await
        .expect("json");
    let q = signed["query"].as_str().expect("query").to_owned();
    let hls = format!("http://{}/hls/{cam}.m3u8?{q}", server.video);
    assert_eq!(c.get(&hls).send().await.expect("get").status(), 404);

    // Rotating with no grace ends the URL; the running server notices within seconds.
    let (code, _, err) = run_cli(d, &["key", "rotate", "--grace", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("signing key 2 is now current"), "{err}");
    wait_until(
        "the rotated-out key to be refused",
        Duration::from_secs(15),
        async || c.get(&hls).send().await.expect("get").status() == 401,
    )
    .await;

    // Revoking through the CLI: the server stops accepting the token within its cache time.
    let (code, _, err) = run_cli(d, &["token", "revoke", &viewer_id]);
    assert_eq!(code, 0, "{err}");
    wait_until(
        "the revoked token to be refused",
        Duration::from_secs(15),
        async || get(&format!("/api/v1/streams/{cam}/status"), &viewer).await == 401,
    )
    .await;
    let (code, _, err) = run_cli(d, &["token", "revoke", &viewer_id]);
    assert_eq!(code, 1, "{err}");
    assert!(server.terminate());
}

#[test]
fn auth_off_on_a_public_address_warns_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    // The server runs in its own network namespace: 0.0.0.0 there reaches nothing outside.
    let conf = base_config().replace(
        "host = \"127.0.0.1\"\nport = 0\n[video]",
        "host = \"0.0.0.0\"\nport = 0\n[video]",
    );
    assert!(conf.contains("0.0.0.0"), "{conf}");
    std::fs::write(dir.path().join("conf.toml"), conf).expect("conf");
    let mut child = std::process::Command::new("unshare")
        .args(["-n", "--"])
        .arg(binary())
        .args(["--conf", "conf.toml", "--log-format", "json"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs the server in a new network namespace");
    let stderr = child.stderr.take().expect("stderr");
    use std::io::BufRead;
    let mut warned = None;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("AUTH IS OFF") {
            warned = Some(line.clone());
        }
        if line.contains("api listener ready") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = warned.expect("a loud warning before the listeners are ready");
    let v: Value = serde_json::from_str(&line).expect("json log line");
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(
        v["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("0.0.0.0:")),
        "{line}"
    );
}

#[test]
fn exposed_listeners_are_the_non_loopback_ones() {
    use video_server::server::exposed_without_auth;
    let a = |s: &str| Some(s.parse().expect("addr"));
    assert!(exposed_without_auth(&[a("127.0.0.1:8090"), a("[::1]:8091"), None]).is_empty());
    assert_eq!(
        exposed_without_auth(&[a("0.0.0.0:8090"), a("127.0.0.1:8091")]),
        vec!["0.0.0.0:8090".parse().expect("addr")]
    );
    assert_eq!(exposed_without_auth(&[a("[::]:1")]).len(), 1);
}
