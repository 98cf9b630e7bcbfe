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
        for method in ["get", "post", "put", "patch", "delete"] {
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
