//! Attacks on the fleet's trail read from the PostgreSQL audit sink, and on what the sink
//! ships: findings of a review, each a test that failed before its fix.

use std::time::Duration;

use lockbox::audit::AuditQuery;

use crate::attack_review_web::web_sign_in;
use crate::harness::{cluster, message, query, Env, Options, Raw};

/// A lockbox whose trail is also shipped to table `lockbox_audit` of database `a_<name>` on
/// the shared cluster, so the API reads the fleet's trail from there.
pub(crate) async fn sink_env(name: &str) -> (Env, String) {
    sink_env_with(name, "", None).await
}

/// A fresh, empty database `name` on the shared cluster.
pub(crate) fn fresh_audit_db(name: &str) {
    let pg = cluster();
    pg.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .expect("drop audit database");
    pg.psql("postgres", &format!("CREATE DATABASE {name}"))
        .expect("create audit database");
}

/// As [`sink_env`], with `setup` run in the audit database first (unless empty) and the
/// sink reaching it through `port` (the cluster's when `None`, or a relay's).
pub(crate) async fn sink_env_with(name: &str, setup: &str, port: Option<u16>) -> (Env, String) {
    let mut env = Env::prepare(name, Options::default());
    let pg = cluster();
    let audit_db = format!("a_{name}");
    fresh_audit_db(&audit_db);
    if !setup.is_empty() {
        pg.psql(&audit_db, setup)
            .expect("the table as the customer made it");
    }
    let mut text = std::fs::read_to_string(&env.config_path).expect("config");
    text.push_str(&format!(
        "\n[audit.postgres]\nurl = \"postgres://postgres@127.0.0.1:{}/{audit_db}\"\nproxy_id = \"node-1\"\nbatch_size = 50\n",
        port.unwrap_or(pg.port)
    ));
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    (env, audit_db)
}

/// Waits (bounded) until the audit table holds a statement record whose text is `sql`.
pub(crate) async fn wait_shipped(audit_db: &str, sql: &str) {
    let check = format!(
        "SELECT count(*) FROM lockbox_audit WHERE \"type\" = 'statement' AND line LIKE '%{}%'",
        sql.replace('\'', "''")
    );
    for _ in 0..150 {
        let out = cluster().psql(audit_db, &check).unwrap_or_default();
        if out
            .split_whitespace()
            .any(|w| w.parse::<u64>().is_ok_and(|n| n > 0))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_error = cluster()
        .psql(audit_db, "SELECT max(seq) FROM lockbox_audit")
        .unwrap_or_default();
    panic!("the sink never shipped `{sql}` (table's max seq: {last_error})");
}

/// An engineer's session, logged in and ready.
async fn session(env: &Env) -> Raw {
    let (_, token) = env.approved_token("eve", "30m").await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw
}

/// Parse, Bind of one text-format parameter holding `value`, Execute, Sync.
fn bind_text(sql: &str, value: &[u8]) -> Vec<u8> {
    let mut out = message(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"].concat());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes()); // no format codes: text
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(value.len() as i32).to_be_bytes());
    bind.extend_from_slice(value);
    bind.extend_from_slice(&0i16.to_be_bytes());
    out.extend(message(b'B', &bind));
    out.extend(message(
        b'E',
        &[b"\0".as_slice(), &0i32.to_be_bytes()].concat(),
    ));
    out.extend(message(b'S', b""));
    out
}

/// Finding 1: a text-format bind parameter holding a NUL byte is recorded as `\u0000`,
/// which PostgreSQL's `jsonb` refuses; the sink's batch failed on every retry, so one
/// statement of any engineer stopped the node's whole trail from reaching the audit
/// database (and so the fleet's `audit list`, API and admin center) for good.
#[tokio::test]
async fn a_nul_in_a_bind_parameter_does_not_stop_the_audit_sink() {
    let (env, audit_db) = sink_env("review_nul_param").await;
    let mut raw = session(&env).await;
    raw.send(&bind_text("SELECT $1::text", b"before\0after"))
        .await;
    // PostgreSQL refuses the NUL itself; the record was written before it was forwarded.
    raw.read_until_ready_after_error().await;
    raw.send(&query("SELECT 'after the nul record'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "after the nul record").await;
    // The record with the NUL is in the table too, its exact line kept.
    let fleet = env
        .client("dave")
        .audit(&AuditQuery {
            text: Some("SELECT $1::text".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("the fleet's trail");
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert_eq!(fleet[0]["params"][0], "before\0after");
}

/// Finding 2: a filter holding a NUL (`?engineer=%00`) matches no record in the local
/// file, but on the fleet's trail PostgreSQL refused the parameter and the API answered
/// 503 "audit unavailable": the two paths must answer alike.
#[tokio::test]
async fn a_nul_in_a_filter_matches_nothing_on_the_fleets_trail_too() {
    let (env, audit_db) = sink_env("review_nul_filter").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'nul filter probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "nul filter probe").await;
    let dave = env.client("dave");
    for filter in [
        AuditQuery {
            engineer: Some("eve\0".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            text: Some("nul\0".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            after_seq: Some(1),
            after_node: Some("node\0".into()),
            ..AuditQuery::default()
        },
    ] {
        let records = dave.audit(&filter).await;
        assert!(
            records.as_ref().is_ok_and(Vec::is_empty),
            "{filter:?}: {records:?}"
        );
    }
}

/// `GET /v1/audit?<query>` as `user`: the status and the body.
pub(crate) async fn get_audit(env: &Env, user: &str, query: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/v1/audit?{query}", env.deployment.server_url());
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&env.deployment.api_keys[user])
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Finding 3: `since=3000000d` (an age reaching before year 1) is a valid filter that
/// every record matches in the local file; on the fleet's trail chrono's RFC 3339 text of a
/// year before 1 is no `timestamptz` PostgreSQL reads, and the API answered 503.
#[tokio::test]
async fn an_ancient_since_or_until_reads_the_fleets_trail_like_the_file() {
    let (env, audit_db) = sink_env("review_ancient").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'ancient probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "ancient probe").await;
    let (status, body) = get_audit(&env, "dave", "text=ancient+probe&since=3000000d").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    let (status, body) = get_audit(&env, "dave", "until=3000000d").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(0), "{body}");
}

/// Finding 4: an audit database that holds the reader up (here the table locked by a
/// maintenance transaction; a stalled server does the same) made `GET /v1/audit` wait for
/// as long as the lock lasted: no error, no bound. It must answer with a clear error in
/// bounded time.
#[tokio::test]
async fn a_stalled_audit_database_is_a_bounded_clear_error() {
    let (env, audit_db) = sink_env("review_stalled").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'stall probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "stall probe").await;
    let (locker, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster().port)
        .user("postgres")
        .dbname(&audit_db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the audit database");
    let driver = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE lockbox_audit IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the table");
    let answer = tokio::time::timeout(
        Duration::from_secs(50),
        get_audit(&env, "dave", "text=stall+probe"),
    )
    .await;
    let _ = locker.batch_execute("ROLLBACK").await;
    driver.abort();
    let (status, body) = answer.expect("the API answered while the audit database stalled");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("audit database"), "{body}");
}

/// Finding 7: the file's records carry microseconds, and the local filter compares a
/// `since`/`until` to the nanosecond; PostgreSQL rounded the bound to the microsecond
/// (half to even), so `until` half a microsecond before a record (or `since` half after
/// it) still selected that record from the fleet's trail, never from the file.
#[tokio::test]
async fn sub_microsecond_bounds_select_what_the_file_selects() {
    let (env, audit_db) = sink_env("review_micros").await;
    let mut raw = session(&env).await;
    for i in 0..6 {
        raw.send(&query(&format!("SELECT 'micro probe {i}'"))).await;
        raw.read_until_ready().await;
    }
    wait_shipped(&audit_db, "micro probe 5").await;
    let mut mismatches = Vec::new();
    for i in 0..6 {
        let text = format!("micro+probe+{i}");
        let (_, records) = get_audit(&env, "dave", &format!("text={text}")).await;
        let time = records[0]["time"].as_str().expect("time").to_owned();
        let at = chrono::DateTime::parse_from_rfc3339(&time).expect("time");
        let half = chrono::Duration::nanoseconds(500);
        for (name, bound) in [("since", at + half), ("until", at - half)] {
            let bound = bound.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let q = format!("text={text}&{name}={}", bound.replace('+', "%2B"));
            let (status, body) = get_audit(&env, "dave", &q).await;
            if status != 200 || body.as_array().is_none_or(|a| !a.is_empty()) {
                mismatches.push(format!("{time} {name}={bound}: {status} {body}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// Connections the API holds open to the audit database for reading (the sink's own
/// writer has one more under the same application name).
pub(crate) fn audit_db_connections(audit_db: &str) -> usize {
    cluster()
        .psql(
            audit_db,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{audit_db}' \
                 AND application_name = 'lockbox-audit-sink'"
            ),
        )
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0)
}

/// Finding 8: every read of the fleet's trail opened a connection of its own to the
/// audit database, with no bound on how many at once: readers of a slow or locked table
/// (or a burst of page views by the customer's approvers) took every connection the
/// audit database has, the sink's reconnect included. At most a few read at once now.
#[tokio::test]
async fn concurrent_reads_hold_a_bounded_number_of_audit_database_connections() {
    let (env, audit_db) = sink_env("review_readers").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'readers probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "readers probe").await;
    let (locker, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster().port)
        .user("postgres")
        .dbname(&audit_db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the audit database");
    let driver = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE lockbox_audit IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the table");
    let env = std::sync::Arc::new(env);
    let readers: Vec<_> = (0..40)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { get_audit(&env, "dave", "text=readers+probe").await.0 })
        })
        .collect();
    let mut most = 0;
    for _ in 0..600 {
        most = most.max(audit_db_connections(&audit_db));
        if readers.iter().all(|r| r.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = locker.batch_execute("ROLLBACK").await;
    driver.abort();
    for reader in readers {
        let status = reader.await.expect("reader");
        assert_eq!(status, 503, "a read of a locked table is the stall error");
    }
    assert!(
        most <= 17,
        "{most} connections to the audit database at once"
    );
}

/// Finding 9: a download of the fleet's trail that its client stops reading held its
/// connection to the audit database (and its turn among the readers) for as long as the
/// client kept the socket open: a few such downloads starve every other read. A reader
/// that takes nothing for a while now loses its rows (the download ends in an error).
#[tokio::test]
async fn a_download_nobody_reads_lets_go_of_the_audit_database() {
    let (env, audit_db) = sink_env("review_unread").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'unread probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "unread probe").await;
    // Far more than the channel, the HTTP stack and the socket buffers hold.
    let line = format!(
        "{{\"seq\":0,\"time\":\"2026-01-01T00:00:00Z\",\"prev\":\"\",\"type\":\"statement\",\"statement\":\"{}\"}}",
        "x".repeat(400)
    );
    cluster()
        .psql(
            &audit_db,
            &format!(
                "INSERT INTO lockbox_audit (proxy_id, seq, \"time\", \"type\", record, line) \
                 SELECT 'node-x', g, '2026-01-01T00:00:00Z', 'statement', \
                 replace('{line}', '\"seq\":0', '\"seq\":' || g)::jsonb, \
                 replace('{line}', '\"seq\":0', '\"seq\":' || g) \
                 FROM generate_series(1, 100000) g"
            ),
        )
        .expect("many records");
    let cookie = web_sign_in(&env, "dave").await;
    let download = reqwest::Client::new()
        .get(format!(
            "{}/audit/download?format=jsonl",
            env.deployment.server_url()
        ))
        .header("cookie", cookie)
        .send()
        .await
        .expect("the download starts");
    assert_eq!(download.status().as_u16(), 200);
    // The download is kept open and never read; its reader must let go.
    let mut readers = usize::MAX;
    for _ in 0..900 {
        readers = audit_db_connections(&audit_db);
        if readers <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(download);
    assert!(
        readers <= 1,
        "{readers} connections to the audit database while a download sits unread: {}",
        cluster()
            .psql(
                &audit_db,
                "SELECT application_name, state, left(query, 60) FROM pg_stat_activity"
            )
            .unwrap_or_default()
    );
}

/// Finding 12: the fleet's cursor (`after_node` + `after_seq`) was a position in the
/// order (time, node, seq). A node whose sink lags ships records older than a cursor a
/// reader already holds, and paging on from it never showed them: a tool that follows the
/// fleet's trail through `Link` lost a lagging node's records without a sign. The fleet
/// pages in the table's arrival order now.
#[tokio::test]
async fn paging_on_from_a_cursor_shows_records_a_lagging_node_shipped_later() {
    let (env, audit_db) = sink_env("review_late").await;
    let mut raw = session(&env).await;
    raw.send(&query("SELECT 'late probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "late probe").await;
    let (_, first) = get_audit(&env, "dave", "limit=10000").await;
    let last = first.as_array().and_then(|a| a.last()).expect("a record");
    let cursor = format!(
        "after_node={}&after_seq={}",
        last["node"].as_str().expect("node"),
        last["seq"]
    );
    // node-2's sink catches up now with a record written a minute ago.
    let time = (chrono::Utc::now() - chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = serde_json::json!({
        "seq": 1, "time": time, "prev": "00".repeat(32), "node": "node-2",
        "type": "statement", "statement": "SELECT 2 AS late_record", "kind": "select",
    })
    .to_string();
    cluster()
        .psql(
            &audit_db,
            &format!(
                "INSERT INTO lockbox_audit (proxy_id, seq, \"time\", \"type\", record, line) \
                 VALUES ('node-2', 1, '{time}', 'statement', '{line}'::jsonb, '{line}')"
            ),
        )
        .expect("a late record");
    let (_, next) = get_audit(&env, "dave", &cursor).await;
    assert!(
        next.to_string().contains("late_record"),
        "paging on never shows the late record: {next}"
    );
}
