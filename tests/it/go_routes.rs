//! The Go-compatible API routes: exact keys, messages and status codes, on both engines.

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;
use video_server::db::segments::{self, NewSegment, SegmentState};
use video_server::db::streams;
use video_server::stream::StorageKind;

use crate::both_engines;
use crate::support::{TestDb, call, config, get, send_json, state};

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";

fn demo_config() -> String {
    format!(
        "[api]\nhost = \"127.0.0.1\"\nport = 8091\n[video]\nhost = \"127.0.0.1\"\nport = 8090\n\
         [archive]\nserving = true\n\
         [[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\", \"hls\"]\nloop = true\n"
    )
}

async fn seeded(t: &TestDb, toml: &str) -> video_server::api::AppState {
    let c = config(toml);
    streams::seed(&t.db, &c.streams().expect("streams"))
        .await
        .expect("seed");
    state(&t.db, c).await
}

both_engines!(
    async fn list_has_the_go_shape(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let r = get(&s, "/list").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), json!({"data": [{"stream_id": DEMO}]}));
    }
);

both_engines!(
    async fn status_has_every_go_field_in_order(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let r = get(&s, "/status").await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        assert_eq!(v["api"], json!({"host": "127.0.0.1", "port": 8091}));
        assert_eq!(v["video"], json!({"host": "127.0.0.1", "port": 8090}));
        assert_eq!(
            v["hls"],
            json!({"hls_ms_per_segment": 10000, "hls_window_size": 5, "hls_window_capacity": 10})
        );
        assert_eq!(
            v["on_demand"],
            json!({"enabled": false, "idle_ms": 30000, "health_check": false,
                   "health_interval_ms": 30000, "health_timeout_ms": 3000})
        );
        let stream = &v["streams"][DEMO];
        assert_eq!(stream["supported_output_types"], json!([3, 2]));
        assert_eq!(stream["last_health_check"], json!("0001-01-01T00:00:00Z"));
        assert_eq!(stream["viewers"], json!(0));
        assert_eq!(stream["url"], json!("assets/demo.mp4"));
        // Field order is the Go struct's: check it on the raw text.
        let text = String::from_utf8(r.body.clone()).expect("utf8");
        let order = [
            "\"url\"",
            "\"status\"",
            "\"on_demand\"",
            "\"online\"",
            "\"streaming\"",
            "\"viewers\"",
            "\"last_health_check\"",
            "\"last_health_error\"",
            "\"supported_output_types\"",
            "\"codecs\"",
        ];
        let stream_text = &text[text.find(DEMO).expect("stream key")..];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| stream_text.find(k).unwrap_or_else(|| panic!("{k} missing")))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "field order {positions:?}"
        );
        let top = [
            "\"api\":{",
            "\"video\":{",
            "\"streams\":{",
            "\"hls\":{",
            "\"on_demand\":{",
        ];
        let positions: Vec<usize> = top.iter().map(|k| text.find(k).expect("key")).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "top order {positions:?}"
        );
    }
);

both_engines!(
    async fn enable_camera_creates_persists_and_answers_status(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let id = Uuid::new_v4();
        let r = send_json(
            &s,
            "POST",
            "/enable_camera",
            &json!({"guid": id, "url": "rtsp://127.0.0.1:1/test", "output_types": ["mse", "HLS"], "on_demand": true}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        let entry = &v["streams"][id.to_string()];
        assert_eq!(entry["supported_output_types"], json!([3, 2]));
        assert_eq!(entry["on_demand"], json!(true));
        let rec = streams::get(&t.db, id)
            .await
            .expect("get")
            .expect("persisted");
        assert!(rec.spec.enabled);
        // Enabling an existing, running camera changes nothing.
        let r = send_json(
            &s,
            "POST",
            "/enable_camera",
            &json!({"guid": id, "url": "rtsp://127.0.0.1:1/other", "output_types": ["mse"]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let again = streams::get(&t.db, id)
            .await
            .expect("get")
            .expect("persisted");
        assert_eq!(again.spec, rec.spec);
    }
);

both_engines!(
    async fn enable_camera_errors_are_the_go_ones(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let cases = [
            (
                json!({"guid": "not-a-uuid", "url": "rtsp://h/x"}),
                "Bad JSON binding",
            ),
            (
                json!({"guid": Uuid::new_v4(), "url": "rtsp://h/x", "output_types": ["rtsp"]}),
                "stream type is not supported. Type: 'rtsp'",
            ),
            (
                json!({"guid": Uuid::new_v4(), "url": "rtsp://h/x", "output_types": ["local_file"]}),
                "stream type is not supported. Type: 'local_file'",
            ),
            (
                json!({"guid": Uuid::new_v4(), "url": "rtsp://h/x", "output_types": ["webrtc"]}),
                "stream type does not exists. Type: 'webrtc'",
            ),
            (
                json!({"url": "rtsp://h/x"}),
                "Bad JSON binding: 'guid' is required",
            ),
            (
                json!({"guid": Uuid::nil(), "url": "rtsp://h/x"}),
                "Bad JSON binding: 'guid' must not be the nil UUID",
            ),
            (
                json!({"guid": Uuid::new_v4(), "url": "http://h/x"}),
                "Bad JSON binding: 'url' must be an rtsp:// or rtsps:// URL",
            ),
        ];
        for (body, message) in cases {
            let r = send_json(&s, "POST", "/enable_camera", &body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(r.json(), json!({"Error": message}), "{body}");
        }
        // What Go's binder refused too: an array for the body, a value of the wrong type, a UUID
        // in another spelling than the hyphenated one.
        for body in [
            json!([Uuid::new_v4(), "rtsp://h/x"]),
            json!({"guid": Uuid::new_v4(), "url": "rtsp://h/x", "output_types": "mse"}),
            json!({"guid": format!("{{{}}}", Uuid::new_v4()), "url": "rtsp://h/x"}),
            json!({"guid": Uuid::new_v4().simple().to_string(), "url": "rtsp://h/x"}),
        ] {
            let r = send_json(&s, "POST", "/enable_camera", &body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(r.json(), json!({"Error": "Bad JSON binding"}), "{body}");
        }
        let r = call(
            &s,
            "POST",
            "/enable_camera",
            Some("application/json"),
            "{not json",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json(), json!({"Error": "Bad JSON binding"}));
        // Nothing was registered by the failures.
        assert_eq!(streams::list_all(&t.db).await.expect("list").len(), 1);
    }
);

both_engines!(
    async fn disable_camera_persists_and_unknown_is_200(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let r = send_json(&s, "POST", "/disable_camera", &json!({"guid": DEMO})).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.json()["streams"].get(DEMO).is_none());
        let rec = streams::get(&t.db, DEMO.parse().expect("uuid"))
            .await
            .expect("get")
            .expect("kept");
        assert!(!rec.spec.enabled, "disabled state is persisted");
        assert_eq!(get(&s, "/list").await.json(), json!({"data": []}));
        // Restart: the stream stays disabled.
        let s = crate::support::restart(s, config(&demo_config())).await;
        assert_eq!(get(&s, "/list").await.json(), json!({"data": []}));
        assert!(
            s.manager.status(DEMO.parse().expect("uuid")).is_none(),
            "not started again"
        );
        // Unknown guid: the Go 200 with the status document.
        let r = send_json(
            &s,
            "POST",
            "/disable_camera",
            &json!({"guid": Uuid::new_v4()}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.json().get("streams").is_some());
        // Missing guid / bad JSON: 400 with the Go key.
        let r = send_json(&s, "POST", "/disable_camera", &json!({})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.json(),
            json!({"Error": "Bad JSON binding: 'guid' is required"})
        );
        let r = call(&s, "POST", "/disable_camera", Some("application/json"), "[").await;
        assert_eq!(r.json(), json!({"Error": "Bad JSON binding"}));
        // Re-enable the disabled stream through the Go route.
        let r = send_json(&s, "POST", "/enable_camera", &json!({"guid": DEMO})).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.json()["streams"].get(DEMO).is_some());
    }
);

both_engines!(
    async fn archive_ranges_go_shape_and_errors(t: &TestDb) {
        let s = seeded(t, &demo_config()).await;
        let r = get(&s, "/archive/not-a-uuid/ranges").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json(), json!({"error": "invalid stream_id"}));
        let r = get(&s, &format!("/archive/{DEMO}/ranges")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json(), json!({"error": "no archive segments found"}));

        let id: Uuid = DEMO.parse().expect("uuid");
        let base_us = 1_766_224_800_000_000; // 2025-12-20T10:00:00Z
        for (s0, e0) in [(0, 30), (30, 60), (120, 150), (211, 241)] {
            segments::insert(
                &t.db,
                &NewSegment {
                    stream_id: id,
                    start_us: base_us + s0 * 1_000_000,
                    end_us: base_us + e0 * 1_000_000 + 400_000,
                    media_duration_us: (e0 - s0) * 1_000_000,
                    storage: StorageKind::Filesystem,
                    storage_key: format!("mp4/{DEMO}_{s0}.mp4"),
                    bytes: 10,
                    state: SegmentState::Complete,
                },
            )
            .await
            .expect("insert");
        }
        video_server::db::runs::rebuild(&t.db, id)
            .await
            .expect("runs");
        // The id is echoed as given (upper case here). As in the original, holes shorter than
        // 2 x ms_per_file (30 s by default) are one range (the 59.6 s hole); longer ones split
        // (60.6 s); the ends stay the real ones.
        let upper = DEMO.to_uppercase();
        let r = get(&s, &format!("/archive/{upper}/ranges")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.json(),
            json!({"stream_id": upper, "ranges": [
                {"start": "2025-12-20T10:00:00Z", "end": "2025-12-20T10:02:31Z"},
                {"start": "2025-12-20T10:03:31Z", "end": "2025-12-20T10:04:02Z"},
            ]})
        );
        // Our route keeps its own tolerance (gap_ms, default 2 s): every hole splits.
        let r = get(&s, &format!("/api/v1/streams/{DEMO}/ranges")).await;
        assert_eq!(r.json()["ranges"].as_array().map(Vec::len), Some(3));
        // The stream's own ms_per_file counts: 10 s files bridge holes up to 20 s only.
        let rec = streams::get(&t.db, id).await.expect("get").expect("stream");
        let mut spec = rec.spec;
        spec.archive.ms_per_file = Some(10_000);
        streams::update(&t.db, &spec).await.expect("update");
        let r = get(&s, &format!("/archive/{DEMO}/ranges")).await;
        assert_eq!(
            r.json()["ranges"].as_array().map(Vec::len),
            Some(3),
            "{}",
            r.json()
        );
    }
);

both_engines!(
    async fn archive_ranges_need_serving(t: &TestDb) {
        let toml = demo_config().replace("serving = true", "serving = false");
        let s = seeded(t, &toml).await;
        let r = get(&s, &format!("/archive/{DEMO}/ranges")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.json(),
            json!({"error": "archive not available: archive serving not enabled globally"})
        );
    }
);

/// `/status` codecs carry the vdk fields Go clients may read, computed from the stream's real
/// parameter sets; checked against ffprobe's reading of the same file.
#[tokio::test(flavor = "multi_thread")]
async fn status_codecs_have_the_go_fields_of_the_real_parameter_sets() {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 text"))
            .expect("base64")
    };
    let s = crate::support::InProcess::start(&format!(
        "[[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\noutput_types = [\"mse\"]\nloop = true\n"
    ))
    .await;
    let mut codecs = serde_json::Value::Null;
    for _ in 0..100 {
        let v: serde_json::Value = reqwest::get(format!("{}/status", s.api))
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        codecs = v["streams"][DEMO]["codecs"].clone();
        if codecs.is_array() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let probe = crate::support::media::ffprobe("assets/demo.mp4");
    let (pv, pa) = (&probe["streams"][0], &probe["streams"][1]);
    let (video, audio) = (&codecs[0], &codecs[1]);

    assert_eq!(video["codec"], "avc1.4D401E", "{codecs}");
    let sps = &video["SPSInfo"];
    assert_eq!(sps["Width"], pv["width"], "{codecs}");
    assert_eq!(sps["Height"], pv["height"], "{codecs}");
    assert_eq!(sps["ProfileIdc"], 77, "Main profile: {codecs}");
    assert_eq!(sps["LevelIdc"], pv["level"], "{codecs}");
    assert_eq!(pv["r_frame_rate"], "25/1");
    assert_eq!(sps["FPS"], 25, "from the VUI timing info: {codecs}");
    let width = pv["width"].as_u64().expect("width");
    let height = pv["height"].as_u64().expect("height");
    assert_eq!(sps["MbWidth"], width.div_ceil(16), "{codecs}");
    let cropped = sps["MbHeight"].as_u64().expect("MbHeight") * 16
        - 2 * (sps["CropTop"].as_u64().expect("top") + sps["CropBottom"].as_u64().expect("bottom"));
    assert_eq!(cropped, height, "{codecs}");
    assert_eq!(sps["Id"], 0);
    let info = &video["RecordInfo"];
    let record = b64(&video["Record"]);
    assert_eq!(record[0], 1, "configurationVersion");
    assert_eq!(info["AVCProfileIndication"], record[1]);
    assert_eq!(info["ProfileCompatibility"], record[2]);
    assert_eq!(info["AVCLevelIndication"], record[3]);
    assert_eq!(info["LengthSizeMinusOne"], 3);
    let sps_nal = b64(&info["SPS"][0]);
    assert_eq!(sps_nal[0] & 0x1f, 7, "an SPS NAL unit");
    assert_eq!(
        &sps_nal[1..4],
        &record[1..4],
        "profile, flags and level of the SPS"
    );
    assert_eq!(sps["ConstraintSetFlag"], record[2] >> 2);
    assert_eq!(b64(&info["PPS"][0])[0] & 0x1f, 8, "a PPS NAL unit");

    assert_eq!(audio["codec"], "mp4a.40.2", "{codecs}");
    let config = &audio["Config"];
    assert_eq!(
        config["SampleRate"].to_string(),
        pa["sample_rate"].as_str().expect("rate"),
        "{codecs}"
    );
    assert_eq!(config["ChannelConfig"], pa["channels"], "{codecs}");
    assert_eq!(config["ChannelLayout"], 1, "mono is front centre: {codecs}");
    assert_eq!(config["ObjectType"], 2, "AAC-LC: {codecs}");
    assert_eq!(config["SampleRateIndex"], 3, "48 kHz: {codecs}");
    let asc = b64(&audio["ConfigBytes"]);
    assert_eq!(asc[0] >> 3, 2, "the AudioSpecificConfig's object type");
    let _ = s.stop().await;
}
