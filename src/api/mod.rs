//! The API listener (default port 8091): Go-compatible routes, our `/api/v1` REST API, the OpenAPI
//! document and Swagger UI, and a health check.
//!
//! Only this module knows JSON DTOs and HTTP status codes. Handlers are free `async fn`s taking
//! [`AppState`]; every route is declared with `utoipa` so the OpenAPI document cannot drift from the
//! router (`openapi/openapi.json` is committed and checked by a test).

pub mod access;
pub mod archive;
pub mod cluster;
pub mod cross_site;
pub mod error;
pub mod export;
pub mod go;
pub mod media_doc;
pub mod metrics;
pub mod openapi;
pub mod origin;
pub mod policy;
pub mod streams;
pub mod strict_json;
pub mod system;
pub mod uploads;
pub mod web;
pub mod whep;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::IntoResponse;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{Config, CorsConfig};
use crate::db::Db;
use crate::manager::StreamManager;
pub use origin::ListenerPorts;

/// Largest request body the API accepts. Stream definitions are a few hundred bytes; this bounds
/// the memory an anonymous client can make us buffer.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a handler needs. Cheap to clone (all `Arc`s / pools).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub manager: Arc<StreamManager>,
    pub archive: Arc<crate::archive::Archive>,
    /// Counters of the S3 uploader (all zero and `running = false` when there is none).
    pub uploads: Arc<crate::archive::uploader::UploadStats>,
    /// The archive directories and whether each is available (marker present), for `/readyz`.
    pub roots: Arc<crate::archive::markers::MarkedRoots>,
    /// Totals of start-up repair and reconciliation.
    pub reconcile: Arc<crate::archive::repair::ReconcileCounters>,
    /// Access control: credentials, signing keys, the audit log.
    pub auth: Arc<crate::auth::Auth>,
    /// The bound listener ports (0 / `None` in router tests that bind nothing).
    pub listeners: ListenerPorts,
    /// Viewers, archive sessions and exports held at once (`[limits]`).
    pub limits: Arc<crate::limits::Limits>,
    /// HTTP request counts and the pools `/metrics` reports (everything else it reads from the
    /// state above).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// WebRTC playback (WHEP); not running by default (router tests), started by the server.
    pub webrtc: Arc<crate::webrtc::WebRtc>,
}

/// The API router and the OpenAPI document of both listeners: the API routes' own annotations and
/// the video listener's media routes ([`media_doc`]), then the access policy (security, 401/403),
/// the answers over `[limits]` (429/503 with `Retry-After`) and the cross-site answers (403, 421)
/// of every operation.
pub fn router_and_openapi() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(go::list))
        .routes(routes!(go::status))
        .routes(routes!(go::enable_camera))
        .routes(routes!(go::disable_camera))
        .routes(routes!(go::archive_ranges))
        .routes(routes!(streams::list_streams, streams::create_stream))
        .routes(routes!(
            streams::get_stream,
            streams::replace_stream,
            streams::patch_stream,
            streams::delete_stream
        ))
        .routes(routes!(streams::stream_status))
        .routes(routes!(archive::stream_ranges))
        .routes(routes!(archive::list_segments))
        .routes(routes!(archive::list_protected, archive::create_protected))
        .routes(routes!(archive::delete_protected))
        .routes(routes!(export::export_mp4))
        .routes(routes!(uploads::upload_status))
        .routes(routes!(access::sign_stream))
        .routes(routes!(access::list_tokens, access::create_token))
        .routes(routes!(access::delete_token))
        .routes(routes!(access::list_audit))
        .routes(routes!(system::server_info))
        .routes(routes!(system::storage))
        .routes(routes!(cluster::cluster_info))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(whep::offer, whep::options))
        .routes(routes!(whep::delete, whep::patch))
        .split_for_parts();
    policy::document(&mut doc, policy::API);
    let mut media = media_doc::document();
    policy::document(&mut media, policy::VIDEO);
    doc.merge(media);
    openapi::state_shared_rules(&mut doc);
    openapi::state_limit_answers(&mut doc);
    cross_site::document(&mut doc);
    whep::document(&mut doc);
    (router, doc)
}

/// The OpenAPI document as pretty JSON (what `video-server openapi` prints and the repo commits).
pub fn openapi_json() -> String {
    let (_, doc) = router_and_openapi();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text
}

/// The complete API application for a state: routes, Swagger UI, access policy, body limit, CORS,
/// tracing.
pub fn app(state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors, state.listeners);
    let (router, doc) = router_and_openapi();
    let router = router
        .merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", doc))
        .merge(web::router())
        // A route layer, so it runs once a route matched (the policy is looked up by its
        // template) and covers every route above, Swagger UI and the web UI included.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            policy::enforce_api,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state.clone())
        .layer(cors)
        .layer(axum::middleware::from_fn(whep::accept_post));
    let router = cross_site::protect(router, &state, cross_site::Listener::Api);
    metrics::tracked(router, &state, "api")
}

/// Request headers the web UI sends to the other listener (JSON bodies, bearer tokens, ranges).
const UI_HEADERS: [&str; 5] = [
    "content-type",
    "authorization",
    "range",
    "if-range",
    "origin",
];

/// CORS for both listeners. The server's own listener origins ([`origin::is_same_server`]) are
/// always allowed, so the web UI loaded from either listener reaches the other without any
/// configuration; `[cors]` (off by default) adds foreign origins, methods and headers.
pub fn cors_layer(c: &CorsConfig, ports: ListenerPorts) -> CorsLayer {
    let configured_any = c.enabled && c.allow_origins.iter().any(|o| o == "*");
    let origin = if configured_any {
        AllowOrigin::any()
    } else {
        let listed: Vec<HeaderValue> = if c.enabled {
            c.allow_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect()
        } else {
            Vec::new()
        };
        AllowOrigin::predicate(move |origin, parts| {
            listed.contains(origin) || origin::request_is_same_server(origin, parts, ports)
        })
    };
    let mut methods: Vec<Method> = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        .iter()
        .filter_map(|m| m.parse().ok())
        .collect();
    let mut headers: Vec<HeaderName> = UI_HEADERS
        .iter()
        .chain(&["content-length"])
        .filter_map(|h| h.parse().ok())
        .collect();
    let mut expose: Vec<HeaderName> = ["content-disposition", "location"]
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    if c.enabled {
        for m in &c.allow_methods {
            if let Ok(m) = m.to_ascii_uppercase().parse::<Method>()
                && !methods.contains(&m)
            {
                methods.push(m);
            }
        }
        for (list, into) in [
            (&c.allow_headers, &mut headers),
            (&c.expose_headers, &mut expose),
        ] {
            for h in list {
                if let Ok(h) = h.parse::<HeaderName>()
                    && !into.contains(&h)
                {
                    into.push(h);
                }
            }
        }
    }
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(headers)
        .expose_headers(expose)
        .allow_credentials(c.enabled && c.allow_credentials && !configured_any)
        .max_age(Duration::from_secs(12 * 3600))
}

/// Health check answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// `ok` or `unavailable` (the reason is logged, never sent).
    pub database: String,
    /// `on` when `[auth] enabled` (clients need a token or a signed URL), else `off`.
    pub auth: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database is unreachable", body = Health),
    ))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let auth = if state.auth.enabled() { "on" } else { "off" };
    if database_answers(&state, "health check").await {
        (
            axum::http::StatusCode::OK,
            axum::Json(Health {
                status: "ok",
                database: "ok".into(),
                auth,
            }),
        )
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "degraded",
                database: "unavailable".into(),
                auth,
            }),
        )
    }
}

/// How long `/healthz` and `/readyz` wait for the database. A database that stops answering
/// (a frozen host, a cut network) would otherwise hold the probe until the connection pool's
/// acquire timeout, or for ever on an open connection, and the orchestrator's probe would time out
/// instead of reading `degraded`.
const PROBE_DB_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the database answers a trivial query within [`PROBE_DB_TIMEOUT`]. Why not goes to the
/// log only (the error text may name hosts, paths or users).
async fn database_answers(state: &AppState, probe: &str) -> bool {
    match tokio::time::timeout(PROBE_DB_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "{probe}: the database does not answer");
            false
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = PROBE_DB_TIMEOUT.as_millis() as u64,
                "{probe}: the database did not answer in time"
            );
            false
        }
    }
}

/// One storage root in the readiness answer. Named, never by path.
#[derive(Debug, Serialize, ToSchema)]
pub struct RootReadiness {
    /// `default` (`[archive] directory`), `stream <id>` (a stream's own directory), or
    /// `root <id>` (a directory only earlier segments use). With auth on, callers without an
    /// admin token see `stream` and `root` without the id, and no `streams`.
    pub name: String,
    /// Streams whose own directory this is.
    pub streams: Vec<uuid::Uuid>,
    /// `ok`, `marker_missing` (not mounted?), `marker_mismatch` (another disk), `not_adopted`
    /// (no marker, and none of the files indexed there is present), `unreadable`, `unknown`.
    pub state: &'static str,
}

/// Readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// `ok` or `unavailable` (details in the server log).
    pub database: &'static str,
    /// Every storage root in use.
    pub storage: Vec<RootReadiness>,
}

/// Readiness: the database answers and every storage root has its marker. A load balancer or an
/// orchestrator should send traffic only to a ready server; `/healthz` stays the liveness check.
/// Public; when auth is on, only admin tokens see which streams a root belongs to.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The database or a storage root is unavailable; the body names which", body = Readiness),
    ))]
pub async fn readyz(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> impl IntoResponse {
    let (answers, roots) = tokio::join!(
        database_answers(&state, "readiness"),
        state.roots.readiness()
    );
    let database = if answers { "ok" } else { "unavailable" };
    let storage: Vec<RootReadiness> = roots
        .into_iter()
        .map(|r| {
            // Anonymous probes learn the states, not the camera ids.
            let (name, streams) = if caller.is_admin() {
                (r.name, r.streams)
            } else {
                let kind = r.name.split(' ').next().unwrap_or("root").to_owned();
                (kind, Vec::new())
            };
            RootReadiness {
                name,
                streams,
                state: r.state.as_str(),
            }
        })
        .collect();
    let ready = database == "ok" && storage.iter().all(|r| r.state == "ok");
    let code = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            database,
            storage,
        }),
    )
}
