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
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().expect("tmp");
    let archive = go_archive(dir.path());
    let s = InProcess::start("[archive]\nserving = true\n").await;
    import_archive(&s.state.db, dir.path(), |_| {})
        .await
        .expect("import");
    let url = format!(
        "ws://{}/ws/archive?stream_id={}&start={T0}&duration=60",
        s.video, archive.stream
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    // Per codec setup: the codec list, the init segment and its fragments.
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
        let path = dir.path().join(format!("part{i}.mp4"));
        std::fs::write(&path, &part.1).expect("write");
        let p = path.to_str().expect("utf-8");
        assert_eq!(ffmpeg_decode_errors(p), "", "part {i}");
        // Media time runs on across files: a part starts where the previous one ended.
        let format = &ffprobe(p)["format"];
        let num = |k: &str| -> f64 { format[k].as_str().expect(k).parse().expect("number") };
        let secs = num("duration") - num("start_time");
        assert!((secs - want_s).abs() < 0.2, "part {i}: {secs} s");
    }
    // Exporting imported (progressive MP4) segments is refused as documented (README, Export),
    // once the stream exists again (an unknown stream is a 404).
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/streams", s.api))
        .json(
            &serde_json::json!({"id": archive.stream.to_string(), "name": "Imported",
            "enabled": false, "source": {"kind": "file", "path": demo.display().to_string()}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let r = reqwest::get(format!(
        "{}/api/v1/streams/{}/export.mp4?start={T0}&end={}",
        s.api,
        archive.stream,
        T0 + 6
    ))
    .await
    .expect("export");
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "not_exportable", "{v}");
    let _ = s.stop().await;
}
