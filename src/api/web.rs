//! The built-in web UI: the files under `web/ui/`, embedded in the binary (`rust-embed`: release
//! builds carry them; debug builds read them from the source tree so a page edit needs no rebuild)
//! and served at `/` (the page) and `/ui/...` (its scripts, styles, the vendored hls.js) on both
//! listeners. The UI itself is plain HTML/CSS/JS modules (no bundler); `web/README.md` says how
//! hls.js is vendored.
//!
//! Every file is answered with a strong `ETag` (its SHA-256) and `Cache-Control: no-cache`, so a
//! browser revalidates with a cheap 304 and an upgraded server is never hidden behind a stale
//! cache. The page carries a Content-Security-Policy that allows scripts only from the server
//! and connections only to this server's two listeners (the page's host, our ports).

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;

use super::{AppState, ListenerPorts};

#[derive(Embed)]
#[folder = "web/ui/"]
struct Assets;

/// `/` and `/ui/{*path}`, to merge into a listener's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let csp = content_security_policy(headers.get(header::HOST), state.listeners);
    let mut resp = serve("index.html", &headers);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// One embedded file, or 404. `If-None-Match` with the current ETag gives 304.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    // rust-embed only knows the embedded names, so `..` or absolute paths simply are not found.
    let Some(file) = Assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response();
    };
    let mut etag = String::with_capacity(66);
    etag.push('"');
    for b in &file.metadata.sha256_hash()[..16] {
        let _ = write!(etag, "{b:02x}");
    }
    etag.push('"');
    let common = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, content_type(path).to_owned()),
            (header::ETAG, etag),
        ],
        file.data,
    )
        .into_response()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json" | "map") => "application/json",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The page's CSP: everything from the page's own origin, plus connections (fetch, WebSocket,
/// media) to our listeners on the host the browser used. A `Host` that is not a plain host name
/// or address gets no extra sources (it cannot inject directives).
fn content_security_policy(host: Option<&HeaderValue>, ports: ListenerPorts) -> String {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.rsplit_once(':') {
            Some((name, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            _ => h,
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let mut others = String::new();
    if let Some(host) = host {
        for port in [Some(ports.video), ports.api].into_iter().flatten() {
            if port == 0 {
                continue;
            }
            for scheme in ["http", "https", "ws", "wss"] {
                let _ = write!(others, " {scheme}://{host}:{port}");
            }
        }
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob:{others}; connect-src 'self'{others}; worker-src 'self' blob:; \
         object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_names_both_listeners_of_the_requested_host() {
        let ports = ListenerPorts {
            video: 8090,
            api: Some(8091),
        };
        let csp = content_security_policy(Some(&HeaderValue::from_static("nvr.lan:8090")), ports);
        assert!(
            csp.contains("connect-src 'self' http://nvr.lan:8090"),
            "{csp}"
        );
        assert!(csp.contains("ws://nvr.lan:8090"), "{csp}");
        assert!(csp.contains("http://nvr.lan:8091"), "{csp}");
        let v6 = content_security_policy(Some(&HeaderValue::from_static("[::1]:8091")), ports);
        assert!(v6.contains("ws://[::1]:8090"), "{v6}");
    }

    #[test]
    fn csp_ignores_hosts_that_could_inject_directives() {
        let ports = ListenerPorts {
            video: 8090,
            api: None,
        };
        for bad in ["x; script-src *", "a b", "", "evil'"] {
            let csp = content_security_policy(Some(&HeaderValue::from_static(bad)), ports);
            assert!(csp.contains("connect-src 'self';"), "{bad}: {csp}");
            assert!(!csp.contains("script-src *"), "{bad}: {csp}");
        }
    }

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        for f in ["index.html", "js/app.js", "js/player.js", "app.css"] {
            assert!(Assets::get(f).is_some(), "{f} missing from web/ui");
        }
    }
}
