//! Cluster mode: the internal route other nodes read this node's local segment files through
//! (`GET /internal/v1/segment?key=<storage key>`, the client is `archive::storage::peer`).
//!
//! The policy (`Access::Node`) has already checked the node proof over `key` before the handler
//! runs. The handler then serves only a file that is (1) under one of this node's storage roots,
//! compared both as written and with links resolved, so neither `..` nor a symlink leads out, and
//! (2) a filesystem segment this node recorded, by the index. Anything else is a 4xx JSON answer.
//! One byte range (`Range`) is answered with 206 and `Content-Range`, a range past the end with
//! 416; the body is read from the open file in chunks, so a whole-file answer holds one chunk of
//! memory at a time. Not part of the OpenAPI document: no client but another node calls it.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::export::{RangeRequest, parse_range};
use crate::roots::StorageRoots;

/// Longest storage key accepted.
const MAX_KEY_BYTES: usize = 4096;
/// Bytes read from the file per body chunk.
const CHUNK: u64 = 256 * 1024;

/// `GET /internal/v1/segment`.
pub async fn segment(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match serve(&state, query.as_deref(), &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = crate::api::policy::query_param(query, "key")
        .ok_or_else(|| ApiError::bad_request("the segment key (`key`) is required"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
        return Err(ApiError::bad_request("not a segment key"));
    }
    let path = Path::new(&key);
    if !path.is_absolute() {
        return Err(ApiError::bad_request("a segment key is an absolute path"));
    }
    let Some(node_id) = state.manager.node_id() else {
        return Err(ApiError::not_found("this server is not a cluster node"));
    };
    let roots = StorageRoots::new(state.roots.all().iter().map(|r| r.path.clone()).collect());
    let inside = {
        let (roots, path) = (roots.clone(), path.to_owned());
        // `contains` resolves links on the filesystem: off the async threads.
        tokio::task::spawn_blocking(move || roots.contains(&path))
            .await
            .unwrap_or(false)
    };
    if !inside {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_roots",
            "the key lies outside this node's storage roots",
        ));
    }
    let mine = crate::db::cluster::is_local_segment(&state.db, &key, &node_id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot look up a segment for another node");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the index cannot be read right now",
            )
        })?;
    if !mine {
        return Err(ApiError::not_found(
            "not a filesystem segment recorded by this node",
        ));
    }
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f.into_std().await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("the segment file is not on this node"));
        }
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "cannot open a segment for another node");
            return Err(ApiError::internal(&"cannot open the segment file"));
        }
    };
    let meta = file
        .metadata()
        .map_err(|_| ApiError::internal(&"cannot read the segment file's size"))?;
    if !meta.is_file() {
        return Err(ApiError::not_found("not a segment file"));
    }
    let len = meta.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, span) = match parse_range(range, len) {
        RangeRequest::Full => (StatusCode::OK, 0..len),
        RangeRequest::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the segment file has {len} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let mut resp = Response::new(body(Arc::new(file), span.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{len}",
            span.start,
            span.end.saturating_sub(1)
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// The bytes `span` of `file`, read in [`CHUNK`]s with positioned reads.
fn body(file: Arc<std::fs::File>, span: std::ops::Range<u64>) -> Body {
    let chunks = futures::stream::unfold(span.start, move |pos| {
        let file = file.clone();
        let end = span.end;
        async move {
            if pos >= end {
                return None;
            }
            let n = (end - pos).min(CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; usize::try_from(n).unwrap_or(0)];
                file.read_exact_at(&mut buf, pos).map(|()| buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            // A read error ends the body early: the client sees a short answer, not wrong bytes.
            Some((read.map(Bytes::from), pos + n))
        }
    });
    Body::from_stream(chunks)
}
