//! H.264 and H.265 for WebRTC: length-prefixed samples (as the hub carries them) to Annex-B
//! access units with the parameter sets in front of every keyframe (SPS and PPS before an H.264
//! IDR; VPS, SPS and PPS before an H.265 IRAP picture), and whether a stream may reorder frames
//! (B-frames). str0m's packetizers cut the access units into RTP packets (RFC 6184 for H.264,
//! RFC 7798 for H.265: single NAL unit packets, fragmentation units for NAL units larger than a
//! packet, parameter sets aggregated into one packet).

use bytes::Bytes;

use crate::media::codec::{AvcRecordFields, avc_record_fields, hevc_parameter_sets};
use crate::media::{Frame, MediaError, VideoCodec, VideoParams};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
/// H.265 NAL unit types: IRAP pictures (BLA, IDR, CRA and the reserved IRAP types), parameter
/// sets and the access unit delimiter.
const HEVC_IRAP: std::ops::RangeInclusive<u8> = 16..=23;
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;

/// Rewrites a stream's samples into Annex-B access units for str0m's packetizer.
#[derive(Debug, Clone)]
pub struct AnnexB {
    codec: VideoCodec,
    length_size: usize,
    /// The parameter sets put before every keyframe, in order (SPS, PPS; or VPS, SPS, PPS).
    params: Vec<Bytes>,
}

impl AnnexB {
    /// From the stream's video parameters (H.264 or H.265).
    pub fn new(video: &VideoParams) -> Result<AnnexB, MediaError> {
        match video.codec {
            VideoCodec::H264 => {
                let AvcRecordFields {
                    length_size_minus_one,
                    sps,
                    pps,
                    ..
                } = avc_record_fields(&video.config_record)?;
                if sps.is_empty() || pps.is_empty() {
                    return Err(MediaError::InvalidParams("avcC without SPS or PPS".into()));
                }
                Ok(AnnexB {
                    codec: VideoCodec::H264,
                    length_size: usize::from(length_size_minus_one & 3) + 1,
                    params: sps.into_iter().chain(pps).collect(),
                })
            }
            VideoCodec::H265 => {
                let (length_size_minus_one, params) = hevc_parameter_sets(&video.config_record)?;
                let has = |t: u8| params.iter().any(|p| hevc_type(p) == t);
                if !(has(HEVC_VPS) && has(HEVC_SPS) && has(HEVC_PPS)) {
                    return Err(MediaError::InvalidParams(
                        "hvcC without VPS, SPS or PPS".into(),
                    ));
                }
                Ok(AnnexB {
                    codec: VideoCodec::H265,
                    length_size: usize::from(length_size_minus_one & 3) + 1,
                    params,
                })
            }
        }
    }

    /// The codec the access units are of.
    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// The Annex-B access unit of one sample. In-band parameter sets and access unit delimiters
    /// are dropped; the record's parameter sets go before every keyframe, so a decoder can start
    /// at any of them. A sample whose lengths run past its end is cut at the last whole NAL unit.
    pub fn access_unit(&self, sample: &[u8]) -> Vec<u8> {
        let mut nals: Vec<&[u8]> = Vec::new();
        let mut rest = sample;
        while rest.len() > self.length_size {
            let (len_bytes, tail) = rest.split_at(self.length_size);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len == 0 || len > tail.len() {
                break;
            }
            let (nal, tail) = tail.split_at(len);
            nals.push(nal);
            rest = tail;
        }
        // Which NAL units make a keyframe, and which are dropped (parameter sets, delimiters).
        let (keyframe, dropped): (NalTest, NalTest) = match self.codec {
            VideoCodec::H264 => (
                |n| h264_type(n) == NAL_IDR,
                |n| matches!(h264_type(n), NAL_SPS | NAL_PPS | NAL_AUD),
            ),
            VideoCodec::H265 => (
                |n| HEVC_IRAP.contains(&hevc_type(n)),
                |n| matches!(hevc_type(n), HEVC_VPS | HEVC_SPS | HEVC_PPS | HEVC_AUD),
            ),
        };
        let mut out = Vec::with_capacity(sample.len() + 64);
        if nals.iter().any(|n| keyframe(n)) {
            for p in &self.params {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(p);
            }
        }
        for n in nals {
            if dropped(n) {
                continue;
            }
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(n);
        }
        out
    }
}

/// A test on one NAL unit.
type NalTest = fn(&[u8]) -> bool;

fn h264_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| h & 0x1f)
}

fn hevc_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| (h >> 1) & 0x3f)
}

/// Whether a stream sends frames out of presentation order (B-frames), which browsers decode at
/// about one frame per second over WebRTC: a frame with a composition offset, or an SPS whose
/// VUI allows reordering (`max_num_reorder_frames > 0`). Cameras that say nothing in their VUI
/// and use no offsets count as not reordering.
pub fn reorders(video: &VideoParams, frames: &[Frame]) -> bool {
    if frames.iter().any(|f| f.cts_offset != 0) {
        return true;
    }
    if video.codec == VideoCodec::H265 {
        // No SPS check for H.265 (cameras send no B-frames; the offsets above tell).
        return false;
    }
    let Ok(fields) = avc_record_fields(&video.config_record) else {
        return false;
    };
    fields
        .sps
        .iter()
        .any(|sps| max_num_reorder_frames(sps).is_some_and(|n| n > 0))
}

/// `max_num_reorder_frames` from an SPS's VUI bitstream restrictions, when present.
fn max_num_reorder_frames(sps_nal: &[u8]) -> Option<u32> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{BitReader, decode_nal};

    let rbsp = decode_nal(sps_nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
    sps.vui_parameters?
        .bitstream_restrictions
        .map(|b| b.max_num_reorder_frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(sps: &[u8], pps: &[u8]) -> Bytes {
        let mut r = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        r.extend_from_slice(sps);
        r.push(1);
        r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        r.extend_from_slice(pps);
        Bytes::from(r)
    }

    // The demo clip's SPS (640x360 Main, no B-frames) and PPS, and the SPS of an x264 stream
    // with `-bf 2`.
    const SPS: &[u8] = &[
        0x67, 0x4d, 0x40, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const SPS_BFRAMES: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xcc, 0xb2];

    fn params() -> VideoParams {
        VideoParams {
            codec: VideoCodec::H264,
            config_record: avcc(SPS, PPS),
            width: 640,
            height: 360,
            codec_string: "avc1.4D401E".into(),
        }
    }

    fn sample(nals: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for n in nals {
            s.extend_from_slice(&(n.len() as u32).to_be_bytes());
            s.extend_from_slice(n);
        }
        s
    }

    #[test]
    fn idr_gets_sps_and_pps_and_in_band_copies_are_dropped() {
        let a = AnnexB::new(&params()).expect("params");
        let au = a.access_unit(&sample(&[&[0x09, 0xf0], SPS, PPS, &[0x65, 1, 2, 3]]));
        let mut want = Vec::new();
        for n in [SPS, PPS, &[0x65, 1, 2, 3][..]] {
            want.extend_from_slice(&START_CODE);
            want.extend_from_slice(n);
        }
        assert_eq!(au, want);
        let p = a.access_unit(&sample(&[&[0x41, 9, 9]]));
        assert_eq!(p, [0, 0, 0, 1, 0x41, 9, 9]);
    }

    #[test]
    fn truncated_samples_keep_their_whole_nal_units() {
        let a = AnnexB::new(&params()).expect("params");
        let mut s = sample(&[&[0x41, 1]]);
        s.extend_from_slice(&[0, 0, 0, 50, 0x41]);
        assert_eq!(a.access_unit(&s), [0, 0, 0, 1, 0x41, 1]);
        assert!(a.access_unit(&[0, 0]).is_empty());
        assert!(a.access_unit(&[]).is_empty());
    }

    #[test]
    fn b_frames_are_seen_in_the_sps_or_in_composition_offsets() {
        let p = params();
        assert!(!reorders(&p, &[]));
        let b = VideoParams {
            config_record: avcc(SPS_BFRAMES, PPS),
            ..params()
        };
        assert!(reorders(&b, &[]));
        let frame = Frame {
            track: crate::media::TrackKind::Video,
            dts: 0,
            duration: 3600,
            cts_offset: 7200,
            keyframe: false,
            wallclock_us: 0,
            data: Bytes::new(),
            params: std::sync::Arc::new(crate::media::StreamParams {
                version: 1,
                video: Some(p.clone()),
                audio: None,
            }),
        };
        assert!(reorders(&p, &[frame]));
    }

    #[test]
    fn h265_irap_pictures_get_vps_sps_and_pps() {
        use crate::media::codec::hevc_parameter_sets;
        use crate::media::codec::tests::X265_HVCC;
        let video =
            crate::media::codec::h265_params(Bytes::from_static(X265_HVCC)).expect("x265 record");
        let a = AnnexB::new(&video).expect("params");
        assert_eq!(a.codec(), VideoCodec::H265);
        let (_, sets) = hevc_parameter_sets(X265_HVCC).expect("sets");
        let types: Vec<u8> = sets.iter().map(|p| hevc_type(p)).collect();
        assert_eq!(types, [HEVC_VPS, HEVC_SPS, HEVC_PPS]);
        // An access unit delimiter, in-band VPS, an IDR_W_RADL slice (type 19) and a CRA (21).
        let aud: &[u8] = &[HEVC_AUD << 1, 0x01, 0x50];
        let idr: &[u8] = &[19 << 1, 0x01, 0xaf, 0x01];
        let cra: &[u8] = &[21 << 1, 0x01, 0xaf, 0x02];
        let trail: &[u8] = &[1 << 1, 0x01, 0xd0, 0x03];
        let mut want = Vec::new();
        for n in sets.iter().map(|b| &b[..]).chain([idr]) {
            want.extend_from_slice(&START_CODE);
            want.extend_from_slice(n);
        }
        assert_eq!(a.access_unit(&sample(&[aud, &sets[0], idr])), want);
        let au = a.access_unit(&sample(&[cra]));
        assert!(au.ends_with(cra) && au.len() > cra.len() + 40, "{au:?}");
        // A trailing picture goes alone.
        assert_eq!(
            a.access_unit(&sample(&[trail])),
            [&START_CODE[..], trail].concat()
        );
        // An avcC record is no hvcC.
        let mut wrong = params();
        wrong.codec = VideoCodec::H265;
        assert!(AnnexB::new(&wrong).is_err());
    }
}

/// The H.265 RTP packets str0m makes of our access units (RFC 7798), seen by a second `Rtc` in
/// RTP mode over an in-memory link: the units are a real IDR and P picture of the GStreamer test
/// server's `/h265` mount (x265; `testdata/h265_idr_p.hevc`, captured with `ffmpeg -c copy`).
#[cfg(test)]
mod rfc7798_tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use str0m::format::Codec;
    use str0m::media::{Direction, MediaKind, MediaTime};
    use str0m::net::{Protocol, Receive};
    use str0m::rtp::RawPacket;
    use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

    use super::{HEVC_PPS, HEVC_SPS, HEVC_VPS, hevc_type};

    /// VPS, SPS, PPS, SEI (as extradata), then the same again in-band with the IDR_N_LP slice,
    /// then a TRAIL_R slice.
    const CAPTURE: &[u8] = include_bytes!("testdata/h265_idr_p.hevc");
    const AP: u8 = 48;
    const FU: u8 = 49;

    /// The NAL units of an Annex-B byte stream.
    fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
        let starts: Vec<usize> = stream
            .windows(3)
            .enumerate()
            .filter(|(_, w)| *w == [0, 0, 1])
            .map(|(i, _)| i + 3)
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(n, &s)| {
                let end = starts.get(n + 1).map_or(stream.len(), |next| next - 3);
                let mut nal = &stream[s..end];
                while let [rest @ .., 0] = nal {
                    nal = rest;
                }
                nal
            })
            .collect()
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect()
    }

    /// An RTP packet as sent: its marker bit and payload.
    type Packet = (bool, Vec<u8>);

    /// Moves everything `from` wants to send into `to`; returns `from`'s events.
    fn pump(from: &mut Rtc, to: &mut Rtc, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match from.poll_output().expect("output") {
                Output::Timeout(_) => return events,
                Output::Transmit(t) => {
                    let data = t.contents.to_vec();
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source: t.source,
                            destination: t.destination,
                            contents: data.as_slice().try_into().expect("datagram"),
                        },
                    );
                    // Lost or unexpected datagrams are the link's business, as on a network.
                    let _ = to.handle_input(input);
                }
                Output::Event(e) => events.push(e),
            }
        }
    }

    /// Sends `aus` (Annex-B access units, 40 ms apart) from an `Rtc` configured as our sessions
    /// are (ICE-lite, H.265 only) to a receiving `Rtc`; returns the RTP packets sent (marker,
    /// payload) and the access units the receiver put back together.
    fn send_over_rtp(aus: &[Vec<u8>]) -> (Vec<Packet>, Vec<Vec<u8>>) {
        let mut now = Instant::now();
        let ours: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let theirs: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
        let mut browser = RtcConfig::new().clear_codecs().enable_h265(true).build(now);
        browser.add_local_candidate(Candidate::host(theirs, "udp").expect("candidate"));
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("offer");
        let mut server = RtcConfig::new()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h265(true)
            .enable_raw_packets(true)
            .build(now);
        server.add_local_candidate(Candidate::host(ours, "udp").expect("candidate"));
        let answer = server.sdp_api().accept_offer(offer).expect("answer");
        browser
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted");
        // Both ends up (the server may finish its DTLS handshake before the browser does).
        let (mut server_up, mut browser_up) = (false, false);
        let mut next = 0;
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for _ in 0..4000 {
            for e in pump(&mut server, &mut browser, now) {
                match e {
                    Event::Connected => server_up = true,
                    Event::RawPacket(raw) => {
                        // The whole packet: its payload follows the header (no padding
                        // on media packets).
                        if let RawPacket::RtpTx(header, packet) = *raw
                            && let Some(payload) = packet.get(header.header_len..)
                        {
                            sent.push((header.marker, payload.to_vec()));
                        }
                    }
                    _ => {}
                }
            }
            for e in pump(&mut browser, &mut server, now) {
                match e {
                    Event::Connected => browser_up = true,
                    Event::MediaData(d) => got.push(d.data.to_vec()),
                    _ => {}
                }
            }
            let connected = server_up && browser_up;
            if connected && next < aus.len() {
                let writer = server.writer(mid).expect("writer");
                let pt = writer
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::H265)
                    .map(|p| p.pt())
                    .expect("H265 payload type");
                let time = MediaTime::from_90khz(3600 * next as u64);
                writer
                    .write(pt, now, time, aus[next].clone())
                    .expect("write");
                next += 1;
            }
            let ends = sent.iter().filter(|(marker, _)| *marker).count();
            let units_in: usize = aus.iter().map(|au| nal_units(au).len()).sum();
            let units_out = nal_units(&got.concat()).len();
            if next == aus.len() && ends == aus.len() && units_out >= units_in {
                return (sent, got);
            }
            now += Duration::from_millis(5);
            server.handle_input(Input::Timeout(now)).expect("timeout");
            browser.handle_input(Input::Timeout(now)).expect("timeout");
        }
        panic!(
            "connected {server_up}/{browser_up}, wrote {next}, sent {:?}, received {:?}",
            sent.iter()
                .map(|(m, p)| (*m, hevc_type(p), p.len()))
                .collect::<Vec<_>>(),
            lens(&got)
        );
    }

    fn lens<T: AsRef<[u8]>>(units: &[T]) -> Vec<usize> {
        units.iter().map(|u| u.as_ref().len()).collect()
    }

    fn payload_type(p: &[u8]) -> u8 {
        hevc_type(p)
    }

    #[test]
    fn parameter_sets_are_aggregated_big_units_fragmented_and_small_ones_sent_whole() {
        let nals = nal_units(CAPTURE);
        let types: Vec<u8> = nals.iter().map(|n| hevc_type(n)).collect();
        assert_eq!(
            types,
            [32, 33, 34, 39, 39, 32, 33, 34, 39, 20, 1],
            "the capture"
        );
        // The IDR access unit as our sessions hand it over (parameter sets first), then the P.
        let idr_au: Vec<&[u8]> = nals[5..10].to_vec();
        let p_au: Vec<&[u8]> = nals[10..].to_vec();
        let sei = nals[8];
        assert!(
            sei.len() > 2000,
            "a unit larger than a packet: {}",
            sei.len()
        );
        let aus = [annexb(&idr_au), annexb(&p_au)];
        let (packets, received) = send_over_rtp(&aus);

        // No packet exceeds what str0m sends on a 1200-byte-ish path.
        assert!(
            packets.iter().all(|(_, p)| p.len() <= 1200),
            "{:?}",
            packets.iter().map(|(_, p)| p.len()).collect::<Vec<_>>()
        );

        // The parameter sets go first, aggregated in one AP: 16-bit sizes, each unit whole.
        let (_, ap) = &packets[0];
        assert_eq!(payload_type(ap), AP);
        let mut rest = &ap[2..];
        let mut in_ap = Vec::new();
        while rest.len() >= 2 {
            let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            in_ap.push(&rest[2..2 + size]);
            rest = &rest[2 + size..];
        }
        assert_eq!(in_ap, [nals[5], nals[6], nals[7]]);
        assert_eq!(
            in_ap.iter().map(|n| hevc_type(n)).collect::<Vec<_>>(),
            [HEVC_VPS, HEVC_SPS, HEVC_PPS]
        );

        // Every other unit comes back byte for byte: whole in a single NAL unit packet, or as
        // fragmentation units (start bit on the first, end bit on the last, the unit's type in
        // the FU header, the payload header's layer and TID kept) when larger than a packet.
        let mut units: Vec<Vec<u8>> = Vec::new();
        let mut fragments = 0;
        let mut open: Option<Vec<u8>> = None;
        for (_, p) in &packets[1..] {
            match payload_type(p) {
                FU => {
                    fragments += 1;
                    let fu = p[2];
                    let (start, end, kind) = (fu & 0x80 != 0, fu & 0x40 != 0, fu & 0x3f);
                    if start {
                        assert!(open.is_none(), "a new FU before the last ended");
                        // The original header: the FU's with its type put back.
                        open = Some(vec![(p[0] & 0x81) | (kind << 1), p[1]]);
                    }
                    let unit = open.as_mut().expect("an FU after its start");
                    unit.extend_from_slice(&p[3..]);
                    if end {
                        units.extend(open.take());
                    }
                }
                AP => panic!("only parameter sets are aggregated here"),
                _ => units.push(p.clone()),
            }
        }
        assert!(open.is_none(), "an unfinished FU");
        assert!(fragments >= 2, "the SEI was not fragmented");
        let want: Vec<Vec<u8>> = [nals[8], nals[9], nals[10]]
            .iter()
            .map(|n| n.to_vec())
            .collect();
        assert!(
            units == want,
            "units of {:?} bytes, sent {:?}",
            lens(&units),
            lens(&want)
        );

        // The marker bit ends each access unit: the IDR slice's packet and the P slice's.
        let markers: Vec<usize> = packets
            .iter()
            .enumerate()
            .filter(|(_, (m, _))| *m)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(markers.len(), 2);
        assert_eq!(markers[1], packets.len() - 1);
        assert_eq!(packets[markers[0]].1, nals[9]);

        // And the receiving end got the same NAL units back, in order (as Annex-B; it may group
        // them into frames its own way).
        let all = received.concat();
        let back = nal_units(&all);
        let sent_units: Vec<&[u8]> = idr_au.iter().chain(&p_au).copied().collect();
        assert!(back == sent_units, "received {:?}", lens(&back));
    }
}
