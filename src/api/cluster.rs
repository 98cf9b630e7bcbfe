//! `GET /api/v1/cluster`: the nodes of a cluster (issue 14), their addresses, heartbeats and the
//! cameras each holds, read from the index, so every node answers the same.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::archive::rfc3339_ms;
use super::error::{ApiError, ErrorBody};
use crate::db::cluster;

/// One node of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeDto {
    /// `[cluster] node_id`.
    pub node_id: String,
    /// `[cluster] advertise_host`: where other nodes and clients reach it.
    pub advertise_host: String,
    /// Its API listener port (`null`: API off).
    pub api_port: Option<i32>,
    /// Its video listener port.
    pub video_port: i32,
    /// Its lease length in milliseconds.
    pub lease_ms: i64,
    /// When it started, RFC 3339.
    pub started: String,
    /// Its last heartbeat (lease renewal), RFC 3339.
    pub heartbeat: String,
    /// Whether the heartbeat is recent (within the node's lease length): it counts when the
    /// cameras are shared out.
    pub live: bool,
    /// The streams whose camera lease it holds now, by id.
    pub streams: Vec<Uuid>,
}

/// The cluster as the index describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterDto {
    /// `[cluster] enabled` on the node that answered.
    pub enabled: bool,
    /// The node that answered (`null` when cluster mode is off).
    pub node_id: Option<String>,
    /// Every node that ever registered, by `node_id` (empty when cluster mode is off).
    pub nodes: Vec<NodeDto>,
}

/// The nodes, their addresses, heartbeats and the cameras each holds (any node answers; leases
/// that expired are not listed). With cluster mode off: `enabled = false` and no nodes.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "ops",
    responses(
        (status = 200, description = "The cluster", body = ClusterDto),
        (status = 500, description = "The index is unreachable", body = ErrorBody),
    ))]
pub async fn cluster_info(State(state): State<AppState>) -> Result<Json<ClusterDto>, ApiError> {
    if !state.config.cluster.enabled {
        return Ok(Json(ClusterDto {
            enabled: false,
            node_id: None,
            nodes: Vec::new(),
        }));
    }
    let now_us = cluster::now_us(&state.db).await?;
    let leases = cluster::leases(&state.db).await?;
    let nodes = cluster::nodes(&state.db)
        .await?
        .into_iter()
        .map(|n| NodeDto {
            streams: leases
                .iter()
                .filter(|l| l.owner == n.node_id)
                .map(|l| l.stream_id)
                .collect(),
            live: n.heartbeat_us > now_us - n.lease_ms * 1000,
            started: rfc3339_ms(n.started_us, false),
            heartbeat: rfc3339_ms(n.heartbeat_us, false),
            node_id: n.node_id,
            advertise_host: n.advertise_host,
            api_port: n.api_port,
            video_port: n.video_port,
            lease_ms: n.lease_ms,
        })
        .collect();
    Ok(Json(ClusterDto {
        enabled: true,
        node_id: state.manager.node_id().map(|id| id.to_string()),
        nodes,
    }))
}
