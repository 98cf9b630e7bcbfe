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

/// Routes served on purpose without an OpenAPI operation: the document and its viewer, and the
/// web UI's static files.
const UNDOCUMENTED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/ui/{*path}"),
    ("GET", "/openapi.json"),
    ("GET", "/swagger-ui"),
    ("GET", "/swagger-ui/"),
    ("GET", "/swagger-ui/{*rest}"),
];

/// The document and the router agree in both directions: every route the API listener really
/// serves (read from the router itself, not from a list written here) is documented, and every
/// documented operation is served.
#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let t = crate::support::sqlite().await;
    let state = crate::support::state(&t.db, crate::support::config("")).await;
    let served = crate::support::routes::routes(&video_server::api::app(state.clone()));
    let doc: serde_json::Value =
        serde_json::from_str(&video_server::api::openapi_json()).expect("valid JSON");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = served
        .iter()
        .filter(|r| !documented.contains(*r))
        .filter(|(m, p)| !UNDOCUMENTED.contains(&(m.as_str(), p.as_str())))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    assert!(
        served.contains(&("GET".to_owned(), "/api/v1/archive/uploads".to_owned())),
        "{served:?}"
    );
    state.manager.shutdown().await;
    t.cleanup().await;
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
}
