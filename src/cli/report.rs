//! How the binary prints an error: each layer of the chain once, a layer whose words are
//! already printed left out (a `thiserror` message that embeds its source, an anyhow
//! context that repeats what it wraps).
//!
//! An error's words are not all ours: an API error carries the server's message (which
//! may echo a value a requester typed, or come from a hostile server), an I/O error a file
//! name. They reach a terminal, so they are escaped like any user-supplied text.

/// `outer: cause: deeper cause`, without repeats, control and invisible characters
/// escaped (line breaks kept: see `display::clean_keeping_lines`).
pub fn report(error: &anyhow::Error) -> String {
    super::display::clean_keeping_lines(&join(error.chain().map(ToString::to_string))).into_owned()
}

fn join(layers: impl Iterator<Item = String>) -> String {
    let mut printed = String::new();
    for layer in layers {
        let layer = layer.trim();
        if layer.is_empty() || printed.to_lowercase().contains(&layer.to_lowercase()) {
            continue;
        }
        if !printed.is_empty() {
            printed.push_str(": ");
        }
        printed.push_str(layer);
    }
    printed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(layers: &[&str], expected: &str) {
        assert_eq!(join(layers.iter().map(|l| l.to_string())), expected);
    }

    #[test]
    fn each_cause_once() {
        check(&["a"], "a");
        check(
            &["reading x", "Permission denied"],
            "reading x: Permission denied",
        );
        // A message that embeds its source already said it.
        check(
            &[
                "cannot read config file x: No such file or directory (os error 2)",
                "No such file or directory (os error 2)",
            ],
            "cannot read config file x: No such file or directory (os error 2)",
        );
        check(
            &["outer", "Connection refused", "connection refused"],
            "outer: Connection refused",
        );
        check(&["outer", "", "inner"], "outer: inner");
    }

    #[test]
    fn an_anyhow_chain_prints_without_repeats() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let error = anyhow::Error::new(io).context(format!("cannot open x: {text}"));
        assert_eq!(report(&error), format!("cannot open x: {text}"));
    }

    #[test]
    fn escapes_in_a_cause_are_shown_not_obeyed() {
        let error =
            anyhow::anyhow!("unknown database `a\u{1b}[2K\rb\u{200b}`").context("request refused");
        assert_eq!(
            report(&error),
            "request refused: unknown database `a\\u{1b}[2K\\rb\\u{200b}`"
        );
    }
}
