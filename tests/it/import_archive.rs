//! `import-archive`: a Go archive directory (progressive MP4 files with the moov at the end, named
//! `<uuid>_<unix-seconds>.mp4`) indexed on both engines, bad files reported, re-runs idempotent;
//! and the real binary's subcommand.

use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;
use video_server::archive::import::{ImportEvent, import_archive};
use video_server::db::{Db, runs, segments};

use crate::both_engines;
use crate::support::InProcess;
use crate::support::binary::{base_config, binary};
use crate::support::media::{ffmpeg_decode_errors, ffprobe, first_box};

/// Start of the first file, in Unix seconds.
const T0: i64 = 1_600_000_000;
const SECOND: i64 = 1_000_000;

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Go-style archive directory for one stream.
struct GoArchive {
    stream: Uuid,
    /// The three playable files, in time order: 2 s (video), 3 s (video + AAC), 2 s (video, in a
    /// subdirectory).
    good: Vec<PathBuf>,
    /// A file cut in half (no moov: what an interrupted Go writer leaves) and random bytes.
    bad: Vec<PathBuf>,
}

fn go_archive(dir: &Path) -> GoArchive {
    let stream = Uuid::new_v4();
    let name = |secs: i64| format!("{stream}_{secs}.mp4");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let video = |secs: &str, out: &Path| {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x90:rate=25",
            "-t",
            secs,
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            out.to_str().expect("utf-8"),
        ]);
    };
    let first = dir.join(name(T0));
    video("2", &first);
    let second = dir.join(name(T0 + 2));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x90:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "3",
        "-c:v",
        "libx264",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        second.to_str().expect("utf-8"),
    ]);
    let third = dir.join("sub").join(name(T0 + 5));
    video("2", &third);

    // Go's muxer (and ffmpeg without -movflags) writes the moov last.
    let data = std::fs::read(&second).expect("read");
    let boxes = top_level_boxes(&data);
    assert_eq!(boxes.last().map(String::as_str), Some("moov"), "{boxes:?}");
    let truncated = dir.join(name(T0 + 7));
    std::fs::write(&truncated, &data[..data.len() / 2]).expect("write");
    let garbage = dir.join(name(T0 + 9));
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, noise).expect("write");
    // Not Go archive files: ignored.
    std::fs::write(dir.join("notes.txt"), "hello").expect("write");
    std::fs::write(dir.join(format!("{stream}.mp4")), "x").expect("write");
    GoArchive {
        stream,
        good: vec![first, second, third],
        bad: vec![truncated, garbage],
    }
}

/// The types of the top-level boxes of an MP4 file.
fn top_level_boxes(data: &[u8]) -> Vec<String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as u64;
        if size == 1 {
            size = u64::from_be_bytes(data[at + 8..at + 16].try_into().expect("8 bytes"));
        }
        out.push(String::from_utf8_lossy(&data[at + 4..at + 8]).into_owned());
        at += size.max(8) as usize;
    }
    out
}

/// Media duration of a file according to ffprobe, µs.
fn probe_duration_us(path: &Path) -> i64 {
    let v = ffprobe(path.to_str().expect("utf-8"));
    let secs: f64 = v["format"]["duration"]
        .as_str()
        .expect("duration")
        .parse()
        .expect("number");
    (secs * 1e6).round() as i64
}

async fn rows(db: &Db, stream: Uuid) -> Vec<segments::SegmentRow> {
    segments::page(db, stream, 0, i64::MAX, None, 100)
        .await
        .expect("segments")
}

both_engines! {
    async fn imports_go_archive_and_reports_bad_files(t: &TestDb) {
        let db = &t.db;
        let dir = tempfile::tempdir().expect("tmp");
        let archive = go_archive(dir.path());

        let mut events = (0, 0, 0);
        let report = import_archive(db, dir.path(), |e| match e {
            ImportEvent::Found(n) => events.0 = n,
            ImportEvent::Imported(_) => events.1 += 1,
            ImportEvent::Unplayable(_) => events.2 += 1,
            ImportEvent::Skipped(_) => panic!("nothing is indexed yet"),
        }).await.expect("import");
        assert_eq!((report.imported, report.skipped, report.unplayable.len()), (3, 0, 2));
        assert_eq!(events, (5, 3, 2));
        let mut bad: Vec<&Path> = report.unplayable.iter().map(|u| u.path.as_path()).collect();
        bad.sort();
        assert_eq!(bad, archive.bad.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        for u in &report.unplayable {
            assert!(!u.reason.is_empty());
            assert!(!u.reason.contains(&*dir.path().to_string_lossy()), "{}", u.reason);
        }

        let indexed = rows(db, archive.stream).await;
        assert_eq!(indexed.len(), 3);
        let starts = [T0, T0 + 2, T0 + 5];
        let lengths = [2 * SECOND, probe_duration_us(&archive.good[1]), 2 * SECOND];
        for (i, row) in indexed.iter().enumerate() {
            let path = &archive.good[i];
            assert_eq!(row.start_us, starts[i] * SECOND, "file {i}");
            let len = row.end_us - row.start_us;
            assert!((len - lengths[i]).abs() <= 50_000, "file {i}: {len} µs vs {}", lengths[i]);
            assert_eq!(row.media_duration_us, len);
            assert_eq!(row.bytes as u64, std::fs::metadata(path).expect("stat").len());
            assert_eq!((row.state.as_str(), row.storage.as_str()), ("complete", "filesystem"));
            let canonical = std::fs::canonicalize(path).expect("canonical");
            assert_eq!(row.storage_key, canonical.to_str().expect("utf-8"));
            let (codecs, init) = segments::get_init(db, row.init_segment_id.expect("init"))
                .await.expect("init").expect("init row");
            assert!(codecs.starts_with("avc1."), "{codecs}");
            assert_eq!(&init[4..8], b"ftyp");
        }
        assert!(segments::get_init(db, indexed[1].init_segment_id.expect("init")).await
            .expect("init").expect("row").0.contains("mp4a.40.2"));

        // Consecutive files make one range; the runs are what a rebuild derives.
        let ranges = runs::ranges(db, archive.stream, 0, i64::MAX, 0).await.expect("ranges");
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert_eq!((ranges[0].start_us, ranges[0].end_us), (T0 * SECOND, indexed[2].end_us));
        let maintained = runs::all(db, archive.stream).await.expect("runs");
        runs::rebuild(db, archive.stream).await.expect("rebuild");
        assert_eq!(maintained, runs::all(db, archive.stream).await.expect("runs"));

        // Nothing was moved or deleted, and a second run adds nothing.
        for p in archive.good.iter().chain(&archive.bad) {
            assert!(p.exists(), "{}", p.display());
        }
        let again = import_archive(db, dir.path(), |_| {}).await.expect("import");
        assert_eq!((again.imported, again.skipped, again.unplayable.len()), (0, 3, 2));
        assert_eq!(rows(db, archive.stream).await.len(), 3);
    }
}

fn run_import(dir: &Path, archive: &str) -> std::process::Output {
    Command::new(binary())
        .current_dir(dir)
        .args(["--conf", "conf.toml", "import-archive", archive])
        .env_remove("VIDEO_SERVER_DATABASE_URL")
        .output()
        .expect("run video-server import-archive")
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_import_archive_subcommand() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("conf.toml"), base_config()).expect("conf");
    let archive = go_archive(&dir.path().join("mp4"));

    let out = run_import(dir.path(), "mp4");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "exit {}: {stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("imported 3 ("), "{stdout}");
    assert!(
        stdout.contains("skipped 0 already indexed, unplayable 2"),
        "{stdout}"
    );
    for bad in &archive.bad {
        let name = bad.file_name().expect("name").to_string_lossy();
        assert!(stderr.contains(&*name), "{name} reported: {stderr}");
    }

    let out = run_import(dir.path(), "./mp4/");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("imported 0 (0 bytes), skipped 3"),
        "{stdout}"
    );

    let url = format!("sqlite://{}", dir.path().join("data/index.db").display());
    let db = Db::connect(&url).await.expect("open index");
    assert_eq!(rows(&db, archive.stream).await.len(), 3);
    db.close().await;

    // A directory that does not exist is a usage error.
    let out = run_import(dir.path(), "nope");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An imported Go archive plays back over `/ws/archive` like recorded segments: the Go client
/// pointed at our server sees the recordings it had before the migration.
#[tokio::test(flavor = "multi_thread")]
async fn imported_go_archive_plays_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let archive = go_archive(dir.path());
    let s = InProcess::start("[archive]\nserving = true\n").await;
    import_archive(&s.state.db, dir.path(), |_| {})
        .await
        .expect("import");
    let (parts, texts) = play_archive(&s.video, archive.stream, T0, 60).await;
    assert_eq!(texts.last().map(String::as_str), Some("eos"), "{texts:?}");
    // Video only, then video + AAC, then video only: each change sends codecs and init again.
    let codecs: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(codecs.len(), 3, "{codecs:?}");
    assert!(
        !codecs[0].contains("mp4a") && codecs[1].contains("mp4a.40.2"),
        "{codecs:?}"
    );
    // Every part decodes and holds its file's length (2 s, 3 s, 2 s) in about-a-second fragments.
    for (i, (part, want_s)) in parts.iter().zip([2.0, 3.0, 2.0]).enumerate() {
        assert!((2..=4).contains(&part.2), "part {i}: {} fragments", part.2);
        let secs = decoded_seconds(dir.path(), i, &part.1);
        assert!((secs - want_s).abs() < 0.2, "part {i}: {secs} s");
    }
    let _ = s.stop().await;
}

/// Writes one played part to `dir`, checks that it decodes without errors, and returns its media
/// duration in seconds.
fn decoded_seconds(dir: &Path, i: usize, data: &[u8]) -> f64 {
    let path = dir.join(format!("part{i}.mp4"));
    std::fs::write(&path, data).expect("write");
    let p = path.to_str().expect("utf-8");
    assert_eq!(ffmpeg_decode_errors(p), "", "part {i}");
    // Media time runs on across files: a part starts where the previous one ended.
    let format = &ffprobe(p)["format"];
    let num = |k: &str| -> f64 { format[k].as_str().expect(k).parse().expect("number") };
    num("duration") - num("start_time")
}

/// Plays `/ws/archive` from `start` (Unix seconds) for `duration` seconds to its end, answering
/// every `pause` with `more`. Returns, per codec setup, the codec list, the init segment with its
/// fragments, and the number of fragments; and the text messages.
async fn play_archive(
    video: &str,
    stream: Uuid,
    start: i64,
    duration: i64,
) -> (Vec<(String, Vec<u8>, usize)>, Vec<String>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let url =
        format!("ws://{video}/ws/archive?stream_id={stream}&start={start}&duration={duration}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut parts: Vec<(String, Vec<u8>, usize)> = Vec::new();
    let mut texts = Vec::new();
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .expect("not stalled");
        match m {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&9) => {
                parts.push((String::from_utf8_lossy(&b[1..]).into_owned(), Vec::new(), 0));
            }
            Some(Ok(Message::Binary(b))) => {
                let part = parts.last_mut().expect("codecs first");
                if first_box(&b) == "ftyp" {
                    part.1 = b.to_vec();
                } else {
                    assert_eq!(first_box(&b), "moof");
                    part.2 += 1;
                    part.1.extend_from_slice(&b);
                }
            }
            Some(Ok(Message::Text(t))) if t.as_str() == "pause" => {
                ws.send(Message::Text("more".into())).await.expect("more");
            }
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    (parts, texts)
}

/// MD5 of every decoded video picture of `path`, in presentation order.
fn video_frame_md5s(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_owned()))
        .collect()
}

/// Rewrites the progressive MP4 `src` (ffmpeg's layout: `ftyp`, `mdat` with a 32-bit size,
/// `moov` last) into the layout the Go original's muxer writes: its `ftyp` brands, an `mdat`
/// with a 64-bit size, the `moov` after it with chunk offsets moved to match, and edit lists
/// whose `media_time` is a large source timestamp (past 2^31, so the `elst` needs version 1).
fn go_muxer_layout(src: &Path, dst: &Path) {
    use shiguredo_mp4::boxes::MoovBox;
    use shiguredo_mp4::{Decode, Either, Encode};

    let data = std::fs::read(src).expect("read");
    let mut at = 0usize;
    let (mut payload, mut payload_at, mut moov) = (None, 0u64, None);
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(size >= 8, "ffmpeg writes 32-bit sizes");
        match &data[at + 4..at + 8] {
            b"mdat" => {
                payload = Some(&data[at + 8..at + size]);
                payload_at = (at + 8) as u64;
            }
            b"moov" => moov = Some(MoovBox::decode(&data[at..at + size]).expect("moov").0),
            _ => {}
        }
        at += size;
    }
    let (payload, mut moov) = (payload.expect("mdat"), moov.expect("moov"));
    let mut out = Vec::new();
    out.extend_from_slice(&32u32.to_be_bytes());
    out.extend_from_slice(b"ftypisom");
    out.extend_from_slice(&0x200u32.to_be_bytes());
    out.extend_from_slice(b"isomiso2avc1mp41");
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(&(16 + payload.len() as u64).to_be_bytes());
    let new_payload_at = out.len() as u64;
    out.extend_from_slice(payload);
    for (i, trak) in moov.trak_boxes.iter_mut().enumerate() {
        match &mut trak.mdia_box.minf_box.stbl_box.stco_or_co64_box {
            Either::A(stco) => {
                for o in &mut stco.chunk_offsets {
                    *o = u32::try_from(u64::from(*o) - payload_at + new_payload_at)
                        .expect("small file");
                }
            }
            Either::B(co64) => {
                for o in &mut co64.chunk_offsets {
                    *o = *o - payload_at + new_payload_at;
                }
            }
        }
        let edits = trak
            .edts_box
            .as_mut()
            .and_then(|e| e.elst_box.as_mut())
            .expect("ffmpeg writes an edit list");
        for e in &mut edits.entries {
            if e.media_time >= 0 {
                e.media_time += 3_000_000_000 + i as i64 * 1_000_000;
            }
        }
    }
    out.extend_from_slice(&moov.encode_to_vec().expect("encode moov"));
    std::fs::write(dst, out).expect("write");
}

/// Files in the Go muxer's layout (64-bit `mdat` size, `moov` after `mdat`, edit lists with a
/// large `media_time`) import, play back over `/ws/archive` from the file's first frame, and
/// export, alone and in a range that continues into fragmented segments we recorded: the
/// exports decode, last as long as asked and start on the requested frame.
#[tokio::test(flavor = "multi_thread")]
async fn go_muxer_files_import_play_and_export() {
    let dir = tempfile::tempdir().expect("tmp");
    let stream = Uuid::new_v4();
    let clip = dir.path().join("clip.mp4");
    ffmpeg(&[
        "-i",
        "assets/demo.mp4",
        "-t",
        "4",
        "-c",
        "copy",
        clip.to_str().expect("utf-8"),
    ]);
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("mkdir");
    let go_file = archive.join(format!("{stream}_{T0}.mp4"));
    go_muxer_layout(&clip, &go_file);
    let go_data = std::fs::read(&go_file).expect("read");
    assert_eq!(top_level_boxes(&go_data), ["ftyp", "mdat", "moov"]);
    assert_eq!(&go_data[32..40], b"\0\0\0\x01mdat", "64-bit mdat size");
    // ffmpeg itself reads the fixture: it is a valid file.
    assert_eq!(ffmpeg_decode_errors(go_file.to_str().expect("utf-8")), "");

    let s = InProcess::start("[archive]\nserving = true\n").await;
    let report = import_archive(&s.state.db, &archive, |_| {})
        .await
        .expect("import");
    assert_eq!(
        (report.imported, report.unplayable.len()),
        (1, 0),
        "{report:?}"
    );
    let imported = rows(&s.state.db, stream).await;
    assert_eq!(imported.len(), 1);
    let len = imported[0].end_us - imported[0].start_us;
    assert!((len - 4 * SECOND).abs() <= 50_000, "{len} µs");

    // Played back from its first frame to its end.
    let (parts, texts) = play_archive(&s.video, stream, T0, 60).await;
    assert_eq!(texts.last().map(String::as_str), Some("eos"), "{texts:?}");
    assert_eq!(parts.len(), 1);
    assert!(parts[0].0.contains("mp4a.40.2"), "{}", parts[0].0);
    let secs = decoded_seconds(dir.path(), 0, &parts[0].1);
    assert!((secs - 4.0).abs() < 0.1, "{secs} s");

    // Fragmented segments we recorded from the same clip, right after the imported file.
    let recorded_at = imported[0].end_us;
    std::fs::create_dir_all(dir.path().join("rec")).expect("mkdir");
    crate::playback::synthesize_from(
        &clip,
        &s.state.db,
        &dir.path().join("rec"),
        stream,
        recorded_at,
        1,
    )
    .await;
    let created = crate::support::send_json(
        &s.state,
        "POST",
        "/api/v1/streams",
        &serde_json::json!({
            "id": stream,
            "enabled": false,
            "source": { "kind": "file", "path": "assets/demo.mp4" },
            "outputs": ["mse"],
        }),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let export = |from_us: i64, to_us: i64, name: &str| {
        let (state, path, name) = (s.state.clone(), dir.path().join(name), name.to_owned());
        async move {
            let uri = format!(
                "/api/v1/streams/{stream}/export.mp4?start={}&end={}",
                from_us as f64 / 1e6,
                to_us as f64 / 1e6
            );
            let r = crate::support::get(&state, &uri).await;
            assert_eq!(r.status, 200, "{uri}: {}", String::from_utf8_lossy(&r.body));
            std::fs::write(&path, &r.body).expect("write");
            let errors = ffmpeg_decode_errors(path.to_str().expect("utf-8"));
            assert!(errors.trim().is_empty(), "{name}: {errors}");
            path
        }
    };
    use crate::export::{codecs, first_frame_md5, probed_duration};
    // Inside the imported file: from 0.5 s to 3.5 s of the clip.
    let inside = export(T0 * SECOND + 500_000, T0 * SECOND + 3_500_000, "inside.mp4").await;
    assert_eq!(codecs(&inside), ["h264", "aac"]);
    let d = probed_duration(&inside);
    assert!((d - 3.0).abs() <= 0.04, "{d}");
    assert_eq!(
        first_frame_md5(&inside, None),
        first_frame_md5(&clip, Some(0.5))
    );
    // From 2.5 s into the imported file to 2.5 s into the recorded segments.
    let mixed = export(
        T0 * SECOND + 2_500_000,
        recorded_at + 2_500_000,
        "mixed.mp4",
    )
    .await;
    assert_eq!(codecs(&mixed), ["h264", "aac"]);
    let d = probed_duration(&mixed);
    assert!((d - 4.0).abs() <= 0.08, "{d}");
    assert_eq!(
        first_frame_md5(&mixed, None),
        first_frame_md5(&clip, Some(2.5))
    );
    // Every picture in order: the imported file's from 2.5 s to its end, then the recorded
    // segments' from their first.
    let (clip_frames, mixed_frames) = (video_frame_md5s(&clip), video_frame_md5s(&mixed));
    let first = clip_frames
        .iter()
        .position(|m| *m == mixed_frames[0])
        .expect("the first exported picture is one of the clip's");
    let expected: Vec<&String> = clip_frames[first..].iter().chain(&clip_frames).collect();
    assert!(
        mixed_frames.len() > clip_frames.len() - first + 25,
        "{}",
        mixed_frames.len()
    );
    for (i, m) in mixed_frames.iter().enumerate() {
        assert_eq!(
            m, expected[i],
            "picture {i} of the export ({first} of the clip first)"
        );
    }
    let _ = s.stop().await;
}

/// A long imported Go file (moov at the end, ~10 MB) plays by ranged reads: its `moov`, then about
/// a second of samples at a time, never the whole file. The played pictures are the file's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_imported_go_file_plays_by_ranged_reads() {
    let dir = tempfile::tempdir().expect("tmp");
    let stream = Uuid::new_v4();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("mkdir");
    let go_file = archive.join(format!("{stream}_{T0}.mp4"));
    // Noise keeps the bitrate up (~3 Mb/s), so the file is large next to a second of it.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25,noise=alls=30:allf=t",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "24",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "50",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        go_file.to_str().expect("utf-8"),
    ]);
    let file_len = std::fs::metadata(&go_file).expect("stat").len();
    let boxes = top_level_boxes(&std::fs::read(&go_file).expect("read"));
    assert_eq!(boxes.last().map(String::as_str), Some("moov"), "{boxes:?}");
    assert!(file_len > 4_000_000, "{file_len} bytes");

    let s = InProcess::start("[archive]\nserving = true\n").await;
    import_archive(&s.state.db, &archive, |_| {})
        .await
        .expect("import");
    let (parts, texts) = play_archive(&s.video, stream, T0, 60).await;
    assert_eq!(texts.last().map(String::as_str), Some("eos"), "{texts:?}");
    assert_eq!(parts.len(), 1);
    assert!((20..=30).contains(&parts[0].2), "{} fragments", parts[0].2);
    let played = dir.path().join("played.mp4");
    std::fs::write(&played, &parts[0].1).expect("write");
    assert_eq!(video_frame_md5s(&played), video_frame_md5s(&go_file));

    let stats = &s.state.archive.playback;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (largest, peak, read) = (
        load(&stats.largest_read_bytes),
        load(&stats.peak_session_bytes),
        load(&stats.bytes_read),
    );
    assert!(
        largest * 10 < file_len,
        "largest read {largest} of {file_len}"
    );
    assert!(peak * 10 < file_len, "peak {peak} of {file_len}");
    assert!(
        read >= file_len * 9 / 10 && read <= file_len * 11 / 10,
        "read {read} of {file_len}"
    );
    let _ = s.stop().await;
}
