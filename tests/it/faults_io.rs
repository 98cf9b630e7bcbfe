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

/// Postgres stopped while a stream records (`FAULT_OUTAGE_S`, 10 s by default), then started
/// again: segment files keep being written through the outage with no gap between them, and the
/// index catches up within 10 s of the database's return. Uses a private Postgres instance.
#[tokio::test(flavor = "multi_thread")]
async fn recording_goes_on_through_a_postgres_outage() {
    let mut pg = PrivatePostgres::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let mp4 = tmp.path().join("mp4");
    let s = InProcess::start_with_db(
        &format!("{}{}", archive_config(tmp.path(), 2000), demo_recording()),
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
    let recorder = s
        .state
        .manager
        .runtime(id)
        .and_then(|rt| rt.recorder_stats())
        .expect("recorder stats");
    let waiting = recorder.snapshot().index_pending;
    assert!(
        waiting as usize >= files_in_outage,
        "the segments of the outage wait for the index: {waiting} of {files_in_outage}"
    );
    pg.restart();
    let back = Instant::now();
    wait_for(
        "the index to catch up with the files",
        Duration::from_secs(10),
        || async {
            let rows = rows_now(&db, id).await?;
            caught_up(&rows, &mp4).then_some(())
        },
    )
    .await;
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
