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
        (name = "live", description = "Live playback over WebRTC (WHEP). Served on both listeners; the web UI uses the video listener (README \"WebRTC\")"),
    )
)]
struct BaseDoc;

/// The document the router's paths are added to.
pub fn base() -> utoipa::openapi::OpenApi {
    BaseDoc::openapi()
}

/// States in the document the rules the server enforces on every operation alike, in one place
/// (so a route added later gets them too):
/// * query times (`start`, `end`) have the shape the time parser reads
///   ([`TIME_PATTERN`](super::archive::TIME_PATTERN));
/// * an `/api/v1` operation with a body answers 413 (over
///   [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES)) and 415 (not its JSON content type) with
///   `ErrorBody`;
/// * the variants of `SourceDto` refuse unknown properties, as its `deny_unknown_fields` does
///   (utoipa states it for structs, not for the variants of a tagged enum).
pub fn state_shared_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::AdditionalProperties;
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder, Schema};

    if let Some(RefOr::T(Schema::OneOf(one_of))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("SourceDto"))
    {
        for item in &mut one_of.items {
            if let RefOr::T(Schema::Object(o)) = item {
                o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }

    for (path, item) in doc.paths.paths.iter_mut() {
        let ours = path.starts_with("/api/v1/");
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                if p.parameter_in == ParameterIn::Query
                    && matches!(p.name.as_str(), "start" | "end")
                    && let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut()
                {
                    o.pattern = Some(super::archive::TIME_PATTERN.to_owned());
                }
            }
            if ours && op.request_body.is_some() {
                for (code, text) in [
                    ("413", "The body is larger than 64 KiB"),
                    (
                        "415",
                        "The body's `Content-Type` is not the operation's JSON type",
                    ),
                ] {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(text)
                                    .content(
                                        "application/json",
                                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                                    )
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}
