use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = lockbox::cli::Cli::parse();
    // The server logs its work; client verbs stay quiet unless asked (RUST_LOG).
    let default_level = match cli.command {
        lockbox::cli::Command::Serve { .. } => "info",
        _ => "warn",
    };
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // tokio-postgres logs statement text at debug level; provisioning statements carry a
    // per-grant role's password verifier, which must not reach a log line.
    if let Ok(quiet) = "tokio_postgres=info".parse() {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(lockbox::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", lockbox::cli::report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
