//! The reporting views (`report_stream_days`, `report_streams`) give the expected numbers for a
//! known set of segments, with gaps and day boundaries, on both engines.

use uuid::Uuid;
use video_server::db::reports::{self, StreamDay, StreamSummary};
use video_server::db::segments::{self, NewSegment, SegmentState};
use video_server::db::streams::{self, Origin};
use video_server::stream::{Source, StorageKind, StreamSpec};

use crate::both_engines;

const GATE: &str = "11111111-1111-4111-8111-111111111111";
const EMPTY: &str = "22222222-2222-4222-8222-222222222222";
const DELETED: &str = "33333333-3333-4333-8333-333333333333";

/// 2025-12-20T23:58:00Z in microseconds.
const T0: i64 = 1_766_275_080_000_000;

fn us(secs_after_t0: f64) -> i64 {
    T0 + (secs_after_t0 * 1_000_000.0).round() as i64
}

fn uuid(s: &str) -> Uuid {
    s.parse().expect("uuid")
}

fn spec(id: &str, name: &str) -> StreamSpec {
    StreamSpec {
        id: uuid(id),
        name: name.into(),
        source: Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![],
        on_demand: None,
        enabled: false,
        verbose: String::new(),
        archive: Default::default(),
        retention: Default::default(),
    }
}

async fn segment(
    t: &crate::support::TestDb,
    stream: &str,
    from: f64,
    to: f64,
    bytes: i64,
    state: SegmentState,
) {
    segments::insert(
        &t.db,
        &NewSegment {
            stream_id: uuid(stream),
            start_us: us(from),
            end_us: us(to),
            media_duration_us: us(to) - us(from),
            storage: StorageKind::Filesystem,
            storage_key: format!("{stream}_{from}.mp4"),
            bytes,
            state,
        },
    )
    .await
    .expect("insert");
}

fn day(stream: &str, day: &str, secs: f64, bytes: i64, count: i64, gaps: i64) -> StreamDay {
    StreamDay {
        stream_id: uuid(stream),
        day: day.into(),
        recorded_seconds: secs,
        bytes,
        segment_count: count,
        gap_count: gaps,
    }
}

both_engines!(
    async fn report_views_count_days_gaps_and_totals(t: &TestDb) {
        use SegmentState::{Complete, Missing, Recording};
        streams::insert(&t.db, &spec(GATE, "Gate"), Origin::Api)
            .await
            .expect("stream");
        streams::insert(&t.db, &spec(EMPTY, "Empty"), Origin::Api)
            .await
            .expect("stream");
        // GATE: 23:58:00-23:59:00, 23:59:00-00:00:30 (crosses midnight), a 10 s gap,
        // 00:00:40-00:01:10, a 0.5 s hole (not a gap), 00:01:10.5-00:01:40 still recording, a
        // missing segment (never counted), then a day without recording and one segment on the
        // 23rd (a gap, counted on the 23rd).
        segment(t, GATE, 0.0, 60.0, 100, Complete).await;
        segment(t, GATE, 60.0, 150.0, 200, Complete).await;
        segment(t, GATE, 160.0, 190.0, 300, Complete).await;
        segment(t, GATE, 190.5, 220.0, 400, Recording).await;
        segment(t, GATE, 300.0, 400.0, 999, Missing).await;
        let dec23_noon = (2.0 * 86_400.0) + 120.0 + 12.0 * 3_600.0;
        segment(t, GATE, dec23_noon, dec23_noon + 30.0, 50, Complete).await;
        // DELETED (no stream row): one segment, and one ending exactly at midnight of the 22nd.
        segment(t, DELETED, 0.0, 10.0, 5, Complete).await;
        let before_midnight = 86_400.0 + 120.0 - 30.0;
        segment(
            t,
            DELETED,
            before_midnight,
            before_midnight + 30.0,
            7,
            Complete,
        )
        .await;

        let gate = reports::stream_days(&t.db, uuid(GATE)).await.expect("days");
        assert_eq!(
            gate,
            vec![
                day(GATE, "2025-12-20", 120.0, 300, 2, 0),
                day(GATE, "2025-12-21", 89.5, 700, 2, 1),
                day(GATE, "2025-12-23", 30.0, 50, 1, 1),
            ],
            "on {}",
            t.engine_name()
        );
        let deleted = reports::stream_days(&t.db, uuid(DELETED))
            .await
            .expect("days");
        assert_eq!(
            deleted,
            vec![
                day(DELETED, "2025-12-20", 10.0, 5, 1, 0),
                day(DELETED, "2025-12-21", 30.0, 7, 1, 1),
            ]
        );
        assert!(
            reports::stream_days(&t.db, uuid(EMPTY))
                .await
                .expect("days")
                .is_empty()
        );

        let summary = reports::streams(&t.db).await.expect("streams");
        assert_eq!(
            summary,
            vec![
                StreamSummary {
                    stream_id: uuid(GATE),
                    name: Some("Gate".into()),
                    first_recording: Some("2025-12-20 23:58:00".into()),
                    last_recording: Some("2025-12-23 12:00:30".into()),
                    first_start_us: Some(us(0.0)),
                    last_end_us: Some(us(dec23_noon + 30.0)),
                    total_bytes: 1_050,
                    segment_count: 5,
                    recorded_seconds: 239.5,
                },
                StreamSummary {
                    stream_id: uuid(EMPTY),
                    name: Some("Empty".into()),
                    first_recording: None,
                    last_recording: None,
                    first_start_us: None,
                    last_end_us: None,
                    total_bytes: 0,
                    segment_count: 0,
                    recorded_seconds: 0.0,
                },
                StreamSummary {
                    stream_id: uuid(DELETED),
                    name: None,
                    first_recording: Some("2025-12-20 23:58:00".into()),
                    last_recording: Some("2025-12-22 00:00:00".into()),
                    first_start_us: Some(us(0.0)),
                    last_end_us: Some(us(before_midnight + 30.0)),
                    total_bytes: 12,
                    segment_count: 2,
                    recorded_seconds: 40.0,
                },
            ],
            "on {}",
            t.engine_name()
        );
    }
);
