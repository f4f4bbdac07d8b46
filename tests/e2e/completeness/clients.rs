//! Real clients under a read grant: pg_dump in its three formats (directory with two jobs),
//! psql's backslash commands, asyncpg and psycopg 3, each through lockbox with the token as
//! the password. Each must succeed, and every statement the server logged for it must have
//! its audit record (the completeness comparison, sessions paired by content since real
//! clients start with statements of their own).
//!
//! A missing client (pg_dump, psql, python3, asyncpg, psycopg) fails the test loudly:
//! `.ci/run` installs them.

use std::path::Path;
use std::process::{Command, Output};

use lockbox::policy::AccessLevel;

use super::compare::compare_by_content;
use super::{audit_sessions, logging_cluster, marker, server_sessions, settled_audit};
use crate::harness::{python, Env, Options};

/// A schema with one of each kind of object pg_dump has to read: functions, a trigger, a
/// domain, composite and enum types, a sequence, a view, data.
const SCHEMA: &str = "SET ROLE lockbox_svc;
    CREATE SCHEMA shop;
    CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TYPE shop.pair AS (a int, b text);
    CREATE DOMAIN shop.positive AS int CHECK (VALUE > 0);
    CREATE SEQUENCE shop.order_no START 100;
    CREATE TABLE shop.orders (
        id int PRIMARY KEY DEFAULT nextval('shop.order_no'),
        qty shop.positive NOT NULL,
        mood shop.mood NOT NULL,
        extra shop.pair
    );
    INSERT INTO shop.orders (qty, mood, extra) VALUES (1, 'ok', (1, 'x')), (2, 'happy', (2, 'y;z'));
    CREATE VIEW shop.happy_orders AS SELECT * FROM shop.orders WHERE mood = 'happy';
    CREATE FUNCTION shop.total() RETURNS bigint LANGUAGE sql STABLE
        AS $$ SELECT sum(qty) FROM shop.orders $$;
    CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql
        AS $body$ BEGIN NEW.qty := NEW.qty; RETURN NEW; END $body$;
    CREATE TRIGGER orders_touch BEFORE UPDATE ON shop.orders
        FOR EACH ROW EXECUTE FUNCTION shop.touch();
    COMMENT ON TABLE shop.orders IS 'it''s; a comment';
    GRANT USAGE ON SCHEMA shop TO lockbox_read;
    GRANT SELECT ON ALL TABLES IN SCHEMA shop TO lockbox_read;
    GRANT SELECT ON ALL SEQUENCES IN SCHEMA shop TO lockbox_read;
    GRANT SELECT ON secrets TO lockbox_read;";

/// A database with the schema, a read grant on it, and its token.
async fn read_env(name: &str) -> (Env, String, String) {
    let env = Env::with(
        name,
        Options {
            cluster: Some(logging_cluster()),
            ..Default::default()
        },
    )
    .await;
    env.superuser_sql(SCHEMA);
    let (id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    (env, id, token)
}

fn run(what: &str, command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run {what} (is it installed? .ci/run installs it): {e}")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every statement the server logged in this database has its audit record, and the audit
/// holds none the server did not log. A last session through lockbox marks the end.
async fn assert_audited(env: &Env, request: &str, clients: &str) {
    let end = marker(&format!("{}-end", env.db));
    {
        let token = env.client("eve").token(request).await.expect("token").token;
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        client.batch_execute(&end).await.expect("end marker");
    }
    let ids = [request.to_owned()];
    let audit = settled_audit(env, &ids).await;
    let statements = audit.iter().filter(|r| r["type"] == "statement").count();
    assert!(
        statements > 3,
        "{clients}: only {statements} statement records"
    );
    let server = server_sessions(env, &end).await;
    let sessions: Vec<_> = audit_sessions(&audit, &ids)
        .into_iter()
        .map(|(_, records)| records)
        .collect();
    let problems = compare_by_content(&server, &sessions);
    assert!(
        problems.is_empty(),
        "{clients}: the audit and the server's statement log disagree:\n{}",
        problems.join("\n")
    );
}

fn connection_args(env: &Env) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &env.proxy_port().to_string(),
        "-U",
        "eve",
        "-d",
        &env.db,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn restore_list(env: &Env, archive: &Path) -> String {
    let out = run(
        "pg_restore -l",
        Command::new(env.pg.bin_dir().join("pg_restore"))
            .arg("-l")
            .arg(archive),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_plain_custom_and_parallel_directory_under_a_read_grant() {
    let (env, request, token) = read_env("clients_pg_dump").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg_dump = env.pg.bin_dir().join("pg_dump");
    let dump = |format: &[&str], target: &Path| {
        run(
            &format!("pg_dump {format:?}"),
            Command::new(&pg_dump)
                .args(connection_args(&env))
                .args(format)
                .arg("-f")
                .arg(target)
                .env("PGPASSWORD", &token),
        );
    };
    let plain = dir.path().join("plain.sql");
    dump(&[], &plain);
    let text = std::fs::read_to_string(&plain).expect("plain dump");
    for expected in [
        "CREATE TYPE shop.mood AS ENUM",
        "CREATE TYPE shop.pair AS",
        "CREATE DOMAIN shop.positive",
        "CREATE SEQUENCE shop.order_no",
        "CREATE VIEW shop.happy_orders",
        "CREATE FUNCTION shop.total()",
        "CREATE TRIGGER orders_touch",
        "COPY shop.orders (id, qty, mood, extra) FROM stdin;",
        "(2,y;z)",
        "SELECT pg_catalog.setval('shop.order_no', 101, true);",
    ] {
        assert!(
            text.contains(expected),
            "no {expected:?} in the dump:\n{text}"
        );
    }

    let custom = dir.path().join("custom.dump");
    dump(&["-Fc"], &custom);
    let list = restore_list(&env, &custom);
    assert!(list.contains("TABLE DATA shop orders"), "{list}");

    let directory = dir.path().join("directory");
    dump(&["-Fd", "-j", "2"], &directory);
    let list = restore_list(&env, &directory);
    for expected in [
        "TABLE DATA shop orders",
        "TABLE DATA public items",
        "VIEW shop happy_orders",
    ] {
        assert!(list.contains(expected), "{expected}: {list}");
    }

    assert_audited(&env, &request, "pg_dump").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_backslash_commands_under_a_read_grant() {
    let (env, request, token) = read_env("clients_psql").await;
    let commands: &[(&str, &str)] = &[
        (r"\d", "items"),
        (r"\dt", "secrets"),
        (r"\d shop.orders", "orders_touch"),
        (r"\d+ shop.happy_orders", "View definition"),
        (r"\df shop.*", "total"),
        (r"\dT shop.*", "mood"),
        (r"\dD shop.*", "positive"),
        (r"\dn", "shop"),
        (r"\dv shop.*", "happy_orders"),
        (r"\ds shop.*", "order_no"),
        (r"\dp shop.*", "lockbox_read"),
        (r"\l", &env.db),
        (r"\du", "lockbox_read"),
        (r"\dx", "plpgsql"),
        (r"\sf shop.total", "sum(qty)"),
        (r"\encoding", "UTF8"),
        (r"\conninfo", "You are connected"),
    ];
    for (command, expected) in commands {
        let out = run(
            &format!("psql {command}"),
            Command::new(env.pg.bin_dir().join("psql"))
                .args(["-X", "-v", "ON_ERROR_STOP=1"])
                .args(connection_args(&env))
                .args(["-c", command])
                .env("PGPASSWORD", &token),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(expected),
            "psql {command}: no {expected:?} in\n{stdout}"
        );
    }
    assert_audited(&env, &request, "psql").await;
}

const ASYNCPG: &str = r#"
import asyncio, os, asyncpg

async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(os.environ["LB_PORT"]),
                                 user="eve", password=os.environ["LB_TOKEN"],
                                 database=os.environ["LB_DB"])
    async with conn.transaction(readonly=True, isolation="serializable", deferrable=True):
        rows = await conn.fetch(
            "SELECT id, qty, mood, extra FROM shop.orders WHERE qty > $1 ORDER BY id", 0)
        total = await conn.fetchval("SELECT shop.total()")
    await conn.close()
    print(len(rows), rows[1]["mood"], rows[1]["extra"]["b"], total)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_read_only_serializable_deferrable_transaction_under_a_read_grant() {
    let (env, request, token) = read_env("clients_asyncpg").await;
    assert_eq!(python(&env, &token, ASYNCPG), "2 happy y;z 3");
    assert_audited(&env, &request, "asyncpg").await;
}

const PSYCOPG: &str = r#"
import os, psycopg

with psycopg.connect(host="127.0.0.1", port=int(os.environ["LB_PORT"]), user="eve",
                     password=os.environ["LB_TOKEN"], dbname=os.environ["LB_DB"]) as conn:
    conn.read_only = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.orders WHERE qty > %s AND mood <> %s", (0, "sad"))
        count = cur.fetchone()[0]
    with conn.cursor(name="orders; cursor") as cur:
        cur.itersize = 1
        cur.execute("SELECT id, mood FROM shop.orders WHERE qty >= %s ORDER BY id", (1,))
        moods = [row[1] for row in cur]
    conn.commit()
print(count, ",".join(moods))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_read_only_session_and_named_cursor_under_a_read_grant() {
    let (env, request, token) = read_env("clients_psycopg").await;
    assert_eq!(python(&env, &token, PSYCOPG), "2 ok,happy");
    assert_audited(&env, &request, "psycopg").await;
}
