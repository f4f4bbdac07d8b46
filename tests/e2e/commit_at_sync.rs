//! A commit that fails at a Sync. The Sync of the extended protocol commits the implicit
//! transaction its statements ran in; a deferred constraint (or a serialization failure)
//! fails there, after every statement has completed, and nothing of them is kept. The
//! server reports such a failure on the last statement of a query string; the audit
//! reports it on the last statement before the Sync. Before, the error was in no record
//! and every INSERT read `ok`.

use lockbox::policy::AccessLevel;
use serde_json::Value;

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{python, Env, Raw};

fn extended(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", ""), execute("")].concat()
}

fn setup(env: &Env) {
    env.superuser_sql(
        "CREATE TABLE deferred_keys (k int UNIQUE DEFERRABLE INITIALLY DEFERRED);
         GRANT SELECT, INSERT ON deferred_keys TO lockbox_write",
    );
}

/// The outcome of the last statement record of `grant` whose text is `statement`.
async fn outcome(env: &Env, grant: &str, statement: &str) -> Value {
    let find = |trail: &[Value]| -> Option<Value> {
        let record = trail.iter().rev().find(|r| {
            r["type"] == "statement" && r["request_id"] == grant && r["statement"] == statement
        })?;
        trail
            .iter()
            .find(|r| r["type"] == "outcome" && r["statement_seq"] == record["seq"])
            .cloned()
    };
    let trail = env.wait_for_audit(statement, |t| find(t).is_some()).await;
    find(&trail).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_key_that_fails_at_the_sync_is_the_last_statements_error() {
    let env = Env::start("commit_at_sync_raw").await;
    setup(&env);
    let (grant, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let first = "INSERT INTO deferred_keys VALUES (1)";
    let second = "INSERT INTO deferred_keys SELECT 1";
    raw.send(&[extended(first), extended(second), sync()].concat())
        .await;
    let answer = raw.read_until_ready_after_error().await;
    let errors = crate::harness::errors_in(&answer);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "23505");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM deferred_keys"), "0");

    let kept = "INSERT INTO deferred_keys VALUES (2)";
    raw.send(&[extended(kept), sync()].concat()).await;
    raw.read_until_ready().await;
    assert_eq!(env.superuser_sql("SELECT count(*) FROM deferred_keys"), "1");

    let first = outcome(&env, &grant, first).await;
    assert_eq!(first["status"], "ok", "it completed: {first}");
    let failed = outcome(&env, &grant, second).await;
    assert_eq!(failed["status"], "error", "{failed}");
    assert_eq!(failed["sqlstate"], "23505", "{failed}");
    assert!(
        failed["command_tag"].is_null() && failed["rows"].is_null(),
        "nothing of it was kept: {failed}"
    );
    let kept = outcome(&env, &grant, kept).await;
    assert_eq!(kept["status"], "ok", "{kept}");
    assert_eq!(kept["command_tag"], "INSERT 0 1", "{kept}");
}

const EXECUTEMANY: &str = r#"
import asyncio, os, asyncpg

async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(os.environ["LB_PORT"]),
        user="eve", password=os.environ["LB_TOKEN"], database=os.environ["LB_DB"])
    try:
        await conn.executemany("INSERT INTO deferred_keys VALUES ($1)", [(5,), (6,), (5,)])
        print("committed")
    except asyncpg.PostgresError as e:
        print(e.sqlstate)
    print(await conn.fetchval("SELECT count(*) FROM deferred_keys"))
    await conn.close()

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_executemany_that_fails_at_commit_is_recorded() {
    let env = Env::start("commit_at_sync_asyncpg").await;
    setup(&env);
    let (grant, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let stdout = python(&env, &token, EXECUTEMANY);
    assert_eq!(
        stdout.split_whitespace().collect::<Vec<_>>(),
        ["23505", "0"]
    );
    let statement = "INSERT INTO deferred_keys VALUES ($1)";
    let trail = env
        .wait_for_audit("the executemany's outcomes", |t| {
            t.iter()
                .any(|r| r["request_id"] == grant.as_str() && r["event"] == "disconnected")
        })
        .await;
    let seqs: Vec<&Value> = trail
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["request_id"] == grant.as_str()
                && r["statement"] == statement
        })
        .map(|r| &r["seq"])
        .collect();
    let statuses: Vec<(String, String)> = seqs
        .iter()
        .filter_map(|seq| {
            trail
                .iter()
                .find(|r| r["type"] == "outcome" && r["statement_seq"] == **seq)
        })
        .map(|o| {
            (
                o["status"].as_str().unwrap_or_default().to_owned(),
                o["sqlstate"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(seqs.len(), 3, "one record per row");
    assert_eq!(
        statuses.last(),
        Some(&("error".to_owned(), "23505".to_owned())),
        "{statuses:?}"
    );
}
