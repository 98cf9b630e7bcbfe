//! The routes an axum [`Router`](axum::Router) really serves, read from its `Debug` output.
//!
//! axum has no API to list a router's routes; its `Debug` output does carry the route table
//! (`RouteId(n): "/path"`) and each route's methods (`allow_header: Bytes(b"GET,HEAD")`). This
//! parses that. The format is axum's, not a promise: should an axum upgrade change it, the parse
//! finds nothing and [`routes`] panics, so a test relying on it cannot pass vacuously.

use std::collections::{BTreeMap, BTreeSet};

/// `(METHOD, path)` of every route the router serves (HEAD, implied by GET, is left out), in the
/// router's own path syntax (`/api/v1/streams/{id}`). Fallbacks are not routes.
pub fn routes(router: &axum::Router) -> BTreeSet<(String, String)> {
    let text = format!("{router:?}");
    // Only the main path router; the fallback router follows it.
    let main = text.split(", fallback_router:").next().unwrap_or("");
    let (table, paths_part) = main
        .split_once("node: Node { paths: {")
        .unwrap_or_else(|| panic!("cannot read the route table of: {main:.300}"));
    let mut paths = BTreeMap::new();
    for entry in paths_part.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): \"").expect("route id and path");
        let path = rest.split('"').next().expect("path");
        paths.insert(id.to_owned(), path.to_owned());
    }
    let mut out = BTreeSet::new();
    for entry in table.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once("): MethodRouter(") else {
            continue;
        };
        let path = paths
            .get(id)
            .unwrap_or_else(|| panic!("route {id} has no path"));
        let allow = rest
            .split("allow_header: Bytes(b\"")
            .nth(1)
            .and_then(|a| a.split('"').next())
            .unwrap_or_else(|| panic!("cannot read the methods of {path}"));
        for method in allow.split(',').filter(|m| *m != "HEAD" && !m.is_empty()) {
            out.insert((method.to_owned(), path.clone()));
        }
    }
    assert!(
        !out.is_empty(),
        "no routes read from the router's Debug output (did axum change its format?)"
    );
    out
}
