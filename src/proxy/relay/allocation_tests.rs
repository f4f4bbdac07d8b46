//! What a warm session's statement costs in heap allocations, through the whole relay: the
//! client's message inspected and recorded, the server's reply scanned, tracked and its
//! outcome recorded. The proxy sits on every query's path, so a statement should allocate
//! only what it keeps (its record's text, the command tag its outcome names…), and an
//! allocation added on this path fails these tests. The budgets are what each path costs
//! now; lower one when a change makes the path cheaper.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::fuzz::message;
use super::{Grant, Relay};
use crate::allocations;
use crate::audit::{AuditLog, AuditOptions, SessionFields};
use crate::config::Durability;
use crate::proxy::registry::Control;

/// A query string may allocate this many times: its record's text, its analysis (moved to
/// its literals from the cached shape) and its outcome's command tag.
const QUERY_STRING: u64 = 3;
/// A Bind and Execute of a prepared statement: the Bind's parameter list as read, its
/// value, and the list the portal and its Executes' records share; the outcome's command
/// tag. The Execute's record shares the statement's text and the portal's parameters.
const PREPARED: u64 = 4;
/// As `PREPARED`, with a Parse of the unnamed statement each time: its text, which the
/// statement keeps and its records share.
const EXTENDED: u64 = 5;
const WARM_UP: usize = 50;
const MEASURED: usize = 200;

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// pgbench -S's statement with literal `aid`, sent as a query string.
fn simple(aid: usize) -> Vec<u8> {
    message(
        b'Q',
        &cstring(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        )),
    )
}

/// The same with the extended protocol, unnamed statement and portal (pgbench -M extended).
fn extended(aid: usize) -> Vec<u8> {
    let text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let mut parse = cstring("");
    parse.extend_from_slice(&cstring(text));
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut out = message(b'P', &parse);
    out.extend_from_slice(&message(b'B', &bind("", &aid.to_string())));
    out.extend_from_slice(&message(b'E', &[0, 0, 0, 0, 0]));
    out.extend_from_slice(&message(b'S', &[]));
    out
}

/// pgbench -M prepared: the statement parsed once under a name (the first request), then
/// bound and executed each time.
fn prepared(aid: usize, first: bool) -> Vec<u8> {
    let text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let mut out = Vec::new();
    if first {
        let mut parse = cstring("P0_1");
        parse.extend_from_slice(&cstring(text));
        parse.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&message(b'P', &parse));
    }
    out.extend_from_slice(&message(b'B', &bind("P0_1", &aid.to_string())));
    out.extend_from_slice(&message(b'E', &[0, 0, 0, 0, 0]));
    out.extend_from_slice(&message(b'S', &[]));
    out
}

/// A Bind of `statement` to the unnamed portal with one text parameter.
fn bind(statement: &str, value: &str) -> Vec<u8> {
    let mut b = cstring("");
    b.extend_from_slice(&cstring(statement));
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value.as_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// The server's answer to one statement; `steps` are the ParseComplete/BindComplete before it.
fn reply(steps: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        out.extend_from_slice(&message(*step, &[]));
    }
    let mut field = cstring("abalance");
    field.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
    ]);
    let mut description = 1i16.to_be_bytes().to_vec();
    description.extend_from_slice(&field);
    out.extend_from_slice(&message(b'T', &description));
    let mut row = 1i16.to_be_bytes().to_vec();
    row.extend_from_slice(&1i32.to_be_bytes());
    row.push(b'0');
    out.extend_from_slice(&message(b'D', &row));
    out.extend_from_slice(&message(b'C', &cstring("SELECT 1")));
    out.extend_from_slice(&message(b'Z', b"I"));
    out
}

/// Allocations on this thread per statement, over `MEASURED` statements after `WARM_UP`,
/// for a client sending `requests` one at a time and a server answering each with its
/// `answers` entry. Everything the test itself needs is built before it counts.
fn allocations_per_statement(requests: Vec<Vec<u8>>, answers: Vec<Vec<u8>>) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = AuditOptions {
        durability: Durability::Write,
        ..AuditOptions::default()
    };
    runtime.block_on(async {
        let (audit, _syncer) =
            AuditLog::open_with(&dir.path().join("audit.jsonl"), None, options).expect("audit");
        let session = Arc::new(SessionFields::new(
            "alloc".into(),
            "req-alloc".into(),
            "T-1".into(),
            "eve@example.com".into(),
            "sales".into(),
            "127.0.0.1:1".into(),
            false,
        ));
        let (client_relay, mut client) = tokio::io::duplex(64 * 1024);
        let (upstream_relay, mut server) = tokio::io::duplex(64 * 1024);
        let (_kill, kill_rx) = watch::channel(Control::Run);
        let grant = Grant::plain_read(chrono::Utc::now() + chrono::Duration::hours(1));
        let relay = Relay::new(
            Box::new(client_relay),
            Box::new(upstream_relay),
            BytesMut::new(),
            session,
            audit,
            1 << 20,
            kill_rx,
            super::monotonic_deadline(grant.ends_at),
            grant,
        );
        let longest = |all: &[Vec<u8>]| all.iter().map(Vec::len).max().unwrap_or(0);
        let mut to_server = vec![0; longest(&requests)];
        let mut to_client = vec![0; longest(&answers)];
        let drive = async {
            let mut before = 0;
            for (i, (request, answer)) in requests.iter().zip(&answers).enumerate() {
                if i == WARM_UP {
                    before = allocations::count();
                }
                client.write_all(request).await.expect("client write");
                let got = &mut to_server[..request.len()];
                server.read_exact(got).await.expect("server read");
                assert_eq!(got, &request[..], "the server gets the client's bytes");
                server.write_all(answer).await.expect("server write");
                let got = &mut to_client[..answer.len()];
                client.read_exact(got).await.expect("client read");
                assert_eq!(got, &answer[..], "the client gets the server's bytes");
            }
            let spent = allocations::count() - before;
            drop(client);
            spent
        };
        let (_end, spent) = tokio::join!(relay.run(), drive);
        spent as f64 / MEASURED as f64
    })
}

fn check(what: &str, requests: Vec<Vec<u8>>, budget: u64, answer: impl Fn(usize) -> Vec<u8>) {
    // The counter sees this thread's allocations at all.
    let before = allocations::count();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    assert_eq!(allocations::count() - before, 1);
    let answers = (0..requests.len()).map(answer).collect();
    let per_statement = allocations_per_statement(requests, answers);
    assert!(
        per_statement <= budget as f64,
        "{what}: {per_statement} allocations per statement, at most {budget} expected"
    );
}

#[test]
fn a_warm_query_string_allocates_only_what_it_keeps() {
    let requests = (0..WARM_UP + MEASURED)
        .map(|i| simple(10_000 + i))
        .collect();
    check("query string", requests, QUERY_STRING, |_| reply(&[]));
}

#[test]
fn a_warm_prepared_statement_allocates_only_what_it_keeps() {
    let requests = (0..WARM_UP + MEASURED)
        .map(|i| prepared(10_000 + i, i == 0))
        .collect();
    check("prepared", requests, PREPARED, |i| {
        reply(if i == 0 { b"12" } else { b"2" })
    });
}

#[test]
fn a_warm_extended_statement_allocates_only_what_it_keeps() {
    let requests = (0..WARM_UP + MEASURED)
        .map(|i| extended(10_000 + i))
        .collect();
    check("extended", requests, EXTENDED, |_| reply(b"12"));
}
