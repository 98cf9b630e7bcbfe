//! RTSP cameras through retina: DESCRIBE/SETUP/PLAY over TCP interleaved (or UDP), H.264/H.265
//! video and AAC audio into the hub's muxed stream; G.711 audio (PCMU/PCMA) into the hub's side
//! track for WebRTC only (fMP4 cannot carry it, so MSE, HLS and recordings leave it out, and the
//! stream's `skipped_tracks` says so); other audio (G.726, ...) is left out and reported.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions,
    Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{
    DurationFiller, HealthCategory, SessionEnd, SessionSink, SourceError, is_keyframe, lock_status,
};
use crate::media::{
    self, AudioParams, Frame, G711Frame, G711Law, G711Params, StreamParams, TrackKind, VideoParams,
};
use crate::redact::{mask_url, scrub};
use crate::stream::RtspTransport;

/// Budget for DESCRIBE, SETUP and PLAY together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that delivers nothing for this long is dropped and reconnected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT: &str = concat!("video-server/", env!("CARGO_PKG_VERSION"));

/// Splits credentials out of the URL (retina takes them separately).
pub fn split_credentials(url: &str) -> Result<(Url, Option<Credentials>), SourceError> {
    let mut u = Url::parse(url).map_err(|e| {
        SourceError::failed(
            HealthCategory::ConnectFailed,
            format!("invalid URL {}: {e}", mask_url(url)),
        )
    })?;
    if !matches!(u.scheme(), "rtsp" | "rtsps") {
        return Err(SourceError::failed(
            HealthCategory::ConnectFailed,
            format!("not an rtsp:// URL: {}", mask_url(url)),
        ));
    }
    let creds = if !u.username().is_empty() || u.password().is_some() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let c = Credentials {
            username: decode(u.username()),
            password: decode(u.password().unwrap_or("")),
        };
        let _ = u.set_username("");
        let _ = u.set_password(None);
        Some(c)
    } else {
        None
    };
    Ok((u, creds))
}

fn video_params(p: &retina::codec::VideoParameters) -> Result<VideoParams, SourceError> {
    let extra = Bytes::copy_from_slice(p.extra_data());
    let codec = p.rfc6381_codec();
    let v = if codec.starts_with("avc1") {
        media::codec::h264_params(extra)?
    } else if codec.starts_with("hvc1") || codec.starts_with("hev1") {
        media::codec::h265_params(extra)?
    } else {
        return Err(SourceError::NoTracks(format!(
            "unsupported video codec {codec}"
        )));
    };
    Ok(v)
}

fn audio_params(p: &retina::codec::AudioParameters) -> Result<AudioParams, SourceError> {
    Ok(media::codec::aac_params(Bytes::copy_from_slice(
        p.extra_data(),
    ))?)
}

/// The category of a retina error. Retina's errors are opaque apart from the RTSP status code,
/// so the rest is told from its messages (stable within the pinned retina version; the unit test
/// below lists the forms, and tests/it/security.rs checks a refused port and an HTTP server).
fn category_of(e: &retina::Error) -> HealthCategory {
    match e.status_code() {
        Some(401 | 403 | 407) => HealthCategory::AuthFailed,
        Some(404) => HealthCategory::NotFound,
        Some(_) => HealthCategory::RtspError,
        None => category_of_text(&e.to_string()),
    }
}

fn category_of_text(text: &str) -> HealthCategory {
    let text = text.to_ascii_lowercase();
    if let Some(io) = text.strip_prefix("unable to connect to rtsp server:") {
        let has = |needles: &[&str]| needles.iter().any(|n| io.contains(n));
        if has(&["connection refused"]) {
            HealthCategory::ConnectionRefused
        } else if has(&["timed out"]) {
            HealthCategory::Timeout
        } else if has(&[
            "lookup address",
            "name or service not known",
            "no address associated",
            "name resolution",
            "nodename nor servname",
        ]) {
            HealthCategory::Dns
        } else if has(&["unreachable", "no route to host"]) {
            HealthCategory::Unreachable
        } else {
            HealthCategory::ConnectFailed
        }
    } else if text.starts_with("rtsp framing error") {
        HealthCategory::NotRtsp
    } else if text.starts_with("timeout") {
        HealthCategory::Timeout
    } else {
        HealthCategory::RtspError
    }
}

/// A retina error as a source error: classified, with the URL's secrets scrubbed from the text.
fn rtsp_error(e: &retina::Error, url: &str) -> SourceError {
    SourceError::failed(category_of(e), scrub(&e.to_string(), url))
}

/// Runs one RTSP session until it fails, the stream ends, or `cancel` fires.
pub async fn run(
    raw_url: &str,
    transport: RtspTransport,
    sink: &mut SessionSink,
    cancel: &CancellationToken,
) -> Result<SessionEnd, SourceError> {
    let (url, creds) = split_credentials(raw_url)?;
    let opts = SessionOptions::default()
        .creds(creds)
        .user_agent(USER_AGENT.to_owned());
    let connect = async {
        let mut session = Session::describe(url.clone(), opts)
            .await
            .map_err(|e| rtsp_error(&e, raw_url))?;
        let mut video_i = None;
        let mut audio_i = None;
        let mut g711: Option<(usize, G711Params)> = None;
        let mut skipped = Vec::new();
        for (i, s) in session.streams().iter().enumerate() {
            match (s.media(), s.encoding_name()) {
                ("video", "h264" | "h265") if video_i.is_none() => video_i = Some(i),
                ("audio", "mpeg4-generic") if audio_i.is_none() => audio_i = Some(i),
                ("audio", enc @ ("pcmu" | "pcma")) if g711.is_none() => {
                    let law = if enc == "pcmu" {
                        G711Law::Pcmu
                    } else {
                        G711Law::Pcma
                    };
                    g711 = Some((
                        i,
                        G711Params {
                            law,
                            clock_rate: s.clock_rate_hz(),
                            channels: s.channels().map_or(1, |c| c.get()),
                        },
                    ));
                    skipped.push(format!(
                        "audio track {i} ({enc}): not carried in fMP4 (MSE, HLS, recordings), \
                         left out there; forwarded over WebRTC"
                    ));
                }
                (media, enc) => skipped.push(format!(
                    "{media} track {i} ({enc}): not carried in fMP4/MSE, left out"
                )),
            }
        }
        if video_i.is_none() && audio_i.is_none() {
            return Err(SourceError::NoTracks(if skipped.is_empty() {
                "no tracks".into()
            } else {
                skipped.join("; ")
            }));
        }
        let g711_i = g711.map(|(i, _)| i);
        for i in [video_i, audio_i, g711_i].into_iter().flatten() {
            let t = match transport {
                RtspTransport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
                RtspTransport::Udp => Transport::Udp(UdpTransportOptions::default()),
            };
            session
                .setup(
                    i,
                    SetupOptions::default()
                        .transport(t)
                        .frame_format(FrameFormat::MP4),
                )
                .await
                .map_err(|e| rtsp_error(&e, raw_url))?;
        }
        let playing = session
            .play(PlayOptions::default())
            .await
            .map_err(|e| rtsp_error(&e, raw_url))?;
        let demuxed = playing.demuxed().map_err(|e| rtsp_error(&e, raw_url))?;
        Ok::<_, SourceError>((demuxed, video_i, audio_i, g711, skipped))
    };
    let (mut demuxed, video_i, audio_i, g711, skipped) = tokio::select! {
        _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => {
            r.map_err(|_| SourceError::Timeout("RTSP connect"))??
        }
    };
    lock_status(&sink.status).skipped_tracks = skipped;
    sink.hub.set_g711(g711.map(|(_, p)| p));

    let mut version: u64 = 1;
    let mut params: Option<Arc<StreamParams>> = None;
    // Build what is known from the SDP; video may only be known after the first frame.
    let build = |demuxed: &retina::client::Demuxed, version: u64| -> Option<StreamParams> {
        let video = video_i.and_then(|i| match demuxed.streams()[i].parameters() {
            Some(ParametersRef::Video(v)) => video_params(v).ok(),
            _ => None,
        });
        let audio = audio_i.and_then(|i| match demuxed.streams()[i].parameters() {
            Some(ParametersRef::Audio(a)) => audio_params(a).ok(),
            _ => None,
        });
        // Wait for video parameters when there is a video track.
        if video_i.is_some() && video.is_none() {
            return None;
        }
        Some(StreamParams {
            version,
            video,
            audio,
        })
    };
    if let Some(p) = build(&demuxed, version) {
        let p = Arc::new(p);
        sink.announce(&p);
        params = Some(p);
    }
    let mut filler = DurationFiller::default();
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
            _ = watchdog.tick() => {
                sink.check_watchdog()?;
                continue;
            }
            r = tokio::time::timeout(READ_TIMEOUT, demuxed.next()) => {
                match r {
                    Err(_) => return Err(SourceError::Timeout("no data from the camera")),
                    Ok(None) => return Err(SourceError::Ended),
                    Ok(Some(Err(e))) => return Err(rtsp_error(&e, raw_url)),
                    Ok(Some(Ok(item))) => item,
                }
            }
        };
        match item {
            CodecItem::VideoFrame(f) => {
                if f.has_new_parameters() || params.is_none() {
                    let next = if params.is_some() {
                        version + 1
                    } else {
                        version
                    };
                    match build(&demuxed, next) {
                        Some(p) => {
                            let changed = params.as_ref().is_none_or(|old| !old.same_codecs(&p));
                            if changed {
                                version = next;
                                let p = Arc::new(StreamParams { version, ..p });
                                tracing::info!(codecs = %p.codec_list(), version, "codec parameters");
                                sink.announce(&p);
                                params = Some(p);
                            }
                        }
                        None => continue,
                    }
                }
                let Some(p) = params.clone() else { continue };
                let Some(vp) = p.video.as_ref() else { continue };
                let codec = vp.codec;
                let dts = f.timestamp().elapsed();
                let clock = i64::from(f.timestamp().clock_rate().get());
                let data = Bytes::from(f.into_data());
                let keyframe = is_keyframe(codec, &data);
                let frame = Frame {
                    track: TrackKind::Video,
                    dts: rescale(dts, clock, i64::from(media::VIDEO_TIMESCALE)),
                    duration: 0,
                    cts_offset: 0,
                    keyframe,
                    wallclock_us: crate::db::now_us(),
                    data,
                    params: p,
                };
                if let Some(out) = filler.push(frame) {
                    sink.publish(out);
                }
            }
            CodecItem::AudioFrame(f) if g711.is_some_and(|(i, _)| i == f.stream_id()) => {
                let Some((_, gp)) = g711 else { continue };
                // Sent only once the stream is live (video known), like everything else.
                if params.is_none() {
                    continue;
                }
                let clock = i64::from(f.timestamp().clock_rate().get());
                sink.hub.publish_g711(G711Frame {
                    pts: rescale(f.timestamp().elapsed(), clock, i64::from(gp.clock_rate)),
                    data: Bytes::copy_from_slice(f.data()),
                    params: gp,
                });
            }
            CodecItem::AudioFrame(f) => {
                let Some(p) = params.clone() else { continue };
                let Some(ap) = p.audio.as_ref() else { continue };
                let dts = f.timestamp().elapsed();
                let clock = i64::from(f.timestamp().clock_rate().get());
                let frame = Frame {
                    track: TrackKind::Audio,
                    dts: rescale(dts, clock, i64::from(ap.sample_rate)),
                    duration: 1024,
                    cts_offset: 0,
                    keyframe: true,
                    wallclock_us: crate::db::now_us(),
                    data: Bytes::copy_from_slice(f.data()),
                    params: p,
                };
                if let Some(out) = filler.push(frame) {
                    sink.publish(out);
                }
            }
            _ => {}
        }
    }
}

fn rescale(ticks: i64, from: i64, to: i64) -> i64 {
    if from == to || from <= 0 {
        ticks
    } else {
        (i128::from(ticks) * i128::from(to) / i128::from(from)) as i64
    }
}

/// Health probe for an idle on-demand camera: DESCRIBE only, within `timeout`. Ok means the camera
/// answered with a usable video track.
pub async fn probe(raw_url: &str, timeout: Duration) -> Result<(), SourceError> {
    let (url, creds) = split_credentials(raw_url)?;
    let opts = SessionOptions::default()
        .creds(creds)
        .user_agent(USER_AGENT.to_owned());
    let session = tokio::time::timeout(timeout, Session::describe(url, opts))
        .await
        .map_err(|_| SourceError::Timeout("health probe"))?
        .map_err(|e| rtsp_error(&e, raw_url))?;
    if session.streams().iter().any(|s| s.media() == "video") {
        Ok(())
    } else {
        Err(SourceError::NoTracks("SDP has no video".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_split_and_decoded() {
        let (u, c) = split_credentials("rtsp://us%40er:p%3Ass@cam.local:554/s1").expect("valid");
        assert_eq!(u.as_str(), "rtsp://cam.local:554/s1");
        let c = c.expect("creds");
        assert_eq!(c.username, "us@er");
        assert_eq!(c.password, "p:ss");
        let (_, none) = split_credentials("rtsp://cam/s").expect("valid");
        assert!(none.is_none());
        assert!(split_credentials("http://cam/s").is_err());
        assert!(split_credentials("::").is_err());
    }

    #[test]
    fn retina_messages_map_to_categories() {
        use HealthCategory::*;
        for (text, want) in [
            (
                "Unable to connect to RTSP server: Connection refused (os error 111)",
                ConnectionRefused,
            ),
            (
                "Unable to connect to RTSP server: failed to lookup address information: Name or \
                 service not known",
                Dns,
            ),
            (
                "Unable to connect to RTSP server: Network is unreachable (os error 101)",
                Unreachable,
            ),
            (
                "Unable to connect to RTSP server: Connection timed out (os error 110)",
                Timeout,
            ),
            (
                "Unable to connect to RTSP server: Permission denied",
                ConnectFailed,
            ),
            (
                "RTSP framing error: Invalid RTSP message; next 128 of 200 buffered bytes are:\n\
                 HTTP/1.0 501 Unsupported method",
                NotRtsp,
            ),
            ("Timeout", Timeout),
            (
                "Error reading from RTSP peer: Connection reset by peer",
                RtspError,
            ),
        ] {
            assert_eq!(category_of_text(text), want, "{text}");
        }
    }

    #[test]
    fn rescale_keeps_units() {
        assert_eq!(rescale(90_000, 90_000, 90_000), 90_000);
        assert_eq!(rescale(48_000, 48_000, 90_000), 90_000);
        assert_eq!(rescale(5, 0, 90_000), 5);
    }
}
