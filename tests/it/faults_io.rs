//! Fault injection for data safety of the archive's I/O (issue 10, docs/reliability.md): the
//! database, the object store or the disk fails under a recording stream. Each test checks
//! "nothing lost" from both sides, the index and the files.
//!
//! Outage lengths are short here (scripts/test); the long versions of docs/reliability.md set
//! `FAULT_OUTAGE_S` (e.g. 30 for the Postgres restart).

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;
use video_server::db::Db;
use video_server::db::segments::SegmentRow;

use crate::archive::{
    DEMO, all_segments, archive_config, check_rows_match_files, demo_recording, files_under,
};
use crate::support::InProcess;
use crate::support::pg_private::PrivatePostgres;

/// Length of an injected outage: `FAULT_OUTAGE_S`, else `default_s`.
fn outage(default_s: u64) -> Duration {
    Duration::from_secs(
        std::env::var("FAULT_OUTAGE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_s),
    )
}

/// Polls `check` until it returns `Some` (every 100 ms) and returns it; panics after `timeout`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of the stream, when the index answers.
async fn rows_now(db: &Db, id: Uuid) -> Option<Vec<SegmentRow>> {
    let page = video_server::db::segments::page(db, id, 0, i64::MAX / 2, None, 1000).await;
    page.ok()
}

/// The index covers every file: one row per file, all complete but the newest.
fn caught_up(rows: &[SegmentRow], dir: &Path) -> bool {
    let files = files_under(dir);
    let mut keys: Vec<&str> = rows.iter().map(|r| r.storage_key.as_str()).collect();
    keys.sort_unstable();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let complete = rows.iter().filter(|r| r.state == "complete").count();
    keys == names && complete + 1 >= rows.len()
}

/// A server on the private Postgres `pg` recording the demo clip in 2 s segments under `tmp`
/// (`archive_extra`: more `[archive]` keys), once two segments are complete: the server, the
/// stream, its index and its archive directory.
async fn recording_on(
    pg: &PrivatePostgres,
    tmp: &Path,
    archive_extra: &str,
) -> (InProcess, Uuid, Db, std::path::PathBuf) {
    let s = InProcess::start_with_db(
        &format!(
            "{}{archive_extra}{}",
            archive_config(tmp, 2000),
            demo_recording()
        ),
        Some(pg.url()),
    )
    .await;
    let id: Uuid = DEMO.parse().expect("uuid");
    let db = s.state.db.clone();
    wait_for("two complete segments", Duration::from_secs(30), || async {
        let rows = rows_now(&db, id).await?;
        (rows.iter().filter(|r| r.state == "complete").count() >= 2).then_some(())
    })
    .await;
    (s, id, db, tmp.join("mp4"))
}

/// Postgres stopped while a stream records (`FAULT_OUTAGE_S`, 10 s by default), then started
/// again: segment files keep being written through the outage with no gap between them, and the
/// index catches up within 10 s of the database's return. Uses a private Postgres instance.
#[tokio::test(flavor = "multi_thread")]
async fn recording_goes_on_through_a_postgres_outage() {
    let mut pg = PrivatePostgres::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let (s, id, db, mp4) = recording_on(&pg, tmp.path(), "").await;

    let length = outage(10);
    pg.stop("fast");
    let down = Instant::now();
    let files_at_stop = files_under(&mp4).len();
    // Files keep coming while the index is away (2 s segments).
    crate::support::media::eventually("files written during the outage", length, || {
        (files_under(&mp4).len() >= files_at_stop + 2).then_some(())
    })
    .await;
    tokio::time::sleep(length.saturating_sub(down.elapsed())).await;
    let files_in_outage = files_under(&mp4).len() - files_at_stop;
    let recorder = recorder_of(&s, id);
    let waiting = recorder.snapshot().index_pending;
    assert!(
        waiting as usize >= files_in_outage,
        "the segments of the outage wait for the index: {waiting} of {files_in_outage}"
    );
    pg.restart();
    let back = Instant::now();
    index_caught_up(&db, id, &mp4, Duration::from_secs(10)).await;
    let catch_up = back.elapsed();
    let stats = recorder.snapshot();
    assert_eq!(stats.index_dropped, 0, "{stats:?}");
    assert_eq!(stats.write_errors, 0, "{stats:?}");
    eprintln!(
        "outage {:?}: {files_in_outage} files written meanwhile ({waiting} waiting for the index), \
         index caught up {catch_up:?} after the database returned ({} failed index writes retried)",
        length, stats.index_errors
    );

    let _dir = s.stop().await;
    let db = Db::connect(&pg.url()).await.expect("db");
    let rows = all_segments(&db, id).await;
    check_rows_match_files(&rows, &mp4);
    // Back to back: a lost segment would leave a 2 s hole. (The looping demo clip's video has a
    // hole of one audio frame, 21 ms, at each loop point, which a segment may end in.)
    for w in rows.windows(2) {
        let gap = w[1].start_us - w[0].end_us;
        assert!(
            (0..50_000).contains(&gap),
            "no gap: {:?} / {:?}",
            w[0],
            w[1]
        );
    }
    let runs = video_server::db::runs::all(&db, id).await.expect("runs");
    assert_eq!(runs.len(), 1, "one run across the outage: {runs:?}");
    assert_eq!(runs[0].segment_count as usize, rows.len());
    db.close().await;
}

/// Postgres freezes (every process SIGSTOPped: connections stay open, nothing answers, as when
/// its host hangs) while a stream records. `/healthz` and `/readyz` answer 503 within their 3 s
/// database timeout instead of hanging with the query, and `/readyz` still finds the disk; files
/// keep being written, also across storage-root checks (every second here) that cannot ask the
/// index; once the database wakes up, both probes are healthy again and the index catches up
/// with every file.
#[tokio::test(flavor = "multi_thread")]
async fn probes_answer_and_recording_goes_on_while_postgres_is_frozen() {
    let mut pg = PrivatePostgres::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let (s, id, db, mp4) = recording_on(&pg, tmp.path(), "root_check_s = 1\n").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let probe = |path: &'static str| {
        let (http, api) = (http.clone(), s.api.clone());
        async move {
            let asked = Instant::now();
            let r = http
                .get(format!("{api}{path}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path} did not answer: {e}"));
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("probe JSON");
            (status, body, asked.elapsed())
        }
    };
    let (status, body, _) = probe("/healthz").await;
    assert_eq!((status, &body["database"]), (200, &serde_json::json!("ok")));

    pg.freeze();
    let files_at_freeze = files_under(&mp4).len();
    for path in ["/healthz", "/readyz"] {
        let (status, body, took) = probe(path).await;
        assert_eq!(status, 503, "{path} while frozen: {body}");
        assert_eq!(body["database"], "unavailable", "{path}: {body}");
        assert!(
            took < Duration::from_secs(5),
            "{path} took {took:?} with a frozen database (timeout 3 s)"
        );
        if path == "/readyz" {
            assert_eq!(body["storage"][0]["state"], "ok", "{body}");
        }
    }
    // Three 2 s segments: several root checks ran meanwhile, none of them could ask the index.
    crate::support::media::eventually(
        "files written while the database is frozen",
        Duration::from_secs(20),
        || (files_under(&mp4).len() >= files_at_freeze + 3).then_some(()),
    )
    .await;
    let stats = recorder_of(&s, id).snapshot();
    assert_eq!(
        (stats.root_paused, stats.root_pauses),
        (0, 0),
        "a database outage paused recording: {stats:?}"
    );
    pg.thaw();

    wait_for(
        "/healthz healthy again",
        Duration::from_secs(15),
        || async {
            let (status, _, _) = probe("/healthz").await;
            (status == 200).then_some(())
        },
    )
    .await;
    index_caught_up(&db, id, &mp4, Duration::from_secs(15)).await;

    // The same with the database stopped (connections refused): root checks run and cannot ask
    // the index; the disk is still judged available by its marker.
    pg.stop("fast");
    let checks = || -> u64 {
        s.state
            .roots
            .all()
            .iter()
            .map(|r| r.counters.checks.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let (files_at_stop, checks_at_stop) = (files_under(&mp4).len(), checks());
    crate::support::media::eventually(
        "root checks and files while the database is stopped",
        Duration::from_secs(60),
        || {
            (files_under(&mp4).len() >= files_at_stop + 3 && checks() > checks_at_stop)
                .then_some(())
        },
    )
    .await;
    pg.restart();
    index_caught_up(&db, id, &mp4, Duration::from_secs(20)).await;
    let stats = recorder_of(&s, id).snapshot();
    assert_eq!(
        (stats.root_paused, stats.root_pauses),
        (0, 0),
        "a database outage paused recording: {stats:?}"
    );
    assert_eq!(stats.index_dropped, 0, "{stats:?}");
    assert_eq!(stats.write_errors, 0, "{stats:?}");
    let _dir = s.stop().await;
}

/// Waits until the index covers every file of the stream under `mp4` (see [`caught_up`]).
async fn index_caught_up(db: &Db, id: Uuid, mp4: &Path, timeout: Duration) {
    wait_for("the index to catch up with the files", timeout, || async {
        let rows = rows_now(db, id).await?;
        caught_up(&rows, mp4).then_some(())
    })
    .await;
}

/// Counters of the stream's recorder.
fn recorder_of(
    s: &InProcess,
    id: Uuid,
) -> std::sync::Arc<video_server::archive::recorder::RecorderStats> {
    s.state
        .manager
        .runtime(id)
        .and_then(|rt| rt.recorder_stats())
        .expect("recorder stats")
}

/// Complete rows of the stream, when the index answers.
async fn complete_now(db: &Db, id: Uuid) -> usize {
    rows_now(db, id).await.map_or(0, |rows| {
        rows.iter().filter(|r| r.state == "complete").count()
    })
}

/// A full disk, on a real size-limited filesystem (a 16 MiB tmpfs, mostly taken by a ballast
/// file). First the free-space floor: retention deletes the oldest segments and recording goes
/// on without a failed write. Then the disk fills for good (everything protected, more ballast):
/// the recorder closes its segment at the last good fragment, wakes an emergency retention pass,
/// and pauses; once space returns it resumes. Afterwards every file is indexed and plays, and no
/// file holds only an init segment.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_freed_by_retention_or_pauses_recording_until_space_returns() {
    use crate::support::tmpfs::Tmpfs;
    const MIB: u64 = 1024 * 1024;
    let disk = Tmpfs::mount(16 * MIB);
    let mp4 = disk.path().to_owned();
    // Leave 1.5 MiB: about 30 s of the demo clip before the 1 MiB floor is reached.
    disk.fill("ballast", disk.free_bytes() - 3 * MIB / 2);
    let s = InProcess::start(&format!(
        "[archive]\nrecording = true\nserving = true\nms_per_file = 2000\ndirectory = \"{}\"\n\
         [retention]\nmin_free_bytes = {}\ninterval_s = 1\n{}",
        mp4.display(),
        MIB,
        demo_recording()
    ))
    .await;
    let id: Uuid = DEMO.parse().expect("uuid");
    let db = s.state.db.clone();
    let recorder = recorder_of(&s, id);

    // 1. The floor: retention makes room, recording never fails.
    wait_for(
        "retention to delete segments for the floor",
        Duration::from_secs(90),
        || async {
            (s.state.archive.retention.snapshot().deleted_by_free_space >= 3).then_some(())
        },
    )
    .await;
    let floor_passes = s.state.archive.retention.snapshot();
    assert_eq!(
        recorder.snapshot().write_errors,
        0,
        "{:?}",
        recorder.snapshot()
    );
    assert!(
        disk.free_bytes() > MIB / 2,
        "the floor holds: {} free",
        disk.free_bytes()
    );

    // 2. Full for good: protect everything, fill the rest.
    let c = reqwest::Client::new();
    let now_s = video_server::db::now_us() / 1_000_000;
    let r = c
        .post(format!("{}/api/v1/streams/{id}/protected-ranges", s.api))
        .json(&serde_json::json!({
            "start": now_s - 86_400, "end": now_s + 86_400, "reason": "evidence"
        }))
        .send()
        .await
        .expect("protect");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    disk.fill("ballast", u64::MAX);
    wait_for(
        "the recorder to hit the full disk",
        Duration::from_secs(20),
        || async { (recorder.snapshot().disk_full > 0).then_some(()) },
    )
    .await;
    wait_for(
        "an emergency retention pass",
        Duration::from_secs(10),
        || async {
            (s.state.archive.retention.snapshot().emergency_passes > floor_passes.emergency_passes)
                .then_some(())
        },
    )
    .await;
    // Paused: no new segment is completed while the disk stays full (looked at for 4 s, two
    // segment lengths), and no stray file appears.
    let paused_rows = complete_now(&db, id).await;
    let paused_files = files_under(&mp4).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(complete_now(&db, id).await, paused_rows, "recording paused");
    assert!(
        files_under(&mp4).len() <= paused_files,
        "no new files while full"
    );
    let full = recorder.snapshot();
    assert!(full.dropped_bytes > 0, "{full:?}");

    // 3. Space returns: recording resumes within seconds.
    std::fs::remove_file(mp4.join("ballast")).expect("remove ballast");
    wait_for("recording to resume", Duration::from_secs(15), || async {
        (complete_now(&db, id).await >= paused_rows + 2).then_some(())
    })
    .await;
    let after = recorder.snapshot();
    eprintln!(
        "floor: {} segments deleted; full disk: {} failed writes ({} for space), {} bytes dropped \
         while paused, {} emergency passes",
        s.state.archive.retention.snapshot().deleted_by_free_space,
        after.write_errors,
        after.disk_full,
        after.dropped_bytes,
        s.state.archive.retention.snapshot().emergency_passes
    );

    let url = s.db_url.clone();
    let _dir = s.stop().await;
    let db = Db::connect(&url).await.expect("db");
    let rows = all_segments(&db, id).await;
    // Every file is indexed and complete, plays, and matches its row; nothing holds only an init
    // segment (check_rows_match_files checks the media duration of each).
    check_rows_match_files(&rows, &mp4);
    assert!(rows.iter().all(|r| r.media_duration_us > 0));
    db.close().await;
}

/// The free-space floor applies to every storage root in use, each on its own filesystem: a full
/// root loses its own oldest segments, not those of another disk (even older ones), and a root
/// whose marker is missing (a disk not mounted) is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_floor_applies_to_every_root_on_its_own_filesystem() {
    use crate::support::tmpfs::Tmpfs;
    use video_server::archive::Archive;
    use video_server::archive::markers::MarkedRoots;
    use video_server::archive::retention::Retention;
    use video_server::archive::storage::fs::FsStorage;
    use video_server::db::segments;
    const MIB: u64 = 1024 * 1024;

    let t = crate::support::sqlite().await;
    let db = &t.db;
    let (a, b) = (Tmpfs::mount(8 * MIB), Tmpfs::mount(8 * MIB));
    let config = crate::support::config(&format!(
        "[archive]\ndirectory = \"{}\"\nroots = [\"{}\"]\n[retention]\nmin_free_bytes = {}\n",
        a.path().display(),
        b.path().display(),
        3 * MIB
    ));
    // Six 1 MiB segments on each disk; B's are the older ones.
    let (sa, sb) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ids = Vec::new();
    for (disk, stream, base) in [(&a, sa, 2_000_000_000i64), (&b, sb, 1_000_000_000)] {
        for i in 0..6 {
            let start_us = (base + i) * 1_000_000;
            let (id, path) = crate::retention::add_segment(
                db,
                disk.path(),
                stream,
                start_us,
                1_000_000,
                MIB as usize,
            )
            .await;
            ids.push((stream, id, path));
        }
    }
    let roots = MarkedRoots::open(db.clone(), std::sync::Arc::new(config.clone()))
        .await
        .expect("roots");
    let retention = |roots: &std::sync::Arc<MarkedRoots>| {
        Retention::new(
            db.clone(),
            std::sync::Arc::new(Archive::with_storages(std::sync::Arc::new(FsStorage), None)),
            config.retention.clone(),
            a.path(),
        )
        .with_roots(roots.clone())
    };
    // A (6 of 8 MiB used) is below the 3 MiB floor; B gets room to spare (4 MiB used).
    std::fs::remove_file(&ids[11].2).expect("free B");
    segments::delete(db, ids[11].1).await.expect("row");
    std::fs::remove_file(&ids[10].2).expect("free B");
    segments::delete(db, ids[10].1).await.expect("row");
    assert!(b.free_bytes() >= 3 * MIB && a.free_bytes() < 3 * MIB);

    let report = retention(&roots).run_once().await.expect("pass");
    assert!(report.by_free_space >= 1, "{report:?}");
    assert!(a.free_bytes() >= 3 * MIB, "A meets its floor");
    // A lost its oldest; B (older footage, but room to spare) lost nothing.
    for (i, (stream, id, path)) in ids.iter().enumerate().take(10) {
        let kept = segments::get(db, *id).await.expect("get").is_some();
        let expect = *stream == sb || i >= report.by_free_space as usize;
        assert_eq!(kept, expect, "segment {i}");
        assert_eq!(path.exists(), expect);
    }

    // B fills up, but its marker is gone (as when the disk is not mounted): nothing of B goes.
    b.fill("ballast", u64::MAX);
    std::fs::remove_file(b.path().join(video_server::archive::markers::MARKER_FILE))
        .expect("remove marker");
    roots.check_all().await;
    let report = retention(&roots).run_once().await.expect("pass");
    assert_eq!(report.by_free_space, 0, "{report:?}");
    for (_, id, _) in ids.iter().skip(6).take(4) {
        assert!(segments::get(db, *id).await.expect("get").is_some());
    }
    t.cleanup().await;
}
