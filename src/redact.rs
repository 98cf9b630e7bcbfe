//! Secrets in source URLs are write-only: the one place that masks them for display, puts them
//! back when a client returns a masked URL, and scrubs them out of free text (error messages that
//! quote a URL).
//!
//! A secret is the password of the URL's userinfo and the value of every query parameter whose
//! name looks like a credential ([`is_secret_key`]: `password`, `pwd`, `token`, `key`, ...;
//! some cameras take `?user=admin&password=...`). Masking fails closed: a URL that does not
//! parse, or that carries a fragment (where a badly escaped `#` in a password ends up), is
//! replaced whole by [`REDACTED`].

/// What a secret is replaced with. A client that sends it back (PUT/PATCH of an unchanged URL)
/// keeps the stored secret; a real password equal to this string cannot be set through the API.
pub const MASK: &str = "***";

/// What a URL that cannot be masked safely is shown as.
pub const REDACTED: &str = "<redacted>";

/// Whether a query parameter name (percent-decoded, any case) names a credential.
pub fn is_secret_key(name: &str) -> bool {
    const PARTS: [&str; 8] = [
        "pass", "pwd", "secret", "token", "key", "auth", "sig", "cred",
    ];
    let name = name.to_ascii_lowercase();
    PARTS.iter().any(|p| name.contains(p))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// One `name=value` piece of a raw query, split without re-encoding anything.
fn query_pieces(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query.split('&').map(|piece| match piece.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (piece, None),
    })
}

fn join_query<'a>(pieces: impl Iterator<Item = (&'a str, Option<String>)>) -> String {
    pieces
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `url` with its password and secret query values replaced by [`MASK`], for responses and logs.
/// Everything else (user name, host, path, other parameters) is kept byte for byte.
pub fn mask_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    if u.fragment().is_some() {
        return REDACTED.to_owned();
    }
    if u.password().is_some() && u.set_password(Some(MASK)).is_err() {
        return REDACTED.to_owned();
    }
    if let Some(q) = u.query().map(str::to_owned) {
        let masked = join_query(query_pieces(&q).map(|(k, v)| {
            let v = v.map(|v| {
                if is_secret_key(&decode(k)) && !v.is_empty() {
                    MASK.to_owned()
                } else {
                    v.to_owned()
                }
            });
            (k, v)
        }));
        u.set_query(Some(&masked));
    }
    u.to_string()
}

/// Why a masked URL cannot be turned back into the stored one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Keeping the stored password for another server would hand it to that server.
    #[error(
        "the URL carries a masked secret ('{MASK}') but its scheme, host or port differ from the \
         stored URL: send the password again when moving a camera"
    )]
    OtherServer,
    /// The masked query parameter has no stored value to keep.
    #[error("query parameter '{0}' is masked ('{MASK}') but the stored URL has no value for it")]
    NoStoredValue(String),
}

/// The port a URL connects to: explicit, or its scheme's default (the `url` crate knows no RTSP).
fn port_of(u: &url::Url) -> Option<u16> {
    u.port_or_known_default().or(match u.scheme() {
        "rtsp" => Some(554),
        "rtsps" => Some(322),
        _ => None,
    })
}

/// `new` with every [`MASK`]ed secret replaced by the same secret of `stored` (the URL the
/// database holds), so a client may send back the URL it was shown. A `new` without masked
/// secrets is returned unchanged. Secrets are only carried over to the same scheme, host and
/// port: otherwise a client could point the stored password at a server of its choosing.
pub fn restore_masked(new: &str, stored: Option<&str>) -> Result<String, RestoreError> {
    let Ok(mut u) = url::Url::parse(new) else {
        return Ok(new.to_owned());
    };
    let password_masked = u.password() == Some(MASK);
    let query = u.query().map(str::to_owned);
    let query_masked = query.as_deref().is_some_and(|q| {
        query_pieces(q).any(|(k, v)| v == Some(MASK) && is_secret_key(&decode(k)))
    });
    if !password_masked && !query_masked {
        return Ok(new.to_owned());
    }
    let old = stored
        .and_then(|s| url::Url::parse(s).ok())
        .filter(|old| {
            old.scheme() == u.scheme()
                && old.host_str() == u.host_str()
                && port_of(old) == port_of(&u)
        })
        .ok_or(RestoreError::OtherServer)?;
    if password_masked && u.set_password(old.password()).is_err() {
        return Err(RestoreError::OtherServer);
    }
    if let (true, Some(q)) = (query_masked, query) {
        let old_query = old.query().unwrap_or("");
        let mut seen: Vec<&str> = Vec::new();
        let mut pieces = Vec::new();
        for (k, v) in query_pieces(&q) {
            // The n-th occurrence of a name takes the stored n-th occurrence's value.
            let nth = seen.iter().filter(|s| **s == k).count();
            seen.push(k);
            let v = match v {
                Some(v) if v == MASK && is_secret_key(&decode(k)) => Some(
                    query_pieces(old_query)
                        .filter(|(ok, _)| *ok == k)
                        .nth(nth)
                        .and_then(|(_, ov)| ov)
                        .ok_or_else(|| RestoreError::NoStoredValue(decode(k)))?
                        .to_owned(),
                ),
                other => other.map(str::to_owned),
            };
            pieces.push((k, v));
        }
        u.set_query(Some(&join_query(pieces.into_iter())));
    }
    Ok(u.to_string())
}

/// The secrets of `url` as they may appear in text: raw (percent-encoded) and decoded.
fn secrets_of(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(u) = url::Url::parse(url) else {
        return out;
    };
    if let Some(p) = u.password() {
        out.push(p.to_owned());
        out.push(decode(p));
    }
    if let Some(q) = u.query() {
        for (k, v) in query_pieces(q) {
            if let Some(v) = v.filter(|_| is_secret_key(&decode(k))) {
                out.push(v.to_owned());
                out.push(decode(v));
            }
        }
    }
    out.retain(|s| !s.is_empty() && s != MASK);
    // Longest first, so a secret that contains another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` (typically an error message from a library that quotes the URL) with every secret of
/// `url` replaced by [`MASK`]. Fails closed: if `url` does not parse, the secrets cannot be
/// found, and the text is replaced whole.
pub fn scrub(text: &str, url: &str) -> String {
    if url::Url::parse(url).is_err() {
        return REDACTED.to_owned();
    }
    let mut text = text.to_owned();
    for s in secrets_of(url) {
        text = text.replace(&s, MASK);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_masked() {
        assert_eq!(
            mask_url("rtsp://admin:hunter2@cam.local:554/s1"),
            "rtsp://admin:***@cam.local:554/s1"
        );
        assert_eq!(
            mask_url("rtsp://cam/s?user=admin&password=hunter2&channel=1"),
            "rtsp://cam/s?user=admin&password=***&channel=1"
        );
        assert_eq!(
            mask_url("rtsp://cam/s?Token=abc&x=%41"),
            "rtsp://cam/s?Token=***&x=%41"
        );
        assert_eq!(mask_url("rtsp://cam/s"), "rtsp://cam/s");
        assert_eq!(mask_url("rtsp://admin@cam/s"), "rtsp://admin@cam/s");
    }

    #[test]
    fn masking_fails_closed() {
        assert_eq!(mask_url("not a url with hunter2"), REDACTED);
        assert_eq!(mask_url("rtsp://u:p/ss@cam/s"), REDACTED);
        // An unescaped '#' in a password: the rest would land in the port and fragment.
        assert_eq!(mask_url("rtsp://u:12#hunter2@cam/s"), REDACTED);
        assert_eq!(scrub("failed: hunter2", "::not a url"), REDACTED);
    }

    #[test]
    fn a_masked_url_sent_back_keeps_the_stored_secrets() {
        let stored = "rtsp://admin:p%40ss@cam:554/s1?password=q1&pwd=x";
        let shown = mask_url(stored);
        assert_eq!(shown, "rtsp://admin:***@cam:554/s1?password=***&pwd=***");
        assert_eq!(restore_masked(&shown, Some(stored)), Ok(stored.to_owned()));
        // Other changes on the same server are fine.
        assert_eq!(
            restore_masked("rtsp://admin:***@cam/s2?password=***&pwd=***", Some(stored)),
            Ok("rtsp://admin:p%40ss@cam/s2?password=q1&pwd=x".to_owned())
        );
        // A URL without masks is taken as sent.
        assert_eq!(
            restore_masked("rtsp://u:new@elsewhere/s", Some(stored)),
            Ok("rtsp://u:new@elsewhere/s".to_owned())
        );
    }

    #[test]
    fn secrets_are_never_carried_to_another_server() {
        let stored = "rtsp://admin:hunter2@cam:554/s1";
        for other in [
            "rtsp://admin:***@evil:554/s1",
            "rtsp://admin:***@cam:8554/s1",
            "rtsps://admin:***@cam:554/s1",
        ] {
            assert_eq!(
                restore_masked(other, Some(stored)),
                Err(RestoreError::OtherServer)
            );
        }
        assert_eq!(
            restore_masked("rtsp://admin:***@cam/s", None),
            Err(RestoreError::OtherServer)
        );
        assert_eq!(
            restore_masked("rtsp://cam:554/s1?token=***", Some(stored)),
            Err(RestoreError::NoStoredValue("token".into()))
        );
    }

    #[test]
    fn scrub_removes_raw_and_decoded_secrets() {
        let url = "rtsp://u:p%40ss%21@cam/s?token=t0k3n";
        let text = "DESCRIBE rtsp://cam/s?token=t0k3n failed for p@ss! (p%40ss%21)";
        let out = scrub(text, url);
        assert!(!out.contains("t0k3n") && !out.contains("p@ss") && !out.contains("p%40ss"));
        assert!(out.contains("DESCRIBE rtsp://cam/s?token=***"), "{out}");
    }
}
