//! Live playback over WebRTC, negotiated with WHEP (`POST /whep/{stream_id}`, [`crate::api::whep`]).
//!
//! One UDP socket serves every session ([`Engine`]): a dispatcher task reads it and hands each
//! datagram to its session, found by the remote address, or for a new address by the ICE
//! username fragment of its STUN binding request (our fragment is unique per session). Each
//! session is one task that owns its `str0m::Rtc` (sans-IO: it feeds datagrams and timeouts in,
//! and sends what comes out through the shared socket), a hub subscription, and its counters.
//!
//! The server is ICE-lite: it answers the browser's checks on the advertised addresses and never
//! sends checks of its own, so it needs no client candidates (Chromium hides them behind mDNS).
//! Video is H.264, or H.265 where the browser offers it, sent as the camera made it (no
//! B-frames). Audio is sent when the camera
//! sends G.711 (PCMU/PCMA at 8 kHz, mono) and the browser offers that codec; AAC has no WebRTC
//! codec, so AAC cameras play video-only (README "WebRTC"). The answer says which
//! ([`Opened::audio`], the `X-WebRTC-Audio` header of the WHEP answer).

pub mod h264;
mod send;
mod session;
mod stun;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use serde::Serialize;
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecConfig};
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceCreds, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::WebRtcConfig;
use crate::hub::Delivery;
use crate::limits::Permit;
use crate::manager::StreamRuntime;
use crate::media::{G711Law, G711Params, VideoCodec};

/// Frames queued between the hub and one session beyond the cached GOP (as for MSE viewers: a
/// session further behind skips to the next keyframe).
const SESSION_QUEUE: usize = 128;
/// Bytes queued between the hub and one session at most.
const SESSION_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Datagrams queued for one session; more are dropped (UDP may lose them anyway).
const DATAGRAM_QUEUE: usize = 256;
/// Largest datagram read (ICE, DTLS, RTCP from browsers are far smaller).
const MAX_DATAGRAM: usize = 2048;

/// Why a WHEP offer was not answered. [`crate::api::whep`] maps each to its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Unavailable(String),
    #[error("stream {0} not found or not running")]
    UnknownStream(Uuid),
    #[error("stream {0} is not live yet (no video from its source); try again shortly")]
    NotLive(Uuid),
    #[error(
        "stream {0} sends B-frames, which browsers decode at about one frame per second over \
         WebRTC; use MSE (/ws/live) or HLS"
    )]
    BFrames(Uuid),
    #[error("stream {0} sends {1}, which is not sent over WebRTC; use MSE (/ws/live) or HLS")]
    Codec(Uuid, &'static str),
    #[error("too many WebRTC sessions ({0}); try again later")]
    Busy(&'static str),
    #[error("invalid SDP offer: {0}")]
    BadOffer(String),
}

/// Counters of one session (also summed into the engine's totals when it ends).
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Datagrams and bytes sent (RTP, RTCP, DTLS, STUN answers).
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Video frames handed to the packetizer.
    pub frames: AtomicU64,
    /// G.711 frames (camera packets) handed to the packetizer.
    pub audio_frames: AtomicU64,
    /// PLI and FIR from the browser (counted: we cannot ask the camera for a keyframe).
    pub keyframe_requests: AtomicU64,
    /// NACKs from the browser (the lost packets are resent from str0m's send buffer).
    pub nacks: AtomicU64,
    /// Times the session lagged and was resynchronised at a keyframe.
    pub resyncs: AtomicU64,
    /// ICE and DTLS are up.
    pub connected: AtomicBool,
}

/// A snapshot of one session, for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStats {
    pub id: Uuid,
    pub stream_id: Uuid,
    pub connected: bool,
    pub age_ms: u64,
    pub packets: u64,
    pub bytes: u64,
    pub frames: u64,
    pub audio_frames: u64,
    pub keyframe_requests: u64,
    pub nacks: u64,
    pub resyncs: u64,
    /// The audio codec sent (`PCMU`, `PCMA`), or `None`: video only.
    pub audio: Option<&'static str>,
}

/// Engine-wide totals (ended sessions included) and the sessions now open.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebRtcStats {
    pub enabled: bool,
    /// The UDP port in use (0 when disabled).
    pub udp_port: u16,
    pub sessions_opened: u64,
    pub sessions_refused: u64,
    pub packets: u64,
    pub bytes: u64,
    pub keyframe_requests: u64,
    pub nacks: u64,
    pub sessions: Vec<SessionStats>,
}

/// One stream's WebRTC numbers: its open sessions, and counters of its sessions since the server
/// started (ended ones included), for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Sessions open now, and how many of them are connected (ICE and DTLS up).
    pub sessions: u64,
    pub connected: u64,
    pub packets: u64,
    pub bytes: u64,
    pub frames: u64,
    pub audio_frames: u64,
    pub keyframe_requests: u64,
    pub nacks: u64,
    pub resyncs: u64,
}

impl StreamCounts {
    fn add(&mut self, c: &SessionCounters) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.packets += load(&c.packets);
        self.bytes += load(&c.bytes);
        self.frames += load(&c.frames);
        self.audio_frames += load(&c.audio_frames);
        self.keyframe_requests += load(&c.keyframe_requests);
        self.nacks += load(&c.nacks);
        self.resyncs += load(&c.resyncs);
    }
}

/// A session that was opened: its id, the SDP answer, and whether it sends audio.
#[derive(Debug, Clone)]
pub struct Opened {
    pub id: Uuid,
    pub answer: String,
    /// `PCMU`/`PCMA` when the session sends the camera's G.711 audio, else why it is video-only
    /// (e.g. `none: the stream has no G.711 audio`).
    pub audio: String,
}

/// The WebRTC side of the server: a running [`Engine`], or why there is none.
pub struct WebRtc {
    engine: Option<Arc<Engine>>,
    unavailable: String,
}

impl Default for WebRtc {
    /// No engine (router tests, or before start): every offer is answered 503.
    fn default() -> Self {
        WebRtc::unavailable("WebRTC is not running on this server")
    }
}

impl WebRtc {
    fn unavailable(reason: &str) -> WebRtc {
        WebRtc {
            engine: None,
            unavailable: reason.to_owned(),
        }
    }

    /// Binds the UDP socket and starts the dispatcher, stopped by `shutdown`. Never fails the
    /// server: a disabled or unbindable WebRTC is logged, and offers are answered 503 with the
    /// reason while MSE and HLS keep working.
    pub async fn start(
        cfg: &WebRtcConfig,
        video_host: &str,
        shutdown: CancellationToken,
    ) -> WebRtc {
        if !cfg.enabled {
            return WebRtc::unavailable("WebRTC is disabled ([webrtc] enabled = false)");
        }
        let host = if cfg.host.trim().is_empty() {
            video_host.trim()
        } else {
            cfg.host.trim()
        };
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let socket = match UdpSocket::bind((host, cfg.udp_port)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(host, port = cfg.udp_port, error = %e,
                    "WebRTC disabled: cannot bind its UDP port ([webrtc] udp_port)");
                return WebRtc::unavailable(&format!(
                    "WebRTC is unavailable: UDP port {} could not be bound",
                    cfg.udp_port
                ));
            }
        };
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "WebRTC disabled: no local address");
                return WebRtc::unavailable("WebRTC is unavailable");
            }
        };
        // One DTLS certificate for every session (its fingerprint goes into each answer), made
        // now: str0m would otherwise make one per session on the request path (the first costs
        // ~100 ms in a debug build, crypto start-up included) and panic if it could not.
        let Some(dtls_cert) = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
        else {
            tracing::error!("WebRTC disabled: no DTLS certificate could be made");
            return WebRtc::unavailable("WebRTC is unavailable: no DTLS certificate");
        };
        let candidates = candidate_addrs(&cfg.advertise, local);
        if candidates.is_empty() {
            tracing::error!("WebRTC disabled: no address to advertise (set [webrtc] advertise)");
            return WebRtc::unavailable("WebRTC is unavailable: no address to advertise");
        }
        tracing::info!(%local, candidates = ?candidates, "WebRTC (WHEP) ready");
        let engine = Arc::new(Engine {
            socket: Arc::new(socket),
            local,
            candidates,
            dtls_cert,
            max_sessions: cfg.max_sessions,
            max_per_stream: cfg.max_sessions_per_stream,
            registry: Mutex::new(Registry::default()),
            totals: Totals::default(),
            gso: AtomicBool::new(cfg!(target_os = "linux")),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(engine.clone().dispatch(shutdown));
        WebRtc {
            engine: Some(engine),
            unavailable: String::new(),
        }
    }

    /// Answers a WHEP offer for a running stream: starts a session, returns its id and the SDP
    /// answer (with every server candidate; the server does not trickle).
    pub fn open(
        &self,
        stream_id: Uuid,
        rt: Arc<StreamRuntime>,
        offer: &str,
        place: Permit,
    ) -> Result<Opened, OpenError> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| OpenError::Unavailable(self.unavailable.clone()))?;
        let result = engine.open(stream_id, rt, offer, place);
        if result.is_err() {
            engine
                .totals
                .sessions_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Whether the engine runs (enabled, UDP port bound): offers can be answered.
    pub fn is_running(&self) -> bool {
        self.engine.is_some()
    }

    /// Ends a session of `stream_id`; false when there is no such session.
    pub fn close(&self, stream_id: Uuid, session: Uuid) -> bool {
        let Some(engine) = &self.engine else {
            return false;
        };
        let reg = engine.lock();
        match reg.sessions.get(&session) {
            Some(e) if e.stream == stream_id => {
                e.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// The token that ends a session (cancelled also when it ends by itself).
    pub fn session_token(&self, session: Uuid) -> Option<CancellationToken> {
        let engine = self.engine.as_ref()?;
        engine
            .lock()
            .sessions
            .get(&session)
            .map(|e| e.cancel.clone())
    }

    /// A recently ended session of `stream_id` (the last few hundred are remembered) with why it
    /// ended; `None` for one that is still open or was never known.
    pub fn ended(&self, stream_id: Uuid, session: Uuid) -> Option<EndedSession> {
        let engine = self.engine.as_ref()?;
        let reg = engine.lock();
        reg.recent_ends
            .iter()
            .rev()
            .find(|e| e.session == session && e.stream == stream_id)
            .cloned()
    }

    /// Whether `stream_id` has this session (it is removed once its task has ended).
    pub fn has_session(&self, stream_id: Uuid, session: Uuid) -> bool {
        self.engine.as_ref().is_some_and(|e| {
            e.lock()
                .sessions
                .get(&session)
                .is_some_and(|s| s.stream == stream_id)
        })
    }

    /// Per stream: open sessions and counters since start (ended sessions included). Empty when
    /// the engine is not running.
    pub fn per_stream(&self) -> HashMap<Uuid, StreamCounts> {
        let Some(engine) = &self.engine else {
            return HashMap::new();
        };
        let reg = engine.lock();
        let mut out = reg.ended.clone();
        for e in reg.sessions.values() {
            let s = out.entry(e.stream).or_default();
            s.sessions += 1;
            s.connected += u64::from(e.counters.connected.load(Ordering::Relaxed));
            s.add(&e.counters);
        }
        out
    }

    /// Totals and open sessions.
    pub fn stats(&self) -> WebRtcStats {
        let Some(engine) = &self.engine else {
            return WebRtcStats::default();
        };
        let t = &engine.totals;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let reg = engine.lock();
        let sessions: Vec<SessionStats> =
            reg.sessions.iter().map(|(id, e)| e.snapshot(*id)).collect();
        let live = |f: fn(&SessionStats) -> u64| sessions.iter().map(f).sum::<u64>();
        WebRtcStats {
            enabled: true,
            udp_port: engine.local.port(),
            sessions_opened: load(&t.sessions_opened),
            sessions_refused: load(&t.sessions_refused),
            packets: load(&t.packets) + live(|s| s.packets),
            bytes: load(&t.bytes) + live(|s| s.bytes),
            keyframe_requests: load(&t.keyframe_requests) + live(|s| s.keyframe_requests),
            nacks: load(&t.nacks) + live(|s| s.nacks),
            sessions,
        }
    }
}

/// The addresses put into candidates: the configured ones, else the bound address, else (a
/// wildcard bind) the address the host uses for outgoing traffic and the loopback address.
fn candidate_addrs(advertise: &[String], local: SocketAddr) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut push = |a: SocketAddr| {
        if Candidate::host(a, "udp").is_ok() && !out.contains(&a) {
            out.push(a);
        }
    };
    if !advertise.is_empty() {
        for entry in advertise {
            let entry = entry.trim();
            if let Ok(a) = entry.parse::<SocketAddr>() {
                push(a);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                push(SocketAddr::new(ip, local.port()));
            } else {
                let with_port = if entry.contains(':') {
                    entry.to_owned()
                } else {
                    format!("{entry}:{}", local.port())
                };
                match with_port.to_socket_addrs() {
                    Ok(addrs) => addrs.for_each(&mut push),
                    Err(e) => {
                        tracing::warn!(entry, error = %e, "[webrtc] advertise: cannot resolve; skipped");
                    }
                }
            }
        }
        return out;
    }
    if !local.ip().is_unspecified() {
        push(local);
        return out;
    }
    // The address of the interface the default route leaves by (no packet is sent: connecting
    // a UDP socket only picks the route). 192.0.2.1 is a documentation address.
    let outgoing = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    if let Ok(a) = outgoing {
        push(SocketAddr::new(a.ip(), local.port()));
    }
    push(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        local.port(),
    ));
    out
}

/// The socket, the sessions and the totals.
pub struct Engine {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    /// The certificate every session's DTLS uses (self-signed; browsers check its fingerprint).
    dtls_cert: DtlsCert,
    max_sessions: usize,
    max_per_stream: usize,
    registry: Mutex<Registry>,
    totals: Totals,
    /// Sessions send the packets of a frame with UDP segmentation offload ([`send`]); cleared
    /// when the kernel refuses it.
    gso: AtomicBool,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Totals {
    sessions_opened: AtomicU64,
    sessions_refused: AtomicU64,
    /// Of ended sessions (open ones are added from their own counters).
    packets: AtomicU64,
    bytes: AtomicU64,
    keyframe_requests: AtomicU64,
    nacks: AtomicU64,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<Uuid, Entry>,
    by_ufrag: HashMap<String, Uuid>,
    by_addr: HashMap<SocketAddr, Uuid>,
    /// Counters of ended sessions, by stream (one entry per stream ever watched over WebRTC).
    ended: HashMap<Uuid, StreamCounts>,
    /// The last [`RECENT_ENDS`] sessions that ended, newest last: a client asking about one
    /// (DELETE, PATCH) learns that it ended and why.
    recent_ends: VecDeque<EndedSession>,
}

/// How many ended sessions are remembered with their reason.
const RECENT_ENDS: usize = 256;

/// A session that has ended: why, and when.
#[derive(Debug, Clone)]
pub struct EndedSession {
    pub session: Uuid,
    pub stream: Uuid,
    /// Why it ended, e.g. `stream stopped`, `browser silent (consent expired)`.
    pub reason: &'static str,
    pub at: Instant,
}

struct Entry {
    stream: Uuid,
    tx: mpsc::Sender<Datagram>,
    cancel: CancellationToken,
    counters: Arc<SessionCounters>,
    created: Instant,
    audio: Option<&'static str>,
}

impl Entry {
    fn snapshot(&self, id: Uuid) -> SessionStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SessionStats {
            id,
            stream_id: self.stream,
            connected: c.connected.load(Ordering::Relaxed),
            age_ms: u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX),
            packets: load(&c.packets),
            bytes: load(&c.bytes),
            frames: load(&c.frames),
            audio_frames: load(&c.audio_frames),
            audio: self.audio,
            keyframe_requests: load(&c.keyframe_requests),
            nacks: load(&c.nacks),
            resyncs: load(&c.resyncs),
        }
    }
}

/// One datagram for a session.
struct Datagram {
    at: Instant,
    from: SocketAddr,
    data: Vec<u8>,
}

impl Engine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Never held across an await; a poisoned lock still guards consistent maps.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local candidate a remote address reaches: str0m drops STUN requests whose destination
    /// is not one of its host candidates, and a wildcard socket does not tell which address a
    /// datagram came in on. Loopback peers use a loopback candidate, others one of their family.
    fn local_for(&self, remote: SocketAddr) -> SocketAddr {
        let same_family = |c: &&SocketAddr| c.is_ipv4() == remote.is_ipv4();
        self.candidates
            .iter()
            .filter(same_family)
            .find(|c| c.ip().is_loopback() == remote.ip().is_loopback())
            .or_else(|| self.candidates.iter().find(same_family))
            .or(self.candidates.first())
            .copied()
            .unwrap_or(self.local)
    }

    fn open(
        self: &Arc<Self>,
        stream_id: Uuid,
        rt: Arc<StreamRuntime>,
        offer_text: &str,
        place: Permit,
    ) -> Result<Opened, OpenError> {
        {
            let reg = self.lock();
            if self.max_sessions > 0 && reg.sessions.len() >= self.max_sessions {
                return Err(OpenError::Busy("server limit, [webrtc] max_sessions"));
            }
            let of_stream = reg
                .sessions
                .values()
                .filter(|e| e.stream == stream_id)
                .count();
            if self.max_per_stream > 0 && of_stream >= self.max_per_stream {
                return Err(OpenError::Busy(
                    "stream limit, [webrtc] max_sessions_per_stream",
                ));
            }
        }
        let offer = SdpOffer::from_sdp_string(offer_text)
            .map_err(|e| OpenError::BadOffer(parse_error_text(&e.to_string())))?;
        let params = rt.hub.params().borrow().clone();
        let Some(video) = params.as_ref().and_then(|p| p.video.clone()) else {
            // An on-demand source starts when someone asks for it; the client retries.
            rt.demand.hls_request();
            return Err(OpenError::NotLive(stream_id));
        };
        // H.265 only where the browser offers it (Chromium 136+ and Safari 18+ with hardware
        // decoding do; others are sent to MSE or HLS with the reason).
        if video.codec == VideoCodec::H265 && !offers_h265(offer_text) {
            return Err(OpenError::Codec(
                stream_id,
                "H.265 and the browser's offer has no H265 payload type",
            ));
        }
        let annexb = h264::AnnexB::new(&video).map_err(|e| {
            tracing::warn!(stream = %stream_id, error = %e, "WebRTC: unusable video parameters");
            OpenError::NotLive(stream_id)
        })?;
        // Subscribe now, so the cached GOP (the burst a new session starts with) is checked
        // for B-frames before answering.
        // AAC is not a WebRTC codec: its frames are not even queued (no wake-up for them).
        let mut sub = rt.hub.subscribe_with(
            SESSION_QUEUE,
            SESSION_QUEUE_BYTES,
            crate::hub::AudioWake::Never,
        );
        let mut burst: Vec<Delivery> = Vec::new();
        while sub.queued() > 0 {
            match sub.recv().now_or_never() {
                Some(Some(d)) => burst.push(d),
                _ => break,
            }
        }
        if burst.is_empty() && rt.hub.published() == 0 {
            // The codec is known (from the camera's SDP) but no frame has come yet: answering now
            // would leave the browser waiting for the source to start and its first keyframe.
            return Err(OpenError::NotLive(stream_id));
        }
        let frames: Vec<_> = burst.iter().map(|d| d.frame.clone()).collect();
        if h264::reorders(&video, &frames) {
            return Err(OpenError::BFrames(stream_id));
        }

        // The camera's G.711, when it has one WebRTC can carry (browsers offer PCMU and PCMA
        // at 8 kHz mono only): listened to now, so the session misses nothing once connected.
        let g711 = rt.hub.g711();
        let g711_ok = g711.filter(|g| g.clock_rate == 8000 && g.channels == 1);
        let audio_rx = g711_ok.map(|_| rt.hub.subscribe_g711());

        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let mut rtc = rtc_config(video.codec, g711_ok.map(|g| g.law))
            .set_local_ice_credentials(creds)
            .set_dtls_cert(self.dtls_cert.clone())
            .set_stats_interval(Some(std::time::Duration::from_secs(1)))
            .build(Instant::now());
        for addr in &self.candidates {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OpenError::BadOffer(e.to_string()))?;
        let added = media_added(&mut rtc, offer_text)?;
        let (mid, pt) = video_target(&mut rtc, offer_text, &added, video.codec)?;
        let audio_target = g711_ok.and_then(|g| audio_target(&mut rtc, &added, g));
        let audio_name = audio_target.map(|_| g711_ok.map_or("", |g| g.law.name()));
        let audio_info = match (audio_name, g711) {
            (Some(name), _) => name.to_owned(),
            (None, None) => "none: the stream has no G.711 audio (AAC has no WebRTC codec)".into(),
            (None, Some(g)) if Some(g) != g711_ok => format!(
                "none: the camera's {} is {} Hz, {} channel(s); WebRTC carries 8000 Hz mono",
                g.law.name(),
                g.clock_rate,
                g.channels
            ),
            (None, Some(g)) => format!("none: the offer has no {} audio", g.law.name()),
        };
        let audio = match (audio_target, audio_rx) {
            (Some((mid, pt)), Some(rx)) => Some(session::AudioOut { mid, pt, rx }),
            _ => None,
        };

        let id = Uuid::new_v4();
        let (tx, rx) = mpsc::channel(DATAGRAM_QUEUE);
        let cancel = self.shutdown.child_token();
        let counters = Arc::new(SessionCounters::default());
        {
            let mut reg = self.lock();
            reg.sessions.insert(
                id,
                Entry {
                    stream: stream_id,
                    tx,
                    cancel: cancel.clone(),
                    counters: counters.clone(),
                    created: Instant::now(),
                    audio: audio_name,
                },
            );
            reg.by_ufrag.insert(ufrag, id);
        }
        self.totals.sessions_opened.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %stream_id, session = %id, pt = ?pt, audio = %audio_info,
            "WebRTC session opened");
        let task = session::Session {
            id,
            stream_id,
            rtc,
            engine: self.clone(),
            rx,
            sub,
            burst_bytes: burst.iter().map(|d| d.frame.data.len()).sum(),
            burst: burst.into(),
            annexb,
            outbox: send::Outbox::default(),
            params_version: params.as_ref().map_or(0, |p| p.version),
            mid,
            pt,
            audio,
            counters,
            cancel,
            rt,
            _place: place,
        };
        tokio::spawn(task.run());
        Ok(Opened {
            id,
            answer: answer.to_sdp_string(),
            audio: audio_info,
        })
    }

    /// Removes an ended session, adds its counters to the totals and remembers why it ended.
    fn remove(&self, id: Uuid, reason: &'static str) {
        let mut reg = self.lock();
        if let Some(e) = reg.sessions.remove(&id) {
            if reg.recent_ends.len() >= RECENT_ENDS {
                reg.recent_ends.pop_front();
            }
            reg.recent_ends.push_back(EndedSession {
                session: id,
                stream: e.stream,
                reason,
                at: Instant::now(),
            });
            reg.ended.entry(e.stream).or_default().add(&e.counters);
            let c = &e.counters;
            let t = &self.totals;
            for (total, own) in [
                (&t.packets, &c.packets),
                (&t.bytes, &c.bytes),
                (&t.keyframe_requests, &c.keyframe_requests),
                (&t.nacks, &c.nacks),
            ] {
                total.fetch_add(own.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        reg.by_ufrag.retain(|_, s| *s != id);
        reg.by_addr.retain(|_, s| *s != id);
    }

    /// Reads the socket until shutdown and routes each datagram to its session.
    async fn dispatch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (n, from) = match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some systems; keep serving.
                    tracing::debug!(error = %e, "WebRTC socket read");
                    continue;
                }
            };
            let Some(data) = buf.get(..n) else { continue };
            let tx = {
                let mut reg = self.lock();
                let id = match reg.by_addr.get(&from) {
                    Some(id) => Some(*id),
                    None => {
                        let found = stun::request_local_ufrag(data)
                            .and_then(|u| reg.by_ufrag.get(u).copied());
                        if let Some(id) = found {
                            reg.by_addr.insert(from, id);
                        }
                        found
                    }
                };
                id.and_then(|id| reg.sessions.get(&id).map(|e| e.tx.clone()))
            };
            if let Some(tx) = tx {
                let _ = tx.try_send(Datagram {
                    at: Instant::now(),
                    from,
                    data: data.to_vec(),
                });
            }
        }
    }
}

/// What every session's `Rtc` is made with: ICE-lite, the stream's video codec only, the
/// camera's G.711 law only when it has one (the answer accepts the browser's audio m-line with
/// it, or rejects the m-line when there is nothing to send), and [`rtp_extensions`].
fn rtc_config(video: VideoCodec, g711: Option<G711Law>) -> RtcConfig {
    let h265 = video == VideoCodec::H265;
    let config = RtcConfig::new()
        .set_extension_map(rtp_extensions())
        .set_ice_lite(true)
        .clear_codecs()
        .enable_h264(!h265)
        .enable_h265(h265);
    let mut config = match g711 {
        Some(G711Law::Pcmu) => config.enable_pcmu(true, false),
        Some(G711Law::Pcma) => config.enable_pcma(true, false),
        None => config,
    };
    // No `a=rtcp-fb:* transport-cc` either: see rtp_extensions.
    let mut params = config.codec_config().params().to_vec();
    params.iter_mut().for_each(|p| p.set_fb_transport_cc(false));
    *config.codec_config() = CodecConfig::new_from_payload_params(params);
    config
}

/// The RTP header extensions offered back: str0m's standard set without transport-wide
/// sequence numbers. With those negotiated, the browser sends transport-wide congestion control
/// feedback (RTCP, ~16 datagrams a second per session, measured: nine in ten of all it sends),
/// which feeds a bandwidth estimator this server does not run (it forwards the camera's bitrate
/// as it is); each one woke the dispatcher and the session for nothing.
fn rtp_extensions() -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if *ext != Extension::TransportSequenceNumber {
            exts.set(id, ext.clone());
        }
    }
    exts
}

/// Whether any video m-line of the offer has an H265 payload type.
fn offers_h265(offer: &str) -> bool {
    offer.lines().any(|l| {
        l.trim()
            .strip_prefix("a=rtpmap:")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .is_some_and(|enc| enc.to_ascii_lowercase().starts_with("h265/"))
    })
}

/// The `a=mid` of each audio and video m-line of the offer, in order.
fn offer_mids(offer: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in offer.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            kind = if media.starts_with("video") {
                Some(MediaKind::Video)
            } else if media.starts_with("audio") {
                Some(MediaKind::Audio)
            } else {
                None
            };
        } else if let (Some(k), Some(mid)) = (kind, line.strip_prefix("a=mid:")) {
            out.push((Mid::from(mid.trim()), k));
            kind = None;
        }
    }
    out
}

/// The `a=mid` of the offer's first video m-line.
fn offer_video_mid(offer: &str) -> Option<Mid> {
    let mut in_video = false;
    for line in offer.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            in_video = media.starts_with("video");
        } else if in_video && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(Mid::from(mid.trim()));
        }
    }
    None
}

/// The SDP parser's error as a client may see it: its lines joined with "; ", without the
/// `at PointerOffset(0x...)` the parser puts in (the address of the position in this process's
/// memory, which tells nothing about the offer and must not leave the server).
fn parse_error_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("PointerOffset(") {
        let before = rest[..at].trim_end();
        out.push_str(before.strip_suffix(" at").unwrap_or(before));
        rest = rest[at..].find(')').map_or("", |end| &rest[at + end + 1..]);
    }
    out.push_str(rest);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The m-lines of the accepted offer, in order, with their kind: the offer's `a=mid` lines (in
/// the offer's order), then any the `Rtc` announced that the text did not name.
fn media_added(rtc: &mut Rtc, offer: &str) -> Result<Vec<(Mid, MediaKind)>, OpenError> {
    let mut added = offer_mids(offer);
    loop {
        match rtc.poll_output() {
            Ok(Output::Event(Event::MediaAdded(m))) => {
                if !added.iter().any(|(mid, _)| *mid == m.mid) {
                    added.push((m.mid, m.kind));
                }
            }
            Ok(Output::Event(_) | Output::Transmit(_)) => {}
            Ok(Output::Timeout(_)) => return Ok(added),
            Err(e) => return Err(OpenError::BadOffer(e.to_string())),
        }
    }
}

/// The audio m-line to send the camera's G.711 on, and its payload type: the first audio m-line
/// whose accepted payload types include the camera's law. `None`: video only.
fn audio_target(rtc: &mut Rtc, added: &[(Mid, MediaKind)], g711: G711Params) -> Option<(Mid, Pt)> {
    let codec = match g711.law {
        G711Law::Pcmu => Codec::PCMU,
        G711Law::Pcma => Codec::PCMA,
    };
    added
        .iter()
        .filter(|(_, kind)| *kind == MediaKind::Audio)
        .find_map(|(mid, _)| {
            let writer = rtc.writer(*mid)?;
            let pt = writer
                .payload_params()
                .find(|p| p.spec().codec == codec && p.spec().clock_rate.get() == 8000)
                .map(|p| p.pt())?;
            Some((*mid, pt))
        })
}

/// The video m-line of the offer and the payload type to send on: an H.264 type with
/// packetization-mode 1, constrained baseline preferred. The camera's own profile is not
/// matched: browsers decode Main and High on any H.264 type (Chromium offers no High profile).
/// For H.265 streams, the offer's first H265 payload type is taken (str0m matches its profile,
/// tier and level parameters against ours).
fn video_target(
    rtc: &mut Rtc,
    offer: &str,
    added: &[(Mid, MediaKind)],
    codec: VideoCodec,
) -> Result<(Mid, Pt), OpenError> {
    let mid = offer_video_mid(offer).or_else(|| {
        added
            .iter()
            .find(|(_, kind)| *kind == MediaKind::Video)
            .map(|(mid, _)| *mid)
    });
    let mid = mid.ok_or_else(|| OpenError::BadOffer("the offer has no video m-line".into()))?;
    let writer = rtc
        .writer(mid)
        .ok_or_else(|| OpenError::BadOffer("the offer's video is not receivable".into()))?;
    if codec == VideoCodec::H265 {
        return writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::H265)
            .map(|p| (mid, p.pt()))
            .ok_or_else(|| {
                OpenError::BadOffer("the offer's H265 payload types were not accepted".into())
            });
    }
    let mut best: Option<(u8, Pt)> = None;
    for p in writer.payload_params() {
        let spec = p.spec();
        if spec.codec != Codec::H264 {
            continue;
        }
        let fmtp = spec.format;
        let rank = match (fmtp.packetization_mode, fmtp.profile_level_id) {
            (Some(1), Some(0x42e01f)) => 3,
            (Some(1), _) => 2,
            _ => 1,
        };
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, p.pt()));
        }
    }
    match best {
        Some((rank, pt)) if rank >= 2 => Ok((mid, pt)),
        _ => Err(OpenError::BadOffer(
            "the offer has no H.264 payload type with packetization-mode=1".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recvonly offer as Chromium makes it with a video and an audio transceiver (trimmed): one
    /// H.264 type, and Opus, PCMU and PCMA for audio.
    const AV_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 8A:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 8A:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8\r\n\
a=setup:actpass\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

    /// Answers `offer` as [`Engine::open`] does for a stream with `g711`: the answer, the video
    /// target and the audio target.
    fn negotiate(offer: &str, g711: Option<G711Params>) -> (String, (Mid, Pt), Option<(Mid, Pt)>) {
        let (answer, video, audio) = negotiate_codec(offer, g711, VideoCodec::H264);
        (answer, video.expect("video"), audio)
    }

    type Negotiated = (String, Result<(Mid, Pt), OpenError>, Option<(Mid, Pt)>);

    fn negotiate_codec(offer: &str, g711: Option<G711Params>, codec: VideoCodec) -> Negotiated {
        let mut rtc = rtc_config(codec, g711.map(|g| g.law)).build(Instant::now());
        let parsed = SdpOffer::from_sdp_string(offer).expect("offer");
        let answer = rtc.sdp_api().accept_offer(parsed).expect("accepted");
        let added = media_added(&mut rtc, offer).expect("media");
        let video = video_target(&mut rtc, offer, &added, codec);
        let audio = g711.and_then(|g| audio_target(&mut rtc, &added, g));
        (answer.to_sdp_string(), video, audio)
    }

    /// A recvonly video offer with one H.264 and one H.265 payload type, as Chromium 136+ makes
    /// it where the GPU decodes H.265 (headless Chromium here offers no H265).
    pub(crate) const H265_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102 49\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 8A:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:49 H265/90000\r\na=rtcp-fb:49 nack\r\na=rtcp-fb:49 nack pli\r\n\
a=fmtp:49 level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST\r\n";

    #[test]
    fn h265_streams_answer_with_the_offers_h265_payload_type() {
        assert!(offers_h265(H265_OFFER));
        assert!(!offers_h265(AV_OFFER));
        let (answer, video, _) = negotiate_codec(H265_OFFER, None, VideoCodec::H265);
        let (mid, pt) = video.expect("H265 accepted");
        assert_eq!((mid, *pt), (Mid::from("0"), 49));
        assert!(
            answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 49"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:49 H265/90000"), "{answer}");
        assert!(!answer.contains("H264"), "{answer}");
        // The same offer for an H.264 stream keeps H.264.
        let (answer, video, _) = negotiate_codec(H265_OFFER, None, VideoCodec::H264);
        assert_eq!(video.map(|(_, pt)| *pt).ok(), Some(102));
        assert!(!answer.contains("H265"), "{answer}");
    }

    /// Chromium offers transport-wide sequence numbers next to the other header extensions; the
    /// answer leaves them out (no congestion control feedback comes back) and keeps the others.
    #[test]
    fn the_answer_asks_for_no_transport_wide_feedback() {
        let exts = "a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=rtcp-fb:102 transport-cc\r\na=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n";
        let offer = AV_OFFER.replacen(
            "a=rtpmap:102 H264/90000\r\n",
            &format!("a=rtpmap:102 H264/90000\r\n{exts}"),
            1,
        );
        let (answer, _, _) = negotiate(&offer, None);
        assert!(!answer.contains("transport-wide-cc"), "{answer}");
        assert!(!answer.contains("transport-cc"), "{answer}");
        assert!(answer.contains("sdes:mid"), "{answer}");
        assert!(answer.contains("a=rtcp-fb:102 nack pli"), "{answer}");
    }

    fn audio_section(answer: &str) -> &str {
        let at = answer
            .find("m=audio")
            .expect("an audio m-line in the answer");
        &answer[at..]
    }

    #[test]
    fn g711_cameras_get_their_law_accepted_and_others_send_no_audio() {
        let pcmu = G711Params {
            law: G711Law::Pcmu,
            clock_rate: 8000,
            channels: 1,
        };
        let (answer, (vmid, _), audio) = negotiate(AV_OFFER, Some(pcmu));
        assert_eq!(vmid, Mid::from("0"));
        let (amid, apt) = audio.expect("audio accepted");
        assert_eq!((amid, *apt), (Mid::from("1"), 0));
        let a = audio_section(&answer);
        assert!(
            a.starts_with("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"),
            "{answer}"
        );
        assert!(
            a.contains("a=sendonly") && a.contains("PCMU/8000"),
            "{answer}"
        );

        let pcma = G711Params {
            law: G711Law::Pcma,
            ..pcmu
        };
        let (answer, _, audio) = negotiate(AV_OFFER, Some(pcma));
        assert_eq!(audio.map(|(_, pt)| *pt), Some(8));
        assert!(audio_section(&answer).contains("PCMA/8000"), "{answer}");

        // An AAC (or silent) camera: the audio m-line is not sent on, the video still is.
        let (answer, (vmid, _), audio) = negotiate(AV_OFFER, None);
        assert_eq!(vmid, Mid::from("0"));
        assert!(audio.is_none());
        // Rejected: port 0, out of the BUNDLE group.
        assert!(audio_section(&answer).starts_with("m=audio 0 "), "{answer}");
        assert!(answer.contains("a=group:BUNDLE 0\r\n"), "{answer}");

        // A browser offering only Opus for a PCMU camera: video only.
        let opus_only = AV_OFFER.replace("111 0 8\r\n", "111\r\n");
        let opus_only = opus_only
            .replace("a=rtpmap:0 PCMU/8000\r\n", "")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "");
        let (_, _, audio) = negotiate(&opus_only, Some(pcmu));
        assert!(audio.is_none());
    }

    #[test]
    fn sdp_parse_errors_reach_clients_without_addresses() {
        let Err(e) = SdpOffer::from_sdp_string("0") else {
            panic!("\"0\" parsed as an SDP offer");
        };
        let raw = e.to_string();
        assert!(
            raw.contains("PointerOffset(0x"),
            "parser text changed: {raw}"
        );
        let text = parse_error_text(&raw);
        assert!(!text.contains("0x") && !text.contains('\n'), "{text}");
        assert!(text.contains("Expected `v`"), "{text}");
        assert_eq!(
            parse_error_text("Parse error at PointerOffset(0x1234)\nUnexpected `0`\n"),
            "Parse error; Unexpected `0`"
        );
    }
}
