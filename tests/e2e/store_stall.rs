//! A state store that stops answering in the middle of a change: the statement reached it,
//! its answer never came back in time, and the server runs it later. The caller cannot know
//! whether the change took effect, so none may take effect without its record.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use chrono::{DateTime, Utc};
use lockbox::policy::Request;

use crate::harness::{cluster, db_error, fatal_error, postgres_state, Env, Options};

/// Forwards connections to the state store. Armed, it lets the next client message naming
/// its pattern through (a statement's Parse), then holds everything clients send until
/// released: the server has the statement, and its execution waits (as for a server frozen
/// between the two, or a network that stalls there).
#[derive(Clone)]
struct Stall(Arc<AtomicU8>, &'static [u8]);

const OPEN: u8 = 0;
const ARMED: u8 = 1;
const HOLDING: u8 = 2;
const CUTTING: u8 = 3;

impl Stall {
    async fn start(target: u16, pattern: &'static [u8]) -> (Stall, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stall = Stall(Arc::default(), pattern);
        let shared = stall.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                tokio::spawn(shared.clone().forward(inbound, outbound));
            }
        });
        (stall, port)
    }

    async fn forward(self, inbound: TcpStream, outbound: TcpStream) {
        let (mut from_client, mut to_client) = inbound.into_split();
        let (mut from_server, mut to_server) = outbound.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let Ok(n) = from_client.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            while self.0.load(Ordering::SeqCst) == HOLDING {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.0.load(Ordering::SeqCst) == CUTTING {
                // The held bytes never reach the server; the connection ends.
                return;
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let names_it = buf[..n].windows(self.1.len()).any(|w| w == self.1);
            if names_it {
                let _ = self
                    .0
                    .compare_exchange(ARMED, HOLDING, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }

    fn arm(&self) {
        self.0.store(ARMED, Ordering::SeqCst);
    }

    fn holding(&self) -> bool {
        self.0.load(Ordering::SeqCst) == HOLDING
    }

    /// Ends the connections whose bytes are held, without sending them.
    async fn cut(&self) {
        self.0.store(CUTTING, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.store(OPEN, Ordering::SeqCst);
    }

    fn release(&self) {
        self.0.store(OPEN, Ordering::SeqCst);
    }
}

/// One node whose state store (a database on the shared cluster) it reaches through a
/// [`Stall`] on `pattern`.
async fn behind_stall(name: &str, pattern: &'static [u8]) -> (Env, Stall) {
    let shared = cluster();
    let (stall, port) = Stall::start(shared.port, pattern).await;
    let mut env = Env::prepare(
        name,
        Options {
            state_postgres: false,
            ..Options::default()
        },
    );
    let state_db = format!("s_{name}");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = postgres_state(shared, &state_db, &text).replace(
        &format!("127.0.0.1:{}/{state_db}", shared.port),
        &format!("127.0.0.1:{port}/{state_db}"),
    );
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("starts"));
    (env, stall)
}

/// The request's stored status, once it is `revoked` (or after 20 s).
async fn stored_status_once_revoked(env: &Env, id: &str) -> String {
    let mut status = String::new();
    for _ in 0..200 {
        if let Ok(request) = env.client("dave").show_request(id).await {
            status = request.status.as_str().to_owned();
            if status == "revoked" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// A revocation whose UPDATE reached the store but was not answered within the store's
/// bound: it used to answer 503 "nothing was changed", and the revocation landed 25 s later
/// with no `revoked` record in any trail (an attack review's finding). Now it is recorded,
/// this node's sessions end at once, and the answer says it may still take effect.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_the_store_did_not_confirm_is_recorded_and_ends_the_sessions() {
    let (env, stall) = behind_stall("store_stall", b"UPDATE lockbox_requests").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (live, connection) = env.connect("eve", &token).await.expect("connect");
    live.simple_query("SELECT 1").await.expect("query");

    stall.arm();
    let revoked = tokio::time::timeout(
        Duration::from_secs(60),
        env.client("carol").revoke(&id, "incident over"),
    )
    .await
    .expect("an answer within the store's bound");
    stall.release();
    let e = revoked.expect_err("the store never confirmed the revocation");
    assert_eq!(e.code(), Some("state_store_unavailable"), "{e}");
    assert!(e.to_string().contains("may still take effect"), "{e}");
    // Recorded, and this node's session ended, before the answer.
    let records = env.audit_of("request", &id);
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "revoked" && r["actor"] == "carol"),
        "no revoked record: {records:#?}"
    );
    let mut ended = None;
    for _ in 0..100 {
        if let Err(e) = live.simple_query("SELECT 1").await {
            ended = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = ended.expect("the session ended with the revocation");
    let connection = connection.await.expect("task");
    let (code, _) = fatal_error(Some(ended), connection);
    assert_eq!(code, "57P01");

    // The held statement runs once the store answers: the revocation took effect, and its
    // record is there.
    let status = stored_status_once_revoked(&env, &id).await;
    assert_eq!(status, "revoked");
    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a revoked grant let a session in");
    };
    assert_eq!(db_error(&refused).0, "28P01", "{refused}");
}

/// An extension's approval whose UPDATE the store held past the node's bound: answered "may
/// still take effect", and it did; the grant was then never extended (and nobody told),
/// since what follows a stored approval ran only for one confirmed in time. The node now
/// watches for it and, once it is stored, does what follows.
#[tokio::test(flavor = "multi_thread")]
async fn an_extension_approved_after_its_answer_extends_its_grant() {
    let (env, stall, (id, _), granted_until, extension) =
        grant_with_pending_extension("store_stall_extension").await;
    let eve = env.client("eve");

    stall.arm();
    let approved = tokio::time::timeout(
        Duration::from_secs(60),
        env.client("carol").approve(&extension.id.0, "ok"),
    )
    .await
    .expect("an answer within the store's bound");
    stall.release();
    let e = approved.expect_err("the store never confirmed the approval");
    assert_eq!(e.code(), Some("state_store_unavailable"), "{e}");
    assert!(e.to_string().contains("may still take effect"), "{e}");

    let mut grant = eve.show_request(&id).await.expect("show");
    for _ in 0..200 {
        if ends(&grant) != granted_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        grant = eve.show_request(&id).await.expect("show");
    }
    assert_eq!(
        ends(&grant) - granted_until,
        chrono::Duration::minutes(30),
        "the grant was not extended once its extension's approval landed: {grant:?}"
    );
    let extension = eve.show_request(&extension.id.0).await.expect("show");
    // Approved (shown as active: inside its window).
    assert!(
        matches!(extension.status.as_str(), "approved" | "active"),
        "{extension:?}"
    );
}

/// The approval's UPDATE cut off on its way (never run): "may still take effect", so the
/// approver looks, finds the extension pending and approves again. The grant is extended
/// once: the node's watch for the first approval must not take the retry, the same step by
/// the same approver, for its own and apply the extension a second time (an attack review
/// found it did: an hour where half was approved).
#[tokio::test(flavor = "multi_thread")]
async fn an_extension_approved_again_after_an_unconfirmed_approval_is_applied_once() {
    let (env, stall, (id, _), granted_until, extension) =
        grant_with_pending_extension("store_stall_extend_twice").await;
    let eve = env.client("eve");
    let carol = env.client("carol");
    let first = extension.id.0.clone();
    let e = cut_off(&stall, async move { carol.approve(&first, "ok").await })
        .await
        .expect_err("the store never confirmed the approval");
    assert!(e.to_string().contains("may still take effect"), "{e}");
    let pending = eve.show_request(&extension.id.0).await.expect("show");
    assert_eq!(pending.status.as_str(), "pending_customer", "{pending:?}");
    env.client("carol")
        .approve(&extension.id.0, "ok")
        .await
        .expect("the retry is stored");

    // Past two of the watch's looks (every 2 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let grant = eve.show_request(&id).await.expect("show");
    assert_eq!(
        ends(&grant) - granted_until,
        chrono::Duration::minutes(30),
        "{grant:?}"
    );
}

/// A revocation cut off on its way is recorded, and stored by the node once the store
/// answers; an extension of its grant approved before then would have overtaken it (its
/// change first, the revocation's retry then finding a newer version and giving up: the
/// grant extended and never revoked). It is refused until the revocation is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_whose_revocation_is_not_stored_yet_is_not_extended() {
    let (env, stall, (id, token), _, extension) =
        grant_with_pending_extension("store_stall_revoke_extend").await;
    revocation_cut_off(&env, &stall, &id).await;
    let refused = env
        .client("carol")
        .approve(&extension.id.0, "ok")
        .await
        .expect_err("an extension of a revoked grant");
    assert!(refused.to_string().contains("revoked"), "{refused}");

    assert_eq!(stored_status_once_revoked(&env, &id).await, "revoked");
    let Err(e) = env.connect("eve", &token).await else {
        panic!("a revoked grant let a session in");
    };
    assert_eq!(db_error(&e).0, "28P01", "{e}");
}

/// A revocation cut off on its way, and the grant changed elsewhere before the node's retry
/// (another node extending it, an acknowledgement): the retry found a newer version and gave
/// up, so a recorded revocation was never stored and the engineer logged in again (an attack
/// review). It is now made again on top of that change.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_not_stored_yet_is_stored_on_top_of_a_later_change() {
    let name = "store_stall_revoke_on_top";
    let (env, stall) = behind_stall(name, b"UPDATE lockbox_requests").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    revocation_cut_off(&env, &stall, &id).await;

    // Another node's change of the grant, straight into the store, before the retry.
    let (other_node, connection) =
        tokio_postgres::connect(&cluster().url(&format!("s_{name}")), tokio_postgres::NoTls)
            .await
            .expect("connect to the state store");
    tokio::spawn(connection);
    let body: String = other_node
        .query_one("SELECT body FROM lockbox_requests WHERE id = $1", &[&id])
        .await
        .expect("the grant")
        .get(0);
    let mut grant: Request = serde_json::from_str(&body).expect("a request");
    assert_eq!(grant.status.as_str(), "approved", "{grant:?}");
    grant.version += 1;
    grant.ticket = "T-2".into();
    let changed = other_node
        .execute(
            "UPDATE lockbox_requests SET body = $1, version = version + 1 WHERE id = $2",
            &[&serde_json::to_string(&grant).expect("json"), &id],
        )
        .await
        .expect("change the grant");
    assert_eq!(changed, 1);

    assert_eq!(stored_status_once_revoked(&env, &id).await, "revoked");
    let stored = env.client("dave").show_request(&id).await.expect("show");
    assert_eq!(
        stored.ticket, "T-2",
        "the later change was kept: {stored:?}"
    );
    let Err(e) = env.connect("eve", &token).await else {
        panic!("a revoked grant let a session in");
    };
    assert_eq!(db_error(&e).0, "28P01", "{e}");
}

/// Arms the stall, runs `call` until its statement is held, cuts it off (never run), and
/// returns the call's answer.
async fn cut_off<T: Send + 'static>(
    stall: &Stall,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    stall.arm();
    let call = tokio::spawn(call);
    for _ in 0..500 {
        if stall.holding() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stall.holding(), "the statement never came");
    stall.cut().await;
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("an answer")
        .expect("task")
}

/// carol revokes `id`, its UPDATE cut off on its way: the error she is answered.
async fn revocation_cut_off(env: &Env, stall: &Stall, id: &str) -> lockbox::client::ClientError {
    let carol = env.client("carol");
    let revoked = id.to_owned();
    cut_off(stall, async move {
        carol.revoke(&revoked, "incident over").await
    })
    .await
    .expect_err("the store never confirmed the revocation")
}

/// A node behind a stall on the requests' UPDATEs; eve's grant of an hour (with its token
/// and end) and her pending extension of it by 30 minutes.
async fn grant_with_pending_extension(
    name: &str,
) -> (Env, Stall, (String, String), DateTime<Utc>, Request) {
    let (env, stall) = behind_stall(name, b"UPDATE lockbox_requests").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let eve = env.client("eve");
    let granted_until = ends(&eve.show_request(&id).await.expect("show"));
    let extension = eve.extend(&id, "30m", "a bit more").await.expect("extend");
    (env, stall, (id, token), granted_until, extension)
}

fn ends(grant: &Request) -> DateTime<Utc> {
    grant.access_expires_at.expect("the grant ends")
}

/// The deadline sweep's advisory lock, taken by a statement the node gave up on (its answer
/// held past the store's bound): the connection was lent again and kept the lock for good,
/// so that no other node could ever sweep (an attack review's finding). A connection given
/// up on is closed once the server has answered, and the lock goes with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_lock_taken_after_its_node_gave_up_is_let_go() {
    let (_env, stall) = behind_stall("store_stall_sweep", b"pg_try_advisory_lock").await;
    stall.arm();
    let mut held = false;
    for _ in 0..200 {
        if stall.holding() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the sweep never asked for its lock");
    // Past the node's bound on a store operation (15 s): it gives the sweep up.
    tokio::time::sleep(Duration::from_secs(17)).await;
    stall.release();
    // The held statement now takes the lock; the node's sweeps take it and let it go each
    // second, so it is seen free at some moment unless a connection keeps it.
    let mut free = false;
    for _ in 0..100 {
        let held = cluster()
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND d.datname = 's_store_stall_sweep'
                   AND l.classid = 115 AND l.objid = 2003133808 AND l.granted",
            )
            .expect("pg_locks");
        if held.trim() == "0" {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(free, "the sweep's lock is kept by a connection given up on");
}

/// A revocation whose connection was cut after its UPDATE's Parse, its Execute never sent:
/// the answer said "nothing was changed" (a lost connection was not taken as an unknown
/// outcome), and once it was, the revocation stayed recorded but never stored, so its
/// engineer logged in again through another node (a re-attack's findings). Now the answer
/// says it may still take effect, and the node stores it once the store answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_cut_off_on_its_way_is_stored_once_the_store_answers() {
    let (env, stall) = behind_stall("store_stall_cut", b"UPDATE lockbox_requests").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let e = revocation_cut_off(&env, &stall, &id).await;
    assert_eq!(e.code(), Some("state_store_unavailable"), "{e}");
    assert!(e.to_string().contains("may still take effect"), "{e}");
    assert!(env
        .audit_of("request", &id)
        .iter()
        .any(|r| r["event"] == "revoked"));
    // Before the node's retry stores it (2 s on), the store still says approved: this node,
    // which recorded the revocation, lets no session of it in meanwhile.
    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a grant revoked here let a session in before its revocation was stored");
    };
    assert_eq!(db_error(&refused).0, "28P01", "{refused}");
    let status = stored_status_once_revoked(&env, &id).await;
    assert_eq!(
        status, "revoked",
        "the recorded revocation was never stored"
    );
    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a revoked grant let a session in");
    };
    assert_eq!(db_error(&refused).0, "28P01", "{refused}");
}
