//! Scale-out (issue 14): several real server processes on one Postgres schema and one s3s-fs,
//! cameras from the GStreamer RTSP server. Leases are short here (`LEASE_MS`) so failovers are
//! quick; the production default is 10 s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::codec_switch::Messages;
use crate::support::PgSchema;
use crate::support::admin::{bearer_client, create_token};
use crate::support::binary::{ServerProcess, base_config};
use crate::support::media::RtspServer;
use crate::support::ports::TcpProxy;
use crate::support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

/// Lease length of the test nodes.
const LEASE_MS: u64 = 4000;

/// One node: its directory (config, archive) and the running process.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    proc: Option<ServerProcess>,
}

impl Node {
    /// Writes the node's config (cluster on, `db_url`, the S3 server) and starts it.
    fn start(name: &str, db_url: &str, s3: &S3Server) -> Node {
        Node::start_with(name, db_url, s3, None)
    }

    /// As [`Node::start`], with access control on when `admin` names the bootstrap admin token.
    fn start_with(name: &str, db_url: &str, s3: &S3Server, admin: Option<&str>) -> Node {
        let dir = tempfile::tempdir().expect("tmp");
        let mut text = format!(
            "[api]\nhost = \"127.0.0.1\"\nport = 0\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
             [database]\nurl = \"{db_url}\"\n[hls]\nms_per_segment = 1000\n\
             [archive]\nserving = true\nrecording = true\nms_per_file = 2000\ndirectory = \"{archive}\"\n\
             [s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key = \"{ACCESS_KEY}\"\n\
             secret_key = \"{SECRET_KEY}\"\nbucket = \"cluster\"\npath_style = true\n\
             [cluster]\nenabled = true\nnode_id = \"{name}\"\nadvertise_host = \"127.0.0.1\"\n\
             lease_ms = {LEASE_MS}\n",
            archive = dir.path().join("archive").display(),
            endpoint = s3.endpoint,
        );
        if let Some(token) = admin {
            text.push_str(&crate::support::admin::admin_token_section(
                dir.path(),
                token,
            ));
        }
        std::fs::write(dir.path().join("conf.toml"), text).expect("conf");
        let mut node = Node {
            name: name.to_owned(),
            dir,
            proc: None,
        };
        node.restart();
        node
    }

    /// Starts the process again on the same directory (same node id, same archive).
    fn restart(&mut self) {
        self.proc = Some(ServerProcess::start(
            self.dir.path(),
            &["--conf", "conf.toml"],
            &[],
        ));
    }

    fn proc(&self) -> &ServerProcess {
        self.proc.as_ref().expect("running")
    }

    fn api(&self) -> String {
        self.proc().api.clone()
    }

    fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    fn terminate(&mut self) -> bool {
        self.proc.take().is_none_or(ServerProcess::terminate)
    }
}

/// Starts one node per name on the index `url` and the store `s3`.
fn start_nodes(names: &[&str], url: &str, s3: &S3Server) -> Vec<Node> {
    names.iter().map(|n| Node::start(n, url, s3)).collect()
}

/// Stops every node; each must exit cleanly.
fn terminate_all(nodes: &mut [Node]) {
    for n in nodes {
        assert!(n.terminate(), "{}: graceful stop", n.name);
    }
}

/// Polls `f` every 100 ms until it returns `Some` (or panics after `timeout`).
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/v1/cluster` of a node, asked with client `c` (with auth on: one sending an admin
/// token): stream id → owner.
async fn owners_as(c: &reqwest::Client, api: &str) -> Option<HashMap<Uuid, String>> {
    let v: serde_json::Value = c
        .get(format!("{api}/api/v1/cluster"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut all = HashMap::new();
    for n in v["nodes"].as_array()? {
        for s in n["streams"].as_array()? {
            all.insert(s.as_str()?.parse().ok()?, n["node_id"].as_str()?.to_owned());
        }
    }
    Some(all)
}

/// Creates `n` recording RTSP cameras through `api`, with outputs `outputs`, archived to S3.
async fn create_cameras(api: &str, url: &str, n: usize, outputs: &[&str]) -> Vec<Uuid> {
    create_cameras_as(&reqwest::Client::new(), api, url, n, outputs, "s3").await
}

/// Creates `n` recording RTSP cameras through client `c`, archived to `storage` (`s3` or
/// `filesystem`).
async fn create_cameras_as(
    c: &reqwest::Client,
    api: &str,
    url: &str,
    n: usize,
    outputs: &[&str],
    storage: &str,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = c
            .post(format!("{api}/api/v1/streams"))
            .json(&json!({
                "name": format!("cam {i}"),
                "source": {"kind": "rtsp", "url": url},
                "outputs": outputs,
                "archive": {"recording": true, "ms_per_file": 2000, "storage": storage},
            }))
            .send()
            .await
            .expect("create");
        assert_eq!(
            r.status().as_u16(),
            201,
            "{}",
            r.text().await.unwrap_or_default()
        );
        let v: serde_json::Value = r.json().await.expect("json");
        ids.push(v["id"].as_str().expect("id").parse().expect("uuid"));
    }
    ids
}

/// Every segment row: (stream, node, start, end, state, upload state).
type Row = (Uuid, Option<String>, i64, i64, String, String);

async fn segment_rows(pool: &sqlx::PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT stream_id, node_id, start_us, end_us, state, upload_state FROM segments \
         ORDER BY stream_id, start_us",
    )
    .fetch_all(pool)
    .await
    .expect("segments")
}

/// No two segments of one stream overlap in time: two nodes never recorded a camera at once.
fn assert_no_overlap(rows: &[Row]) {
    let mut by_stream: BTreeMap<Uuid, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_stream.entry(r.0).or_default().push(r);
    }
    for (stream, mut rows) in by_stream {
        rows.sort_by_key(|r| r.2);
        for w in rows.windows(2) {
            assert!(
                w[1].2 >= w[0].3,
                "stream {stream}: overlapping segments {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
}

/// `timestamp` of a JSON log line, in µs since the epoch.
fn log_time_us(line: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339")
        .timestamp_micros()
}

/// Times (µs) of the node's log lines with `message` about `stream`.
fn stream_log_times(p: &ServerProcess, message: &str, stream: Uuid) -> Vec<i64> {
    let id = stream.to_string();
    p.logs
        .lock()
        .expect("logs")
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message && v["stream"].as_str() == Some(&id))
        .map(|v| log_time_us(&v))
        .collect()
}

async fn pool(schema: &PgSchema) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(schema.connect_options())
        .await
        .expect("pool")
}

/// Waits until all `ids` are held, by live nodes among `names` only, each holding its even
/// share (`floor` or `ceil` of ids / nodes). Returns the owners.
async fn spread(
    api: &str,
    ids: &[Uuid],
    names: &[&str],
    timeout: Duration,
) -> HashMap<Uuid, String> {
    spread_as(&reqwest::Client::new(), api, ids, names, timeout).await
}

/// [`spread`] asked with client `c`.
async fn spread_as(
    c: &reqwest::Client,
    api: &str,
    ids: &[Uuid],
    names: &[&str],
    timeout: Duration,
) -> HashMap<Uuid, String> {
    let (lo, hi) = (ids.len() / names.len(), ids.len().div_ceil(names.len()));
    until(
        "the cameras spread evenly over the nodes",
        timeout,
        || async {
            let o = owners_as(c, api).await?;
            if !ids
                .iter()
                .all(|id| o.get(id).is_some_and(|n| names.contains(&n.as_str())))
            {
                return None;
            }
            let counts: Vec<usize> = names
                .iter()
                .map(|n| o.values().filter(|v| v == n).count())
                .collect();
            counts.iter().all(|c| (lo..=hi).contains(c)).then_some(o)
        },
    )
    .await
}

/// Ten cameras over three nodes; one node is killed (-9): its cameras record again on the others
/// within the lease plus a pass and a camera start, no stream ever has overlapping segments, and
/// the killed node uploads its last local segments when it comes back. Then a rolling restart of
/// all three loses no segment and leaves no gap longer than a pass and a camera start.
#[tokio::test(flavor = "multi_thread")]
async fn ten_cameras_spread_over_three_nodes_and_fail_over_from_a_killed_one() {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let rtsp = RtspServer::start(0);
    let url = schema.url();
    let mut nodes = start_nodes(&["n1", "n2", "n3"], &url, &s3);
    let ids = create_cameras(&nodes[0].api(), &rtsp.url("test"), 10, &["mse"]).await;
    let owners_before = spread(
        &nodes[1].api(),
        &ids,
        &["n1", "n2", "n3"],
        Duration::from_secs(30),
    )
    .await;
    // Each node's /metrics says how many it holds.
    for n in &nodes {
        let text = reqwest::get(format!("{}/metrics", n.api()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let held = owners_before.values().filter(|o| **o == n.name).count();
        let line = format!(
            "video_server_cluster_leases_held{{node=\"{}\"}} {held}",
            n.name
        );
        assert!(
            text.lines().any(|l| l == line),
            "{}: no {line:?} in\n{text}",
            n.name
        );
    }
    let db = pool(&schema).await;
    // Every camera records, on the node holding it.
    until(
        "every camera recorded a segment",
        Duration::from_secs(30),
        || async {
            let rows = segment_rows(&db).await;
            ids.iter()
                .all(|id| {
                    rows.iter()
                        .any(|r| r.0 == *id && r.1.as_deref() == Some(owners_before[id].as_str()))
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(rtsp.clients(), 10, "one RTSP session per camera");

    // Kill the node with the most cameras.
    let victim = (0..3)
        .max_by_key(|&i| {
            owners_before
                .values()
                .filter(|n| **n == nodes[i].name)
                .count()
        })
        .expect("a node");
    let victim_name = nodes[victim].name.clone();
    let moved: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| owners_before[id] == victim_name)
        .collect();
    let killed_us = chrono::Utc::now().timestamp_micros();
    nodes[victim].kill9();
    let survivors: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != victim_name)
        .collect();
    let other = (victim + 1) % 3;
    spread(
        &nodes[other].api(),
        &ids,
        &survivors,
        Duration::from_secs(30),
    )
    .await;
    // Recording again elsewhere within 10 s of the kill.
    let resumed = until(
        "the moved cameras record again",
        Duration::from_secs(30),
        || async {
            let rows = segment_rows(&db).await;
            let mut latest = 0;
            for id in &moved {
                let first = rows
                    .iter()
                    .filter(|r| r.0 == *id && r.1.as_deref() != Some(victim_name.as_str()))
                    .filter(|r| r.2 >= killed_us)
                    .map(|r| r.2)
                    .min()?;
                latest = latest.max(first);
            }
            Some(latest)
        },
    )
    .await;
    let gap_s = (resumed - killed_us) as f64 / 1e6;
    eprintln!(
        "kill -9 of {victim_name} ({} cameras): recording resumed within {gap_s:.1} s",
        moved.len()
    );
    assert!(gap_s < 10.0, "cameras resumed {gap_s:.1} s after the kill");

    // The killed node comes back: its leftovers are repaired and uploaded, and it gets its share.
    nodes[victim].restart();
    spread(
        &nodes[other].api(),
        &ids,
        &["n1", "n2", "n3"],
        Duration::from_secs(30),
    )
    .await;
    until(
        "the killed node's local segments are uploaded",
        Duration::from_secs(60),
        || async {
            let rows = segment_rows(&db).await;
            let left = rows
                .iter()
                .filter(|r| r.1.as_deref() == Some(victim_name.as_str()) && r.2 < killed_us)
                .filter(|r| r.5 != "remote")
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    assert_no_overlap(&segment_rows(&db).await);

    // A rolling restart: each node in turn stops (its cameras move to the others at their next
    // pass) and starts again (and gets its share back).
    let rolling_from = chrono::Utc::now().timestamp_micros();
    for i in 0..3 {
        assert!(nodes[i].terminate(), "{}: graceful stop", nodes[i].name);
        let up: Vec<&str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| *n != nodes[i].name)
            .collect();
        spread(
            &nodes[(i + 1) % 3].api(),
            &ids,
            &up,
            Duration::from_secs(30),
        )
        .await;
        nodes[i].restart();
        spread(
            &nodes[i].api(),
            &ids,
            &["n1", "n2", "n3"],
            Duration::from_secs(30),
        )
        .await;
    }
    let rolling_to = chrono::Utc::now().timestamp_micros();
    // Let the last segments close, then: no segment lost, and no gap in any camera's recording
    // longer than a pass plus a camera start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = segment_rows(&db).await;
    assert!(
        rows.iter().all(|r| r.4 == "complete" || r.4 == "recording"),
        "every segment is indexed and playable: {:?}",
        rows.iter()
            .filter(|r| r.4 != "complete" && r.4 != "recording")
            .collect::<Vec<_>>()
    );
    let mut worst_gap_us = 0;
    for id in &ids {
        let mut mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.0 == *id && r.3 >= rolling_from && r.2 <= rolling_to)
            .collect();
        mine.sort_by_key(|r| r.2);
        assert!(
            !mine.is_empty(),
            "stream {id} recorded during the rolling restart"
        );
        for w in mine.windows(2) {
            worst_gap_us = worst_gap_us.max(w[1].2 - w[0].3);
        }
    }
    eprintln!(
        "rolling restart: longest recording gap {:.1} s",
        worst_gap_us as f64 / 1e6
    );
    assert!(worst_gap_us < 6_000_000, "a gap of {worst_gap_us} µs");
    assert_no_overlap(&rows);
    terminate_all(&mut nodes);
    // A rolling stop leaves no overlap either, and the leases were given back.
    assert_no_overlap(&segment_rows(&db).await);
    let held: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM stream_leases WHERE owner IS NOT NULL")
            .fetch_one(&db)
            .await
            .expect("leases");
    assert_eq!(held, 0, "every lease released at shutdown");
    db.close().await;
}

/// A change made through a node that does not hold the camera is applied by the holder within a
/// second (LISTEN/NOTIFY), both off the media path (a rename) and on it (disable, enable).
#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_another_node_is_applied_by_the_owner_within_a_second() {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let rtsp = RtspServer::start(0);
    let url = schema.url();
    let mut nodes = start_nodes(&["a", "b"], &url, &s3);
    let ids = create_cameras(&nodes[0].api(), &rtsp.url("test"), 2, &["mse", "hls"]).await;
    let owners = spread(&nodes[0].api(), &ids, &["a", "b"], Duration::from_secs(30)).await;
    let id = ids[0];
    let owner = nodes.iter().find(|n| n.name == owners[&id]).expect("owner");
    let other = nodes.iter().find(|n| n.name != owners[&id]).expect("other");
    let c = reqwest::Client::new();
    let patch = |body: serde_json::Value| {
        c.patch(format!("{}/api/v1/streams/{id}", other.api()))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
    };
    let count = |message: &str| stream_log_times(owner.proc(), message, id).len();

    // HLS on the other node: a 307 to the same file (and query) on the owner, which serves it.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirects
        .get(format!("http://{}/hls/{id}.m3u8?x=1", other.proc().video))
        .send()
        .await
        .expect("hls");
    assert_eq!(r.status().as_u16(), 307);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(
        location,
        format!("http://{}/hls/{id}.m3u8?x=1", owner.proc().video)
    );
    // The owner has the playlist once its first HLS segment is cut (a second after the start).
    let playlist = until("the owner's playlist", Duration::from_secs(10), || async {
        let r = reqwest::get(&location).await.ok()?;
        if r.status().as_u16() == 200 {
            r.text().await.ok()
        } else {
            None
        }
    })
    .await;
    assert!(playlist.starts_with("#EXTM3U"), "{playlist}");
    let r = no_redirects
        .get(format!(
            "http://{}/hls/{}.m3u8",
            other.proc().video,
            Uuid::new_v4()
        ))
        .send()
        .await
        .expect("hls");
    assert_eq!(r.status().as_u16(), 404, "a stream nobody holds");

    let before = count("stream settings updated without a restart");
    let sent = Instant::now();
    let r = patch(json!({"name": "renamed through the other node"}))
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    until(
        "the owner applies the rename",
        Duration::from_secs(5),
        || async { (count("stream settings updated without a restart") > before).then_some(()) },
    )
    .await;
    let took = sent.elapsed();
    eprintln!("rename applied by the owner after {took:?}");
    assert!(took < Duration::from_secs(1), "applied after {took:?}");

    let stopped = count("stream stopped");
    let sent = Instant::now();
    let r = patch(json!({"enabled": false})).await.expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    until(
        "the owner stops the disabled camera",
        Duration::from_secs(5),
        || async { (count("stream stopped") > stopped).then_some(()) },
    )
    .await;
    let took = sent.elapsed();
    eprintln!("disable applied by the owner after {took:?}");
    assert!(took < Duration::from_secs(1), "applied after {took:?}");

    // A server without [cluster] on the same index refuses to start (it would record every
    // camera a second time).
    let single = tempfile::tempdir().expect("tmp");
    std::fs::write(
        single.path().join("conf.toml"),
        base_config().replace("sqlite://data/index.db", &url),
    )
    .expect("conf");
    let refused = second_start(single.path());
    assert!(
        !refused.status.success(),
        "a single node must not start on a cluster's index"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("the index is used by a cluster"), "{err}");

    // Enabled again through the other node: some node records it again.
    let r = patch(json!({"enabled": true})).await.expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    spread(&nodes[0].api(), &ids, &["a", "b"], Duration::from_secs(10)).await;
    terminate_all(&mut nodes);
}

/// A node whose connection to Postgres is cut stops its cameras before its leases expire: every
/// camera it held is stopped there before another node starts it, the RTSP server never sees
/// more sessions than cameras, and no stream has overlapping segments.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_postgres_stops_recording_before_its_leases_expire() {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let rtsp = RtspServer::start(0);
    // Node "cut" reaches Postgres through a proxy the test can cut.
    let proxy = TcpProxy::start();
    let mut pg = url::Url::parse(&crate::support::pg_url()).expect("pg url");
    let pg_port = pg.port().unwrap_or(5432);
    proxy.set_backend(Some(pg_port));
    pg.set_port(Some(proxy.port)).expect("port");
    let direct = schema.url();
    let through_proxy = direct.replacen(
        &format!("{}:{pg_port}", pg.host_str().expect("host")),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    assert_ne!(
        direct, through_proxy,
        "the node's URL goes through the proxy"
    );
    let mut cut = Node::start("cut", &through_proxy, &s3);
    let mut keep = Node::start("keep", &direct, &s3);
    let ids = create_cameras(&keep.api(), &rtsp.url("test"), 4, &["mse"]).await;
    let owners = spread(&keep.api(), &ids, &["cut", "keep"], Duration::from_secs(30)).await;
    let held: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| owners[id] == "cut")
        .collect();
    assert!(!held.is_empty());
    let db = pool(&schema).await;
    until(
        "every camera recorded a segment",
        Duration::from_secs(30),
        || async {
            let rows = segment_rows(&db).await;
            ids.iter()
                .all(|id| rows.iter().any(|r| r.0 == *id))
                .then_some(())
        },
    )
    .await;

    let cut_at = Instant::now();
    let cut_at_us = chrono::Utc::now().timestamp_micros();
    proxy.cut();
    // The other node takes every camera once the cut node's leases expired.
    spread(&keep.api(), &ids, &["keep"], Duration::from_secs(30)).await;
    let took = cut_at.elapsed();
    eprintln!("cameras of the cut node taken over after {took:?}");
    for id in &held {
        // The lease shows before the holder's start is logged: wait for both lines. Only lines
        // after the cut count: the other node may have started the camera before, when the
        // cameras were first spread (it then handed it over).
        let (stopped, started) = until(
            "the stop and start logged",
            Duration::from_secs(10),
            || async {
                let after_cut = |times: Vec<i64>| times.into_iter().find(|t| *t >= cut_at_us);
                let stopped = after_cut(stream_log_times(cut.proc(), "stream stopping", *id))?;
                let started = after_cut(stream_log_times(keep.proc(), "stream started", *id))?;
                Some((stopped, started))
            },
        )
        .await;
        assert!(
            stopped < started,
            "stream {id}: the cut node stopped it at {stopped}, after the other node started it at {started}"
        );
    }
    let most = rtsp
        .client_history()
        .iter()
        .filter(|(t, _)| *t >= cut_at)
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    assert!(
        most <= ids.len(),
        "{most} RTSP sessions for {} cameras",
        ids.len()
    );
    // Healed: the cut node rejoins and gets its share back; still no overlap anywhere.
    proxy.set_backend(Some(pg_port));
    spread(&keep.api(), &ids, &["cut", "keep"], Duration::from_secs(30)).await;
    assert_no_overlap(&segment_rows(&db).await);
    assert!(cut.terminate(), "cut: graceful stop");
    assert!(keep.terminate(), "keep: graceful stop");
    assert_no_overlap(&segment_rows(&db).await);
    db.close().await;
}

/// Cluster mode refuses to start without Postgres or S3, with a message saying why; and a second
/// process on one SQLite index refuses to start while the first runs.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_is_single_node() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("conf.toml"),
        format!("{}[cluster]\nenabled = true\n", base_config()),
    )
    .expect("conf");
    let out = std::process::Command::new(crate::support::binary::binary())
        .current_dir(dir.path())
        .args(["--conf", "conf.toml"])
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster mode needs a Postgres index"), "{err}");

    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let first = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    let second = second_start(dir.path());
    assert!(
        !second.status.success(),
        "the second process must not start"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is in use by another video-server process"),
        "{err}"
    );
    // The first one is unaffected, and once it has stopped the index is free again.
    assert_eq!(
        reqwest::get(format!("{}/healthz", first.api))
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    assert!(first.terminate());
    let again = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    assert!(again.terminate());
}

/// Runs the binary once more on `dir`'s config and waits for it to exit (it should refuse).
fn second_start(dir: &Path) -> std::process::Output {
    let mut child = std::process::Command::new(crate::support::binary::binary())
        .current_dir(dir)
        .args(["--conf", "conf.toml"])
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second process kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Fencing: segment rows written under a lease that has moved to another node are refused (the
/// insert, the progress and the close), and the row records the node that wrote it.
#[tokio::test]
async fn segment_rows_under_a_lease_that_moved_on_are_refused() {
    use video_server::db::cluster::{self as sql, Fence};
    use video_server::db::segments::{self, NewSegment, RecordedSegment, SegmentState};
    use video_server::db::{Db, DbError};
    use video_server::stream::StorageKind;

    let t = crate::support::postgres().await;
    let db = &t.db;
    let Db::Postgres(p) = db else {
        unreachable!("a Postgres test database")
    };
    let stream = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO stream_leases (stream_id, owner, expires_us, epoch) VALUES ($1, NULL, 0, 0)",
    )
    .bind(stream)
    .execute(p)
    .await
    .expect("lease row");
    assert_eq!(
        sql::take(db, "a", 60_000, 10).await.expect("take"),
        vec![(stream, 1)]
    );
    assert!(
        sql::take(db, "b", 60_000, 10)
            .await
            .expect("take")
            .is_empty(),
        "a held lease is not taken"
    );
    let fence = |node: &str, epoch| Fence {
        node_id: node.into(),
        epoch,
    };
    let record = |start_s: i64, f: Fence| RecordedSegment {
        segment: NewSegment {
            stream_id: stream,
            start_us: start_s * 1_000_000,
            end_us: start_s * 1_000_000,
            media_duration_us: 0,
            storage: StorageKind::Filesystem,
            storage_key: format!("/archive/{stream}/{stream}_{start_s}.mp4"),
            bytes: 100,
            state: SegmentState::Recording,
        },
        codecs: "avc1.42c01f".into(),
        init: bytes::Bytes::from_static(b"init"),
        upload_state: "local",
        clock_correction_us: None,
        fence: Some(f),
    };
    let id = segments::insert_recorded(db, &record(1000, fence("a", 1)))
        .await
        .expect("insert under the lease");
    segments::update_progress_fenced(db, id, 1_000_500_000, 500_000, 200, Some(&fence("a", 1)))
        .await
        .expect("progress under the lease");
    let node: Option<String> = sqlx::query_scalar("SELECT node_id FROM segments WHERE id = $1")
        .bind(id)
        .fetch_one(p)
        .await
        .expect("row");
    assert_eq!(node.as_deref(), Some("a"));

    // a's lease expires and b takes the stream (epoch 2).
    sqlx::query("UPDATE stream_leases SET expires_us = 0")
        .execute(p)
        .await
        .expect("expire");
    assert_eq!(
        sql::take(db, "b", 60_000, 10).await.expect("take"),
        vec![(stream, 2)]
    );
    let stale = fence("a", 1);
    let fenced = |r: Result<_, DbError>| matches!(r, Err(DbError::Fenced { epoch: 1, .. }));
    assert!(fenced(
        segments::update_progress_fenced(db, id, 1_001_000_000, 1_000_000, 300, Some(&stale)).await
    ));
    assert!(fenced(
        segments::finalize_fenced(db, id, 1_001_000_000, 1_000_000, 300, Some(&stale)).await
    ));
    assert!(fenced(
        segments::insert_recorded(db, &record(1002, stale.clone()))
            .await
            .map(|_| ())
    ));
    // Nothing of the stale writes reached the index.
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, end_us, state FROM segments ORDER BY id")
            .fetch_all(p)
            .await
            .expect("rows");
    assert_eq!(rows, vec![(id, 1_000_500_000, "recording".to_owned())]);
    // The same statements pass under the current lease.
    segments::finalize_fenced(db, id, 1_001_000_000, 1_000_000, 300, Some(&fence("b", 2)))
        .await
        .expect("finalize under the current lease");
    t.cleanup().await;
}

type Viewer =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A live viewer of `id` on the video listener `video`, read until `fragments` fragments have
/// arrived (each parsed with the session's init segment); the messages so far and the open
/// session, or why it failed.
async fn watch(video: &str, id: Uuid, fragments: usize) -> Result<(Messages, Viewer), String> {
    watch_as(video, id, fragments, "", None).await
}

/// [`watch`] with credentials: `query` appended to the URL (a signed query) and `bearer` sent
/// as `Authorization: Bearer`. A refused upgrade is `Err("HTTP <status>")`.
async fn watch_as(
    video: &str,
    id: Uuid,
    fragments: usize,
    query: &str,
    bearer: Option<&str>,
) -> Result<(Messages, Viewer), String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let sep = if query.is_empty() { "" } else { "&" };
    let url = format!("ws://{video}/ws/live?stream_id={id}{sep}{query}");
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = bearer {
        let value = format!("Bearer {token}").parse().map_err(|_| "header")?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            return Err(format!("HTTP {}", r.status().as_u16()));
        }
        Err(e) => return Err(format!("connect: {e}")),
    };
    let mut got = Messages::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.fragments < fragments {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("no {fragments} fragments in 15 s: {}", got.order)),
            Ok(Some(Ok(Message::Binary(b)))) => got.take(&b),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed: {f:?}")),
            Ok(Some(Ok(_))) => {}
            Ok(other) => return Err(format!("ended: {other:?}")),
        }
    }
    Ok((got, ws))
}

/// What two-node tests run on: the index's schema, the S3 server and the RTSP server, kept alive
/// as long as this is.
struct Shared {
    schema: PgSchema,
    _s3: S3Server,
    _rtsp: RtspServer,
}

/// Two nodes "a" and "b" sharing two recording cameras (outputs mse): what they run on, the nodes,
/// the cameras, and the index of the node holding the first one.
async fn two_nodes_with_cameras() -> (Shared, Vec<Node>, Vec<Uuid>, usize) {
    two_nodes_with_cameras_as(None).await
}

/// [`two_nodes_with_cameras`], with access control on when `admin` names the bootstrap admin
/// token (the cameras are then made and their holders read with it).
async fn two_nodes_with_cameras_as(admin: Option<&str>) -> (Shared, Vec<Node>, Vec<Uuid>, usize) {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let rtsp = RtspServer::start(0);
    let names = ["a", "b"];
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start_with(n, &schema.url(), &s3, admin))
        .collect();
    let c = bearer_client(admin);
    let url = rtsp.url("test");
    let ids = create_cameras_as(&c, &nodes[0].api(), &url, 2, &["mse"], "s3").await;
    let owners = spread_as(&c, &nodes[0].api(), &ids, &names, Duration::from_secs(30)).await;
    let holder = nodes
        .iter()
        .position(|n| n.name == owners[&ids[0]])
        .expect("holder");
    let shared = Shared {
        schema,
        _s3: s3,
        _rtsp: rtsp,
    };
    (shared, nodes, ids, holder)
}

/// A live viewer on a node that does not hold the camera is relayed from the holder, in the Go
/// wire format (codec message, init segment, fragments that parse with it); when the holder is
/// killed the viewer is told `1001 Stream stopped` at once, and reconnecting to the same node plays
/// again once the camera has been taken over (no manual step).
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_on_another_node_is_relayed_and_plays_on_after_a_failover() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (_shared, mut nodes, ids, holder) = two_nodes_with_cameras().await;
    let id = ids[0];
    let video = nodes[1 - holder].proc().video.clone();

    // The holder may still be connecting to the camera: retry until its first fragments.
    let (first, mut ws) = until("a relayed viewer", Duration::from_secs(20), || async {
        watch(&video, id, 10).await.ok()
    })
    .await;
    assert!(first.order.starts_with("cif"), "{}", first.order);
    assert_eq!(first.codec_messages.len(), 1, "{:?}", first.codec_messages);
    assert!(first.frames >= 10, "{} frames", first.frames);
    assert_eq!(first.other, 0, "only codec, init and fragments");
    // Still relayed from the same holder (a lease that moved meanwhile would void the rest).
    let relay_api = nodes[1 - holder].api();
    assert_eq!(
        gauge(&relay_api, "video_server_relay_upstreams").await,
        Some(1.0),
        "the viewer is relayed"
    );
    let now = owners_as(&reqwest::Client::new(), &relay_api).await;
    assert_eq!(
        now.as_ref().and_then(|o| o.get(&id)),
        Some(&nodes[holder].name),
        "the camera is still held by the node about to be killed"
    );

    nodes[holder].kill9();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => break f,
                Some(Ok(_)) => {}
                other => panic!("the relayed session ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the viewer is told at once that its holder went away")
    .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "Stream stopped");

    // Reconnecting to the same node: the camera is recorded again after the lease ran out.
    let started = Instant::now();
    let (again, _ws) = until(
        "the viewer playing again after the failover",
        Duration::from_secs(30),
        || async { watch(&video, id, 10).await.ok() },
    )
    .await;
    eprintln!("playing again {:?} after the kill", started.elapsed());
    assert!(again.order.starts_with("cif"), "{}", again.order);
    terminate_all(&mut nodes);
}

/// A gauge without labels from a node's `/metrics` (`None` when it is not there).
async fn gauge(api: &str, name: &str) -> Option<f64> {
    gauge_as(&reqwest::Client::new(), api, name).await
}

/// [`gauge`] read with client `c`.
async fn gauge_as(c: &reqwest::Client, api: &str, name: &str) -> Option<f64> {
    let text = c
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// MSE viewers of `id` on a node's API (`GET /api/v1/streams/{id}/status`).
async fn viewers(api: &str, id: Uuid) -> Option<u64> {
    let v: serde_json::Value = reqwest::get(format!("{api}/api/v1/streams/{id}/status"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["viewers"].as_u64()
}

/// With access control on, a viewer on a node that does not hold the camera needs what the holder
/// would ask for, checked where it connects: nothing, an unknown token or a forged signature →
/// 401, a token for another stream → 403, all before the upgrade; a token with `live` on the
/// stream, and a URL signed on the holder with it, play through the node's one upstream (which
/// the holder takes on a node proof only). Revoking the token on the holder ends both relayed
/// viewers, as it ends local ones.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_viewers_need_the_credentials_the_holder_would_ask_for() {
    use futures::StreamExt;
    const ADMIN: &str = "cluster-relay-admin-token-0123456789abcdef";
    let (_shared, mut nodes, ids, holder) = two_nodes_with_cameras_as(Some(ADMIN)).await;
    let admin = bearer_client(Some(ADMIN));
    let id = ids[0];
    let (holder_api, relay) = (nodes[holder].api(), &nodes[1 - holder]);
    let video = relay.proc().video.clone();

    // Tokens made on the relaying node: `live` on the stream, and `live` on the other one only.
    let token = async |stream: Uuid| {
        let stream = stream.to_string();
        create_token(&relay.api(), ADMIN, "viewer", &[&stream], &["live"]).await
    };
    let (viewer, viewer_id) = token(id).await;
    let (stranger, _) = token(ids[1]).await;

    let refused = async |query: &str, bearer: Option<&str>| {
        watch_as(&video, id, 1, query, bearer).await.err()
    };
    assert_eq!(refused("", None).await.as_deref(), Some("HTTP 401"));
    let unknown = "vs_0123456789abcdef_not-a-secret";
    assert_eq!(
        refused("", Some(unknown)).await.as_deref(),
        Some("HTTP 401")
    );
    let forged = "exp=4102444800&act=live&tok=0123456789abcdef&sig=AAAA";
    assert_eq!(refused(forged, None).await.as_deref(), Some("HTTP 401"));
    assert_eq!(
        refused("", Some(&stranger)).await.as_deref(),
        Some("HTTP 403")
    );

    // The holder may still be connecting to the camera: retry until its first fragments.
    let (got, mut by_token) = until(
        "a relayed viewer with a token",
        Duration::from_secs(20),
        || async { watch_as(&video, id, 10, "", Some(&viewer)).await.ok() },
    )
    .await;
    assert!(got.order.starts_with("cif"), "{}", got.order);
    // A URL signed on the holder opens the stream on the relaying node too (one key, in the index).
    let r = bearer_client(Some(&viewer))
        .post(format!("{holder_api}/api/v1/streams/{id}/sign"))
        .json(&json!({"actions": ["live"], "ttl_s": 600}))
        .send()
        .await
        .expect("sign");
    assert_eq!(r.status().as_u16(), 200);
    let signed: serde_json::Value = r.json().await.expect("json");
    let query = signed["query"].as_str().expect("query").to_owned();
    let (got, mut by_url) = watch_as(&video, id, 10, &query, None)
        .await
        .expect("a relayed viewer with a signed URL");
    assert!(got.order.starts_with("cif"), "{}", got.order);
    assert_eq!(
        gauge_as(&admin, &relay.api(), "video_server_relay_upstreams").await,
        Some(1.0),
        "both viewers are relayed, over one upstream"
    );

    // Revoked on the holder: both relayed sessions end (credentials are re-checked every 5 s,
    // lookups cached for 5 s).
    let r = admin
        .delete(format!("{holder_api}/api/v1/tokens/{viewer_id}"))
        .send()
        .await
        .expect("revoke");
    assert!(r.status().is_success(), "{}", r.status());
    let revoked = Instant::now();
    for (what, ws) in [("token", &mut by_token), ("signed URL", &mut by_url)] {
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    Some(Ok(m)) if !m.is_close() => {}
                    other => break other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the viewer by {what} still plays after the revocation"));
        eprintln!(
            "the viewer by {what} ended {:?} after the revocation: {end:?}",
            revoked.elapsed()
        );
    }
    terminate_all(&mut nodes);
}

/// Two viewers on a node that does not hold the camera share one upstream: both play (codec
/// message, init segment, fragments from a keyframe, the holder's codec list) while the holder
/// counts one viewer; when both have left, the upstream closes (the holder counts none, the
/// relaying node's `video_server_relay_upstreams` is 0). The holder takes a relay only with a
/// node proof for that stream.
#[tokio::test(flavor = "multi_thread")]
async fn viewers_on_one_node_share_one_upstream_from_the_holder() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (shared, mut nodes, ids, holder) = two_nodes_with_cameras().await;
    let id = ids[0];
    let (holder, relay) = (&nodes[holder], &nodes[1 - holder]);
    let video = relay.proc().video.clone();

    let (first, mut ws1) = until("a relayed viewer", Duration::from_secs(20), || async {
        watch(&video, id, 10).await.ok()
    })
    .await;
    let (second, mut ws2) = watch(&video, id, 10)
        .await
        .expect("a second relayed viewer");
    for got in [&first, &second] {
        assert!(got.order.starts_with("cif"), "{}", got.order);
        assert_eq!(got.codec_messages.len(), 1, "{:?}", got.codec_messages);
        assert_eq!(got.first_video_keyframe, Some(true));
        assert!(got.frames >= 10, "{} frames", got.frames);
        assert_eq!(got.other, 0, "only codec, init and fragments");
    }
    // Both open: the holder serves one viewer, the relay, and the relaying node has one upstream.
    for _ in 0..5 {
        assert_eq!(viewers(&holder.api(), id).await, Some(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        viewers(&relay.api(), id).await,
        Some(0),
        "not running there"
    );
    assert_eq!(
        gauge(&relay.api(), "video_server_relay_upstreams").await,
        Some(1.0)
    );

    for ws in [&mut ws1, &mut ws2] {
        let _ = ws.send(Message::Close(None)).await;
    }
    drop((ws1, ws2));
    until(
        "the upstream closed after the last viewer left",
        Duration::from_secs(10),
        || async {
            let holder_viewers = viewers(&holder.api(), id).await?;
            let upstreams = gauge(&relay.api(), "video_server_relay_upstreams").await?;
            (holder_viewers == 0 && upstreams == 0.0).then_some(())
        },
    )
    .await;

    // A viewer on the holder itself gets the codec list the relayed viewers got.
    let (direct, _ws) = watch(&holder.proc().video, id, 3)
        .await
        .expect("direct viewer");
    assert_eq!(direct.codec_messages, first.codec_messages);

    // The holder admits a relay only with a node proof for this stream.
    let relay_request = |proof: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = format!("ws://{}/ws/live?stream_id={id}", holder.proc().video)
            .into_client_request()
            .expect("request");
        r.headers_mut()
            .insert("x-video-server-relayed", "1".parse().expect("header"));
        r.headers_mut().insert(
            video_server::auth::signing::NODE_PROOF_HEADER,
            proof.parse().expect("header"),
        );
        r
    };
    use video_server::auth::signing::live_relay_subject;
    let db = pool(&shared.schema).await;
    let exp = chrono::Utc::now().timestamp() + 60;
    let (own, _) = tokio_tungstenite::connect_async(relay_request(
        &node_proof(&db, &live_relay_subject(id)).await,
    ))
    .await
    .expect("a node proof for the stream opens its live route");
    drop(own);
    for proof in [
        node_proof(&db, &live_relay_subject(ids[1])).await,
        node_proof(&db, "/some/segment.mp4").await,
        format!("{exp}.Zm9yZ2Vk"),
        "garbage".to_owned(),
    ] {
        match tokio_tungstenite::connect_async(relay_request(&proof)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401, "{proof}");
            }
            other => panic!("a relay with proof {proof:?} was not refused: {other:?}"),
        }
    }
    terminate_all(&mut nodes);
}

/// A codec change on the holder's camera (H.264 Main → High and a new size) reaches a relayed
/// viewer as it reaches a viewer on the holder: a new `0x09` codec message, then the new init
/// segment, then fragments. The camera is on demand: the relay's upstream is the viewer that
/// starts it on the holder.
#[tokio::test(flavor = "multi_thread")]
async fn a_codec_change_reaches_relayed_viewers_as_on_the_holder() {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let clip = crate::codec_switch::codec_changing_clip(tmp.path());
    let (_rtsp, source) = crate::codec_switch::source_of(&clip);
    let url = schema.url();
    let mut nodes = start_nodes(&["a", "b"], &url, &s3);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/streams", nodes[0].api()))
        .json(&json!({
            "name": "switching",
            "source": {"kind": "rtsp", "url": source},
            "outputs": ["mse"],
            "on_demand": true,
            "archive": {"recording": false},
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    let id: Uuid = v["id"].as_str().expect("id").parse().expect("uuid");
    let owners = spread(&nodes[0].api(), &[id], &["a", "b"], Duration::from_secs(30)).await;
    let relay = nodes.iter().find(|n| n.name != owners[&id]).expect("relay");
    let got = crate::codec_switch::watch_the_switch(&relay.proc().video, id).await;
    crate::codec_switch::assert_codec_change(&got);
    terminate_all(&mut nodes);
}

/// Byte ranges a node has served to other nodes (its `/metrics`: 206 answers of the internal
/// segment route).
async fn internal_ranges_served(api: &str) -> u64 {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with("video_server_http_requests_total{"))
        .filter(|l| l.contains("route=\"/internal/v1/segment\"") && l.contains("status=\"206\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A node proof (header value) over `subject`, made with the index's signing key as a node does.
async fn node_proof(db: &sqlx::PgPool, subject: &str) -> String {
    let secret: Vec<u8> =
        sqlx::query_scalar("SELECT secret FROM signing_keys ORDER BY id DESC LIMIT 1")
            .fetch_one(db)
            .await
            .expect("signing key");
    let k = video_server::db::signing_keys::SigningKey {
        id: 1,
        secret,
        created_at_us: 0,
        valid_until_us: None,
    };
    let exp = chrono::Utc::now().timestamp() + 60;
    video_server::auth::signing::NodeProof::sign(&k, subject, exp).to_header()
}

/// A request to a node's internal segment endpoint for `key`, with a node proof made with the
/// index's signing key when `proof` is set (`Some(None)`: a proof for another key).
async fn internal_get(
    db: &sqlx::PgPool,
    video: &str,
    key: &str,
    proof: Option<Option<&str>>,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    use video_server::auth::signing::NODE_PROOF_HEADER;
    let mut url = url::Url::parse(&format!("http://{video}/internal/v1/segment")).expect("url");
    url.query_pairs_mut().append_pair("key", key);
    let mut req = reqwest::Client::new().get(url);
    if let Some(signed_key) = proof {
        let p = node_proof(db, signed_key.unwrap_or("/some/other/key.mp4")).await;
        req = req.header(NODE_PROOF_HEADER, p);
    }
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().await.expect("internal request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.expect("body"))
}

/// Filesystem segments stay on the node that recorded them; another node plays them over
/// `/ws/archive` and exports them by reading through the recording node's internal endpoint,
/// and gets exactly what the recording node serves. That endpoint wants a node proof for the key,
/// answers byte ranges, and serves this node's segments only. With the recording node down, the
/// other node's export fails at once with 503 instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_segment_still_local_to_its_node_plays_and_exports_from_another_node() {
    let schema = PgSchema::create().await;
    let s3 = S3Server::start().await;
    let rtsp = RtspServer::start(0);
    let url = schema.url();
    let mut nodes = start_nodes(&["a", "b"], &url, &s3);
    let ids = create_cameras_as(
        &reqwest::Client::new(),
        &nodes[0].api(),
        &rtsp.url("test"),
        1,
        &["mse"],
        "filesystem",
    )
    .await;
    let id = ids[0];
    let owners = spread(&nodes[1].api(), &ids, &["a", "b"], Duration::from_secs(30)).await;
    let rec = nodes
        .iter()
        .position(|n| n.name == owners[&id])
        .expect("recording node");
    let other = 1 - rec;
    let db = pool(&schema).await;
    // Four complete segments, all on the recording node's disk only.
    let rows: Vec<(i64, i64, String, String)> = until(
        "four complete segments",
        Duration::from_secs(40),
        || async {
            let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
                "SELECT start_us, end_us, storage_key, storage FROM segments \
                 WHERE stream_id = $1 AND state = 'complete' ORDER BY start_us",
            )
            .bind(id)
            .fetch_all(&db)
            .await
            .ok()?;
            (rows.len() >= 4).then_some(rows)
        },
    )
    .await;
    let archive_rec = nodes[rec].dir.path().join("archive");
    for (_, _, key, storage) in &rows {
        assert_eq!(storage, "filesystem");
        assert!(Path::new(key).starts_with(&archive_rec), "{key}");
    }
    let (from_s, to_s) = (rows[0].0 / 1_000_000 + 1, rows[3].1 / 1_000_000);
    assert!(to_s > from_s + 2, "{rows:?}");

    // The test runs both nodes on one machine, so the other node could open the recording node's
    // files by path: count what the recording node serves to show the bytes came through it.
    let served_before = internal_ranges_served(&nodes[rec].api()).await;

    // Export: the same file from both nodes.
    let export = |api: String| async move {
        let r = reqwest::get(format!(
            "{api}/api/v1/streams/{id}/export.mp4?start={from_s}&end={to_s}"
        ))
        .await
        .expect("export");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body"))
    };
    let (status, here) = export(nodes[rec].api()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&here));
    let (status, there) = export(nodes[other].api()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&there));
    assert!(here.len() > 10_000, "{} bytes", here.len());
    assert!(
        here == there,
        "the exports differ ({} and {} bytes)",
        here.len(),
        there.len()
    );

    // Archive playback: the same messages from both nodes.
    let query = format!("stream_id={id}&start={from_s}&duration={}", to_s - from_s);
    let p_rec = crate::playback::play(&nodes[rec].proc().video, &query, true, false).await;
    let p_other = crate::playback::play(&nodes[other].proc().video, &query, true, false).await;
    assert!(
        p_rec.fragments.len() >= 2,
        "{} fragments",
        p_rec.fragments.len()
    );
    assert_eq!(p_other.codecs, p_rec.codecs);
    assert!(p_other.init == p_rec.init, "init segments differ");
    assert_eq!(p_other.fragments.len(), p_rec.fragments.len());
    assert!(p_other.fragments == p_rec.fragments, "fragments differ");
    assert_eq!(p_other.texts.last().map(String::as_str), Some("eos"));
    let served = internal_ranges_served(&nodes[rec].api()).await - served_before;
    eprintln!("the recording node served {served} byte ranges to the other node");
    assert!(
        served >= 4,
        "read through the recording node: {served} ranges"
    );

    // The internal endpoint itself.
    let video = nodes[rec].proc().video.clone();
    let key = rows[0].2.as_str();
    let file = std::fs::read(key).expect("segment file");
    let len = file.len();
    let (status, headers, body) = internal_get(&db, &video, key, None, None).await;
    assert_eq!(status, 401, "no proof");
    let j: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(j["error"]["code"], "unauthorized", "{j}");
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) = internal_get(&db, &video, key, Some(None), None).await;
    assert_eq!(status, 401, "a proof for another key");
    let (status, headers, body) =
        internal_get(&db, &video, key, Some(Some(key)), Some("bytes=100-199")).await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 100-199/{len}").as_str()
    );
    assert!(body[..] == file[100..200], "the range's bytes");
    let (status, _, body) = internal_get(&db, &video, key, Some(Some(key)), None).await;
    assert_eq!(status, 200);
    assert!(body[..] == file[..], "the whole file");
    let past = format!("bytes={len}-");
    let (status, headers, _) = internal_get(&db, &video, key, Some(Some(key)), Some(&past)).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{len}").as_str());
    // Hostile keys, each with a valid proof for itself: outside the roots, leading out of them
    // with `..`, inside them but no segment, and relative.
    let conf = nodes[rec].dir.path().join("conf.toml");
    let dotdot = format!("{}/../conf.toml", archive_rec.display());
    let marker = archive_rec.join(".video-server-root");
    let conf = conf.display().to_string();
    let marker = marker.display().to_string();
    for (hostile, want) in [
        ("/etc/passwd", 403),
        (conf.as_str(), 403),
        (dotdot.as_str(), 403),
        (marker.as_str(), 404),
        ("archive/x.mp4", 400),
    ] {
        let (status, _, body) = internal_get(&db, &video, hostile, Some(Some(hostile)), None).await;
        assert_eq!(
            status,
            want,
            "{hostile}: {}",
            String::from_utf8_lossy(&body)
        );
        let j: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(j["error"]["code"].is_string(), "{hostile}: {j}");
    }
    // The other node does not serve a segment it did not record (outside its own roots).
    let other_video = nodes[other].proc().video.clone();
    let (status, _, _) = internal_get(&db, &other_video, key, Some(Some(key)), None).await;
    assert_eq!(status, 403);

    // The recording node is killed: the other node answers an export at once with 503 (a range
    // it has not planned before: a cached plan would already be streaming).
    nodes[rec].kill9();
    let asked = Instant::now();
    let r = reqwest::get(format!(
        "{}/api/v1/streams/{id}/export.mp4?start={from_s}&end={}",
        nodes[other].api(),
        to_s - 1
    ))
    .await
    .expect("export");
    let status = r.status().as_u16();
    let body = r.bytes().await.expect("body");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    // Archive playback there skips the unreadable segments as missing ones and says so.
    let p = crate::playback::play(&nodes[other].proc().video, &query, true, false).await;
    assert!(p.fragments.is_empty(), "{} fragments", p.fragments.len());
    assert_eq!(
        p.close,
        Some((1011, "No valid archive segments found".to_owned()))
    );
    assert!(
        asked.elapsed() < Duration::from_secs(40),
        "{:?}",
        asked.elapsed()
    );
    terminate_all(&mut nodes);
    db.close().await;
}
