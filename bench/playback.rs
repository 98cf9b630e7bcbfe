//! Archive playback latency (time from opening `/ws/archive` to the first media fragment) and export
//! throughput (`export.mp4` of a 5-minute range), from the local filesystem and from S3 (s3s-fs,
//! which must be on PATH or in ~/.cargo/bin; `scripts/test` installs it).
//! Run: `cargo bench --bench playback`; results go to docs/benchmarks.md with the date.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use video_server::archive::recorder::{Recorder, RecorderConfig};
use video_server::config::Config;
use video_server::hub::Hub;
use video_server::media::mp4file::Mp4File;

const RUNS: usize = 40;

struct S3Server(std::process::Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_s3(dir: &Path) -> (S3Server, u16) {
    let port = free_port();
    let home = std::env::var("HOME").unwrap_or_default();
    let bin = which("s3s-fs").unwrap_or_else(|| Path::new(&home).join(".cargo/bin/s3s-fs"));
    std::fs::create_dir_all(dir).unwrap();
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "benchsecret"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs (cargo install s3s-fs@0.14.1 --features binary)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (S3Server(child), port)
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::main]
async fn main() {
    for s3 in [false, true] {
        run(s3).await;
    }
}

async fn run(use_s3: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (_s3, s3_conf) = if use_s3 {
        let (server, port) = start_s3(&tmp.path().join("s3"));
        let conf = format!(
            "[s3]\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\naccess_key = \"bench\"\n\
             secret_key = \"benchsecret\"\nbucket = \"archive\"\nprefix = \"video\"\n"
        );
        (Some(server), conf)
    } else {
        (None, String::new())
    };
    let label = if use_s3 { "s3" } else { "filesystem" };
    let toml = format!(
        "[api]\nhost = \"127.0.0.1\"\nport = 0\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
         [archive]\nserving = true\ndirectory = \"{dir}\"\n[database]\nurl = \"sqlite://{dir}/index.db\"\n{s3_conf}",
        dir = tmp.path().display()
    );
    let config = Config::from_toml_str("bench.toml", &toml).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = video_server::server::start(config, shutdown.clone())
        .await
        .unwrap();
    let db = running.state.db.clone();
    let api = running.api_addr.unwrap();
    // Ten minutes of the demo clip as 30 s segments.
    let clip = Mp4File::open(Path::new("assets/demo.mp4")).unwrap();
    let params = Arc::new(clip.params().clone());
    let id = uuid::Uuid::new_v4();
    // A (disabled) stream row: the export route serves streams it knows.
    let spec = video_server::stream::StreamSpec {
        id,
        name: "bench".into(),
        source: video_server::stream::Source::File {
            path: "assets/demo.mp4".into(),
            looping: true,
        },
        outputs: vec![],
        on_demand: None,
        enabled: false,
        verbose: String::new(),
        archive: Default::default(),
        retention: Default::default(),
    };
    video_server::db::streams::insert(&db, &spec, video_server::db::streams::Origin::Api)
        .await
        .unwrap();
    let hub = Hub::new();
    let rec = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: tmp.path().to_owned(),
            ms_per_file: 30_000,
            storage: if use_s3 {
                video_server::stream::StorageKind::S3
            } else {
                video_server::stream::StorageKind::Filesystem
            },
        },
        db.clone(),
        hub.subscribe(1_000_000),
    );
    let task = tokio::spawn(rec.run(tokio_util::sync::CancellationToken::new()));
    let wall0 = 1_760_000_000_000_000i64;
    for l in 0..25 {
        for f in clip.frames() {
            let ts = i64::from(params.timescale(f.track));
            let mut f = f.clone();
            f.dts += l * clip.duration_us() * ts / 1_000_000;
            f.wallclock_us = wall0 + f.dts * 1_000_000 / ts;
            f.params = params.clone();
            hub.publish(f);
        }
    }
    drop(hub);
    task.await.unwrap();
    if use_s3 {
        // Wait for the uploader to move every segment to S3.
        loop {
            let c = video_server::db::segments::upload_state_counts(&db)
                .await
                .unwrap();
            if c.local == 0 && c.uploading == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        // Start at different places so each run reads different segments.
        let start = wall0 / 1_000_000 + (i as i64 * 13) % 560;
        let url = format!(
            "ws://{}/ws/archive?stream_id={id}&start={start}&duration=60",
            running.video_addr
        );
        let t0 = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) if b.get(4..8) == Some(b"moof") => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("no fragment: {other:?}"),
            }
        }
        samples.push(t0.elapsed());
        drop(ws);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "archive playback, {label}, {RUNS} sessions: time to first fragment p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 9 / 10]),
        ms(samples[RUNS - 1])
    );
    // Export throughput: 5-minute ranges, 5 downloads each, median. "Cold": each download a
    // different range (planned from the segments' headers); "cached": the same range again (the
    // plan cache answers, as for a player's follow-up Range requests).
    let client = reqwest::Client::new();
    let export_url = |start: i64| {
        format!(
            "http://{api}/api/v1/streams/{id}/export.mp4?start={start}&end={}",
            start + 300
        )
    };
    for cached in [false, true] {
        let mut rates = Vec::new();
        let mut size = 0;
        for i in 0..5 {
            let offset = if cached { 1 } else { 1 + i * 7 };
            let url = export_url(wall0 / 1_000_000 + 60 + offset);
            let t0 = Instant::now();
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            size = body.len();
            rates.push(body.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "export, {label}, {}: 5-minute range ({:.1} MB) median {:.0} MB/s (min {:.0}, max {:.0})",
            if cached { "cached plan" } else { "cold" },
            size as f64 / 1e6,
            rates[2],
            rates[0],
            rates[4]
        );
    }
    shutdown.cancel();
    running.wait().await;
}
