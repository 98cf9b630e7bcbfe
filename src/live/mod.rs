//! The video listener (default port 8090): live MSE over WebSocket, archive playback over WebSocket,
//! and HLS files. Paths and wire behaviour follow the Go original (go-original.md §2.2, §3, §4).

pub mod hls;
pub mod hls_writer;
pub mod mse;
pub mod ws;

use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{AppState, policy};

/// The video routes and a description of them. The description is not published (the committed
/// OpenAPI document is the API listener's); it lists the routes for the access-policy test.
pub fn router_and_openapi() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // `/ws/archive` is a static route, so axum prefers it over the `/ws/{any}` parameter route, as
    // the original did.
    OpenApiRouter::new()
        .routes(routes!(ws::archive))
        .routes(routes!(ws::live))
        .routes(routes!(hls::serve))
        .split_for_parts()
}

/// The video application: `/ws/archive`, `/ws/{anything}`, `/hls/{file}`, under the access policy.
pub fn app(state: AppState) -> Router {
    let cors = crate::api::cors_layer(&state.config.cors);
    let (router, _) = router_and_openapi();
    let router = router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            policy::enforce_video,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}
