//! The committed OpenAPI document matches what the code generates, and covers every route.

use std::path::Path;

#[test]
fn committed_openapi_matches_the_code() {
    let generated = video_server::api::openapi_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &generated).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run `cargo run -- openapi > openapi/openapi.json` \
         (or UPDATE_OPENAPI=1 cargo test openapi)"
    );
}

#[test]
fn every_route_is_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/list", "get"),
        ("/status", "get"),
        ("/enable_camera", "post"),
        ("/disable_camera", "post"),
        ("/archive/{stream_id}/ranges", "get"),
        ("/api/v1/streams", "get"),
        ("/api/v1/streams", "post"),
        ("/api/v1/streams/{id}", "get"),
        ("/api/v1/streams/{id}", "put"),
        ("/api/v1/streams/{id}", "patch"),
        ("/api/v1/streams/{id}", "delete"),
        ("/api/v1/streams/{id}/status", "get"),
        ("/api/v1/streams/{id}/ranges", "get"),
        ("/api/v1/streams/{id}/segments", "get"),
        ("/api/v1/streams/{id}/protected-ranges", "get"),
        ("/api/v1/streams/{id}/protected-ranges", "post"),
        ("/api/v1/streams/{id}/protected-ranges/{range_id}", "delete"),
        ("/api/v1/streams/{id}/export.mp4", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "StatusDocument",
        "StreamInput",
        "StreamDto",
        "ErrorBody",
        "GoRangesResponse",
        "RangesResponse",
        "SegmentPage",
        "ProtectedRangeDto",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} missing"
        );
    }
}
