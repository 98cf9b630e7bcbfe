//! Fragmented MP4: init segments, `moof`+`mdat` fragments, and reading both back.
//!
//! Layout of everything we write (what MSE, HLS and the archive receive):
//!
//! * init segment = `ftyp` (major `iso6`) + `moov` (`mvhd` timescale 1000, one `trak` per track,
//!   `mvex` with one `trex` per track). Video is track 1 at 90 kHz with an `avc1`/`hvc1` sample
//!   entry; audio is track 2 (1 when there is no video) at its sample rate with `mp4a`.
//! * fragment = one `moof` (`mfhd` sequence number, then one `traf` per track present, in track-id
//!   order: `tfhd` default-base-is-moof, `tfdt` v1 = first frame's dts, `trun` v1 with data offset
//!   and per-sample duration, size, flags and signed composition offset) + one `mdat` holding each
//!   track's samples contiguously in `traf` order.
//!
//! The `moof` is written by hand (it is small and we need exact control of versions and flags:
//! the Go original flagged every fragment's first sample as sync; we flag each sample from its
//! own keyframe bit). The `moov` is built from `shiguredo_mp4` box types, which encode the
//! sample entries (notably a complete `hvcC`).
//!
//! Reading: [`top_level_boxes`] walks boxes, [`split_fragments`] finds the complete fragments of
//! a possibly torn file, [`parse_init`] and [`parse_fragment`] turn bytes back into
//! [`StreamParams`] and [`Frame`](crate::media::Frame)s.
//!
//! Files: `init.rs` (init segments and sample entries), `fragment.rs` (writing and reading
//! `moof`+`mdat`), `boxes.rs` (box walking and torn-file splitting).

mod boxes;
mod fragment;
mod init;

pub use boxes::{BoxHeader, FragmentedLayout, TopLevelBoxes, split_fragments, top_level_boxes};
pub(in crate::media) use fragment::{FragmentTrack, RawSample, read_moof};
pub use fragment::{FragmentWriter, SampleRef, parse_fragment, parse_fragment_bytes, parse_moof};
pub(in crate::media) use init::{TrackParams, build_trak, find_moov, track_params_from_entry};
pub use init::{init_segment, is_fragmented_init, parse_init};

use super::{StreamParams, TrackKind};

/// Sample flags of a sync sample: `sample_depends_on` = 2 (depends on no other sample).
pub const SAMPLE_FLAGS_SYNC: u32 = 0x0200_0000;
/// Sample flags of a non-sync sample: `sample_depends_on` = 1, `sample_is_non_sync_sample`.
pub const SAMPLE_FLAGS_NON_SYNC: u32 = 0x0101_0000;
/// `sample_is_non_sync_sample` bit of the sample flags.
const NON_SYNC_BIT: u32 = 0x0001_0000;

/// Track id of `kind` in init segments we write for `params`: video = 1, audio = 2, or 1 when
/// there is no video. `None` if the track is absent.
pub fn track_id(params: &StreamParams, kind: TrackKind) -> Option<u32> {
    match kind {
        TrackKind::Video => params.video.as_ref().map(|_| 1),
        TrackKind::Audio => params
            .audio
            .as_ref()
            .map(|_| if params.video.is_some() { 2 } else { 1 }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::media::codec::tests::{DEMO_AVCC, LC_48K_MONO, Noise, X265_HVCC};
    use crate::media::codec::{aac_params, h264_params, h265_params};
    use crate::media::mp4file::Mp4File;
    use crate::media::{Frame, VideoCodec};

    pub(crate) fn demo_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4")
    }

    /// Runs `ffmpeg -v error -y <args>` and panics with its stderr if it fails.
    pub(crate) fn ffmpeg(args: &[&str]) {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
            .args(args)
            .output()
            .expect("ffmpeg must be installed for the media tests");
        assert!(
            out.status.success(),
            "ffmpeg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Decodes every stream of `path`; returns ffmpeg's error output (empty when clean).
    pub(crate) fn decode_errors(path: &Path) -> String {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg must be installed for the media tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `ffprobe` stream and format summary, one `key=value` per line.
    pub(crate) fn probe(path: &Path) -> String {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries"])
            .arg("stream=codec_name,width,height,sample_rate,nb_read_frames:format=duration")
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(path)
            .output()
            .expect("ffprobe must be installed for the media tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// MD5 of all decoded video pictures in output order: equal only if every picture decodes
    /// identically and comes out in the same order (i.e. composition offsets are right).
    pub(crate) fn video_md5(path: &Path) -> String {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-map", "0:v", "-f", "md5", "-"])
            .output()
            .expect("ffmpeg must be installed for the media tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Splits frames into fragments that each start at a video keyframe (audio rides along).
    pub(crate) fn gop_chunks(frames: &[Frame]) -> Vec<Vec<Frame>> {
        let mut chunks: Vec<Vec<Frame>> = Vec::new();
        for f in frames {
            if chunks.is_empty() || (f.track == TrackKind::Video && f.keyframe) {
                chunks.push(Vec::new());
            }
            if let Some(last) = chunks.last_mut() {
                last.push(f.clone());
            }
        }
        chunks
    }

    /// Init segment followed by one fragment per chunk.
    pub(crate) fn write_file(params: &StreamParams, chunks: &[Vec<Frame>]) -> Vec<u8> {
        let mut out = init_segment(params).unwrap().to_vec();
        let mut w = FragmentWriter::new();
        for c in chunks {
            out.extend_from_slice(&w.write(params, c).unwrap());
        }
        out
    }

    fn av_params() -> Arc<StreamParams> {
        Arc::new(StreamParams {
            version: 3,
            video: Some(h264_params(Bytes::from_static(DEMO_AVCC)).unwrap()),
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
        })
    }

    /// Video with a B-frame-like composition pattern (negative offsets included) interleaved
    /// with audio, starting at non-zero decode times.
    fn synthetic_frames(params: &Arc<StreamParams>) -> Vec<Frame> {
        let mut frames = Vec::new();
        let ctos = [3600, 10800, -3600, 0, 7200, -3600, 0, 3600];
        for i in 0..8i64 {
            frames.push(Frame {
                track: TrackKind::Video,
                dts: 900_000 + i * 3600,
                duration: 3600,
                cts_offset: ctos[i as usize],
                keyframe: i == 0 || i == 5,
                wallclock_us: 0,
                data: Bytes::from(vec![i as u8; 100 + i as usize]),
                params: params.clone(),
            });
            frames.push(Frame {
                track: TrackKind::Audio,
                dts: 480_000 + i * 1024,
                duration: 1024,
                cts_offset: 0,
                keyframe: true,
                wallclock_us: 0,
                data: Bytes::from(vec![0xa0 | i as u8; 10 + i as usize]),
                params: params.clone(),
            });
        }
        frames
    }

    fn of_track(frames: &[Frame], kind: TrackKind) -> Vec<Frame> {
        frames.iter().filter(|f| f.track == kind).cloned().collect()
    }

    #[test]
    fn fragment_round_trip() {
        let params = av_params();
        let frames = synthetic_frames(&params);
        let mut w = FragmentWriter::new();
        let bytes = w.write(&params, &frames).unwrap();
        let parsed = parse_fragment_bytes(&params, &bytes).unwrap();
        assert!(parsed.iter().all(|f| Arc::ptr_eq(&f.params, &params)));
        // Zero-copy: payloads point into the fragment.
        let range = bytes.as_ptr_range();
        assert!(parsed.iter().all(|f| range.contains(&f.data.as_ptr())));
        // Video traf first, then audio; each in its original order.
        let mut expected = of_track(&frames, TrackKind::Video);
        expected.extend(of_track(&frames, TrackKind::Audio));
        assert_eq!(parsed, expected);

        // A fragment starting mid-GOP keeps its first sample non-sync.
        let tail = &frames[4..];
        let bytes = w.write(&params, tail).unwrap();
        let parsed = parse_fragment(&params, &bytes).unwrap();
        assert!(!parsed[0].keyframe);
        assert_eq!(
            of_track(&parsed, TrackKind::Video),
            of_track(tail, TrackKind::Video)
        );
    }

    #[test]
    fn fragment_layout_is_exact() {
        let params = av_params();
        let frames = synthetic_frames(&params);
        let mut w = FragmentWriter::new();
        let first = w.write(&params, &frames[..4]).unwrap();
        let second = w.write(&params, &frames[4..]).unwrap();
        let be32 =
            |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        for (bytes, seq) in [(&first, 1), (&second, 2)] {
            let boxes: Vec<BoxHeader> = top_level_boxes(bytes).map(Result::unwrap).collect();
            assert_eq!(boxes.len(), 2);
            assert_eq!((&boxes[0].box_type, &boxes[1].box_type), (b"moof", b"mdat"));
            assert_eq!(boxes[1].end(), bytes.len() as u64);
            // mfhd sequence number.
            assert_eq!(&bytes[12..16], b"mfhd");
            assert_eq!(be32(bytes, 20), seq);
            // First traf is video: tfhd default-base-is-moof, tfdt v1, trun v1 with flags 0xf01.
            assert_eq!(&bytes[28..32], b"traf");
            assert_eq!(&bytes[36..40], b"tfhd");
            assert_eq!(be32(bytes, 40), 0x0002_0000);
            assert_eq!(be32(bytes, 44), 1);
            assert_eq!(&bytes[52..56], b"tfdt");
            assert_eq!(bytes[56], 1);
            assert_eq!(&bytes[72..76], b"trun");
            assert_eq!(be32(bytes, 76), 0x0100_0f01);
        }
        // Per-sample flags: the second fragment starts with a non-sync video frame.
        let first_flags = be32(&second, 76 + 12 + 8);
        assert_eq!(first_flags, SAMPLE_FLAGS_NON_SYNC);
        let first_flags = be32(&first, 76 + 12 + 8);
        assert_eq!(first_flags, SAMPLE_FLAGS_SYNC);
        assert_eq!(w.next_sequence_number(), 3);
    }

    #[test]
    fn write_rejects_bad_input() {
        let params = av_params();
        let frames = synthetic_frames(&params);
        let mut w = FragmentWriter::new();
        assert!(w.write(&params, &[]).is_err());
        let video_only = StreamParams {
            audio: None,
            ..(*params).clone()
        };
        assert!(w.write(&video_only, &frames).is_err());
        let mut negative = frames[0].clone();
        negative.dts = -1;
        assert!(w.write(&params, &[negative]).is_err());
        // Failed writes do not consume sequence numbers.
        assert_eq!(w.next_sequence_number(), 1);
    }

    #[test]
    fn audio_only_uses_track_one() {
        let params = Arc::new(StreamParams {
            version: 0,
            video: None,
            audio: Some(aac_params(Bytes::from_static(LC_48K_MONO)).unwrap()),
        });
        assert_eq!(track_id(&params, TrackKind::Audio), Some(1));
        let frames = of_track(&synthetic_frames(&params), TrackKind::Audio);
        let bytes = FragmentWriter::new().write(&params, &frames).unwrap();
        assert_eq!(parse_fragment(&params, &bytes).unwrap(), frames);
        assert_eq!(
            parse_init(&init_segment(&params).unwrap()).unwrap(),
            *params
        );
    }

    #[test]
    fn init_round_trip() {
        let h264 = h264_params(Bytes::from_static(DEMO_AVCC)).unwrap();
        let h265 = h265_params(Bytes::from_static(X265_HVCC)).unwrap();
        let aac = aac_params(Bytes::from_static(LC_48K_MONO)).unwrap();
        for (video, audio) in [
            (Some(h264.clone()), Some(aac.clone())),
            (Some(h264), None),
            (Some(h265.clone()), Some(aac.clone())),
            (Some(h265), None),
            (None, Some(aac)),
        ] {
            let params = StreamParams {
                version: 0,
                video,
                audio,
            };
            let init = init_segment(&params).unwrap();
            assert_eq!(&init[4..12], b"ftypiso6");
            assert_eq!(parse_init(&init).unwrap(), params);
        }
        assert!(
            init_segment(&StreamParams {
                version: 0,
                video: None,
                audio: None
            })
            .is_err()
        );
    }

    #[test]
    fn box_walk_handles_large_and_open_sizes() {
        let mut data = Vec::new();
        data.extend_from_slice(&[0, 0, 0, 1]);
        data.extend_from_slice(b"free");
        data.extend_from_slice(&20u64.to_be_bytes());
        data.extend_from_slice(&[1, 2, 3, 4]);
        data.extend_from_slice(&[0, 0, 0, 0]);
        data.extend_from_slice(b"mdat");
        data.extend_from_slice(&[9; 5]);
        let boxes: Vec<_> = top_level_boxes(&data).map(Result::unwrap).collect();
        assert_eq!(boxes.len(), 2);
        assert_eq!((boxes[0].header_len, boxes[0].size), (16, 20));
        assert_eq!((boxes[1].offset, boxes[1].size), (20, 13));
        assert_eq!(boxes[1].payload_range(data.len()), Some(28..33));

        // A box claiming more than there is is reported once, then the walk stops.
        let boxes: Vec<_> = top_level_boxes(&data[..18]).collect();
        assert_eq!(boxes.len(), 1);
        assert!(!boxes[0].as_ref().unwrap().is_complete_in(18));
        assert_eq!(boxes[0].as_ref().unwrap().bytes(&data[..18]), None);
        // A header cut short is an error.
        let last = top_level_boxes(&data[..25]).last().unwrap();
        assert!(last.is_err());
        // Unreadable header.
        let mut bad = data[..20].to_vec();
        bad.extend_from_slice(&[0, 0, 0, 3, b'x', b'x', b'x', b'x']);
        let last = top_level_boxes(&bad).last().unwrap();
        assert!(last.is_err());
    }

    #[test]
    fn split_fragments_finds_torn_tail() {
        let params = av_params();
        let frames = synthetic_frames(&params);
        let chunks: Vec<Vec<Frame>> = frames.chunks(4).map(<[Frame]>::to_vec).collect();
        let file = write_file(&params, &chunks);
        let init_len = init_segment(&params).unwrap().len();

        let whole = split_fragments(&file).unwrap();
        assert_eq!(whole.init, 0..init_len);
        assert_eq!(whole.fragments.len(), chunks.len());
        assert_eq!(whole.valid_end, file.len());
        assert_eq!(whole.torn_tail_start, None);
        for (range, chunk) in whole.fragments.iter().zip(&chunks) {
            let frag = Bytes::copy_from_slice(&file[range.clone()]);
            let parsed = parse_fragment(&params, &frag).unwrap();
            assert_eq!(parsed.len(), chunk.len());
        }

        for cut in init_len..file.len() {
            let layout = split_fragments(&file[..cut]).unwrap();
            let complete = whole.fragments.iter().filter(|r| r.end <= cut).count();
            assert_eq!(layout.fragments.len(), complete, "cut at {cut}");
            assert_eq!(layout.fragments[..], whole.fragments[..complete]);
            let end = layout.fragments.last().map_or(init_len, |r| r.end);
            assert_eq!(layout.valid_end, end);
            assert_eq!(layout.torn_tail_start, (end < cut).then_some(end));
        }
        for cut in 0..init_len {
            assert!(split_fragments(&file[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let params = av_params();
        let file = write_file(&params, &[synthetic_frames(&params)]);
        let mut noise = Noise::new(42);
        let mut inputs: Vec<Vec<u8>> = (0..file.len())
            .step_by(7)
            .map(|n| file[..n].to_vec())
            .collect();
        for _ in 0..400 {
            let mut c = file.clone();
            let at = (noise.next_u64() as usize) % c.len();
            c[at] ^= (noise.next_u64() as u8) | 1;
            inputs.push(c);
        }
        for len in [0, 1, 8, 16, 100, 1000, 5000] {
            inputs.push(noise.bytes(len));
        }
        let init_len = init_segment(&params).unwrap().len();
        for input in inputs {
            let _ = split_fragments(&input);
            let _ = parse_init(&input);
            let _ = top_level_boxes(&input).count();
            let b = Bytes::from(input);
            let _ = parse_fragment(&params, &b.slice(init_len.min(b.len())..));
            let _ = parse_fragment(&params, &b);
            let _ = Mp4File::from_bytes(b);
        }
    }

    /// demo.mp4 → frames → fMP4 (one GOP per fragment, and one frame per fragment) → ffmpeg.
    #[test]
    fn demo_fragments_decode_with_ffmpeg() {
        let demo = Mp4File::open(&demo_path()).unwrap();
        let params = demo.params();
        assert_eq!(params.codec_list(), "avc1.4D401E,mp4a.40.2");
        let frames = demo.frames();
        let dir = tempfile::tempdir().unwrap();
        let per_gop = gop_chunks(&frames);
        assert_eq!(per_gop.len(), 24);
        let per_frame: Vec<Vec<Frame>> = frames.iter().map(|f| vec![f.clone()]).collect();
        for (name, chunks) in [("gop.mp4", per_gop), ("frame.mp4", per_frame)] {
            let path = dir.path().join(name);
            std::fs::write(&path, write_file(params, &chunks)).unwrap();
            assert_eq!(decode_errors(&path), "", "{name}");
            let info = probe(&path);
            for expected in [
                "codec_name=h264",
                "width=640",
                "height=360",
                "nb_read_frames=600",
                "codec_name=aac",
                "sample_rate=48000",
                "nb_read_frames=1126",
            ] {
                assert!(info.contains(expected), "{name}: {expected} not in\n{info}");
            }
            let duration: f64 = info
                .lines()
                .find_map(|l| l.strip_prefix("duration="))
                .and_then(|d| d.parse().ok())
                .unwrap();
            assert!((duration - 24.0).abs() < 0.1, "{name}: duration {duration}");

            // Our own reader gets the same frames back.
            let back = Mp4File::open(&path).unwrap();
            assert!(back.is_fragmented() && !back.is_truncated());
            assert_eq!(back.params(), params);
            assert_eq!(back.frames_ref().len(), frames.len());
            for (a, b) in back.frames_ref().iter().zip(&frames) {
                assert_eq!(
                    (
                        a.track,
                        a.dts,
                        a.duration,
                        a.cts_offset,
                        a.keyframe,
                        &a.data
                    ),
                    (
                        b.track,
                        b.dts,
                        b.duration,
                        b.cts_offset,
                        b.keyframe,
                        &b.data
                    )
                );
            }
        }
        assert_eq!(
            video_md5(&demo_path()),
            video_md5(&dir.path().join("gop.mp4"))
        );
    }

    #[test]
    fn h265_round_trip_with_ffmpeg() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("h265.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=25",
            "-t",
            "2",
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "keyint=25:min-keyint=25:log-level=error",
            "-tag:v",
            "hvc1",
            src.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&src).unwrap();
        let video = file.params().video.as_ref().unwrap();
        assert_eq!(video.codec, VideoCodec::H265);
        assert_eq!(video.codec_string, "hvc1.1.6.L60.90");
        assert_eq!((video.width, video.height), (320, 180));

        let out = dir.path().join("out.mp4");
        std::fs::write(&out, write_file(file.params(), &gop_chunks(&file.frames()))).unwrap();
        assert_eq!(decode_errors(&out), "");
        let info = probe(&out);
        assert!(
            info.contains("codec_name=hevc") && info.contains("nb_read_frames=50"),
            "{info}"
        );
        assert_eq!(video_md5(&src), video_md5(&out));
        assert_eq!(
            parse_init(&init_segment(file.params()).unwrap()).unwrap(),
            *file.params()
        );
    }

    #[test]
    fn bframes_keep_composition_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bframes.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=25",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-bf",
            "3",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            src.to_str().unwrap(),
        ]);
        let file = Mp4File::open(&src).unwrap();
        let frames = file.frames();
        assert_eq!(frames.len(), 50);
        assert!(
            frames.iter().any(|f| f.cts_offset < 0),
            "expected negative offsets"
        );
        // Presentation starts at 0 and every picture has a distinct time.
        let mut pts: Vec<i64> = frames
            .iter()
            .map(|f| f.dts + i64::from(f.cts_offset))
            .collect();
        pts.sort_unstable();
        assert_eq!(pts, (0..50).map(|i| i * 3600).collect::<Vec<_>>());

        let out = dir.path().join("out.mp4");
        std::fs::write(&out, write_file(file.params(), &gop_chunks(&frames))).unwrap();
        assert_eq!(decode_errors(&out), "");
        assert!(probe(&out).contains("nb_read_frames=50"));
        assert_eq!(video_md5(&src), video_md5(&out));
    }
}
