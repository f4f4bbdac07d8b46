//! The database enforces the grant: per-grant roles (`lockbox_<request id>`), members of
//! the level's role only, valid until the window ends, dropped when the grant ends; and a
//! configuration where read would log in as a role that can write is refused.

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

async fn provisioned(name: &str) -> Env {
    Env::provisioned(name).await
}

fn role_of(id: &str) -> String {
    format!("lockbox_{id}")
}

/// A superuser connection straight to the test's database, behind the proxy's back.
async fn superuser(env: &Env) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(env.pg.port)
        .user("postgres")
        .dbname(&env.db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("superuser connects");
    tokio::spawn(connection);
    client
}

fn role_count(env: &Env, role: &str) -> i64 {
    env.superuser_sql(&format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"
    ))
    .parse()
    .expect("count")
}

/// Waits (bounded, to catch "never") until `role` no longer exists.
async fn wait_for_drop(env: &Env, role: &str) {
    for _ in 0..200 {
        if role_count(env, role) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("role {role} was never dropped");
}

async fn whoami(client: &tokio_postgres::Client) -> (String, String) {
    let row = client
        .query_one("SELECT current_user::text, session_user::text", &[])
        .await
        .expect("whoami");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread")]
async fn read_grant_logs_in_as_its_own_role() {
    let env = provisioned("roles_login").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    assert_eq!(whoami(&client).await, (role_of(&id), role_of(&id)));
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the read role's privileges apply")
        .get(0);
    assert_eq!(count, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_role_is_valid_until_the_window_ends() {
    let env = provisioned("roles_valid_until").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, _conn) = env.connect("eve", &token).await.expect("login");
    let request = env.client("eve").show_request(&id).await.expect("show");
    let window_end = request.access_expires_at.expect("approved");
    let valid_until: f64 = env
        .superuser_sql(&format!(
            "SELECT extract(epoch FROM rolvaliduntil) FROM pg_roles WHERE rolname = '{}'",
            role_of(&id)
        ))
        .parse()
        .expect("the role has a VALID UNTIL");
    let expected = window_end.timestamp_micros() as f64 / 1e6;
    assert!(
        (valid_until - expected).abs() < 0.001,
        "VALID UNTIL {valid_until}, window end {expected}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_role_is_a_member_of_the_read_role_only() {
    let env = provisioned("roles_membership").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, _conn) = env.connect("eve", &token).await.expect("login");
    let state = env.superuser_sql(&format!(
        "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls,
                (SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m
                 JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid)
         FROM pg_roles r WHERE r.rolname = '{}'",
        role_of(&id)
    ));
    assert_eq!(state, "f|lockbox_read");
}

/// Read-only mode is not what stops a read grant: its role cannot write at all.
#[tokio::test(flavor = "multi_thread")]
async fn grant_role_cannot_write_outside_read_only_mode() {
    let env = provisioned("roles_no_write").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, _conn) = env.connect("eve", &token).await.expect("login");
    let su = superuser(&env).await;
    su.batch_execute(&format!(
        "SET default_transaction_read_only = off; SET ROLE \"{}\"",
        role_of(&id)
    ))
    .await
    .expect("become the grant's role");
    let err = su
        .batch_execute("INSERT INTO items VALUES (100, 'written')")
        .await
        .expect_err("the grant's role cannot write");
    assert_eq!(db_error(&err).0, "42501", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_role_is_dropped_after_revocation() {
    let env = provisioned("roles_revoked").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, conn) = env.connect("eve", &token).await.expect("login");
    assert_eq!(role_count(&env, &role_of(&id)), 1);
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    wait_for_drop(&env, &role_of(&id)).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let backends = env.superuser_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}'",
        role_of(&id)
    ));
    assert_eq!(backends, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_role_is_dropped_when_the_window_ends() {
    let env = provisioned("roles_expired").await;
    let (id, token) = env.approved_token("eve", "5s").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    assert_eq!(whoami(&client).await.0, role_of(&id));
    wait_for_drop(&env, &role_of(&id)).await;
    // Dropping the role ended its backends as the service role; no reaper tried (and
    // failed) to log in as a role past its VALID UNTIL.
    env.wait_for_audit("the expiry", |r| {
        r.iter().any(|r| r["event"] == "dropped_expired")
    })
    .await;
    for _ in 0..20 {
        let records = env.audit();
        let failed: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["event"] == "backend_termination_failed")
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concurrent first sessions of one grant all log in as its role, which is made once: the
/// others wait for that creation instead of racing it (and resetting its password under
/// each other's feet), and later sessions leave it alone.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sessions_of_one_grant_share_one_role_made_once() {
    let env = provisioned("roles_concurrent").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut clients = Vec::new();
    for _wave in 0..2 {
        let sessions = futures::future::join_all((0..4).map(|_| env.connect("eve", &token))).await;
        for session in sessions {
            clients.push(session.expect("every session logs in"));
        }
    }
    for (client, _) in &clients {
        assert_eq!(whoami(client).await.0, role_of(&id));
    }
    // CREATE ROLE wrote the role and its membership in one transaction; any later ALTER
    // ROLE (a password reset) would have rewritten the role's row in another.
    let untouched = env.superuser_sql(&format!(
        "SELECT a.xmin = m.xmin FROM pg_authid a JOIN pg_auth_members m ON m.member = a.oid
         WHERE a.rolname = '{}'",
        role_of(&id)
    ));
    assert_eq!(
        untouched, "t",
        "the grant's role was changed after its creation"
    );
}

/// After a restart the password is gone from memory: the role is taken over, not refused.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_proxy_takes_the_grant_role_over() {
    let mut env = provisioned("roles_restart").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    assert_eq!(whoami(&client).await.0, role_of(&id));
    drop(client);
    env.restart().await;
    let (client, _conn) = env
        .connect("eve", &token)
        .await
        .expect("login after restart");
    assert_eq!(whoami(&client).await.0, role_of(&id));
}

/// What a write grant created outlives the grant, still owned by its role, which is kept
/// locked out and a member of nothing: a `SECURITY DEFINER` function the grant made runs,
/// once kept, with no privilege but its own objects' (an attack review's, handed to the
/// service role as they were, made a login of the engineer's).
#[tokio::test(flavor = "multi_thread")]
async fn objects_of_a_write_grant_are_kept_when_its_grant_ends() {
    let env = provisioned("roles_write_objects").await;
    env.superuser_sql("GRANT CREATE ON SCHEMA public TO lockbox_write");
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let role = role_of(&id);
    assert_eq!(whoami(&client).await.0, role);
    client
        .batch_execute(
            "CREATE TABLE notes (id int); INSERT INTO notes VALUES (1); \
             CREATE FUNCTION public.whose() RETURNS text LANGUAGE sql SECURITY DEFINER \
             AS 'SELECT current_user::text'",
        )
        .await
        .expect("a write grant may create a table and a function");
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    let kept = format!(
        "SELECT rolcanlogin OR rolvaliduntil <> '-infinity' \
         OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) \
         FROM pg_roles r WHERE rolname = '{role}'"
    );
    for _ in 0..200 {
        if env.superuser_sql(&kept) == "f" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.superuser_sql(&kept),
        "f",
        "locked out, valid until nothing, a member of nothing"
    );
    let owner = env.superuser_sql(
        "SELECT tableowner || ':' || (SELECT count(*) FROM notes) FROM pg_tables WHERE tablename = 'notes'",
    );
    assert_eq!(owner, format!("{role}:1"));
    assert_eq!(env.superuser_sql("SELECT public.whose()"), role);
    assert_eq!(
        env.superuser_sql(&format!(
            "SELECT has_table_privilege('{role}', 'items', 'SELECT')"
        )),
        "f",
        "nothing of the level's role"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extension_moves_the_grant_roles_validity() {
    let env = provisioned("roles_extended").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, _conn) = env.connect("eve", &token).await.expect("login");
    let extension = env
        .client("eve")
        .extend(&id, "1h", "need more time")
        .await
        .expect("extend");
    env.approve_all(&extension.id.0).await;
    let end = env
        .client("eve")
        .show_request(&id)
        .await
        .expect("show")
        .access_expires_at
        .expect("window");
    let expected = end.timestamp_micros() as f64 / 1e6;
    for _ in 0..100 {
        let valid_until: f64 = env
            .superuser_sql(&format!(
                "SELECT extract(epoch FROM rolvaliduntil) FROM pg_roles WHERE rolname = '{}'",
                role_of(&id)
            ))
            .parse()
            .expect("valid until");
        if (valid_until - expected).abs() < 0.001 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("VALID UNTIL never moved to the extended end {end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_per_grant_roles_need_a_service_role_that_may_create_roles() {
    let env = Env::prepare(
        "roles_explicit",
        Options {
            provisioning: "per_grant_roles = true",
            ..Default::default()
        },
    );
    let config = lockbox::config::Config::load(&env.config_path).expect("the file is valid");
    let err = match lockbox::server::start(config).await {
        Ok(_) => panic!("lockbox started although its service role may not create roles"),
        Err(e) => e.to_string(),
    };
    let key = format!("databases.{}.provisioning.per_grant_roles", env.db);
    assert!(err.contains(&key), "{err}");
}

#[test]
fn read_must_not_log_in_as_a_role_that_can_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext_loopback = true\n\
                [token]\nsigning_key = \"k.pem\"\n[[databases]]\nname = \"d\"\nhost = \"h\"\nuser = \"svc\"\n";
    let refused = |toml: &str| {
        lockbox::config::Config::from_toml(toml, dir.path())
            .expect_err("refused")
            .to_string()
    };
    let err = refused(base);
    assert!(err.contains("databases.d.access.read"), "{err}");
    let err = refused(&format!("{base}[databases.access.read]\nuser = \"svc\"\n"));
    assert!(err.contains("databases.d.access.read.user"), "{err}");
    let err = refused(&format!(
        "{base}[databases.access.read]\nuser = \"w\"\n[databases.access.write]\nuser = \"w\"\n"
    ));
    assert!(err.contains("databases.d.access.read.user"), "{err}");
    lockbox::config::Config::from_toml(
        &format!("{base}[databases.access.read]\nuser = \"r\"\n"),
        dir.path(),
    )
    .expect("a read role of its own is enough");
}

/// The role of grant `id` is still there a while after a session's end recorded: a drop
/// would have been started as the end was recorded, and takes milliseconds.
async fn role_stays(env: &Env, id: &str) {
    for _ in 0..20 {
        assert_eq!(role_count(env, &role_of(id)), 1, "the grant's role stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A login with `token` works.
async fn logs_in(env: &Env, token: &str) {
    let (later, _connection) = env.connect("eve", token).await.expect("a later login");
    later.simple_query("SELECT 1").await.expect("and works");
}

/// A token ends where the window ended when it was issued; a session admitted with it
/// after the grant was extended ends at the token's end. The grant itself goes on: its
/// role stays, and so do its other sessions and new logins (before, the role was dropped
/// as if the grant were over, which ended them and refused later logins).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_reaches_its_tokens_end_leaves_the_role_of_an_extended_grant() {
    let env = provisioned("roles_token_end").await;
    // The window outlasts the extension's request, its approval and the login behind them.
    let (id, old_token) = env.approved_token("eve", "6s").await;
    let extension = env
        .client("eve")
        .extend(&id, "1h", "the fix needs longer")
        .await
        .expect("extend")
        .id
        .0;
    env.client("carol")
        .approve(&extension, "ok")
        .await
        .expect("approve the extension");
    let (old, _old_connection) = env.connect("eve", &old_token).await.expect("old token");
    let new_token = env
        .client("eve")
        .token(&id)
        .await
        .expect("a new token")
        .token;
    let (current, _connection) = env.connect("eve", &new_token).await.expect("new token");
    env.wait_for_audit("the old token's session ended", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_expired")
    })
    .await;
    assert!(
        old.simple_query("SELECT 1").await.is_err(),
        "the old session ended"
    );
    role_stays(&env, &id).await;
    current
        .simple_query("SELECT 1")
        .await
        .expect("the grant's other session goes on");
    logs_in(&env, &new_token).await;
}

/// An extension approved as the window ends may reach a session only after its timer
/// fired: the session's end reads the grant again, and the extended grant keeps its role
/// and takes new logins.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_expires_before_it_hears_of_an_extension_leaves_the_role() {
    let env = provisioned("roles_late_extension").await;
    let (id, token) = env.approved_token("eve", "5s").await;
    let (_client, _connection) = env.connect("eve", &token).await.expect("login");
    env.store_extended_elsewhere(&id, chrono::TimeDelta::hours(1));
    env.wait_for_audit("the session's end at the old window's end", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_expired")
    })
    .await;
    role_stays(&env, &id).await;
    let new_token = env
        .client("eve")
        .token(&id)
        .await
        .expect("a new token")
        .token;
    logs_in(&env, &new_token).await;
}
