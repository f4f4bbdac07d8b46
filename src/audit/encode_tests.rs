use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::audit::{AuditLog, AuditOptions};
use crate::config::Durability;

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    /// Text mixing what JSON escaping treats specially: quotes, backslashes, every control
    /// character, DEL, U+2028/2029, BOM, bidi overrides, CJK, astral emoji, plain ASCII.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "SELECT ",
            "'",
            "\"",
            "\\",
            "\\\\\"",
            "/",
            "\u{7f}",
            "\u{80}",
            "\u{2028}",
            "\u{2029}",
            "\u{feff}",
            "\u{202e}",
            "é",
            "日本",
            "😀",
            "\u{10ffff}",
            "$1",
            " ",
            "--",
            "\r\n",
            "</script>",
            "\u{0}",
        ];
        let mut s = String::new();
        for _ in 0..self.below(24) {
            if self.chance(3) {
                // Any control character, escaped short or as \u00xx.
                s.push(char::from(self.below(0x20) as u8));
            } else if self.chance(4) {
                s.push(char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'));
            } else {
                s.push_str(PIECES[self.below(PIECES.len() as u64) as usize]);
            }
        }
        s
    }

    fn opt_text(&mut self) -> Option<String> {
        (!self.chance(3)).then(|| self.text())
    }

    fn u64(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(1000),
            _ => self.next(),
        }
    }

    fn float(&mut self) -> f64 {
        const ODD: &[f64] = &[
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            1e21,
            1e-7,
            0.1,
            123456.789,
        ];
        match self.below(3) {
            0 => ODD[self.below(ODD.len() as u64) as usize],
            1 => f64::from_bits(self.next()),
            _ => self.below(1_000_000) as f64 / 1000.0,
        }
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 2 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.chance(2)),
            2 => json!(self.u64()),
            3 => serde_json::Number::from_f64(self.float()).map_or(Value::Null, Value::Number),
            4 => Value::String(self.text()),
            5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..self.below(4) {
                    map.insert(self.text(), self.value(depth + 1));
                }
                Value::Object(map)
            }
        }
    }

    fn session(&mut self) -> Arc<SessionFields> {
        Arc::new(SessionFields::new(
            self.text(),
            self.text(),
            self.text(),
            self.text(),
            self.text(),
            self.text(),
            self.chance(2),
        ))
    }

    fn statement(&mut self, session: &Arc<SessionFields>) -> AuditEvent {
        const PROTOCOLS: [Protocol; 3] =
            [Protocol::Simple, Protocol::Extended, Protocol::FunctionCall];
        const KINDS: [StatementKind; 8] = [
            StatementKind::Select,
            StatementKind::Insert,
            StatementKind::Update,
            StatementKind::Delete,
            StatementKind::Ddl,
            StatementKind::Other,
            StatementKind::Unknown,
            StatementKind::Empty,
        ];
        const REDACTED: [&str; 2] = ["literals", "parameters"];
        AuditEvent::Statement(StatementRecord {
            session: session.clone(),
            protocol: PROTOCOLS[self.below(3) as usize],
            statement: self.text().into(),
            params: (!self.chance(3)).then(|| (0..self.below(5)).map(|_| self.value(0)).collect()),
            kind: KINDS[self.below(8) as usize],
            redacted: REDACTED[..self.below(3) as usize].to_vec(),
            mentions: None,
        })
    }

    fn outcome(&mut self, session: &Arc<SessionFields>) -> AuditEvent {
        const STATUSES: [OutcomeStatus; 5] = [
            OutcomeStatus::Ok,
            OutcomeStatus::Error,
            OutcomeStatus::NotExecuted,
            OutcomeStatus::Interrupted,
            OutcomeStatus::Refused,
        ];
        AuditEvent::Outcome(OutcomeRecord {
            statement_seq: self.u64(),
            session: session.clone(),
            status: STATUSES[self.below(5) as usize],
            command_tag: self.opt_text(),
            rows: (!self.chance(2)).then(|| self.u64()),
            sqlstate: self.opt_text(),
            message: self.opt_text(),
            rule: self.opt_text(),
            bytes: (!self.chance(2)).then(|| self.u64()),
            duration_ms: self.float(),
        })
    }
}

fn hand(event: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::new();
    write_event(&mut out, event);
    out
}

#[test]
fn hand_encoded_records_are_byte_identical_to_serde_on_generated_records() {
    for seed in 1..=400u64 {
        let mut gen = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let session = gen.session();
        for _ in 0..10 {
            for event in [gen.statement(&session), gen.outcome(&session)] {
                let expected = serde_json::to_vec(&event).expect("serde");
                assert_eq!(
                    String::from_utf8_lossy(&hand(&event)),
                    String::from_utf8_lossy(&expected),
                    "seed {seed}"
                );
            }
        }
    }
}

#[test]
fn every_control_character_is_escaped_as_serde_does() {
    for b in 0u8..=0x7f {
        let text = char::from(b).to_string();
        let mut out = Vec::new();
        string(&mut out, &text);
        assert_eq!(
            out,
            serde_json::to_vec(&text).expect("serde"),
            "byte {b:#04x}"
        );
    }
}

#[test]
fn a_session_is_serialized_once_and_a_clone_does_not_keep_its_bytes() {
    let session = SessionFields::new(
        "s".into(),
        "r".into(),
        "t".into(),
        "e".into(),
        "d".into(),
        "a".into(),
        true,
    );
    let first = session.members().as_ptr();
    assert_eq!(session.members().as_ptr(), first);
    assert_eq!(
        session.members(),
        br#""session_id":"s","request_id":"r","ticket":"t","engineer":"e","database":"d","client_addr":"a","break_glass":true"#
    );
    let mut changed = session.clone();
    changed.ticket = "other".into();
    assert!(String::from_utf8_lossy(changed.members()).contains(r#""ticket":"other""#));
}

#[test]
fn timestamps_match_chrono_and_odd_ones_fall_back_to_it() {
    use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
    let mut gen = Gen(7);
    let mut times: Vec<DateTime<Utc>> = vec![
        Utc.timestamp_opt(0, 0).single().expect("epoch"),
        Utc.timestamp_opt(253_402_300_799, 999_999_999)
            .single()
            .expect("end of 9999"),
        Utc.timestamp_opt(-62_167_219_200, 0)
            .single()
            .expect("year 0"),
    ];
    for _ in 0..2000 {
        let secs = gen.below(253_402_300_800) as i64;
        let nanos = gen.below(1_000_000_000) as u32;
        times.push(Utc.timestamp_opt(secs, nanos).single().expect("in range"));
        // The same second again (its date and time of day come from the thread's last
        // second), the next one, and back: each must still be its own.
        for (s, n) in [(secs, 999_999_999 - nanos), (secs + 1, nanos), (secs, 0)] {
            times.push(Utc.timestamp_opt(s, n).single().expect("in range"));
        }
    }
    // Past year 9999, and a leap second: chrono's own text.
    times.push(
        Utc.timestamp_opt(253_402_300_800, 5_000)
            .single()
            .expect("year 10000"),
    );
    let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
        .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
        .expect("leap second");
    times.push(Utc.from_utc_datetime(&leap));
    for t in times {
        let expected = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        assert_eq!(TimeStamp::of(t).as_str(), expected, "{t:?}");
        // From the system clock's type, as the writer stamps: the same text, whether the
        // thread's last second is this one (the calendar skipped) or not.
        if t.timestamp_subsec_nanos() < 1_000_000_000 {
            let system = std::time::SystemTime::from(t);
            assert_eq!(TimeStamp::of_system(system).as_str(), expected, "{t:?}");
            assert_eq!(
                TimeStamp::of_system(system).as_str(),
                expected,
                "{t:?} again"
            );
        }
    }
}

#[test]
fn a_written_record_is_the_serde_record_behind_the_chain_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut gen = Gen(11);
    let session = gen.session();
    let events = vec![gen.statement(&session), gen.outcome(&session)];
    runtime.block_on(async {
        let (log, _syncer) = AuditLog::open(&path, None).expect("open");
        log.append_durable(events.clone()).await.expect("append");
        log.close().await;
    });
    let text = std::fs::read_to_string(&path).expect("read");
    for (line, event) in text.lines().zip(&events) {
        // `{"seq":…,"time":"…","prev":"<64 hex>",` then the record's own members.
        let members = line
            .split_once(r#""prev":""#)
            .map(|(_, rest)| &rest[64 + 2..])
            .expect("a chain header");
        let expected = serde_json::to_string(event).expect("serde");
        assert_eq!(members, &expected[1..]);
    }
    let report = crate::audit::chain::verify(&[path.as_path()], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn appending_a_statement_and_its_outcome_allocates_nothing_once_warm() {
    use crate::allocations;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let options = AuditOptions {
        durability: Durability::Write,
        ..AuditOptions::default()
    };
    let (log, _syncer) = AuditLog::open_with(&path, None, options).expect("open");
    let session = Arc::new(SessionFields::new(
        "0b6f3c9e-2a41-4c7e-9d55-000000000001".into(),
        "req-fa23f20f3d32b06d".into(),
        "INC-48213".into(),
        "eve@example.com".into(),
        "sales".into(),
        "127.0.0.1:51544".into(),
        false,
    ));
    let statement = [AuditEvent::Statement(StatementRecord {
        session: session.clone(),
        protocol: Protocol::Simple,
        statement: "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;".into(),
        params: None,
        kind: StatementKind::Select,
        redacted: Vec::new(),
        mentions: None,
    })];
    let outcome = [AuditEvent::Outcome(OutcomeRecord {
        statement_seq: 1,
        session,
        status: OutcomeStatus::Ok,
        command_tag: Some("SELECT 1".into()),
        rows: Some(1),
        sqlstate: None,
        message: None,
        rule: None,
        bytes: None,
        duration_ms: 0.042,
    })];
    let append = || {
        runtime
            .block_on(log.append_durable_all(statement.iter().chain(&outcome)))
            .expect("append");
    };
    // The first appends grow the reused buffers.
    for _ in 0..3 {
        append();
    }
    // The counter sees this thread's allocations at all.
    let before = allocations::count();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    assert_eq!(allocations::count() - before, 1);
    let before = allocations::count();
    for _ in 0..100 {
        append();
    }
    assert_eq!(allocations::count() - before, 0);
}
