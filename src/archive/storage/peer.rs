//! Cluster mode: filesystem segments recorded by another node and not uploaded yet.
//!
//! Every node indexes every segment, but a filesystem segment's bytes are on the disk of the node
//! that recorded it (`segments.node_id`) until its uploader moves them to S3. [`ClusterFs`] is the
//! filesystem as a node of a cluster reads it: a segment another node recorded is read from that
//! node, through its internal endpoint (`GET /internal/v1/segment?key=`, served by
//! `live::internal`), in ranged `GET`s like the S3 backend's; any other key (this node's, or one
//! recorded outside cluster mode) from the local disk. The recording node is looked up by key in
//! the index (cached a few seconds); when the index cannot be asked, the local disk is read. The
//! key alone is not trusted to say whose file it is: nodes may well use the same archive path
//! (containers), and a local file at another node's path is not that node's segment. Each request carries a
//! node proof (`auth::signing::NodeProof`: an HMAC with the shared signing key over the segment
//! key and a short expiry). Remote reads have connect and request timeouts, so a node that is
//! down makes a segment unreadable (as a missing file is), never a reader that hangs.
//!
//! Reads of one segment by several nodes are protected like local ones: the reader's read lease
//! (`segments.lease_until_us`, in the shared index) keeps the recording node's uploader and
//! retention away from the file while it is read.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Opened, Storage, StorageError};
use crate::auth::Auth;
use crate::auth::signing::NODE_PROOF_HEADER;
use crate::db::Db;
use crate::db::cluster::NodeRow;

/// The internal route of the video listener that serves this node's local segment files.
pub const INTERNAL_SEGMENT_PATH: &str = "/internal/v1/segment";

/// How long connecting to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one remote read may take (reads are at most a fragment, a `moov` or an export chunk).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Validity of the node proof of one request.
const PROOF_TTL_S: i64 = 60;
/// How long the recording node of a key is reused (a node's address changes only on restart).
const LOOKUP_TTL: Duration = Duration::from_secs(10);
/// Most keys whose recording node is remembered; beyond it the memory is emptied.
const LOOKUP_MAX: usize = 4096;

/// Reads of other nodes' local segment files.
pub struct PeerReads {
    db: Db,
    auth: Arc<Auth>,
    node_id: Arc<str>,
    http: reqwest::Client,
    /// Storage key → its recording node (`None`: no other node has it), and when that was read.
    nodes: Mutex<HashMap<String, (Option<NodeRow>, Instant)>>,
}

impl std::fmt::Debug for PeerReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerReads")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn remote(key: &str, message: String) -> StorageError {
    StorageError::Remote {
        key: key.to_owned(),
        message,
    }
}

impl PeerReads {
    /// Reads for node `node_id`, with proofs made by `auth` (the shared signing key).
    pub fn new(db: Db, auth: Arc<Auth>, node_id: Arc<str>) -> Result<PeerReads, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot set up the HTTP client for other nodes: {e}"))?;
        Ok(PeerReads {
            db,
            auth,
            node_id,
            http,
            nodes: Mutex::default(),
        })
    }

    /// The other node holding `key`'s file; `None` when there is none (no such filesystem row,
    /// recorded outside cluster mode, or by this node itself).
    async fn node_for(&self, key: &str) -> Result<Option<NodeRow>, StorageError> {
        let cached = self
            .lock()
            .get(key)
            .and_then(|(node, at)| (at.elapsed() < LOOKUP_TTL).then(|| node.clone()));
        let node = match cached {
            Some(node) => node,
            None => {
                let node = crate::db::cluster::recording_node(&self.db, key)
                    .await
                    .map_err(|e| remote(key, format!("cannot look up its recording node: {e}")))?
                    .filter(|n| *n.node_id != *self.node_id);
                let mut nodes = self.lock();
                if nodes.len() >= LOOKUP_MAX {
                    nodes.clear();
                }
                nodes.insert(key.to_owned(), (node.clone(), Instant::now()));
                node
            }
        };
        Ok(node)
    }

    /// Where `key` is read from: `Some(node)` another node, `None` this node's disk (also when
    /// the index cannot be asked: then only local files can be read anyway).
    async fn place(&self, key: &str) -> Option<NodeRow> {
        match self.node_for(key).await {
            Ok(node) => node,
            Err(e) => {
                tracing::debug!(error = %e, "segment read from the local disk");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<NodeRow>, Instant)>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET` of `key` on its recording node with `range` (an HTTP `Range` value), the answer's
    /// status checked: 200 or 206 come back, 404 is `NotFound`, anything else an error.
    async fn get(
        &self,
        node: &NodeRow,
        key: &str,
        range: Option<String>,
    ) -> Result<reqwest::Response, StorageError> {
        let proof = self
            .auth
            .node_proof(key, PROOF_TTL_S)
            .await
            .map_err(|e| remote(key, format!("cannot make a node proof: {e}")))?;
        let mut url = url::Url::parse(&format!(
            "http://{}{INTERNAL_SEGMENT_PATH}",
            node.video_authority()
        ))
        .map_err(|e| remote(key, format!("node {}: bad address: {e}", node.node_id)))?;
        url.query_pairs_mut().append_pair("key", key);
        let mut req = self
            .http
            .get(url)
            .header(NODE_PROOF_HEADER, proof.to_header());
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| remote(key, format!("node {}: {}", node.node_id, describe(&e))))?;
        match resp.status().as_u16() {
            200 | 206 | 416 => Ok(resp),
            404 => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            status => {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                Err(remote(
                    key,
                    format!("node {} answered {status}: {body}", node.node_id),
                ))
            }
        }
    }

    /// Bytes `range` of `key` (all of it with `None`) from `node`. Like the other backends, a
    /// range past the end is an error, not a short read.
    async fn read(
        &self,
        node: &NodeRow,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        let (header, want) = match &range {
            Some(r) if r.end <= r.start => return Ok(Bytes::new()),
            // HTTP ranges are inclusive at both ends.
            Some(r) => (
                Some(format!("bytes={}-{}", r.start, r.end - 1)),
                Some(r.end - r.start),
            ),
            None => (None, None),
        };
        let resp = self.get(node, key, header).await?;
        let status = resp.status().as_u16();
        if status == 416 || (want.is_some() && status != 206) {
            return Err(remote(
                key,
                format!("asked for bytes {range:?}, the recording node answered {status}"),
            ));
        }
        let data = resp
            .bytes()
            .await
            .map_err(|e| remote(key, format!("reading the body: {}", describe(&e))))?;
        if let Some(want) = want
            && data.len() as u64 != want
        {
            return Err(remote(
                key,
                format!("asked for {want} bytes, got {}", data.len()),
            ));
        }
        Ok(data)
    }

    /// Size of `key`'s file on its recording node (a one-byte range: the answer's
    /// `Content-Range` names the length; an empty file answers 416 with it).
    async fn size(&self, node: &NodeRow, key: &str) -> Result<u64, StorageError> {
        let resp = self.get(node, key, Some("bytes=0-0".to_owned())).await?;
        let total = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, n)| n.trim().parse::<u64>().ok());
        match (resp.status().as_u16(), total) {
            (206 | 416, Some(n)) => Ok(n),
            (status, _) => Err(remote(
                key,
                format!("no length in the recording node's answer ({status})"),
            )),
        }
    }
}

/// A client error without the URL (it holds the storage key only; never a proof).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = what.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The filesystem of a cluster node: another node's segments from that node ([`PeerReads`]),
/// everything else from the local disk. Deletes are local only: only the recording node deletes
/// its files.
pub struct ClusterFs {
    local: Arc<dyn Storage>,
    peers: Arc<PeerReads>,
}

impl ClusterFs {
    pub fn new(local: Arc<dyn Storage>, peers: Arc<PeerReads>) -> ClusterFs {
        ClusterFs { local, peers }
    }
}

#[async_trait::async_trait]
impl Storage for ClusterFs {
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StorageError> {
        match self.peers.place(key).await {
            Some(node) => self.peers.read(&node, key, range).await,
            None => self.local.read(key, range).await,
        }
    }

    async fn size(&self, key: &str) -> Result<u64, StorageError> {
        match self.peers.place(key).await {
            Some(node) => self.peers.size(&node, key).await,
            None => self.local.size(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.local.delete(key).await
    }

    async fn open_handle(&self, key: &str) -> Result<Option<Arc<dyn Opened>>, StorageError> {
        match self.peers.place(key).await {
            Some(node) => Ok(Some(Arc::new(PeerFile {
                peers: self.peers.clone(),
                node,
                key: key.to_owned(),
            }))),
            None => self.local.open_handle(key).await,
        }
    }
}

/// A segment file of another node, read by key (the reader's read lease keeps it there).
struct PeerFile {
    peers: Arc<PeerReads>,
    node: NodeRow,
    key: String,
}

#[async_trait::async_trait]
impl Opened for PeerFile {
    async fn read_at(&self, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.peers.read(&self.node, &self.key, Some(range)).await
    }
}
