use super::*;

fn with_timings(timings: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
             [token]\nsigning_key = \"signing.pem\"\n[timings]\n{timings}\n"
    );
    Config::from_toml(&text, Path::new("."))
}

#[test]
fn terminate_after_defaults_and_is_bounded() {
    let config = with_timings("").expect("valid");
    assert_eq!(config.terminate_after, Duration::from_secs(2));
    let config = with_timings("terminate_after = \"500ms\"").expect("valid");
    assert_eq!(config.terminate_after, Duration::from_millis(500));
    for bad in ["0s", "1m", "soon"] {
        let err = with_timings(&format!("terminate_after = \"{bad}\""))
            .expect_err(bad)
            .to_string();
        assert!(err.contains("timings.terminate_after"), "{bad}: {err}");
    }
}

#[test]
fn web_session_ttl_defaults_to_eight_hours_and_is_checked() {
    let config = with_timings("").expect("valid");
    assert_eq!(config.web_session_ttl, Duration::from_secs(8 * 3600));
    let api = |ttl: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
                 [api]\nlisten = \"127.0.0.1:8432\"\nweb_session_ttl = \"{ttl}\"\n\
                 [token]\nsigning_key = \"signing.pem\"\n"
        );
        Config::from_toml(&text, Path::new("."))
    };
    assert_eq!(
        api("30m").expect("valid").web_session_ttl,
        Duration::from_secs(1800)
    );
    for bad in ["0s", "soon"] {
        let err = api(bad).expect_err(bad).to_string();
        assert!(err.contains("api.web_session_ttl"), "{bad}: {err}");
    }
}

#[test]
fn max_message_memory_defaults_to_a_gibibyte_and_holds_at_least_one_largest_message() {
    let proxy = |keys: &str| {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n{keys}\n\
                 [token]\nsigning_key = \"signing.pem\"\n"
        );
        Config::from_toml(&text, Path::new("."))
    };
    assert_eq!(proxy("").expect("valid").max_message_memory, 1 << 30);
    // A largest message over the default raises the default with it.
    let raised = proxy("max_message_size = 1073741824").expect("valid");
    assert_eq!(raised.max_message_memory, 1 << 30);
    let set = proxy("max_message_size = 2048\nmax_message_memory = 4096").expect("valid");
    assert_eq!((set.max_message_size, set.max_message_memory), (2048, 4096));
    let err = proxy("max_message_size = 8192\nmax_message_memory = 4096")
        .expect_err("smaller than one message")
        .to_string();
    assert!(err.contains("proxy.max_message_memory"), "{err}");
}
