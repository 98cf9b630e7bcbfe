//! Signed player URLs: `exp=<unix s>&act=<actions>&tok=<token id>&sig=<mac>` appended to a
//! stream's `/ws/live`, `/ws/archive`, `/hls/...` or `export.mp4` URL.
//!
//! Browsers cannot put an `Authorization` header on `<video src>`, a WebSocket or the segment
//! requests of a player, so a token holder asks the server to sign a query that grants some of its
//! own actions on one stream until `exp`. The MAC is HMAC-SHA-256 with a server key kept in the
//! database, over a version tag, the stream id, the actions, the expiry and the signing token's
//! id. The token id is part of the signature so that revoking (or narrowing) the token also ends
//! the URLs it signed, without rotating the key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::scope::Actions;
use crate::db::signing_keys::SigningKey;

type HmacSha256 = Hmac<Sha256>;

/// Names of the query parameters, shared by every route that accepts signed URLs.
pub const EXP: &str = "exp";
pub const ACT: &str = "act";
pub const TOK: &str = "tok";
pub const SIG: &str = "sig";

/// Version tag in the signed message: a future format change cannot be confused with this one.
const MESSAGE_VERSION: &str = "vs-sig-1";

/// The signed part of a player URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    /// Expiry, Unix seconds.
    pub exp: i64,
    pub actions: Actions,
    /// The token that signed it (`None` only for URLs signed while auth was off, which are never
    /// accepted once it is on).
    pub token: Option<String>,
    /// base64url HMAC.
    pub sig: String,
}

/// The bytes the MAC covers.
fn message(stream: Uuid, actions: Actions, exp: i64, token: Option<&str>) -> String {
    format!(
        "{MESSAGE_VERSION}\n{stream}\n{}\n{exp}\n{}",
        actions.to_list(),
        token.unwrap_or("")
    )
}

fn mac(key: &[u8], msg: &str) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(msg.as_bytes());
    m
}

impl SignedQuery {
    /// Signs `actions` on `stream` until `exp` with `key`.
    pub fn sign(
        key: &SigningKey,
        stream: Uuid,
        actions: Actions,
        exp: i64,
        token: Option<String>,
    ) -> SignedQuery {
        let tag = mac(
            &key.secret,
            &message(stream, actions, exp, token.as_deref()),
        )
        .finalize()
        .into_bytes();
        SignedQuery {
            exp,
            actions,
            token,
            sig: URL_SAFE_NO_PAD.encode(tag),
        }
    }

    /// Whether the signature was made for `stream` by one of `keys` (compared in constant time).
    pub fn verify(&self, keys: &[SigningKey], stream: Uuid) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(&self.sig) else {
            return false;
        };
        let msg = message(stream, self.actions, self.exp, self.token.as_deref());
        keys.iter()
            .any(|k| mac(&k.secret, &msg).verify_slice(&tag).is_ok())
    }

    /// The query string form (no leading `?`). Every value is URL-safe as it stands.
    pub fn to_query(&self) -> String {
        let mut q = format!("{EXP}={}&{ACT}={}", self.exp, self.actions.to_list());
        if let Some(t) = &self.token {
            q.push_str(&format!("&{TOK}={t}"));
        }
        q.push_str(&format!("&{SIG}={}", self.sig));
        q
    }

    /// Reads the signature parameters of a raw query string: `None` when it has no `sig`,
    /// `Some(Err)` when `sig` is there but the rest is malformed. Only the first occurrence of
    /// each parameter counts (as for every other parameter of these routes).
    pub fn from_query(raw: Option<&str>) -> Option<Result<SignedQuery, &'static str>> {
        let param = |name: &str| {
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let sig = param(SIG)?;
        let parsed = (|| {
            let exp = param(EXP)
                .and_then(|e| e.parse::<i64>().ok())
                .ok_or("the signed URL has no valid exp")?;
            let actions = param(ACT)
                .and_then(|a| Actions::parse_list(&a).ok())
                .filter(|a| !a.is_empty())
                .ok_or("the signed URL has no valid act")?;
            Ok(SignedQuery {
                exp,
                actions,
                token: param(TOK),
                sig,
            })
        })();
        Some(parsed)
    }
}

/// Header carrying a node proof (cluster mode): on the internal segment endpoint, and on a live
/// WebSocket another node opens to relay the stream ([`live_relay_subject`]).
pub const NODE_PROOF_HEADER: &str = "x-video-server-node-proof";

/// What a node proof covers when a node opens `/ws/live` of `stream` on its holder, to relay it
/// to its own viewers. Never a segment key: those are absolute paths.
pub fn live_relay_subject(stream: Uuid) -> String {
    format!("live-relay:{stream}")
}

/// Longest lifetime of a node proof a node accepts (seconds from now): proofs are made per
/// request with a short expiry, so a captured one is worth little.
pub const NODE_PROOF_MAX_TTL_S: i64 = 300;

/// Version tag of node proofs: never the same message as a signed player URL's.
const NODE_MESSAGE_VERSION: &str = "vs-node-1";

/// Proof that a request comes from a node of the cluster: an HMAC with the shared signing key
/// over what it asks for (a segment key, or [`live_relay_subject`]) and an expiry. Only
/// processes that can read the index hold the key, and a proof opens one segment key (or one
/// stream's live WebSocket) for a short time. Header form: `<exp>.<sig>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProof {
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// base64url HMAC.
    pub sig: String,
}

fn node_message(segment_key: &str, exp: i64) -> String {
    format!("{NODE_MESSAGE_VERSION}\n{segment_key}\n{exp}")
}

impl NodeProof {
    /// A proof for reading `segment_key` until `exp`, made with `key`.
    pub fn sign(key: &SigningKey, segment_key: &str, exp: i64) -> NodeProof {
        let tag = mac(&key.secret, &node_message(segment_key, exp))
            .finalize()
            .into_bytes();
        NodeProof {
            exp,
            sig: URL_SAFE_NO_PAD.encode(tag),
        }
    }

    /// Whether one of `keys` made this proof for `segment_key` (constant-time comparison).
    pub fn verify(&self, keys: &[SigningKey], segment_key: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(&self.sig) else {
            return false;
        };
        let msg = node_message(segment_key, self.exp);
        keys.iter()
            .any(|k| mac(&k.secret, &msg).verify_slice(&tag).is_ok())
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!("{}.{}", self.exp, self.sig)
    }

    /// Reads a header value (`None` when it is not `<exp>.<sig>`).
    pub fn from_header(value: &str) -> Option<NodeProof> {
        let (exp, sig) = value.trim().split_once('.')?;
        let exp = exp.parse::<i64>().ok()?;
        (!sig.is_empty()).then(|| NodeProof {
            exp,
            sig: sig.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Action;

    fn key(id: i64, byte: u8) -> SigningKey {
        SigningKey {
            id,
            secret: vec![byte; 32],
            created_at_us: 0,
            valid_until_us: None,
        }
    }

    #[test]
    fn node_proofs_cover_the_segment_key_and_expiry() {
        let (k1, k2) = (key(1, 1), key(2, 2));
        let p = NodeProof::sign(&k1, "/archive/a.mp4", 2_000_000_000);
        let parsed = NodeProof::from_header(&p.to_header()).expect("parses");
        assert_eq!(parsed, p);
        assert!(p.verify(&[k2.clone(), k1.clone()], "/archive/a.mp4"));
        assert!(!p.verify(std::slice::from_ref(&k2), "/archive/a.mp4"));
        assert!(!p.verify(std::slice::from_ref(&k1), "/archive/b.mp4"));
        let later = NodeProof {
            exp: p.exp + 1,
            ..p.clone()
        };
        assert!(!later.verify(std::slice::from_ref(&k1), "/archive/a.mp4"));
        // Never interchangeable with a player URL's signature over similar text.
        for bad in ["", "123", ".abc", "x.abc", "123."] {
            assert!(NodeProof::from_header(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_cover_stream_actions_expiry_and_token() {
        let (k1, k2) = (key(1, 1), key(2, 2));
        let stream = Uuid::new_v4();
        let live: Actions = [Action::Live].into_iter().collect();
        let q = SignedQuery::sign(
            &k1,
            stream,
            live,
            2_000_000_000,
            Some("0123456789abcdef".into()),
        );
        assert!(q.verify(std::slice::from_ref(&k1), stream));
        assert!(q.verify(&[k2.clone(), k1.clone()], stream), "any valid key");
        assert!(!q.verify(std::slice::from_ref(&k2), stream), "other key");
        assert!(
            !q.verify(std::slice::from_ref(&k1), Uuid::new_v4()),
            "other stream"
        );
        let tampered = [
            SignedQuery {
                exp: q.exp + 1,
                ..q.clone()
            },
            SignedQuery {
                actions: Actions::all(),
                ..q.clone()
            },
            SignedQuery {
                token: Some("fedcba9876543210".into()),
                ..q.clone()
            },
            SignedQuery {
                token: None,
                ..q.clone()
            },
            SignedQuery {
                sig: format!("{}A", q.sig),
                ..q.clone()
            },
            SignedQuery {
                sig: "not base64!".into(),
                ..q.clone()
            },
        ];
        for t in tampered {
            assert!(!t.verify(std::slice::from_ref(&k1), stream), "{t:?}");
        }
    }

    #[test]
    fn query_round_trip() {
        let stream = Uuid::new_v4();
        let acts = Actions::parse_list("archive,live").expect("valid");
        let q = SignedQuery::sign(&key(1, 7), stream, acts, 1_900_000_000, Some("ab".into()));
        let text = format!("stream_id={stream}&{}", q.to_query());
        assert_eq!(SignedQuery::from_query(Some(&text)), Some(Ok(q)));
        assert_eq!(SignedQuery::from_query(Some("stream_id=x")), None);
        assert!(matches!(
            SignedQuery::from_query(Some("sig=abc&act=live")),
            Some(Err(_))
        ));
        assert!(matches!(
            SignedQuery::from_query(Some("sig=abc&exp=1&act=fly")),
            Some(Err(_))
        ));
    }
}
