//! Access control: who is calling ([`Caller`]), what they may do ([`scope::Grant`]), tokens,
//! signed player URLs and the audit log.
//!
//! This module decides; `api::policy` (the route policy table and its middleware) asks. Nothing
//! here knows HTTP status codes.
//!
//! # Credentials
//! * A **token** (`Authorization: Bearer vs_<id>_<secret>`, see [`token`]) stored as a digest in
//!   the `tokens` table. Lookups are cached for [`TOKEN_CACHE_TTL`]: a token deleted through this
//!   server stops working at once; one deleted through another process or the CLI within that time.
//! * The **bootstrap admin token** from `VIDEO_SERVER_ADMIN_TOKEN` or `[auth] admin_token_file`:
//!   any string of at least 32 characters chosen by the operator, kept in memory as a digest.
//! * A **signed URL** ([`signing`]) that delegates some of a token's actions on one stream until
//!   an expiry.

pub mod audit;
pub mod scope;
pub mod signing;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::{ADMIN_TOKEN_ENV, AuthConfig};
use crate::db::signing_keys::{self, SigningKey};
use crate::db::tokens::{self, TokenRow};
use crate::db::{Db, DbError, now_us};
use scope::{Actions, Grant, Streams};
use signing::SignedQuery;

/// How long a token lookup is reused. Revocation through another process (or the CLI) takes
/// effect within this time; through this server's API at once.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long the set of signing keys is reused. A rotation made elsewhere is seen within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// A signature that fails with keys older than this triggers one reload (a key rotated by another
/// process), at most once per this interval.
const KEY_RELOAD_ON_MISS: Duration = Duration::from_secs(1);
/// Most token lookups cached; beyond it the cache is emptied (lookups are cheap primary-key reads).
const TOKEN_CACHE_MAX: usize = 10_000;
/// The token id under which the bootstrap admin token appears in the audit log and in signatures.
pub const BOOTSTRAP_ID: &str = "bootstrap";
/// Longest lifetime of a token (ten years): beyond it a typo in a unit is more likely than intent.
pub const MAX_TOKEN_TTL_S: u64 = 10 * 366 * 86_400;

/// How the caller identified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Auth is off: everyone may do everything.
    Open,
    /// No credential, on a public route.
    Anonymous,
    /// Another node of the cluster, by a node proof (`signing::NodeProof`): internal routes, and
    /// the live WebSocket of the one stream it relays.
    Node,
    /// A token from the `tokens` table.
    Token { id: String },
    /// The bootstrap admin token.
    Bootstrap,
    /// A signed URL; `query` is its signature part, to append to URLs the answer refers to
    /// (HLS playlists).
    Signed {
        token: Option<String>,
        query: String,
    },
}

/// The authenticated caller of a request, available to handlers as a request extension.
#[derive(Debug, Clone)]
pub struct Caller {
    pub credential: Credential,
    pub grant: Grant,
    /// The TCP peer, when the listener records it.
    pub peer: Option<IpAddr>,
}

impl Caller {
    /// Auth is off: full rights.
    pub fn open(peer: Option<IpAddr>) -> Caller {
        Caller {
            credential: Credential::Open,
            grant: Grant::admin(),
            peer,
        }
    }

    /// No credential (a public route with auth on): no rights.
    pub fn anonymous(peer: Option<IpAddr>) -> Caller {
        Caller {
            credential: Credential::Anonymous,
            grant: Grant::nothing(),
            peer,
        }
    }

    /// Another node of the cluster (a valid node proof): no rights on streams; internal routes
    /// admit it by their policy (`Access::Node`).
    pub fn node(peer: Option<IpAddr>) -> Caller {
        Caller {
            credential: Credential::Node,
            grant: Grant::nothing(),
            peer,
        }
    }

    /// Another node relaying stream `stream` to its own viewers (a valid node proof over
    /// [`signing::live_relay_subject`]): `live` on that stream and nothing else. Each of that
    /// node's viewers was authorised there, by its own credentials, before it joined the relay.
    pub fn relay_node(peer: Option<IpAddr>, stream: Uuid) -> Caller {
        Caller {
            credential: Credential::Node,
            grant: Grant {
                admin: false,
                streams: Streams::Only([stream].into()),
                actions: [scope::Action::Live].into_iter().collect(),
            },
            peer,
        }
    }

    /// The key per-client limits count by: `token:<id>` for token holders, `ip:<address>` for
    /// everyone else (signed URLs are shared with players, so they count by address). An IPv6
    /// peer counts by its /64 (one host usually owns a whole /64 and could rotate through it); an
    /// IPv4-mapped IPv6 address is its IPv4 address.
    pub fn client_key(&self) -> String {
        match &self.credential {
            Credential::Token { id } => format!("token:{id}"),
            Credential::Bootstrap => format!("token:{BOOTSTRAP_ID}"),
            _ => match self.peer {
                Some(ip) => format!("ip:{}", address_key(ip)),
                None => "ip:unknown".to_owned(),
            },
        }
    }

    /// The token that authenticated the request, directly or by signing its URL.
    pub fn token_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Token { id } => Some(id),
            Credential::Bootstrap => Some(BOOTSTRAP_ID),
            Credential::Signed { token, .. } => token.as_deref(),
            Credential::Open | Credential::Anonymous | Credential::Node => None,
        }
    }

    /// The credential's kind as the audit log stores it.
    pub fn credential_kind(&self) -> &'static str {
        match self.credential {
            // A node proof is no credential of a person or program the audit log could name
            // (and the log's `credential` column allows these four kinds only).
            Credential::Open | Credential::Anonymous | Credential::Node => "none",
            Credential::Token { .. } => "token",
            Credential::Bootstrap => "bootstrap",
            Credential::Signed { .. } => "signed",
        }
    }

    /// `action` on stream `id`.
    pub fn can(&self, action: scope::Action, id: Uuid) -> bool {
        self.grant.allows(action, id)
    }

    /// Whether listings show stream `id` to this caller.
    pub fn sees(&self, id: Uuid) -> bool {
        self.grant.sees(id)
    }

    pub fn is_admin(&self) -> bool {
        self.grant.admin
    }

    /// The signature query of a signed-URL caller.
    pub fn signed_query(&self) -> Option<&str> {
        match &self.credential {
            Credential::Signed { query, .. } => Some(query),
            _ => None,
        }
    }
}

/// An address as per-client limits count it: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// Why a credential was not accepted. Every variant but `Unavailable` is the client's problem.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials required: send Authorization: Bearer <token>, or use a signed URL")]
    Missing,
    #[error("malformed Authorization header: expected 'Bearer <token>'")]
    Malformed,
    #[error("unknown or revoked token")]
    UnknownToken,
    #[error("the token has expired")]
    Expired,
    #[error("invalid signature")]
    BadSignature,
    #[error("{0}")]
    MalformedSignature(&'static str),
    #[error("the signed URL has expired")]
    SignatureExpired,
    #[error("the token that signed this URL is no longer valid")]
    SignerRevoked,
    #[error("internal route: {0}")]
    NodeProof(&'static str),
    #[error("credentials cannot be checked right now")]
    Unavailable(#[source] DbError),
}

/// Errors of the token and key operations shared by the API and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum AuthOpError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// What a new token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub name: String,
    pub admin: bool,
    pub streams: Streams,
    pub actions: Actions,
    pub expires_at_us: Option<i64>,
}

/// A token lookup (`None`: no such token) and when it was made.
type CachedToken = (Option<Arc<TokenRow>>, Instant);

/// The access-control service: one per server, shared by both listeners.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    db: Db,
    /// SHA-256 of the bootstrap admin token.
    bootstrap: Option<[u8; 32]>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    keys: Mutex<(Arc<Vec<SigningKey>>, Option<Instant>)>,
    reload_lock: tokio::sync::Mutex<()>,
    pub audit: Arc<audit::AuditSink>,
    pub max_signed_ttl_s: u64,
    pub metrics_public: bool,
    audit_retention_days: u64,
}

/// Start-up failures of access control.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("[auth] admin_token_file {path}: {message}")]
    TokenFile { path: String, message: String },
    #[error("{ADMIN_TOKEN_ENV}: {0}")]
    TokenEnv(String),
    #[error(transparent)]
    Op(#[from] AuthOpError),
}

/// Checks an operator-chosen bootstrap token and returns its digest.
fn bootstrap_digest(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    if t.chars().count() < token::MIN_BOOTSTRAP_LEN {
        return Err(format!(
            "the admin token must be at least {} characters (e.g. `openssl rand -hex 32`)",
            token::MIN_BOOTSTRAP_LEN
        ));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the admin token must not contain spaces or control characters".into());
    }
    Ok(token::digest(t))
}

/// Reads the bootstrap admin token from the environment and/or `[auth] admin_token_file`.
fn load_bootstrap(cfg: &AuthConfig) -> Result<Vec<[u8; 32]>, AuthSetupError> {
    let mut out = Vec::new();
    if let Ok(v) = std::env::var(ADMIN_TOKEN_ENV)
        && !v.trim().is_empty()
    {
        out.push(bootstrap_digest(&v).map_err(AuthSetupError::TokenEnv)?);
    }
    if !cfg.admin_token_file.trim().is_empty() {
        let path = cfg.admin_token_file.trim();
        let err = |message: String| AuthSetupError::TokenFile {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let first = text.lines().next().unwrap_or("");
        out.push(bootstrap_digest(first).map_err(err)?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o004 != 0
            {
                tracing::warn!(
                    file = path,
                    "the admin token file is readable by every user: chmod 600 it"
                );
            }
        }
    }
    Ok(out)
}

fn unix_now_s() -> i64 {
    now_us().div_euclid(1_000_000)
}

impl Auth {
    /// Sets up access control for a server: reads the bootstrap token, makes sure a signing key
    /// exists. Call [`Auth::spawn_audit_writer`] to get entries written.
    pub async fn new(cfg: &AuthConfig, db: Db) -> Result<Arc<Auth>, AuthSetupError> {
        let bootstraps = load_bootstrap(cfg)?;
        if bootstraps.len() > 1 && bootstraps[0] != bootstraps[1] {
            tracing::warn!(
                "{ADMIN_TOKEN_ENV} and [auth] admin_token_file hold different tokens: only the \
                 environment variable is accepted"
            );
        }
        let auth = Arc::new(Auth {
            enabled: cfg.enabled,
            db,
            bootstrap: bootstraps.first().copied(),
            tokens: Mutex::new(HashMap::new()),
            keys: Mutex::new((Arc::new(Vec::new()), None)),
            reload_lock: tokio::sync::Mutex::new(()),
            audit: Arc::new(audit::AuditSink::default()),
            max_signed_ttl_s: cfg.max_signed_ttl_s,
            metrics_public: cfg.metrics_public,
            audit_retention_days: cfg.audit_retention_days,
        });
        ensure_signing_key(&auth.db).await?;
        if cfg.enabled {
            if auth.bootstrap.is_some() {
                tracing::info!("auth is on; the bootstrap admin token is accepted");
            } else {
                match tokens::count_usable_admins(&auth.db, now_us()).await {
                    Ok(0) => tracing::warn!(
                        "auth is on but no admin token exists: create one with \
                         `video-server token create --admin`, or set {ADMIN_TOKEN_ENV}"
                    ),
                    Ok(_) => tracing::info!("auth is on"),
                    Err(e) => return Err(AuthOpError::Db(e).into()),
                }
            }
        } else if auth.bootstrap.is_some() {
            tracing::warn!(
                "an admin token is configured but [auth] enabled is false: it is not needed"
            );
        }
        Ok(auth)
    }

    /// Starts the audit writer; it stops (after writing what is queued) when `stop` is cancelled.
    pub fn spawn_audit_writer(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.audit
            .spawn_writer(self.db.clone(), self.audit_retention_days, stop)
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Checks a bearer token.
    pub async fn authenticate_bearer(&self, text: &str) -> Result<(Credential, Grant), AuthError> {
        let text = text.trim();
        if let Some(b) = &self.bootstrap
            && bool::from(token::digest(text).ct_eq(b))
        {
            return Ok((Credential::Bootstrap, Grant::admin()));
        }
        let (id, secret) = token::parse(text).ok_or(AuthError::UnknownToken)?;
        let row = self.token(id).await?.ok_or(AuthError::UnknownToken)?;
        // A wrong secret answers like an unknown id: no oracle for which ids exist.
        if !token::secret_matches(secret, &row.secret_sha256) {
            return Err(AuthError::UnknownToken);
        }
        if row.expires_at_us.is_some_and(|e| e <= now_us()) {
            return Err(AuthError::Expired);
        }
        Ok((Credential::Token { id: row.id.clone() }, grant_of(&row)))
    }

    /// Checks a signed URL for `stream`. The grant is what the URL names, minus what its signer
    /// may no longer do.
    pub async fn authenticate_signed(
        &self,
        stream: Uuid,
        q: &SignedQuery,
    ) -> Result<(Credential, Grant), AuthError> {
        if q.exp <= unix_now_s() {
            return Err(AuthError::SignatureExpired);
        }
        let (keys, age) = self.keys().await?;
        let mut valid = q.verify(&keys, stream);
        if !valid && age >= KEY_RELOAD_ON_MISS {
            let keys = self.reload_keys().await?;
            valid = q.verify(&keys, stream);
        }
        if !valid {
            return Err(AuthError::BadSignature);
        }
        let signer = match q.token.as_deref() {
            // Signed while auth was off: never a credential once it is on.
            None => return Err(AuthError::BadSignature),
            Some(BOOTSTRAP_ID) if self.bootstrap.is_some() => Grant::admin(),
            Some(BOOTSTRAP_ID) => return Err(AuthError::SignerRevoked),
            Some(id) => {
                let row = self.token(id).await?.ok_or(AuthError::SignerRevoked)?;
                if row.expires_at_us.is_some_and(|e| e <= now_us()) {
                    return Err(AuthError::SignerRevoked);
                }
                grant_of(&row)
            }
        };
        let actions: Actions = q
            .actions
            .iter()
            .filter(|a| signer.allows(*a, stream))
            .collect();
        Ok((
            Credential::Signed {
                token: q.token.clone(),
                query: q.to_query(),
            },
            Grant {
                admin: false,
                streams: Streams::Only([stream].into()),
                actions,
            },
        ))
    }

    /// Signs `actions` on `stream` for `ttl_s` seconds on behalf of `caller`. The caller must
    /// hold the actions (the API checks before calling).
    pub async fn sign(
        &self,
        caller: &Caller,
        stream: Uuid,
        actions: Actions,
        ttl_s: u64,
    ) -> Result<SignedQuery, AuthError> {
        let (keys, _) = self.keys().await?;
        let key = match keys.first() {
            Some(k) => k.clone(),
            None => {
                let keys = self.reload_keys().await?;
                keys.first()
                    .cloned()
                    .ok_or(AuthError::Unavailable(DbError::Corrupt(
                        "no signing key".into(),
                    )))?
            }
        };
        let ttl = i64::try_from(ttl_s).unwrap_or(i64::MAX);
        let exp = unix_now_s().saturating_add(ttl);
        Ok(SignedQuery::sign(
            &key,
            stream,
            actions,
            exp,
            caller.token_id().map(str::to_owned),
        ))
    }

    /// A node proof for reading `segment_key` from another node of the cluster (its internal
    /// segment endpoint), valid for `ttl_s` seconds. Made with the current signing key, which
    /// every node reads from the shared index whether `[auth]` is on or not.
    pub async fn node_proof(
        &self,
        segment_key: &str,
        ttl_s: i64,
    ) -> Result<signing::NodeProof, AuthError> {
        let (keys, _) = self.keys().await?;
        let key = match keys.first() {
            Some(k) => k.clone(),
            None => self
                .reload_keys()
                .await?
                .first()
                .cloned()
                .ok_or(AuthError::Unavailable(DbError::Corrupt(
                    "no signing key".into(),
                )))?,
        };
        let exp = unix_now_s().saturating_add(ttl_s.clamp(1, signing::NODE_PROOF_MAX_TTL_S));
        Ok(signing::NodeProof::sign(&key, segment_key, exp))
    }

    /// Checks a node proof for `segment_key`: made with a valid signing key, not expired, and
    /// not valid for longer than [`signing::NODE_PROOF_MAX_TTL_S`].
    pub async fn verify_node_proof(
        &self,
        segment_key: &str,
        proof: &signing::NodeProof,
    ) -> Result<(), AuthError> {
        let now = unix_now_s();
        if proof.exp <= now {
            return Err(AuthError::NodeProof("the node proof has expired"));
        }
        if proof.exp > now.saturating_add(signing::NODE_PROOF_MAX_TTL_S) {
            return Err(AuthError::NodeProof("the node proof is valid for too long"));
        }
        let (keys, age) = self.keys().await?;
        let mut valid = proof.verify(&keys, segment_key);
        if !valid && age >= KEY_RELOAD_ON_MISS {
            valid = proof.verify(&self.reload_keys().await?, segment_key);
        }
        if valid {
            Ok(())
        } else {
            Err(AuthError::NodeProof("invalid node proof"))
        }
    }

    /// Resolves once `caller` may no longer `action` stream `id`: its token (for a signed URL,
    /// the token that signed it) was deleted, expired or lost the action. Checked every
    /// [`TOKEN_CACHE_TTL`]; a database error counts as "still valid" (an outage must not cut
    /// every session). Never resolves for callers without a token (auth off, the bootstrap admin
    /// token). Long sessions (a live WebSocket) end with it; a signed URL's own expiry only
    /// bounds when a session may start.
    pub async fn revoked(&self, caller: &Caller, action: scope::Action, id: Uuid) {
        let token = match &caller.credential {
            Credential::Token { id } => id.clone(),
            Credential::Signed { token: Some(t), .. } if t != BOOTSTRAP_ID => t.clone(),
            _ => return std::future::pending().await,
        };
        loop {
            tokio::time::sleep(TOKEN_CACHE_TTL).await;
            match self.token(&token).await {
                Ok(None) => return,
                Ok(Some(row)) => {
                    if row.expires_at_us.is_some_and(|e| e <= now_us())
                        || !grant_of(&row).allows(action, id)
                    {
                        return;
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Deletes a token and forgets it at once.
    pub async fn revoke(&self, id: &str) -> Result<bool, DbError> {
        let found = tokens::delete(&self.db, id).await?;
        self.forget(id);
        Ok(found)
    }

    /// Drops a cached lookup (after creating or deleting the token).
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.tokens.lock() {
            cache.remove(id);
        }
    }

    /// A token row, from the cache when fresh.
    async fn token(&self, id: &str) -> Result<Option<Arc<TokenRow>>, AuthError> {
        if let Ok(cache) = self.tokens.lock()
            && let Some((row, at)) = cache.get(id)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(row.clone());
        }
        let row = tokens::get(&self.db, id)
            .await
            .map_err(AuthError::Unavailable)?
            .map(Arc::new);
        if let Ok(mut cache) = self.tokens.lock() {
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
            cache.insert(id.to_owned(), (row.clone(), Instant::now()));
        }
        Ok(row)
    }

    /// The keys that verify now (newest first) and how old that knowledge is.
    async fn keys(&self) -> Result<(Arc<Vec<SigningKey>>, Duration), AuthError> {
        let cached = self.keys.lock().ok().and_then(|k| {
            let age = k.1?.elapsed();
            (age < KEY_CACHE_TTL).then(|| (k.0.clone(), age))
        });
        let (keys, age) = match cached {
            Some(c) => c,
            None => (self.reload_keys().await?, Duration::ZERO),
        };
        // A key whose grace ended since it was read no longer counts.
        let now = now_us();
        if keys
            .iter()
            .all(|k| k.valid_until_us.is_none_or(|u| u > now))
        {
            return Ok((keys, age));
        }
        let live: Vec<SigningKey> = keys
            .iter()
            .filter(|k| k.valid_until_us.is_none_or(|u| u > now))
            .cloned()
            .collect();
        Ok((Arc::new(live), age))
    }

    async fn reload_keys(&self) -> Result<Arc<Vec<SigningKey>>, AuthError> {
        // One reload at a time; callers that waited take the fresh result.
        let _guard = self.reload_lock.lock().await;
        if let Ok(k) = self.keys.lock()
            && let Some(at) = k.1
            && at.elapsed() < KEY_RELOAD_ON_MISS.min(KEY_CACHE_TTL)
        {
            return Ok(k.0.clone());
        }
        let keys = Arc::new(
            signing_keys::valid(&self.db, now_us())
                .await
                .map_err(AuthError::Unavailable)?,
        );
        if let Ok(mut k) = self.keys.lock() {
            *k = (keys.clone(), Some(Instant::now()));
        }
        Ok(keys)
    }
}

/// What a token row allows. A row whose scope cannot be parsed (edited by hand) allows nothing.
pub fn grant_of(row: &TokenRow) -> Grant {
    if row.admin {
        return Grant::admin();
    }
    match (
        Streams::parse_list(&row.streams),
        Actions::parse_list(&row.actions),
    ) {
        (Ok(streams), Ok(actions)) => Grant {
            admin: false,
            streams,
            actions,
        },
        _ => {
            tracing::error!(token = %row.id, "token row has an unreadable scope: it allows nothing");
            Grant::nothing()
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthOpError> {
    use rand::TryRngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| AuthOpError::Random(e.to_string()))?;
    Ok(b)
}

/// Creates key 1 if the database has no signing key yet.
pub async fn ensure_signing_key(db: &Db) -> Result<(), AuthOpError> {
    signing_keys::ensure(db, &random_bytes::<32>()?).await?;
    Ok(())
}

/// Replaces the signing key; the previous one keeps verifying for `grace` (README "Signed
/// URLs"). Returns the new key's id.
pub async fn rotate_signing_key(db: &Db, grace: Duration) -> Result<i64, AuthOpError> {
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    Ok(signing_keys::rotate(db, &random_bytes::<32>()?, grace_us).await?)
}

/// Creates a token; returns its row and the full token text (shown once, never stored).
pub async fn create_token(
    db: &Db,
    spec: &TokenSpec,
    created_by: Option<&str>,
) -> Result<(TokenRow, String), AuthOpError> {
    let new = token::NewToken::generate().map_err(|e| AuthOpError::Random(e.to_string()))?;
    let row = TokenRow {
        id: new.id.clone(),
        name: spec.name.clone(),
        secret_sha256: new.digest().to_vec(),
        admin: spec.admin,
        streams: if spec.admin {
            String::new()
        } else {
            spec.streams.to_list()
        },
        actions: if spec.admin {
            String::new()
        } else {
            spec.actions.to_list()
        },
        created_at_us: now_us(),
        expires_at_us: spec.expires_at_us,
        created_by: created_by.map(str::to_owned),
    };
    tokens::insert(db, &row).await?;
    Ok((row, new.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(Caller::open(Some(ip)).client_key(), "ip:192.0.2.7");
        assert_eq!(Caller::anonymous(None).client_key(), "ip:unknown");
        let t = Caller {
            credential: Credential::Token { id: "abc".into() },
            grant: Grant::nothing(),
            peer: Some(ip),
        };
        assert_eq!(t.client_key(), "token:abc");
        let s = Caller {
            credential: Credential::Signed {
                token: Some("abc".into()),
                query: String::new(),
            },
            grant: Grant::nothing(),
            peer: Some(ip),
        };
        assert_eq!(s.client_key(), "ip:192.0.2.7");
        assert_eq!(s.token_id(), Some("abc"));
        let key = |a: &str| Caller::open(Some(a.parse().expect("ip"))).client_key();
        assert_eq!(key("::ffff:192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn bootstrap_tokens_must_be_long_and_plain() {
        assert!(bootstrap_digest("short").is_err());
        assert!(bootstrap_digest(&"a b".repeat(20)).is_err());
        let long = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            bootstrap_digest(&format!("{long}\n")),
            Ok(token::digest(long))
        );
    }
}
