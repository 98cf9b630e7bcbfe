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
            _ => serve(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
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
