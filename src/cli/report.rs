//! How the binary prints an error: each layer of the chain once, a layer whose words are
//! already printed left out (a `thiserror` message that embeds its source, an anyhow
//! context that repeats what it wraps).

/// `outer: cause: deeper cause`, without repeats.
pub fn report(error: &anyhow::Error) -> String {
    join(error.chain().map(ToString::to_string))
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
}
