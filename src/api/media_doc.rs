//! The OpenAPI description of the video listener's media routes (`/ws/live`, `/ws/archive`,
//! `/hls/{file}`), so that one document states every operation's credentials (bearer token or
//! signed URL), its 401/403, and its answers over `[limits]`.
//!
//! The handlers live in `live`, which depends on `api`, so their descriptions are written here
//! on functions that only carry them (never routed). Each of these paths carries the video
//! listener as its server (`[video] host`/`port`, default 8090), unlike the rest of the document,
//! which the API listener serves. A test (tests/it/openapi.rs) compares these operations with the
//! video router's real routes and the access policy (`policy::VIDEO`), so they cannot drift.

use utoipa::OpenApi;
use utoipa::openapi::server::{ServerBuilder, ServerVariableBuilder};

use super::error::GoUpperError;

/// The bytes of a media segment (how the document describes them).
#[derive(Debug, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct MediaBytes(pub Vec<u8>);

/// Why a WebSocket upgrade from another site's page is refused (in every 403 of a WebSocket).
const CROSS_SITE_UPGRADE: &str = "Cross-site upgrade: `Origin` is neither this server's \
    listeners nor in `[cors] allow_origins`";

/// Live video over a WebSocket (MSE).
///
/// The Go original's route: any name after `/ws/` is accepted, `/ws/live` is the usual one. After the upgrade the server sends the codec
/// string as text, then fMP4 as binary messages. It closes with 1011 and a reason for an invalid
/// `stream_id`; 1013 (try again later) and a reason naming the limit when the stream or the
/// server has `[limits] viewers_per_stream` / `viewers_total` viewers; 1009 when a client
/// message is larger than `[limits] ws_max_message_bytes`; 1001 `Stream stopped` when the stream
/// stops (disabled, moved to another node, server shutdown). With auth on, a token or a signed
/// URL (`live`) is checked before the upgrade; the session is closed when that credential is
/// revoked or expires.
#[utoipa::path(get, path = "/ws/live", tag = "live",
    params(
        ("stream_id" = uuid::Uuid, Query, description = "Stream UUID"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (MSE; close reasons as described)"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "text/plain", body = String),
        (status = 403, description = CROSS_SITE_UPGRADE, body = GoUpperError),
        (status = 426, description = "The connection cannot be upgraded", content_type = "text/plain", body = String),
    ))]
pub fn ws_live() {}

/// Archive playback over a WebSocket.
///
/// The recording of one camera from `start`, as fMP4 binary messages (the Go original's protocol; `meta=1` adds JSON text messages with each segment's
/// times). Closes with 1011 and a reason for an invalid query or when archive serving is off, 1013
/// and a reason naming the limit when this client has `[limits] archive_sessions_per_client`
/// sessions or the server its total, and 1009 for a client message over
/// `[limits] ws_max_message_bytes`. Credentials as on `/ws/live` (action `archive`).
#[utoipa::path(get, path = "/ws/archive", tag = "live",
    params(
        ("stream_id" = uuid::Uuid, Query, description = "Stream UUID"),
        ("start" = i64, Query, minimum = 0, description = "Unix seconds to start from"),
        ("duration" = Option<i64>, Query, minimum = 1, description = "Seconds to play (default: up to the newest recording)"),
        ("meta" = Option<String>, Query, description = "`1` or `true`: also send each segment's times as JSON text"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (archive fMP4; close reasons as described)"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "text/plain", body = String),
        (status = 403, description = CROSS_SITE_UPGRADE, body = GoUpperError),
        (status = 426, description = "The connection cannot be upgraded", content_type = "text/plain", body = String),
    ))]
pub fn ws_archive() {}

/// A camera's HLS playlist or segment.
///
/// One file of `[hls] directory`: the playlist `<stream id>.m3u8` or a segment
/// or init file it lists (`<stream id>` followed by `[A-Za-z0-9_.-]`). A playlist fetched through
/// a signed URL lists its segment and map URIs with the same signature. Every fetch counts as
/// viewer activity (an on-demand stream starts and keeps running).
#[utoipa::path(get, path = "/hls/{file}", tag = "live",
    params(
        ("file" = String, Path, description = "`<stream id>.m3u8`, or a segment or init file the playlist lists"),
    ),
    responses(
        (status = 200, description = "The file: `application/vnd.apple.mpegurl` (playlist), `video/iso.segment`, `video/mp4` (init) or `video/mp2t`",
            content(
                (String = "application/vnd.apple.mpegurl"),
                (inline(MediaBytes) = "video/iso.segment"),
                (inline(MediaBytes) = "video/mp4"),
                (inline(MediaBytes) = "video/mp2t"),
            )),
        (status = 307, description = "Cluster mode: the stream runs on another node; `Location` is the same file (and query) on that node's video listener",
            headers(("Location" = String, description = "The file's URL on the holding node"))),
        (status = 400, description = "The file name does not start with a stream UUID, or has other characters", body = GoUpperError),
        (status = 404, description = "No such stream with the `hls` output running, or no such file (yet)", body = GoUpperError),
        (status = 500, description = "The file exists but cannot be read", body = GoUpperError),
    ))]
pub fn hls_file() {}

#[derive(OpenApi)]
#[openapi(
    paths(ws_live, ws_archive, hls_file),
    components(schemas(GoUpperError))
)]
struct MediaDoc;

/// The media routes' document: the operations above, each path served by the video listener.
/// The access policy and the shared rules are applied by [`super::router_and_openapi`].
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = MediaDoc::openapi();
    let video = ServerBuilder::new()
        .url("{scheme}://{host}:{port}")
        .description(Some(
            "The video listener (`[video] host` and `port`); the API listener serves the rest \
             of this document",
        ))
        .parameter(
            "scheme",
            ServerVariableBuilder::new()
                .enum_values(Some(["http", "https"]))
                .default_value("http"),
        )
        .parameter(
            "host",
            ServerVariableBuilder::new().default_value("localhost"),
        )
        .parameter(
            "port",
            ServerVariableBuilder::new()
                .default_value("8090")
                .description(Some("`[video] port`")),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        item.servers = Some(vec![video.clone()]);
    }
    doc
}

/// How the document names a route the router declares otherwise: the live WebSocket is routed
/// as `/ws/{any}` (any name, as in the Go original) and documented as `/ws/live`.
pub const DOCUMENTED_AS: &[(&str, &str)] = &[("/ws/live", "/ws/{any}")];

/// The route template of a documented path.
pub fn route_of(documented: &str) -> &str {
    DOCUMENTED_AS
        .iter()
        .find(|(d, _)| *d == documented)
        .map_or(documented, |(_, r)| r)
}
