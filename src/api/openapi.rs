//! The static part of the OpenAPI document (title, tags); paths and schemas are collected from the
//! route annotations by `utoipa_axum`.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "video-server API",
        description = "Cameras (RTSP and MP4 files), live MSE/HLS, SQL-indexed archive. \
            The `go-compatible` routes keep the JSON of the Go original (LdDl/video-server); \
            `/api/v1` is the REST API for integrators.",
        license(name = "MIT")
    ),
    tags(
        (name = "go-compatible", description = "Routes and JSON of the Go original"),
        (name = "streams", description = "Stream (camera) management"),
        (name = "archive", description = "Recorded ranges, segment listing and protected ranges"),
        (name = "access", description = "Tokens, signed player URLs and the audit log (README \"Security\")"),
        (name = "ops", description = "Health and operations"),
    )
)]
struct BaseDoc;

/// The document the router's paths are added to.
pub fn base() -> utoipa::openapi::OpenApi {
    BaseDoc::openapi()
}
