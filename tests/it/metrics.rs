//! `GET /metrics` on a real server (both engines): every line of the answer checked against the
//! text format, values that move with real traffic (frames from the looping demo file, a real
//! WebSocket viewer, HTTP requests, recorded segments), bounded route labels for random URLs,
//! the upload outbox per stream, and who may read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::body::Body;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::support::{InProcess, call, call_as};
use crate::{both_engines, on_both_engines};

const DEMO: &str = "13bf3e5c-d537-4f10-98e8-9d0afca8b070";
const ADMIN: &str = "metrics-test-bootstrap-admin-token-0123456789";

/// One series: its sample name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed answer. [`parse`] panics on any line that is not valid.
#[derive(Debug)]
pub(crate) struct Exposition {
    samples: Vec<Sample>,
    /// Family name → type.
    types: HashMap<String, String>,
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `k="v",...` (the part between the braces); `None` if malformed.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        if !valid_label_name(name) || out.contains_key(name) {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                '"' => break i,
                '\n' => return None,
                c => value.push(c),
            }
        };
        out.insert(name.to_owned(), value);
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
            if rest.is_empty() {
                return None;
            }
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The format of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    /// OpenMetrics 1.0 text: counters' families are named without `_total`, `# UNIT` lines,
    /// `# EOF` last.
    OpenMetrics,
    /// Prometheus text 0.0.4: a counter's `# TYPE` names its sample (`..._total`), no `# EOF`.
    Text,
}

/// Fails the test at line `n` (0-based) of an answer.
fn bad(n: usize, line: &str, why: &str) -> ! {
    panic!("line {}: {why}: {line:?}", n + 1)
}

/// Checks every line of an answer: `# HELP`/`# TYPE` (and `# UNIT`) before a family's samples,
/// sample names that belong to the current family's type, well-formed and escaped labels,
/// numeric values, no series twice, histograms consistent, `# EOF` last in OpenMetrics.
fn parse(text: &str, fmt: Fmt) -> Exposition {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    let mut family: Option<(String, String)> = None;
    assert!(text.ends_with('\n'), "answer ends with a newline");
    assert_eq!(
        text.ends_with("# EOF\n"),
        fmt == Fmt::OpenMetrics,
        "# EOF ends OpenMetrics only"
    );
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    for (n, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            if n + 1 != lines.len() || fmt != Fmt::OpenMetrics {
                bad(n, line, "# EOF before the end");
            }
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            if !valid_metric_name(name) {
                bad(n, line, "invalid metric name");
            }
            match kind {
                "TYPE" => {
                    let t = rest.unwrap_or("");
                    let known: &[&str] = match fmt {
                        Fmt::OpenMetrics => &[
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "stateset",
                            "unknown",
                        ],
                        Fmt::Text => &["counter", "gauge", "histogram", "summary", "untyped"],
                    };
                    if !known.contains(&t) {
                        bad(n, line, "unknown type");
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        bad(n, line, "family declared twice");
                    }
                    family = Some((name.to_owned(), t.to_owned()));
                }
                "HELP" => {
                    if rest.is_none_or(str::is_empty) {
                        bad(n, line, "empty help");
                    }
                }
                "UNIT" => {
                    if fmt != Fmt::OpenMetrics {
                        bad(n, line, "# UNIT outside OpenMetrics");
                    }
                    let unit = rest.unwrap_or("");
                    if unit.is_empty() || !name.ends_with(&format!("_{unit}")) {
                        bad(n, line, "unit is not the name's suffix");
                    }
                }
                _ => bad(n, line, "unknown comment"),
            }
            continue;
        }
        // A sample: name{labels} value
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| bad(n, line, "no value"));
        let value = parse_value(value).unwrap_or_else(|| bad(n, line, "value is not a number"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| bad(n, line, "unclosed labels"));
                (
                    name,
                    parse_labels(inner).unwrap_or_else(|| bad(n, line, "malformed labels")),
                )
            }
            None => (series, BTreeMap::new()),
        };
        if !valid_metric_name(name) {
            bad(n, line, "invalid sample name");
        }
        let Some((fam, t)) = &family else {
            bad(n, line, "sample before any # TYPE")
        };
        let suffixes: &[&str] = match (t.as_str(), fmt) {
            ("counter", Fmt::OpenMetrics) => &["_total", "_created"],
            ("counter", Fmt::Text) => {
                if !fam.ends_with("_total") {
                    bad(n, line, "a counter's TYPE names its _total sample");
                }
                &[""]
            }
            ("histogram", _) => &["_bucket", "_count", "_sum", "_created"],
            ("info", _) => &["_info"],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| name == format!("{fam}{s}")) {
            bad(n, line, "sample name does not belong to its family");
        }
        if t == "counter" && (value < 0.0 || value.is_nan()) {
            bad(n, line, "negative counter");
        }
        if !seen.insert((name.to_owned(), labels.clone())) {
            bad(n, line, "series twice");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    let e = Exposition { samples, types };
    e.check_histograms();
    e
}

impl Exposition {
    /// Series of `name` whose labels include every pair of `want`.
    fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one series of `name` with these labels (`None` if absent).
    pub(crate) fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, want);
        assert!(found.len() <= 1, "{name} {want:?} is ambiguous: {found:?}");
        found.first().map(|s| s.value)
    }

    /// Every histogram's buckets are cumulative and end at `+Inf` = `_count`.
    fn check_histograms(&self) {
        for (fam, t) in &self.types {
            if t != "histogram" {
                continue;
            }
            let mut by_series: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
            for s in self.find(&format!("{fam}_bucket"), &[]) {
                let mut key = s.labels.clone();
                let le = key.remove("le").expect("bucket has le");
                let le = parse_value(&le).expect("le is a number");
                by_series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in by_series {
                let pairs: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let count = self
                    .value(&format!("{fam}_count"), &pairs)
                    .expect("histogram has _count");
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{fam} {key:?}: buckets not cumulative: {buckets:?}"
                );
                assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
                assert_eq!(buckets.last().map(|b| b.1), Some(count), "{fam} {key:?}");
            }
        }
    }

    /// Every label value in the answer.
    fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.values().map(String::as_str))
    }
}

/// What Prometheus sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
    application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";

/// Scrapes a running server over HTTP as Prometheus does (OpenMetrics).
pub(crate) async fn scrape(http: &reqwest::Client, api: &str) -> Exposition {
    scrape_as(http, api, Some(PROMETHEUS_ACCEPT)).await
}

/// Scrapes with this `Accept` header (none: a plain client such as curl, text format 0.0.4).
async fn scrape_as(http: &reqwest::Client, api: &str, accept: Option<&str>) -> Exposition {
    let mut req = http.get(format!("{api}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let fmt = if accept.is_some_and(|a| a.contains("openmetrics")) {
        assert!(
            ct.starts_with("application/openmetrics-text; version=1.0.0"),
            "{ct}"
        );
        Fmt::OpenMetrics
    } else {
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Fmt::Text
    };
    parse(&resp.text().await.expect("body"), fmt)
}

/// Polls scrapes until `f` holds (or fails after `timeout`).
async fn until(
    http: &reqwest::Client,
    api: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let e = scrape(http, api).await;
        if f(&e) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn recording_demo(dir: &std::path::Path) -> String {
    format!(
        "[hls]\nms_per_segment = 1000\ndirectory = \"{}\"\n\
         [archive]\nrecording = true\nms_per_file = 2000\ndirectory = \"{}\"\n\
         [[local_files]]\nguid = \"{DEMO}\"\nfile = \"assets/demo.mp4\"\n\
         output_types = [\"mse\", \"hls\"]\nloop = true\narchive = {{ recording = true }}\n",
        dir.join("hls").display(),
        dir.join("mp4").display()
    )
}

on_both_engines!(
    async fn scrape_follows_a_recording_stream_viewers_and_requests(index: &Index) {
        let tmp = tempfile::tempdir().expect("tmp");
        let s =
            InProcess::start_with_db(&recording_demo(tmp.path()), Some(index.url.clone())).await;
        let http = reqwest::Client::new();
        let api = s.api.clone();
        let stream = [("stream", DEMO)];

        // The source delivers: frames and bytes grow, the state says so.
        let first = until(&http, &api, "frames arrive", Duration::from_secs(20), |e| {
            e.value("video_server_stream_frames_total", &stream)
                .is_some_and(|v| v > 0.0)
        })
        .await;
        let frames = first
            .value("video_server_stream_frames_total", &stream)
            .expect("frames");
        let bytes = first
            .value("video_server_stream_received_bytes_total", &stream)
            .expect("bytes");
        let e = until(
            &http,
            &api,
            "frames keep coming",
            Duration::from_secs(10),
            |e| {
                e.value("video_server_stream_frames_total", &stream)
                    .is_some_and(|v| v > frames)
            },
        )
        .await;
        assert!(
            e.value("video_server_stream_received_bytes_total", &stream)
                .expect("bytes")
                > bytes
        );
        assert_eq!(
            e.value(
                "video_server_stream_state",
                &[("stream", DEMO), ("state", "receiving")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.find("video_server_stream_state", &stream)
                .iter()
                .map(|s| s.value)
                .sum::<f64>(),
            1.0,
            "exactly one state is current"
        );
        assert!(
            e.value("video_server_stream_source_sessions_total", &stream)
                .is_some_and(|n| n >= 1.0)
        );
        assert_eq!(e.value("video_server_streams_running", &[]), Some(1.0));
        assert_eq!(e.value("video_server_index_up", &[]), Some(1.0));

        // The recorder closes segments and keeps its last fragment fresh.
        let e = until(
            &http,
            &api,
            "a segment is recorded",
            Duration::from_secs(30),
            |e| {
                e.value("video_server_recorder_segments_total", &stream)
                    .is_some_and(|v| v >= 1.0)
            },
        )
        .await;
        let age = e
            .value("video_server_recorder_last_fragment_age_seconds", &stream)
            .expect("fragment age");
        assert!((0.0..10.0).contains(&age), "last fragment {age} s ago");
        let lag = e
            .value("video_server_recorder_lag_seconds", &stream)
            .expect("recorder lag");
        assert!((0.0..10.0).contains(&lag), "recorder lag {lag} s");
        assert!(
            e.value("video_server_recorder_written_bytes_total", &stream)
                .expect("bytes written")
                > 0.0
        );
        assert_eq!(
            e.value("video_server_recorder_index_errors_total", &stream),
            Some(0.0)
        );
        for stage in ["hub", "hls", "recorder"] {
            assert!(
                e.value(
                    "video_server_stream_dropped_bytes_total",
                    &[("stream", DEMO), ("stage", stage)]
                )
                .is_some(),
                "dropped bytes of {stage}"
            );
        }

        // A real WebSocket viewer: 0 → 1 → 0.
        let viewers = [("stream", DEMO), ("transport", "mse")];
        assert_eq!(e.value("video_server_stream_viewers", &viewers), Some(0.0));
        let url = format!("ws://{}/ws/live?stream_id={DEMO}", s.video);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let first_message = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        assert!(
            matches!(first_message, Ok(Some(Ok(Message::Binary(_))))),
            "{first_message:?}"
        );
        until(&http, &api, "one viewer", Duration::from_secs(5), |e| {
            e.value("video_server_stream_viewers", &viewers) == Some(1.0)
        })
        .await;
        let _ = ws.send(Message::Close(None)).await;
        drop(ws);
        until(&http, &api, "no viewer", Duration::from_secs(10), |e| {
            e.value("video_server_stream_viewers", &viewers) == Some(0.0)
        })
        .await;

        // HTTP requests by route template and status; random URLs share one label.
        let healthz = [
            ("listener", "api"),
            ("route", "/healthz"),
            ("status", "200"),
        ];
        let unmatched = [
            ("listener", "api"),
            ("route", "unmatched"),
            ("status", "404"),
        ];
        let before = scrape(&http, &api).await;
        let count = |e: &Exposition, l: &[(&str, &str)]| {
            e.value("video_server_http_requests_total", l)
                .unwrap_or(0.0)
        };
        let r = http
            .get(format!("{api}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
        let junk: Vec<String> = (0..3)
            .map(|_| format!("no-such-{}", Uuid::new_v4()))
            .collect();
        for j in &junk {
            let r = http
                .get(format!("{api}/{j}/x?y={j}"))
                .send()
                .await
                .expect("404");
            assert_eq!(r.status(), 404);
        }
        let r = http
            .request(
                reqwest::Method::from_bytes(b"PROPFIND").expect("method"),
                format!("{api}/healthz"),
            )
            .send()
            .await
            .expect("odd method");
        assert_eq!(r.status(), 405);
        // Answered 200 once the first segment exists, 404 before; counted either way.
        http.get(format!("http://{}/hls/{DEMO}.m3u8", s.video))
            .send()
            .await
            .expect("hls");
        let after = scrape(&http, &api).await;
        assert_eq!(count(&after, &healthz), count(&before, &healthz) + 1.0);
        assert_eq!(count(&after, &unmatched), count(&before, &unmatched) + 3.0);
        let odd = [
            ("method", "other"),
            ("route", "/healthz"),
            ("status", "405"),
        ];
        assert_eq!(count(&after, &odd), 1.0);
        let hls_route = [("listener", "video"), ("route", "/hls/{file}")];
        assert!(
            after
                .find("video_server_http_requests_total", &hls_route)
                .iter()
                .map(|s| s.value)
                .sum::<f64>()
                >= 1.0
        );
        assert!(
            after
                .value("video_server_stream_hls_requests_total", &stream)
                .expect("hls requests")
                >= 1.0
        );
        assert!(
            after
                .value(
                    "video_server_http_request_duration_seconds_count",
                    &[
                        ("listener", "api"),
                        ("method", "GET"),
                        ("route", "/healthz")
                    ]
                )
                .expect("latency")
                >= 1.0
        );
        for v in after.label_values() {
            assert!(
                !junk.iter().any(|j| v.contains(j.as_str())),
                "a requested URL became a label value: {v}"
            );
            assert_ne!(v, "PROPFIND");
        }
        // The request label set is bounded by the route table: the same scrape again adds no
        // series but its own.
        let routes: HashSet<&str> = after
            .find("video_server_http_requests_total", &[])
            .iter()
            .filter_map(|s| s.labels.get("route").map(String::as_str))
            .collect();
        let api_table: HashSet<&str> = video_server::api::policy::API
            .iter()
            .chain(video_server::api::policy::VIDEO)
            .map(|p| p.path)
            .chain(["unmatched"])
            .collect();
        assert!(routes.is_subset(&api_table), "{routes:?}");

        // The process and the pools.
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "video_server_tokio_tasks",
        ] {
            assert!(
                after.value(name, &[]).is_some_and(|v| v > 0.0),
                "{name} is measured"
            );
        }
        for pool in ["api", "recorder", "upkeep"] {
            assert!(
                after
                    .value("video_server_db_pool_connections", &[("pool", pool)])
                    .is_some(),
                "pool {pool}"
            );
        }
        assert!(
            after
                .value("video_server_db_pool_connections", &[("pool", "api")])
                .expect("api pool")
                >= 1.0
        );
        assert_eq!(
            after.value(
                "video_server_storage_root_available",
                &[("root", "default")]
            ),
            Some(1.0)
        );
        // A client that does not ask for OpenMetrics gets the same families as text 0.0.4.
        let text = scrape_as(&http, &api, None).await;
        assert!(
            text.value("video_server_stream_frames_total", &stream)
                .is_some_and(|v| v >= frames)
        );
        // Text 0.0.4 names a counter family by its sample (`..._total`); OpenMetrics does not.
        let families = |e: &Exposition, text_format: bool| -> HashSet<String> {
            e.types
                .iter()
                .map(|(name, t)| {
                    if t == "counter" && text_format {
                        name.trim_end_matches("_total").to_owned()
                    } else {
                        name.clone()
                    }
                })
                .collect()
        };
        assert_eq!(families(&text, true), families(&after, false));
        s.stop().await;
    }
);

/// Parses the metric answer of the API app.
async fn scrape_app(state: &video_server::api::AppState, token: Option<&str>) -> (u16, String) {
    let r = call_as(state, token, "GET", "/metrics", None, Body::empty()).await;
    (
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

both_engines!(
    async fn upload_outbox_per_stream_and_names_escaped(t: &TestDb) {
        let db = &t.db;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now_s = video_server::db::now_us() / 1_000_000;
        // `a`: two closed segments waiting (the older ended ~100 s ago) and one being recorded;
        // `b`: one uploaded, one filesystem-only: not in the outbox.
        crate::db_uploads::segment(db, a, now_s - 102, "local", true).await;
        crate::db_uploads::segment(db, a, now_s - 50, "local", true).await;
        crate::db_uploads::segment(db, a, now_s - 10, "local", false).await;
        crate::db_uploads::segment(db, b, now_s - 60, "remote", true).await;
        crate::db_uploads::segment(db, b, now_s - 40, "none", true).await;
        // A running stream whose name needs escaping.
        let name = "cam \"1\" \\ back\ndoor";
        let config = crate::support::config(&format!(
            "[[local_files]]\nguid = \"{DEMO}\"\nname = {}\nfile = \"assets/demo.mp4\"\n\
             output_types = [\"mse\"]\nloop = true\n",
            toml_string(name)
        ));
        video_server::db::streams::seed(db, &config.streams().expect("streams"))
            .await
            .expect("seed");
        let state = crate::support::state(db, config).await;

        let (status, text) = scrape_app(&state, None).await;
        assert_eq!(status, 200, "{text}");
        let e = parse(&text, Fmt::Text);
        let a_label = a.to_string();
        assert_eq!(
            e.value(
                "video_server_upload_queue_segments",
                &[("stream", &a_label)]
            ),
            Some(2.0),
            "on {}",
            t.engine_name()
        );
        let age = e
            .value(
                "video_server_upload_queue_oldest_age_seconds",
                &[("stream", &a_label)],
            )
            .expect("oldest age");
        // Ended 2 s after its start, ~100 s ago.
        assert!((95.0..130.0).contains(&age), "oldest waited {age} s");
        assert!(
            e.value(
                "video_server_upload_queue_segments",
                &[("stream", &b.to_string())]
            )
            .is_none()
        );
        assert_eq!(
            e.value(
                "video_server_archive_segments",
                &[("upload_state", "local")]
            ),
            Some(3.0)
        );
        assert_eq!(
            e.value(
                "video_server_archive_segments",
                &[("upload_state", "remote")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.find("video_server_stream_info", &[("stream", DEMO)])[0]
                .labels
                .get("name")
                .map(String::as_str),
            Some(name),
            "the name round-trips through the escaping"
        );
        state.manager.shutdown().await;
    }
);

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

both_engines!(
    async fn metrics_need_an_admin_token_unless_public(t: &TestDb) {
        let tmp = tempfile::tempdir().expect("tmp");
        let auth = crate::support::admin::admin_token_section(tmp.path(), ADMIN);
        let state = crate::support::state(&t.db, crate::support::config(&auth)).await;
        let (status, body) = scrape_app(&state, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains("video_server_"), "{body}");
        let viewer = call_as(
            &state,
            Some(ADMIN),
            "POST",
            "/api/v1/tokens",
            Some("application/json"),
            r#"{"streams":["*"],"actions":["live","archive","export","manage"]}"#,
        )
        .await;
        assert_eq!(viewer.status, 201);
        let viewer = viewer.json()["token"].as_str().expect("token").to_owned();
        let (status, _) = scrape_app(&state, Some(&viewer)).await;
        assert_eq!(status, 403, "every stream's actions are not an admin token");
        let (status, body) = scrape_app(&state, Some(ADMIN)).await;
        assert_eq!(status, 200);
        parse(&body, Fmt::Text);
        // The refusals were counted too.
        assert!(
            parse(&scrape_app(&state, Some(ADMIN)).await.1, Fmt::Text)
                .value(
                    "video_server_http_requests_total",
                    &[("route", "/metrics"), ("status", "401")]
                )
                .is_some_and(|v| v >= 1.0)
        );

        let public = crate::support::config(&format!("{auth}metrics_public = true\n"));
        let state = crate::support::state(&t.db, public).await;
        let (status, body) = scrape_app(&state, None).await;
        assert_eq!(status, 200, "{body}");
        parse(&body, Fmt::Text);
        // Without auth, anyone may scrape (like every route).
        let open = crate::support::state(&t.db, crate::support::config("")).await;
        assert_eq!(
            call(&open, "GET", "/metrics", None, Body::empty())
                .await
                .status,
            200
        );
    }
);
