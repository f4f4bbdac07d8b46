use std::sync::Arc;

use super::*;
use crate::audit::{Protocol, SessionFields, StatementRecord};

fn statement(text: &str, params: Vec<Value>) -> AuditEvent {
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
        statement: text.into(),
        params: Some(params.into()),
        kind: crate::sql::StatementKind::Select,
        redacted: Vec::new(),
        mentions: None,
    })
}

fn clipped(event: &AuditEvent, limits: ClipLimits) -> Option<Value> {
    let mut out = Vec::new();
    write_if_oversized(&mut out, event, limits).then(|| serde_json::from_slice(&out).expect("JSON"))
}

const SMALL: ClipLimits = ClipLimits {
    max_field_bytes: 8,
    max_record_bytes: 20,
};

#[test]
fn a_record_within_the_limits_is_left_to_the_usual_path() {
    let event = statement("SELECT $1", vec![json!("abc"), Value::Null]);
    assert_eq!(clipped(&event, ClipLimits::default()), None);
}

fn with_mentions(text: &str, relations: &[&str], functions: &[&str]) -> AuditEvent {
    let mut event = statement(text, vec![]);
    if let AuditEvent::Statement(s) = &mut event {
        s.mentions = Some(StatementNames {
            relations: relations.iter().map(|r| r.to_string()).collect(),
            functions: functions.iter().map(|f| f.to_string()).collect(),
            fields: Arc::from(vec!["o.leak".to_owned()]),
            skeleton: None,
        });
    }
    event
}

#[test]
fn a_clipped_statement_keeps_what_it_names_once_each() {
    let event = with_mentions(
        "/* padding */ SELECT lower(a) FROM t JOIN u USING (k) JOIN t AS again USING (k)",
        &["t", "u", "t"],
        &["lower"],
    );
    let limits = ClipLimits {
        max_field_bytes: 16,
        max_record_bytes: 1024,
    };
    let record = clipped(&event, limits).expect("clipped");
    let kept = &record["statement_clipped"];
    assert_eq!(kept["relations"], json!(["t", "u"]));
    assert_eq!(kept["functions"], json!(["lower"]));
    assert_eq!(kept["fields"], json!(["o.leak"]));
    assert!(kept.get("names_omitted").is_none(), "{kept}");
    // Kept whole, the same statement carries no list.
    assert_eq!(clipped(&event, ClipLimits::default()), None);
}

#[test]
fn the_skeleton_comes_before_the_prefix_and_one_that_cannot_fit_refuses() {
    let mut event = with_mentions(&format!("/* {} */ DROP TABLE t", "x".repeat(100)), &[], &[]);
    if let AuditEvent::Statement(s) = &mut event {
        if let Some(m) = &mut s.mentions {
            m.skeleton = Some("DROP TABLE t".into());
        }
    }
    let limits = ClipLimits {
        max_field_bytes: 64,
        max_record_bytes: 48,
    };
    assert!(skeleton_fits(mentions(&event), limits));
    let record = clipped(&event, limits).expect("clipped");
    assert_eq!(record["statement_clipped"]["skeleton"], "DROP TABLE t");
    let tight = ClipLimits {
        max_field_bytes: 64,
        max_record_bytes: 20,
    };
    assert!(!skeleton_fits(mentions(&event), tight));
}

#[test]
fn names_come_before_the_prefix_and_only_a_flood_is_cut() {
    // Each name costs its length and three bytes: these take 30 of the record's 32
    // bytes (with the field `o.leak`), so the prefix keeps 2, not the field's 16.
    let event = with_mentions(&"x".repeat(100), &["aaaa", "bbbb", "cccc"], &[]);
    let limits = ClipLimits {
        max_field_bytes: 16,
        max_record_bytes: 32,
    };
    assert!(names_fit(mentions(&event), limits));
    let record = clipped(&event, limits).expect("clipped");
    assert_eq!(record["statement"], "xx");
    let kept = &record["statement_clipped"];
    assert_eq!(kept["relations"], json!(["aaaa", "bbbb", "cccc"]));
    assert_eq!(kept["fields"], json!(["o.leak"]));
    assert!(kept.get("names_omitted").is_none(), "{kept}");
    // Names over the record's limit alone do not fit (the relay refuses such a
    // statement); the record keeps what fits and counts the rest.
    let tight = ClipLimits {
        max_field_bytes: 16,
        max_record_bytes: 16,
    };
    assert!(!names_fit(mentions(&event), tight));
    let record = clipped(&event, tight).expect("clipped");
    assert_eq!(record["statement"], "");
    assert_eq!(
        record["statement_clipped"]["relations"],
        json!(["aaaa", "bbbb"])
    );
    assert_eq!(record["statement_clipped"]["names_omitted"], 2);
}

fn mentions(event: &AuditEvent) -> &StatementNames {
    match event {
        AuditEvent::Statement(s) => s.mentions.as_ref().expect("mentions"),
        _ => panic!("a statement"),
    }
}

#[test]
fn only_a_text_that_could_pass_the_field_limit_may_be_clipped() {
    let limits = ClipLimits {
        max_field_bytes: 60,
        max_record_bytes: 1024,
    };
    // Ten bytes could be sixty escaped; eleven could be more.
    assert!(!may_clip(&"a".repeat(10), limits));
    assert!(may_clip(&"a".repeat(11), limits));
}

#[test]
fn an_oversized_parameter_keeps_a_prefix_its_length_and_hash() {
    let value = "é".repeat(10); // 20 bytes, two per character
    let event = statement("SELECT $1", vec![json!(value)]);
    let limits = ClipLimits {
        max_field_bytes: 11, // not a character boundary: the prefix stops before it
        max_record_bytes: 30,
    };
    let record = clipped(&event, limits).expect("clipped");
    let param = &record["params"][0]["clipped"];
    assert_eq!(param["prefix"], "ééééé");
    assert_eq!(param["length"], 20);
    assert_eq!(param["sha256"], hex::encode(Sha256::digest(&value)));
    assert_eq!(record["statement"], "SELECT $1");
    assert!(record.get("statement_clipped").is_none());
}

#[test]
fn a_binary_parameter_is_hashed_as_bytes() {
    let bytes = [7u8; 16];
    let event = statement("SELECT $1", vec![json!({"binary_hex": hex::encode(bytes)})]);
    let record = clipped(&event, SMALL).expect("clipped");
    let param = &record["params"][0]["clipped"];
    assert_eq!(param["prefix_hex"], "07070707");
    assert_eq!(param["length"], 16);
    assert_eq!(param["sha256"], hex::encode(Sha256::digest(bytes)));
}

#[test]
fn the_record_budget_is_shared_in_order() {
    // Statement clipped to 8 bytes, then 8 + 4 of the 20-byte budget left.
    let event = statement(
        "SELECT $1, $2, $3",
        vec![json!("aaaaaaaa"), json!("bbbbbbbb"), json!("c")],
    );
    let record = clipped(&event, SMALL).expect("clipped");
    assert_eq!(record["statement"], "SELECT $");
    assert_eq!(record["statement_clipped"]["length"], 17);
    assert_eq!(record["params"][0], "aaaaaaaa");
    assert_eq!(record["params"][1]["clipped"]["prefix"], "bbbb");
    // The budget is spent: the third is summarised, not given a stand-in of its own.
    assert_eq!(record["params"].as_array().map(Vec::len), Some(2));
    assert_eq!(record["params_clipped"]["omitted"], 1);
    assert_eq!(record["params_clipped"]["length"], 1);
    assert_eq!(
        record["params_clipped"]["sha256"],
        hex::encode(Sha256::digest(br#"["c"]"#))
    );
}

#[test]
fn parameters_past_the_budget_are_summarised_with_a_hash_of_their_json() {
    let omitted = vec![json!("dddd"), Value::Null, json!({"binary_hex": "0a0b"})];
    // 8 bytes of the statement, 8 of the first parameter, the last 4 on the second.
    let mut params = vec![json!("x".repeat(20)), json!("yyyyyy")];
    params.extend(omitted.iter().cloned());
    let record = clipped(&statement("SELECT $1", params), SMALL).expect("clipped");
    assert_eq!(record["params"][0]["clipped"]["prefix"], "x".repeat(8));
    assert_eq!(record["params"][1]["clipped"]["prefix"], "yyyy");
    let summary = &record["params_clipped"];
    assert_eq!(summary["omitted"], 3);
    assert_eq!(
        summary["length"],
        4 + 2,
        "text bytes and binary bytes, not hex"
    );
    let json = serde_json::to_vec(&omitted).expect("JSON");
    assert_eq!(summary["sha256"], hex::encode(Sha256::digest(json)));
}
