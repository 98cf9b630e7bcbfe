//! `GET /hls/{file}`: serves a stream's playlist and segments from `[hls] directory`.
//!
//! A file name must start with the stream's UUID (any version, unlike the original's v4-only regex)
//! and may then only contain `[A-Za-z0-9_.-]`, so no request can leave the HLS directory.

use std::path::PathBuf;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::GoError;
use crate::auth::Caller;
use crate::hls_writer::parse_name;

/// Content type by extension.
pub fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("m4s") => "video/iso.segment",
        Some("mp4") => "video/mp4",
        Some("ts") => "video/mp2t",
        _ => "application/octet-stream",
    }
}

/// Appends a signed URL's query to every URI of a playlist (segment lines and `URI="..."`
/// attributes such as `EXT-X-MAP`), so a player that fetched the playlist through a signed URL
/// can fetch what it lists: players resolve those URIs against the playlist's URL but drop its
/// query.
pub fn sign_playlist(text: &str, query: &str) -> String {
    let with_query = |uri: &str| {
        let sep = if uri.contains('?') { '&' } else { '?' };
        format!("{uri}{sep}{query}")
    };
    let mut out = String::with_capacity(text.len() + 64 * query.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        if body.is_empty() {
            out.push_str(line);
            continue;
        }
        if !body.starts_with('#') {
            out.push_str(&with_query(body));
            out.push_str(end);
            continue;
        }
        // Tags: rewrite every URI="..." attribute, keep the rest.
        let mut rest = body;
        while let Some(at) = rest.find("URI=\"") {
            let (head, tail) = rest.split_at(at + 5);
            out.push_str(head);
            match tail.find('"') {
                Some(close) => {
                    out.push_str(&with_query(&tail[..close]));
                    rest = &tail[close..];
                }
                None => {
                    rest = tail;
                    break;
                }
            }
        }
        out.push_str(rest);
        out.push_str(end);
    }
    out
}

/// Serves one HLS file. In cluster mode a stream held by another node is answered with a 307 to
/// the same file (and query: a signed URL stays valid) on the holder's video listener.
pub async fn serve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let name = match parse_name(&file) {
        Ok(n) => n,
        Err(msg) => return GoError::upper(StatusCode::BAD_REQUEST, msg).into_response(),
    };
    let Some(rt) = state
        .manager
        .runtime(name.stream_id)
        .filter(|rt| rt.has_output(crate::stream::OutputType::Hls))
    else {
        if let Some(to) = owner_redirect(&state, name.stream_id, &uri).await {
            return to;
        }
        return GoError::upper(StatusCode::NOT_FOUND, "stream not found").into_response();
    };
    // HLS holds no connection: a client counts as a viewer of the stream for a while after each
    // request (`[limits]`, `Limits::hls_viewer`), so HLS players are bounded like MSE and WebRTC
    // viewers.
    if let Err(refusal) = state
        .limits
        .hls_viewer(&name.stream_id.to_string(), &caller.client_key())
    {
        let mut resp = GoError::upper(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::limits::viewers_reason(refusal),
        )
        .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::limits::RETRY_AFTER_S),
        );
        return resp;
    }
    // Every HLS request is viewer activity: it starts an on-demand source and keeps it running.
    rt.demand.hls_fetch();
    let path: PathBuf = PathBuf::from(&state.config.hls.directory).join(&name.file);
    if name.is_playlist {
        // A just-started stream has no playlist yet: wait (bounded) for the first one, as the
        // original did for on-demand streams, instead of failing the player's first request.
        let wait_ms = (state.config.hls.ms_per_segment * 2).clamp(1_000, 25_000);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        while !tokio::fs::try_exists(&path).await.unwrap_or(false)
            && tokio::time::Instant::now() < deadline
            && state.manager.runtime(name.stream_id).is_some()
        {
            rt.demand.hls_request();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let bytes = match caller.signed_query() {
                Some(q) if name.is_playlist => {
                    sign_playlist(&String::from_utf8_lossy(&bytes), q).into_bytes()
                }
                _ => bytes,
            };
            let mut resp = bytes.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&name.file)),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            GoError::upper(StatusCode::NOT_FOUND, "file not found").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, file = %name.file, "cannot read HLS file");
            GoError::upper(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file").into_response()
        }
    }
}

/// Cluster mode: a 307 to `uri` on the video listener of the node holding `stream`'s lease, when
/// that is another node. `None` on a single node, for a stream nobody holds, or when the index
/// cannot be asked (the caller answers 404 as before).
async fn owner_redirect(state: &AppState, stream: Uuid, uri: &axum::http::Uri) -> Option<Response> {
    let owner = super::relay::other_holder(state, stream).await?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let location = format!("http://{}{path}", owner.video_authority());
    let value = HeaderValue::from_str(&location).ok()?;
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    resp.headers_mut().insert(header::LOCATION, value);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_any_uuid_version_and_refuse_traversal() {
        // A version-1 UUID: the original refused it.
        let ok = parse_name("6ba7b810-9dad-11d1-80b4-00c04fd430c8.m3u8").expect("valid");
        assert!(ok.is_playlist);
        assert!(parse_name("13bf3e5c-d537-4f10-98e8-9d0afca8b070_0_000001.m4s").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name("../etc/passwd").is_err());
        assert!(parse_name("13bf3e5c-d537-4f10-98e8-9d0afca8b070..m3u8").is_err());
        assert!(parse_name("13bf3e5c-d537-4f10-98e8-9d0afca8b070.m3u8/x").is_err());
        assert!(parse_name("13bf3e5c-d537-4f10-98e8-9d0afca8b070.exe").is_err());
        assert!(parse_name("13bf3e5c-d537-4f10-98e8-9d0afca8b070").is_err());
    }

    #[test]
    fn signed_playlists_carry_the_signature_on_every_uri() {
        let text = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI=\"a_init.mp4\"\n\
            #EXTINF:2.000,\na_1.m4s\r\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"b.mp4?x=1\",BYTERANGE=\"9@0\"\n\
            #EXTINF:2.000,\nb_1.m4s";
        let signed = sign_playlist(text, "exp=1&sig=s");
        assert_eq!(
            signed,
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI=\"a_init.mp4?exp=1&sig=s\"\n\
             #EXTINF:2.000,\na_1.m4s?exp=1&sig=s\r\n#EXT-X-DISCONTINUITY\n\
             #EXT-X-MAP:URI=\"b.mp4?x=1&exp=1&sig=s\",BYTERANGE=\"9@0\"\n\
             #EXTINF:2.000,\nb_1.m4s?exp=1&sig=s"
        );
        // A tag with an unterminated attribute is kept as it is.
        assert_eq!(sign_playlist("#X:URI=\"a\n", "q"), "#X:URI=\"a\n");
    }
}
