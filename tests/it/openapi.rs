//! The committed OpenAPI document matches what the code generates, and every operation it
//! documents is served by the real router.

use std::path::Path;

#[test]
fn committed_openapi_matches_the_code() {
    let generated = video_server::api::openapi_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return;
    }
    // Regenerating is a developer's step (then commit the file); scripts/test and CI never set it.
    if std::env::var_os("UPDATE_OPENAPI").is_some() && std::env::var_os("CI").is_none() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &generated).expect("write openapi.json");
        eprintln!("openapi/openapi.json updated: commit it");
        return;
    }
    panic!(
        "openapi/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --test it openapi` \
         (or `cargo run -- openapi > openapi/openapi.json`) and commit it"
    );
}

/// Routes served on purpose without an OpenAPI operation: the document and its viewer, the
/// web UI's static files, and the internal route cluster nodes read each other's segments through.
const UNDOCUMENTED: &[(&str, &str)] = &[
    ("GET", "/internal/v1/segment"),
    ("GET", "/"),
    ("GET", "/ui/{*path}"),
    ("GET", "/openapi.json"),
    ("GET", "/swagger-ui"),
    ("GET", "/swagger-ui/"),
    ("GET", "/swagger-ui/{*rest}"),
];

/// Every `(METHOD, route)` the two listeners really serve (read from the routers themselves, not
/// from a list written here), with the listener's policy table: `(method, route) -> video?`.
async fn served_routes() -> (
    std::collections::BTreeSet<(String, String)>,
    std::collections::BTreeSet<(String, String)>,
) {
    let t = crate::support::sqlite().await;
    let state = crate::support::state(&t.db, crate::support::config("")).await;
    let api = crate::support::routes::routes(&video_server::api::app(state.clone()));
    let video = crate::support::routes::routes(&video_server::live::app(state.clone()));
    state.manager.shutdown().await;
    t.cleanup().await;
    (api, video)
}

/// The document's operations as `(METHOD, route)`, and whether each path names the video
/// listener as its server. The document's path is mapped to the route the router declares
/// (`/ws/live` is routed as `/ws/{any}`).
fn documented_operations(doc: &serde_json::Value) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let video = item["servers"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["variables"]["port"]["default"] == "8090")
        });
        let route = video_server::api::media_doc::route_of(path).to_owned();
        for method in ["get", "post", "put", "patch", "delete", "options"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), route.clone(), path.clone(), video));
            }
        }
    }
    out
}

/// The document and the routers agree in both directions: every route the API listener serves
/// is documented, and so is every media route of the video listener (with the video listener as
/// its server); every documented operation is served by the listener it names.
#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let (api, video) = served_routes().await;
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let ops = documented_operations(&doc);
    let documented_api: std::collections::BTreeSet<(String, String)> = ops
        .iter()
        .filter(|o| !o.3)
        .map(|o| (o.0.clone(), o.1.clone()))
        .collect();
    let documented_video: std::collections::BTreeSet<(String, String)> = ops
        .iter()
        .filter(|o| o.3)
        .map(|o| (o.0.clone(), o.1.clone()))
        .collect();
    let undocumented: Vec<_> = api
        .iter()
        .filter(|r| !documented_api.contains(*r))
        .filter(|(m, p)| !UNDOCUMENTED.contains(&(m.as_str(), p.as_str())))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}"
    );
    // The video listener serves the API's WHEP routes and `/api/v1/server` too (documented once,
    // on the API listener's paths, which name no other server).
    let undocumented_video: Vec<_> = video
        .iter()
        .filter(|r| !documented_video.contains(*r) && !documented_api.contains(*r))
        .filter(|(m, p)| !UNDOCUMENTED.contains(&(m.as_str(), p.as_str())))
        .collect();
    assert!(
        undocumented_video.is_empty(),
        "served by the video listener but not in the OpenAPI document: {undocumented_video:?}"
    );
    for media in ["/ws/{any}", "/ws/archive", "/hls/{file}"] {
        assert!(
            documented_video.contains(&("GET".to_owned(), media.to_owned())),
            "GET {media} is not documented on the video listener"
        );
    }
    let unserved: Vec<_> = documented_api.difference(&api).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    let unserved_video: Vec<_> = documented_video.difference(&video).collect();
    assert!(
        unserved_video.is_empty(),
        "documented on the video listener but not served there: {unserved_video:?}"
    );
    assert!(
        api.contains(&("GET".to_owned(), "/api/v1/archive/uploads".to_owned())),
        "{api:?}"
    );
}

/// Every operation that needs credentials (by the access policy of the listener that serves it)
/// states them and their refusals: the `bearer` scheme (and `signed_url` where a signed URL
/// opens it), 401, and 403 unless any credential will do. Read from the real routes and the
/// policy tables, so a route documented without its refusals (as the video listener's media routes
/// once were) fails here.
#[tokio::test]
async fn every_protected_operation_documents_401_and_403() {
    use video_server::api::policy::{API, Access, VIDEO, find};
    let (api, video) = served_routes().await;
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let mut checked = 0;
    for (method, route, path, on_video) in documented_operations(&doc) {
        let (table, served) = if on_video {
            (VIDEO, &video)
        } else {
            (API, &api)
        };
        assert!(
            served.contains(&(method.clone(), route.clone())),
            "{method} {path}"
        );
        let m: axum::http::Method = method.parse().expect("method");
        let policy = find(table, &m, &route)
            .unwrap_or_else(|| panic!("{method} {route} has no access policy"));
        let op = &doc["paths"][&path][method.to_lowercase()];
        let responses = &op["responses"];
        if policy.access == Access::Public {
            assert!(op.get("security").is_none(), "{method} {path}: public");
            continue;
        }
        checked += 1;
        let schemes: Vec<&str> = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path}: no security"))
            .iter()
            .filter_map(|s| s.as_object()?.keys().next().map(String::as_str))
            .collect();
        assert!(schemes.contains(&"bearer"), "{method} {path}: {schemes:?}");
        assert_eq!(
            schemes.contains(&"signed_url"),
            policy.signed,
            "{method} {path}: signed URLs"
        );
        assert!(responses.get("401").is_some(), "{method} {path}: no 401");
        if policy.access != Access::Listing {
            assert!(responses.get("403").is_some(), "{method} {path}: no 403");
        }
    }
    // The media routes of the video listener are among them.
    assert!(checked > 30, "only {checked} protected operations found");
    for path in ["/ws/live", "/ws/archive", "/hls/{file}"] {
        let op = &doc["paths"][path]["get"];
        assert!(op["responses"].get("401").is_some(), "{path}");
        assert!(op["responses"].get("403").is_some(), "{path}");
    }
}

/// The operations that answer 429/503 over `[limits]` (export, WHEP, HLS): each declares those
/// answers with the `Retry-After` header. tests/it/limits.rs checks the same declarations for the
/// answers it really receives (see `support::assert_documented_retry_after`).
#[test]
fn limited_operations_declare_retry_after() {
    for (method, path, statuses) in [
        (
            "get",
            "/api/v1/streams/{id}/export.mp4",
            &["429", "503"][..],
        ),
        ("post", "/whep/{stream_id}", &["503"][..]),
        ("get", "/hls/{file}", &["503"][..]),
    ] {
        for status in statuses {
            crate::support::assert_documented_retry_after(method, path, status);
        }
    }
}

/// The document states the rules the server enforces, so generated clients and validators agree
/// with it (scripts/schemathesis fuzzes the running server against it).
#[test]
fn the_document_states_the_servers_rules() {
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let param = |path: &str, method: &str, name: &str| {
        op(path, method)["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    };
    // Path ids are UUIDs on every route that has one.
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, o) in ops.as_object().expect("ops") {
            for p in o["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" && (p["name"] == "id" || p["name"] == "stream_id") {
                    assert_eq!(p["schema"]["format"], "uuid", "{method} {path}");
                }
            }
            // Every operation with a body documents 413 and 415 (ours) with its error body.
            if path.starts_with("/api/v1/") && o.get("requestBody").is_some() {
                for code in ["413", "415"] {
                    assert!(o["responses"].get(code).is_some(), "{method} {path} {code}");
                }
            }
        }
    }
    for (path, name) in [
        ("/api/v1/streams", "limit"),
        ("/api/v1/streams/{id}/segments", "limit"),
    ] {
        let p = param(path, "get", name);
        assert_eq!(
            (&p["schema"]["minimum"], &p["schema"]["maximum"]),
            (&serde_json::json!(1), &serde_json::json!(1000)),
            "{path} {name}"
        );
    }
    let gap = param("/api/v1/streams/{id}/ranges", "get", "gap_ms");
    assert_eq!(gap["schema"]["minimum"], 1000);
    for path in [
        "/api/v1/streams/{id}/ranges",
        "/api/v1/streams/{id}/segments",
        "/api/v1/streams/{id}/export.mp4",
    ] {
        for name in ["start", "end"] {
            let pattern = param(path, "get", name)["schema"]["pattern"].clone();
            assert_eq!(
                pattern.as_str(),
                Some(video_server::api::archive::TIME_PATTERN),
                "{path} {name}"
            );
        }
    }
    let schemas = &doc["components"]["schemas"];
    for variant in schemas["SourceDto"]["oneOf"].as_array().expect("variants") {
        assert_eq!(variant["additionalProperties"], false, "{variant}");
        for (_, prop) in variant["properties"].as_object().expect("props") {
            if prop["type"] == "string" && prop.get("enum").is_none() {
                assert_eq!(prop["minLength"], 1, "{variant}");
            }
        }
    }
    for s in [
        "StreamInput",
        "ArchiveDto",
        "RetentionDto",
        "ProtectedRangeInput",
    ] {
        assert_eq!(schemas[s]["additionalProperties"], false, "{s}");
    }
    assert_eq!(
        schemas["ArchiveDto"]["properties"]["ms_per_file"]["maximum"],
        3_600_000
    );
    // The merge patch states its properties (the server refuses unknown ones after merging).
    assert_eq!(schemas["StreamPatch"]["additionalProperties"], false);
    assert_eq!(
        op("/api/v1/streams/{id}", "patch")["requestBody"]["content"]["application/merge-patch+json"]
            ["schema"]["$ref"],
        "#/components/schemas/StreamPatch"
    );
    // Ids a client chooses are not the nil UUID; the Go bodies say what the Go routes take.
    let nil = serde_json::json!({"const": "00000000-0000-0000-0000-000000000000"});
    assert_eq!(schemas["StreamInput"]["properties"]["id"]["not"], nil);
    for body in ["EnableCameraRequest", "DisableCameraRequest"] {
        assert_eq!(schemas[body]["properties"]["guid"]["not"], nil, "{body}");
        assert_eq!(
            schemas[body]["properties"]["guid"]["format"], "uuid",
            "{body}"
        );
    }
    let enable = &schemas["EnableCameraRequest"];
    assert_eq!(enable["required"], serde_json::json!(["guid", "url"]));
    assert_eq!(
        enable["properties"]["url"]["pattern"].as_str(),
        Some(video_server::api::streams::RTSP_URL_PATTERN)
    );
    assert_eq!(
        enable["properties"]["output_types"]["items"]["pattern"].as_str(),
        Some(video_server::api::go::GO_OUTPUT_TYPE_PATTERN)
    );
    assert_eq!(
        op("/enable_camera", "post")["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EnableCameraRequest"
    );
    // A body time: a number or a string of the query times' shape, never both (`oneOf`).
    let time = schemas["TimeValue"]["oneOf"].as_array().expect("oneOf");
    assert_eq!(time.len(), 2);
    assert_eq!(time[0]["type"], "number");
    assert_eq!(time[0]["minimum"], 0);
    assert_eq!(time[1]["type"], "string");
    assert_eq!(
        time[1]["pattern"].as_str(),
        Some(video_server::api::archive::TIME_PATTERN)
    );
    assert_eq!(
        schemas["TokenInput"]["properties"]["expires_in_s"]["maximum"],
        video_server::auth::MAX_TOKEN_TTL_S
    );
}

/// The document's patterns agree with the server's own parsers on examples either way (the
/// fuzzer, scripts/schemathesis, checks them against the running server at random).
#[test]
fn patterns_agree_with_the_server() {
    use video_server::api::archive::{TIME_PATTERN, parse_time};
    use video_server::api::streams::RTSP_URL_PATTERN;
    let url = regex::Regex::new(RTSP_URL_PATTERN).expect("RTSP_URL_PATTERN compiles");
    let server_takes = |s: &str| {
        url::Url::parse(s.trim()).is_ok_and(|u| {
            matches!(u.scheme(), "rtsp" | "rtsps")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.fragment().is_none()
        })
    };
    for (s, ok) in [
        ("rtsp://h/x", true),
        ("RTSPS://user:pass@cam.local:554/a?b=c", true),
        (" rtsp://10.0.0.1 ", true),
        ("rtsp://h:65535/", true),
        ("rtsp://%C3%ADcam.local/x", true),
        ("rtsp://h:/x", true),
        ("rtsp://h:65536/", false),
        ("rtsp://:554/x", false),
        ("rtsp://@/x", false),
        ("rtsp://a<b/", false),
        ("rtsp://h/x#frag", false),
        ("http://h/x", false),
        ("rtsp:/h", false),
        ("", false),
    ] {
        assert_eq!(url.is_match(s), ok, "pattern on {s:?}");
        assert_eq!(server_takes(s), ok, "server on {s:?}");
    }
    let time = regex::Regex::new(TIME_PATTERN).expect("TIME_PATTERN compiles");
    for (s, shape, parses) in [
        ("1766224800", true, true),
        (" 1766224800.25\t", true, true),
        ("2025-12-20T10:00:00Z", true, true),
        ("2025-12-20T10:00:00.5+03:00", true, true),
        ("2025-12-20T10:00:00 03:00", true, true),
        ("2025-02-30T00:00:00Z", true, false),
        ("2025-13-01T00:00:00Z", false, false),
        ("2025-12-20T24:00:00Z", false, false),
        ("2016-12-31T23:59:60Z", false, false),
        ("yesterday", false, false),
        ("12:00", false, false),
        ("1.2.3", false, false),
        ("-5", false, false),
        ("\u{1c}5", false, false),
    ] {
        assert_eq!(time.is_match(s), shape, "pattern on {s:?}");
        assert_eq!(parse_time(s).is_ok(), parses, "server on {s:?}");
    }
}
