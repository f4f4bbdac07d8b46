//! Seeded extended-protocol pipelines for the differential test: Parse, Bind, Describe,
//! Execute (all rows or one), Close, Flush and query strings in random order, each batch
//! ended by a Sync. Failing messages are mixed in on purpose — a Bind or Describe of a
//! statement that does not exist, a Close of an unknown kind, a statement that divides by
//! zero as it runs — because after each the server skips every message up to the Sync,
//! query strings included, and the audit must still name what the server ran and nothing
//! else. Written from the protocol's rules (postgres.c: `ignore_till_sync`), not from
//! lockbox's tracker.
//!
//! What it leaves out keeps the comparison's rules simple: no Parse fails (its ERROR line
//! would name a statement no Execute ever asked for), named statements are parsed once each
//! (a second Parse of a name fails the same way), and only portals bound earlier in the batch,
//! after its last query string, are executed (a query string ends the implicit
//! transaction, and its portals with it).

use lockbox::wire::BackendEvent;

use super::generator::Rng;
use super::server_log::{Logged, ServerSession};
use crate::frontend::{bind, close, describe, execute_rows, parse, sync};
use crate::harness::{message, query, Raw};

/// Batches per run (each a handful of messages and its Sync).
const BATCHES: usize = 80;

/// What each batch ends with: its rows count (`SELECT 7`) tells its reply is whole.
const BATCH_END: &str = "SELECT generate_series(1, 7)";

/// A statement that fails as it runs (not while planned, which would fail its Bind): the
/// server logs it, then its ERROR.
fn failing(k: usize) -> String {
    format!("SELECT {k} / (random() * 0)::int")
}

/// One batch of messages, sent in one write.
fn batch(rng: &mut Rng, k: usize, named: &mut Vec<String>) -> Vec<u8> {
    let mut out = Vec::new();
    // Portals bound in this batch since its last query string.
    let mut bound: Vec<&'static str> = Vec::new();
    for i in 0..1 + rng.below(8) {
        let tag = k * 10 + i;
        let known = |rng: &mut Rng, named: &[String]| -> String {
            if named.is_empty() || rng.percent(40) {
                String::new()
            } else {
                named[rng.below(named.len())].clone()
            }
        };
        match rng.below(11) {
            0 | 1 => {
                let sql = if rng.percent(25) {
                    failing(tag)
                } else {
                    format!("SELECT {tag} AS n")
                };
                let name = if rng.percent(30) {
                    let name = format!("s{tag}");
                    named.push(name.clone());
                    name
                } else {
                    String::new()
                };
                out.extend(parse(&name, &sql));
            }
            2 | 3 => {
                let portal = if rng.percent(50) { "" } else { "p" };
                let statement = if rng.percent(10) {
                    "missing".to_owned()
                } else {
                    known(rng, named)
                };
                out.extend(bind(portal, &statement));
                bound.push(portal);
            }
            4 | 5 if !bound.is_empty() => {
                let portal = bound[rng.below(bound.len())];
                out.extend(execute_rows(portal, if rng.percent(30) { 1 } else { 0 }));
            }
            6 => {
                let statement = if rng.percent(15) {
                    "missing".to_owned()
                } else {
                    known(rng, named)
                };
                out.extend(describe(b'S', &statement));
            }
            7 if !bound.is_empty() => {
                out.extend(describe(b'P', bound[rng.below(bound.len())]));
            }
            8 => {
                let kind = if rng.percent(20) { b'Z' } else { b'P' };
                out.extend(close(kind, "p"));
                bound.retain(|p| *p != "p");
            }
            9 => {
                let sql = match rng.below(3) {
                    0 => format!("SELECT {tag} AS q"),
                    1 => format!("SELECT {tag} AS q; {}", failing(tag)),
                    _ => format!("SELECT 'x{tag}'; SELECT {tag} + 1"),
                };
                out.extend(query(&sql));
                bound.clear();
            }
            _ => out.extend(message(b'H', b"")),
        }
    }
    out.extend(sync());
    out.extend(query(BATCH_END));
    out
}

/// Runs the generated batches on a logged-in session (its marker sent already).
pub async fn run(raw: &mut Raw, seed: u64) {
    let mut rng = Rng(seed ^ 0x9d0c_0a11);
    let mut named = Vec::new();
    for k in 0..BATCHES {
        let bytes = batch(&mut rng, k, &mut named);
        raw.send(&bytes).await;
        raw.read_until(|events| {
            events
                .iter()
                .rev()
                .skip(1)
                .any(|e| *e == BackendEvent::Complete("SELECT 7".into()))
                && matches!(events.last(), Some(BackendEvent::Ready(_)))
        })
        .await;
    }
}

/// The session's lines without its ERROR lines: a failing Bind, Describe or Close is logged
/// with the statement text the backend last had, which names no statement of its own.
pub fn without_error_lines(session: &mut ServerSession) {
    session
        .statements
        .retain(|line| !matches!(line, Logged::Failed { .. }));
}
