//! The `video-server` binary: a thin CLI over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use video_server::config::Config;
use video_server::logging::{self, LogFormat};

/// Video management server: RTSP and file cameras to MSE/HLS, SQL-indexed archive.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (.toml or .json). The Go spelling `-conf PATH` works too.
    #[arg(long, short = 'c', default_value = "conf.toml", global = true)]
    conf: PathBuf,
    /// Log format; overrides `[log] format`.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Index an existing Go archive directory (`<uuid>_<unix-seconds>.mp4` files) into the
    /// database. Files are neither moved nor deleted; files already indexed are skipped.
    ImportArchive {
        /// The directory the Go server recorded into (its subdirectories are searched too).
        dir: PathBuf,
    },
}

/// Flags of the Go original that are accepted and ignored (with a warning): its Go profilers have
/// no counterpart here.
const IGNORED_GO_FLAGS: [&str; 2] = ["cpuprofile", "memprofile"];

/// Rewrites the Go original's command line for clap: `-conf PATH` / `-conf=PATH` become `--conf`,
/// and `-cpuprofile FILE` / `-memprofile FILE` (any of Go's spellings: one or two dashes, value
/// after `=` or as the next argument) are dropped with a warning, returned to be logged once
/// logging is set up. Without this clap would read `-cpuprofile x` as `-c puprofile`.
fn go_compatible_args(args: impl IntoIterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut args = args.into_iter();
    out.extend(args.next());
    while let Some(a) = args.next() {
        let flag = a.strip_prefix("--").or_else(|| a.strip_prefix('-'));
        let (name, inline) = match flag {
            Some(f) => match f.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (f, None),
            },
            None => ("", None),
        };
        if name == "conf" && !a.starts_with("--") {
            out.push(match inline {
                Some(v) => format!("--conf={v}"),
                None => "--conf".to_owned(),
            });
        } else if IGNORED_GO_FLAGS.contains(&name) {
            let value = inline.or_else(|| args.next()).unwrap_or_default();
            warnings.push(format!(
                "-{name} {value}: ignored (a flag of the Go original; this server has no \
                 built-in profiler, use `perf` or `heaptrack` on the process instead)"
            ));
        } else {
            out.push(a);
        }
    }
    (out, warnings)
}

fn main() -> ExitCode {
    let (args, arg_warnings) = go_compatible_args(std::env::args());
    let cli = Cli::parse_from(args);
    if let Some(Command::Openapi) = cli.command {
        // Printing the document is this subcommand's whole job.
        #[allow(clippy::print_stdout)]
        {
            print!("{}", video_server::api::openapi_json());
        }
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let format = cli
        .log_format
        .unwrap_or_else(|| LogFormat::from_config(&config.log.format));
    logging::init(
        format,
        logging::filter(&config.log.level, &config.api.verbose),
    );
    for w in &arg_warnings {
        tracing::warn!("{w}");
    }
    for w in &config.warnings {
        tracing::warn!(file = %cli.conf.display(), "{w}");
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate) => {
                let db = video_server::server::open_db(&config).await?;
                db.close().await;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::ImportArchive { dir }) => {
                return Ok(import_archive(&config, &dir).await);
            }
            _ => serve(config).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `import-archive`: exit 0 even when some files are unplayable (they are listed); 2 when the
/// directory cannot be read (a usage error); 1 when the database fails.
async fn import_archive(config: &Config, dir: &std::path::Path) -> ExitCode {
    use indicatif::{ProgressBar, ProgressStyle};
    use video_server::archive::import::{ImportError, ImportEvent};

    let db = match video_server::server::open_db(config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Drawn on stderr, and only when stderr is a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files, {elapsed} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = video_server::archive::import::import_archive(&db, dir, |event| match event {
        ImportEvent::Found(n) => bar.set_length(n as u64),
        ImportEvent::Imported(_) | ImportEvent::Skipped(_) => bar.inc(1),
        ImportEvent::Unplayable(u) => {
            bar.suspend(|| eprintln!("unplayable: {}: {}", u.path.display(), u.reason));
            bar.inc(1);
        }
    })
    .await;
    bar.finish_and_clear();
    db.close().await;
    match result {
        Ok(report) => {
            // The summary is the command's result, so it goes to stdout.
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "imported {} ({} bytes), skipped {} already indexed, unplayable {}",
                    report.imported,
                    report.bytes,
                    report.skipped,
                    report.unplayable.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ (ImportError::Dir { .. } | ImportError::NotADirectory(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), video_server::server::ServerError> {
    let shutdown = CancellationToken::new();
    let running = video_server::server::start(config, shutdown.clone()).await?;
    tokio::spawn(watch_signals(shutdown));
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    wait_signal().await;
    tracing::info!("shutting down (send the signal again to exit at once)");
    shutdown.cancel();
    wait_signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> (Vec<String>, Vec<String>) {
        go_compatible_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn go_flags_are_rewritten_or_ignored() {
        let (a, w) = args(&["vs", "-conf", "x.toml", "-cpuprofile", "cpu.out"]);
        assert_eq!(a, ["vs", "--conf", "x.toml"]);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("-cpuprofile cpu.out: ignored"), "{w:?}");
        let (a, w) = args(&[
            "vs",
            "--memprofile=m",
            "-conf=y.json",
            "--cpuprofile",
            "c",
            "migrate",
        ]);
        assert_eq!(a, ["vs", "--conf=y.json", "migrate"]);
        assert_eq!(w.len(), 2);
        let (a, w) = args(&["vs", "--conf", "z.toml", "-c", "w.toml"]);
        assert_eq!(a, ["vs", "--conf", "z.toml", "-c", "w.toml"]);
        assert!(w.is_empty());
        // A trailing flag without its value is still dropped.
        let (a, w) = args(&["vs", "-memprofile"]);
        assert_eq!(a, ["vs"]);
        assert_eq!(w.len(), 1);
        // And clap then accepts what is left.
        let (a, _) = args(&["vs", "-cpuprofile", "cpu.out", "-conf", "x.toml", "openapi"]);
        let cli = Cli::try_parse_from(a).expect("clap accepts it");
        assert_eq!(cli.conf, PathBuf::from("x.toml"));
        assert!(matches!(cli.command, Some(Command::Openapi)));
    }
}
