//! `/api/v1/streams`: every status code, validation, persistence; on both engines.

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::both_engines;
use crate::support::{call, config, get, send_json, state};

const BASE: &str = "[archive]\nserving = true\n";

fn camera(url: &str) -> serde_json::Value {
    json!({"name": "Gate", "source": {"kind": "rtsp", "url": url}, "outputs": ["mse", "hls"]})
}

fn error_code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

both_engines!(
    async fn create_get_list_and_location(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams",
            &camera("rtsp://127.0.0.1:1/main"),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let created = r.json();
        let id = created["id"].as_str().expect("id").to_owned();
        assert_eq!(
            r.headers.get("location").and_then(|v| v.to_str().ok()),
            Some(format!("/api/v1/streams/{id}").as_str())
        );
        assert_eq!(
            created["source"],
            json!({"kind": "rtsp", "url": "rtsp://127.0.0.1:1/main", "transport": "tcp"})
        );
        assert_eq!(created["enabled"], json!(true));
        assert_eq!(created["origin"], json!("api"));
        let r = get(&s, &format!("/api/v1/streams/{id}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), created);
        // It runs: the Go routes see it.
        let list = get(&s, "/list").await.json();
        assert_eq!(list["data"][0]["stream_id"], json!(id));
        let st = get(&s, &format!("/api/v1/streams/{id}/status")).await;
        assert_eq!(st.status, StatusCode::OK);
        assert_eq!(st.json()["active"], json!(true));
    }
);

both_engines!(
    async fn create_with_explicit_id_and_conflict(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let id = Uuid::new_v4();
        let mut body = json!({"id": id, "source": {"kind": "file", "path": "assets/demo.mp4", "loop": true}, "outputs": ["mse"]});
        let r = send_json(&s, "POST", "/api/v1/streams", &body).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json()["id"], json!(id));
        assert_eq!(
            r.json()["source"],
            json!({"kind": "file", "path": "assets/demo.mp4", "loop": true})
        );
        body["name"] = json!("again");
        let r = send_json(&s, "POST", "/api/v1/streams", &body).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(error_code(&r.json()), "conflict");
    }
);

both_engines!(
    async fn validation_failures_are_422_with_the_field(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let cases = [
            (
                json!({"source": {"kind": "rtsp", "url": "http://x/y"}}),
                "source.url",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "not a url"}}),
                "source.url",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://"}}),
                "source.url",
            ),
            (
                json!({"source": {"kind": "file", "path": ""}}),
                "source.path",
            ),
            (
                json!({"source": {"kind": "file", "path": "/definitely/not/here.mp4"}}),
                "source.path",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "archive": {"ms_per_file": 10}}),
                "archive.ms_per_file",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "archive": {"storage": "s3"}}),
                "archive.storage",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "archive": {"prefix": "a/../b"}}),
                "archive.prefix",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "retention": {"max_age_s": 0}}),
                "retention.max_age_s",
            ),
            (
                json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "name": "x".repeat(300)}),
                "name",
            ),
            (
                json!({"id": Uuid::nil(), "source": {"kind": "rtsp", "url": "rtsp://h/x"}}),
                "id",
            ),
        ];
        for (body, field) in cases {
            let r = send_json(&s, "POST", "/api/v1/streams", &body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let v = r.json();
            assert_eq!(error_code(&v), "validation_failed", "{body}");
            assert_eq!(v["error"]["field"], json!(field), "{body}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        // Shape errors (unknown field, wrong type, unknown output, missing source) are 422 too.
        for body in [
            json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "colour": "red"}),
            json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "outputs": ["webrtc"]}),
            json!({"source": {"kind": "rtsp", "url": 5}}),
            json!({"source": {"kind": "carrier-pigeon"}}),
            json!({"name": "no source"}),
            // Arrays where the document says object: serde alone reads structs from them.
            json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "retention": [null, null]}),
            json!({"source": {"kind": "rtsp", "url": "rtsp://h/x"}, "archive": [false]}),
            json!({"source": ["rtsp", "rtsp://h/x"]}),
            json!([null, {"kind": "rtsp", "url": "rtsp://h/x"}]),
        ] {
            let r = send_json(&s, "POST", "/api/v1/streams", &body).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(error_code(&r.json()), "validation_failed");
        }
        assert!(
            video_server::db::streams::list_all(&t.db)
                .await
                .expect("list")
                .is_empty()
        );
    }
);

both_engines!(
    async fn malformed_oversized_and_wrong_type_bodies(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let r = call(
            &s,
            "POST",
            "/api/v1/streams",
            Some("application/json"),
            "{\"source\":",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&r.json()), "bad_json");
        let r = call(&s, "POST", "/api/v1/streams", Some("text/plain"), "{}").await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error_code(&r.json()), "unsupported_media_type");
        let huge = format!("{{\"name\":\"{}\"}}", "a".repeat(200_000));
        let r = call(
            &s,
            "POST",
            "/api/v1/streams",
            Some("application/json"),
            huge.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&r.json()), "body_too_large");
        // The Go routes are limited too, and answer in their own shape.
        let r = call(&s, "POST", "/enable_camera", Some("application/json"), huge).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Garbage bytes: never a panic.
        let r = call(
            &s,
            "POST",
            "/api/v1/streams",
            Some("application/json"),
            vec![0xff, 0xfe, 0x00],
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
);

both_engines!(
    async fn bad_ids_are_400_and_unknown_ids_404(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        for method in ["GET", "PUT", "PATCH", "DELETE"] {
            // Only the hyphenated form is a UUID (the document's `format: uuid`).
            let simple = Uuid::new_v4().simple().to_string();
            for bad in ["nope", simple.as_str()] {
                let uri = format!("/api/v1/streams/{bad}");
                let r = send_json(&s, method, &uri, &camera("rtsp://h/x")).await;
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {bad}");
                assert_eq!(error_code(&r.json()), "invalid_id");
                assert_eq!(r.json()["error"]["field"], json!("id"));
            }
            let unknown = format!("/api/v1/streams/{}", Uuid::new_v4());
            let r = send_json(&s, method, &unknown, &camera("rtsp://h/x")).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}");
            assert_eq!(error_code(&r.json()), "not_found");
        }
        let r = get(&s, &format!("/api/v1/streams/{}/status", Uuid::new_v4())).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = get(&s, "/api/v1/streams/%00/status").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
);

both_engines!(
    async fn put_patch_delete_lifecycle(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams",
            &camera("rtsp://127.0.0.1:1/main"),
        )
        .await;
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let uri = format!("/api/v1/streams/{id}");

        // PUT replaces everything; absent fields take their defaults.
        let r = send_json(
            &s,
            "PUT",
            &uri,
            &json!({"source": {"kind": "rtsp", "url": "rtsp://127.0.0.1:1/sub", "transport": "udp"}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(v["name"], json!(""));
        assert_eq!(v["outputs"], json!([]));
        assert_eq!(v["source"]["transport"], json!("udp"));
        // PUT with a different id in the body is refused.
        let r = send_json(
            &s,
            "PUT",
            &uri,
            &json!({"id": Uuid::new_v4(), "source": {"kind": "rtsp", "url": "rtsp://h/x"}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

        // PATCH merges; null removes (back to default).
        let r = call(&s, "PATCH", &uri, Some("application/merge-patch+json"),
            json!({"name": "Gate 2", "archive": {"recording": true, "ms_per_file": 60000}, "outputs": ["hls"]}).to_string()).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["name"], json!("Gate 2"));
        assert_eq!(v["archive"]["recording"], json!(true));
        assert_eq!(v["archive"]["ms_per_file"], json!(60000));
        assert_eq!(
            v["source"]["url"],
            json!("rtsp://127.0.0.1:1/sub"),
            "untouched fields stay"
        );
        let r = call(
            &s,
            "PATCH",
            &uri,
            Some("application/json"),
            json!({"archive": {"ms_per_file": null}}).to_string(),
        )
        .await;
        assert_eq!(r.json()["archive"]["ms_per_file"], json!(null));
        assert_eq!(r.json()["archive"]["recording"], json!(true));
        // PATCH errors: invalid value, wrong type, not an object, bad JSON, wrong content type.
        let r = call(
            &s,
            "PATCH",
            &uri,
            Some("application/json"),
            json!({"source": {"url": "ftp://x"}}).to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.json()["error"]["field"], json!("source.url"));
        let r = call(
            &s,
            "PATCH",
            &uri,
            Some("application/json"),
            json!({"enabled": "yes"}).to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.json()["error"]["field"], json!("enabled"));
        let r = call(&s, "PATCH", &uri, Some("application/json"), "[1,2]").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let r = call(&s, "PATCH", &uri, Some("application/json"), "{").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = call(&s, "PATCH", &uri, Some("text/plain"), "{}").await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        // Disabling through PATCH stops it (gone from the Go list) but keeps the row.
        let r = call(
            &s,
            "PATCH",
            &uri,
            Some("application/json"),
            json!({"enabled": false}).to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(get(&s, "/list").await.json(), json!({"data": []}));
        assert_eq!(
            get(&s, &format!("{uri}/status")).await.json()["active"],
            json!(false)
        );

        let r = call(&s, "DELETE", &uri, None, axum::body::Body::empty()).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());
        let r = call(&s, "DELETE", &uri, None, axum::body::Body::empty()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(get(&s, &uri).await.status, StatusCode::NOT_FOUND);
    }
);

both_engines!(
    async fn list_pagination_and_bad_queries(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        for i in 0..5 {
            let r = send_json(
                &s,
                "POST",
                "/api/v1/streams",
                &camera(&format!("rtsp://127.0.0.1:1/x{i}")),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
        let mut seen = Vec::new();
        let mut uri = "/api/v1/streams?limit=2".to_owned();
        loop {
            let v = get(&s, &uri).await.json();
            let items = v["items"].as_array().expect("items").clone();
            assert!(items.len() <= 2);
            seen.extend(
                items
                    .iter()
                    .map(|i| i["id"].as_str().expect("id").to_owned()),
            );
            match v["next_cursor"].as_str() {
                Some(c) => uri = format!("/api/v1/streams?limit=2&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        for bad in [
            "limit=0",
            "limit=5000",
            "limit=-1",
            "limit=abc",
            "cursor=zzz",
        ] {
            let r = get(&s, &format!("/api/v1/streams?{bad}")).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(r.json()["error"]["code"].is_string());
        }
    }
);

both_engines!(
    async fn api_changes_survive_a_restart(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let r = send_json(
            &s,
            "POST",
            "/api/v1/streams",
            &camera("rtsp://127.0.0.1:1/main"),
        )
        .await;
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let s = crate::support::restart(s, config(BASE)).await;
        let v = get(&s, "/list").await.json();
        assert_eq!(v["data"][0]["stream_id"], json!(id));
        assert_eq!(
            get(&s, &format!("/api/v1/streams/{id}")).await.status,
            StatusCode::OK
        );
    }
);

both_engines!(
    async fn healthz_reports_the_database(t: &TestDb) {
        let s = state(&t.db, config(BASE)).await;
        let r = get(&s, "/healthz").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.json(),
            json!({"status": "ok", "database": "ok", "auth": "off"})
        );
        // The database goes away: 503, degraded, without the driver's text.
        t.db.close().await;
        let r = get(&s, "/healthz").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.json(),
            json!({"status": "degraded", "database": "unavailable", "auth": "off"})
        );
    }
);
