//! Every store operation on both backends: SQLite in a temporary file, PostgreSQL in a
//! database of its own on one throwaway cluster per test binary.

use std::sync::OnceLock;

use chrono::Utc;

use super::*;
use crate::notify::outbox::{self, NewDelivery};
use crate::sandbox::PgSandbox;

/// The shared cluster. Fails loudly, never skips, when PostgreSQL is not installed.
pub(crate) fn cluster() -> &'static PgSandbox {
    static CLUSTER: OnceLock<PgSandbox> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        PgSandbox::start().unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"))
    })
}

/// A fresh, empty database `name` on the shared cluster, as a state-store config.
pub(crate) fn fresh_database(name: &str) -> crate::config::StatePostgres {
    let pg = cluster();
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"))
        .expect("drop database");
    pg.psql("postgres", &format!("CREATE DATABASE {name}"))
        .expect("create database");
    let connect: tokio_postgres::Config = pg.url(name).parse().expect("url");
    crate::config::StatePostgres {
        connect,
        tls_client: None,
    }
}

/// One store per backend, named for assertion messages. The temporary folder lives as
/// long as the SQLite store is used.
pub(super) async fn backends(name: &str) -> (tempfile::TempDir, Vec<(&'static str, Store)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(&dir.path().join("state.db")).expect("sqlite");
    let postgres = Store::postgres(fresh_database(&format!("store_{name}")), "node-1")
        .await
        .expect("postgres");
    (dir, vec![("sqlite", sqlite), ("postgres", postgres)])
}

fn request(id: &str, engineer: &str, status: RequestStatus) -> Request {
    let now = Utc::now();
    serde_json::from_value(serde_json::json!({
        "id": id, "engineer": engineer, "database": "sales", "ticket": "T-1",
        "reason": "debug", "access": "read", "duration_secs": 3600,
        "status": status,
        "created_at": now, "request_expires_at": now + chrono::Duration::hours(12),
        "decided_by": null, "decided_at": null, "decision_reason": null,
        "access_expires_at": null,
        "revoked_by": null, "revoked_at": null, "revoke_reason": null,
    }))
    .expect("request")
}

#[tokio::test]
async fn requests_round_trip_filter_and_compare_and_set_on_both_backends() {
    let (_dir, stores) = backends("requests").await;
    for (backend, store) in stores {
        let a = request("req-a", "eve", RequestStatus::PendingCustomer);
        let b = request("req-b", "bob", RequestStatus::PendingInternal);
        store.insert(&a).await.expect("insert");
        store.insert(&b).await.expect("insert");
        assert!(store.insert(&a).await.is_err(), "{backend}: ids are unique");
        assert_eq!(
            store.get(&a.id).await.expect("get"),
            Some(a.clone()),
            "{backend}"
        );
        assert_eq!(
            store.get(&RequestId("none".into())).await.expect("get"),
            None
        );
        let by_eve = store
            .list(RequestFilter {
                engineer: Some("eve".into()),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(by_eve, std::slice::from_ref(&a), "{backend}");
        let internal = store
            .list(RequestFilter {
                status: Some(RequestStatus::PendingInternal),
                database: Some("sales".into()),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(internal, std::slice::from_ref(&b), "{backend}");

        let mut next = a.clone();
        next.status = RequestStatus::Approved;
        next.version = a.version + 1;
        assert!(store.update(&next).await.expect("update"), "{backend}");
        assert!(
            !store.update(&next).await.expect("update"),
            "{backend}: a second change from the same version loses"
        );
        let mut skipping = next.clone();
        skipping.version = next.version + 2;
        assert!(!store.update(&skipping).await.expect("update"), "{backend}");
        let mut missing = request("req-none", "eve", RequestStatus::Approved);
        missing.version = 1;
        assert!(!store.update(&missing).await.expect("update"), "{backend}");
        assert_eq!(
            store.get(&a.id).await.expect("get"),
            Some(next),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn pending_of_reads_only_the_pending_requests_of_an_engineer_on_a_database() {
    let (_dir, stores) = backends("pending_of").await;
    for (backend, store) in stores {
        let statuses = [
            ("p-1", "eve", RequestStatus::PendingInternal),
            ("p-2", "eve", RequestStatus::Approved),
            ("p-3", "eve", RequestStatus::PendingCustomer),
            ("p-4", "eve", RequestStatus::Revoked),
            ("p-5", "bob", RequestStatus::PendingCustomer),
            ("p-6", "eve", RequestStatus::Pending),
            ("p-7", "eve", RequestStatus::Denied),
        ];
        for (id, engineer, status) in statuses {
            store
                .insert(&request(id, engineer, status))
                .await
                .expect("insert");
        }
        let mut other_database = request("p-8", "eve", RequestStatus::PendingCustomer);
        other_database.database = "billing".into();
        store.insert(&other_database).await.expect("insert");
        let mut ids: Vec<String> = store
            .pending_of("eve", "sales")
            .await
            .expect("pending")
            .into_iter()
            .map(|r| r.id.0)
            .collect();
        ids.sort();
        assert_eq!(ids, ["p-1", "p-3", "p-6"], "{backend}");
    }
}

#[tokio::test]
async fn of_two_concurrent_updates_from_one_version_exactly_one_wins() {
    let (_dir, stores) = backends("race").await;
    for (backend, store) in stores {
        for round in 0..10 {
            let id = format!("req-{round}");
            let base = request(&id, "eve", RequestStatus::PendingCustomer);
            store.insert(&base).await.expect("insert");
            let change = |by: &str| {
                let mut r = base.clone();
                r.status = RequestStatus::Approved;
                r.decided_by = Some(by.to_owned());
                r.version = base.version + 1;
                r
            };
            let (one, two) = (change("carol"), change("cleo"));
            let (s1, s2) = (store.clone(), store.clone());
            let (w1, w2) = tokio::join!(
                tokio::spawn(async move { s1.update(&one).await }),
                tokio::spawn(async move { s2.update(&two).await })
            );
            let wins = [w1, w2]
                .into_iter()
                .map(|w| w.expect("task").expect("update"))
                .filter(|won| *won)
                .count();
            assert_eq!(wins, 1, "{backend}, round {round}");
        }
    }
}

#[tokio::test]
async fn settings_round_trip_on_both_backends() {
    let (_dir, stores) = backends("settings").await;
    for (backend, store) in stores {
        assert_eq!(store.setting("protection").await.expect("get"), None);
        store.set_setting("protection", "one").await.expect("set");
        store.set_setting("protection", "two").await.expect("set");
        assert_eq!(
            store.setting("protection").await.expect("get").as_deref(),
            Some("two"),
            "{backend}"
        );
    }
}

pub(super) fn schedule(name: &str) -> ExportSchedule {
    ExportSchedule {
        name: name.into(),
        database: None,
        format: crate::audit::export::ExportFormat::Jsonl,
        target: "exports".into(),
        every_secs: 3600,
        created_by: "alice".into(),
        created_at: Utc::now(),
        watermark: 0,
    }
}

pub(super) fn run(schedule: &str, status: RunStatus, after: u64, through: u64) -> ExportRun {
    ExportRun {
        id: 0,
        schedule: schedule.into(),
        trigger: "schedule".into(),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        status,
        after_seq: after,
        through_seq: through,
        records: through - after,
        files: 1,
        path: None,
        error: None,
        node: None,
    }
}

#[tokio::test]
async fn export_schedules_and_runs_on_both_backends() {
    let (_dir, stores) = backends("exports").await;
    for (backend, store) in stores {
        assert!(store
            .insert_export_schedule(&schedule("daily"))
            .await
            .expect("insert"));
        assert!(
            !store
                .insert_export_schedule(&schedule("daily"))
                .await
                .expect("insert"),
            "{backend}: names are unique"
        );
        assert!(store
            .record_export_run(&run("daily", RunStatus::Ok, 0, 10))
            .await
            .expect("run"));
        assert!(
            !store
                .record_export_run(&run("daily", RunStatus::Ok, 0, 12))
                .await
                .expect("run"),
            "{backend}: a run from a watermark that moved records nothing"
        );
        assert!(store
            .record_export_run(&run("daily", RunStatus::Failed, 10, 10))
            .await
            .expect("run"));
        let stored = store
            .export_schedule("daily")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(stored.watermark, 10, "{backend}");
        assert_eq!(store.export_schedules().await.expect("list").len(), 1);
        let runs = store.export_runs("daily", 10).await.expect("runs");
        let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [RunStatus::Failed, RunStatus::Ok], "{backend}");
        let summary = store.export_run_summaries().await.expect("summaries");
        let daily = &summary["daily"];
        assert_eq!(daily.runs, 2, "{backend}");
        assert_eq!(
            daily.last.as_ref().map(|r| r.status),
            Some(RunStatus::Failed)
        );
        assert_eq!(daily.last_ok.as_ref().map(|r| r.through_seq), Some(10));
    }
}

fn delivery(request_id: &str) -> NewDelivery {
    NewDelivery {
        channel: "webhook",
        target: "https://hooks.example/x".into(),
        event: "created".into(),
        request_id: request_id.into(),
        payload: "{}".into(),
    }
}

#[tokio::test]
async fn the_notification_outbox_on_both_backends() {
    let (_dir, stores) = backends("outbox").await;
    for (backend, store) in stores {
        outbox::enqueue(&store, vec![delivery("req-1"), delivery("req-2")])
            .await
            .expect("enqueue");
        assert_eq!(outbox::pending_count(&store).await.expect("count"), 2);
        let due = outbox::due(&store, Utc::now(), 100).await.expect("due");
        assert_eq!(due.len(), 2, "{backend}");
        let later = Utc::now() + chrono::Duration::minutes(5);
        outbox::record_attempt(&store, due[0].id, Ok(()), None)
            .await
            .expect("record");
        outbox::record_attempt(&store, due[1].id, Err("refused".into()), Some(later))
            .await
            .expect("record");
        assert_eq!(outbox::pending_count(&store).await.expect("count"), 1);
        let next = outbox::next_due(&store).await.expect("next").expect("one");
        assert_eq!(
            next.timestamp_millis(),
            later.timestamp_millis(),
            "{backend}"
        );
        let recent = outbox::recent(&store, Some("req-2".into()), 10)
            .await
            .expect("recent");
        assert_eq!(recent.len(), 1, "{backend}");
        assert_eq!(recent[0].last_error.as_deref(), Some("refused"));
        assert_eq!(recent[0].attempts, 1);
        let delivered = outbox::recent(&store, Some("req-1".into()), 10)
            .await
            .expect("recent");
        assert_eq!(delivered[0].status, "delivered", "{backend}");
    }
}

#[tokio::test]
async fn nodes_claim_disjoint_deliveries_and_take_over_a_lapsed_claim() {
    let config = fresh_database("store_claims");
    let one = Store::postgres(config.clone(), "node-1")
        .await
        .expect("node 1");
    let two = Store::postgres(config, "node-2").await.expect("node 2");
    outbox::enqueue(
        &one,
        (0..20).map(|i| delivery(&format!("req-{i}"))).collect(),
    )
    .await
    .expect("enqueue");
    let now = Utc::now();
    let (a, b) = tokio::join!(outbox::due(&one, now, 100), outbox::due(&two, now, 100));
    let (a, b) = (a.expect("due"), b.expect("due"));
    assert_eq!(a.len() + b.len(), 20, "every delivery claimed once");
    assert!(
        a.iter().all(|d| b.iter().all(|e| e.id != d.id)),
        "no delivery twice"
    );
    assert!(
        outbox::due(&two, now, 100).await.expect("due").is_empty(),
        "a held claim keeps others off"
    );
    // The node holding them died: once its claims lapse, another node takes them over.
    let after_lapse = now + chrono::Duration::minutes(3);
    let taken = outbox::due(&two, after_lapse, 100).await.expect("due");
    assert_eq!(taken.len(), 20);
}

#[tokio::test]
async fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let config = fresh_database("store_migrate");
    let opened = futures::future::join_all(
        (0..4).map(|i| Store::postgres(config.clone(), if i == 0 { "a" } else { "b" })),
    )
    .await;
    for store in &opened {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let versions = cluster()
        .psql(
            "store_migrate",
            "SELECT count(*), max(version) FROM lockbox_schema_version",
        )
        .expect("versions");
    assert_eq!(
        versions,
        format!("{}|{}", pg::known_version(), pg::known_version())
    );
    cluster()
        .psql(
            "store_migrate",
            "INSERT INTO lockbox_schema_version (version) VALUES (9999)",
        )
        .expect("newer version");
    let err = Store::postgres(config, "c").await.err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 9999, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this lockbox knows"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_store_says_so() {
    let port = crate::sandbox::free_port().expect("port");
    let connect: tokio_postgres::Config = format!("postgres://lockbox@127.0.0.1:{port}/state")
        .parse()
        .expect("url");
    let err = Store::postgres(
        crate::config::StatePostgres {
            connect,
            tls_client: None,
        },
        "a",
    )
    .await
    .err()
    .expect("refused");
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("state store"), "{err}");
}

#[tokio::test]
async fn work_under_an_exclusive_key_runs_on_one_node_at_a_time() {
    let config = fresh_database("store_exclusive");
    let one = Store::postgres(config.clone(), "node-1")
        .await
        .expect("node 1");
    let two = Store::postgres(config, "node-2").await.expect("node 2");
    let (one, two) = (
        one.postgres_backend().expect("pg").clone(),
        two.postgres_backend().expect("pg").clone(),
    );
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        one.exclusive(7, async move {
            let _ = started_tx.send(());
            let _ = finish_rx.await;
            "one"
        })
        .await
    });
    started.await.expect("node 1 holds the key");
    let meanwhile = two.exclusive(7, async { "two" }).await.expect("try");
    assert_eq!(meanwhile, None, "node 2 stays off while node 1 works");
    let _ = finish.send(());
    assert_eq!(holder.await.expect("task").expect("work"), Some("one"));
    let after = two.exclusive(7, async { "two" }).await.expect("try");
    assert_eq!(after, Some("two"), "free again once node 1 is done");
}

/// `lockbox config check`'s probe of `[state] url`.
async fn probe(url: String) -> Option<String> {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
         [token]\nsigning_key = \"signing.pem\"\n[state]\nurl = \"{url}\"\n"
    );
    let config =
        crate::config::Config::from_toml(&text, std::path::Path::new(".")).expect("config");
    tokio::task::spawn_blocking(move || crate::config::state_store_problem(&config))
        .await
        .expect("probe")
}

#[tokio::test]
async fn config_check_reports_an_unreachable_store_and_a_newer_schema() {
    let port = crate::sandbox::free_port().expect("port");
    let down = probe(format!("postgres://lockbox@127.0.0.1:{port}/state"))
        .await
        .expect("a problem");
    assert!(
        down.contains("state.url") && down.contains("unreachable"),
        "{down}"
    );

    let config = fresh_database("store_check");
    Store::postgres(config, "node-1").await.expect("migrated");
    let url = cluster().url("store_check");
    assert_eq!(probe(url.clone()).await, None, "a current schema is fine");
    cluster()
        .psql(
            "store_check",
            "INSERT INTO lockbox_schema_version (version) VALUES (9999)",
        )
        .expect("newer version");
    let newer = probe(url).await.expect("a problem");
    assert!(newer.contains("newer than this lockbox knows"), "{newer}");
}

/// A login's read of its request runs on its own task when the connection is free, and
/// leaves the connection with its timeout for the writes after it (SQLite's lock timeout is
/// the connection's: the read runs with none, so that it never waits on the runtime).
#[tokio::test]
async fn a_request_read_without_waiting_leaves_the_lock_timeout_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("sqlite");
    let stored = request("req-free", "eve", RequestStatus::Pending);
    store.insert(&stored).await.expect("insert");
    let Backend::Sqlite(conn) = &store.backend else {
        panic!("a SQLite store")
    };
    let read = get_without_waiting(conn, "req-free").expect("read without waiting");
    assert_eq!(read.expect("read").map(|r| r.id), Some(stored.id));
    assert!(matches!(
        get_without_waiting(conn, "req-none"),
        Some(Ok(None))
    ));
    let timeout: i64 = conn
        .lock()
        .expect("connection")
        .query_row("PRAGMA busy_timeout", [], |row| row.get(0))
        .expect("busy_timeout");
    assert_eq!(timeout as u128, BUSY_TIMEOUT.as_millis());
}

/// An unreadable request read without waiting is an error, as it is off the runtime: never
/// "not found", and not sent the other way to be read again.
#[tokio::test]
async fn an_unreadable_request_read_without_waiting_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("sqlite");
    let Backend::Sqlite(conn) = &store.backend else {
        panic!("a SQLite store")
    };
    conn.lock()
        .expect("connection")
        .execute(
            "INSERT INTO requests (id, status, engineer, database, created_at, body) \
             VALUES ('req-bad', 'approved', 'eve', 'sales', 0, '{not json')",
            [],
        )
        .expect("insert");
    let read = get_without_waiting(conn, "req-bad");
    assert!(
        matches!(read, Some(Err(StoreError::Corrupt(_)))),
        "{read:?}"
    );
    let read = store.get(&RequestId("req-bad".into())).await;
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
}

#[test]
fn only_a_lock_in_the_way_sends_a_read_off_the_runtime() {
    let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    assert!(is_busy(&failure(rusqlite::ffi::SQLITE_BUSY)));
    assert!(is_busy(&failure(rusqlite::ffi::SQLITE_LOCKED)));
    assert!(!is_busy(&failure(rusqlite::ffi::SQLITE_CORRUPT)));
    assert!(!is_busy(&rusqlite::Error::QueryReturnedNoRows));
}

/// While another thread uses the connection, a read does not wait for it on the runtime:
/// on a one-thread runtime, the task that lets the connection go must still run. (Were the
/// read to wait for the connection there, nothing would ever let it go: the runtime runs
/// on its own thread so that this test fails rather than hangs.)
#[test]
fn a_read_while_the_connection_is_in_use_leaves_the_runtime_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let read = runtime.block_on(async move {
            let store = Store::open(&path).expect("sqlite");
            let stored = request("req-busy", "eve", RequestStatus::Pending);
            store.insert(&stored).await.expect("insert");
            let Backend::Sqlite(conn) = &store.backend else {
                panic!("a SQLite store")
            };
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let conn = conn.clone();
            let holder = std::thread::spawn(move || {
                let _in_use = conn.lock().expect("connection");
                held_tx.send(()).expect("held");
                let _ = release_rx.recv();
            });
            held_rx.recv().expect("the connection is in use");
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let _ = release_tx.send(());
            });
            let read = store.get(&stored.id).await;
            holder.join().expect("holder");
            read.map(|r| r.map(|r| r.id == stored.id))
        });
        let _ = done_tx.send(read);
    });
    let read = done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the read waited for the connection on the runtime (it never let go)");
    assert!(matches!(read, Ok(Some(true))), "{read:?}");
}
