//! `/api/v1/streams/{id}/ranges`, `/segments` and `/protected-ranges`: answers, pagination, every
//! error; on both engines.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;
use video_server::api::AppState;
use video_server::db::protected;
use video_server::db::segments::{self, NewSegment, SegmentState};
use video_server::stream::StorageKind;

use crate::both_engines;
use crate::support::{TestDb, call, config, get, send_json, state};

/// 2025-12-20T10:00:00Z.
const BASE_US: i64 = 1_766_224_800_000_000;

fn at(secs: f64) -> i64 {
    BASE_US + (secs * 1_000_000.0).round() as i64
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

fn field(v: &serde_json::Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("<none>")
}

async fn app(t: &TestDb) -> AppState {
    state(&t.db, config("[archive]\nserving = true\n")).await
}

/// Records a closed segment the way the recorder does (row opened, then finalized with its runs).
pub(crate) async fn record(
    t: &TestDb,
    stream: Uuid,
    start_us: i64,
    end_us: i64,
    bytes: i64,
) -> i64 {
    let id = open(t, stream, start_us, start_us).await;
    segments::finalize(&t.db, id, end_us, end_us - start_us, bytes)
        .await
        .expect("finalize");
    id
}

/// A segment still being recorded.
async fn open(t: &TestDb, stream: Uuid, start_us: i64, end_us: i64) -> i64 {
    segments::insert_recording(
        &t.db,
        &NewSegment {
            stream_id: stream,
            start_us,
            end_us,
            media_duration_us: end_us - start_us,
            storage: StorageKind::Filesystem,
            storage_key: format!("mp4/{stream}_{start_us}.mp4"),
            bytes: 0,
            state: SegmentState::Recording,
        },
        None,
        "none",
    )
    .await
    .expect("insert")
}

/// Segments with a 0.4 s hole (same run), a 1.5 s hole, a 10 s hole, and one still recording.
async fn timeline(t: &TestDb, stream: Uuid) {
    for (s, e) in [
        (0.0, 30.0),
        (30.0, 60.0),
        (60.4, 90.0),
        (91.5, 120.0),
        (130.0, 160.0),
    ] {
        record(t, stream, at(s), at(e), 1_000).await;
    }
    open(t, stream, at(160.2), at(170.0)).await;
}

fn spans(v: &serde_json::Value) -> Vec<(String, String, i64)> {
    v["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            (
                r["start"].as_str().expect("start").to_owned(),
                r["end"].as_str().expect("end").to_owned(),
                r["duration_ms"].as_i64().expect("duration_ms"),
            )
        })
        .collect()
}

fn span(start: &str, end: &str, ms: i64) -> (String, String, i64) {
    (
        format!("2025-12-20T{start}Z"),
        format!("2025-12-20T{end}Z"),
        ms,
    )
}

both_engines!(
    async fn ranges_merge_clip_and_accept_both_time_notations(t: &TestDb) {
        let s = app(t).await;
        // No stream row: the archive of a deleted stream is still answered.
        let id = Uuid::new_v4();
        timeline(t, id).await;
        let r = get(&s, &format!("/api/v1/streams/{id}/ranges")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["stream_id"], json!(id));
        assert_eq!(
            spans(&body),
            vec![
                span("10:00:00.000", "10:02:00.000", 120_000),
                span("10:02:10.000", "10:02:50.000", 40_000),
            ],
            "on {}",
            t.engine_name()
        );
        // A tolerance of one second keeps the 1.5 s hole.
        let r = get(&s, &format!("/api/v1/streams/{id}/ranges?gap_ms=1000")).await;
        assert_eq!(
            spans(&r.json()),
            vec![
                span("10:00:00.000", "10:01:30.000", 90_000),
                span("10:01:31.500", "10:02:00.000", 28_500),
                span("10:02:10.000", "10:02:50.000", 40_000),
            ]
        );
        // A wide tolerance merges everything.
        let r = get(&s, &format!("/api/v1/streams/{id}/ranges?gap_ms=60000")).await;
        assert_eq!(
            spans(&r.json()),
            vec![span("10:00:00.000", "10:02:50.000", 170_000)]
        );
        // A window clips the ranges; RFC 3339 with an offset, and Unix seconds, mean the same.
        let expected = vec![
            span("10:00:45.000", "10:02:00.000", 75_000),
            span("10:02:10.000", "10:02:15.500", 5_500),
        ];
        let by_text = get(
            &s,
            &format!(
                "/api/v1/streams/{id}/ranges?start=2025-12-20T13:00:45%2B03:00&end=2025-12-20T10:02:15.5Z"
            ),
        )
        .await;
        assert_eq!(by_text.status, StatusCode::OK);
        assert_eq!(spans(&by_text.json()), expected);
        let (from, to) = (BASE_US / 1_000_000 + 45, BASE_US / 1_000_000 + 135);
        let by_secs = get(
            &s,
            &format!("/api/v1/streams/{id}/ranges?start={from}&end={to}.5"),
        )
        .await;
        assert_eq!(spans(&by_secs.json()), expected);
        // A window with nothing in it.
        let r = get(
            &s,
            &format!(
                "/api/v1/streams/{id}/ranges?start=2025-12-20T11:00:00Z&end=2025-12-20T12:00:00Z"
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["ranges"], json!([]));
    }
);

both_engines!(
    async fn ranges_of_a_stream_without_archive_are_empty(t: &TestDb) {
        let s = app(t).await;
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams",
            &json!({"source": {"kind": "file", "path": "assets/demo.mp4"}, "enabled": false}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let r = get(&s, &format!("/api/v1/streams/{id}/ranges")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), json!({"stream_id": id, "ranges": []}));
        let r = get(&s, &format!("/api/v1/streams/{id}/segments")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.json(),
            json!({"stream_id": id, "items": [], "next_cursor": null})
        );
    }
);

both_engines!(
    async fn ranges_and_segments_refuse_bad_input(t: &TestDb) {
        let s = app(t).await;
        let id = Uuid::new_v4();
        record(t, id, at(0.0), at(30.0), 10).await;
        for route in ["ranges", "segments"] {
            let base = format!("/api/v1/streams/{id}/{route}");
            let cases: Vec<(String, StatusCode, &str, &str)> = vec![
                (
                    format!("/api/v1/streams/not-a-uuid/{route}"),
                    StatusCode::BAD_REQUEST,
                    "invalid_id",
                    "id",
                ),
                (
                    format!("{base}?start=yesterday"),
                    StatusCode::BAD_REQUEST,
                    "invalid_time",
                    "start",
                ),
                (
                    format!("{base}?end=12:00"),
                    StatusCode::BAD_REQUEST,
                    "invalid_time",
                    "end",
                ),
                (
                    format!("{base}?start=1.2.3"),
                    StatusCode::BAD_REQUEST,
                    "invalid_time",
                    "start",
                ),
                // The shape of a time (the document's pattern) but no real date: 422, not 400.
                (
                    format!("{base}?start=2025-02-30T00:00:00Z"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "start",
                ),
                // start after end, and start equal to end.
                (
                    format!("{base}?start=2025-12-20T11:00:00Z&end=2025-12-20T10:00:00Z"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "start",
                ),
                (
                    format!("{base}?start=1766224800&end=1766224800"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "start",
                ),
                // Absurd: over 100 years, before 1970, beyond year 9999, overflowing i64.
                (
                    format!("{base}?start=0&end=9000000000"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "end",
                ),
                (
                    format!("{base}?start=-5"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "start",
                ),
                (
                    format!("{base}?start=1960-01-01T00:00:00Z"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "start",
                ),
                (
                    format!("{base}?end=99999999999999999999999"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "end",
                ),
                (
                    format!("{base}?end=253402300800"),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "end",
                ),
            ];
            for (uri, status, want_code, want_field) in cases {
                let r = get(&s, &uri).await;
                assert_eq!(
                    r.status,
                    status,
                    "{uri}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                let v = r.json();
                assert_eq!(code(&v), want_code, "{uri}");
                assert_eq!(field(&v), want_field, "{uri}");
                assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
            }
            // An id nothing is known about.
            let r = get(&s, &format!("/api/v1/streams/{}/{route}", Uuid::new_v4())).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert_eq!(code(&r.json()), "not_found");
        }
        let base = format!("/api/v1/streams/{id}");
        for (uri, want_code, want_field) in [
            (format!("{base}/ranges?gap_ms=999"), "bad_request", "gap_ms"),
            (
                format!("{base}/ranges?gap_ms=99999999999"),
                "bad_request",
                "gap_ms",
            ),
            (format!("{base}/ranges?gap_ms=soon"), "bad_query", "<none>"),
            (format!("{base}/segments?limit=0"), "bad_request", "limit"),
            (
                format!("{base}/segments?limit=1001"),
                "bad_request",
                "limit",
            ),
            (format!("{base}/segments?limit=-1"), "bad_query", "<none>"),
            (
                format!("{base}/segments?cursor=nonsense"),
                "invalid_cursor",
                "cursor",
            ),
            (
                format!("{base}/segments?cursor={}", "g".repeat(32)),
                "invalid_cursor",
                "cursor",
            ),
        ] {
            let r = get(&s, &uri).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(code(&r.json()), want_code, "{uri}");
            assert_eq!(field(&r.json()), want_field, "{uri}");
        }
    }
);

both_engines!(
    async fn segment_pages_cover_every_row_exactly_once(t: &TestDb) {
        let s = app(t).await;
        let id = Uuid::new_v4();
        let other = Uuid::new_v4();
        // Pairs of segments share a start time, so page boundaries split ties on start_us.
        let mut expected = Vec::new();
        for i in 0..120 {
            let start = at(f64::from(i / 2) * 10.0);
            expected.push((
                start,
                record(t, id, start, start + 10_000_000, 500 + i64::from(i)).await,
            ));
        }
        let live = open(t, id, at(600.0), at(604.0)).await;
        expected.push((at(600.0), live));
        expected.sort();
        // Rows that must not show: another stream's, and a segment whose file is missing.
        record(t, other, at(5.0), at(15.0), 1).await;
        segments::insert(
            &t.db,
            &NewSegment {
                stream_id: id,
                start_us: at(1000.0),
                end_us: at(1010.0),
                media_duration_us: 10_000_000,
                storage: StorageKind::Filesystem,
                storage_key: "gone.mp4".into(),
                bytes: 1,
                state: SegmentState::Missing,
            },
        )
        .await
        .expect("insert");

        for limit in [1, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut uri = format!("/api/v1/streams/{id}/segments?limit={limit}");
                if let Some(c) = &cursor {
                    uri.push_str(&format!("&cursor={c}"));
                }
                let r = get(&s, &uri).await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&r.body)
                );
                let v = r.json();
                let items = v["items"].as_array().expect("items");
                assert!(items.len() <= limit);
                seen.extend(items.iter().map(|i| i["id"].as_i64().expect("id")));
                pages += 1;
                match v["next_cursor"].as_str() {
                    Some(c) => {
                        assert_eq!(items.len(), limit, "only the last page is short");
                        cursor = Some(c.to_owned());
                    }
                    None => break,
                }
                assert!(pages < 1000, "pagination does not end");
            }
            let want: Vec<i64> = expected.iter().map(|(_, i)| *i).collect();
            assert_eq!(seen, want, "limit {limit} on {}", t.engine_name());
            assert_eq!(
                seen.iter().collect::<BTreeSet<_>>().len(),
                want.len(),
                "no duplicates"
            );
        }

        // A window lists the segments overlapping it; the item shape.
        let r = get(
            &s,
            &format!(
                "/api/v1/streams/{id}/segments?start=2025-12-20T10:00:15Z&end=2025-12-20T10:00:20Z"
            ),
        )
        .await;
        let v = r.json();
        let items = v["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "{v}");
        assert_eq!(
            items[0],
            json!({
                "id": expected[2].1,
                "start": "2025-12-20T10:00:10.000Z",
                "end": "2025-12-20T10:00:20.000Z",
                "duration_ms": 10_000,
                "media_duration_ms": 10_000,
                "bytes": 502,
                "state": "complete",
                "storage": "filesystem",
                "upload_state": "none",
            })
        );
        let r = get(
            &s,
            &format!("/api/v1/streams/{id}/segments?start=2025-12-20T10:10:01Z"),
        )
        .await;
        let v = r.json();
        assert_eq!(v["items"][0]["id"], json!(live));
        assert_eq!(v["items"][0]["state"], json!("recording"));
        assert_eq!(v["items"].as_array().map(Vec::len), Some(1));

        // The one-row-per-page query answers exactly what the row-by-row query does.
        for (from, to, after, limit) in [
            (0, i64::MAX / 2, None, 1000),
            (at(15.0), at(100.0), None, 5),
            (at(0.0), at(700.0), Some((at(50.0), expected[11].1)), 9),
            (at(2000.0), at(3000.0), None, 10),
        ] {
            let rows = segments::page(&t.db, id, from, to, after, limit)
                .await
                .expect("page");
            let items = video_server::db::pages::segments(&t.db, id, from, to, after, limit)
                .await
                .expect("page");
            assert_eq!(
                items
                    .iter()
                    .map(|i| (i.id, i.start_us, i.end_us, i.bytes))
                    .collect::<Vec<_>>(),
                rows.iter()
                    .map(|r| (r.id, r.start_us, r.end_us, r.bytes))
                    .collect::<Vec<_>>(),
            );
        }
    }
);

both_engines!(
    async fn protected_ranges_add_list_remove(t: &TestDb) {
        let s = app(t).await;
        let id = Uuid::new_v4();
        record(t, id, at(0.0), at(30.0), 10).await;
        let uri = format!("/api/v1/streams/{id}/protected-ranges");
        let r = get(&s, &uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), json!({"items": []}));

        let r = send_json(
            &s,
            "POST",
            &uri,
            &json!({"start": "2025-12-20T10:05:00Z", "end": "2025-12-20T10:06:00.250Z", "reason": "case 17"}),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let later = r.json();
        let later_id = later["id"].as_i64().expect("id");
        assert_eq!(
            r.headers.get("location").and_then(|v| v.to_str().ok()),
            Some(format!("{uri}/{later_id}").as_str())
        );
        assert_eq!(later["stream_id"], json!(id));
        assert_eq!(later["start"], json!("2025-12-20T10:05:00.000Z"));
        assert_eq!(later["end"], json!("2025-12-20T10:06:00.250Z"));
        assert_eq!(later["reason"], json!("case 17"));
        // Unix seconds as a number, and as text; no reason.
        let secs = BASE_US / 1_000_000;
        let r = send_json(&s, "POST", &uri, &json!({"start": secs, "end": secs + 20})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let earlier = r.json();
        assert_eq!(earlier["start"], json!("2025-12-20T10:00:00.000Z"));
        assert_eq!(earlier["reason"], json!(""));
        let r = send_json(
            &s,
            "POST",
            &uri,
            &json!({"start": format!("{}.5", secs + 100), "end": (secs + 110) as f64 + 0.25}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let middle = r.json();
        assert_eq!(middle["start"], json!("2025-12-20T10:01:40.500Z"));
        assert_eq!(middle["end"], json!("2025-12-20T10:01:50.250Z"));

        let r = get(&s, &uri).await;
        let items = r.json()["items"].clone();
        assert_eq!(items, json!([earlier, middle, later]), "ordered by start");

        // Retention's view of it: overlap checks and the SQL filter.
        assert!(
            protected::overlaps(&t.db, id, at(10.0), at(40.0))
                .await
                .expect("q")
        );
        assert!(
            protected::overlaps(&t.db, id, at(305.0), at(306.0))
                .await
                .expect("q")
        );
        assert!(
            !protected::overlaps(&t.db, id, at(20.0), at(100.5))
                .await
                .expect("q")
        );
        assert!(
            !protected::overlaps(&t.db, Uuid::new_v4(), at(0.0), at(400.0))
                .await
                .expect("q")
        );
        record(t, id, at(30.0), at(60.0), 10).await;
        record(t, id, at(300.0), at(330.0), 10).await;
        let sql = format!(
            "SELECT COUNT(*) FROM segments WHERE {}",
            protected::UNPROTECTED_SEGMENT_SQL
        );
        let unprotected: i64 = match &t.db {
            video_server::db::Db::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .expect("count"),
            video_server::db::Db::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .expect("count"),
        };
        assert_eq!(unprotected, 1, "only 10:00:30-10:01:00 is unprotected");

        // Remove: 204, then 404; another stream cannot remove it; bad range ids are 400.
        let other = Uuid::new_v4();
        record(t, other, at(0.0), at(1.0), 1).await;
        let r = call(
            &s,
            "DELETE",
            &format!("/api/v1/streams/{other}/protected-ranges/{later_id}"),
            None,
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = call(&s, "DELETE", &format!("{uri}/{later_id}"), None, "").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = call(&s, "DELETE", &format!("{uri}/{later_id}"), None, "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(code(&r.json()), "not_found");
        for bad in ["abc", "1.5", "99999999999999999999"] {
            let r = call(&s, "DELETE", &format!("{uri}/{bad}"), None, "").await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(field(&r.json()), "range_id");
        }
        let r = call(
            &s,
            "DELETE",
            "/api/v1/streams/xyz/protected-ranges/1",
            None,
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(field(&r.json()), "id");
        let r = get(&s, &uri).await;
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(2));
    }
);

both_engines!(
    async fn protected_ranges_refuse_bad_input(t: &TestDb) {
        let s = app(t).await;
        // A stream row without any archive yet can be protected.
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams",
            &json!({"source": {"kind": "file", "path": "assets/demo.mp4"}, "enabled": false}),
        )
        .await;
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let uri = format!("/api/v1/streams/{id}/protected-ranges");
        let ok = send_json(
            &s,
            "POST",
            &uri,
            &json!({"start": 1_766_224_800, "end": 1_766_224_801}),
        )
        .await;
        assert_eq!(ok.status, StatusCode::CREATED);

        let cases = [
            (json!({"start": 100, "end": 50}), "start"),
            (json!({"start": 100, "end": 100}), "start"),
            (
                json!({"start": "2025-12-20T10:00:00Z", "end": "2025-12-20T09:00:00Z"}),
                "start",
            ),
            (json!({"start": 0, "end": 4_000_000_000u64}), "end"),
            (json!({"start": -10, "end": 100}), "start"),
            (
                json!({"start": "1900-01-01T00:00:00Z", "end": 100}),
                "start",
            ),
            (json!({"start": 100, "end": 1e30}), "end"),
            (json!({"start": "later", "end": 100}), "start"),
            (
                json!({"start": 100, "end": 200, "reason": "x".repeat(1025)}),
                "reason",
            ),
            (
                json!({"start": 100, "end": 200, "reason": "a\u{0}b"}),
                "reason",
            ),
            // An array where the document says object (serde would read a struct from it).
            (json!({"start": [100], "end": 200}), "start"),
        ];
        for (body, want_field) in cases {
            let r = send_json(&s, "POST", &uri, &body).await;
            assert_eq!(
                r.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(code(&r.json()), "validation_failed", "{body}");
            assert_eq!(field(&r.json()), want_field, "{body}");
        }
        // Shape errors: missing field, unknown field, wrong type are 422; broken JSON is 400.
        for body in [
            json!({"start": 100}),
            json!({"start": 1, "end": 2, "until": 3}),
            json!({"start": true, "end": 2}),
        ] {
            let r = send_json(&s, "POST", &uri, &body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
        let r = call(&s, "POST", &uri, Some("application/json"), "{\"start\":").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = call(&s, "POST", &uri, Some("text/plain"), "{}").await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Bad and unknown stream ids.
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams/nope/protected-ranges",
            &json!({"start": 1, "end": 2}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(code(&r.json()), "invalid_id");
        let unknown = Uuid::new_v4();
        let r = send_json(
            &s,
            "POST",
            &format!("/api/v1/streams/{unknown}/protected-ranges"),
            &json!({"start": 1, "end": 2}),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = get(&s, &format!("/api/v1/streams/{unknown}/protected-ranges")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        // Nothing was stored by the refused requests.
        let r = get(&s, &uri).await;
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(1));
        // A stream deleted later keeps its protection, and it stays listable.
        let r = call(&s, "DELETE", &format!("/api/v1/streams/{id}"), None, "").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = get(&s, &uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(1));
    }
);

both_engines!(
    async fn ranges_from_runs_equal_ranges_from_segments_in_any_window(t: &TestDb) {
        // The runs answer (a few rows) and the gaps-and-islands answer over segments agree on
        // every window, including windows that start inside a run.
        use video_server::db::runs;
        let id = Uuid::new_v4();
        // Runs of various lengths separated by holes of 1.5 s to 2 min, and a segment recording.
        let mut start = 0.0;
        for i in 0..60 {
            let len = 20.0 + f64::from(i % 7) * 5.0;
            record(t, id, at(start), at(start + len), 100).await;
            start += len;
            start += match i % 5 {
                0 => 1.5,
                3 => 120.0,
                _ => 0.0,
            };
        }
        open(t, id, at(start + 0.5), at(start + 9.0)).await;
        let end = at(start + 9.0);
        let mut windows = vec![(0, i64::MAX / 2), (at(0.0), end), (end, end + 1)];
        let mut w = at(-30.0);
        while w < end {
            windows.push((w, w + 45_000_000));
            windows.push((w, w + 600_000_000));
            w += 17_000_000;
        }
        for (from, to) in windows {
            // Clipped to the window, as the API answers (segments::ranges ends a range at the
            // last segment overlapping the window, runs::ranges at the end of the run).
            let clip = |v: Vec<video_server::db::segments::TimeRange>| {
                v.into_iter()
                    .map(|r| (r.start_us.max(from), r.end_us.min(to)))
                    .collect::<Vec<_>>()
            };
            for gap_us in [1_000_000, 2_000_000, 200_000_000] {
                let from_runs = clip(
                    runs::ranges(&t.db, id, from, to, gap_us)
                        .await
                        .expect("runs"),
                );
                let from_segments = clip(
                    segments::ranges(&t.db, id, from, to, gap_us)
                        .await
                        .expect("segments"),
                );
                assert_eq!(
                    from_runs,
                    from_segments,
                    "window {from}..{to}, gap {gap_us} on {}",
                    t.engine_name()
                );
            }
        }
    }
);
