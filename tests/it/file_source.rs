//! File sources as the Go original's `[[local_files]]`, where we differ on purpose: a file without
//! `loop` plays once and then stops for good (the original replayed it after its 7 s restart
//! pause).

use std::process::Command;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::support::InProcess;

/// A file without `loop` plays to its end in real time, rests for the Go original's restart
/// pause (7 s) and plays again, as the original did.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_without_loop_plays_again_after_the_restart_pause() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clip = tmp.path().join("two_seconds.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .args([
            "testsrc2=size=320x180:rate=25:duration=2",
            "-c:v",
            "libx264",
        ])
        .args(["-g", "25", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .expect("run ffmpeg");
    assert!(status.success());
    let id = Uuid::new_v4();
    let s = InProcess::start(&format!(
        "[[local_files]]\nguid = \"{id}\"\nfile = \"{}\"\noutput_types = [\"mse\"]\nloop = false\n",
        clip.display()
    ))
    .await;
    let status = |s: &InProcess| s.state.manager.status(id).expect("the stream stays active");
    // It plays...
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status(&s).status {
        assert!(Instant::now() < deadline, "the file never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    // ...to its end...
    while status(&s).streaming {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still streaming 10 s into a 2 s file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "played in real time: {:?}",
        started.elapsed()
    );
    // ...rests for the pause (7 s; seen from here it can only look longer)...
    let ended = Instant::now();
    let pause = video_server::source::supervisor::REPLAY_PAUSE;
    while ended.elapsed() < pause - Duration::from_secs(1) {
        let st = status(&s);
        assert!(
            !st.streaming && !st.status,
            "played again {:?} after its end: {st:?}",
            ended.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and plays again.
    while !status(&s).status {
        assert!(
            ended.elapsed() < pause + Duration::from_secs(8),
            "the file did not play again after the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&s).source_sessions, 2, "{:?}", status(&s));
    // The stream is listed as ever.
    let list: serde_json::Value = reqwest::get(format!("{}/list", s.api))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"][0]["stream_id"], id.to_string());
    let _ = s.stop().await;
}
