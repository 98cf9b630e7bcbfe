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

/// Rewrites the Go original's single-dash flags (`-conf x`, `-conf=x`) into clap's `--conf`.
fn go_compatible_args() -> Vec<String> {
    std::env::args()
        .map(|a| {
            if a == "-conf" {
                "--conf".to_owned()
            } else if let Some(v) = a.strip_prefix("-conf=") {
                format!("--conf={v}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(go_compatible_args());
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
