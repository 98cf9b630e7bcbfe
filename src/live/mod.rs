//! The video listener (default port 8090): live MSE over WebSocket, archive playback over WebSocket,
//! and HLS files. Paths and wire behaviour follow the Go original (go-original.md §2.2, §3, §4).

pub mod hls;
pub mod internal;
pub mod mse;
pub mod relay;
pub mod ws;

use axum::Router;
use axum::routing::get;
use tower_http::trace::TraceLayer;

use crate::api::{AppState, policy};

/// The video application: `/ws/archive`, `/ws/{anything}`, `/hls/{file}`, and the web UI (`/`,
/// `/ui/...`) with the one API route it needs first, `/api/v1/server` (where the API listener is),
/// and the internal route cluster nodes read each other's local segments through
/// (`/internal/v1/segment`), all under the access policy (`api::policy::VIDEO`).
pub fn app(state: AppState) -> Router {
    let cors = crate::api::cors_layer(&state.config.cors, state.listeners);
    // `/ws/archive` is a static route, so axum prefers it over the `/ws/{any}` parameter route, as
    // the original did.
    let router = Router::new()
        .route("/ws/archive", get(ws::archive))
        .route("/ws/{any}", get(ws::live))
        .route("/hls/{file}", get(hls::serve))
        .route(
            "/whep/{stream_id}",
            axum::routing::post(crate::api::whep::offer).options(crate::api::whep::options),
        )
        .route(
            "/whep/{stream_id}/{session_id}",
            axum::routing::delete(crate::api::whep::delete).patch(crate::api::whep::patch),
        )
        .route("/api/v1/server", get(crate::api::system::server_info))
        .route(
            crate::archive::storage::peer::INTERNAL_SEGMENT_PATH,
            get(internal::segment),
        )
        .merge(crate::api::web::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            policy::enforce_video,
        ))
        .layer(axum::Extension(relay::Relays::new(state.metrics.clone())))
        .layer(TraceLayer::new_for_http())
        .with_state(state.clone())
        .layer(cors)
        .layer(axum::middleware::from_fn(crate::api::whep::accept_post));
    let router =
        crate::api::cross_site::protect(router, &state, crate::api::cross_site::Listener::Video);
    crate::api::metrics::tracked(router, &state, "video")
}
