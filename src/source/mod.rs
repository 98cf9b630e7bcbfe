//! Sources: where a stream's frames come from (an RTSP camera or an MP4 file), and the supervisor
//! that keeps one running.
//!
//! A source *session* connects (or opens the file), publishes frames into the stream's
//! [`Hub`](crate::hub::Hub) through a [`SessionSink`], and returns when it ends or fails; the
//! [`supervisor`] restarts it with backoff.

pub mod file;
pub mod rtsp;
pub mod supervisor;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hub::Hub;
use crate::media::{Frame, MediaError, TrackKind};
use crate::stream::StreamStatus;

/// A stream with no video keyframe for this long is considered broken and reconnected (the Go
/// original's 15 s "stream has no video").
pub const KEYFRAME_WATCHDOG: Duration = Duration::from_secs(15);

/// What kind of failure a source had: what `last_health_error` shows. Clients see only this
/// category, never the failure's text: a camera URL can point anywhere (an internal HTTP or SSH
/// port, say), and echoing what answered there would make the server a port scanner and banner
/// grabber. The text goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCategory {
    /// Nothing listens on the camera's port (TCP RST).
    ConnectionRefused,
    /// No answer in time (connect, DESCRIBE/SETUP/PLAY, or no data while playing).
    Timeout,
    /// The camera's host name does not resolve.
    Dns,
    /// No route to the camera's network or host.
    Unreachable,
    /// Connecting failed for another reason.
    ConnectFailed,
    /// The camera refused the credentials (RTSP 401/403).
    AuthFailed,
    /// The camera does not know the path (RTSP 404).
    NotFound,
    /// Something answered, but not in RTSP.
    NotRtsp,
    /// The camera answered with another RTSP error, or the session broke.
    RtspError,
    /// No H.264/H.265 video or AAC audio track.
    NoSupportedTrack,
    /// No video keyframe for [`KEYFRAME_WATCHDOG`].
    NoKeyframe,
    /// The camera ended the stream.
    Ended,
    /// The file source's file does not exist or cannot be read.
    FileNotFound,
    /// The file source's file lies outside `[sources] file_roots`.
    FileNotAllowed,
    /// The media could not be parsed.
    InvalidMedia,
}

impl HealthCategory {
    pub fn as_str(self) -> &'static str {
        use HealthCategory::*;
        match self {
            ConnectionRefused => "connection_refused",
            Timeout => "timeout",
            Dns => "dns",
            Unreachable => "unreachable",
            ConnectFailed => "connect_failed",
            AuthFailed => "auth_failed",
            NotFound => "not_found",
            NotRtsp => "not_rtsp",
            RtspError => "rtsp_error",
            NoSupportedTrack => "no_supported_track",
            NoKeyframe => "no_keyframe",
            Ended => "ended",
            FileNotFound => "file_not_found",
            FileNotAllowed => "file_not_allowed",
            InvalidMedia => "invalid_media",
        }
    }

    /// Every category, for documentation and tests.
    pub const ALL: [HealthCategory; 15] = {
        use HealthCategory::*;
        [
            ConnectionRefused,
            Timeout,
            Dns,
            Unreachable,
            ConnectFailed,
            AuthFailed,
            NotFound,
            NotRtsp,
            RtspError,
            NoSupportedTrack,
            NoKeyframe,
            Ended,
            FileNotFound,
            FileNotAllowed,
            InvalidMedia,
        ]
    };
}

impl std::fmt::Display for HealthCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a source session ended. `Display` is for the log (secrets already scrubbed); clients get
/// [`SourceError::category`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A failure classified when it happened, with its (log-only) detail.
    #[error("{category}: {detail}")]
    Failed {
        category: HealthCategory,
        detail: String,
    },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("stream has no video (no keyframe for {}s)", KEYFRAME_WATCHDOG.as_secs())]
    NoKeyframe,
    #[error("source has no usable track: {0}")]
    NoTracks(String),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("source ended")]
    Ended,
}

impl SourceError {
    pub fn failed(category: HealthCategory, detail: impl Into<String>) -> Self {
        SourceError::Failed {
            category,
            detail: detail.into(),
        }
    }

    /// The category clients see in `last_health_error`.
    pub fn category(&self) -> HealthCategory {
        match self {
            SourceError::Failed { category, .. } => *category,
            SourceError::Timeout(_) => HealthCategory::Timeout,
            SourceError::NoKeyframe => HealthCategory::NoKeyframe,
            SourceError::NoTracks(_) => HealthCategory::NoSupportedTrack,
            SourceError::Media(MediaError::Io(_)) => HealthCategory::FileNotFound,
            SourceError::Media(MediaError::Unsupported(_)) => HealthCategory::NoSupportedTrack,
            SourceError::Media(_) => HealthCategory::InvalidMedia,
            SourceError::Ended => HealthCategory::Ended,
        }
    }
}

impl From<crate::roots::FileAccessError> for SourceError {
    fn from(e: crate::roots::FileAccessError) -> Self {
        use crate::roots::FileAccessError::*;
        let category = match &e {
            NotAllowed { .. } | NotRegular { .. } => HealthCategory::FileNotAllowed,
            Unreadable { .. } => HealthCategory::FileNotFound,
        };
        SourceError::failed(category, e.to_string())
    }
}

/// How a session finished without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// A non-looping file reached its end: the stream is done.
    Finished,
    /// Cancellation was requested.
    Cancelled,
}

/// Shared, lock-protected live status of a stream.
pub type StatusCell = Arc<Mutex<StreamStatus>>;

/// Locks a status cell (poisoning is ignored: the status is plain data).
pub fn lock_status(cell: &StatusCell) -> std::sync::MutexGuard<'_, StreamStatus> {
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds back one frame per track until the next one arrives, so every frame leaves with its real
/// duration (RTP carries timestamps, not durations). Costs one frame of latency.
#[derive(Default)]
pub struct DurationFiller {
    pending: [Option<Frame>; 2],
    last_duration: [u32; 2],
}

impl DurationFiller {
    fn index(t: TrackKind) -> usize {
        match t {
            TrackKind::Video => 0,
            TrackKind::Audio => 1,
        }
    }

    /// Takes a frame with a provisional duration; returns the previous frame of the same track with
    /// its duration filled in. A frame whose timestamp does not advance is nudged forward by one
    /// tick so decode order stays strictly increasing.
    pub fn push(&mut self, mut frame: Frame) -> Option<Frame> {
        let i = Self::index(frame.track);
        let out = self.pending[i].take().map(|mut prev| {
            if frame.dts <= prev.dts {
                frame.dts = prev.dts + 1;
            }
            let d = frame.dts - prev.dts;
            prev.duration = u32::try_from(d).unwrap_or(u32::MAX);
            self.last_duration[i] = prev.duration;
            prev
        });
        self.pending[i] = Some(frame);
        out
    }

    /// Releases the held frames with their last known duration (end of a session).
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        for i in 0..2 {
            if let Some(mut f) = self.pending[i].take() {
                if self.last_duration[i] > 0 {
                    f.duration = self.last_duration[i];
                }
                out.push(f);
            }
        }
        out.sort_by_key(|f| f.wallclock_us);
        out
    }
}

/// Where a session puts its frames: the hub, plus keyframe bookkeeping for the watchdog.
pub struct SessionSink {
    pub hub: Arc<Hub>,
    pub status: StatusCell,
    last_keyframe: Instant,
    has_video: bool,
    got_media: bool,
}

impl SessionSink {
    pub fn new(hub: Arc<Hub>, status: StatusCell) -> Self {
        SessionSink {
            hub,
            status,
            last_keyframe: Instant::now(),
            has_video: false,
            got_media: false,
        }
    }

    /// Publishes a frame whose duration is final.
    pub fn publish(&mut self, frame: Frame) {
        if frame.track == TrackKind::Video {
            self.has_video = true;
            if frame.keyframe {
                self.last_keyframe = Instant::now();
            }
        } else if !self.has_video {
            self.last_keyframe = Instant::now();
        }
        if !self.got_media {
            self.got_media = true;
            let mut st = lock_status(&self.status);
            st.status = true;
            st.online = true;
            st.last_health_error.clear();
            st.codecs = codec_strings(&frame.params);
        }
        self.hub.publish(frame);
    }

    /// Marks the codecs as known (once parameters are available, before the first frame).
    pub fn announce(&mut self, params: &Arc<crate::media::StreamParams>) {
        self.hub.set_params(params.clone());
        let mut st = lock_status(&self.status);
        st.status = true;
        st.online = true;
        st.codecs = codec_strings(params);
    }

    /// Errors when no keyframe arrived for [`KEYFRAME_WATCHDOG`].
    pub fn check_watchdog(&self) -> Result<(), SourceError> {
        if self.last_keyframe.elapsed() > KEYFRAME_WATCHDOG {
            Err(SourceError::NoKeyframe)
        } else {
            Ok(())
        }
    }
}

fn codec_strings(p: &crate::media::StreamParams) -> Vec<String> {
    p.video
        .iter()
        .map(|v| v.codec_string.clone())
        .chain(p.audio.iter().map(|a| a.codec_string.clone()))
        .collect()
}

/// Detects a random-access picture from length-prefixed NAL units: H.264 IDR (type 5), or H.265
/// IRAP (types 16..=23: BLA, IDR, CRA). Needed because retina only flags H.265 IDR pictures, and
/// many encoders send CRA keyframes.
pub fn is_keyframe(codec: crate::media::VideoCodec, data: &[u8]) -> bool {
    let mut rest = data;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len) else {
            return false;
        };
        if let Some(&h) = nal.first() {
            let key = match codec {
                crate::media::VideoCodec::H264 => h & 0x1f == 5,
                crate::media::VideoCodec::H265 => (16..=23).contains(&((h >> 1) & 0x3f)),
            };
            if key {
                return true;
            }
        }
        rest = &rest[4 + len..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::VideoCodec;

    #[test]
    fn keyframe_detection_from_nal_types() {
        // H.264: SPS (7), then IDR (5).
        let idr = [0, 0, 0, 1, 0x67, 0, 0, 0, 2, 0x65, 0x88];
        assert!(is_keyframe(VideoCodec::H264, &idr));
        let p = [0, 0, 0, 2, 0x41, 0x9a];
        assert!(!is_keyframe(VideoCodec::H264, &p));
        // H.265 CRA (21 << 1 = 0x2a).
        let cra = [0, 0, 0, 2, 0x2a, 0x01];
        assert!(is_keyframe(VideoCodec::H265, &cra));
        let trail = [0, 0, 0, 2, 0x02, 0x01];
        assert!(!is_keyframe(VideoCodec::H265, &trail));
        // Truncated or lying lengths are not keyframes and do not panic.
        assert!(!is_keyframe(VideoCodec::H264, &[0, 0, 0, 9, 0x65]));
        assert!(!is_keyframe(VideoCodec::H264, &[0xff, 0xff]));
    }
}
