//! A review's attacks on the hand encoder, written without looking at `encode_tests.rs`:
//! whatever a client can put in a statement or outcome record must come out as the exact
//! bytes serde_json writes, stay one line, and verify and read back as it went in.

use std::sync::Arc;

use serde_json::{json, Value};

use super::write_event;
use crate::audit::{
    chain, read_records, AuditEvent, AuditLog, AuditQuery, ClipLimits, OutcomeRecord,
    OutcomeStatus, Protocol, SessionFields, StatementRecord,
};
use crate::sql::StatementKind;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A string weighted towards what breaks encoders: controls, quotes, backslashes,
    /// DEL, the JavaScript line separators, BOM, replacement char, astral characters.
    fn string(&mut self) -> String {
        const NASTY: &[char] = &[
            '\0',
            '\u{1}',
            '\u{8}',
            '\t',
            '\n',
            '\u{b}',
            '\u{c}',
            '\r',
            '\u{1b}',
            '\u{1f}',
            '"',
            '\\',
            '/',
            '\u{7f}',
            '\u{80}',
            '\u{9f}',
            '\u{a0}',
            '\u{2028}',
            '\u{2029}',
            '\u{feff}',
            '\u{fffd}',
            '\u{ffff}',
            '\u{10000}',
            '\u{1f600}',
            '\u{10ffff}',
            'é',
            '}',
            '{',
            ',',
        ];
        let len = self.below(24);
        (0..len)
            .map(|_| match self.below(3) {
                0 => NASTY[self.below(NASTY.len() as u64) as usize],
                1 => char::from(b' ' + self.below(95) as u8),
                // Any scalar value (surrogates are not chars: skipped to the next).
                _ => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{e000}'),
            })
            .collect()
    }
}

fn session(rng: &mut Rng, break_glass: bool) -> Arc<SessionFields> {
    Arc::new(SessionFields::new(
        rng.string(),
        rng.string(),
        rng.string(),
        rng.string(),
        rng.string(),
        rng.string(),
        break_glass,
    ))
}

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

const STATUSES: [OutcomeStatus; 5] = [
    OutcomeStatus::Ok,
    OutcomeStatus::Error,
    OutcomeStatus::NotExecuted,
    OutcomeStatus::Interrupted,
    OutcomeStatus::Refused,
];

/// Durations at the edges of what an `f64` holds (serde_json writes the non-finite as null).
const DURATIONS: [f64; 12] = [
    0.0,
    -0.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE,
    5e-324,
    f64::MAX,
    f64::MIN,
    1e21,
    1e-7,
    0.1 + 0.2,
];

fn statement(rng: &mut Rng, i: usize) -> AuditEvent {
    let params = match rng.below(3) {
        0 => None,
        _ => Some(
            (0..rng.below(4))
                .map(|_| match rng.below(4) {
                    0 => Value::Null,
                    1 => json!({ "binary_hex": hex::encode(rng.string()) }),
                    // Not what lockbox makes, but `params` is any JSON: nesting and keys.
                    2 => json!({ rng.string(): [rng.string(), u64::MAX, -1, 1.5] }),
                    _ => Value::String(rng.string()),
                })
                .collect(),
        ),
    };
    AuditEvent::Statement(StatementRecord {
        session: session(rng, i % 2 == 0),
        protocol: [Protocol::Simple, Protocol::Extended, Protocol::FunctionCall][i % 3],
        statement: rng.string().into(),
        params,
        kind: KINDS[i % KINDS.len()],
        redacted: [vec![], vec!["literals"], vec!["literals", "parameters"]][i % 3].clone(),
        mentions: None,
    })
}

fn outcome(rng: &mut Rng, i: usize) -> AuditEvent {
    let maybe = |rng: &mut Rng| (rng.below(2) == 0).then(|| rng.string());
    AuditEvent::Outcome(OutcomeRecord {
        statement_seq: [0, 1, u64::MAX, rng.next()][i % 4],
        session: session(rng, i % 3 == 0),
        status: STATUSES[i % STATUSES.len()],
        command_tag: maybe(rng),
        rows: [None, Some(0), Some(u64::MAX)][i % 3],
        sqlstate: maybe(rng),
        message: maybe(rng),
        rule: maybe(rng),
        bytes: [None, Some(u64::MAX), Some(7)][i % 3],
        duration_ms: DURATIONS[i % DURATIONS.len()],
    })
}

fn events(n: usize) -> Vec<AuditEvent> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                statement(&mut rng, i)
            } else {
                outcome(&mut rng, i)
            }
        })
        .collect()
}

#[test]
fn adversarial_records_encode_exactly_as_serde_json_does() {
    for (i, event) in events(4000).iter().enumerate() {
        let mut ours = Vec::new();
        write_event(&mut ours, event);
        let theirs = serde_json::to_vec(event).expect("serde_json");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "record {i}"
        );
        assert!(!ours.contains(&b'\n'), "record {i} breaks its line");
    }
}

/// The same records through the writer (node stamped, some over the clip limits): the
/// file verifies, every line is one record, and each reads back as it went in.
#[tokio::test]
async fn adversarial_records_verify_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    log.set_clip_limits(ClipLimits {
        max_field_bytes: 40,
        max_record_bytes: 60,
    });
    log.set_node("node-\"\u{2028}\\1");
    let events = events(600);
    for chunk in events.chunks(7) {
        log.append_durable(chunk.to_vec()).await.expect("append");
    }
    log.close().await;
    drop(log);
    thread.join().expect("syncer");
    let report = chain::verify(&[path.as_path()], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    // Checkpoints are records of the chain too.
    assert_eq!(report.records, events.len() as u64 + report.checkpoints);
    let records = read_records(&path, &AuditQuery::default()).expect("read");
    let records: Vec<&Value> = records.iter().filter(|r| r.get("seq").is_some()).collect();
    let lines = std::fs::read_to_string(&path).expect("file");
    assert_eq!(lines.lines().count() as u64, report.records);
    let kept: Vec<&&Value> = records
        .iter()
        .filter(|r| matches!(r["type"].as_str(), Some("statement" | "outcome")))
        .collect();
    assert_eq!(kept.len(), events.len());
    assert!(kept.iter().any(|r| r.get("statement_clipped").is_some()));
    for (event, record) in events.iter().zip(kept) {
        let expected = serde_json::to_value(event).expect("value");
        assert_eq!(record["node"], "node-\"\u{2028}\\1");
        for (name, value) in expected.as_object().expect("object") {
            // Clipped fields keep a prefix; all else is as it went in.
            if record.get(format!("{name}_clipped")).is_some() || name == "params" {
                continue;
            }
            assert_eq!(&record[name], value, "{name} of {record}");
        }
    }
}

/// Finding 13: `max_record_bytes` bounds a record's values, but each parameter clipped
/// once the budget was spent still cost its stand-in (about 130 bytes): a Bind of 65,535
/// parameters of 1,000 bytes (66 MB, under the default `max_message_size`) was an 8.5 MB
/// record, eight times the 1 MiB limit. The parameters past the budget are one summary now.
#[test]
fn a_record_of_many_clipped_parameters_stays_near_the_record_limit() {
    let limits = ClipLimits::default();
    let event = AuditEvent::Statement(StatementRecord {
        session: Arc::new(SessionFields::new(
            "s".into(),
            "r".into(),
            "t".into(),
            "e".into(),
            "d".into(),
            "a".into(),
            false,
        )),
        protocol: Protocol::Extended,
        statement: "SELECT 1".into(),
        params: Some(vec![Value::String("x".repeat(1000)); 65_535].into()),
        kind: StatementKind::Select,
        redacted: Vec::new(),
        mentions: None,
    });
    let mut out = Vec::new();
    assert!(crate::audit::clip::write_if_oversized(
        &mut out, &event, limits
    ));
    assert!(
        out.len() <= 2 * limits.max_record_bytes,
        "a clipped record of {} bytes",
        out.len()
    );
}

/// The record as the writer writes it: clipped if over the limits, else the usual path.
fn written(event: &AuditEvent, limits: ClipLimits) -> Vec<u8> {
    let mut out = Vec::new();
    if !crate::audit::clip::write_if_oversized(&mut out, event, limits) {
        write_event(&mut out, event);
    }
    out
}

fn bind(statement: &str, params: Vec<Value>) -> AuditEvent {
    AuditEvent::Statement(StatementRecord {
        session: Arc::new(SessionFields::new(
            "s".into(),
            "r".into(),
            "t".into(),
            "e".into(),
            "d".into(),
            "a".into(),
            false,
        )),
        protocol: Protocol::Extended,
        statement: statement.into(),
        params: Some(params.into()),
        kind: StatementKind::Select,
        redacted: Vec::new(),
        mentions: None,
    })
}

/// Attack 12: the limits were checked against the values' raw bytes, but JSON escapes a
/// control character as six bytes (`\u0001`): fifteen parameters of 64 KiB of control
/// characters (960 KiB, under both limits by their raw length) were a 5.6 MiB record, and
/// a statement of them clipped to 64 KiB still a 384 KiB field.
#[test]
fn control_characters_cannot_make_a_record_six_times_the_limit() {
    use sha2::Digest as _;
    let limits = ClipLimits::default();
    let field = "\u{1}".repeat(limits.max_field_bytes);
    let event = bind("SELECT 1", vec![Value::String(field.clone()); 15]);
    let out = written(&event, limits);
    assert!(
        out.len() <= limits.max_record_bytes + 64 * 1024,
        "a record of {} bytes",
        out.len()
    );
    // Quotes and backslashes double; a statement is a field like any other.
    let event = bind(&"\"\\".repeat(limits.max_field_bytes), vec![]);
    let record: Value = serde_json::from_slice(&written(&event, limits)).expect("JSON");
    let kept = serde_json::to_string(&record["statement"]).expect("JSON");
    assert!(
        kept.len() <= limits.max_field_bytes + 2,
        "a statement field of {} bytes",
        kept.len()
    );
    let full = "\"\\".repeat(limits.max_field_bytes);
    assert_eq!(
        record["statement_clipped"]["sha256"],
        hex::encode(sha2::Sha256::digest(full.as_bytes()))
    );
    assert_eq!(record["statement_clipped"]["length"], full.len());
    // A control character is never split from its escape: the prefix is whole characters.
    let event = bind("SELECT $1", vec![Value::String(field)]);
    let record: Value = serde_json::from_slice(&written(&event, limits)).expect("JSON");
    let prefix = record["params"][0]["clipped"]["prefix"]
        .as_str()
        .expect("a prefix");
    assert_eq!(prefix.len(), limits.max_field_bytes / 6);
}

/// Attack 12: a parameter clipped to a budget of one byte keeps an empty prefix (a binary
/// value keeps whole bytes, two hex digits; a text value whole characters) and so cost
/// nothing: the budget stayed at one byte, never spent, and every later parameter got a
/// stand-in of its own again. A Bind whose parameters leave an odd byte of the budget,
/// then 60,000 one-byte binary parameters, was a 6.7 MB record: finding 13 over again.
#[test]
fn a_budget_left_at_one_byte_is_spent_by_the_parameter_clipped_to_it() {
    let limits = ClipLimits::default();
    let big = json!({ "binary_hex": "00".repeat(limits.max_field_bytes / 2) });
    let tiny = json!({ "binary_hex": "00" });
    // "SELECT $1" takes 9 bytes: an odd budget left, down to one byte after 16 big ones.
    let mut params = vec![big; 16];
    params.extend(std::iter::repeat_n(tiny, 60_000));
    let out = written(&bind("SELECT $1", params), limits);
    assert!(
        out.len() <= 2 * limits.max_record_bytes,
        "a clipped record of {} bytes",
        out.len()
    );
    let record: Value = serde_json::from_slice(&out).expect("JSON");
    assert!(record["params_clipped"]["omitted"].as_u64() > Some(59_000));
    // Text too: a character that does not fit whole leaves an empty prefix.
    let mut params = vec![Value::String("x".repeat(limits.max_field_bytes)); 15];
    params.push(Value::String("x".repeat(limits.max_field_bytes - 10)));
    params.extend(std::iter::repeat_n(Value::String("éé".into()), 60_000));
    let out = written(&bind("SELECT $1", params), limits);
    assert!(
        out.len() <= 2 * limits.max_record_bytes,
        "a clipped record of {} bytes",
        out.len()
    );
}

/// Attack 12: a NULL or an empty binary parameter counted nothing against the record's
/// budget, though each is `null` or `{"binary_hex":""}` in the record: 960 KiB of values
/// and 65,520 empty binary parameters (a Bind's most) were a 2.1 MB record, never clipped.
#[test]
fn empty_and_null_parameters_count_against_the_record_budget() {
    let limits = ClipLimits::default();
    for filler in [json!({ "binary_hex": "" }), Value::Null] {
        let mut params = vec![Value::String("x".repeat(limits.max_field_bytes)); 15];
        params.extend(std::iter::repeat_n(filler.clone(), 65_520));
        let out = written(&bind("SELECT 1", params), limits);
        assert!(
            out.len() <= limits.max_record_bytes + 64 * 1024,
            "a record of {} bytes with {filler}",
            out.len()
        );
    }
}
