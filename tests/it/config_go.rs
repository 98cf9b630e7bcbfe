//! The Go original's sample configs load, with the documented meaning.

use std::path::Path;

use video_server::config::Config;
use video_server::stream::{OutputType, Source, StorageKind};

fn fixture(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/go")
        .join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{name} must load: {e}"))
}

#[test]
fn go_sample_toml_parses() {
    let c = fixture("conf.toml");
    assert_eq!(c.api.port(), 8091);
    assert_eq!(c.api.host, "localhost");
    assert_eq!(c.api.mode, "release");
    assert_eq!(c.video.port(), 8090);
    assert_eq!(c.hls.ms_per_segment, 10_000);
    assert_eq!(c.hls.window_size, 5);
    assert_eq!(c.hls.window_capacity, 10);
    assert!(!c.archive.recording);
    assert!(c.archive.serving);
    assert_eq!(c.archive.ms_per_file(), 30_000);
    assert_eq!(c.archive.minio_settings.port, 29199);
    assert_eq!(c.archive.minio_settings.default_bucket, "archive-bucket");
    assert!(c.cors.enabled);
    assert_eq!(c.cors.allow_origins, vec!["*".to_owned()]);
    assert!(!c.on_demand.enabled);
    assert_eq!(c.on_demand.health_timeout_ms, 3000);

    let streams = c.streams().expect("streams valid");
    let file = streams
        .iter()
        .find(|s| s.id.to_string() == "13bf3e5c-d537-4f10-98e8-9d0afca8b070")
        .expect("the local file stream");
    assert!(matches!(&file.source, Source::File { looping: true, .. }));
    assert_eq!(file.outputs, vec![OutputType::Mse, OutputType::Hls]);
    let cam = streams
        .iter()
        .find(|s| s.id.to_string() == "566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c")
        .expect("the rtsp stream");
    assert!(matches!(&cam.source, Source::Rtsp { url, .. } if url.starts_with("rtsp://")));
    assert!(cam.archive.recording);
    assert_eq!(cam.archive.storage, StorageKind::Filesystem);
    assert_eq!(c.ms_per_file_for(cam), 20_000);
    // The MinIO settings become the S3 settings, without leaking the password in Debug output.
    let s3 = c.effective_s3().expect("minio mapped");
    assert_eq!(s3.endpoint, "http://localhost:29199");
    assert!(!format!("{c:?}").contains(&c.archive.minio_settings.password));
}

#[test]
fn go_sample_json_parses_and_ignores_stale_keys() {
    let c = fixture("conf.json");
    assert_eq!(c.api.port(), 8091);
    assert_eq!(c.video.port(), 8090);
    let streams = c.streams().expect("streams valid");
    assert_eq!(streams.len(), 2);
    // `archive.enabled` is a stale key of the shipped conf.json: ignored, so no recording.
    let first = streams
        .iter()
        .find(|s| s.id.to_string() == "566bfe72-2a8a-4d4c-9b84-2e1b9b4b1a3c")
        .expect("first stream");
    assert!(!first.archive.recording);
    let second = streams
        .iter()
        .find(|s| s.id.to_string() == "74f17aa1-6f3d-4e8e-b1a4-5b9f0f5e3a21")
        .expect("second stream");
    assert_eq!(second.outputs, vec![OutputType::Hls]);
}

#[test]
fn paths_with_extra_dots_work() {
    // The original rejected `./conf.toml` and `my.conf.toml` and then crashed.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("my.conf.toml");
    std::fs::write(&path, "[api]\nport = 9999\n").expect("write");
    let c = Config::load(&path).expect("loads");
    assert_eq!(c.api.port(), 9999);
    let dotted = dir.path().join(".").join("my.conf.toml");
    assert!(Config::load(&dotted).is_ok());
}

#[test]
fn missing_and_invalid_files_name_the_file_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope.toml");
    let msg = Config::load(&missing).expect_err("missing").to_string();
    assert!(msg.contains("nope.toml"), "{msg}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"hls": {"window_size": "five"}}"#).expect("write");
    let msg = Config::load(&bad).expect_err("bad type").to_string();
    assert!(msg.contains("bad.json"), "{msg}");
    assert!(msg.contains("hls.window_size"), "{msg}");

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[api\nport = 1").expect("write");
    let msg = Config::load(&syntax).expect_err("syntax").to_string();
    assert!(msg.contains("syntax.toml"), "{msg}");

    let yaml = dir.path().join("conf.yaml");
    std::fs::write(&yaml, "api: {}").expect("write");
    let msg = Config::load(&yaml).expect_err("format").to_string();
    assert!(msg.contains("conf.yaml"), "{msg}");
}

#[test]
fn shipped_default_config_is_the_embedded_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf.toml");
    let c = Config::load(&path).expect("conf.toml loads");
    assert!(
        c.database.url.starts_with("sqlite://data/")
            || std::env::var("VIDEO_SERVER_DATABASE_URL").is_ok()
    );
    assert_eq!(c.archive.directory(), "./mp4");
    assert_eq!(c.hls.directory, "./hls");
    let streams = c.streams().expect("valid");
    assert_eq!(streams.len(), 1);
    let demo = &streams[0];
    assert!(
        matches!(&demo.source, Source::File { path, looping: true } if path == "assets/demo.mp4")
    );
    assert_eq!(demo.outputs, vec![OutputType::Mse, OutputType::Hls]);
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.mp4");
    let size = std::fs::metadata(&clip).expect("demo clip exists").len();
    assert!(size > 100_000 && size < 2_000_000, "demo clip size {size}");
}
