//! Fault tests (issue 10, docs/reliability.md): races, crashes, storage outages and flapping
//! cameras against the real server, the real GStreamer RTSP server and both index engines. Each
//! checks that nothing is lost, from the index and from the files.
//!
//! Short versions run with the suite; `FAULT_*` environment variables make the long versions
//! (see docs/reliability.md for the commands).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;
use video_server::db::Db;
use video_server::db::segments::SegmentRow;

use crate::archive::{all_segments, files_under};
use crate::support::InProcess;
use crate::support::media::{RtspServer, eventually};

/// A number from the environment (long versions of the tests), else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// No two segments of one stream overlap in time (one recorder at a time).
fn assert_no_overlap(rows: &[SegmentRow]) {
    let mut sorted: Vec<&SegmentRow> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.start_us, r.id));
    for w in sorted.windows(2) {
        assert!(
            w[1].start_us >= w[0].end_us,
            "overlapping segments (two recorders): {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

// ----- one owner per stream -------------------------------------------------------------------

async fn concurrent_changes(db_url: Option<String>) {
    let mut rtsp = RtspServer::start(0);
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("mp4");
    let id = Uuid::new_v4();
    let url = rtsp.url("test");
    let s = InProcess::start_with_db(
        &format!(
            "[archive]\nrecording = true\nms_per_file = 2000\ndirectory = \"{}\"\n\
             [[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{url}\"\noutput_types = [\"mse\", \"hls\"]\n\
             archive = {{ recording = true }}\n",
            archive.display()
        ),
        db_url,
    )
    .await;
    eventually("the camera connects", Duration::from_secs(20), || {
        (rtsp.clients() == 1).then_some(())
    })
    .await;
    let manager = s.state.manager.clone();
    let c = reqwest::Client::new();
    let stream_uri = format!("{}/api/v1/streams/{id}", s.api);
    let spec = |ms: u32, outputs: &[&str]| {
        json!({
            "name": "cam", "source": {"kind": "rtsp", "url": url}, "outputs": outputs,
            "archive": {"recording": true, "ms_per_file": ms},
        })
    };

    // Watch the invariant while the requests run: never two runtimes of the stream at once.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (manager, watching) = (manager.clone(), watching.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let n = manager.counters().snapshot();
                most = most.max(n.started - n.stopped);
                tokio::task::yield_now().await;
            }
            most
        })
    };

    let requests = env_or("FAULT_CONCURRENT_REQUESTS", 100);
    let mut calls = Vec::new();
    for i in 0..requests {
        let (c, stream_uri, api) = (c.clone(), stream_uri.clone(), s.api.clone());
        let go_body = json!({"guid": id.to_string(), "url": url, "output_types": ["mse"]});
        // One DELETE in the middle; enable_camera creates the stream again afterwards.
        let kind = if i == requests / 2 { 6 } else { i % 6 };
        let body = match kind {
            0 => spec(2000 + (i % 2) as u32 * 1000, &["mse", "hls"]),
            1 => json!({"name": format!("rename {i}")}),
            2 => json!({"archive": {"ms_per_file": 2000 + (i % 3) as u32 * 500}}),
            3 => json!({"enabled": i % 4 == 0}),
            _ => go_body.clone(),
        };
        calls.push(tokio::spawn(async move {
            let r = match kind {
                0 => c.put(&stream_uri).json(&body).send().await,
                1..=3 => {
                    c.patch(&stream_uri)
                        .header("content-type", "application/merge-patch+json")
                        .body(body.to_string())
                        .send()
                        .await
                }
                6 => c.delete(&stream_uri).send().await,
                4 => {
                    c.post(format!("{api}/enable_camera"))
                        .json(&body)
                        .send()
                        .await
                }
                _ => {
                    c.post(format!("{api}/disable_camera"))
                        .json(&body)
                        .send()
                        .await
                }
            };
            r.expect("request answered").status().as_u16()
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for call in calls {
        *statuses
            .entry(call.await.expect("request task"))
            .or_insert(0) += 1;
    }
    assert!(
        statuses.keys().all(|s| matches!(s, 200 | 201 | 204 | 404)),
        "unexpected statuses: {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > requests / 2,
        "most changes applied: {statuses:?}"
    );
    // A known final state: enabled, recording, with both outputs.
    let put = c
        .put(&stream_uri)
        .json(&spec(2000, &["mse", "hls"]))
        .send()
        .await
        .expect("final put");
    if put.status() == 404 {
        let mut body = spec(2000, &["mse", "hls"]);
        body["id"] = json!(id);
        let post = c
            .post(format!("{}/api/v1/streams", s.api))
            .json(&body)
            .send()
            .await
            .expect("final post");
        assert_eq!(post.status(), 201);
    } else {
        assert_eq!(put.status(), 200);
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.await.expect("watcher");
    assert!(most <= 1, "{most} runtimes of one stream ran at once");

    // Exactly one runtime, one RTSP session, one recorder.
    let n = manager.counters().snapshot();
    assert_eq!(n.started - n.stopped, 1, "{n:?}");
    assert_eq!((n.stop_timeouts, n.task_panics), (0, 0), "{n:?}");
    assert_eq!(manager.running(), 1);
    assert!(manager.runtime(id).is_some());
    assert!(
        n.spec_updates > 0,
        "renames did not restart the stream: {n:?}"
    );
    eventually(
        "one RTSP session at the camera",
        Duration::from_secs(20),
        || (rtsp.clients() == 1).then_some(()),
    )
    .await;
    let settled = Instant::now();
    let since = chrono::Utc::now().timestamp_micros();
    let db = s.state.db.clone();
    // Two complete segments recorded after the storm.
    for _ in 0..300 {
        let rows = all_segments(&db, id).await;
        if rows
            .iter()
            .filter(|r| r.start_us >= since && r.state == "complete")
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changes_since: Vec<_> = rtsp
        .client_history()
        .into_iter()
        .filter(|(t, _)| *t > settled)
        .collect();
    assert!(
        changes_since.is_empty(),
        "the camera saw connections come and go after the storm: {changes_since:?}"
    );
    rtsp.command("kick");
    eventually(
        "the camera reconnects once",
        Duration::from_secs(20),
        || (rtsp.clients() == 1).then_some(()),
    )
    .await;
    let db_url = s.db_url.clone();
    let _dir = s.stop().await;
    let db = Db::connect(&db_url).await.expect("db");
    let rows = all_segments(&db, id).await;
    assert!(
        rows.iter()
            .filter(|r| r.start_us >= since && r.state == "complete")
            .count()
            >= 2,
        "recording goes on after the storm: {rows:?}"
    );
    assert_no_overlap(&rows);
    // Index equals files.
    let mut keys: Vec<PathBuf> = rows.iter().map(|r| PathBuf::from(&r.storage_key)).collect();
    keys.sort();
    assert_eq!(keys, files_under(&archive), "index and files agree");
    db.close().await;
}

crate::on_both_engines!(
    async fn one_runtime_per_stream_under_concurrent_changes(index: &Index) {
        concurrent_changes(Some(index.url.clone())).await;
    }
);

crate::both_engines!(
    async fn settings_off_the_media_path_do_not_restart_the_stream(t: &TestDb) {
        use crate::support::{call, config, send_json, state};
        let s = state(&t.db, config("")).await;
        let id = Uuid::new_v4();
        let body = json!({"id": id, "name": "a", "source": {"kind": "file", "path": "assets/demo.mp4", "loop": true}, "outputs": ["mse"]});
        let r = send_json(&s, "POST", "/api/v1/streams", &body).await;
        assert_eq!(r.status, 201);
        let first = s.manager.runtime(id).expect("running");
        let uri = format!("/api/v1/streams/{id}");
        let patch = |p: serde_json::Value| {
            call(
                &s,
                "PATCH",
                &uri,
                Some("application/merge-patch+json"),
                p.to_string(),
            )
        };
        let r = patch(json!({"name": "renamed", "retention": {"max_age_s": 3600}})).await;
        assert_eq!(r.status, 200);
        let same = s.manager.runtime(id).expect("running");
        assert!(
            std::sync::Arc::ptr_eq(&first, &same),
            "a rename restarted the stream"
        );
        assert_eq!(
            same.spec().name,
            "renamed",
            "the running spec follows the row"
        );
        assert_eq!(same.spec().retention.max_age_s, Some(3600));
        let r = patch(json!({"outputs": ["mse", "hls"]})).await;
        assert_eq!(r.status, 200);
        let second = s.manager.runtime(id).expect("running");
        assert!(
            !std::sync::Arc::ptr_eq(&first, &second),
            "new outputs need a restart"
        );
        tokio::time::timeout(Duration::from_secs(1), first.stopped())
            .await
            .expect("the replaced runtime was stopped");
        let n = s.manager.counters().snapshot();
        assert_eq!((n.started, n.stopped, n.spec_updates), (2, 1, 1), "{n:?}");
        s.manager.shutdown().await;
        assert_eq!(s.manager.running(), 0);
    }
);

// ----- an archive directory missing at one start -----------------------------------------------

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn demo_config(archive: &std::path::Path, recording: bool) -> String {
    format!(
        "[archive]\nrecording = {recording}\nserving = true\nms_per_file = 2000\nroot_check_s = 1\n\
         directory = \"{}\"\n\
         [[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\n\
         loop = true\narchive = {{ recording = true }}\n",
        archive.display()
    )
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// Segments and ranges the API lists for the demo stream: (ids, total ms of ranges).
async fn listed(api: &str) -> (Vec<i64>, i64) {
    let (status, v) = get_json(&format!(
        "{api}/api/v1/streams/{DEMO}/segments?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=1000"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let mut ids: Vec<i64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    let (status, v) = get_json(&format!(
        "{api}/api/v1/streams/{DEMO}/ranges?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let t = |s: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(s.as_str().expect("time"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    let ms = v["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| t(&r["end"]) - t(&r["start"]))
        .sum();
    (ids, ms)
}

async fn archive_outage(db_url: Option<String>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("mp4");
    let id: Uuid = DEMO.parse().expect("uuid");
    // Record a few segments.
    let s = InProcess::start_with_db(&demo_config(&archive, true), db_url).await;
    let db_url = s.db_url.clone();
    for _ in 0..400 {
        let n = all_segments(&s.state.db, id)
            .await
            .iter()
            .filter(|r| r.state == "complete")
            .count();
        if n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The SQLite index lives in the first server's temp dir: keep it.
    let _index = s.stop().await;
    let db = Db::connect(&db_url).await.expect("db");
    let recorded = all_segments(&db, id).await;
    db.close().await;
    assert!(recorded.len() >= 4, "{recorded:?}");
    assert!(recorded.iter().all(|r| r.state == "complete"));
    assert!(
        archive.join(".video-server-root").is_file(),
        "marker written"
    );

    // The disk is "not mounted": an empty directory where the archive was.
    let away = tmp.path().join("mp4.away");
    std::fs::rename(&archive, &away).expect("move the archive away");
    std::fs::create_dir(&archive).expect("empty mount point");
    let s = InProcess::start_with_db(&demo_config(&archive, false), Some(db_url.clone())).await;
    let (status, ready) = get_json(&format!("{}/readyz", s.api)).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["database"], "ok");
    assert_eq!(
        ready["storage"],
        json!([{"name": "default", "streams": [], "state": "marker_missing"}]),
        "{ready}"
    );
    assert!(
        !ready
            .to_string()
            .contains(&tmp.path().display().to_string()),
        "no server path in /readyz: {ready}"
    );
    // Nothing is hidden while the disk is away.
    let (ids, ms) = listed(&s.api).await;
    let mut want: Vec<i64> = recorded.iter().map(|r| r.id).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "every segment still listed");
    let recorded_ms: i64 = recorded.iter().map(|r| r.media_duration_us / 1000).sum();
    assert!(
        (ms - recorded_ms).abs() < 50,
        "{ms} ms of ranges, {recorded_ms} ms recorded"
    );

    // The disk comes back while the server runs: the root is checked again and reconciled.
    std::fs::remove_dir(&archive).expect("unmount");
    std::fs::rename(&away, &archive).expect("mount");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = get_json(&format!("{}/readyz", s.api)).await;
        if status == 200 {
            assert_eq!(v["storage"][0]["state"], "ok");
            break;
        }
        assert!(Instant::now() < deadline, "root not available again: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ids, _) = listed(&s.api).await;
    assert_eq!(ids, want, "every segment listed after the return");
    // And playable: the whole recording through /ws/archive.
    let first = recorded.iter().map(|r| r.start_us).min().expect("rows");
    let last = recorded.iter().map(|r| r.end_us).max().expect("rows");
    let p = crate::playback::play(
        &s.video,
        &format!(
            "stream_id={DEMO}&start={}&duration={}",
            first / 1_000_000,
            (last - first) / 1_000_000 + 2
        ),
        true,
        false,
    )
    .await;
    assert_eq!(
        p.texts.last().map(String::as_str),
        Some("eos"),
        "{:?}",
        p.close
    );
    let secs = crate::playback::media_seconds(tmp.path(), "played.mp4", &p);
    assert!(
        (secs - recorded_ms as f64 / 1000.0).abs() < 1.5,
        "played {secs} s of {recorded_ms} ms"
    );
    let _ = s.stop().await;

    // The index still equals the files, every row complete.
    let db = Db::connect(&db_url).await.expect("db");
    let rows = all_segments(&db, id).await;
    let missing = video_server::db::segments::missing_after(&db, 0, 1000)
        .await
        .expect("missing");
    db.close().await;
    assert!(missing.is_empty(), "rows marked missing: {missing:?}");
    assert_eq!(rows.len(), recorded.len());
    let mut keys: Vec<PathBuf> = rows.iter().map(|r| PathBuf::from(&r.storage_key)).collect();
    keys.sort();
    assert_eq!(keys, files_under(&archive));
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_directory_empty_at_one_start_hides_nothing_sqlite() {
    archive_outage(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_directory_empty_at_one_start_hides_nothing_postgres() {
    let schema = crate::support::PgSchema::create().await;
    archive_outage(Some(schema.url())).await;
}
