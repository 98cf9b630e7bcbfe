//! WebRTC (WHEP) metrics, read from the engine's session counters (`webrtc::WebRtc`): whether it
//! runs, sessions opened and refused, and per stream (label `stream`) the open sessions and what
//! they sent and heard. Per-stream counters include ended sessions and last as long as the process;
//! series are written only for running streams, like the other per-stream families. Sessions are
//! not a label: their ids come and go, and a label per session would grow without bound.
//!
//! The viewers by transport (`video_server_stream_viewers{transport="webrtc"}`) are written by
//! [`super::streams`], next to the MSE viewers.

use prometheus_client::registry::Unit;

use super::Sources;
use super::{Families, Labels, int, labels, one};
use crate::webrtc::StreamCounts;

pub fn encode(state: &Sources, out: &mut Families) -> std::fmt::Result {
    let stats = state.webrtc.stats();
    out.gauge(
        "video_server_webrtc_up",
        "1 when WebRTC (WHEP) is running: [webrtc] enabled and its UDP port bound",
        None,
        one(i64::from(stats.enabled)),
    )?;
    if !stats.enabled {
        return Ok(());
    }
    out.counter(
        "video_server_webrtc_sessions_opened",
        "WHEP offers answered (sessions started)",
        None,
        one(stats.sessions_opened),
    )?;
    out.counter(
        "video_server_webrtc_sessions_refused",
        "WHEP offers refused by the engine (not live, B-frames, codec, limits, bad offer)",
        None,
        one(stats.sessions_refused),
    )?;

    let per_stream = state.webrtc.per_stream();
    let rows: Vec<(String, StreamCounts)> = state
        .manager
        .runtimes()
        .into_iter()
        .filter_map(|(id, _)| per_stream.get(&id).map(|c| (id.to_string(), *c)))
        .collect();
    let per = |f: fn(&StreamCounts) -> u64| -> Vec<(Labels, u64)> {
        rows.iter()
            .map(|(id, c)| (labels([("stream", id)]), f(c)))
            .collect()
    };
    out.gauge(
        "video_server_webrtc_sessions",
        "WebRTC sessions open now, by state (connected: ICE and DTLS up; connecting: answered, \
         not yet up)",
        None,
        rows.iter().flat_map(|(id, c)| {
            [
                (
                    labels([("stream", id), ("state", "connected")]),
                    int(c.connected),
                ),
                (
                    labels([("stream", id), ("state", "connecting")]),
                    int(c.sessions.saturating_sub(c.connected)),
                ),
            ]
        }),
    )?;
    out.counter(
        "video_server_webrtc_sent_packets",
        "Datagrams sent to browsers (RTP, RTCP, DTLS, STUN answers)",
        None,
        per(|c| c.packets),
    )?;
    out.counter(
        "video_server_webrtc_sent",
        "Bytes sent to browsers (UDP payloads)",
        Some(Unit::Bytes),
        per(|c| c.bytes),
    )?;
    out.counter(
        "video_server_webrtc_frames",
        "Video frames handed to the packetizer (the joining burst included)",
        None,
        per(|c| c.frames),
    )?;
    out.counter(
        "video_server_webrtc_audio_frames",
        "G.711 audio packets of the camera handed to the packetizer (sessions sending audio)",
        None,
        per(|c| c.audio_frames),
    )?;
    out.counter(
        "video_server_webrtc_keyframe_requests",
        "PLI and FIR from browsers (counted only: a camera cannot be asked for a keyframe)",
        None,
        per(|c| c.keyframe_requests),
    )?;
    out.counter(
        "video_server_webrtc_nacks",
        "NACKs from browsers (lost packets, resent from the send buffer)",
        None,
        per(|c| c.nacks),
    )?;
    out.counter(
        "video_server_webrtc_resyncs",
        "Times a lagging session skipped to the next keyframe",
        None,
        per(|c| c.resyncs),
    )?;
    Ok(())
}
