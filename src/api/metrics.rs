//! `GET /metrics` (Prometheus, OpenMetrics text) and the middleware that counts the HTTP requests
//! of both listeners. What is measured is in [`crate::metrics`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::Format;
use crate::metrics::http::{UNMATCHED, method_label};

/// Prometheus metrics: streams, recorders, uploads, the index, the process and HTTP requests.
/// OpenMetrics text when `Accept` asks for it (Prometheus does), else the Prometheus text format
/// 0.0.4. Admin token required when auth is on, unless `[auth] metrics_public = true`.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Every metric (README \"Metrics\" lists the families): the \
            Prometheus text format 0.0.4, or OpenMetrics 1.0 text when `Accept` names \
            `application/openmetrics-text`",
            content(
                (String = "text/plain; version=0.0.4; charset=utf-8"),
                (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
            )),
    ))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let sources = crate::metrics::Sources {
        config: state.config.clone(),
        db: state.db.clone(),
        manager: state.manager.clone(),
        archive: state.archive.clone(),
        uploads: state.uploads.clone(),
        roots: state.roots.clone(),
        reconcile: state.reconcile.clone(),
        limits: state.limits.clone(),
        metrics: state.metrics.clone(),
        webrtc: state.webrtc.clone(),
    };
    let text = crate::metrics::render(&sources, format).await;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
}

/// Counts a request of the listener `listener` (`api` or `video`): method, the route template
/// the router matched (not the URL, so random paths share `unmatched`), status, and the time to
/// the response head. Added as the outermost layer, so refusals (401, 403, 421) count too.
pub async fn track(
    State((state, listener)): State<(AppState, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(req.method().as_str());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let resp = next.run(req).await;
    state.metrics.http.observe(
        listener,
        method,
        route.as_deref().unwrap_or(UNMATCHED),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Adds [`track`] to a listener's router (after every other layer, so it sees every answer).
pub fn tracked(router: axum::Router, state: &AppState, listener: &'static str) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        (state.clone(), listener),
        track,
    ))
}
