//! Cross-site defences for both listeners, as one middleware ([`guard`]):
//!
//! * **DNS rebinding.** A listener bound to a loopback address answers only requests whose `Host`
//!   is a loopback name or address (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`); anything
//!   else is 421. Otherwise a web page whose own host name the attacker re-points at 127.0.0.1
//!   could read the API as "same origin".
//! * **Cross-site writes and WebSockets.** A request that changes state (any method but `GET`,
//!   `HEAD`, `OPTIONS`) or upgrades to a WebSocket, and carries an `Origin` that is neither one of
//!   this server's listeners ([`super::origin::is_same_server`]) nor in `[cors] allow_origins`
//!   (when `[cors] enabled`), is refused with 403. Browsers send `Origin` on such requests, so a
//!   page elsewhere cannot `POST /disable_camera` with a `text/plain` form (no preflight) or open
//!   `/ws/live`; curl and other non-browser clients send none and are not affected. Without an
//!   `Origin`, a browser's `Sec-Fetch-Site: cross-site` is refused too.
//!
//! The checks apply whether `[auth]` is on or off, also to requests that carry a token or a
//! signed query: a player embedded in another site's page is allowed by listing that site in
//! `[cors] allow_origins`, an explicit decision of the operator.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, GoError};

/// Which listener a guard protects (they may bind different addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Video,
    Api,
}

/// Whether a configured bind address is loopback only: a loopback IP or `localhost`. An empty
/// host (all interfaces) or another name is not.
pub fn binds_loopback(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    is_loopback_name(host)
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `localhost` and its subdomains (RFC 6761: they always resolve to loopback; browsers never ask
/// DNS for them, so an attacker cannot re-point them).
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Whether the host part of a `Host` header value (or URI authority) is a loopback name or
/// address.
pub fn host_is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // `[::1]:8090`
        match rest.split_once(']') {
            Some((inside, _)) => inside,
            None => return false,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if is_loopback_name(host) {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// A request that changes state or opens a WebSocket.
fn needs_origin_check(method: &Method, headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
    upgrade || !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a browser request from `origin` may change state here.
fn origin_allowed(state: &AppState, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let cors = &state.config.cors;
    super::origin::is_same_server(origin, host, state.listeners)
        || (cors.enabled
            && cors
                .allow_origins
                .iter()
                .any(|o| o == "*" || o.as_bytes() == origin.as_bytes()))
}

/// The refusal in the route's error shape: `/api/...` answers our JSON, the Go routes and the
/// video listener the Go `{"Error": ...}`.
fn refuse(path: &str, status: StatusCode, code: &'static str, message: String) -> Response {
    if path.starts_with("/api/") {
        ApiError::new(status, code, message).into_response()
    } else {
        GoError::upper(status, message).into_response()
    }
}

/// The middleware (see the module documentation). `listener` says which bind address applies.
pub async fn guard(
    State((state, listener)): State<(AppState, Listener)>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let bind = match listener {
        Listener::Video => &state.config.video.host,
        Listener::Api => &state.config.api.host,
    };
    let path = req.uri().path().to_owned();
    let headers = req.headers();
    // HTTP/2 carries the host in the URI authority, HTTP/1.1 in `Host`.
    let host_value = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| headers.get(header::HOST).cloned());
    if binds_loopback(bind)
        && let Some(host) = &host_value
        && !host.to_str().is_ok_and(host_is_loopback)
    {
        tracing::warn!(host = ?host, path, "request for a non-loopback host on a loopback listener refused (DNS rebinding?)");
        return refuse(
            &path,
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "this listener only answers requests for localhost or a loopback address".into(),
        );
    }
    if needs_origin_check(req.method(), headers) {
        let refused = match headers.get(header::ORIGIN) {
            Some(origin) => !origin_allowed(&state, origin, host_value.as_ref()),
            None => headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")),
        };
        if refused {
            tracing::warn!(origin = ?headers.get(header::ORIGIN), method = %req.method(), path,
                "cross-site request refused");
            return refuse(
                &path,
                StatusCode::FORBIDDEN,
                "cross_site_request",
                "cross-site request refused: the Origin is not this server and not in \
                 [cors] allow_origins"
                    .into(),
            );
        }
    }
    next.run(req).await
}

/// The guard as the outermost layer of a listener's router.
pub fn protect(router: axum::Router, state: &AppState, listener: Listener) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        (state.clone(), listener),
        guard,
    ))
}

/// Adds the guard's answers to every operation of the OpenAPI document: 421 everywhere (a
/// loopback listener asked for another host) and 403 on the state-changing operations. An
/// operation that already documents a 403 (e.g. for authorisation) gets the reason appended.
pub fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    const MISDIRECTED: &str = "The listener binds a loopback address and `Host` is not a \
        loopback name or address (DNS rebinding)";
    const CROSS_SITE: &str = "Cross-site request: `Origin` is neither this server's listeners \
        nor in `[cors] allow_origins`";
    for (path, item) in doc.paths.paths.iter_mut() {
        let schema = if path.starts_with("/api/") {
            "ErrorBody"
        } else {
            "GoUpperError"
        };
        let answer = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name(schema))),
                    )
                    .build(),
            )
        };
        let writes = [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in writes.into_iter().flatten() {
            match op.responses.responses.get_mut("403") {
                Some(RefOr::T(existing)) => {
                    existing.description = format!("{}; or: {CROSS_SITE}", existing.description);
                }
                Some(RefOr::Ref(_)) => {}
                None => {
                    op.responses
                        .responses
                        .insert("403".into(), answer(CROSS_SITE));
                }
            }
        }
        let all = [
            &mut item.get,
            &mut item.head,
            &mut item.options,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in all.into_iter().flatten() {
            op.responses
                .responses
                .entry("421".into())
                .or_insert_with(|| answer(MISDIRECTED));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_binds_and_hosts() {
        for b in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(binds_loopback(b), "{b}");
        }
        for b in ["", "0.0.0.0", "::", "192.168.1.5", "nvr.example"] {
            assert!(!binds_loopback(b), "{b}");
        }
        for h in [
            "localhost",
            "localhost:8091",
            "LocalHost.:8091",
            "cam.localhost:8090",
            "127.0.0.1",
            "127.0.0.1:8091",
            "127.9.9.9:1",
            "[::1]:8090",
            "[::1]",
            "[::ffff:127.0.0.1]:8090",
        ] {
            assert!(host_is_loopback(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8091",
            "localhost.evil.example:8091",
            "127.0.0.1.nip.io:8091",
            "10.0.0.1:8091",
            "[::2]:8090",
            "[::1",
            "",
        ] {
            assert!(!host_is_loopback(h), "{h}");
        }
    }

    #[test]
    fn what_needs_an_origin_check() {
        let mut ws = HeaderMap::new();
        ws.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        let plain = HeaderMap::new();
        assert!(needs_origin_check(&Method::GET, &ws));
        assert!(needs_origin_check(&Method::POST, &plain));
        assert!(needs_origin_check(&Method::PATCH, &plain));
        assert!(needs_origin_check(&Method::DELETE, &plain));
        assert!(!needs_origin_check(&Method::GET, &plain));
        assert!(!needs_origin_check(&Method::HEAD, &plain));
        assert!(!needs_origin_check(&Method::OPTIONS, &plain));
    }
}
