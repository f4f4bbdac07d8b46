use super::*;

#[test]
fn histogram_buckets_are_cumulative() {
    let h = Histogram::new(&BATCH);
    for v in [1, 3, 3, 5000] {
        h.observe(v);
    }
    let mut out = String::new();
    h.render(&mut out, "h", 1.0);
    assert!(out.contains("h_bucket{le=\"1\"} 1\n"), "{out}");
    assert!(out.contains("h_bucket{le=\"4\"} 3\n"), "{out}");
    assert!(out.contains("h_bucket{le=\"4096\"} 3\n"), "{out}");
    assert!(out.contains("h_bucket{le=\"+Inf\"} 4\n"), "{out}");
    assert!(out.contains("h_sum 5007\n"), "{out}");
    assert!(out.contains("h_count 4\n"), "{out}");
    let latency = Histogram::new(&LATENCY_US);
    latency.observe(150);
    let mut out = String::new();
    latency.render(&mut out, "l", 1e6);
    assert!(out.contains("l_bucket{le=\"0.0001\"} 0\n"), "{out}");
    assert!(out.contains("l_bucket{le=\"0.00025\"} 1\n"), "{out}");
    assert!(out.contains("l_sum 0.00015\n"), "{out}");
}

#[test]
fn fsync_buckets_are_25_microseconds_wide_up_to_200() {
    let fsync = Histogram::new(&FSYNC_US);
    for v in [110, 130, 140, 160, 190, 260] {
        fsync.observe(v);
    }
    let mut out = String::new();
    fsync.render(&mut out, "f", 1e6);
    for (le, below) in [
        ("0.0001", 0),
        ("0.000125", 1),
        ("0.00015", 3),
        ("0.000175", 4),
        ("0.0002", 5),
        ("0.00025", 5),
        ("0.0003", 6),
        ("1", 6),
        ("+Inf", 6),
    ] {
        assert!(
            out.contains(&format!("f_bucket{{le=\"{le}\"}} {below}\n")),
            "{le}: {out}"
        );
    }
}

#[test]
fn unknown_rules_count_as_other() {
    assert_eq!(RULES[rule_index("read_only")], "read_only");
    for rule in ["escaping_function", "own_login", "ownership"] {
        assert_eq!(RULES[rule_index(rule)], rule);
    }
    assert_eq!(RULES[rule_index("a rule added later")], "other");
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn api_calls_count_by_class() {
    let m = Metrics::default();
    m.api_call(200);
    m.api_call(204);
    m.api_call(403);
    let text = m.render(&Scrape::default());
    assert!(text.contains("lockbox_api_requests_total{class=\"2xx\"} 2\n"));
    assert!(text.contains("lockbox_api_requests_total{class=\"4xx\"} 1\n"));
}
