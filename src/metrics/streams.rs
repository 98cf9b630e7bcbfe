//! Per-stream metrics (label `stream` = the stream's id), read from each running stream's
//! runtime: its status flags, hub, demand tracker, HLS writer and recorder. Counters belong to the
//! runtime, so they start again at 0 when a stream is restarted (a change of its source or
//! outputs); Prometheus' `rate()` and `increase()` handle such resets.

use prometheus_client::registry::Unit;

use super::{Families, Labels, int, labels, one};
use crate::api::AppState;
use crate::stream::{Source, StreamStatus};

/// The states of `video_server_stream_state`, one series each (1 for the current one).
const STATES: [&str; 4] = ["receiving", "connecting", "retrying", "idle"];

/// What a stream's source is doing.
fn state_of(st: &StreamStatus) -> &'static str {
    if st.status {
        "receiving"
    } else if !st.streaming {
        "idle"
    } else if !st.online && !st.last_health_error.is_empty() {
        "retrying"
    } else {
        "connecting"
    }
}

/// Seconds from `then_us` to `now_us`; `None` when `then_us` is unset (0).
fn age_s(now_us: i64, then_us: i64) -> Option<f64> {
    (then_us > 0).then(|| (now_us - then_us).max(0) as f64 / 1e6)
}

/// One stream's values, read once per scrape.
struct Row {
    id: String,
    name: String,
    source: &'static str,
    on_demand: bool,
    status: StreamStatus,
    frames: u64,
    bytes: u64,
    skipped_frames: u64,
    gop_overflows: u64,
    hub_dropped_bytes: u64,
    gop_cache_bytes: usize,
    consumers: usize,
    /// Open WebRTC sessions (also counted in `status.viewers`, as every live viewer is).
    webrtc_viewers: u64,
    hls_requests: u64,
    hls: Option<(u64, u64, u64)>,
    recorder: Option<crate::archive::recorder::RecorderCounters>,
}

pub fn encode(state: &AppState, now_us: i64, out: &mut Families) -> std::fmt::Result {
    let config = state.manager.config();
    let webrtc = state.webrtc.per_stream();
    let rows: Vec<Row> = state
        .manager
        .runtimes()
        .into_iter()
        .map(|(id, rt)| {
            let spec = rt.spec();
            Row {
                id: id.to_string(),
                name: spec.name.clone(),
                source: match spec.source {
                    Source::Rtsp { .. } => "rtsp",
                    Source::File { .. } => "file",
                },
                on_demand: config.on_demand_for(&spec),
                status: rt.status(),
                frames: rt.hub.published(),
                bytes: rt.hub.published_bytes(),
                skipped_frames: rt.hub.skips(),
                gop_overflows: rt.hub.gop_overflows(),
                hub_dropped_bytes: rt.hub.dropped_bytes(),
                gop_cache_bytes: rt.hub.gop_cache().1,
                consumers: rt.hub.consumers(),
                webrtc_viewers: webrtc.get(&id).map_or(0, |c| c.sessions),
                hls_requests: rt.demand.hls_requests(),
                hls: rt.hls_stats().map(|h| {
                    (
                        h.segments_written(),
                        h.dropped_segments(),
                        h.dropped_bytes(),
                    )
                }),
                recorder: rt.recorder_stats().map(|r| r.snapshot()),
            }
        })
        .collect();
    let stream = |r: &Row| labels([("stream", &r.id)]);
    let per = |f: &dyn Fn(&Row) -> u64| -> Vec<(Labels, u64)> {
        rows.iter().map(|r| (stream(r), f(r))).collect()
    };

    out.gauge(
        "video_server_streams_running",
        "Streams with a running runtime (enabled)",
        None,
        one(int(rows.len() as u64)),
    )?;
    out.gauge(
        "video_server_stream_info",
        "Always 1: a running stream's name, source kind and on-demand flag",
        None,
        rows.iter().map(|r| {
            (
                labels([
                    ("stream", &r.id),
                    ("name", &r.name),
                    ("source", r.source),
                    ("on_demand", if r.on_demand { "true" } else { "false" }),
                ]),
                1,
            )
        }),
    )?;
    out.gauge(
        "video_server_stream_state",
        "1 for the source's current state: receiving (media flows), connecting, retrying (backing \
         off after a failure), idle (on demand, nobody watching; or a file that ended)",
        None,
        rows.iter().flat_map(|r| {
            let current = state_of(&r.status);
            STATES.map(|s| {
                (
                    labels([("stream", &r.id), ("state", s)]),
                    i64::from(s == current),
                )
            })
        }),
    )?;
    out.counter(
        "video_server_stream_frames",
        "Frames received from the source (video and audio)",
        None,
        per(&|r| r.frames),
    )?;
    out.counter(
        "video_server_stream_received",
        "Media payload bytes received from the source",
        Some(Unit::Bytes),
        per(&|r| r.bytes),
    )?;
    out.counter(
        "video_server_stream_source_sessions",
        "Source sessions started (dials, file opens); each after the first is a reconnect",
        None,
        per(&|r| r.status.source_sessions),
    )?;
    out.counter(
        "video_server_stream_source_failures",
        "Source sessions that failed (followed by a backoff and a retry)",
        None,
        per(&|r| r.status.source_failures),
    )?;
    out.gauge(
        "video_server_stream_viewers",
        "Viewers attached now, by transport (mse: live WebSocket viewers; webrtc: WHEP sessions)",
        None,
        rows.iter().flat_map(|r| {
            let webrtc = r.webrtc_viewers;
            let mse = u64::from(r.status.viewers).saturating_sub(webrtc);
            [
                (labels([("stream", &r.id), ("transport", "mse")]), int(mse)),
                (
                    labels([("stream", &r.id), ("transport", "webrtc")]),
                    int(webrtc),
                ),
            ]
        }),
    )?;
    out.counter(
        "video_server_stream_hls_requests",
        "HLS playlist and segment requests for the stream",
        None,
        per(&|r| r.hls_requests),
    )?;
    out.gauge(
        "video_server_stream_consumers",
        "Consumers attached to the stream's hub (viewers, HLS writer, recorder)",
        None,
        rows.iter().map(|r| (stream(r), int(r.consumers as u64))),
    )?;
    out.counter(
        "video_server_stream_skipped_frames",
        "Frames consumers missed because they lagged (the rest of a GOP each time; every skip \
         resumes at a keyframe)",
        None,
        per(&|r| r.skipped_frames),
    )?;
    out.counter(
        "video_server_stream_gop_cache_overflows",
        "Times the GOP cache passed its frame or byte limit and was dropped",
        None,
        per(&|r| r.gop_overflows),
    )?;
    out.gauge(
        "video_server_stream_gop_cache",
        "Payload bytes in the GOP cache (what a new viewer starts with)",
        Some(Unit::Bytes),
        rows.iter()
            .map(|r| (stream(r), int(r.gop_cache_bytes as u64))),
    )?;
    out.counter(
        "video_server_stream_dropped",
        "Media payload bytes dropped, by stage: hub (lagging consumers), hls (segments \
         abandoned at their limit), recorder (not recorded after a write failure)",
        Some(Unit::Bytes),
        rows.iter().flat_map(|r| {
            let mut v = vec![(
                labels([("stream", &r.id), ("stage", "hub")]),
                r.hub_dropped_bytes,
            )];
            if let Some((_, _, b)) = r.hls {
                v.push((labels([("stream", &r.id), ("stage", "hls")]), b));
            }
            if let Some(c) = &r.recorder {
                v.push((
                    labels([("stream", &r.id), ("stage", "recorder")]),
                    c.dropped_bytes,
                ));
            }
            v
        }),
    )?;

    // HLS writers.
    let hls: Vec<(&Row, (u64, u64, u64))> =
        rows.iter().filter_map(|r| r.hls.map(|h| (r, h))).collect();
    out.counter(
        "video_server_hls_segments",
        "HLS segments written",
        None,
        hls.iter().map(|(r, h)| (stream(r), h.0)),
    )?;
    out.counter(
        "video_server_hls_dropped_segments",
        "HLS segments abandoned because no keyframe came before their frame or byte limit",
        None,
        hls.iter().map(|(r, h)| (stream(r), h.1)),
    )?;

    // Recorders.
    let rec: Vec<(&Row, &crate::archive::recorder::RecorderCounters)> = rows
        .iter()
        .filter_map(|r| r.recorder.as_ref().map(|c| (r, c)))
        .collect();
    let rec_counter =
        |out: &mut Families,
         name: &str,
         help: &str,
         unit: Option<Unit>,
         f: &dyn Fn(&crate::archive::recorder::RecorderCounters) -> u64| {
            out.counter(name, help, unit, rec.iter().map(|(r, c)| (stream(r), f(c))))
        };
    rec_counter(
        out,
        "video_server_recorder_segments",
        "Archive segments closed with media",
        None,
        &|c| c.segments_written,
    )?;
    rec_counter(
        out,
        "video_server_recorder_fragments",
        "Archive fragments written and synced to disk",
        None,
        &|c| c.fragments_written,
    )?;
    rec_counter(
        out,
        "video_server_recorder_written",
        "Bytes written to segment files",
        Some(Unit::Bytes),
        &|c| c.bytes_written,
    )?;
    rec_counter(
        out,
        "video_server_recorder_index_errors",
        "Index writes that failed (each is retried)",
        None,
        &|c| c.index_errors,
    )?;
    rec_counter(
        out,
        "video_server_recorder_index_dropped_segments",
        "Segments left to start-up repair because their index writes could not be made",
        None,
        &|c| c.index_dropped,
    )?;
    rec_counter(
        out,
        "video_server_recorder_write_errors",
        "Segment file writes that failed",
        None,
        &|c| c.write_errors,
    )?;
    rec_counter(
        out,
        "video_server_recorder_disk_full",
        "Segment file writes that failed because the disk was full",
        None,
        &|c| c.disk_full,
    )?;
    rec_counter(
        out,
        "video_server_recorder_early_flushes",
        "Fragments written early because they reached their byte or frame limit",
        None,
        &|c| c.early_flushes,
    )?;
    rec_counter(
        out,
        "video_server_recorder_clock_reanchors",
        "Times the wall clock of the recording was re-anchored because the camera drifted",
        None,
        &|c| c.clock_reanchors,
    )?;
    out.gauge(
        "video_server_recorder_index_pending_segments",
        "Segments whose index writes are waiting (grows during a database outage)",
        None,
        rec.iter().map(|(r, c)| (stream(r), int(c.index_pending))),
    )?;
    out.gauge_f64(
        "video_server_recorder_lag",
        "Time since the receive time of the last frame the recorder took from its queue",
        Some(Unit::Seconds),
        rec.iter()
            .filter_map(|(r, c)| Some((stream(r), age_s(now_us, c.last_frame_wallclock_us)?))),
    )?;
    out.gauge_f64(
        "video_server_recorder_last_fragment_age",
        "Time since the last fragment reached the disk",
        Some(Unit::Seconds),
        rec.iter()
            .filter_map(|(r, c)| Some((stream(r), age_s(now_us, c.last_fragment_us)?))),
    )?;
    out.gauge_f64(
        "video_server_recorder_clock_correction",
        "The last wall-clock correction applied (negative: the camera clock ran fast)",
        Some(Unit::Seconds),
        rec.iter()
            .map(|(r, c)| (stream(r), c.last_clock_correction_us as f64 / 1e6)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_status_flags() {
        let mut st = StreamStatus::default();
        assert_eq!(state_of(&st), "idle");
        st.streaming = true;
        assert_eq!(state_of(&st), "connecting");
        st.last_health_error = "refused".into();
        assert_eq!(state_of(&st), "retrying");
        st.status = true;
        st.online = true;
        assert_eq!(state_of(&st), "receiving");
        assert!(STATES.contains(&state_of(&st)));
        assert_eq!(age_s(5_000_000, 0), None);
        assert_eq!(age_s(5_000_000, 3_000_000), Some(2.0));
    }
}
