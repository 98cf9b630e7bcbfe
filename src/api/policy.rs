//! The route policy table: for every route of both listeners, what a caller needs and where the
//! stream id comes from, and the middleware that enforces it.
//!
//! This is the one place that says who may call what. [`enforce_api`] and [`enforce_video`] run
//! as route layers (so the matched route template is known), find the route's [`RoutePolicy`],
//! authenticate the caller, check the policy, put the [`Caller`] into the request's extensions
//! for the handler, and queue an audit entry. A route without a policy is refused with 500 (and
//! a test reads both routers' real route tables and compares them with [`API`] and [`VIDEO`]),
//! so a new route cannot be reachable by accident.
//!
//! The stream id is read with the very parsers the handlers use (`parse_camera_request`,
//! `query_param`, `hls_writer::parse_name`, percent-decoded path parameters): what is authorised is what
//! the handler acts on. When the id cannot be parsed the handler refuses the request itself
//! (400, or a close frame) before touching anything, so any authenticated caller gets that answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, GoError};
use crate::auth::scope::Action;
use crate::auth::signing::SignedQuery;
use crate::auth::{AuthError, Caller};
use crate::db::audit::AuditRow;
use crate::db::now_us;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: health, the API description.
    Public,
    /// Any valid credential; the handler shows only the streams in the caller's scope.
    Listing,
    /// This action on the route's stream.
    Stream(Action),
    /// Any action on the route's stream (reading its definition or status).
    StreamAny,
    /// `manage` on every stream (`*`): creating a stream.
    CreateStream,
    /// An admin token: tokens, the audit log, server-wide operations.
    Admin,
    /// `/metrics`: public when `[auth] metrics_public = true`, else admin.
    Metrics,
    /// Another node of the cluster: a node proof (`auth::signing::NodeProof` in the
    /// `x-video-server-node-proof` header) over the `key` query parameter, whether `[auth]` is
    /// on or not. Tokens and signed URLs do not open these routes.
    Node,
}

impl Access {
    /// The action as the audit log names it.
    pub fn audit_name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Listing | Access::StreamAny => "read",
            Access::Stream(a) => a.as_str(),
            Access::CreateStream => "create",
            Access::Admin | Access::Metrics => "admin",
            Access::Node => "node",
        }
    }
}

/// Where a route's stream id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRef {
    /// The route is not about one stream.
    None,
    /// A path parameter with this name (percent-decoded, as `Path` gives it to the handler).
    Path(&'static str),
    /// A query parameter with this name (the first occurrence, as the handlers read it).
    Query(&'static str),
    /// The HLS file name in the `file` path parameter.
    HlsFile,
    /// The `guid` of a Go `enable_camera`/`disable_camera` JSON body.
    CameraBody,
}

/// The error body a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error":{"code","message"}}` (`/api/v1`, health).
    V1,
    /// `{"Error":"..."}` (Go routes, HLS, WebSockets).
    GoUpper,
    /// `{"error":"..."}` (the Go archive ranges route).
    GoLower,
}

/// What the audit log records of a route's requests. Refusals (401/403) are always recorded, at
/// most once a minute per client, route, stream and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// Reads: only refusals.
    Refusals,
    /// Every request: changes, and media sessions (one WebSocket connection is one request).
    Every,
    /// Media fetched in many requests (HLS, export ranges): once per client, stream and status
    /// every [`FETCH_AUDIT_WINDOW_US`].
    Fetches,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy {
    /// Upper-case HTTP method.
    pub method: &'static str,
    /// The route template exactly as the router declares it.
    pub path: &'static str,
    pub access: Access,
    pub stream: StreamRef,
    /// Signed URLs are accepted (media routes for players).
    pub signed: bool,
    /// Another node relaying the stream (cluster mode, `live::relay`) may open it with a node
    /// proof over `auth::signing::live_relay_subject` of the route's stream: the live WebSocket.
    pub relay: bool,
    pub shape: Shape,
    pub audit: Audit,
}

const fn p(
    method: &'static str,
    path: &'static str,
    access: Access,
    stream: StreamRef,
    shape: Shape,
    audit: Audit,
) -> RoutePolicy {
    RoutePolicy {
        method,
        path,
        access,
        stream,
        signed: false,
        relay: false,
        shape,
        audit,
    }
}

/// A media route that also accepts signed URLs.
const fn media(
    method: &'static str,
    path: &'static str,
    action: Action,
    stream: StreamRef,
    shape: Shape,
    audit: Audit,
) -> RoutePolicy {
    RoutePolicy {
        signed: true,
        ..p(method, path, Access::Stream(action), stream, shape, audit)
    }
}

use Access::{Admin, CreateStream, Listing, Public, StreamAny};
use Action::{Archive, Export, Live, Manage};
use Audit::{Every, Fetches, Refusals};
use Shape::{GoLower, GoUpper, V1};
use StreamRef::{CameraBody, HlsFile, Query};

const ID: StreamRef = StreamRef::Path("id");
const NONE: StreamRef = StreamRef::None;
const WHEP_STREAM: StreamRef = StreamRef::Path("stream_id");

/// The API listener's routes.
#[rustfmt::skip]
pub const API: &[RoutePolicy] = &[
    // Go-compatible routes.
    p("GET", "/list", Listing, NONE, GoUpper, Refusals),
    p("GET", "/status", Listing, NONE, GoUpper, Refusals),
    p("POST", "/enable_camera", Access::Stream(Manage), CameraBody, GoUpper, Every),
    p("POST", "/disable_camera", Access::Stream(Manage), CameraBody, GoUpper, Every),
    p("GET", "/archive/{stream_id}/ranges", Access::Stream(Archive), StreamRef::Path("stream_id"), GoLower, Refusals),
    // Streams.
    p("GET", "/api/v1/streams", Listing, NONE, V1, Refusals),
    p("POST", "/api/v1/streams", CreateStream, NONE, V1, Every),
    p("GET", "/api/v1/streams/{id}", StreamAny, ID, V1, Refusals),
    p("PUT", "/api/v1/streams/{id}", Access::Stream(Manage), ID, V1, Every),
    p("PATCH", "/api/v1/streams/{id}", Access::Stream(Manage), ID, V1, Every),
    p("DELETE", "/api/v1/streams/{id}", Access::Stream(Manage), ID, V1, Every),
    p("GET", "/api/v1/streams/{id}/status", StreamAny, ID, V1, Refusals),
    p("POST", "/api/v1/streams/{id}/sign", StreamAny, ID, V1, Every),
    // Archive.
    p("GET", "/api/v1/streams/{id}/ranges", Access::Stream(Archive), ID, V1, Refusals),
    p("GET", "/api/v1/streams/{id}/segments", Access::Stream(Archive), ID, V1, Refusals),
    p("GET", "/api/v1/streams/{id}/protected-ranges", Access::Stream(Archive), ID, V1, Refusals),
    p("POST", "/api/v1/streams/{id}/protected-ranges", Access::Stream(Manage), ID, V1, Every),
    p("DELETE", "/api/v1/streams/{id}/protected-ranges/{range_id}", Access::Stream(Manage), ID, V1, Every),
    media("GET", "/api/v1/streams/{id}/export.mp4", Export, ID, V1, Fetches),
    p("GET", "/api/v1/archive/uploads", Admin, NONE, V1, Refusals),
    p("GET", "/api/v1/storage", Admin, NONE, V1, Refusals),
    p("GET", "/api/v1/cluster", Admin, NONE, V1, Refusals),
    // Access control.
    p("GET", "/api/v1/tokens", Admin, NONE, V1, Refusals),
    p("POST", "/api/v1/tokens", Admin, NONE, V1, Every),
    p("DELETE", "/api/v1/tokens/{token_id}", Admin, NONE, V1, Every),
    p("GET", "/api/v1/audit", Admin, NONE, V1, Refusals),
    // Operations, the API description and the web UI (static files; it asks for a token).
    p("GET", "/healthz", Public, NONE, V1, Refusals),
    // Orchestrators probe it without credentials; stream ids only for admins (see `readyz`).
    p("GET", "/readyz", Public, NONE, V1, Refusals),
    // Prometheus: admin, or public with `[auth] metrics_public = true`.
    p("GET", "/metrics", Access::Metrics, NONE, V1, Refusals),
    p("GET", "/api/v1/server", Public, NONE, V1, Refusals),
    p("GET", "/", Public, NONE, V1, Refusals),
    p("GET", "/ui/{*path}", Public, NONE, V1, Refusals),
    p("GET", "/openapi.json", Public, NONE, V1, Refusals),
    p("GET", "/swagger-ui", Public, NONE, V1, Refusals),
    p("GET", "/swagger-ui/", Public, NONE, V1, Refusals),
    p("GET", "/swagger-ui/{*rest}", Public, NONE, V1, Refusals),
    // WebRTC (WHEP), as on the video listener.
    media("POST", "/whep/{stream_id}", Live, WHEP_STREAM, V1, Every),
    p("OPTIONS", "/whep/{stream_id}", Public, NONE, V1, Refusals),
    media("DELETE", "/whep/{stream_id}/{session_id}", Live, WHEP_STREAM, V1, Every),
    media("PATCH", "/whep/{stream_id}/{session_id}", Live, WHEP_STREAM, V1, Refusals),
];

/// The live WebSocket: a media route another node may also open to relay the stream.
const fn relayed(policy: RoutePolicy) -> RoutePolicy {
    RoutePolicy {
        relay: true,
        ..policy
    }
}

/// The video listener's routes.
#[rustfmt::skip]
pub const VIDEO: &[RoutePolicy] = &[
    media("GET", "/ws/archive", Archive, Query("stream_id"), GoUpper, Every),
    relayed(media("GET", "/ws/{any}", Live, Query("stream_id"), GoUpper, Every)),
    media("GET", "/hls/{file}", Live, HlsFile, GoUpper, Fetches),
    // WebRTC (WHEP): a session is one request, like a WebSocket.
    media("POST", "/whep/{stream_id}", Live, WHEP_STREAM, V1, Every),
    p("OPTIONS", "/whep/{stream_id}", Public, NONE, V1, Refusals),
    media("DELETE", "/whep/{stream_id}/{session_id}", Live, WHEP_STREAM, V1, Every),
    media("PATCH", "/whep/{stream_id}/{session_id}", Live, WHEP_STREAM, V1, Refusals),
    // The web UI and where it finds the API listener.
    p("GET", "/api/v1/server", Public, NONE, V1, Refusals),
    p("GET", "/", Public, NONE, V1, Refusals),
    p("GET", "/ui/{*path}", Public, NONE, V1, Refusals),
    // Cluster mode: a node reads a segment file still local to this node (not in the document).
    p("GET", "/internal/v1/segment", Access::Node, NONE, V1, Refusals),
];

/// Refusals of one client on one route are recorded at most this often.
pub const REFUSAL_AUDIT_WINDOW_US: i64 = 60 * 1_000_000;
/// Repeated media fetches (HLS playlist refreshes, export ranges) of one client and stream are
/// recorded at most this often.
pub const FETCH_AUDIT_WINDOW_US: i64 = 300 * 1_000_000;

/// The policy of a route: `HEAD` is served by `GET` routes, so it has their policy.
pub fn find(
    table: &'static [RoutePolicy],
    method: &Method,
    path: &str,
) -> Option<&'static RoutePolicy> {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    table.iter().find(|r| r.method == m && r.path == path)
}

/// Route layer of the API listener.
pub async fn enforce_api(State(state): State<AppState>, req: Request, next: Next) -> Response {
    enforce(&state, API, req, next).await
}

/// Route layer of the video listener.
pub async fn enforce_video(State(state): State<AppState>, req: Request, next: Next) -> Response {
    enforce(&state, VIDEO, req, next).await
}

/// A refusal in the route's error shape.
fn refuse(shape: Shape, status: StatusCode, code: &'static str, message: String) -> Response {
    let mut resp = match shape {
        Shape::V1 => ApiError::new(status, code, message).into_response(),
        Shape::GoUpper => GoError::upper(status, message).into_response(),
        Shape::GoLower => GoError::lower(status, message).into_response(),
    };
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"video-server\""),
        );
    }
    resp
}

async fn enforce(
    state: &AppState,
    table: &'static [RoutePolicy],
    req: Request,
    next: Next,
) -> Response {
    let peer: Option<IpAddr> = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let Some(policy) = find(table, req.method(), &route) else {
        // The route layer also wraps the router's "method not allowed" answer. A method the
        // table does not list for a known route gets that answer here, so a handler added for a
        // new method without a policy row is never reached either.
        let allowed: Vec<&str> = table
            .iter()
            .filter(|r| r.path == route)
            .map(|r| r.method)
            .collect();
        if !allowed.is_empty() {
            let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
            if let Ok(v) = HeaderValue::from_str(&allowed.join(",")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        tracing::error!(method = %req.method(), route, "route has no access policy: refused (add it to api::policy)");
        return refuse(
            Shape::V1,
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_policy",
            "this route has no access policy".into(),
        );
    };
    let (req, stream) = match stream_of(policy, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let access = match policy.access {
        Access::Metrics if state.auth.metrics_public => Access::Public,
        Access::Metrics => Access::Admin,
        a => a,
    };
    let caller = match authenticate(
        state,
        policy,
        access,
        req.headers(),
        req.uri().query(),
        stream,
        peer,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let status = match e {
                AuthError::Unavailable(ref db) => {
                    tracing::error!(error = %db, "cannot check credentials");
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::UNAUTHORIZED,
            };
            // Recorded by address (the claim is unproven), with the token id the request claimed.
            let mut row = audit_row(policy, &Caller::anonymous(peer), stream, status);
            if let Some(id) = claimed_token_id(req.headers()) {
                row.token_id = Some(id);
                row.credential = "token".to_owned();
            }
            state
                .auth
                .audit
                .record_once_per(row, REFUSAL_AUDIT_WINDOW_US);
            let code = if status == StatusCode::UNAUTHORIZED {
                "unauthorized"
            } else {
                "unavailable"
            };
            return refuse(policy.shape, status, code, e.to_string());
        }
    };
    if let Err(message) = authorize(access, &caller, stream) {
        record(state, policy, &caller, stream, StatusCode::FORBIDDEN, true);
        return refuse(policy.shape, StatusCode::FORBIDDEN, "forbidden", message);
    }
    let mut req = req;
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    record(state, policy, &caller, stream, resp.status(), false);
    resp
}

/// The token id a request claims in its bearer token (for the audit entry of a refusal).
fn claimed_token_id(headers: &HeaderMap) -> Option<String> {
    let text = bearer(headers)?.ok()?;
    crate::auth::token::parse(text).map(|(id, _)| id.to_owned())
}

/// The bearer token of a request: `None` without an `Authorization` header, `Some(Err)` when the
/// header is not `Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, AuthError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Malformed);
    Some(parsed)
}

/// The node proof a node-proof header carries.
fn node_proof(value: &HeaderValue) -> Result<crate::auth::signing::NodeProof, AuthError> {
    value
        .to_str()
        .ok()
        .and_then(crate::auth::signing::NodeProof::from_header)
        .ok_or(AuthError::NodeProof("malformed node proof"))
}

/// Who is calling. Takes the headers and query rather than the request: a request (its body) is
/// not `Sync`, so a reference to it cannot be held across an `.await` in a `Send` future.
async fn authenticate(
    state: &AppState,
    policy: &RoutePolicy,
    access: Access,
    headers: &HeaderMap,
    query: Option<&str>,
    stream: Option<Uuid>,
    peer: Option<IpAddr>,
) -> Result<Caller, AuthError> {
    if access == Access::Node {
        let proof = node_proof(
            headers
                .get(crate::auth::signing::NODE_PROOF_HEADER)
                .ok_or(AuthError::NodeProof("a node proof is required"))?,
        )?;
        let key = query_param(query, "key").unwrap_or_default();
        state.auth.verify_node_proof(&key, &proof).await?;
        return Ok(Caller::node(peer));
    }
    // A node relaying a live stream: its proof is checked whether `[auth]` is on or not (a node
    // that sends one means to be a node), and opens this one stream's live route only.
    if policy.relay
        && let Some(value) = headers.get(crate::auth::signing::NODE_PROOF_HEADER)
    {
        let proof = node_proof(value)?;
        let id = stream.ok_or(AuthError::NodeProof("a node proof needs a stream"))?;
        let subject = crate::auth::signing::live_relay_subject(id);
        state.auth.verify_node_proof(&subject, &proof).await?;
        return Ok(Caller::relay_node(peer, id));
    }
    if !state.auth.enabled() {
        return Ok(Caller::open(peer));
    }
    if access == Access::Public {
        return Ok(Caller::anonymous(peer));
    }
    let (credential, grant) = match bearer(headers) {
        Some(token) => state.auth.authenticate_bearer(token?).await?,
        None => match (policy.signed, stream) {
            (true, Some(id)) => match SignedQuery::from_query(query) {
                Some(Ok(q)) => state.auth.authenticate_signed(id, &q).await?,
                Some(Err(m)) => return Err(AuthError::MalformedSignature(m)),
                None => return Err(AuthError::Missing),
            },
            _ => return Err(AuthError::Missing),
        },
    };
    Ok(Caller {
        credential,
        grant,
        peer,
    })
}

/// `Ok` when the caller may proceed; otherwise the 403 message.
fn authorize(access: Access, caller: &Caller, stream: Option<Uuid>) -> Result<(), String> {
    let ok = match access {
        Access::Public | Access::Listing => true,
        // No parsable id: the handler refuses the request before acting (see the module docs).
        Access::Stream(a) => stream.is_none_or(|id| caller.can(a, id)),
        Access::StreamAny => stream.is_none_or(|id| caller.sees(id)),
        Access::CreateStream => caller.grant.allows_everywhere(Manage),
        Access::Admin | Access::Metrics => caller.is_admin(),
        // Authenticated by its proof, or refused with 401 before this.
        Access::Node => caller.credential == crate::auth::Credential::Node,
    };
    if ok {
        return Ok(());
    }
    Err(match (access, stream) {
        (Access::Stream(a), Some(id)) => format!("this credential may not '{a}' stream {id}"),
        (Access::StreamAny, Some(id)) => format!("stream {id} is outside this credential's scope"),
        (Access::CreateStream, _) => {
            "creating a stream needs 'manage' on every stream ('*')".to_owned()
        }
        _ => "an admin token is required".to_owned(),
    })
}

/// A query parameter by name (first occurrence), percent-decoded: how the WebSocket handlers
/// (`live::ws`) read `stream_id`, and so how the policy reads the id it authorises.
pub fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Finds the route's stream id; may buffer the body (Go camera routes, bounded like the handler).
async fn stream_of(
    policy: &RoutePolicy,
    req: Request,
) -> Result<(Request, Option<Uuid>), Response> {
    let path_param = |req: Request, name: &'static str| async move {
        let (mut parts, body) = req.into_parts();
        let value = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|Path(map)| map.get(name).cloned());
        (Request::from_parts(parts, body), value)
    };
    Ok(match policy.stream {
        StreamRef::None => (req, None),
        StreamRef::Path(name) => {
            let (req, value) = path_param(req, name).await;
            let id = value.and_then(|v| super::error::parse_uuid(&v));
            (req, id)
        }
        StreamRef::HlsFile => {
            let (req, value) = path_param(req, "file").await;
            let id = value
                .and_then(|f| crate::hls_writer::parse_name(&f).ok())
                .map(|n| n.stream_id);
            (req, id)
        }
        StreamRef::Query(name) => {
            let id = query_param(req.uri().query(), name).and_then(|v| Uuid::parse_str(&v).ok());
            (req, id)
        }
        StreamRef::CameraBody => {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
                .await
                .map_err(|_| {
                    refuse(
                        policy.shape,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("request body larger than {} bytes", super::MAX_BODY_BYTES),
                    )
                })?;
            let id = super::go::parse_camera_request(&bytes)
                .ok()
                .map(|(id, _)| id);
            (Request::from_parts(parts, Body::from(bytes)), id)
        }
    })
}

fn audit_row(
    policy: &RoutePolicy,
    caller: &Caller,
    stream: Option<Uuid>,
    status: StatusCode,
) -> AuditRow {
    AuditRow {
        id: 0,
        at_us: now_us(),
        token_id: caller.token_id().map(str::to_owned),
        credential: caller.credential_kind().to_owned(),
        client: caller.client_key(),
        action: policy.access.audit_name().to_owned(),
        stream_id: stream,
        route: format!("{} {}", policy.method, policy.path),
        status: i32::from(status.as_u16()),
    }
}

/// Queues the audit entry of a request, as its policy says.
fn record(
    state: &AppState,
    policy: &RoutePolicy,
    caller: &Caller,
    stream: Option<Uuid>,
    status: StatusCode,
    refused: bool,
) {
    if policy.audit == Audit::Refusals && !refused {
        return;
    }
    let row = audit_row(policy, caller, stream, status);
    let sink = &state.auth.audit;
    if refused {
        sink.record_once_per(row, REFUSAL_AUDIT_WINDOW_US);
    } else if policy.audit == Audit::Fetches {
        sink.record_once_per(row, FETCH_AUDIT_WINDOW_US);
    } else {
        sink.record(row);
    }
}

/// Adds the policy to an OpenAPI document: the `bearer` and `signed_url` security schemes, and
/// on every operation that is not public its security requirement and its 401 (and, unless any
/// credential will do, 403) answer in the route's error shape.
pub fn document(doc: &mut utoipa::openapi::OpenApi, table: &'static [RoutePolicy]) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("vs_<id>_<secret>")
                .description(Some(
                    "A token from `POST /api/v1/tokens` or `video-server token create`, or the \
                     bootstrap admin token (`VIDEO_SERVER_ADMIN_TOKEN`). Needed only when \
                     `[auth] enabled = true`."
                        .to_owned(),
                ))
                .build(),
        ),
    );
    let mut signed = ApiKeyValue::new("sig");
    signed.description = Some(
        "A signed URL: the `query` of `POST /api/v1/streams/{id}/sign` (`exp`, `act`, `tok`, \
         `sig`) appended to a media URL of that stream."
            .to_owned(),
    );
    components.add_security_scheme("signed_url", SecurityScheme::ApiKey(ApiKey::Query(signed)));

    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, op) in ops {
            let route = super::media_doc::route_of(path);
            let (Some(op), Some(policy)) = (op.as_mut(), find(table, &method, route)) else {
                continue;
            };
            if policy.access == Access::Public {
                continue;
            }
            let mut security = vec![SecurityRequirement::new("bearer", Vec::<String>::new())];
            if policy.signed {
                security.push(SecurityRequirement::new("signed_url", Vec::<String>::new()));
            }
            op.security = Some(security);
            let schema = match policy.shape {
                Shape::V1 => "ErrorBody",
                Shape::GoUpper => "GoUpperError",
                Shape::GoLower => "GoLowerError",
            };
            let answer = |description: &str| {
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(schema)))
                            .build(),
                    )
                    .build()
            };
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                answer(
                    "No valid credentials (missing, malformed, unknown, revoked or expired token; \
                     invalid or expired signature) when auth is on; `WWW-Authenticate: Bearer`",
                )
                .into()
            });
            let forbidden = match policy.access {
                Access::Listing | Access::Public | Access::Node => None,
                Access::Admin | Access::Metrics => Some("The credential is not an admin token"),
                Access::CreateStream => Some("The credential lacks `manage` on every stream (`*`)"),
                Access::Stream(_) | Access::StreamAny => {
                    Some("The credential's scope does not cover this stream and action")
                }
            };
            match (forbidden, responses.get_mut("403")) {
                (None, _) => {}
                // A route's own 403 (e.g. signing beyond the caller's scope) gets ours added.
                (Some(text), Some(RefOr::T(existing))) => {
                    existing.description = format!("{}; or: {text}", existing.description);
                }
                (Some(_), Some(RefOr::Ref(_))) => {}
                (Some(text), None) => {
                    responses.insert("403".into(), answer(text).into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unique_and_only_media_routes_take_signatures() {
        for table in [API, VIDEO] {
            for (i, r) in table.iter().enumerate() {
                assert!(
                    !table[..i]
                        .iter()
                        .any(|o| o.method == r.method && o.path == r.path),
                    "{} {} twice",
                    r.method,
                    r.path
                );
                if r.signed {
                    assert!(
                        matches!(
                            r.access,
                            Access::Stream(Action::Live | Action::Archive | Action::Export)
                        ) && r.stream != StreamRef::None,
                        "{} {}: signatures only open media of one stream",
                        r.method,
                        r.path
                    );
                }
                if matches!(r.access, Access::Stream(_) | Access::StreamAny) {
                    assert_ne!(r.stream, StreamRef::None, "{} {}", r.method, r.path);
                }
            }
        }
        // A node proof opens the live WebSocket only (relays), nothing on the API listener.
        let relayed: Vec<_> = [API, VIDEO]
            .iter()
            .flat_map(|t| t.iter())
            .filter(|r| r.relay)
            .map(|r| (r.method, r.path, r.access))
            .collect();
        assert_eq!(
            relayed,
            [("GET", "/ws/{any}", Access::Stream(Action::Live))]
        );
        assert_eq!(
            find(API, &Method::HEAD, "/healthz").map(|r| r.method),
            Some("GET")
        );
        assert!(find(API, &Method::OPTIONS, "/healthz").is_none());
    }

    #[test]
    fn scopes_are_checked_per_stream_and_action() {
        use crate::auth::scope::{Actions, Grant, Streams};
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let caller = Caller {
            credential: crate::auth::Credential::Token { id: "t".into() },
            grant: Grant {
                admin: false,
                streams: Streams::Only([a].into()),
                actions: [Action::Live].into_iter().collect::<Actions>(),
            },
            peer: None,
        };
        assert!(authorize(Access::Stream(Action::Live), &caller, Some(a)).is_ok());
        assert!(authorize(Access::Stream(Action::Live), &caller, Some(b)).is_err());
        assert!(authorize(Access::Stream(Action::Manage), &caller, Some(a)).is_err());
        assert!(authorize(Access::StreamAny, &caller, Some(a)).is_ok());
        assert!(authorize(Access::StreamAny, &caller, Some(b)).is_err());
        assert!(authorize(Access::Listing, &caller, None).is_ok());
        assert!(authorize(Access::CreateStream, &caller, None).is_err());
        assert!(authorize(Access::Admin, &caller, None).is_err());
        assert!(authorize(Access::Admin, &Caller::open(None), None).is_ok());
        // A node relaying stream a: live on a, nothing else.
        let node = Caller::relay_node(None, a);
        assert!(authorize(Access::Stream(Action::Live), &node, Some(a)).is_ok());
        assert!(authorize(Access::Stream(Action::Live), &node, Some(b)).is_err());
        assert!(authorize(Access::Stream(Action::Archive), &node, Some(a)).is_err());
        assert!(authorize(Access::Admin, &node, None).is_err());
    }
}
