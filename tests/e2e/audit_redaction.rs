//! Redaction: a database can keep literals and parameter values out of the audit trail;
//! the statements still run with their real values, and records say what was redacted.

use lockbox::policy::AccessLevel;

use crate::harness::{Env, Options};

const SECRET_LITERAL: &str = "4111-1111-1111-1111";
const SECRET_PARAM: &str = "078-05-1120";

#[tokio::test(flavor = "multi_thread")]
async fn redacted_databases_keep_values_out_of_the_trail() {
    let env = Env::with(
        "audit_redact",
        Options {
            // The harness writes this under `[databases.guardrails]`; the table after it
            // belongs to the same database.
            guardrails: "\n[databases.redaction]\nliterals = true\nparameters = true",
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");

    let row = client
        .query_one(
            &format!("SELECT '{SECRET_LITERAL}'::text AS card, 42 AS n"),
            &[],
        )
        .await
        .expect("simple");
    assert_eq!(
        row.get::<_, String>(0),
        SECRET_LITERAL,
        "the statement ran as written"
    );
    let row = client
        .query_one(
            "SELECT $1::text, $2::text IS NULL",
            &[&SECRET_PARAM, &None::<String>],
        )
        .await
        .expect("extended");
    assert_eq!(row.get::<_, String>(0), SECRET_PARAM);
    let err = client
        .simple_query(&format!("SELECT '{SECRET_PARAM}'::int"))
        .await
        .expect_err("not an integer");
    assert!(
        err.to_string().contains("invalid input syntax") || format!("{err:?}").contains("22P02")
    );

    let records = env
        .wait_for_audit("three outcomes", |records| {
            records
                .iter()
                .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
                .count()
                >= 3
        })
        .await;
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    assert!(
        !text.contains(SECRET_LITERAL)
            && !text.contains(SECRET_PARAM)
            && !text.contains(&hex::encode(SECRET_PARAM)),
        "a secret reached the trail:\n{text}"
    );
    let statements: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .collect();
    assert_eq!(statements[0]["statement"], "SELECT ?::text AS card, ? AS n");
    assert_eq!(
        statements[1]["statement"],
        "SELECT $1::text, $2::text IS NULL"
    );
    assert_eq!(statements[1]["params"], serde_json::json!(["?", null]));
    for s in &statements {
        assert_eq!(
            s["redacted"],
            serde_json::json!(["literals", "parameters"]),
            "{s}"
        );
    }
    let failed = records
        .iter()
        .find(|r| r["type"] == "outcome" && r["status"] == "error")
        .expect("the failed statement's outcome");
    assert_eq!(failed["sqlstate"], "22P02");
    assert_eq!(failed["message"], "?");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_databases_are_recorded_verbatim() {
    let env = Env::start("audit_verbatim").await;
    let (id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .query_one("SELECT $1::text", &[&SECRET_PARAM])
        .await
        .expect("extended");
    let records = env
        .wait_for_audit("the statement", |records| {
            records
                .iter()
                .any(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        })
        .await;
    let statement = records
        .iter()
        .find(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .expect("statement");
    // tokio-postgres sends parameters in binary.
    assert_eq!(
        statement["params"],
        serde_json::json!([{ "binary_hex": hex::encode(SECRET_PARAM) }])
    );
    assert!(statement.get("redacted").is_none(), "{statement}");
}
