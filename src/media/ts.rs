//! MPEG-TS segments for HLS players that take no fMP4 (`[hls] segment_format = "mpegts"`).
//!
//! Packets are encoded with the `mpeg2ts` crate (TS headers, adaptation fields, PES headers,
//! PAT/PMT sections with their CRC); this module only decides what goes into them:
//!
//! * every segment starts with a PAT and a PMT, so each one can be decoded on its own;
//! * PIDs as the Go original: `0x100` for the first track (video), `0x101` for audio; the PMT on
//!   `0x1000`; the PCR rides on the main track (video, else audio);
//! * H.264 access units become Annex B with an access unit delimiter first and the SPS/PPS of the
//!   stream's configuration record before every IDR picture (in-band delimiters are dropped);
//! * each AAC frame gets an ADTS header (HE-AAC is signalled as its AAC-LC core, as ADTS does);
//! * PTS/DTS are the frames' decode times on the 90 kHz clock plus one second (the original's
//!   offset, which leaves the decoder time between PCR and presentation), modulo 2^33;
//! * continuity counters run on across the segments of one writer.
//!
//! H.265 is refused ([`MediaError::Unsupported`]): HLS with H.265 needs fMP4.

use mpeg2ts::es::{StreamId, StreamType};
use mpeg2ts::pes::PesHeader;
use mpeg2ts::time::{ClockReference, Timestamp};
use mpeg2ts::ts::payload::{Bytes as TsBytes, Pat, Pes, Pmt};
use mpeg2ts::ts::{
    AdaptationField, ContinuityCounter, EsInfo, Pid, ProgramAssociation,
    TransportScramblingControl, TsHeader, TsPacket, TsPacketWriter, TsPayload, VersionNumber,
    WriteTsPacket,
};

use super::codec::{aac_config_fields, avc_record_fields};
use super::{Frame, MediaError, StreamParams, TrackKind, VIDEO_TIMESCALE, VideoCodec};

const PMT_PID: u16 = 0x1000;
const FIRST_ES_PID: u16 = 0x100;
const PROGRAM: u16 = 1;
/// Added to every PTS/DTS (not to the PCR): one second of decoder buffering.
const TIME_OFFSET: i64 = VIDEO_TIMESCALE as i64;
const WRAP: i64 = 1 << 33;
/// A PES header with PTS and DTS: start code, stream id, length, 2 flag bytes, header length,
/// 5 bytes per timestamp.
const PES_HEADER_BASE: usize = 9;
const PAYLOAD: usize = TsPacket::SIZE - 4;

fn mux_err(e: mpeg2ts::Error) -> MediaError {
    MediaError::Mux(format!("MPEG-TS: {e}"))
}

/// What the segments of one codec setup need, derived once from its parameters.
struct Setup {
    version: u64,
    /// Annex B SPS and PPS, each with a start code (H.264 only).
    parameter_sets: Vec<u8>,
    /// The ADTS header's fixed bits: profile, sampling frequency index, channel configuration.
    adts: Option<(u8, u8, u8)>,
    audio_rate: u32,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
}

impl Setup {
    fn new(p: &StreamParams) -> Result<Setup, MediaError> {
        let mut parameter_sets = Vec::new();
        if let Some(v) = &p.video {
            if v.codec != VideoCodec::H264 {
                return Err(MediaError::Unsupported(
                    "MPEG-TS HLS carries H.264 only (use fmp4 segments for H.265)".into(),
                ));
            }
            let record = avc_record_fields(&v.config_record)?;
            for nal in record.sps.iter().chain(&record.pps) {
                parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
                parameter_sets.extend_from_slice(nal);
            }
        }
        let adts = match &p.audio {
            Some(a) => {
                let c = aac_config_fields(&a.asc)?;
                // ADTS has two bits of profile (object type - 1); HE-AAC is sent as its LC core
                // with the core's sampling frequency, and decoders find the SBR data themselves.
                let object_type = if matches!(c.object_type, 5 | 29) {
                    2
                } else {
                    c.object_type
                };
                if !(1..=4).contains(&object_type)
                    || c.sample_rate_index > 12
                    || !(1..=7).contains(&c.channel_config)
                {
                    return Err(MediaError::Unsupported(format!(
                        "AAC object type {}, frequency index {}, channel configuration {}: not \
                         expressible in ADTS",
                        c.object_type, c.sample_rate_index, c.channel_config
                    )));
                }
                Some((object_type - 1, c.sample_rate_index, c.channel_config))
            }
            None => None,
        };
        let video_pid = p.video.as_ref().map(|_| FIRST_ES_PID);
        let audio_pid = p
            .audio
            .as_ref()
            .map(|_| FIRST_ES_PID + u16::from(video_pid.is_some()));
        Ok(Setup {
            version: p.version,
            parameter_sets,
            adts,
            audio_rate: p.audio.as_ref().map_or(48_000, |a| a.sample_rate.max(1)),
            video_pid,
            audio_pid,
        })
    }
}

/// Writes the MPEG-TS segments of one HLS writer (keeps continuity counters across segments).
#[derive(Default)]
pub struct TsWriter {
    setup: Option<Setup>,
    pat_cc: ContinuityCounter,
    pmt_cc: ContinuityCounter,
    video_cc: ContinuityCounter,
    audio_cc: ContinuityCounter,
}

impl TsWriter {
    pub fn new() -> TsWriter {
        TsWriter::default()
    }

    /// One self-contained segment: PAT, PMT, then `frames` (in decode order, interleaved).
    pub fn write(
        &mut self,
        params: &StreamParams,
        frames: &[Frame],
    ) -> Result<Vec<u8>, MediaError> {
        if self
            .setup
            .as_ref()
            .is_none_or(|s| s.version != params.version)
        {
            self.setup = Some(Setup::new(params)?);
        }
        let Some(setup) = self.setup.take() else {
            return Err(MediaError::Mux("MPEG-TS: no setup".into()));
        };
        let result = self.write_with(&setup, frames);
        self.setup = Some(setup);
        result
    }

    fn write_with(&mut self, setup: &Setup, frames: &[Frame]) -> Result<Vec<u8>, MediaError> {
        let payload: usize = frames.iter().map(|f| f.data.len() + 32).sum();
        let mut w = TsPacketWriter::new(Vec::with_capacity(payload + payload / 20 + 1024));
        self.write_tables(&mut w, setup)?;
        let pcr_pid = setup.video_pid.or(setup.audio_pid);
        let mut es = Vec::new();
        for f in frames {
            let (pid, stream_id, dts90, pts90) = match f.track {
                TrackKind::Video => {
                    let Some(pid) = setup.video_pid else { continue };
                    annex_b(f, &setup.parameter_sets, &mut es)?;
                    let dts = f.dts;
                    (pid, 0xE0, dts, dts + i64::from(f.cts_offset))
                }
                TrackKind::Audio => {
                    let (Some(pid), Some(adts)) = (setup.audio_pid, setup.adts) else {
                        continue;
                    };
                    with_adts(adts, &f.data, &mut es)?;
                    let rate = i128::from(setup.audio_rate);
                    let to90 = |t: i64| {
                        (i128::from(t) * i128::from(VIDEO_TIMESCALE)).div_euclid(rate) as i64
                    };
                    let dts = to90(f.dts);
                    (pid, 0xC0, dts, to90(f.dts + i64::from(f.cts_offset)))
                }
            };
            let stamp = |t: i64| Timestamp::new((t + TIME_OFFSET).rem_euclid(WRAP) as u64);
            let pts = stamp(pts90).map_err(mux_err)?;
            let dts = (pts90 != dts90)
                .then(|| stamp(dts90))
                .transpose()
                .map_err(mux_err)?;
            let header = PesHeader {
                stream_id: StreamId::new(stream_id),
                priority: false,
                data_alignment_indicator: true,
                copyright: false,
                original_or_copy: false,
                pts: Some(pts),
                dts,
                escr: None,
            };
            let header_len = PES_HEADER_BASE + 5 + if dts.is_some() { 5 } else { 0 };
            // Audio PES carry their length; video PES may be longer than 64 KiB and say 0.
            let pes_len = match f.track {
                TrackKind::Audio => u16::try_from(header_len - 6 + es.len()).unwrap_or(0),
                TrackKind::Video => 0,
            };
            let pcr = (Some(pid) == pcr_pid)
                .then(|| ClockReference::new(dts90.rem_euclid(WRAP) as u64 * 300))
                .transpose()
                .map_err(mux_err)?;
            let adaptation = (pcr.is_some() || f.keyframe).then(|| AdaptationField {
                discontinuity_indicator: false,
                random_access_indicator: f.keyframe,
                es_priority_indicator: false,
                pcr,
                opcr: None,
                splice_countdown: None,
                transport_private_data: Vec::new(),
                extension: None,
            });
            let cc = if Some(pid) == setup.video_pid {
                &mut self.video_cc
            } else {
                &mut self.audio_cc
            };
            write_pes(
                &mut w, pid, cc, header, header_len, pes_len, adaptation, &es,
            )?;
            es.clear();
        }
        Ok(w.into_stream())
    }

    fn write_tables(
        &mut self,
        w: &mut TsPacketWriter<Vec<u8>>,
        setup: &Setup,
    ) -> Result<(), MediaError> {
        let pid = |n: u16| Pid::new(n).map_err(mux_err);
        let pat = Pat {
            transport_stream_id: 1,
            version_number: VersionNumber::new(),
            table: vec![ProgramAssociation {
                program_num: PROGRAM,
                program_map_pid: pid(PMT_PID)?,
            }],
        };
        let mut es_info = Vec::new();
        if let Some(v) = setup.video_pid {
            es_info.push(EsInfo {
                stream_type: StreamType::H264,
                elementary_pid: pid(v)?,
                descriptors: Vec::new(),
            });
        }
        if let Some(a) = setup.audio_pid {
            es_info.push(EsInfo {
                stream_type: StreamType::AdtsAac,
                elementary_pid: pid(a)?,
                descriptors: Vec::new(),
            });
        }
        let pmt = Pmt {
            program_num: PROGRAM,
            pcr_pid: setup.video_pid.or(setup.audio_pid).map(pid).transpose()?,
            version_number: VersionNumber::new(),
            program_info: Vec::new(),
            es_info,
        };
        for (n, payload, cc) in [
            (0u16, TsPayload::Pat(pat), &mut self.pat_cc),
            (PMT_PID, TsPayload::Pmt(pmt), &mut self.pmt_cc),
        ] {
            let packet = TsPacket {
                header: ts_header(pid(n)?, *cc),
                adaptation_field: None,
                payload: Some(payload),
            };
            cc.increment();
            w.write_ts_packet(&packet).map_err(mux_err)?;
        }
        Ok(())
    }
}

fn ts_header(pid: Pid, cc: ContinuityCounter) -> TsHeader {
    TsHeader {
        transport_error_indicator: false,
        transport_priority: false,
        pid,
        transport_scrambling_control: TransportScramblingControl::NotScrambled,
        continuity_counter: cc,
    }
}

/// Splits one PES packet over TS packets: the PES header (and the adaptation field, if any) in
/// the first, the rest in full continuation packets; the last is padded by the encoder.
#[allow(clippy::too_many_arguments)]
fn write_pes(
    w: &mut TsPacketWriter<Vec<u8>>,
    pid: u16,
    cc: &mut ContinuityCounter,
    header: PesHeader,
    header_len: usize,
    pes_len: u16,
    adaptation: Option<AdaptationField>,
    es: &[u8],
) -> Result<(), MediaError> {
    let pid = Pid::new(pid).map_err(mux_err)?;
    // Adaptation field with PCR: length byte, flags byte, 6 bytes of PCR.
    let af_len = adaptation
        .as_ref()
        .map_or(0, |a| 2 + if a.pcr.is_some() { 6 } else { 0 });
    let first = es.len().min(PAYLOAD - header_len - af_len);
    let packet = TsPacket {
        header: ts_header(pid, *cc),
        adaptation_field: adaptation,
        payload: Some(TsPayload::PesStart(Pes {
            header,
            pes_packet_len: pes_len,
            data: TsBytes::new(&es[..first]).map_err(mux_err)?,
        })),
    };
    cc.increment();
    w.write_ts_packet(&packet).map_err(mux_err)?;
    for chunk in es[first..].chunks(PAYLOAD) {
        let packet = TsPacket {
            header: ts_header(pid, *cc),
            adaptation_field: None,
            payload: Some(TsPayload::PesContinuation(
                TsBytes::new(chunk).map_err(mux_err)?,
            )),
        };
        cc.increment();
        w.write_ts_packet(&packet).map_err(mux_err)?;
    }
    Ok(())
}

/// Appends `f` (4-byte length-prefixed NAL units) as an Annex B access unit to `out`: an access
/// unit delimiter, the parameter sets before an IDR picture, then the frame's NAL units.
fn annex_b(f: &Frame, parameter_sets: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
    out.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
    if f.keyframe {
        out.extend_from_slice(parameter_sets);
    }
    let mut rest = &f.data[..];
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .map(|(l, t)| (u32::from_be_bytes(*l) as usize, t))
            .ok_or_else(|| MediaError::InvalidMp4("H.264 frame: torn NAL length".into()))?;
        let nal = tail.get(..len).ok_or_else(|| {
            MediaError::InvalidMp4(format!("H.264 frame: NAL unit of {len} bytes overruns it"))
        })?;
        rest = &tail[len..];
        if nal.first().is_none_or(|h| h & 0x1f == 9) {
            continue;
        }
        out.extend_from_slice(&[0, 0, 1]);
        out.extend_from_slice(nal);
    }
    Ok(())
}

/// Appends one raw AAC frame with its ADTS header (no CRC) to `out`.
fn with_adts(
    (profile, frequency, channels): (u8, u8, u8),
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), MediaError> {
    let len = frame.len() + 7;
    if len > 0x1FFF {
        return Err(MediaError::Mux(format!(
            "AAC frame of {} bytes is too long for ADTS",
            frame.len()
        )));
    }
    out.extend_from_slice(&[
        0xFF,
        0xF1,
        (profile << 6) | (frequency << 2) | (channels >> 2),
        ((channels & 3) << 6) | (len >> 11) as u8,
        (len >> 3) as u8,
        (((len & 7) as u8) << 5) | 0x1F,
        0xFC,
    ]);
    out.extend_from_slice(frame);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::mp4file::Mp4File;
    use mpeg2ts::ts::{ReadTsPacket, TsPacketReader};

    fn demo() -> Mp4File {
        Mp4File::open(std::path::Path::new("assets/demo.mp4")).unwrap()
    }

    #[test]
    fn packets_parse_back_with_tables_first_and_counters_running_on() {
        let clip = demo();
        let frames = clip.frames();
        let mut w = TsWriter::new();
        let a = w.write(clip.params(), &frames[..200]).unwrap();
        let b = w.write(clip.params(), &frames[200..400]).unwrap();
        let mut last_cc: std::collections::HashMap<u16, u8> = Default::default();
        for seg in [&a, &b] {
            assert_eq!(seg.len() % TsPacket::SIZE, 0);
            let mut r = TsPacketReader::new(&seg[..]);
            let mut pids = Vec::new();
            let mut pcrs = 0;
            while let Some(p) = r.read_ts_packet().unwrap() {
                let pid = p.header.pid.as_u16();
                let cc = p.header.continuity_counter.as_u8();
                if let Some(prev) = last_cc.insert(pid, cc) {
                    assert_eq!(cc, (prev + 1) & 15, "pid {pid:#x}");
                }
                if p.adaptation_field.as_ref().is_some_and(|a| a.pcr.is_some()) {
                    assert_eq!(pid, FIRST_ES_PID);
                    pcrs += 1;
                }
                pids.push(pid);
            }
            assert_eq!(&pids[..2], &[0, PMT_PID]);
            assert!(pids.contains(&0x100) && pids.contains(&0x101));
            assert!(pcrs > 0);
        }
    }

    #[test]
    fn adts_headers_and_annex_b_units() {
        let mut out = Vec::new();
        with_adts((1, 3, 1), &[0xAA; 10], &mut out).unwrap();
        // LC, 48 kHz, mono, 17 bytes.
        assert_eq!(&out[..7], &[0xFF, 0xF1, 0x4C, 0x40, 0x02, 0x3F, 0xFC]);
        assert!(with_adts((1, 3, 1), &[0; 0x2000], &mut Vec::new()).is_err());

        let clip = demo();
        let key = clip
            .frames()
            .into_iter()
            .find(|f| f.track == TrackKind::Video && f.keyframe)
            .unwrap();
        let setup = Setup::new(clip.params()).unwrap();
        let mut au = Vec::new();
        annex_b(&key, &setup.parameter_sets, &mut au).unwrap();
        assert!(au.starts_with(&[0, 0, 0, 1, 9, 0xF0, 0, 0, 0, 1, 0x67]));
        // A torn frame is an error, not a panic.
        let mut torn = key.clone();
        torn.data = bytes::Bytes::from_static(&[0, 0, 1, 0, 5]);
        assert!(annex_b(&torn, &[], &mut Vec::new()).is_err());
    }
}
