//! A grant's session limit: `max_sessions` on the request, `[proxy] max_sessions_per_grant`
//! for every grant. An attack review opened 297 sessions with one read token until the
//! server had no slot left for anyone; a limited grant holds at most its number, refused
//! past it with the server's own 53300, and its database role carries a `CONNECTION LIMIT`
//! of one more (the one lockbox's reaper needs), so the database bounds it too (across
//! proxies).

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};

use crate::cli::{lockbox, ok};
use crate::harness::{
    db_error, metric, metric_when, Env, Options, PROVISIONER_PASSWORD, PROVISIONER_ROLE,
};

fn limited(env: &Env, max_sessions: Option<u32>) -> NewRequest {
    NewRequest {
        database: env.db.clone(),
        ticket: "SUP-297".into(),
        reason: "a bounded look".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        max_sessions,
        ..Default::default()
    }
}

async fn session(env: &Env, token: &str) -> tokio_postgres::Client {
    let (client, _conn) = env.connect("eve", token).await.expect("login");
    let one = client.simple_query("SELECT 1").await.expect("select");
    assert!(!one.is_empty());
    client
}

/// A write grant of `limit` sessions, and a procedure it can call that swallows the
/// cancel (see `terminate`).
async fn stubborn_write_grant(env: &Env, limit: u32) -> (String, String) {
    let new = NewRequest {
        access: AccessLevel::Write,
        ..limited(env, Some(limit))
    };
    let granted = env.approved("eve", new).await;
    env.superuser_sql(&crate::terminate::stubborn("lockbox_write"));
    granted
}

/// A login through the proxy on a task of its own; it yields the client.
fn connect_later(
    env: &Env,
    token: &str,
) -> tokio::task::JoinHandle<Result<tokio_postgres::Client, tokio_postgres::Error>> {
    let config = env.pg_config("eve", token);
    tokio::spawn(async move {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    })
}

/// The first `session_refused` record once written, and every record then.
async fn the_refusal(env: &Env) -> (serde_json::Value, Vec<serde_json::Value>) {
    let records = env
        .wait_for_audit("the refused session", |records| {
            records.iter().any(|r| r["event"] == "session_refused")
        })
        .await;
    let refusal = records
        .iter()
        .find(|r| r["event"] == "session_refused")
        .cloned()
        .expect("found");
    (refusal, records)
}

fn connection_limit(env: &Env, id: &str) -> String {
    env.superuser_sql(&format!(
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'lockbox_{id}'"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holds_at_most_its_sessions_at_once_and_its_role_says_so() {
    let env = Env::provisioned("session_limit").await;
    let (id, token) = env.approved("eve", limited(&env, Some(2))).await;
    let shown = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(shown.max_sessions, Some(2));

    let first = session(&env, &token).await;
    let second = session(&env, &token).await;
    let err = env
        .connect("eve", &token)
        .await
        .expect_err("a third session is refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("allows 2"), "{message}");
    assert_eq!(
        connection_limit(&env, &id),
        "3",
        "two, and one for the reaper"
    );
    let refused = metric(
        &env,
        "lockbox_sessions_refused_total{reason=\"grant_sessions\"}",
    )
    .await;
    assert_eq!(refused, 1.0);
    // Audited as a refused use of the grant, not as a failed login.
    let (refusal, records) = the_refusal(&env).await;
    assert_eq!(refusal["request_id"], id.as_str());
    assert_eq!(refusal["engineer"], "eve");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allows 2")),
        "{refusal}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "authentication_failed"),
        "the token held: no failed login"
    );

    // The two it holds are served as before.
    for client in [&first, &second] {
        let rows = client.simple_query("SELECT 2").await.expect("still served");
        assert!(!rows.is_empty());
    }
    // One ends: its place is free again (the proxy forgets a session once its relay ends,
    // the server its backend once it exits).
    drop(first);
    let mut third = None;
    for _ in 0..100 {
        if let Ok((client, _conn)) = env.connect("eve", &token).await {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = third.expect("a place freed by a session that ended is taken again");
    third.simple_query("SELECT 3").await.expect("served");

    // Another grant, without a limit, is not held to this one's, and its role has none.
    let (other, other_token) = env.approved("eve", limited(&env, None)).await;
    let others: Vec<_> = [(); 3].iter().map(|()| &other_token).collect();
    let mut held = Vec::new();
    for token in others {
        held.push(session(&env, token).await);
    }
    assert_eq!(connection_limit(&env, &other), "-1");
    drop((second, third, held));
}

/// The database enforces the limit on its own: another proxy (or anything else logging
/// in as the grant's role) finds the role at its `CONNECTION LIMIT`, one past the limit.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_refuses_the_grants_role_past_its_limit_without_the_proxy() {
    let env = Env::provisioned("session_limit_db").await;
    let (id, token) = env.approved("eve", limited(&env, Some(1))).await;
    let _held = session(&env, &token).await;
    let role = format!("lockbox_{id}");
    // Other ways in as the role, behind the proxy's back: the role's own password.
    env.superuser_sql(&format!("ALTER ROLE \"{role}\" PASSWORD 'behind'"));
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(env.pg.port)
        .user(&role)
        .password("behind")
        .dbname(&env.db);
    let (_reaper_slot, connection) = direct
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the slot kept for the reaper");
    tokio::spawn(connection);
    let err = direct
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("the role is at its connection limit");
    assert_eq!(
        db_error(&err).0,
        "53300",
        "the server's own refusal: {err:?}"
    );
}

/// A backend that outlives its session (it swallows the cancel) is terminated by the
/// reaper, logged in as the grant's role, even when the grant holds one session: the
/// role keeps a slot for it. (With the limit exact, the reaper was refused 53300, the
/// backend ran on and the grant's one place stayed taken.)
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_outlives_a_limited_session_is_still_terminated() {
    let env = Env::provisioned("session_limit_reap").await;
    let (id, token) = stubborn_write_grant(&env, 1).await;
    // A grant that reconnects would get a spare backend logged in ahead, which would take
    // the slot kept for the reaper: a limited grant gets none.
    for _ in 0..2 {
        drop(session(&env, &token).await);
    }
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&crate::harness::query(crate::terminate::CALL))
        .await;
    let pid = crate::terminate::stubborn_backend(&env).await;
    drop(raw);
    // The session's place stays taken while its backend may run on: a login right away
    // gets in only once the reaper saw the backend gone (else it would take the role's
    // slot kept for the reaper, an attack review's finding), or is refused.
    match env.connect("eve", &token).await {
        Ok((client, _)) => {
            let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
            assert_eq!(
                env.superuser_sql(&alive),
                "0",
                "admitted beside the backend"
            );
            drop(client);
        }
        Err(e) => assert_eq!(db_error(&e).0, "53300", "{e:?}"),
    }
    crate::terminate::wait_until_gone(&env, pid).await;
    crate::terminate::wait_for_terminated(&env, &id, pid).await;
    // Its one place is free again.
    session(&env, &token).await;
}

/// A reload that moves `[proxy] max_sessions_per_grant` moves the role's limit of a grant
/// already logged in, at its next login.
#[tokio::test(flavor = "multi_thread")]
async fn a_reloaded_ceiling_reaches_the_roles_limit() {
    let env = Env::provisioned("session_limit_reload").await;
    let (id, token) = env.approved("eve", limited(&env, None)).await;
    drop(session(&env, &token).await);
    assert_eq!(connection_limit(&env, &id), "-1");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen("[proxy]\n", "[proxy]\nmax_sessions_per_grant = 2\n", 1);
    std::fs::write(&env.config_path, text).expect("config");
    let reload = reqwest::Client::new()
        .post(format!("{}/v1/admin/reload", env.deployment.server_url()))
        .bearer_auth(&env.deployment.api_keys["alice"])
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status().as_u16(), 200);
    let _first = session(&env, &token).await;
    assert_eq!(connection_limit(&env, &id), "3");
}

/// `[proxy] max_sessions_per_grant` holds every grant, limited or not, and a request may
/// not ask for more than it.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxys_ceiling_holds_every_grant() {
    let env = Env::with(
        "session_ceiling",
        Options {
            upstream_user: PROVISIONER_ROLE,
            upstream_password: PROVISIONER_PASSWORD,
            proxy_extra: "max_sessions_per_grant = 1\n",
            ..Default::default()
        },
    )
    .await;
    let asked_more = env
        .client("eve")
        .create_request(&limited(&env, Some(2)))
        .await
        .expect_err("more than the proxy allows a grant");
    assert!(
        asked_more.to_string().contains("max_sessions_per_grant"),
        "{asked_more}"
    );

    let (id, token) = env.approved("eve", limited(&env, None)).await;
    let _held = session(&env, &token).await;
    let err = env
        .connect("eve", &token)
        .await
        .expect_err("a second session past the ceiling");
    let (code, message) = db_error(&err);
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("allows 1"),
        "the proxy's own refusal: {message}"
    );
    assert_eq!(connection_limit(&env, &id), "2");
}

/// `lockbox request create --max-sessions` asks for it; `request show` tells an approver.
#[tokio::test(flavor = "multi_thread")]
async fn the_limit_is_asked_for_and_shown_on_the_command_line() {
    let env = Env::start("session_limit_cli").await;
    let id = ok(lockbox(
        &env,
        "eve",
        &[
            "request",
            "create",
            "--database",
            &env.db,
            "--ticket",
            "SUP-8",
            "--reason",
            "two tabs",
            "--access",
            "read",
            "--max-sessions",
            "2",
            "--max-rows",
            "50",
        ],
    ));
    let shown = ok(lockbox(&env, "carol", &["request", "show", &id]));
    let limits = shown
        .lines()
        .find(|l| l.starts_with("limits"))
        .unwrap_or_default();
    assert!(
        limits.contains("max rows 50") && limits.contains("max sessions 2"),
        "{shown}"
    );
    let zero = lockbox(
        &env,
        "eve",
        &[
            "request",
            "create",
            "--database",
            &env.db,
            "--ticket",
            "SUP-9",
            "--reason",
            "none at all",
            "--access",
            "read",
            "--max-sessions",
            "0",
        ],
    );
    assert!(!zero.status.success());
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("max sessions must be at least 1"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
}

/// A login at its grant's limit waits a moment for a place before it is refused: a
/// script that closes and connects again at once is not refused because the proxy had not
/// yet seen its last session close (CI's busy machine refused such a reconnect).
#[tokio::test(flavor = "multi_thread")]
async fn a_login_at_the_limit_takes_a_place_given_back_while_it_waits() {
    let env = Env::provisioned("session_limit_wait").await;
    let (_, token) = env.approved("eve", limited(&env, Some(1))).await;
    let first = session(&env, &token).await;
    let waiting = connect_later(&env, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the login waits for a place");
    drop(first);
    let second = waiting
        .await
        .expect("task")
        .expect("the place given back is taken");
    second.simple_query("SELECT 1").await.expect("served");
    let records = env.audit();
    assert!(
        !records.iter().any(|r| r["event"] == "session_refused"),
        "nothing was refused"
    );
}

/// The database counts the grant's role at its limit for a moment longer than the proxy
/// (a backend exiting): a login waits for a slot there too, and a refusal by the
/// database is audited as the proxy's own is.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_the_database_refuses_for_the_roles_limit_waits_and_is_audited() {
    let env = Env::provisioned("session_limit_server").await;
    let (id, token) = env.approved("eve", limited(&env, Some(1))).await;
    drop(session(&env, &token).await);
    let role = format!("lockbox_{id}");
    // Stands in for backends the server still counts against the role.
    env.superuser_sql(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 0"));
    let waiting = connect_later(&env, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the login waits for a slot");
    env.superuser_sql(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 2"));
    let client = waiting
        .await
        .expect("task")
        .expect("the slot the server freed is taken");
    client.simple_query("SELECT 1").await.expect("served");
    drop(client);

    env.superuser_sql(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 0"));
    let err = env
        .connect("eve", &token)
        .await
        .expect_err("the database refuses the role");
    let (code, message) = db_error(&err);
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("is at its connection limit"), "{message}");
    let (refusal, _) = the_refusal(&env).await;
    assert_eq!(refusal["request_id"], id.as_str());
    assert!(
        refusal["reason"].as_str().is_some_and(|r| r == message),
        "{refusal}"
    );
}

/// A grant of one session whose client froze (its kernel still answers keepalive) would
/// hold its place: its engineer ends it, with a reason, as an approver could.
#[tokio::test(flavor = "multi_thread")]
async fn an_engineer_ends_their_own_frozen_session_and_takes_its_place() {
    let env = Env::provisioned("session_limit_own_kill").await;
    let (id, token) = env.approved("eve", limited(&env, Some(1))).await;
    let (frozen, ended) = env.connect("eve", &token).await.expect("login");
    frozen.simple_query("SELECT 1").await.expect("served");
    let live = env.client("eve").list_sessions().await.expect("list");
    let mine = live
        .iter()
        .find(|s| s.request_id == id)
        .expect("eve sees her session");
    env.client("eve")
        .kill_session(&mine.session_id, "my client froze")
        .await
        .expect("eve ends her own session");
    let ended = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the session ends")
        .expect("join");
    // Told as its own end, not an operator's: the proxy knows the client chose it, and its
    // farewell draws on the passes kept for such ends (`last_words::is_provoked`).
    let (code, message) = db_error(&ended.expect("a FATAL"));
    assert_eq!(code, "57P01");
    assert!(
        message.contains("at its engineer's request") && message.contains("my client froze"),
        "{message}"
    );
    let records = env
        .wait_for_audit("session_killed", |records| {
            records.iter().any(|r| r["event"] == "session_killed")
        })
        .await;
    let killed = records
        .iter()
        .find(|r| r["event"] == "session_killed")
        .expect("found");
    assert_eq!(killed["actor"], "eve");
    assert_eq!(killed["request_id"], id.as_str());
    session(&env, &token).await;
}

/// Logins waiting for a place hold client connections: at most as many wait as the grant
/// has places, and the rest are refused at once (an attack review held every connection
/// slot of the proxy with one token of a one-session grant).
#[tokio::test(flavor = "multi_thread")]
async fn no_more_logins_wait_than_the_grant_has_places() {
    let env = Env::provisioned("session_limit_waiters").await;
    let (_, token) = env.approved("eve", limited(&env, Some(1))).await;
    let _held = session(&env, &token).await;
    let logins: Vec<_> = (0..5).map(|_| connect_later(&env, &token)).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiting = logins.iter().filter(|l| !l.is_finished()).count();
    assert!(waiting <= 1, "{waiting} logins still wait for one place");
    for login in logins {
        let err = login
            .await
            .expect("task")
            .expect_err("refused: the one place stays taken");
        assert_eq!(db_error(&err).0, "53300");
    }
}

/// Waits (bounded) until the proxy counts one login waiting for a place.
async fn until_one_login_waits(env: &Env) {
    let counted = metric_when(
        env,
        "lockbox_logins_waiting_for_place",
        Duration::from_secs(10),
        |n| n >= 1.0,
    )
    .await;
    assert_eq!(counted, 1.0, "the login waits for the place");
}

/// Sessions of grant `id` that started (their `connected` records).
fn sessions_started(env: &Env, id: &str) -> usize {
    env.audit()
        .into_iter()
        .filter(|r| r["event"] == "connected" && r["request_id"] == id)
        .count()
}

/// A login whose client leaves while it waits for a place stops waiting: it no longer
/// counts among the grant's waiting logins (the next client may wait in its stead), and the
/// place given back goes to that client, not to an upstream login for nobody. The grant
/// was at its limit when it asked: that is on the record, as a refusal is.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_whose_client_leaves_while_it_waits_gives_up_its_wait() {
    let env = Env::provisioned("session_limit_waiter_left").await;
    let (id, token) = env.approved("eve", limited(&env, Some(1))).await;
    let held = session(&env, &token).await;
    let left = connect_later(&env, &token);
    until_one_login_waits(&env).await;
    left.abort();
    let _ = left.await;
    // Its wait ends once the proxy sees the close, well within the 2 s it would have
    // waited: a login refused at once meanwhile found it still counted.
    let mut next = None;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let login = connect_later(&env, &token);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !login.is_finished() {
            next = Some(login);
            break;
        }
        let err = login.await.expect("task").expect_err("refused at once");
        assert_eq!(db_error(&err).0, "53300");
    }
    let next = next.expect("a login waits once the one whose client left gave up");
    drop(held);
    let client = next
        .await
        .expect("task")
        .expect("the waiting login takes the place given back");
    client.simple_query("SELECT 1").await.expect("served");
    // The session before and the one after; none for the client that left.
    assert_eq!(sessions_started(&env, &id), 2);
    let (left, _) = the_refusal(&env).await;
    assert_eq!(left["request_id"], id.as_str());
    assert!(
        left["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the client left while its login waited")),
        "{left}"
    );
}

/// A login waiting for a place whose grant is revoked meanwhile is told so at once: it
/// does not take the place given back to log in upstream as a role being dropped, for a
/// session that would end at once (an attack review's finding).
#[tokio::test(flavor = "multi_thread")]
async fn a_login_waiting_for_a_place_of_a_grant_revoked_meanwhile_is_told_at_once() {
    let env = Env::provisioned("session_limit_waiter_revoked").await;
    let (id, token) = env.approved("eve", limited(&env, Some(1))).await;
    let _held = session(&env, &token).await;
    let waiting = connect_later(&env, &token);
    // Revoked once it waits (before, the store's refusal would answer it: 28P01).
    until_one_login_waits(&env).await;
    env.client("carol")
        .revoke(&id, "no longer needed")
        .await
        .expect("revoke");
    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the login ends")
        .expect("task")
        .expect_err("the revoked grant's login is refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "57P01", "{message}");
    assert!(
        message.contains("revoked") && message.contains(&id),
        "{message}"
    );
    // Only the session that held the place ever started.
    assert_eq!(sessions_started(&env, &id), 1);
    assert_eq!(metric(&env, "lockbox_logins_waiting_for_place").await, 0.0);
}

/// Two backends of a two-session grant that both outlive their sessions are both
/// terminated: the role keeps one slot for the reaper, so reapers of a grant take turns
/// (an attack review's second reaper was refused 53300 and its backend ran on).
#[tokio::test(flavor = "multi_thread")]
async fn backends_of_a_limited_grant_that_outlive_their_sessions_together_are_all_terminated() {
    let env = Env::provisioned("session_limit_reapers").await;
    let (id, token) = stubborn_write_grant(&env, 2).await;
    let mut raws = Vec::new();
    for _ in 0..2 {
        let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
        raw.read_until_ready().await;
        raw.send(&crate::harness::query(crate::terminate::CALL))
            .await;
        raws.push(raw);
    }
    let running = format!(
        "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND query = '{}'",
        env.db,
        crate::terminate::CALL
    );
    let mut pids = Vec::new();
    for _ in 0..100 {
        pids = env
            .superuser_sql(&running)
            .split(',')
            .filter_map(|p| p.trim().parse::<i32>().ok())
            .collect();
        if pids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pids.len(), 2, "both procedures run");
    drop(raws);
    for &pid in &pids {
        crate::terminate::wait_until_gone(&env, pid).await;
    }
    env.wait_for_audit("both terminated", |records| {
        let terminated = records
            .iter()
            .filter(|r| r["request_id"] == id.as_str() && r["event"] == "backend_terminated")
            .count();
        terminated == 2
    })
    .await;
    assert!(
        !env.audit()
            .iter()
            .any(|r| r["event"] == "backend_termination_failed"),
        "no reaper failed"
    );
}
