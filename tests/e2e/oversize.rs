//! Oversized client input: a message over `proxy.max_message_size` ends the session saying
//! why; a value over the audit's per-field limit is recorded clipped, with its length and
//! SHA-256.

use crate::harness::{errors_in, Env, Raw};

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_limit_ends_the_session_saying_why() {
    let env = Env::start("oversize_message").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    // Only the header is sent: the size is refused from the declared length, before any
    // of the body would be buffered.
    let declared: i32 = 100 * 1024 * 1024;
    let mut header = vec![b'B'];
    header.extend_from_slice(&declared.to_be_bytes());
    raw.send(&header).await;
    let errors = errors_in(&raw.read_to_close().await);
    let expected =
        "Bind message of 104857601 bytes exceeds proxy.max_message_size (67108864 bytes)";
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].0, "08P01",
        "as PostgreSQL answers an oversized message"
    );
    assert!(errors[0].1.contains(expected), "{errors:?}");
    let records = env
        .wait_for_audit("the session's end", |records| {
            records.iter().any(|r| {
                r["type"] == "session"
                    && r["request_id"] == id.as_str()
                    && r["event"] == "disconnected"
            })
        })
        .await;
    let end = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
        .expect("end record");
    assert_eq!(end["reason"], expected, "{end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_violation_record_says_which() {
    let env = Env::start("oversize_violation").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    // A length below the header's own four bytes.
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    raw.read_to_close().await;
    let records = env
        .wait_for_audit("the session's end", |records| {
            records
                .iter()
                .any(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
        })
        .await;
    let end = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
        .expect("end record");
    assert_eq!(
        end["reason"], "client protocol violation: invalid message length 2",
        "{end}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_bind_parameter_is_recorded_clipped_with_length_and_hash() {
    use sha2::Digest;
    let env = Env::start("oversize_param").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    // 3 MiB: over the default 64 KiB per field and 1 MiB per record.
    let big = "lockbox ".repeat(3 * 1024 * 1024 / 8);
    let row = client
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0) as usize, big.len());
    let records = env
        .wait_for_audit("the statement's outcome", |records| {
            records
                .iter()
                .any(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
        })
        .await;
    let record = records
        .iter()
        .find(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .expect("statement record");
    let line = serde_json::to_string(record).expect("JSON");
    assert!(line.len() < 80 * 1024, "record of {} bytes", line.len());
    let clipped = &record["params"][0]["clipped"];
    assert_eq!(clipped["length"], big.len());
    assert_eq!(
        clipped["sha256"],
        hex::encode(sha2::Sha256::digest(big.as_bytes()))
    );
    // tokio-postgres sends parameters in binary: the prefix is hex, 64 KiB of it.
    let prefix = clipped["prefix_hex"].as_str().expect("prefix_hex");
    assert_eq!(prefix.len(), 64 * 1024);
    let prefix = hex::decode(prefix).expect("hex");
    assert!(big.as_bytes().starts_with(&prefix));
    assert_eq!(record["statement"], "SELECT length($1::text)");
    // The chain still verifies with the clipped record in it.
    let report =
        lockbox::audit::chain::verify(&[env.audit_path.as_path()], None, true).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}
