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
///   (utoipa states it for structs, not for the variants of a tagged enum);
/// * ids a client chooses (a new stream's `id`, the Go routes' `guid`) are not the nil UUID;
/// * the Go enable body's `output_types` items are the names the server takes;
/// * a signed URL names 1..n of `live`, `archive`, `export` (never `manage`); a token is either
///   admin (no streams, no actions) or names streams (`*` or hyphenated UUIDs) and actions.
pub fn state_shared_rules(doc: &mut utoipa::openapi::OpenApi) {
    state_schema_rules(doc);
    state_operation_rules(doc);
}

/// Text without control characters (what `char::is_control` finds: C0, DEL and C1), for the
/// free-text fields the server checks so.
pub const NO_CONTROL_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// Text with something other than white space in it and no control characters, for the optional
/// text settings that must not be empty when present.
pub const NON_BLANK_PATTERN: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// The last instant the server takes as a time (9999-12-31T23:59:59.999999Z), in Unix seconds.
const MAX_UNIX_SECONDS: f64 = (super::archive::MAX_TIME_US / 1_000_000) as f64 + 0.9999;

/// An item of a token's `streams`: `*` or a UUID in the hyphenated form (`parse_uuid`).
const STREAM_ITEM_PATTERN: &str =
    r"^(\*|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$";

/// The nil UUID, which no stream may have.
const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Rules on component schemas that utoipa's attributes cannot express.
fn state_schema_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayItems, ObjectBuilder, OneOfBuilder, Type,
    };
    use utoipa::openapi::{RefOr, Schema};

    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let schemas = &mut components.schemas;
    if let Some(RefOr::T(Schema::OneOf(one_of))) = schemas.get_mut("SourceDto") {
        for item in &mut one_of.items {
            if let RefOr::T(Schema::Object(o)) = item {
                o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
    for (name, prop) in [
        ("StreamInput", "id"),
        ("EnableCameraRequest", "guid"),
        ("DisableCameraRequest", "guid"),
    ] {
        if let Some(Schema::Object(o)) = object_property(schemas, name, prop) {
            o.extensions
                .get_or_insert_with(Default::default)
                .insert("not".to_owned(), serde_json::json!({ "const": NIL_UUID }));
        }
    }
    // A time in a body: Unix seconds as a number (`oneOf` needs the types disjoint: `number`
    // covers integers) or text in the shape of a query time.
    schemas.insert(
        "TimeValue".to_owned(),
        RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .description(Some(
                    "A time: Unix seconds as a number (fractions allowed), or text: RFC 3339 \
                     with an offset or Unix seconds. 422 for a time before 1970 or after 9999, \
                     or a date that does not exist.",
                ))
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Number)
                        .minimum(Some(0))
                        .maximum(Some(MAX_UNIX_SECONDS)),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(super::archive::TIME_PATTERN)),
                )
                .build(),
        )),
    );
    // Patterns (utoipa's `pattern` takes literals only; the server's rules live in constants).
    let rtsp = super::streams::RTSP_URL_PATTERN;
    for (name, prop, pattern) in [
        ("StreamInput", "name", NO_CONTROL_PATTERN),
        ("StreamPatch", "name", NO_CONTROL_PATTERN),
        ("ArchiveDto", "directory", NON_BLANK_PATTERN),
        ("ArchiveDto", "bucket", NON_BLANK_PATTERN),
        ("ArchiveDto", "prefix", NON_BLANK_PATTERN),
        ("ProtectedRangeInput", "reason", NO_CONTROL_PATTERN),
        ("TokenInput", "name", NO_CONTROL_PATTERN),
        ("EnableCameraRequest", "url", rtsp),
    ] {
        if let Some(Schema::Object(o)) = object_property(schemas, name, prop) {
            o.pattern = Some(pattern.to_owned());
        }
    }
    if let Some(RefOr::T(Schema::OneOf(one_of))) = schemas.get_mut("SourceDto") {
        for item in &mut one_of.items {
            let RefOr::T(Schema::Object(variant)) = item else {
                continue;
            };
            for (prop, pattern) in [("url", rtsp), ("path", NON_BLANK_PATTERN)] {
                if let Some(RefOr::T(Schema::Object(o))) = variant.properties.get_mut(prop) {
                    o.pattern = Some(pattern.to_owned());
                }
            }
        }
    }
    // A signed URL opens media only: `manage` is refused (the `Action` enum has it).
    if let Some(Schema::Array(a)) = object_property(schemas, "SignInput", "actions") {
        a.items = ArrayItems::RefOrSchema(Box::new(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["live", "archive", "export"]))
                .build(),
        ))));
    }
    // A token's streams: each `*` or a hyphenated UUID; an admin token names no streams and no
    // actions, any other names at least one of each (`admin` absent is `false`).
    if let Some(Schema::Array(a)) = object_property(schemas, "TokenInput", "streams")
        && let ArrayItems::RefOrSchema(item) = &mut a.items
        && let RefOr::T(Schema::Object(o)) = item.as_mut()
    {
        o.pattern = Some(STREAM_ITEM_PATTERN.to_owned());
    }
    if let Some(RefOr::T(Schema::Object(o))) = schemas.get_mut("TokenInput") {
        o.extensions.get_or_insert_with(Default::default).insert(
            "anyOf".to_owned(),
            serde_json::json!([
                {
                    "required": ["admin"],
                    "properties": {
                        "admin": { "const": true },
                        "streams": { "maxItems": 0 },
                        "actions": { "maxItems": 0 }
                    }
                },
                {
                    "required": ["streams", "actions"],
                    "properties": {
                        "admin": { "const": false },
                        "streams": { "minItems": 1 },
                        "actions": { "minItems": 1 }
                    }
                }
            ]),
        );
    }
    if let Some(Schema::Array(a)) = object_property(schemas, "EnableCameraRequest", "output_types")
        && let ArrayItems::RefOrSchema(item) = &mut a.items
        && let RefOr::T(Schema::Object(o)) = item.as_mut()
    {
        o.pattern = Some(super::go::GO_OUTPUT_TYPE_PATTERN.to_owned());
    }
}

/// The schema of property `prop` of component `name`, when it is inline.
fn object_property<'a>(
    schemas: &'a mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Schema>,
    >,
    name: &str,
    prop: &str,
) -> Option<&'a mut utoipa::openapi::Schema> {
    use utoipa::openapi::{RefOr, Schema};
    match schemas.get_mut(name)? {
        RefOr::T(Schema::Object(o)) => match o.properties.get_mut(prop)? {
            RefOr::T(s) => Some(s),
            RefOr::Ref(_) => None,
        },
        _ => None,
    }
}

/// Rules on every operation alike.
fn state_operation_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{SchemaType, Type};
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder, Schema};

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
                    // Text times only (`/ws/archive` takes integer Unix seconds).
                    && o.schema_type == SchemaType::Type(Type::String)
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

/// The operations that answer over a `[limits]` limit (or a WebRTC session limit) with a status
/// and `Retry-After`, and why: `(method, path, status, description)`. The WebSockets are not here: they are upgraded and then closed
/// with 1013 and a reason (a browser shows a page the close reason, not a refused upgrade's
/// status; see `live::ws`).
pub const LIMITED: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "/api/v1/streams/{id}/export.mp4",
        "429",
        "This client already has `[limits] exports_per_client` exports running (code `limit_reached`)",
    ),
    (
        "get",
        "/api/v1/streams/{id}/export.mp4",
        "503",
        "The server already has `[limits] exports_total` exports running (code `server_busy`)",
    ),
    (
        "post",
        "/whep/{stream_id}",
        "503",
        "The session or viewer limits are reached (`[webrtc] max_sessions*`, `[limits] viewers_*`)",
    ),
    ("post", "/whep/{stream_id}", "409", "Not live yet"),
    (
        "get",
        "/hls/{file}",
        "503",
        "A new HLS client of a stream that has `[limits] viewers_per_stream` viewers, or of a \
         server with `viewers_total` (an HLS client counts as a viewer for the playlist's \
         duration after its last request; MSE and WebRTC viewers count too)",
    ),
];

/// Declares on every operation of [`LIMITED`] its answer with the `Retry-After` header (a
/// route's own description of that answer is kept, the header added).
pub fn state_limit_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};

    for (method, path, status, text) in LIMITED {
        let Some(item) = doc.paths.paths.get_mut(*path) else {
            continue;
        };
        let op = match *method {
            "get" => item.get.as_mut(),
            "post" => item.post.as_mut(),
            _ => None,
        };
        let Some(op) = op else { continue };
        let schema = if path.starts_with("/api/") || path.starts_with("/whep/") {
            "ErrorBody"
        } else {
            "GoUpperError"
        };
        let answer = op
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*text)
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name(schema))),
                        )
                        .build(),
                )
            });
        if let RefOr::T(response) = answer {
            response
                .headers
                .entry("Retry-After".to_owned())
                .or_insert_with(|| {
                    RefOr::T(
                        HeaderBuilder::new()
                            .schema(Some(
                                ObjectBuilder::new()
                                    .schema_type(Type::Integer)
                                    .minimum(Some(0)),
                            ))
                            .description(Some("Seconds to wait before trying again"))
                            .build(),
                    )
                });
        }
    }
}
