//! WebRTC load clients: many WHEP sessions in this one process, each a str0m `Rtc` (full ICE,
//! DTLS, SRTP, depacketizing) on a UDP socket of its own, as a browser's receive path would be
//! minus decoding. Each counts the frames it got into the same [`Totals`] the MSE viewers use
//! (a frame is one "message", one "fragment" and one video sample) and checks that its first
//! frame is a keyframe (the server's GOP burst).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::client::Totals;

/// One WHEP viewer: offers to `url` (`http://video/whep/{stream}`), then receives until `stop`
/// (or the server ends it), counting into `totals`, and `DELETE`s its session. Returns the time
/// from the offer to the first frame.
pub async fn whep_viewer(
    http: reqwest::Client,
    url: String,
    totals: Arc<Totals>,
    stop: CancellationToken,
) -> Option<Duration> {
    let t0 = Instant::now();
    let Some((socket, mut rtc, location)) = open(&http, &url).await else {
        totals.ended.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let local = socket.local_addr().ok()?;
    let mut first = None;
    let mut buf = vec![0u8; 2048];
    let ended = loop {
        // Drain the engine, then wait for a datagram or its next deadline.
        let deadline = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::MediaData(d))) => {
                    totals.messages.fetch_add(1, Ordering::Relaxed);
                    totals.fragments.fetch_add(1, Ordering::Relaxed);
                    totals.video_samples.fetch_add(1, Ordering::Relaxed);
                    totals
                        .bytes
                        .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    if first.is_none() {
                        first = Some(t0.elapsed());
                        totals.started.fetch_add(1, Ordering::Relaxed);
                        if !d.is_keyframe() {
                            totals.bad_starts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                ))) => break None,
                Ok(Output::Event(_)) => {}
                Err(_) => break None,
            }
        };
        let Some(deadline) = deadline else {
            break true;
        };
        if !rtc.is_alive() {
            break true;
        }
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        let input = tokio::select! {
            () = stop.cancelled() => break false,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => {
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    })
                }
                Err(_) => break true,
            },
            () = sleep => Input::Timeout(Instant::now()),
        };
        // A datagram str0m does not take (stray, malformed) is dropped.
        let _ = rtc.handle_input(input);
    };
    if ended {
        totals.ended.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(location) = location {
        let _ = http.delete(location).send().await;
    }
    first
}

/// Binds a socket, offers a receive-only video m-line and applies the server's answer; also the
/// session's URL (the answer's `Location`) for the `DELETE`.
async fn open(http: &reqwest::Client, url: &str) -> Option<(UdpSocket, Rtc, Option<String>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let local = socket.local_addr().ok()?;
    let mut rtc = Rtc::new(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").ok()?);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply()?;
    let response = http
        .post(url)
        .header("content-type", "application/sdp")
        .body(offer.to_sdp_string())
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 201 {
        eprintln!(
            "WHEP {url}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        return None;
    }
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok())
        .map(String::from);
    let answer = SdpAnswer::from_sdp_string(&response.text().await.ok()?).ok()?;
    rtc.sdp_api().accept_answer(pending, answer).ok()?;
    Some((socket, rtc, location))
}
