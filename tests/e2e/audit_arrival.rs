//! The audit sink's table in arrival order (`src/audit/arrival.rs`): a table made before
//! the `arrival` column gains it, rows are numbered under the table's advisory lock, and a
//! table the sink's role may not alter still ships and reads (in time order).

use std::time::Duration;

use serde_json::Value;

use lockbox::policy::AccessLevel;

use crate::audit_pg_sink::{audit_database, shipped, statements, with_sink};
use crate::harness::{cluster, Env, SERVICE_ROLE};

/// The table as an earlier lockbox made it, with one row another node shipped then.
fn old_table(audit_db: &str) {
    cluster()
        .psql(
            audit_db,
            "CREATE TABLE lockbox_audit (proxy_id text NOT NULL, seq bigint NOT NULL, \
             \"time\" timestamptz NOT NULL, \"type\" text NOT NULL, request_id text, \
             session_id text, engineer text, \"database\" text, record jsonb NOT NULL, \
             line text NOT NULL, PRIMARY KEY (proxy_id, seq)); \
             INSERT INTO lockbox_audit (proxy_id, seq, \"time\", \"type\", record, line) \
             VALUES ('old-node', 1, now() + interval '1 day', 'statement', \
             '{\"statement\": \"SELECT 0 AS shipped_before\"}', \
             '{\"seq\":1,\"node\":\"old-node\",\"type\":\"statement\",\"statement\":\"SELECT 0 AS shipped_before\"}')",
        )
        .expect("an old audit table");
}

/// A connection to the audit database as its superuser.
pub(crate) async fn client(audit_db: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&cluster().url(audit_db), tokio_postgres::NoTls)
            .await
            .expect("connect to the audit database");
    tokio::spawn(connection);
    client
}

/// Every record through `GET /v1/audit`, one page.
async fn listed(env: &Env) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/audit?limit=1000",
            env.deployment.server_url()
        ))
        .bearer_auth(&env.deployment.api_keys["dave"])
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("records")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_made_before_arrival_order_gains_it_and_lists_in_it() {
    let audit_db = audit_database("arrival_migrate_audit");
    old_table(&audit_db);
    cluster()
        .psql(
            &audit_db,
            &format!("ALTER TABLE lockbox_audit OWNER TO {SERVICE_ROLE}"),
        )
        .expect("owned by the sink's role");
    let mut env = Env::start("arrival_migrate").await;
    with_sink(&mut env, &audit_db, "proxy-a").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 3).await;
    let table = shipped(&env, &audit_db, "proxy-a").await;

    let db = client(&audit_db).await;
    let numbered: Vec<(String, i64, i64)> = db
        .query(
            "SELECT proxy_id, seq, arrival FROM lockbox_audit ORDER BY arrival",
            &[],
        )
        .await
        .expect("the arrival column")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(numbered.len(), table.len() + 1);
    assert_eq!(numbered[0].0, "old-node", "the old row was there first");
    let ours: Vec<i64> = numbered.iter().skip(1).map(|r| r.1).collect();
    let in_seq: Vec<i64> = table.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(ours, in_seq, "a node's rows arrive in its own order");

    // The fleet's list is in that order, though the old row's time is tomorrow.
    let records = listed(&env).await;
    assert_eq!(records.len(), numbered.len());
    assert_eq!(records[0]["node"], "old-node", "{}", records[0]);
    let listed_seqs: Vec<i64> = records
        .iter()
        .skip(1)
        .filter_map(|r| r["seq"].as_i64())
        .collect();
    assert_eq!(listed_seqs, in_seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_waits_for_the_tables_arrival_lock() {
    let audit_db = audit_database("arrival_lock_audit");
    let mut env = Env::start("arrival_lock").await;
    with_sink(&mut env, &audit_db, "proxy-a").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 1).await;
    let before = shipped(&env, &audit_db, "proxy-a").await.len();

    // Another shipper holds the lock: nothing of ours may be numbered meanwhile.
    let holder = client(&audit_db).await;
    holder
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('lockbox audit arrival ' \
             || to_regclass('lockbox_audit')::oid::text, 0))",
        )
        .await
        .expect("take the lock");
    statements(&env, &token, 2).await;
    let db = client(&audit_db).await;
    let count = || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM lockbox_audit", &[])
            .await
            .expect("count")
            .get(0);
        n as usize
    };
    // The sink has a batch to ship: it waits for the lock (seen in pg_locks), and nothing
    // of it is in the table meanwhile.
    let mut waiting = 0i64;
    for _ in 0..300 {
        waiting = db
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .expect("locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waiting > 0, "the sink waits for the arrival lock");
    assert_eq!(count().await, before, "a batch was inserted past the lock");
    holder.batch_execute("COMMIT").await.expect("release");
    let after = shipped(&env, &audit_db, "proxy-a").await.len();
    assert!(after > before);
    assert_eq!(count().await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_the_sink_may_not_alter_still_ships_and_reads() {
    let audit_db = audit_database("arrival_readonly_audit");
    old_table(&audit_db);
    cluster()
        .psql(
            &audit_db,
            &format!("GRANT SELECT, INSERT ON lockbox_audit TO {SERVICE_ROLE}"),
        )
        .expect("insert and read only");
    let mut env = Env::start("arrival_readonly").await;
    with_sink(&mut env, &audit_db, "proxy-a").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 3).await;
    let table = shipped(&env, &audit_db, "proxy-a").await;
    let has_arrival: bool = client(&audit_db)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_name = 'lockbox_audit' AND column_name = 'arrival')",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert!(!has_arrival, "the role could not have added it");
    // Time order: the old row (dated tomorrow) comes last.
    let records = listed(&env).await;
    assert_eq!(records.len(), table.len() + 1);
    assert_eq!(
        records.last().map(|r| r["node"].clone()),
        Some("old-node".into())
    );
}
