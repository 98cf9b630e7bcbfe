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
use video_server::db::segments::{self, SegmentRow};

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
    // The source may reconnect (the test server's shared pipeline restarts when sessions come
    // and go), but never with a second session next to the first.
    let changes: Vec<_> = rtsp
        .client_history()
        .into_iter()
        .filter(|(t, _)| *t > settled)
        .collect();
    assert!(
        changes.iter().all(|&(_, n)| n <= 1),
        "two RTSP sessions at once after the storm: {changes:?}"
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

// ----- missing rows: conditional, runs in step, restorable --------------------------------------

/// The stream's runs equal what a rebuild derives from its segments.
async fn assert_runs_derived(db: &Db, stream: Uuid) {
    use video_server::db::runs;
    let kept = runs::all(db, stream).await.expect("runs");
    runs::rebuild(db, stream).await.expect("rebuild");
    assert_eq!(
        kept,
        runs::all(db, stream).await.expect("runs"),
        "runs follow the segments"
    );
}

crate::both_engines!(
    async fn missing_rows_are_conditional_keep_runs_and_come_back(t: &TestDb) {
        use video_server::db::segments::{MissingBy, NewSegment, Restored, SegmentState};
        use video_server::stream::StorageKind;
        let db = &t.db;
        let cam = Uuid::new_v4();
        let mut ids = Vec::new();
        for i in 0..4 {
            let start = 1_000_000_000 + i * 2_000_000;
            let s = NewSegment {
                stream_id: cam,
                start_us: start,
                end_us: start + 2_000_000,
                media_duration_us: 2_000_000,
                storage: StorageKind::Filesystem,
                storage_key: format!("/archive/{cam}/{i}.mp4"),
                bytes: 1000,
                state: SegmentState::Complete,
            };
            ids.push(
                video_server::db::import::insert_complete(db, &s, None)
                    .await
                    .expect("row"),
            );
        }
        let row = |id| async move { segments::get(db, id).await.expect("get").expect("row") };
        assert_eq!(
            video_server::db::runs::all(db, cam)
                .await
                .expect("runs")
                .len(),
            1
        );

        // A stale view of the row (another key: the uploader moved it meanwhile) changes nothing.
        let mut stale = row(ids[1]).await;
        stale.storage_key = "/elsewhere.mp4".into();
        assert!(
            segments::mark_missing(db, &[stale], MissingBy::Reconcile)
                .await
                .expect("mark")
                .is_empty()
        );
        // The file is gone: marked, and the run splits in two.
        let marked = segments::mark_missing(db, &[row(ids[1]).await], MissingBy::Reconcile)
            .await
            .expect("mark");
        assert_eq!(marked, vec![ids[1]]);
        assert_eq!(row(ids[1]).await.state, "missing");
        assert_eq!(
            video_server::db::runs::all(db, cam)
                .await
                .expect("runs")
                .len(),
            2
        );
        assert_runs_derived(db, cam).await;
        // Marking twice is a no-op.
        assert!(
            segments::mark_missing(db, &[row(ids[1]).await], MissingBy::Reconcile)
                .await
                .expect("mark")
                .is_empty()
        );

        // The file is back: restored, one run again.
        let r = row(ids[1]).await;
        let back = Restored {
            end_us: r.end_us,
            media_duration_us: r.media_duration_us,
            bytes: r.bytes,
        };
        assert_eq!(
            segments::restore_missing(db, &[(r.clone(), back)])
                .await
                .expect("restore"),
            vec![ids[1]]
        );
        assert_eq!(row(ids[1]).await.state, "complete");
        assert_eq!(
            video_server::db::runs::all(db, cam)
                .await
                .expect("runs")
                .len(),
            1
        );
        assert_runs_derived(db, cam).await;
        assert!(
            segments::restore_missing(db, &[(r, back)])
                .await
                .expect("again")
                .is_empty()
        );

        // The uploader race: the row went to S3 (its local file deleted right after); a reconcile
        // that read the row before must not mark it.
        let before = row(ids[2]).await;
        video_server::with_pool!(db, p => sqlx::query("UPDATE segments SET upload_state = 'local' WHERE id = $1")
            .bind(ids[2]).execute(p).await.expect("queue").rows_affected());
        let claimed = segments::claim_uploads(db, 0, 10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        // While uploading, reconcile leaves it alone.
        assert!(
            segments::mark_missing(db, &claimed, MissingBy::Reconcile)
                .await
                .expect("mark")
                .is_empty()
        );
        assert!(
            segments::complete_upload(db, ids[2], "bkt", "k/2.mp4")
                .await
                .expect("uploaded")
        );
        assert!(
            segments::mark_missing(db, &[before], MissingBy::Reconcile)
                .await
                .expect("mark")
                .is_empty()
        );
        let after = row(ids[2]).await;
        assert_eq!(
            (after.state.as_str(), after.storage.as_str()),
            ("complete", "s3")
        );
        assert_runs_derived(db, cam).await;
    }
);

// ----- repair: keep the good prefix, delete only on positive evidence ---------------------------

crate::both_engines!(
    async fn repair_keeps_the_good_prefix_and_never_deletes_on_doubt(t: &TestDb) {
        use video_server::db::segments::{NewSegment, SegmentState};
        let db = &t.db;
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("mp4");
        let wall0 = 1_760_000_000_000_000i64;
        let streams: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut rows = Vec::new();
        for id in &streams {
            crate::playback::synthesize(db, &dir, *id, wall0, 1).await;
            let r = all_segments(db, *id).await;
            assert_eq!(r.len(), 1);
            rows.push(r[0].clone());
        }
        // A crash left them all `recording` (and out of the runs).
        for (r, id) in rows.iter().zip(&streams) {
            video_server::with_pool!(db, p => sqlx::query("UPDATE segments SET state = 'recording' WHERE id = $1")
                .bind(r.id).execute(p).await.expect("recording").rows_affected());
            video_server::db::runs::rebuild(db, *id)
                .await
                .expect("runs");
        }
        let path = |i: usize| PathBuf::from(&rows[i].storage_key);
        let original = std::fs::read(path(0)).expect("read");
        let layout = video_server::media::fmp4::split_fragments(&original).expect("layout");
        assert!(
            layout.fragments.len() > 10,
            "{} fragments",
            layout.fragments.len()
        );
        // 0: a corrupt fragment in the middle (its moof's content overwritten, sizes intact).
        let bad = layout.fragments[6].clone();
        let mut data = original.clone();
        let moof_len =
            u32::from_be_bytes(data[bad.start..bad.start + 4].try_into().expect("4")) as usize;
        data[bad.start + 8..bad.start + moof_len].fill(0xff);
        std::fs::write(path(0), &data).expect("corrupt");
        // 1: a file that cannot be read (EIO from the kernel).
        std::fs::remove_file(path(1)).expect("rm");
        std::os::unix::fs::symlink("/proc/self/mem", path(1)).expect("symlink");
        // 2: a directory where the file should be (EISDIR).
        std::fs::remove_file(path(2)).expect("rm");
        std::fs::create_dir(path(2)).expect("dir");
        // 3: nothing but the init segment: positive evidence, removed.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path(3))
            .expect("open")
            .set_len(layout.init.end as u64)
            .expect("truncate");
        // 4: an imported Go file (progressive MP4) half-indexed by an interrupted import.
        let go_file = dir.join(format!("{}_1760000000.mp4", Uuid::new_v4()));
        std::fs::copy("assets/demo.mp4", &go_file).expect("copy");
        let go_len = std::fs::metadata(&go_file).expect("meta").len();
        let go_row = segments::insert_recording(
            db,
            &NewSegment {
                stream_id: Uuid::new_v4(),
                start_us: wall0,
                end_us: wall0,
                media_duration_us: 0,
                storage: video_server::stream::StorageKind::Filesystem,
                storage_key: go_file.display().to_string(),
                bytes: 0,
                state: SegmentState::Recording,
            },
            None,
            "none",
        )
        .await
        .expect("half row");

        let config =
            crate::support::config(&format!("[archive]\ndirectory = \"{}\"\n", dir.display()));
        let roots = video_server::archive::markers::MarkedRoots::open(
            db.clone(),
            std::sync::Arc::new(config),
        )
        .await
        .expect("roots");
        let max_id = segments::max_id(db).await.expect("max");
        let report = video_server::archive::repair::repair_recording(db, &roots, max_id)
            .await
            .expect("repair");
        assert_eq!(
            (
                report.repaired,
                report.removed_empty,
                report.io_errors,
                report.unplayable,
                report.missing
            ),
            (1, 1, 2, 1, 0),
            "{report:?}"
        );
        let row = |id| async move { segments::get(db, id).await.expect("get") };
        // 0: the good prefix kept, the rest saved beside it.
        let r0 = row(rows[0].id).await.expect("row 0");
        assert_eq!(r0.state, "complete");
        assert_eq!(r0.bytes as usize, bad.start);
        assert_eq!(
            std::fs::metadata(path(0)).expect("meta").len() as usize,
            bad.start
        );
        let cut =
            std::fs::read(format!("{}.cut-{}", rows[0].storage_key, bad.start)).expect("cut kept");
        assert_eq!(
            cut,
            data[bad.start..],
            "the bytes after the corrupt fragment are kept"
        );
        assert!(
            (5_000_000..=7_500_000).contains(&r0.media_duration_us),
            "{r0:?}"
        );
        let errors = crate::support::media::ffmpeg_decode_errors(&rows[0].storage_key);
        assert!(errors.trim().is_empty(), "{errors}");
        // 1, 2: unreadable: left exactly as they were.
        for i in [1, 2] {
            assert_eq!(row(rows[i].id).await.expect("row").state, "recording");
            assert!(
                std::fs::symlink_metadata(path(i)).is_ok(),
                "{i} not deleted"
            );
        }
        // 3: removed with its row.
        assert!(row(rows[3].id).await.is_none());
        assert!(!path(3).exists());
        // 4: the Go file is untouched.
        assert_eq!(row(go_row).await.expect("row").state, "recording");
        assert_eq!(std::fs::metadata(&go_file).expect("meta").len(), go_len);
        assert_runs_derived(db, streams[0]).await;
    }
);

// ----- kill -9 while recording ------------------------------------------------------------------

crate::on_both_engines!(
    async fn kill_9_while_recording_loses_at_most_a_second_each_time(index: &Index) {
        use crate::support::binary::ServerProcess;
        let dir = tempfile::tempdir().expect("tmp");
        crate::archive::binary_setup(dir.path(), 3000);
        let conf = dir.path().join("conf.toml");
        let text = std::fs::read_to_string(&conf).expect("conf");
        std::fs::write(&conf, text.replace("sqlite://data/index.db", &index.url)).expect("conf");
        let id: Uuid = DEMO.parse().expect("uuid");
        let loops = env_or("FAULT_KILL_LOOPS", 3);
        let mut worst_s: f64 = 0.0;
        for round in 0..loops {
            let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
            let run_start_us = chrono::Utc::now().timestamp_micros();
            // Kill at a different point of a fragment and a segment each round.
            tokio::time::sleep(Duration::from_millis(5000 + (round % 7) * 370)).await;
            let killed_us = chrono::Utc::now().timestamp_micros();
            server.kill9();
            // Restart: repair runs before anything records again; then stop cleanly.
            let server = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
            let (status, ready) = get_json(&format!("{}/readyz", server.api)).await;
            assert_eq!(status, 200, "round {round}: {ready}");
            assert!(server.terminate(), "round {round}: graceful stop");
            let db = index.connect().await;
            let rows = all_segments(&db, id).await;
            let missing = segments::missing_after(&db, 0, 10).await.expect("missing");
            db.close().await;
            assert!(missing.is_empty(), "round {round}: {missing:?}");
            // Index equals files, every file plays to its indexed length.
            crate::archive::check_rows_match_files(&rows, &dir.path().join("mp4"));
            let killed: Vec<&SegmentRow> = rows
                .iter()
                .filter(|r| r.start_us >= run_start_us - 1_000_000 && r.start_us < killed_us)
                .collect();
            assert!(!killed.is_empty(), "round {round}: the killed run recorded");
            let recorded: i64 = killed.iter().map(|r| r.media_duration_us).sum();
            let lost_s = (killed_us - killed[0].start_us - recorded) as f64 / 1e6;
            worst_s = worst_s.max(lost_s);
            // One fragment (1 s) plus the frame held back for its duration.
            assert!(lost_s <= 1.3, "round {round}: lost {lost_s} s");
        }
        eprintln!(
            "kill -9 x {loops} ({:?}): worst loss {worst_s:.2} s",
            index.engine
        );
    }
);

// ----- a flapping camera ------------------------------------------------------------------------

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A camera that drops and refuses connections every 3 s: the reconnect backoff stays within the
/// documented 1 s to 30 s, the stream comes back when the camera does, and neither the real
/// binary's open files nor an in-process server's tasks grow.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_camera_keeps_backoff_bounded_and_leaks_nothing() {
    use crate::support::binary::{ServerProcess, base_config};
    let mut rtsp = RtspServer::start(0);
    let camera = |id: Uuid| {
        format!(
            "[[rtsp_streams]]\nguid = \"{id}\"\nurl = \"{}\"\noutput_types = [\"mse\"]\n",
            rtsp.url("test")
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("conf.toml"),
        format!("{}{}", base_config(), camera(Uuid::new_v4())),
    )
    .expect("conf");
    let binary = ServerProcess::start(dir.path(), &["--conf", "conf.toml"], &[]);
    let in_process = InProcess::start(&camera(Uuid::new_v4())).await;
    eventually("both servers connect", Duration::from_secs(20), || {
        (rtsp.clients() == 2).then_some(())
    })
    .await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let (fds_before, tasks_before) = (open_fds(binary.pid()), tasks());

    let flap_s = env_or("FAULT_FLAP_S", 24);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(flap_s) {
        rtsp.command("down");
        tokio::time::sleep(Duration::from_secs(3)).await;
        rtsp.command("up");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // The camera is back for good: within the longest backoff (30 s) plus a connect, both
    // servers stream again.
    let back = Instant::now();
    eventually(
        "both servers reconnect within the backoff cap",
        Duration::from_secs(40),
        || (rtsp.clients() == 2).then_some(()),
    )
    .await;
    let took = back.elapsed();
    assert!(
        took <= Duration::from_secs(33),
        "reconnected after {took:?}"
    );
    // Nothing grew: same open files in the binary, same tasks in process (a little slack for a
    // connection being set up or torn down at the moment of counting).
    let (fds_after, tasks_after) = (open_fds(binary.pid()), tasks());
    assert!(
        fds_after <= fds_before + 2,
        "open files grew: {fds_before} -> {fds_after}"
    );
    assert!(
        tasks_after <= tasks_before + 3,
        "tasks grew: {tasks_before} -> {tasks_after}"
    );
    // Every retry the binary scheduled waited 1 s to 30 s.
    let retries: Vec<u64> = binary
        .logs
        .lock()
        .expect("logs")
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "source failed")
        .filter_map(|v| v["retry_in_ms"].as_u64())
        .collect();
    assert!(
        retries.len() >= 3,
        "the camera failed only {} times",
        retries.len()
    );
    assert!(
        retries.iter().all(|ms| (1000..=30_000).contains(ms)),
        "retry delays outside 1..30 s: {retries:?}"
    );
    eprintln!(
        "flapping {flap_s} s: {} retries {retries:?}, reconnect {took:?}, fds {fds_before}->{fds_after}, tasks {tasks_before}->{tasks_after}",
        retries.len()
    );
    assert!(binary.terminate(), "graceful stop");
    let _ = in_process.stop().await;
}
