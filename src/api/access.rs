//! Access-control routes: tokens (`/api/v1/tokens`), the audit log (`/api/v1/audit`) and signed
//! player URLs (`/api/v1/streams/{id}/sign`). Who may call them is in `api::policy`; the rules
//! themselves are in `crate::auth`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::archive::rfc3339_ms;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody, parse_id, parse_uuid};
use crate::auth::scope::{Action, Actions, Streams};
use crate::auth::{self, AuthError, Caller, MAX_TOKEN_TTL_S, TokenSpec};
use crate::db::audit::{self, AuditRow};
use crate::db::now_us;
use crate::db::tokens::{self, TokenRow};

/// Longest token name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Most streams one token may name (a token for more should use `*`). Bounds the work of
/// filtering listings per request.
pub const MAX_TOKEN_STREAMS: usize = 1_000;
/// Default lifetime of a signed URL when `ttl_s` is absent (1 h).
pub const DEFAULT_SIGNED_TTL_S: u64 = 3_600;

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// A label for people (who holds it, what for): at most 200 characters, no control
    /// characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub name: String,
    /// An admin token may do everything; then `streams` and `actions` must be absent (or empty).
    #[serde(default)]
    pub admin: bool,
    /// Stream UUIDs (hyphenated, at most 1000), or `["*"]` for every stream (present and
    /// future). Required (not empty) unless `admin`.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub streams: Vec<String>,
    /// What the token may do on those streams. Required (not empty) unless `admin`.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Lifetime in seconds (at most about ten years); absent: the token never expires.
    #[schema(minimum = 1, maximum = 316224000)]
    pub expires_in_s: Option<u64>,
}

/// A token as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenDto {
    /// The public id: the `<id>` in `vs_<id>_<secret>`, used in `DELETE` and the audit log.
    pub id: String,
    pub name: String,
    pub admin: bool,
    /// `["*"]` or stream UUIDs (empty for admin tokens).
    pub streams: Vec<String>,
    pub actions: Vec<Action>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or `null` if the token never expires.
    pub expires_at: Option<String>,
    pub expired: bool,
    /// The admin token that created it; `null` when made with the CLI.
    pub created_by: Option<String>,
}

/// Answer of `POST /api/v1/tokens`: the listing fields plus the token itself, shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Send it as `Authorization: Bearer <token>`. It cannot be shown again.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenDto,
}

/// Body of `GET /api/v1/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenDto>,
}

impl From<&TokenRow> for TokenDto {
    fn from(r: &TokenRow) -> Self {
        let grant = auth::grant_of(r);
        TokenDto {
            id: r.id.clone(),
            name: r.name.clone(),
            admin: r.admin,
            streams: if r.admin {
                Vec::new()
            } else {
                grant.streams.to_vec()
            },
            actions: if r.admin {
                Vec::new()
            } else {
                grant.actions.iter().collect()
            },
            created_at: rfc3339_ms(r.created_at_us, false),
            expires_at: r.expires_at_us.map(|e| rfc3339_ms(e, false)),
            expired: r.expires_at_us.is_some_and(|e| e <= now_us()),
            created_by: r.created_by.clone(),
        }
    }
}

/// Validates a token request into what to store.
pub fn token_spec(input: TokenInput) -> Result<TokenSpec, ApiError> {
    if input.name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "name",
            format!("name is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if input.name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "name contains control characters",
        ));
    }
    let expires_at_us = match input.expires_in_s {
        None => None,
        Some(s) if (1..=MAX_TOKEN_TTL_S).contains(&s) => Some(
            now_us().saturating_add(
                i64::try_from(s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            ),
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                "expires_in_s",
                format!(
                    "expires_in_s must be within 1..={MAX_TOKEN_TTL_S} (omit it for no expiry)"
                ),
            ));
        }
    };
    if input.admin {
        if !input.streams.is_empty() || !input.actions.is_empty() {
            return Err(ApiError::invalid(
                "admin",
                "an admin token may do everything: omit streams and actions",
            ));
        }
        return Ok(TokenSpec {
            name: input.name,
            admin: true,
            streams: Streams::All,
            actions: Actions::all(),
            expires_at_us,
        });
    }
    if input.streams.is_empty() {
        return Err(ApiError::invalid(
            "streams",
            "streams must list stream UUIDs, or be [\"*\"] for every stream",
        ));
    }
    if input.streams.len() > MAX_TOKEN_STREAMS {
        return Err(ApiError::invalid(
            "streams",
            format!("streams lists more than {MAX_TOKEN_STREAMS} ids: use [\"*\"]"),
        ));
    }
    // Item by item, as the document's pattern states: `*` or one hyphenated UUID (not a comma
    // list, not blank).
    let mut ids = std::collections::BTreeSet::new();
    let mut every = false;
    for item in &input.streams {
        if item == "*" {
            every = true;
        } else if let Some(id) = parse_uuid(item) {
            ids.insert(id);
        } else {
            return Err(ApiError::invalid(
                "streams",
                format!("'{item}' is neither a stream UUID nor '*'"),
            ));
        }
    }
    let streams = if every {
        Streams::All
    } else {
        Streams::Only(ids)
    };
    let actions: Actions = input.actions.into_iter().collect();
    if actions.is_empty() {
        return Err(ApiError::invalid(
            "actions",
            "actions must name at least one of live, archive, export, manage",
        ));
    }
    Ok(TokenSpec {
        name: input.name,
        admin: false,
        streams,
        actions,
        expires_at_us,
    })
}

fn op_error(e: auth::AuthOpError) -> ApiError {
    ApiError::internal(&e)
}

/// Creates a token. The answer is the only time its secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access",
    request_body = TokenInput,
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = CreatedToken),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(input): ApiJson<TokenInput>,
) -> Result<Response, ApiError> {
    let spec = token_spec(input)?;
    let (row, text) = auth::create_token(&state.db, &spec, caller.token_id())
        .await
        .map_err(op_error)?;
    state.auth.forget(&row.id);
    tracing::info!(token = %row.id, admin = row.admin, by = ?caller.token_id(), "token created");
    let body = CreatedToken {
        token: text,
        info: TokenDto::from(&row),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Lists every token (without secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access",
    responses((status = 200, description = "Every token", body = TokenList)))]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let rows = tokens::list(&state.db).await?;
    Ok(Json(TokenList {
        items: rows.iter().map(TokenDto::from).collect(),
    }))
}

/// Deletes (revokes) a token. It stops working at once on this server, and within 5 s on other
/// servers sharing the database; the URLs it signed stop working with it.
#[utoipa::path(delete, path = "/api/v1/tokens/{token_id}", tag = "access",
    params(("token_id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such token", body = ErrorBody),
    ))]
pub async fn delete_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.auth.revoke(&id).await? {
        tracing::info!(token = %id, by = ?caller.token_id(), "token deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("token {id} not found")))
    }
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `next_cursor` of the previous page: a positive decimal number of at most 18 digits.
    #[param(pattern = r"^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339 with milliseconds.
    pub at: String,
    /// The token used (or that signed the URL); `null` without one.
    pub token_id: Option<String>,
    /// `none`, `token`, `signed` or `bootstrap`.
    pub credential: String,
    /// `token:<id>` or `ip:<address>`.
    pub client: String,
    /// What the route needs: `live`, `archive`, `export`, `manage`, `create`, `admin` or `read`.
    pub action: String,
    pub stream_id: Option<Uuid>,
    /// Method and route template, e.g. `DELETE /api/v1/streams/{id}`.
    pub route: String,
    /// HTTP status answered; 101 is an opened WebSocket session, 401/403 a refusal.
    pub status: i32,
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for older entries; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        AuditEntry {
            id: r.id,
            at: rfc3339_ms(r.at_us, false),
            token_id: r.token_id,
            credential: r.credential,
            client: r.client,
            action: r.action,
            stream_id: r.stream_id,
            route: r.route,
            status: r.status,
        }
    }
}

/// The audit log, newest first, a page at a time. Entries are written in batches, usually
/// within a second of the request.
#[utoipa::path(get, path = "/api/v1/audit", tag = "access",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 400, description = "Bad cursor or limit", body = ErrorBody),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be within 1..=1000").with_field("limit"));
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            // Exactly the document's pattern: 1 to 18 digits, no leading zero (so any value
            // fits an i64, and no two spellings name one cursor).
            let digits = !c.is_empty()
                && c.len() <= 18
                && c.bytes().all(|b| b.is_ascii_digit())
                && !c.starts_with('0');
            digits
                .then(|| c.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_cursor",
                        "cursor is not a next_cursor this API returned",
                    )
                    .with_field("cursor")
                })
        })
        .transpose()?;
    let mut rows = audit::page(&state.db, before, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(AuditPage {
        items: rows.into_iter().map(AuditEntry::from).collect(),
        next_cursor,
    }))
}

/// Body of `POST /api/v1/streams/{id}/sign`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInput {
    /// `live` (`/ws/live`, `/hls/...`), `archive` (`/ws/archive`) and/or `export` (`export.mp4`);
    /// at least one, never `manage`.
    #[schema(min_items = 1)]
    pub actions: Vec<Action>,
    /// Lifetime in seconds (default 3600, at most `[auth] max_signed_ttl_s`, 86400 by default;
    /// 422 above it).
    #[schema(minimum = 1)]
    pub ttl_s: Option<u64>,
}

/// A signed query for a stream's player URLs.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUrl {
    /// Append to the stream's URLs: `/ws/live?stream_id=<id>&<query>`,
    /// `/hls/<id>.m3u8?<query>`, `/ws/archive?stream_id=<id>&start=...&<query>`,
    /// `/api/v1/streams/<id>/export.mp4?start=...&end=...&<query>`.
    pub query: String,
    /// When it stops working, RFC 3339.
    pub expires: String,
    /// The same, Unix seconds (the `exp` in the query).
    pub exp: i64,
    pub actions: Vec<Action>,
}

/// Signs a query that lets players (which cannot send headers) use this stream's media URLs for
/// the given actions until it expires. The caller must itself have those actions on the stream;
/// the URL stops working when the caller's token is deleted or loses them.
#[utoipa::path(post, path = "/api/v1/streams/{id}/sign", tag = "access",
    params(("id" = Uuid, Path, description = "Stream UUID")),
    request_body = SignInput,
    responses(
        (status = 200, description = "The signed query", body = SignedUrl),
        (status = 400, description = "Bad id or malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    ))]
pub async fn sign_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    ApiJson(input): ApiJson<SignInput>,
) -> Result<Json<SignedUrl>, ApiError> {
    let id = parse_id(&raw)?;
    let actions: Actions = input.actions.iter().copied().collect();
    if actions.is_empty() {
        return Err(ApiError::invalid(
            "actions",
            "actions must name at least one of live, archive, export",
        ));
    }
    if actions.contains(Action::Manage) {
        return Err(ApiError::invalid(
            "actions",
            "'manage' cannot be signed: signed URLs only open media (live, archive, export)",
        ));
    }
    if let Some(missing) = actions.iter().find(|a| !caller.can(*a, id)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this credential may not '{missing}' stream {id}, so it cannot sign it"),
        ));
    }
    let max = state.auth.max_signed_ttl_s;
    let ttl = input.ttl_s.unwrap_or(DEFAULT_SIGNED_TTL_S.min(max));
    if !(1..=max).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_s",
            format!("ttl_s must be within 1..={max} ([auth] max_signed_ttl_s)"),
        ));
    }
    let q = state
        .auth
        .sign(&caller, id, actions, ttl)
        .await
        .map_err(|e| match e {
            AuthError::Unavailable(db) => ApiError::internal(&db),
            other => ApiError::internal(&other),
        })?;
    Ok(Json(SignedUrl {
        query: q.to_query(),
        expires: rfc3339_ms(q.exp.saturating_mul(1_000_000), false),
        exp: q.exp,
        actions: actions.iter().collect(),
    }))
}
