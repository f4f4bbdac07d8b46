//! Audit throughput: statement records per second through `AuditLog::append_durable` for
//! 1…64 concurrent writers, each awaiting its record before sending the next (as a session
//! does before forwarding a statement), in `fsync` mode (group commit) and, for
//! comparison, `write` mode. Run: `cargo bench --bench audit_throughput`.
//!
//! The trail goes to a temporary folder under the target directory, on the same disk as
//! the repository (not a tmpfs), since fsync cost is the point. "records/fsync" is the
//! statement records written per fdatasync the syncer did (group commit's batch size; in
//! `write` mode the syncer only fsyncs every `sync_interval`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbox::audit::chain::CheckpointSigner;
use lockbox::audit::{
    AuditEvent, AuditLog, AuditOptions, Protocol, SessionFields, StatementRecord,
};
use lockbox::config::Durability;
use lockbox::sql::StatementKind;

const WRITERS: &[usize] = &[1, 2, 4, 8, 16, 32, 64];
/// How long each (mode, writers) cell runs: 14 cells stay well under a minute.
const CELL: Duration = Duration::from_millis(1500);

/// One cell's figures.
struct Figures {
    records: usize,
    per_second: f64,
    per_batch: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root)?;
    let pem = lockbox::keys::generate_signing_key_pem()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "audit throughput, {} s per cell, audit files under {}",
        CELL.as_secs_f64(),
        root.display()
    );
    // `fsync` with its journal (the default), and without one (each fdatasync of the trail
    // itself also writes its new size), to show what the journal saves.
    let journal = AuditOptions::default().journal_bytes;
    for (durability, journal_bytes, label) in [
        (Durability::Fsync, journal, "fsync (journal)"),
        (Durability::Fsync, 0, "fsync (no journal: the trail itself)"),
        (Durability::Write, journal, "write"),
    ] {
        println!("\ndurability = {label}");
        println!(
            "{:>8} {:>10} {:>12} {:>14} {:>10} {:>10}",
            "writers", "records", "records/s", "records/fsync", "p50 ms", "p99 ms"
        );
        for &writers in WRITERS {
            let dir = tempfile::Builder::new()
                .prefix("audit-bench-")
                .tempdir_in(&root)?;
            let signer = CheckpointSigner::from_pem(&pem)?;
            let options = AuditOptions {
                durability,
                journal_bytes,
                ..AuditOptions::default()
            };
            let f = runtime.block_on(cell(dir.path(), signer, options, writers))?;
            println!(
                "{writers:>8} {:>10} {:>12.0} {:>14.1} {:>10.3} {:>10.3}",
                f.records,
                f.per_second,
                f.per_batch,
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}

async fn cell(
    dir: &std::path::Path,
    signer: CheckpointSigner,
    options: AuditOptions,
    writers: usize,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let path = dir.join("audit.jsonl");
    let (log, thread) = AuditLog::open_with(&path, Some(signer), options)?;
    let started = Instant::now();
    let until = started + CELL;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(session(log, w, until)));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let syncs = log.sync_count().max(1);
    log.close().await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    latencies.sort();
    let records = latencies.len();
    let pick = |q: f64| latencies[((records as f64 * q) as usize).min(records - 1)];
    Ok(Figures {
        records,
        per_second: records as f64 / elapsed.as_secs_f64(),
        per_batch: records as f64 / syncs as f64,
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

/// One session: append a statement record, wait until durable, repeat until `until`.
async fn session(
    log: AuditLog,
    writer: usize,
    until: Instant,
) -> Result<Vec<Duration>, lockbox::audit::AuditError> {
    let fields = Arc::new(SessionFields::new(
        format!("0b6f3c9e-2a41-4c7e-9d55-{writer:012}"),
        "req_01J8ZK4Q2M7V3X9T5N6P8R0W1Y".into(),
        "INC-48213".into(),
        "eve@example.com".into(),
        "orders".into(),
        "10.0.3.17:51544".into(),
        false,
    ));
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let record = AuditEvent::Statement(StatementRecord {
            session: fields.clone(),
            protocol: Protocol::Extended,
            statement: "SELECT o.id, o.status, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.email = $1 AND o.created_at > $2 ORDER BY o.created_at DESC LIMIT 50".into(),
            params: Some(vec![
                serde_json::Value::String(format!("customer{n}@example.com")),
                serde_json::json!({ "binary_hex": "0002a1b3c4d5e6f7" }),
            ].into()),
            kind: StatementKind::Select,
            redacted: Vec::new(),
            mentions: None,
        });
        let sent = Instant::now();
        log.append_durable(vec![record]).await?;
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}
