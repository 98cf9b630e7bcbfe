//! Repository tests for `streams` and `segments`, each on SQLite and on Postgres.

use uuid::Uuid;
use video_server::db::DbError;
use video_server::db::segments::{self, NewSegment, SegmentState, TimeRange};
use video_server::db::streams::{self, Origin};
use video_server::stream::{
    ArchiveSpec, OutputType, RetentionSpec, RtspTransport, Source, StorageKind, StreamSpec,
};

use crate::both_engines;

fn rtsp_spec(id: Uuid) -> StreamSpec {
    StreamSpec {
        id,
        name: "Front door".into(),
        source: Source::Rtsp {
            url: "rtsp://user:pw@10.0.0.5:554/main".into(),
            transport: RtspTransport::Udp,
        },
        outputs: vec![OutputType::Hls, OutputType::Mse],
        on_demand: Some(true),
        enabled: true,
        verbose: "vv".into(),
        archive: ArchiveSpec {
            recording: true,
            ms_per_file: Some(60_000),
            storage: StorageKind::S3,
            directory: Some("/var/mp4".into()),
            bucket: Some("cams".into()),
            prefix: Some("site-a".into()),
        },
        retention: RetentionSpec {
            max_age_s: Some(86_400),
            max_bytes: Some(1 << 40),
        },
    }
}

fn file_spec(id: Uuid) -> StreamSpec {
    StreamSpec {
        id,
        name: String::new(),
        source: Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![OutputType::Mse],
        on_demand: None,
        enabled: true,
        verbose: String::new(),
        archive: ArchiveSpec::default(),
        retention: RetentionSpec::default(),
    }
}

both_engines!(
    async fn insert_get_round_trips_every_field(t: &TestDb) {
        let id = Uuid::new_v4();
        let spec = rtsp_spec(id);
        let rec = streams::insert(&t.db, &spec, Origin::Api)
            .await
            .expect("insert");
        assert_eq!(rec.spec, spec, "on {}", t.engine_name());
        assert_eq!(rec.origin, Origin::Api);
        assert!(rec.created_at_us > 0);
        let got = streams::get(&t.db, id)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got, rec);
        let file = file_spec(Uuid::new_v4());
        let rec = streams::insert(&t.db, &file, Origin::Config)
            .await
            .expect("insert file");
        assert_eq!(rec.spec, file);
        assert_eq!(rec.origin, Origin::Config);
        assert!(
            streams::get(&t.db, Uuid::new_v4())
                .await
                .expect("get")
                .is_none()
        );
    }
);

both_engines!(
    async fn duplicate_insert_is_a_conflict(t: &TestDb) {
        let spec = file_spec(Uuid::new_v4());
        streams::insert(&t.db, &spec, Origin::Api)
            .await
            .expect("insert");
        let err = streams::insert(&t.db, &spec, Origin::Api)
            .await
            .expect_err("dup");
        assert!(
            matches!(err, DbError::Conflict(id) if id == spec.id),
            "{err}"
        );
    }
);

both_engines!(
    async fn update_replaces_and_reports_missing(t: &TestDb) {
        let id = Uuid::new_v4();
        let rec = streams::insert(&t.db, &file_spec(id), Origin::Api)
            .await
            .expect("insert");
        let mut changed = rtsp_spec(id);
        changed.name = "renamed".into();
        let updated = streams::update(&t.db, &changed)
            .await
            .expect("update")
            .expect("exists");
        assert_eq!(updated.spec, changed);
        assert_eq!(updated.created_at_us, rec.created_at_us);
        assert!(updated.updated_at_us >= rec.updated_at_us);
        let missing = rtsp_spec(Uuid::new_v4());
        assert!(
            streams::update(&t.db, &missing)
                .await
                .expect("update")
                .is_none()
        );
    }
);

both_engines!(
    async fn enable_disable_and_delete(t: &TestDb) {
        let id = Uuid::new_v4();
        streams::insert(&t.db, &file_spec(id), Origin::Api)
            .await
            .expect("insert");
        assert!(
            streams::set_enabled(&t.db, id, false)
                .await
                .expect("disable")
        );
        let got = streams::get(&t.db, id)
            .await
            .expect("get")
            .expect("present");
        assert!(!got.spec.enabled);
        assert!(
            !streams::set_enabled(&t.db, Uuid::new_v4(), false)
                .await
                .expect("unknown")
        );
        assert!(streams::delete(&t.db, id).await.expect("delete"));
        assert!(!streams::delete(&t.db, id).await.expect("delete again"));
        assert!(streams::get(&t.db, id).await.expect("get").is_none());
    }
);

both_engines!(
    async fn seed_inserts_only_unknown_streams(t: &TestDb) {
        let a = file_spec(Uuid::new_v4());
        let b = rtsp_spec(Uuid::new_v4());
        assert_eq!(
            streams::seed(&t.db, &[a.clone(), b.clone()])
                .await
                .expect("seed"),
            2
        );
        // The database wins afterwards: a changed file entry does not overwrite the row.
        let mut a2 = a.clone();
        a2.name = "changed in the file".into();
        assert_eq!(
            streams::seed(&t.db, &[a2, b.clone()])
                .await
                .expect("seed again"),
            0
        );
        let got = streams::get(&t.db, a.id)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.spec.name, a.name);
        assert_eq!(got.origin, Origin::Config);
    }
);

both_engines!(
    async fn keyset_pages_cover_everything_once_in_order(t: &TestDb) {
        let mut ids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            streams::insert(&t.db, &file_spec(*id), Origin::Api)
                .await
                .expect("insert");
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = streams::list_page(&t.db, after, 3).await.expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| r.spec.id);
            seen.extend(page.into_iter().map(|r| r.spec.id));
        }
        assert_eq!(seen, ids, "on {}", t.engine_name());
        let all: Vec<Uuid> = streams::list_all(&t.db)
            .await
            .expect("all")
            .into_iter()
            .map(|r| r.spec.id)
            .collect();
        assert_eq!(all, ids);
    }
);

fn seg(stream_id: Uuid, start_s: i64, end_s: i64, state: SegmentState) -> NewSegment {
    NewSegment {
        stream_id,
        start_us: start_s * 1_000_000,
        end_us: end_s * 1_000_000,
        media_duration_us: (end_s - start_s) * 1_000_000,
        storage: StorageKind::Filesystem,
        storage_key: format!("mp4/{stream_id}_{start_s}.mp4"),
        bytes: 1000,
        state,
    }
}

both_engines!(
    async fn ranges_merge_contiguous_segments_and_split_at_gaps(t: &TestDb) {
        let id = Uuid::new_v4();
        let other = Uuid::new_v4();
        let base = 1_700_000_000;
        for (s, e) in [(0, 30), (30, 60), (60, 75), (135, 165), (165, 195)] {
            segments::insert(&t.db, &seg(id, base + s, base + e, SegmentState::Complete))
                .await
                .expect("insert");
        }
        // Another stream's segments and deleted/missing rows never show up.
        segments::insert(
            &t.db,
            &seg(other, base + 80, base + 130, SegmentState::Complete),
        )
        .await
        .expect("insert");
        segments::insert(
            &t.db,
            &seg(id, base + 80, base + 130, SegmentState::Missing),
        )
        .await
        .expect("insert");
        segments::insert(
            &t.db,
            &seg(id, base + 200, base + 230, SegmentState::Recording),
        )
        .await
        .expect("insert");
        let us = |s: i64| (base + s) * 1_000_000;
        let r = segments::ranges(&t.db, id, 0, i64::MAX / 2, 2_000_000)
            .await
            .expect("ranges");
        assert_eq!(
            r,
            vec![
                TimeRange {
                    start_us: us(0),
                    end_us: us(75)
                },
                TimeRange {
                    start_us: us(135),
                    end_us: us(195)
                },
                TimeRange {
                    start_us: us(200),
                    end_us: us(230)
                },
            ],
            "on {}",
            t.engine_name()
        );
        // A wider tolerance bridges the 5 s hole but not the 60 s one.
        let r = segments::ranges(&t.db, id, 0, i64::MAX / 2, 10_000_000)
            .await
            .expect("ranges");
        assert_eq!(r.len(), 2);
        // A window only returns what overlaps it.
        let r = segments::ranges(&t.db, id, us(140), us(150), 2_000_000)
            .await
            .expect("ranges");
        assert_eq!(
            r,
            vec![TimeRange {
                start_us: us(135),
                end_us: us(165)
            }]
        );
        assert!(
            segments::any_in_range(&t.db, id, us(10), us(20))
                .await
                .expect("any")
        );
        assert!(
            !segments::any_in_range(&t.db, id, us(90), us(120))
                .await
                .expect("any")
        );
        assert!(
            segments::ranges(&t.db, Uuid::new_v4(), 0, i64::MAX / 2, 1)
                .await
                .expect("r")
                .is_empty()
        );
    }
);

both_engines!(
    async fn maintained_runs_equal_runs_rebuilt_from_segments(t: &TestDb) {
        use video_server::db::runs;
        let id = Uuid::new_v4();
        let base = 1_700_000_000_000_000i64;
        // Segments closed out of order, with gaps big and small, some bridging two runs.
        let mut spans = Vec::new();
        let mut t0 = base;
        for i in 0..40 {
            let len = 5_000_000 + (i * 7919 % 3_000_000);
            let gap = match i % 9 {
                0 => 30_000_000,
                4 => 400_000,
                7 => 1_500_000,
                _ => 0,
            };
            t0 += gap;
            spans.push((t0, t0 + len));
            t0 += len;
        }
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|i| (i * 37) % spans.len());
        for i in order {
            let (s, e) = spans[i];
            let seg = NewSegment {
                stream_id: id,
                start_us: s,
                end_us: s,
                media_duration_us: 0,
                storage: StorageKind::Filesystem,
                storage_key: format!("k{i}"),
                bytes: 0,
                state: SegmentState::Recording,
            };
            let sid = segments::insert_recording(&t.db, &seg, None, "none")
                .await
                .expect("insert");
            segments::finalize(&t.db, sid, e, e - s, 100)
                .await
                .expect("finalize");
        }
        let maintained = runs::all(&t.db, id).await.expect("runs");
        runs::rebuild(&t.db, id).await.expect("rebuild");
        let rebuilt = runs::all(&t.db, id).await.expect("runs");
        assert_eq!(maintained, rebuilt, "on {}", t.engine_name());
        assert_eq!(rebuilt.iter().map(|r| r.segment_count).sum::<i64>(), 40);
        assert_eq!(rebuilt.iter().map(|r| r.bytes).sum::<i64>(), 4000);
        // The ranges answer equals the gaps-and-islands answer over segments.
        let from_runs = runs::ranges(&t.db, id, 0, i64::MAX / 2, 2_000_000)
            .await
            .expect("r");
        let from_segments = segments::ranges(&t.db, id, 0, i64::MAX / 2, 2_000_000)
            .await
            .expect("r");
        assert_eq!(from_runs, from_segments);
    }
);
