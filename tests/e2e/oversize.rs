//! Oversized client input: a message over `proxy.max_message_size` ends the session saying
//! why; a value over the audit's per-field limit is recorded clipped, with its length and
//! SHA-256.

use lockbox::audit::AuditQuery;

use crate::harness::{errors_in, metric_when, Env, Options, Raw};

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

/// A statement padded past `audit.max_field_bytes` keeps only a prefix of its text, which
/// the padding fills: the record keeps what the statement touches, from PostgreSQL's parse,
/// and a search of the trail for a table finds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_padded_past_the_limit_keeps_the_tables_and_functions_it_names() {
    let env = Env::start("oversize_padded").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let padded = padded("SELECT upper(name) FROM items WHERE id = 1");
    // Simple protocol, then Parse/Bind/Execute of the same text.
    client.simple_query(&padded).await.expect("simple query");
    client.query(&padded, &[]).await.expect("extended query");
    client
        .simple_query("SELECT 'after the padded ones'")
        .await
        .expect("a short one");
    let records = env
        .wait_for_audit("the short statement", |records| {
            records
                .iter()
                .any(|r| r["statement"] == "SELECT 'after the padded ones'")
        })
        .await;
    let statements: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .collect();
    let clipped: Vec<_> = statements
        .iter()
        .filter(|r| !r["statement_clipped"].is_null())
        .collect();
    assert_eq!(clipped.len(), 2, "both padded statements: {statements:?}");
    for record in &clipped {
        let kept = &record["statement_clipped"];
        assert!(
            !record["statement"]
                .as_str()
                .expect("text")
                .contains("items"),
            "the prefix is padding only"
        );
        assert_eq!(kept["relations"], serde_json::json!(["items"]), "{kept}");
        assert_eq!(kept["functions"], serde_json::json!(["upper"]), "{kept}");
        assert_eq!(kept["fields"], serde_json::json!(["name", "id"]), "{kept}");
        assert_eq!(kept["length"], padded.len());
        // And what the statement does, its padding taken out (an attack review hid a
        // DROP TABLE and a CREATE OR REPLACE FUNCTION behind a comment).
        let skeleton = kept["skeleton"].as_str().expect("a skeleton");
        assert!(
            skeleton
                .trim_start()
                .starts_with("SELECT upper(name) FROM items WHERE id = 1")
                || skeleton.contains("SELECT upper(name) FROM items WHERE id = 1"),
            "{skeleton}"
        );
        assert!(skeleton.len() < 200, "{skeleton}");
    }
    // A statement kept whole carries no list: its text says it all.
    let short = statements
        .iter()
        .find(|r| r["statement"] == "SELECT 'after the padded ones'")
        .expect("the short record");
    assert!(short.get("statement_clipped").is_none(), "{short}");
    // Searching the trail for the table finds both.
    let found = env
        .client("dave")
        .audit(&AuditQuery {
            text: Some("items".into()),
            request: Some(id.clone()),
            ..AuditQuery::default()
        })
        .await
        .expect("search");
    assert_eq!(found.len(), 2, "{found:?}");
    // The table form says what was cut and what it names, where the prefix is padding.
    let out = crate::audit_trail::lockbox(
        &env,
        "dave",
        &[
            "audit",
            "list",
            "--request",
            &id,
            "--text",
            "items",
            "--format",
            "table",
        ],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let summary = format!(
        "(clipped: {} bytes; relations: items; functions: upper; fields: name, id)",
        padded.len()
    );
    assert_eq!(table.matches(&summary).count(), 2, "{table}");
    let report =
        lockbox::audit::chain::verify(&[env.audit_path.as_path()], None, true).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

/// The same search on the fleet's trail (the PostgreSQL audit sink) finds a padded
/// statement by the table it names, as the local trail does.
#[tokio::test(flavor = "multi_thread")]
async fn the_fleets_trail_finds_a_padded_statement_by_its_table() {
    let (env, audit_db) = crate::attack_review::sink_env("oversize_padded_fleet").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .simple_query(&padded("SELECT name FROM items"))
        .await
        .expect("padded query");
    client
        .simple_query("SELECT 'shipped after the padded one'")
        .await
        .expect("a short one");
    crate::attack_review::wait_shipped(&audit_db, "shipped after the padded one").await;
    let search = |text: &str| AuditQuery {
        text: Some(text.into()),
        request: Some(id.clone()),
        ..AuditQuery::default()
    };
    let dave = env.client("dave");
    let found = dave.audit(&search("items")).await.expect("search");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["statement_clipped"]["relations"],
        serde_json::json!(["items"])
    );
    // A name it does not hold finds nothing.
    let none = dave.audit(&search("secrets")).await.expect("search");
    assert!(none.is_empty(), "{none:?}");
}

/// A quoted name keeps its case in the record, as the server resolves it: `"Items"` is
/// another table than `items`, and a search for it finds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_clipped_statement_keeps_names_as_the_server_resolves_them() {
    let env = Env::start("oversize_case").await;
    env.superuser_sql(
        "CREATE TABLE \"Items\" AS SELECT * FROM items; GRANT SELECT ON \"Items\" TO lockbox_read",
    );
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .simple_query(&padded(
            "SELECT u.name FROM \"Items\" u JOIN items l USING (id)",
        ))
        .await
        .expect("padded query");
    let search = |text: &str| AuditQuery {
        text: Some(text.into()),
        request: Some(id.clone()),
        ..AuditQuery::default()
    };
    let dave = env.client("dave");
    let found = env
        .wait_for_audit("the padded statement", |records| {
            records
                .iter()
                .any(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
        })
        .await;
    let record = found
        .iter()
        .find(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
        .expect("the clipped record");
    assert_eq!(
        record["statement_clipped"]["relations"],
        serde_json::json!(["Items", "items"])
    );
    assert_eq!(dave.audit(&search("Items")).await.expect("search").len(), 1);
}

/// A statement whose names alone are more than its record may hold does not run: its
/// record could not say what it touched; nor one whose skeleton does not fit beside them.
/// One whose names and skeleton fit runs, its prefix shorter.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_naming_more_than_its_record_holds_is_refused() {
    let env = Env::with(
        "oversize_names_flood",
        crate::harness::Options {
            audit_durability: "fsync\"\nmax_field_bytes = \"1 KiB\"\nmax_record_bytes = \"2 KiB",
            ..crate::harness::Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    // 300 names of a CTE each: about 2.7 KiB of names in a record of 2 KiB.
    let flood = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("cte{i:04}")).collect();
        let defs: Vec<String> = names.iter().map(|c| format!("{c} AS (SELECT 1)")).collect();
        format!(
            "WITH {} SELECT count(*) FROM {}, items",
            defs.join(", "),
            names.join(", ")
        )
    };
    for refused in [flood(300), flood(100)] {
        let error = client.simple_query(&refused).await.expect_err("refused");
        let (code, message) = crate::harness::db_error(&error);
        assert_eq!(code, "42501", "{message}");
        assert!(message.contains("rule audit_record"), "{message}");
    }
    // 30 names behind a comment fit, with the statement's skeleton: it runs, and its record
    // names `items` with the rest.
    let fits = format!("/* {} */ {}", "x".repeat(1500), flood(30));
    client.simple_query(&fits).await.expect("runs");
    let records = env
        .wait_for_audit("the three statements", |records| {
            records
                .iter()
                .filter(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
                .count()
                == 3
        })
        .await;
    let ran = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
        .nth(2)
        .expect("the third");
    let relations = ran["statement_clipped"]["relations"]
        .as_array()
        .expect("relations");
    assert_eq!(relations.len(), 31, "{ran}");
    assert!(ran["statement_clipped"]["skeleton"]
        .as_str()
        .is_some_and(|s| s.starts_with("WITH cte0000")));
    assert!(relations.contains(&serde_json::json!("items")));
    assert!(
        ran["statement_clipped"].get("names_omitted").is_none(),
        "{ran}"
    );
    let line = serde_json::to_string(ran).expect("JSON");
    assert!(line.len() < 4096, "record of {} bytes", line.len());
}

/// `statement` behind 70 kB of comment: over the default 64 KiB field limit.
fn padded(statement: &str) -> String {
    format!("/* {} */ {statement}", "x".repeat(70_000))
}

/// Over 1 MiB a statement is read by neither the parser nor the scanner, so a clipped record
/// could say nothing of what it does: an attack review dropped a table as admin behind
/// 1 MiB of comment, recorded as a prefix of padding and a hash. Refused at every level; a
/// long statement lockbox can read still runs, its skeleton in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_too_long_to_read_or_record_is_refused_even_to_admin() {
    let env = Env::start("oversize_unreadable").await;
    let (_id, token) = env
        .approved_token_for("eve", "1h", lockbox::policy::AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .simple_query("CREATE TABLE victim (a int)")
        .await
        .expect("create");
    let hidden = format!("/*{}*/ DROP TABLE victim", "x".repeat(1_100_000));
    let refused = client.simple_query(&hidden).await.expect_err("refused");
    let message = refused
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("audit_record"), "{refused}");
    assert_eq!(
        env.superuser_sql("SELECT to_regclass('victim') IS NOT NULL"),
        "t"
    );
    let readable = format!("/*{}*/ DROP TABLE victim", "x".repeat(100_000));
    client
        .simple_query(&readable)
        .await
        .expect("readable, runs");
    assert_eq!(
        env.superuser_sql("SELECT to_regclass('victim') IS NULL"),
        "t"
    );
}

/// Whitespace costs up to six bytes a character in a record (a tab two): an attack review
/// padded an UPDATE's WHERE with tabs so that even its skeleton was cut before `OR true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_padding_does_not_push_a_statements_end_out_of_its_record() {
    let env = Env::start("oversize_whitespace").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", lockbox::policy::AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let padded = format!(
        "UPDATE items SET name = 'x' WHERE id = 5{} OR true",
        "\t".repeat(520_000)
    );
    client.simple_query(&padded).await.expect("runs");
    let records = env
        .wait_for_audit("the padded update", |records| {
            records
                .iter()
                .any(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
        })
        .await;
    let record = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && !r["statement_clipped"].is_null())
        .expect("the record");
    assert_eq!(
        record["statement_clipped"]["skeleton"], "UPDATE items SET name = 'x' WHERE id = 5 OR true",
        "{record}"
    );
}

/// Large messages share one room across sessions (`proxy.max_message_memory`): clients that
/// send the start of a large message and never the rest cannot make the proxy hold
/// `max_message_size` each (an attack review held 740 MB with 12 sessions). The message that
/// finds no room ends its session with 53200 saying why; small work goes on; the room comes
/// back when the session holding it ends.
#[tokio::test(flavor = "multi_thread")]
async fn large_messages_share_one_room_across_sessions() {
    let env = Env::with(
        "oversize_shared_room",
        Options {
            proxy_extra: "max_message_size = 2097152\nmax_message_memory = 3145728",
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    // A Query declared at 2 MiB, only its start sent.
    let declared: i32 = 2 * 1024 * 1024 - 1;
    let mut start = vec![b'Q'];
    start.extend_from_slice(&declared.to_be_bytes());
    start.extend_from_slice(b"SELECT '");
    start.extend_from_slice(&vec![b'x'; 512 * 1024]);
    let mut holder = Raw::login(&env, "eve", &token).await;
    holder.read_until_ready().await;
    holder.send(&start).await;
    // The holder's room is taken once the proxy read its header; a second such message
    // has none left beside it.
    message_memory_reaches(&env, 2 * 1024 * 1024).await;
    let expected = "Query message of 2097152 bytes refused: the proxy's sessions already hold \
                    what proxy.max_message_memory (3145728 bytes) allows for large client messages";
    let errors = refused_beside_the_holder(&env, &token, &start).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "53200", "{errors:?}");
    assert!(errors[0].1.contains(expected), "{errors:?}");
    // Small work goes on beside the held room.
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("a small query runs")
        .get(0);
    assert_eq!(one, 1);
    // The holder leaves: its room comes back (once the proxy saw it go), and a large Bind
    // runs whole.
    drop(holder);
    let length = 1024 * 1024 + 300 * 1024;
    let big = "y".repeat(length);
    let mut ran = None;
    for _ in 0..50 {
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        if let Ok(row) = client.query_one("SELECT length($1::text)", &[&big]).await {
            ran = Some(row.get::<_, i32>(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ran, Some(i32::try_from(length).expect("length")));
    let records = env
        .wait_for_audit("the refused session's end", |records| {
            records.iter().any(|r| {
                r["request_id"] == id.as_str()
                    && r["event"] == "disconnected"
                    && r["reason"] == expected
            })
        })
        .await;
    assert!(!records.is_empty());
}

/// The bytes behind a whole message that waits grow the buffer too: a Bind waits for its
/// Execute, and an Execute that never ends was held outside the shared room (a second
/// review held 163 MB against an 8 MiB budget so). They count now: another session's large
/// message finds no room beside them.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_behind_a_waiting_bind_take_room_too() {
    let env = Env::with(
        "oversize_behind_bind",
        Options {
            proxy_extra: "max_message_size = 4194304\nmax_message_memory = 4194304",
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    // Bind (unnamed portal and statement, no formats, no parameters), then an Execute
    // declared at 3.5 MiB of which 1.5 MiB come: the buffer they grow holds between 1.5 and
    // about 3 MiB (it grows by doubling), which leaves no room for a 3 MiB message beside
    // it, and is itself within the 4 MiB.
    let mut behind = vec![b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0];
    let declared: i32 = 3 * 1024 * 1024 + 512 * 1024;
    behind.push(b'E');
    behind.extend_from_slice(&declared.to_be_bytes());
    behind.push(0);
    behind.extend_from_slice(&vec![b'x'; 1536 * 1024]);
    let mut holder = Raw::login(&env, "eve", &token).await;
    holder.read_until_ready().await;
    holder.send(&behind).await;
    // The send returns once the kernel took the bytes, not once the proxy read them: on a
    // busy machine the second session's message could otherwise take the room first.
    message_memory_reaches(&env, 1536 * 1024).await;
    let mut start = vec![b'Q'];
    start.extend_from_slice(&(3 * 1024 * 1024 - 1i32).to_be_bytes());
    start.extend_from_slice(b"SELECT '");
    let errors = refused_beside_the_holder(&env, &token, &start).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "53200", "{errors:?}");
    assert!(errors[0].1.contains("max_message_memory"), "{errors:?}");
    drop(holder);
}

/// Waits (bounded) until the proxy's sessions hold at least `bytes` of the shared room
/// (`lockbox_message_memory_bytes`), that is until the proxy has read a holder's bytes.
async fn message_memory_reaches(env: &Env, bytes: usize) {
    let wanted = bytes as f64;
    let held = metric_when(
        env,
        "lockbox_message_memory_bytes",
        std::time::Duration::from_secs(10),
        |held| held >= wanted,
    )
    .await;
    assert!(
        held >= wanted,
        "the proxy's sessions hold {held} bytes of the shared room, not {bytes}"
    );
}

/// The errors another session gets for `start` (the beginning of a large message) beside
/// the holder, whose bytes the proxy has read (and taken the holder's room for) already.
async fn refused_beside_the_holder(env: &Env, token: &str, start: &[u8]) -> Vec<(String, String)> {
    let mut second = Raw::login(env, "eve", token).await;
    second.read_until_ready().await;
    second.send(start).await;
    errors_in(&second.read_to_close().await)
}
