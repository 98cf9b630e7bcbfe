//! Log set-up: `tracing` to stderr, human-readable text by default or one JSON object per line.

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `[log] format` of the config file: `json`, otherwise text.
    pub fn from_config(s: &str) -> LogFormat {
        if s.eq_ignore_ascii_case("json") {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// The filter: `RUST_LOG` when set, else `[log] level`, else the Go `[api] verbose` level mapped
/// (`vv` → debug, `vvv` → trace), else `info`.
pub fn filter(level: &str, go_verbose: &str) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let level = if !level.is_empty() {
        level.to_owned()
    } else {
        match go_verbose.to_ascii_lowercase().as_str() {
            "vvv" => "trace".into(),
            "vv" => "debug".into(),
            _ => "info".into(),
        }
    };
    EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
