//! Archive playback latency: time from opening `/ws/archive` to the first media fragment, from
//! segments on the local filesystem. Run: `cargo bench --bench playback` (results go to
//! docs/benchmarks.md by hand, with the machine and the date).
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

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!(
        "[api]\nenabled = false\n[video]\nhost = \"127.0.0.1\"\nport = 0\n\
         [archive]\nserving = true\ndirectory = \"{dir}\"\n[database]\nurl = \"sqlite://{dir}/index.db\"\n",
        dir = tmp.path().display()
    );
    let config = Config::from_toml_str("bench.toml", &toml).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = video_server::server::start(config, shutdown.clone())
        .await
        .unwrap();
    let db = running.state.db.clone();

    // Ten minutes of the demo clip as 30 s segments.
    let clip = Mp4File::open(Path::new("assets/demo.mp4")).unwrap();
    let params = Arc::new(clip.params().clone());
    let id = uuid::Uuid::new_v4();
    let hub = Hub::new();
    let rec = Recorder::new(
        RecorderConfig {
            stream_id: id,
            directory: tmp.path().to_owned(),
            ms_per_file: 30_000,
            storage: video_server::stream::StorageKind::Filesystem,
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
        "archive playback, filesystem, {RUNS} sessions: time to first fragment p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (target < 300 ms)",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 9 / 10]),
        ms(samples[RUNS - 1])
    );
    shutdown.cancel();
    running.wait().await;
}
