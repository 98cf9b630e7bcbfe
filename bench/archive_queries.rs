//! Archive query benchmark: recorded ranges and segment pages answered from the SQL index, on
//! SQLite and Postgres, against the Go original's way of answering (a directory scan plus file
//! name parsing on every request), measured in the same run.
//!
//! ```text
//! cargo bench --bench archive_queries -- --rows 1000000,10000000 --iterations 1000
//! cargo bench --bench archive_queries -- --help
//! ```
//!
//! What it does, per row count N and engine:
//!
//! 1. Generates N synthetic segment rows once (100 streams x N/100 back-to-back 30 s segments, a
//!    10 s gap after every 120th segment, i.e. one recording run per hour) with a single
//!    `INSERT ... SELECT` over a generated series, rebuilds the index afterwards, and derives the
//!    `runs` rows from the segments with one `GROUP BY`. The data is kept in `--data-dir` (SQLite
//!    files) and in schema `bench_archive_<N>` (Postgres) and reused by later runs
//!    (`--regenerate` forces a new load; a changed migration needs one).
//! 2. Checks that the generated runs equal `db::runs::rebuild` for one stream.
//! 3. Sends requests through the real API router in-process (routing, validation, SQL, JSON, to
//!    the last byte): ranges over the last 24 h and the last 30 days, and a 1000-row segment page
//!    from a random start, each for a random stream; reports p50 and p99. Then the same queries
//!    straight to the repository functions the handlers call (`runs::ranges`, `pages::segments`),
//!    which shows the database's share. Every answer is checked (number of ranges or rows).
//! 4. Times `report_stream_days` for one stream (informative: the views are for people).
//!
//! Once per run it creates `--files` empty files named like the Go archive
//! (`<uuid>_<unix-seconds>.mp4`, 100 streams) and times the Go ranges algorithm for one stream:
//! read the whole directory, sort the names, keep `<uuid>*.mp4`, parse the seconds after the last
//! `_`, merge with `ms_per_file`. The table shows how many times faster each query is than that.
//!
//! Not part of `cargo test` (a `harness = false` bench target); see docs/benchmarks.md.

// A benchmark reports on stdout; that is its whole purpose.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use tower::ServiceExt;
use uuid::Uuid;
use video_server::api::AppState;
use video_server::config::Config;
use video_server::db::{Db, pages, runs};
use video_server::manager::StreamManager;

/// Streams in the synthetic archive.
const STREAMS: i64 = 100;
/// Segment length (the default `ms_per_file`).
const SEGMENT_US: i64 = 30_000_000;
/// Segments per recording run; each run is followed by [`GAP_US`] without recording.
const RUN_SEGMENTS: i64 = 120;
const GAP_US: i64 = 10_000_000;
/// Streams start a millisecond apart so no two rows share a start time.
const STAGGER_US: i64 = 1_000;
/// The archive ends here (2026-01-01T00:00:00Z); windows are "the last 24 h / 30 days" before it.
const END_US: i64 = 1_767_225_600_000_000;
const DAY_US: i64 = 86_400_000_000;

struct Args {
    rows: Vec<i64>,
    engines: Vec<String>,
    files: i64,
    iterations: usize,
    scan_iterations: usize,
    data_dir: PathBuf,
    pg_url: String,
    regenerate: bool,
}

fn usage() -> &'static str {
    "archive_queries [--rows 1000000,10000000] [--engines sqlite,postgres] [--files 1000000]\n\
     \x20                [--iterations 500] [--scan-iterations 15] [--data-dir DIR]\n\
     \x20                [--pg postgres://...] [--regenerate]"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        rows: vec![1_000_000],
        engines: vec!["sqlite".into(), "postgres".into()],
        files: 1_000_000,
        iterations: 500,
        scan_iterations: 15,
        data_dir: std::env::temp_dir().join("video-server-bench"),
        pg_url: std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        regenerate: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            // `cargo bench` passes this to every bench binary.
            "--bench" => {}
            "--rows" => {
                a.rows = value()?
                    .split(',')
                    .map(|v| v.trim().parse::<i64>().context("--rows"))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--engines" => a.engines = value()?.split(',').map(str::to_owned).collect(),
            "--files" => a.files = value()?.parse().context("--files")?,
            "--iterations" => a.iterations = value()?.parse().context("--iterations")?,
            "--scan-iterations" => {
                a.scan_iterations = value()?.parse().context("--scan-iterations")?;
            }
            "--data-dir" => a.data_dir = value()?.into(),
            "--pg" => a.pg_url = value()?,
            "--regenerate" => a.regenerate = true,
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    for &n in &a.rows {
        ensure!(
            n >= STREAMS * RUN_SEGMENTS && n % STREAMS == 0,
            "--rows must be a multiple of {STREAMS} and at least {}",
            STREAMS * RUN_SEGMENTS
        );
    }
    ensure!(
        a.iterations > 0 && a.scan_iterations > 0,
        "iterations must be positive"
    );
    Ok(a)
}

fn stream_uuid(s: i64) -> Uuid {
    // Must match the SQL below: 00000000-0000-4000-8000-<s as 12 hex digits>.
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | s as u128)
}

/// First segment start of a stream, so that its last segment ends at [`END_US`].
fn first_start_us(per_stream: i64) -> i64 {
    let runs = (per_stream + RUN_SEGMENTS - 1) / RUN_SEGMENTS;
    let span = per_stream * SEGMENT_US + (runs - 1) * GAP_US;
    END_US - span - (STREAMS - 1) * STAGGER_US
}

// ---------------------------------------------------------------------------------------------
// Data generation

const SQLITE_GENERATE: &str = "
    WITH RECURSIVE ks(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM ks WHERE k + 1 < $1),
                   ss(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM ss WHERE s + 1 < $2)
    INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, storage_key,
                          bytes, state, upload_state, created_at_us)
    SELECT printf('00000000-0000-4000-8000-%012x', s), st, st + $4, $4, 'filesystem',
           printf('00000000-0000-4000-8000-%012x_%d.mp4', s, st / 1000000),
           7500000 + (k * 7919 + s * 104729) % 1000000, 'complete', 'none', st + $4
    FROM (SELECT k, s, $3 + k * $4 + (k / $5) * $6 + s * $7 AS st
          FROM ks CROSS JOIN ss)";

const PG_GENERATE: &str = "
    INSERT INTO segments (stream_id, start_us, end_us, media_duration_us, storage, storage_key,
                          bytes, state, upload_state, created_at_us)
    SELECT CAST('00000000-0000-4000-8000-' || lpad(to_hex(s), 12, '0') AS UUID), st, st + $4, $4,
           'filesystem',
           '00000000-0000-4000-8000-' || lpad(to_hex(s), 12, '0') || '_' || (st / 1000000) || '.mp4',
           7500000 + (k * 7919 + s * 104729) % 1000000, 'complete', 'none', st + $4
    FROM (SELECT k, s, $3 + k * $4 + (k / $5) * $6 + s * $7 AS st
          FROM generate_series(CAST(0 AS BIGINT), $1 - 1) AS k
          CROSS JOIN generate_series(CAST(0 AS BIGINT), $2 - 1) AS s) AS g";

/// Runs follow from the layout: segment k of a stream is in run k / RUN_SEGMENTS, and a run's
/// offsets from the first start stay below (run + 1) * (RUN_SEGMENTS * SEGMENT_US + GAP_US).
const DERIVE_RUNS: &str = "
    INSERT INTO runs (stream_id, start_us, end_us, segment_count, bytes)
    SELECT stream_id, MIN(start_us), MAX(end_us), COUNT(*), CAST(SUM(bytes) AS BIGINT)
    FROM segments GROUP BY stream_id, (start_us - $1) / $2";

/// Name and definition of the secondary indexes on `segments` (not the primary key).
const SQLITE_INDEXES: &str = "SELECT name, sql FROM sqlite_master \
    WHERE type = 'index' AND tbl_name = 'segments' AND sql IS NOT NULL";
const PG_INDEXES: &str = "SELECT indexname::text, indexdef FROM pg_indexes \
    WHERE schemaname = current_schema() AND tablename = 'segments' \
    AND indexname <> 'segments_pkey'";

const META: &str = "CREATE TABLE IF NOT EXISTS bench_meta (rows_generated BIGINT NOT NULL)";

/// Runs the same statements on either pool.
macro_rules! on_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

async fn exec(db: &Db, sql: &str) -> anyhow::Result<()> {
    let sql = sql.to_owned();
    on_pool!(db, p => sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await.map(|_| ()))?;
    Ok(())
}

async fn generated_rows(db: &Db) -> anyhow::Result<Option<i64>> {
    exec(db, META).await?;
    let n: Option<i64> = on_pool!(db, p => sqlx::query_scalar("SELECT MAX(rows_generated) FROM bench_meta")
        .fetch_one(p)
        .await?);
    Ok(n)
}

/// Fills an empty, migrated database with `rows` segments and their runs; returns the time taken.
///
/// Everything runs on one connection: schema changes (the dropped and rebuilt index) are then
/// visible to every following statement whatever the pool does.
async fn generate(db: &Db, rows: i64) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let per = rows / STREAMS;
    let t0 = first_start_us(per);
    let run_span = RUN_SEGMENTS * SEGMENT_US + GAP_US;
    let (generate, list_indexes) = match db {
        Db::Sqlite(_) => (SQLITE_GENERATE, SQLITE_INDEXES),
        Db::Postgres(_) => (PG_GENERATE, PG_INDEXES),
    };
    on_pool!(db, p => {
        let mut c = p.acquire().await?;
        for sql in ["DELETE FROM runs", "DELETE FROM segments", "DELETE FROM bench_meta"] {
            sqlx::query(sql).execute(&mut *c).await?;
        }
        if matches!(db, Db::Postgres(_)) {
            // Index builds over 10^7 rows sort in memory instead of in temp files.
            sqlx::query("SET maintenance_work_mem = '512MB'")
                .execute(&mut *c)
                .await?;
        }
        // Bulk load: drop the secondary indexes of `segments` (whatever the migrations made),
        // insert in time order (streams interleaved, as a recorder writes them), rebuild them.
        let indexes: Vec<(String, String)> = sqlx::query_as(list_indexes)
            .fetch_all(&mut *c)
            .await?;
        for (name, _) in &indexes {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
                .execute(&mut *c)
                .await?;
        }
        sqlx::query(generate)
            .bind(per)
            .bind(STREAMS)
            .bind(t0)
            .bind(SEGMENT_US)
            .bind(RUN_SEGMENTS)
            .bind(GAP_US)
            .bind(STAGGER_US)
            .execute(&mut *c)
            .await?;
        println!("    inserted {rows} segments in {:.1?}", t.elapsed());
        for (_, create) in &indexes {
            sqlx::query(sqlx::AssertSqlSafe(create.clone()))
                .execute(&mut *c)
                .await?;
        }
        println!("    indexed in {:.1?}", t.elapsed());
        sqlx::query(DERIVE_RUNS)
            .bind(t0)
            .bind(run_span)
            .execute(&mut *c)
            .await?;
        if matches!(db, Db::Postgres(_)) {
            sqlx::query("VACUUM ANALYZE segments").execute(&mut *c).await?;
            sqlx::query("VACUUM ANALYZE runs").execute(&mut *c).await?;
        }
        sqlx::query("INSERT INTO bench_meta (rows_generated) VALUES ($1)")
            .bind(rows)
            .execute(&mut *c)
            .await?;
    });
    Ok(t.elapsed())
}

/// The generated runs must be what `runs::rebuild` derives from the segments.
async fn check_runs(db: &Db, rows: i64) -> anyhow::Result<()> {
    let id = stream_uuid(STREAMS / 2);
    let generated = runs::all(db, id).await?;
    runs::rebuild(db, id).await?;
    let rebuilt = runs::all(db, id).await?;
    ensure!(
        generated == rebuilt,
        "generated runs differ from rebuilt runs"
    );
    let per = rows / STREAMS;
    ensure!(
        rebuilt.len() as i64 == (per + RUN_SEGMENTS - 1) / RUN_SEGMENTS
            && rebuilt.iter().map(|r| r.segment_count).sum::<i64>() == per,
        "unexpected run layout"
    );
    Ok(())
}

async fn open_sqlite(dir: &Path, rows: i64) -> anyhow::Result<Db> {
    std::fs::create_dir_all(dir)?;
    let url = format!(
        "sqlite://{}",
        dir.join(format!("archive-{rows}.db")).display()
    );
    let db = Db::connect(&url).await?;
    db.migrate().await?;
    Ok(db)
}

async fn open_postgres(url: &str, rows: i64) -> anyhow::Result<Db> {
    let schema = format!("bench_archive_{rows}");
    let admin = Db::connect(url).await?;
    exec(&admin, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
    admin.close().await;
    let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema.as_str())]);
    let db = Db::connect_postgres(opts).await?;
    db.migrate().await?;
    Ok(db)
}

// ---------------------------------------------------------------------------------------------
// Measurement

/// p50 and p99 of a set of samples.
#[derive(Clone, Copy)]
struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// One request through the API router (built once, as the server does), read to the last byte.
async fn request(app: &Router, uri: &str) -> anyhow::Result<axum::body::Bytes> {
    let req = Request::builder().uri(uri).body(Body::empty())?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status == StatusCode::OK,
        "{uri}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

#[derive(Clone, Copy)]
enum Case {
    Ranges24h,
    Ranges30d,
    Page1000,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Ranges24h => "ranges, last 24 h",
            Case::Ranges30d => "ranges, last 30 days",
            Case::Page1000 => "segment page, 1000 rows",
        }
    }
}

/// How a query is sent: through the API router (what clients see), or straight to the repository
/// function the handler calls (the SQL share of it).
#[derive(Clone, Copy)]
enum Via<'a> {
    Api(&'a Router),
    Db(&'a Db),
}

/// Times `iterations` queries of one kind (after a warm-up), each for a random stream, and checks
/// every answer.
async fn measure(via: Via<'_>, case: Case, rows: i64, iterations: usize) -> anyhow::Result<Stats> {
    let per = rows / STREAMS;
    let t0 = first_start_us(per);
    let full = END_US - t0 >= 30 * DAY_US;
    let mut rng = StdRng::seed_from_u64(7);
    let warmup = (iterations / 10).max(10);
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let id = stream_uuid(rng.random_range(0..STREAMS));
        let from_us = match case {
            Case::Ranges24h => END_US - DAY_US,
            Case::Ranges30d => END_US - 30 * DAY_US,
            // Any start that leaves at least 1000 segments before the end of the archive, on a
            // whole second (the API takes Unix seconds).
            Case::Page1000 => {
                let latest = END_US - 1_100 * SEGMENT_US;
                rng.random_range(t0..latest.max(t0 + 1)) / 1_000_000 * 1_000_000
            }
        };
        let t = Instant::now();
        // The time to the last byte, and how many ranges or segments came back (counted after:
        // parsing the answer is the client's work).
        let (elapsed, count) = match via {
            Via::Api(app) => {
                let (from, to) = (from_us / 1_000_000, END_US / 1_000_000);
                let uri = match case {
                    Case::Page1000 => {
                        format!("/api/v1/streams/{id}/segments?start={from}&end={to}&limit=1000")
                    }
                    _ => format!("/api/v1/streams/{id}/ranges?start={from}&end={to}"),
                };
                let bytes = request(app, &uri).await?;
                let elapsed = t.elapsed();
                let body: serde_json::Value = serde_json::from_slice(&bytes)?;
                let key = match case {
                    Case::Page1000 => "items",
                    _ => "ranges",
                };
                (elapsed, body[key].as_array().map_or(0, Vec::len))
            }
            Via::Db(db) => {
                let n = match case {
                    Case::Page1000 => pages::segments(db, id, from_us, END_US, None, 1001)
                        .await?
                        .len()
                        .min(1000),
                    _ => runs::ranges(db, id, from_us, END_US, 2_000_000)
                        .await?
                        .len(),
                };
                (t.elapsed(), n)
            }
        };
        // An hourly run every 3610 s: a full day overlaps 24 or 25 of them, 30 days 718 or 719;
        // a shorter archive overlaps fewer, but never none.
        let ok = match case {
            Case::Ranges24h if full => (24..=25).contains(&count),
            Case::Ranges30d if full => (718..=719).contains(&count),
            Case::Ranges24h | Case::Ranges30d => (1..=719).contains(&count),
            Case::Page1000 => count == 1000,
        };
        ensure!(ok, "{} for {id}: unexpected answer ({count})", case.label());
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(stats(samples))
}

// ---------------------------------------------------------------------------------------------
// The Go original's directory scan

/// Creates `files` empty Go-style segment files (100 streams) once; a marker records completion.
fn go_archive(dir: &Path, files: i64) -> anyhow::Result<PathBuf> {
    let mp4 = dir.join(format!("go-mp4-{files}"));
    let marker = dir.join(format!("go-mp4-{files}.complete"));
    if marker.exists() {
        return Ok(mp4);
    }
    let t = Instant::now();
    std::fs::create_dir_all(&mp4)?;
    let per = files / STREAMS;
    let t0 = first_start_us(per);
    for s in 0..STREAMS {
        let id = stream_uuid(s);
        for k in 0..per {
            let start_us = t0 + k * SEGMENT_US + (k / RUN_SEGMENTS) * GAP_US + s * STAGGER_US;
            let name = format!("{id}_{}.mp4", start_us / 1_000_000);
            std::fs::File::create(mp4.join(name))?;
        }
    }
    std::fs::write(&marker, b"")?;
    println!("created {files} Go-style files in {:.1?}", t.elapsed());
    Ok(mp4)
}

/// The Go ranges algorithm (go-original.md §5.4, §5.5): list the whole directory (`os.ReadDir`
/// reads every entry and sorts by name), keep regular `<uuid>*.mp4` files, parse the Unix seconds
/// after the last `_`, keep epoch..now+24 h, sort, merge while the hole is at most 2 x ms_per_file,
/// each segment assumed to last ms_per_file.
fn go_ranges(dir: &Path, id: &str, ms_per_file: i64) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut entries: Vec<(String, bool)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let is_file = e.file_type()?.is_file();
        entries.push((e.file_name().to_string_lossy().into_owned(), is_file));
    }
    entries.sort_unstable();
    let limit = chrono::Utc::now().timestamp() + 86_400;
    let mut starts: Vec<i64> = entries
        .iter()
        .filter(|(name, is_file)| *is_file && name.starts_with(id) && name.ends_with(".mp4"))
        .filter_map(|(name, _)| {
            let stem = name.strip_suffix(".mp4")?;
            stem[stem.rfind('_')? + 1..].parse::<i64>().ok()
        })
        .filter(|s| (0..=limit).contains(s))
        .collect();
    starts.sort_unstable();
    let len_s = ms_per_file / 1_000;
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for s in starts {
        match ranges.last_mut() {
            Some(last) if s - last.1 <= 2 * len_s => last.1 = s + len_s,
            _ => ranges.push((s, s + len_s)),
        }
    }
    Ok(ranges)
}

fn measure_go(dir: &Path, iterations: usize) -> anyhow::Result<Stats> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut samples = Vec::with_capacity(iterations);
    // One warm-up scan fills the dentry cache, as on a server that scans on every request.
    go_ranges(dir, &stream_uuid(0).to_string(), 30_000)?;
    for _ in 0..iterations {
        let id = stream_uuid(rng.random_range(0..STREAMS)).to_string();
        let t = Instant::now();
        let ranges = go_ranges(dir, &id, 30_000)?;
        samples.push(t.elapsed());
        ensure!(!ranges.is_empty(), "the Go scan found nothing");
    }
    Ok(stats(samples))
}

/// One stream's `report_stream_days` rows (a full scan of that stream's segments): informative,
/// the views are for people at a prompt, not for request paths.
async fn measure_report(db: &Db, iterations: usize) -> anyhow::Result<Stats> {
    const SQL: &str = "SELECT COUNT(*) FROM report_stream_days WHERE stream_id = $1";
    let mut samples = Vec::with_capacity(iterations);
    for s in 0..iterations as i64 {
        let id = stream_uuid(s % STREAMS);
        let t = Instant::now();
        let days: i64 = match db {
            Db::Sqlite(p) => {
                sqlx::query_scalar(SQL)
                    .bind(id.to_string())
                    .fetch_one(p)
                    .await?
            }
            Db::Postgres(p) => sqlx::query_scalar(SQL).bind(id).fetch_one(p).await?,
        };
        samples.push(t.elapsed());
        ensure!(days > 0, "no report rows");
    }
    Ok(stats(samples))
}

/// The 1/5/15-minute load averages: the machine may be shared, which widens p99.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let config = Arc::new(Config::from_toml_str("bench.toml", "")?);
    println!(
        "archive_queries: rows {:?}, engines {:?}, {} Go files, {} iterations",
        args.rows, args.engines, args.files, args.iterations
    );

    println!("load average at start: {}", load_average());
    let go_dir = go_archive(&args.data_dir, args.files)?;
    let go = measure_go(&go_dir, args.scan_iterations)?;
    println!(
        "Go-style directory scan ({} files), one stream's ranges: p50 {} ms, p99 {} ms",
        args.files,
        ms(go.p50),
        ms(go.p99)
    );

    let mut table: Vec<(String, i64, Case, Stats, Stats)> = Vec::new();
    for &rows in &args.rows {
        for engine in &args.engines {
            println!("{engine}, {rows} rows:");
            let open = || async {
                match engine.as_str() {
                    "sqlite" => open_sqlite(&args.data_dir, rows).await,
                    "postgres" => open_postgres(&args.pg_url, rows).await,
                    other => bail!("unknown engine {other}"),
                }
            };
            let mut db = open().await?;
            if args.regenerate || generated_rows(&db).await? != Some(rows) {
                // Generate on fresh connections: a SQLite connection that answered the check
                // may still hold a read snapshot from before the schema changes below.
                db.close().await;
                db = open().await?;
                let took = generate(&db, rows).await?;
                println!("    generated {rows} rows and their runs in {took:.1?}");
            } else {
                println!("    reusing the rows generated earlier");
            }
            check_runs(&db, rows).await?;
            let app = video_server::api::app(AppState {
                archive: std::sync::Arc::new(video_server::archive::Archive::new(&config)),
                uploads: Default::default(),
                config: config.clone(),
                db: db.clone(),
                manager: StreamManager::new(config.clone(), db.clone()),
                roots: video_server::archive::markers::MarkedRoots::open(
                    db.clone(),
                    config.clone(),
                )
                .await?,
                reconcile: Default::default(),
                auth: video_server::auth::Auth::new(&config.auth, db.clone()).await?,
                listeners: Default::default(),
                limits: std::sync::Arc::new(video_server::limits::Limits::new(&config)),
                metrics: Default::default(),
                webrtc: Default::default(),
            });
            for case in [Case::Ranges24h, Case::Ranges30d, Case::Page1000] {
                let api = measure(Via::Api(&app), case, rows, args.iterations).await?;
                let sql = measure(Via::Db(&db), case, rows, args.iterations).await?;
                println!(
                    "    {:<24} API p50 {:>6} ms  p99 {:>6} ms;  SQL p50 {:>6} ms  p99 {:>6} ms",
                    case.label(),
                    ms(api.p50),
                    ms(api.p99),
                    ms(sql.p50),
                    ms(sql.p99)
                );
                table.push((engine.clone(), rows, case, api, sql));
            }
            let r = measure_report(&db, args.scan_iterations).await?;
            println!(
                "    {:<24} p50 {:>7} ms  p99 {:>7} ms  (informative)",
                "report_stream_days, 1 stream",
                ms(r.p50),
                ms(r.p99)
            );
            db.close().await;
        }
    }

    println!();
    println!("load average at end: {}", load_average());
    println!(
        "| query | engine | rows | API p50 ms | API p99 ms | SQL p50 ms | SQL p99 ms | Go scan p50 / API p50 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| Go-style directory scan, one stream's ranges | filesystem | {} files | {} | {} | | | 1 |",
        args.files,
        ms(go.p50),
        ms(go.p99)
    );
    for (engine, rows, case, api, sql) in &table {
        println!(
            "| {} | {engine} | {rows} | {} | {} | {} | {} | {:.0}x |",
            case.label(),
            ms(api.p50),
            ms(api.p99),
            ms(sql.p50),
            ms(sql.p99),
            go.p50.as_secs_f64() / api.p50.as_secs_f64()
        );
    }
    Ok(())
}
