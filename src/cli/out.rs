//! Standard output of the CLI. `println!` panics when the reader of a pipe has gone
//! (`lockbox audit list | head`), so every verb prints through `outln!`/`out!`, which treat a
//! closed pipe as "nobody reads any more": later output is dropped and the verb finishes with
//! its own result. A closed pipe is the reader's choice, not a failure, so it alone never
//! turns the exit status non-zero (under `set -o pipefail` a `| head` must not fail a
//! script); `audit verify | head -1` still exits non-zero when the chain is broken, since the
//! verb itself runs to its end. Any other write error (a full disk behind `>`) is reported
//! once and fails the command.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// `println!` for the CLI's standard output.
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the CLI's standard output.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*))
    };
}

// For modules outside `cli` that print for a verb (`init`, `keygen`).
#[allow(unused_imports)]
pub(crate) use {out, outln};

/// Set once a write found the reader gone; later output is dropped.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// The first write error that was not a closed pipe, kept for the exit status.
static FAILED: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes to standard output, flushing so a reader sees each line as it is printed.
pub(crate) fn write(args: fmt::Arguments<'_>) {
    write_to(&mut io::stdout().lock(), args);
}

fn write_to(w: &mut impl Write, args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = w.write_fmt(args).and_then(|()| w.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            if let Ok(mut failed) = FAILED.lock() {
                failed.get_or_insert(e);
            }
        }
    }
}

/// Whether the reader of standard output has gone (or writing to it failed).
pub(crate) fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Ends the process once standard output is closed: for a verb that never ends by itself
/// (`audit list --follow`), whose stream cannot be stopped from inside its callback.
pub(crate) fn exit_if_closed() {
    if closed() {
        let status = match finish(Ok(())) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {}", super::report(&e));
                1
            }
        };
        std::process::exit(status);
    }
}

/// A verb's result, failed if its output could not be written for a reason other than the
/// reader leaving.
pub(crate) fn finish(result: anyhow::Result<()>) -> anyhow::Result<()> {
    let failed = FAILED.lock().ok().and_then(|mut f| f.take());
    match (result, failed) {
        (Ok(()), Some(e)) => Err(anyhow::Error::new(e).context("writing to standard output")),
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Gone;
    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_stops_output_without_failing() {
        write_to(&mut Gone, format_args!("first\n"));
        assert!(closed());
        // Dropped quietly: no panic, no error kept for the exit status.
        write_to(&mut Gone, format_args!("second\n"));
        assert!(finish(Ok(())).is_ok());
    }
}
