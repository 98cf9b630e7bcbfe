//! Which browser origins are "this server": the one rule for automatic CORS (the web UI loaded
//! from one listener calls the other) and for cross-site checks.
//!
//! An origin is the server's own when its host equals the host of the request's `Host` header
//! (compared case-insensitively, IPv6 brackets kept) and its port is one of our listener ports.
//! The scheme is not compared: behind a TLS-terminating proxy a page served over `https` talks to
//! listeners that see plain `http`, and an attacker cannot choose the host of a page that is
//! not ours.

use axum::http::HeaderValue;
use axum::http::request::Parts;

/// The ports the server's listeners are bound to (the real ones, also when configured as 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerPorts {
    /// The video listener (live, archive WebSocket, HLS, web UI).
    pub video: u16,
    /// The API listener, `None` when `[api] enabled = false`.
    pub api: Option<u16>,
}

impl ListenerPorts {
    /// Whether `port` is one of ours. Port 0 (not bound yet, as in router tests) never is.
    pub fn contains(&self, port: u16) -> bool {
        port != 0 && (port == self.video || Some(port) == self.api)
    }
}

/// `true` when `origin` (an `Origin` header value such as `http://127.0.0.1:8090`) is one of this
/// server's listeners as addressed by the request's `host` header.
pub fn is_same_server(
    origin: &HeaderValue,
    host: Option<&HeaderValue>,
    ports: ListenerPorts,
) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    let Some((origin_host, origin_port)) = origin_host_port(origin) else {
        return false;
    };
    let host_only = split_port(host).0;
    !host_only.is_empty()
        && origin_host.eq_ignore_ascii_case(host_only)
        && ports.contains(origin_port)
}

/// [`is_same_server`] for a request's parts (for CORS predicates and middleware).
pub fn request_is_same_server(origin: &HeaderValue, parts: &Parts, ports: ListenerPorts) -> bool {
    is_same_server(origin, parts.headers.get(axum::http::header::HOST), ports)
}

/// Host and port of a serialized origin (`scheme://host[:port]`, no path). `None` for `null`,
/// other schemes, or anything malformed.
fn origin_host_port(origin: &str) -> Option<(&str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_port(rest);
    let port = match port {
        None => default_port,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Splits `host[:port]` (IPv6 in brackets: `[::1]:8090`) into the host (brackets kept) and the
/// port text.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: ListenerPorts = ListenerPorts {
        video: 8090,
        api: Some(8091),
    };

    fn same(origin: &str, host: &str) -> bool {
        is_same_server(
            &HeaderValue::from_str(origin).expect("origin"),
            Some(&HeaderValue::from_str(host).expect("host")),
            PORTS,
        )
    }

    #[test]
    fn either_listener_of_the_requested_host_is_ours() {
        assert!(same("http://127.0.0.1:8090", "127.0.0.1:8091"));
        assert!(same("http://127.0.0.1:8091", "127.0.0.1:8090"));
        assert!(same("http://LocalHost:8090", "localhost:8091"));
        assert!(same("https://nvr.example:8091", "nvr.example:8090"));
        assert!(same("http://[::1]:8090", "[::1]:8091"));
    }

    #[test]
    fn other_hosts_ports_and_garbage_are_not() {
        assert!(!same("http://evil.example:8090", "127.0.0.1:8091"));
        assert!(!same("http://127.0.0.1:9999", "127.0.0.1:8091"));
        // Default ports are not ours unless a listener is bound there.
        assert!(!same("http://127.0.0.1", "127.0.0.1:8091"));
        assert!(!same("null", "127.0.0.1:8091"));
        assert!(!same("file://", "127.0.0.1:8091"));
        assert!(!same("http://127.0.0.1:8090/path", "127.0.0.1:8091"));
        assert!(!same("http://user@127.0.0.1:8090", "127.0.0.1:8091"));
        assert!(!same("http://127.0.0.1:99999", "127.0.0.1:8091"));
        assert!(!same("http://[::1]:8090", "127.0.0.1:8091"));
        assert!(!same("http://:8090", ":8091"));
        let o = HeaderValue::from_static("http://127.0.0.1:8090");
        assert!(!is_same_server(&o, None, PORTS));
        assert!(!is_same_server(
            &o,
            Some(&HeaderValue::from_static("127.0.0.1:8090")),
            ListenerPorts::default()
        ));
    }

    #[test]
    fn a_disabled_api_listener_is_not_ours() {
        let ports = ListenerPorts {
            video: 8090,
            api: None,
        };
        let host = HeaderValue::from_static("127.0.0.1:8090");
        assert!(!is_same_server(
            &HeaderValue::from_static("http://127.0.0.1:8091"),
            Some(&host),
            ports
        ));
        assert!(is_same_server(
            &HeaderValue::from_static("http://127.0.0.1:8090"),
            Some(&host),
            ports
        ));
    }
}
