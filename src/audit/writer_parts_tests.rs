//! A large append is written in parts, the lock let go between them, so other sessions'
//! records are not held up behind a query string of thousands of statements.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::trail_tests::opened;
use super::*;
use crate::audit::append::WRITE_PART;
use crate::audit::chain::verify;
use crate::audit::{RequestEvent, RequestRecord};

/// A record of about `bytes` bytes, told apart by `ticket`.
fn event(ticket: &str, bytes: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: "req-1".into(),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: "sales".into(),
        ticket: ticket.into(),
        access: "read".into(),
        reason: Some("r".repeat(bytes)),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

/// The trail's records: (seq, ticket).
fn tickets(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|r| r["type"] == "request")
        .map(|r| {
            let seq = r["seq"].as_u64().expect("seq");
            (seq, r["ticket"].as_str().expect("ticket").to_owned())
        })
        .collect()
}

/// 100 records of 10 kB: about four parts.
fn large_batch() -> Vec<AuditEvent> {
    (0..100)
        .map(|i| event(&format!("big-{i}"), 10_000))
        .collect()
}

fn set_hook(log: &AuditLog, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
    *log.shared().between_parts_hook.lock().expect("hook") = hook;
}

async fn other_sessions_records_go_between_the_parts(durability: Durability) {
    let (_dir, path, log) = opened(AuditOptions {
        durability,
        ..AuditOptions::default()
    });
    // Between parts another session appends (from its own thread, as another session
    // thread would): it must get the lock, which it could not if the whole batch held it.
    let other = log.clone();
    let between = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = between.clone();
    set_hook(
        &log,
        Some(Arc::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let other = other.clone();
            std::thread::spawn(move || other.append(vec![event(&format!("other-{n}"), 100)]))
                .join()
                .expect("other session");
        })),
    );
    let batch = large_batch();
    let (landed, durable) = log.append_durable_later(batch.iter()).expect("written");
    let first = durable.await.expect("durable");
    set_hook(&log, None);

    let parts = between.load(Ordering::SeqCst) + 1;
    let bytes: usize = 100 * 10_000;
    assert!(
        parts >= 2 && parts >= bytes / WRITE_PART,
        "{parts} parts for {bytes} bytes of records"
    );
    assert_eq!(landed.parts().count(), parts);
    assert_eq!(first, landed.first());
    let seqs: Vec<u64> = landed.seqs().collect();
    assert_eq!(seqs.len(), 100, "one sequence number per record");

    // Each of the batch's sequence numbers is its record, in order; the others' records
    // lie between the parts, under the numbers the batch skipped.
    let trail = tickets(&path);
    let at = |seq: u64| {
        trail
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, t)| t.clone())
            .expect("record at seq")
    };
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(at(*seq), format!("big-{i}"));
    }
    let others: Vec<u64> = trail
        .iter()
        .filter(|(_, t)| t.starts_with("other-"))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(others.len(), parts - 1);
    for seq in &others {
        assert!(
            seqs.first() < Some(seq) && Some(seq) < seqs.last(),
            "another session's record {seq} went between the batch's parts: {seqs:?}"
        );
    }
    drop(log);
    let report = verify(&[&path], None, true).expect("the chain holds");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.records >= 100 + others.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_records_go_between_the_parts_of_a_large_append_in_fsync_mode() {
    other_sessions_records_go_between_the_parts(Durability::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_records_go_between_the_parts_of_a_large_append_in_write_mode() {
    other_sessions_records_go_between_the_parts(Durability::Write).await;
}

#[test]
fn a_small_append_is_one_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    let batch: Vec<AuditEvent> = (0..20).map(|i| event(&format!("small-{i}"), 100)).collect();
    let landed = log
        .write(batch.iter(), Mode::Now { sync: false })
        .expect("written");
    assert!(landed.rest.is_empty());
    let seqs: Vec<u64> = landed.seqs().collect();
    assert_eq!(
        seqs,
        (landed.first()..landed.first() + 20).collect::<Vec<_>>()
    );
}

/// Makes the trail's descriptor read-only (writes fail with EBADF); returns a copy of the
/// real descriptor for `restore`.
fn break_trail(log: &AuditLog, path: &Path) -> (i32, i32) {
    let fd = log.shared().lock().file.as_raw_fd();
    let read_only = std::fs::File::open(path).expect("open read-only");
    // SAFETY: plain descriptor calls on descriptors open for the whole call; no memory.
    let saved = unsafe { libc::dup(fd) };
    assert!(saved >= 0);
    // SAFETY: as above.
    assert!(unsafe { libc::dup2(read_only.as_raw_fd(), fd) } == fd);
    (fd, saved)
}

fn restore((fd, saved): (i32, i32)) {
    // SAFETY: `saved` is the copy `break_trail` made, closed only here.
    assert!(unsafe { libc::dup2(saved, fd) } == fd);
    // SAFETY: as above.
    unsafe { libc::close(saved) };
}

/// The trail's write fails from the second part on: the append says which records the
/// first part put in the trail (its caller settles them), and that nothing else was.
#[test]
fn a_failed_part_says_which_records_the_parts_before_it_wrote() {
    let (_dir, path, log) = opened(AuditOptions {
        durability: Durability::Write,
        ..AuditOptions::default()
    });
    let broken = Arc::new(Mutex::new(None));
    let (for_hook, hook_path, hook_log) = (broken.clone(), path.clone(), log.clone());
    set_hook(
        &log,
        Some(Arc::new(move || {
            let mut broken = for_hook.lock().expect("broken");
            if broken.is_none() {
                *broken = Some(break_trail(&hook_log, &hook_path));
            }
        })),
    );
    let batch = large_batch();
    let failed = log
        .write(batch.iter(), Mode::Now { sync: false })
        .expect_err("the second part fails");
    set_hook(&log, None);
    restore(broken.lock().expect("broken").take().expect("broken once"));

    let written = failed.written.expect("the first part was written");
    assert!(written.rest.is_empty(), "only the first part");
    let seqs: Vec<u64> = written.seqs().collect();
    assert!(!seqs.is_empty() && seqs.len() < 100);
    let trail = tickets(&path);
    assert_eq!(
        trail,
        seqs.iter()
            .enumerate()
            .map(|(i, s)| (*s, format!("big-{i}")))
            .collect::<Vec<_>>(),
        "the trail holds the first part and nothing of the rest"
    );
}

/// However many parts, an append that waits is one waiting session to the count that
/// decides whether sessions sync their own records (`Written::lead`): a large batch must
/// not make the syncer take every sync from lone sessions for a while.
#[test]
fn a_large_append_counts_as_one_waiting_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    let before = log.shared().lock().waited_appends;
    let batch = large_batch();
    let landed = log
        .write(batch.iter(), Mode::Now { sync: true })
        .expect("written");
    assert!(!landed.rest.is_empty(), "several parts");
    assert_eq!(log.shared().lock().waited_appends, before + 1);
}
