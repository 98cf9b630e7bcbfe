//! Read leases (`archive::leases`, `db::leases`) against retention and the uploader, on both
//! engines; and archive playback's ranged reads: memory per session bounded by fragments.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uuid::Uuid;
use video_server::archive::leases::Leases;
use video_server::db::retention::{self as rq, CandidateFilter};
use video_server::db::{Db, leases as lq, segments};

use crate::both_engines;
use crate::db_uploads::segment;
use crate::support::InProcess;

/// Polls `f` until it is true, for at most 10 s.
async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn candidates(db: &Db, stream: Uuid) -> Vec<i64> {
    let filter = CandidateFilter {
        start_before_us: i64::MAX,
        end_before_us: i64::MAX,
        include_missing: false,
        storage: None,
    };
    rq::oldest_candidates(db, stream, filter, 100, video_server::db::now_us())
        .await
        .expect("candidates")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

both_engines!(
    async fn leased_segments_are_kept_from_retention_and_the_uploader(t: &TestDb) {
        let db = &t.db;
        let s = Uuid::new_v4();
        let a = segment(db, s, 1000, "local", true).await;
        let b = segment(db, s, 1002, "local", true).await;
        let leases = Arc::new(Leases::default());

        // Two readers of `a` (one of them also of `b`); an unknown id is refused.
        let first = leases.acquire(db, &[a, b, 999_999]).await.expect("lease");
        assert_eq!(first.ids(), [a, b], "on {}", t.engine_name());
        assert_eq!(leases.refused.load(Ordering::Relaxed), 1);
        let second = leases.acquire_one(db, a).await.expect("lease").expect("a");
        let until = lq::lease_until(db, a).await.expect("read").expect("leased");
        assert!(
            until > video_server::db::now_us() + 30_000_000,
            "about a minute ahead"
        );

        // Retention sees no candidate, and cannot mark a leased row even if it read it earlier.
        assert!(candidates(db, s).await.is_empty());
        // The uploader claims nothing.
        assert!(
            segments::claim_uploads(db, 0, 10)
                .await
                .expect("claim")
                .is_empty()
        );

        // The first reader leaves: `b` is free again, `a` still held by the second.
        drop(first);
        wait_until("b's lease cleared", async || {
            lq::lease_until(db, b).await.expect("read").is_none()
        })
        .await;
        assert!(lq::lease_until(db, a).await.expect("read").is_some());
        assert!(leases.is_held(a) && !leases.is_held(b));
        assert_eq!(candidates(db, s).await, [b]);
        let claimed = segments::claim_uploads(db, 0, 10).await.expect("claim");
        assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), [b]);

        // A reader leases `b` while it is being uploaded: the upload cannot complete, and goes
        // back to `local` (the reader may be reading the local file).
        let third = leases.acquire_one(db, b).await.expect("lease").expect("b");
        assert!(
            !segments::complete_upload(db, b, "bucket", "key")
                .await
                .expect("complete")
        );
        assert!(
            segments::release_leased_upload(db, b)
                .await
                .expect("release")
        );
        let row = segments::get(db, b).await.expect("get").expect("row");
        assert_eq!(
            (row.storage.as_str(), row.upload_state.as_str()),
            ("filesystem", "local")
        );
        // Not leased: `release_leased_upload` leaves an upload alone.
        drop((second, third));
        wait_until("leases cleared", async || {
            lq::lease_until(db, a).await.expect("read").is_none()
                && lq::lease_until(db, b).await.expect("read").is_none()
        })
        .await;
        assert_eq!(leases.held_count(), 0);
        let claimed = segments::claim_uploads(db, 0, 10).await.expect("claim");
        assert_eq!(claimed.len(), 2);
        assert!(
            !segments::release_leased_upload(db, a)
                .await
                .expect("release")
        );
        assert!(
            segments::complete_upload(db, a, "bucket", "key-a")
                .await
                .expect("complete")
        );
        assert!(segments::release_upload(db, b).await.expect("release"));

        // A row marked `deleting` cannot be leased any more.
        let found = rq::oldest_candidates(
            db,
            s,
            CandidateFilter {
                start_before_us: i64::MAX,
                end_before_us: i64::MAX,
                include_missing: false,
                storage: None,
            },
            100,
            video_server::db::now_us(),
        )
        .await
        .expect("candidates");
        let marked = rq::mark_deleting(db, &found, video_server::db::now_us())
            .await
            .expect("mark");
        assert_eq!(marked.len(), 2);
        let late = leases.acquire(db, &[a, b]).await.expect("lease");
        assert!(late.ids().is_empty());
        assert_eq!(leases.refused.load(Ordering::Relaxed), 3);
    }
);

/// Fragments of a segment file: `(offset, moof + mdat size)` of each.
fn fragment_sizes(data: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut moof_at = None;
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
        let kind = &data[pos + 4..pos + 8];
        if kind == b"moof" {
            moof_at = Some(pos);
        } else if kind == b"mdat"
            && let Some(at) = moof_at.take()
        {
            out.push((pos + size - at) as u64);
        }
        assert!(size >= 8);
        pos += size;
    }
    out
}

/// A 12-minute segment (one file of about 33 MB) plays to the end while the session never holds
/// more than a couple of fragments, and every byte is read about once.
#[tokio::test(flavor = "multi_thread")]
async fn playback_of_a_long_segment_reads_it_by_fragment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = InProcess::start(&format!(
        "[archive]\nserving = true\ndirectory = \"{}\"\nplayback_chunk_s = 300\n\
         playback_idle_s = 600\n",
        tmp.path().display()
    ))
    .await;
    let id = Uuid::new_v4();
    let wall0 = 1_760_000_000_000_000i64;
    let len_us = crate::playback::synthesize_segments(
        std::path::Path::new("assets/demo.mp4"),
        &s.state.db,
        tmp.path(),
        id,
        wall0,
        30,
        3_600_000,
    )
    .await;
    let rows = segments::page(&s.state.db, id, 0, i64::MAX / 2, None, 10)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "one segment");
    let file = std::fs::read(&rows[0].storage_key).expect("segment");
    let fragments = fragment_sizes(&file);
    let largest = *fragments.iter().max().expect("fragments");
    assert!(fragments.len() > 500, "{} fragments", fragments.len());

    let stats = &s.state.archive.playback;
    let query = format!("stream_id={id}&start={}", wall0 / 1_000_000);
    let p = crate::playback::play(&s.video, &query, true, false).await;
    assert_eq!(
        p.texts.last().map(String::as_str),
        Some("eos"),
        "{:?}",
        p.close
    );
    let secs = crate::playback::media_seconds(tmp.path(), "long.mp4", &p);
    assert!((secs - len_us as f64 / 1e6).abs() <= 1.0, "played {secs} s");

    let peak = stats.peak_session_bytes.load(Ordering::Relaxed);
    let read = stats.bytes_read.load(Ordering::Relaxed);
    let largest_read = stats.largest_read_bytes.load(Ordering::Relaxed);
    eprintln!(
        "segment {} bytes in {} fragments (largest {largest}); session peak {peak} bytes, \
         largest read {largest_read}, {read} bytes read",
        file.len(),
        fragments.len()
    );
    // The fragment read plus the fragment written from it (a little larger: new headers).
    assert!(
        peak <= 2 * largest + 4096,
        "peak {peak} vs fragment {largest}"
    );
    assert!(largest_read <= largest, "largest read {largest_read}");
    assert!(
        peak * 100 < file.len() as u64,
        "peak {peak} vs file {}",
        file.len()
    );
    assert!(
        read >= file.len() as u64 && read <= file.len() as u64 * 11 / 10,
        "read {read} of {}",
        file.len()
    );
    // The session's lease was released.
    wait_until("lease released", async || {
        s.state.archive.leases.held_count() == 0
    })
    .await;
    let _ = s.stop().await;
}
