//! The token format: `vs_<id>_<secret>`.
//!
//! `<id>` (16 hex digits, 64 random bits) names the token in listings, the audit log and
//! `DELETE /api/v1/tokens/{id}`; it is not secret. `<secret>` is 32 random bytes in unpadded
//! base64url (43 characters). Only SHA-256 of the secret is stored, and a presented token is
//! checked by looking the id up and comparing digests in constant time.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token starts with this, so a leaked token is recognisable (secret scanners, logs).
pub const PREFIX: &str = "vs_";
/// Length of the id part.
pub const ID_LEN: usize = 16;
/// Length of the secret part: 32 bytes in unpadded base64url.
pub const SECRET_LEN: usize = 43;
/// Shortest bootstrap admin token accepted from the environment or a file: 32 characters of a
/// random hex string are 128 bits.
pub const MIN_BOOTSTRAP_LEN: usize = 32;

/// A freshly generated token. The full text exists only here and in the answer to its creator.
pub struct NewToken {
    pub id: String,
    secret: String,
}

impl NewToken {
    /// Draws a new id and secret from the operating system's random source.
    pub fn generate() -> Result<NewToken, rand::rand_core::OsError> {
        let mut id = [0u8; ID_LEN / 2];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut id)?;
        rand::rngs::OsRng.try_fill_bytes(&mut secret)?;
        Ok(NewToken {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            secret: URL_SAFE_NO_PAD.encode(secret),
        })
    }

    /// What the client sends: `vs_<id>_<secret>`.
    pub fn text(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// What the database keeps.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.secret)
    }
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    digest(secret).ct_eq(stored).into()
}

/// Splits `vs_<id>_<secret>` into id and secret; `None` when the text does not have that shape.
pub fn parse(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// Parses a lifetime such as `90s`, `15m`, `12h`, `30d`, `2w` (or plain seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 3600, 90s, 15m, 12h, 30d, 2w)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use s, m, h, d or w)"
            ));
        }
    };
    let secs = n
        .checked_mul(mult)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("'{text}' must be positive and below 2^64 seconds"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_only_their_digest() {
        let t = NewToken::generate().expect("os random");
        let text = t.text();
        let (id, secret) = parse(&text).expect("own format");
        assert_eq!(id, t.id);
        assert!(secret_matches(secret, &t.digest()));
        let other = NewToken::generate().expect("os random");
        assert_ne!(other.id, t.id);
        assert!(!secret_matches(secret, &other.digest()));
        assert!(!format!("{t:?}").contains(secret), "Debug hides the secret");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = NewToken::generate().expect("os random").text();
        for bad in [
            "",
            "vs_",
            "vs_0123456789abcdef",
            "xx_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "vs_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "vs_0123456789abcdef_aaaa",
            "vs_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=",
            "vs_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "vs_é123456789abcde_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse(&t).is_some());
        assert!(parse(&format!("{t}x")).is_none());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in [
            "",
            "d",
            "0",
            "0s",
            "-1d",
            "1y",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
