//! The `startup` scenario (issue 13): a server starting on a large archive. The index gets `rows`
//! segment rows of 100 cameras (60 s segments, back to back, time-ordered with the cameras
//! interleaved, as recorders write them) from one `INSERT ... SELECT` over a generated series;
//! the newest `files` of them are filesystem rows whose files exist (empty files, in the layout
//! recorders use, `<root>/<camera>/<day>/<camera>_<secs>.mp4`), the older ones were uploaded to
//! S3 (rows only: reconciliation has nothing to check for them, as in a real archive whose
//! history lives in a bucket). The release server is then started twice on it: each time, how
//! long until the API and the video listener answer (polled from the spawn), the process's RSS
//! then, and when its reconciliation pass over the archive ended, how long the pass took and what
//! it examined (`/metrics`, the pass's log line).

use std::path::Path;
use std::time::{Duration, Instant};

use video_server::db::Db;

use crate::procs::Server;
use crate::{Bench, mib};

const CAMERAS: i64 = 100;
const SEGMENT_US: i64 = 60_000_000;

/// One generated series, `i` in `0..rows`: segment `i / CAMERAS` of camera `i % CAMERAS`. Rows
/// with a segment number of at least `$4` are the local ones (their files are created), the
/// others S3 rows. Days are UTC, as the recorder names its directories.
const SQLITE_GENERATE: &str = "
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1)
    INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, storage_key,
                          bytes, state, upload_state, created_at_us)
    SELECT cam, st, st + $3, $3,
           CASE WHEN k >= $4 THEN 'filesystem' ELSE 's3' END,
           CASE WHEN k >= $4
                THEN $5 || '/' || cam || '/' || strftime('%Y-%m-%d', st / 1000000, 'unixepoch')
                     || '/' || cam || '_' || (st / 1000000) || '.mp4'
                ELSE 'video/' || cam || '/' || cam || '_' || (st / 1000000) || '.mp4' END,
           1000000, 'complete', CASE WHEN k >= $4 THEN 'none' ELSE 'remote' END, st + $3
    FROM (SELECT i / $6 AS k, printf('00000000-0000-4000-8000-%012x', i % $6) AS cam,
                 $2 + (i / $6) * $3 AS st FROM n)";

const SQLITE_INDEXES: &str = "SELECT name, sql FROM sqlite_master \
    WHERE type = 'index' AND tbl_name = 'segments' AND sql IS NOT NULL";

fn camera(i: i64) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// Segments per camera, and the first segment number with a local file.
fn layout(rows: i64, files: i64) -> (i64, i64) {
    let per = rows / CAMERAS;
    (per, per - (files / CAMERAS).min(per))
}

/// The index: migrated by the server's own code, then the rows in one statement (secondary
/// indexes dropped for the load and rebuilt after it).
async fn generate_index(url: &str, root: &str, rows: i64, files: i64, t0: i64) -> Duration {
    let t = Instant::now();
    let db = Db::connect(url).await.expect("open the index");
    db.migrate().await.expect("migrate");
    let Db::Sqlite(p) = &db else {
        panic!("the startup scenario generates SQLite indexes")
    };
    let (per, first_file) = layout(rows, files);
    let mut c = p.acquire().await.expect("connection");
    let indexes: Vec<(String, String)> = sqlx::query_as(SQLITE_INDEXES)
        .fetch_all(&mut *c)
        .await
        .expect("list indexes");
    for (name, _) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .execute(&mut *c)
            .await
            .expect("drop index");
    }
    sqlx::query(SQLITE_GENERATE)
        .bind(per * CAMERAS)
        .bind(t0)
        .bind(SEGMENT_US)
        .bind(first_file)
        .bind(root)
        .bind(CAMERAS)
        .execute(&mut *c)
        .await
        .expect("generate rows");
    println!("    {} rows inserted in {:.1?}", per * CAMERAS, t.elapsed());
    for (_, create) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(create.clone()))
            .execute(&mut *c)
            .await
            .expect("rebuild index");
    }
    sqlx::query("ANALYZE")
        .execute(&mut *c)
        .await
        .expect("analyze");
    drop(c);
    db.close().await;
    println!("    indexed in {:.1?}", t.elapsed());
    t.elapsed()
}

/// The local rows' files, empty, where the rows say they are.
fn create_files(root: &Path, rows: i64, files: i64, t0: i64) -> (u64, Duration) {
    let t = Instant::now();
    let (per, first_file) = layout(rows, files);
    let mut made = 0u64;
    let mut dir = std::path::PathBuf::new();
    for c in 0..CAMERAS {
        let cam = camera(c);
        for k in first_file..per {
            let st = t0 + k * SEGMENT_US;
            let secs = st / 1_000_000;
            let day = chrono::DateTime::from_timestamp(secs, 0)
                .expect("time")
                .format("%Y-%m-%d")
                .to_string();
            let d = root.join(&cam).join(day);
            if d != dir {
                std::fs::create_dir_all(&d).expect("create day directory");
                dir = d;
            }
            std::fs::File::create(dir.join(format!("{cam}_{secs}.mp4"))).expect("create file");
            made += 1;
        }
    }
    (made, t.elapsed())
}

/// What one start measured.
struct Start {
    api: Duration,
    video: Duration,
    rss_ready_kib: u64,
    /// From the spawn to the end of the reconciliation pass.
    reconciled: Duration,
    pass_ms: u64,
    rss_after_kib: u64,
    rss_after_anon_kib: u64,
    skipped: f64,
    files: f64,
    rows: f64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether an HTTP server answers at `url` (any status).
async fn answers(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok()
}

async fn start_once(http: &reqwest::Client, dir: &Path, root: &Path) -> Start {
    let (api_port, video_port) = (free_port(), free_port());
    let conf = format!(
        "[api]\nhost = \"127.0.0.1\"\nport = {api_port}\n\
         [video]\nhost = \"127.0.0.1\"\nport = {video_port}\n\
         [archive]\nrecording = true\nserving = true\ndirectory = \"{}\"\n\
         [database]\nurl = \"sqlite://index.db\"\n",
        root.display()
    );
    let spawned = Instant::now();
    let d = dir.to_owned();
    let server = tokio::task::spawn_blocking(move || Server::start(&d, &conf));
    let api_url = format!("http://127.0.0.1:{api_port}/api/v1/streams");
    let video_url = format!("http://127.0.0.1:{video_port}/");
    let (mut api, mut video) = (None, None);
    while api.is_none() || video.is_none() {
        assert!(
            spawned.elapsed() < Duration::from_secs(120),
            "listeners not answering after 120 s"
        );
        if api.is_none() && answers(http, &api_url).await {
            api = Some(spawned.elapsed());
        }
        if video.is_none() && answers(http, &video_url).await {
            video = Some(spawned.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server = server.await.expect("server start");
    let rss_ready_kib = server.sample().rss_kib;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let m = loop {
        let m = server.metrics(http).await;
        if m.sum("video_server_reconcile_passes_total") >= 1.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no reconciliation pass in an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reconciled = spawned.elapsed();
    let pass_ms = server
        .find_log(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"].as_str() == Some("archive reconciled with the files on disk"))
                .then(|| v["elapsed_ms"].as_u64())
                .flatten()
                .map(|n| n.to_string())
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let after = server.sample();
    let start = Start {
        api: api.unwrap_or_default(),
        video: video.unwrap_or_default(),
        rss_ready_kib,
        reconciled,
        pass_ms,
        rss_after_kib: after.rss_kib,
        rss_after_anon_kib: after.rss_anon_kib,
        skipped: m.sum("video_server_reconcile_directories_skipped_total"),
        files: m.sum("video_server_reconcile_files_examined_total"),
        rows: m.sum("video_server_reconcile_rows_examined_total"),
    };
    server.stop();
    start
}

pub async fn startup(b: &mut Bench, rows: i64, files: i64, out: &mut String) {
    let dir = b.scratch("startup");
    let root = dir.join("mp4");
    std::fs::create_dir_all(&root).expect("archive directory");
    let per = rows / CAMERAS;
    // The newest segment ends an hour ago.
    let t0 = (chrono::Utc::now().timestamp() - 3600) * 1_000_000 - per * SEGMENT_US;
    println!("startup: creating {files} files");
    let r = root.clone();
    let (made, files_took) = tokio::task::spawn_blocking(move || create_files(&r, rows, files, t0))
        .await
        .expect("create files");
    println!("startup: {made} files in {files_took:.1?}; generating {rows} rows");
    let url = format!("sqlite://{}", dir.join("index.db").display());
    let rows_took = generate_index(&url, &root.display().to_string(), rows, files, t0).await;
    // A directory changed within 2 s before a pass is looked at again by the next one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = start_once(&b.http, &dir, &root).await;
    let second = start_once(&b.http, &dir, &root).await;
    out.push_str(&format!(
        "Start-up: a SQLite index of {} segment rows (100 cameras, 60 s segments; generated with \
         one `INSERT ... SELECT` in {:.0} s with its indexes) of which the newest {made} are \
         local files (empty, in the recorder's layout: {:.0} s to create), the rest S3 rows. The \
         release server is started twice on it, no camera configured. \"API\" and \"video\" are \
         the times from the spawn until each listener answered an HTTP request (polled every \
         5 ms); \"reconciled\" when the background reconciliation pass ended (from the spawn; \
         the pass's own duration from its log line); then what the pass examined (`/metrics`).\n\n\
         | start | API s | video s | RSS at ready MiB | reconciled s | pass s | dirs skipped | files examined | rows examined | RSS after MiB | of which anonymous MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        per * CAMERAS,
        rows_took.as_secs_f64(),
        files_took.as_secs_f64()
    ));
    for (what, s) in [("first", &first), ("second", &second)] {
        out.push_str(&format!(
            "| {what} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.1} | {:.1} |\n",
            s.api.as_secs_f64(),
            s.video.as_secs_f64(),
            mib(s.rss_ready_kib),
            s.reconciled.as_secs_f64(),
            s.pass_ms as f64 / 1000.0,
            s.skipped,
            s.files,
            s.rows,
            mib(s.rss_after_kib),
            mib(s.rss_after_anon_kib)
        ));
    }
    out.push('\n');
}
