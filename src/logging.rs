//! The binary's log output (only the binary installs a subscriber): `text` for people,
//! `json` (one JSON object per line) for log shippers. Colour codes only go to a terminal,
//! never into a file or a pipe.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `lockbox serve --log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr at `default_level` unless `RUST_LOG`
/// says otherwise.
pub fn init(format: LogFormat, default_level: &str) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // tokio-postgres logs statement text at debug level; provisioning statements carry a
    // per-grant role's password verifier, which must not reach a log line.
    if let Ok(quiet) = "tokio_postgres=info".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
