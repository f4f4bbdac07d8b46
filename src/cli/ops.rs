//! `lockbox session list|kill`, `lockbox completion SHELL` and `lockbox man`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand};

use super::{print_columns, Cli};

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Live sessions through the proxy: who, request, database, since, statements, client.
    List,
    /// End a live session (admin or approver): the client gets FATAL 57P01 with the
    /// reason, and the kill is audited. The grant stays; revoke the request to end it.
    Kill {
        /// The session id (`lockbox session list`).
        session: String,
        #[arg(long)]
        reason: String,
    },
}

pub async fn session(cli: &Cli, command: &SessionCommand) -> Result<()> {
    let client = cli.client()?;
    match command {
        SessionCommand::List => {
            let (list, partial) = client.list_sessions_noting().await?;
            if let Some(why) = partial {
                eprintln!("warning: {why}");
            }
            if cli.json {
                super::display::print_json(&list)?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.session_id.clone(),
                        s.engineer.clone(),
                        s.request_id.clone(),
                        s.database.clone(),
                        // Month, day and minute keep the table within 100 columns;
                        // `--json` has the exact time.
                        s.since.format("%m-%d %H:%M").to_string(),
                        s.statements.to_string(),
                        s.client_addr.clone(),
                    ]
                })
                .collect();
            print_columns(
                &[
                    "SESSION",
                    "ENGINEER",
                    "REQUEST",
                    "DATABASE",
                    "SINCE (UTC)",
                    "STMTS",
                    "CLIENT",
                ],
                &rows,
            );
        }
        SessionCommand::Kill { session, reason } => {
            let killed = client.kill_session(session, reason).await?;
            if cli.json {
                super::display::print_json(&killed)?;
            } else {
                outln!("{}", kill_line(&killed));
            }
        }
    }
    Ok(())
}

/// What `session kill` says: the server's words, escaped like any user-supplied text.
fn kill_line(killed: &crate::proxy::SessionInfo) -> String {
    use super::display::clean;
    format!(
        "session {} of {} (request {}) is being ended",
        clean(&killed.session_id),
        clean(&killed.engineer),
        clean(&killed.request_id)
    )
}

/// Prints the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) {
    let mut command = Cli::command();
    // Into a buffer, then out through `out!`: a reader that leaves early (`| head`) must
    // not make the write panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "lockbox", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
}

/// Writes `lockbox.1` (and one page per subcommand, `lockbox-serve.1` …) into `out`, or
/// prints the main page to stdout.
pub fn man(out: Option<&Path>) -> Result<()> {
    let command = Cli::command();
    match out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("writing the man page")?;
            out!("{}", String::from_utf8_lossy(&page));
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            outln!("wrote man pages into {}", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_line_escapes_what_the_server_sent() {
        let killed = crate::proxy::SessionInfo {
            session_id: "s-1".into(),
            request_id: "req-1".into(),
            engineer: "eve\u{1b}]8;;http://evil/\u{1b}\\\u{202e}".into(),
            database: "sales".into(),
            client_addr: "127.0.0.1:5".into(),
            since: chrono::Utc::now(),
            statements: 0,
            break_glass: false,
            node: "node-1".into(),
        };
        assert_eq!(
            kill_line(&killed),
            "session s-1 of eve\\u{1b}]8;;http://evil/\\u{1b}\\\\u{202e} (request req-1) is being ended"
        );
    }
}
