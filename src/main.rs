use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lockbox::cli::Cli::parse();
    // The server logs its work; client verbs stay quiet unless asked (RUST_LOG).
    let (default_level, format) = match &cli.command {
        lockbox::cli::Command::Serve { log_format, .. } => ("info", *log_format),
        _ => ("warn", lockbox::logging::LogFormat::Text),
    };
    lockbox::logging::init(format, default_level);
    lockbox::limit_arenas();
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
