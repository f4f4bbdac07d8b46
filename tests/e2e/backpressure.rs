//! A client that sends faster than the server answers: a pipelined `executemany` of tens
//! of thousands of rows. Each Bind is a change to the session's portals that waits for the
//! server's BindComplete; past a bound the relay reads no more from the client until the
//! server has answered (and sends a Flush so that it does), where it used to end the
//! session at 10,000 changes waiting. After an early error the server discards the rest up
//! to the Sync, and answers none of it: those messages are not kept as changes at all.

use lockbox::policy::AccessLevel;
use lockbox::wire::{BackendEvent, BackendScanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, message, python, query, Env, Raw};

/// Sends `pipeline` while reading what comes back until `readies` ReadyForQuery; returns
/// the DataRows and the errors' SQLSTATEs.
async fn pipelined(raw: Raw, pipeline: Vec<u8>, readies: usize) -> (usize, Vec<String>) {
    let (mut reader, mut writer) = raw.stream.into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(&pipeline).await.expect("send");
        writer
    });
    let mut got = Vec::new();
    let mut scanner = BackendScanner::counting_rows(true);
    let (mut rows, mut ready, mut codes) = (0, 0, Vec::new());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while ready < readies {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout_at(deadline, reader.read(&mut chunk))
            .await
            .expect("the pipeline's answers in time")
            .expect("read");
        assert!(n > 0, "closed: {:?}", errors_in(&got));
        let mut events = Vec::new();
        scanner.feed(&chunk[..n], &mut events);
        for event in events {
            match event {
                BackendEvent::DataRow => rows += 1,
                BackendEvent::Ready(_) => ready += 1,
                BackendEvent::Error { sqlstate, .. } => codes.push(sqlstate),
                _ => {}
            }
        }
        got.extend_from_slice(&chunk[..n.min(4096)]);
    }
    sending.await.expect("sent");
    (rows, codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_tens_of_thousands_of_executes_completes() {
    let env = Env::start("backpressure_raw").await;
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    const ROWS: usize = 25_000;
    let mut pipeline = [parse("s", "SELECT 1"), sync()].concat();
    for _ in 0..ROWS {
        pipeline.extend(bind("", "s"));
        pipeline.extend(execute(""));
    }
    pipeline.extend(sync());
    pipeline.extend(query("SELECT 2"));
    let (rows, codes) = pipelined(raw, pipeline, 3).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows, ROWS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_server_skips_after_an_early_error_is_not_kept() {
    // 900 KiB Parses the server discards after the first fails (42P05): 100 of them would
    // pass the proxy's bound on statement text waiting for an answer, had they been kept.
    let env = Env::start("backpressure_skipped").await;
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let big = format!("SELECT 1 WHERE '{}' <> ''", "x".repeat(900 << 10));
    let mut pipeline = [parse("s", "SELECT 1"), sync()].concat();
    for _ in 0..100 {
        pipeline.extend(parse("s", &big));
    }
    pipeline.extend(sync());
    pipeline.extend(query("SELECT 2"));
    let (rows, codes) = pipelined(raw, pipeline, 3).await;
    assert_eq!(codes, ["42P05"]);
    assert_eq!(rows, 1, "the session goes on");
}

/// Syncs pipelined behind a long statement change no name, yet each waits for its
/// ReadyForQuery: the relay reads no more of them than its bound until the server answers
/// (an attack review queued 1.4 million per session, which took the proxy down). Each is
/// still answered, in order, and other sessions are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_pipelined_behind_a_long_statement_are_each_answered() {
    let env = Env::start("backpressure_syncs").await;
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    const SYNCS: usize = 30_000;
    let mut pipeline = query("SELECT pg_sleep(0.5)");
    pipeline.extend(sync().repeat(SYNCS));
    pipeline.extend(query("SELECT 2"));
    let flood = tokio::spawn(pipelined(raw, pipeline, SYNCS + 2));
    let (client, _conn) = env.connect("eve", &token).await.expect("login beside it");
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!(one, 1);
    let (rows, codes) = flood.await.expect("answered");
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows, 2, "pg_sleep's row and SELECT 2's");
}

/// Executes sent after the server reported an extended error, before the Sync, are skipped
/// by the server: each is recorded, with its outcome `not_executed`, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executes_sent_while_the_server_skips_are_recorded_not_executed() {
    let env = Env::start("backpressure_skipping").await;
    let (id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    // The error reaches the proxy before the rest is sent: what follows is certain to be
    // skipped.
    raw.send(
        &[
            parse("s", "SELECT 1/0 AS skipped_probe"),
            bind("", "s"),
            execute(""),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    raw.read_until(|events| {
        events
            .iter()
            .any(|e| matches!(e, BackendEvent::Error { .. }))
    })
    .await;
    const SKIPPED: usize = 2_000;
    let mut rest = Vec::new();
    for _ in 0..SKIPPED {
        rest.extend(bind("", "s"));
        rest.extend(execute(""));
    }
    rest.extend(sync());
    rest.extend(query("SELECT 2"));
    let (rows, codes) = pipelined(raw, rest, 2).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows, 1, "the session goes on");
    let records = env
        .wait_for_audit("the skipped executes' outcomes", |records| {
            records
                .iter()
                .filter(|r| {
                    r["type"] == "outcome"
                        && r["request_id"] == id.as_str()
                        && r["status"] == "not_executed"
                })
                .count()
                >= SKIPPED
        })
        .await;
    let probes: Vec<u64> = records
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["statement"]
                    .as_str()
                    .is_some_and(|s| s.contains("skipped_probe"))
        })
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(probes.len(), SKIPPED + 1, "every Execute recorded");
    let not_executed = records
        .iter()
        .filter(|r| r["type"] == "outcome" && r["status"] == "not_executed")
        .filter_map(|r| r["statement_seq"].as_u64())
        .filter(|seq| probes.contains(seq))
        .count();
    assert_eq!(
        not_executed, SKIPPED,
        "each skipped one settled as not executed"
    );
}

/// CopyDone and CopyFail where no COPY runs are ignored by the server, which answers
/// nothing: a session that sent thousands (a review's) still runs what it sends next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_ends_outside_a_copy_leave_the_session_working() {
    let env = Env::start("backpressure_copy_ends").await;
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let mut stray = message(b'c', b"").repeat(12_000);
    stray.extend(message(b'f', b"gone\0").repeat(12_000));
    raw.send(&stray).await;
    let (rows, codes) = pipelined(raw, query("SELECT 2"), 1).await;
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(rows, 1);
}

/// CopyDones sent for COPYs that an error in their query string made the server skip wait
/// for no answer: more of them than the bound on unanswered messages must not hold the
/// session's next query (a review's 8,300 did, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_ends_of_skipped_copies_do_not_hold_the_next_query() {
    let env = Env::start("backpressure_skipped_copies").await;
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    const COPIES: usize = 8_300;
    let text = format!("SELECT 1/0;{}", "COPY items FROM STDIN;".repeat(COPIES));
    let mut pipeline = query(&text);
    pipeline.extend(message(b'c', b"").repeat(COPIES));
    pipeline.extend(query("SELECT 2"));
    let (rows, codes) = pipelined(raw, pipeline, 2).await;
    assert_eq!(codes, ["22012"]);
    assert_eq!(rows, 1, "the query after them runs");
}

const EXECUTEMANY: &str = r#"
import asyncio, os, asyncpg, psycopg

kw = dict(host="127.0.0.1", port=int(os.environ["LB_PORT"]), user="eve",
          password=os.environ["LB_TOKEN"])
N = 30000
out = []
with psycopg.connect(dbname=os.environ["LB_DB"], autocommit=True, **kw) as conn:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items (id, name) VALUES (%s, 'row')",
                        [(1000 + i,) for i in range(N)])
    out.append(conn.execute("SELECT count(*) FROM items").fetchone()[0])

async def main():
    conn = await asyncpg.connect(database=os.environ["LB_DB"], **kw)
    await conn.executemany("INSERT INTO items (id, name) VALUES ($1, 'row')",
                           [(100000 + i,) for i in range(N)])
    out.append(await conn.fetchval("SELECT count(*) FROM items"))
    try:
        # The fifth row fails: the server discards the rest of the batch.
        await conn.executemany("INSERT INTO items (id, name) VALUES ($1, 'row')",
                               [(200000 + i if i != 4 else 1,) for i in range(N)])
    except asyncpg.PostgresError as e:
        out.append(e.sqlstate)
    out.append(await conn.fetchval("SELECT count(*) FROM items"))
    await conn.close()

asyncio.run(main())
print(" ".join(str(x) for x in out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_executemany_of_30000_rows() {
    let env = Env::start("backpressure_clients").await;
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let stdout = python(&env, &token, EXECUTEMANY);
    assert_eq!(stdout, "30010 60010 23505 60010");
}
