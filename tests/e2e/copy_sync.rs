//! A Sync sent inside COPY FROM STDIN data: PostgreSQL ignores it while the COPY runs but
//! answers it once the COPY has failed (on an earlier bad row), and which happens is decided
//! inside the server. An attack review used it to put every later reply one statement off:
//! a DELETE ran under the record of a SELECT, the row limit counted a table's rows against a
//! catalog query, and a statement past the grant's timeout was never cancelled. Such a Sync
//! now ends the session before it is forwarded; COPY as clients really send it (data, then
//! CopyDone or CopyFail, then a Sync in the extended protocol) is unchanged, bad rows
//! included. A Sync sent before the COPY's data (libpq's extended protocol sends one right
//! after the Execute) waits until the server has started or failed the COPY: see
//! `copy_gate.rs` and the relay's `hold.rs`.

use lockbox::policy::{AccessLevel, NewRequest};
use lockbox::wire::BackendEvent;

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, message, python, query, Env, Raw};

fn copy_data(row: &str) -> Vec<u8> {
    message(b'd', row.as_bytes())
}

fn copy_done() -> Vec<u8> {
    message(b'c', b"")
}

async fn write_session(env: &Env, max_rows: Option<u64>) -> (String, Raw) {
    let (id, token) = env
        .approved(
            "eve",
            NewRequest {
                database: env.db.clone(),
                ticket: "T-8".into(),
                reason: "load a fix".into(),
                access: AccessLevel::Write,
                duration: Some("1h".into()),
                max_rows,
                ..NewRequest::default()
            },
        )
        .await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    (id, raw)
}

fn codes(bytes: &[u8]) -> Vec<String> {
    errors_in(bytes).into_iter().map(|(code, _)| code).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_inside_copy_data_ends_the_session_and_nothing_after_it_runs() {
    let env = Env::start("copy_sync_pipelined").await;
    let (id, mut raw) = write_session(&env, Some(5)).await;
    // All in one write: the COPY, a bad row, the Sync, then what would have been answered
    // one reply off.
    raw.send(
        &[
            query("COPY items (id, name) FROM STDIN"),
            copy_data("x\ty\n"),
            sync(),
            copy_data("70\tseventy\n"),
            copy_done(),
            query("DELETE FROM items WHERE id > 5"),
            query("SELECT * FROM items"),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_to_close().await;
    assert_eq!(codes(&answer), ["08P01"], "{:?}", errors_in(&answer));
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    let end = env
        .wait_for_audit("the session's end", |t| {
            t.iter()
                .any(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
        })
        .await;
    let reason = end
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("Sync sent inside COPY"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_after_the_server_asked_for_copy_data_ends_the_session() {
    let env = Env::start("copy_sync_started").await;
    let (_id, mut raw) = write_session(&env, None).await;
    raw.send(&query("COPY items (id, name) FROM STDIN")).await;
    raw.read_until(|events| events.contains(&BackendEvent::CopyIn))
        .await;
    raw.send(
        &[
            copy_data("x\ty\n"),
            sync(),
            parse("s1", "DELETE FROM items"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_to_close().await;
    assert!(
        codes(&answer).contains(&"08P01".to_owned()),
        "{:?}",
        errors_in(&answer)
    );
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_a_bad_row_then_copy_done_goes_on_as_before() {
    let env = Env::start("copy_sync_legit").await;
    let (id, mut raw) = write_session(&env, None).await;
    raw.send(&query("COPY items (id, name) FROM STDIN")).await;
    raw.read_until(|events| events.contains(&BackendEvent::CopyIn))
        .await;
    raw.send(&[copy_data("x\ty\n"), copy_done()].concat()).await;
    let failed = raw.read_until_ready_after_error().await;
    assert_eq!(codes(&failed), ["22P02"]);
    raw.send(&query("SELECT count(*) FROM items")).await;
    let counted = raw.read_until_ready().await;
    assert!(codes(&counted).is_empty());
    let trail = env
        .wait_for_audit("the count's outcome", |t| {
            t.iter()
                .any(|r| r["type"] == "outcome" && r["command_tag"] == "SELECT 1")
        })
        .await;
    let outcomes: Vec<(String, String)> = trail
        .iter()
        .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_owned(),
                r["sqlstate"]
                    .as_str()
                    .or(r["command_tag"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("error".to_owned(), "22P02".to_owned()),
            ("ok".to_owned(), "SELECT 1".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_copy_whose_data_loads_keeps_its_session() {
    // As libpq's PQexecParams sends it: the Sync right after the Execute, which the server
    // reads inside the COPY and ignores, and another after CopyDone.
    let env = Env::start("copy_sync_extended").await;
    let (_id, mut raw) = write_session(&env, None).await;
    raw.send(
        &[
            parse("", "COPY items (id, name) FROM STDIN"),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.read_until(|events| events.contains(&BackendEvent::CopyIn))
        .await;
    raw.send(&[copy_data("70\tseventy\n"), copy_done(), sync()].concat())
        .await;
    let loaded = raw.read_until_ready().await;
    assert!(codes(&loaded).is_empty(), "{:?}", errors_in(&loaded));
    raw.send(&query("SELECT count(*) FROM items")).await;
    assert!(codes(&raw.read_until_ready().await).is_empty());
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "11");
}

const CLIENTS_COPY: &str = r#"
import asyncio, os, asyncpg, psycopg

kw = dict(host="127.0.0.1", port=int(os.environ["LB_PORT"]), user="eve",
          password=os.environ["LB_TOKEN"])
out = []
with psycopg.connect(dbname=os.environ["LB_DB"], autocommit=True, **kw) as conn:
    try:
        with conn.cursor().copy("COPY items (id, name) FROM STDIN") as copy:
            for i in range(20000):
                copy.write_row(("x" if i == 10 else 100 + i, "row"))
    except psycopg.Error as e:
        out.append(e.sqlstate)
    out.append(conn.execute("SELECT count(*) FROM items").fetchone()[0])

async def main():
    conn = await asyncpg.connect(database=os.environ["LB_DB"], **kw)
    try:
        await conn.copy_records_to_table(
            "items", records=[(100 + i, "row") if i != 10 else (None, "row") for i in range(20000)])
    except asyncpg.PostgresError as e:
        out.append(e.sqlstate)
    out.append(await conn.fetchval("SELECT count(*) FROM items"))
    await conn.close()

asyncio.run(main())
print(" ".join(str(x) for x in out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_copy_with_a_bad_row_keep_their_sessions() {
    let env = Env::start("copy_sync_clients").await;
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let stdout = python(&env, &token, CLIENTS_COPY);
    // Each COPY fails on its bad row (22P02 text for an int, 23502 NULL), nothing of it
    // is kept, and the same connection goes on.
    assert_eq!(stdout, "22P02 10 23502 10");
}
