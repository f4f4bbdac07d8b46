//! attack-11: adversarial checks of sessions, health, the failed-login limit.

use std::time::{Duration, Instant};

use crate::harness::Env;

/// An anonymous caller (no API key) learns from `GET /v1/health` the names of the
/// customer databases behind the proxy, how many engineers are connected to them right
/// now, and the audit trail's sequence numbers: what `GET /metrics` keeps for admins and
/// auditors.
#[tokio::test]
async fn attack_11_anonymous_health_reveals_databases_and_live_sessions() {
    let env = Env::start("a11_health").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("eve connects");
    client.simple_query("SELECT 1").await.expect("query");
    let url = format!("{}/v1/health", env.deployment.server_url());
    let response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect("health answers");
    let status = response.status();
    let body = response.text().await.expect("body");
    assert!(
        !body.contains(&env.db) && !body.contains("\"live_sessions\":1"),
        "anonymous /v1/health ({status}) tells who is connected to what: {body}"
    );
}

/// Source addresses are all a legitimate engineer shares with an attacker behind the
/// same NAT, VPN egress, bastion or TCP load balancer: 20 garbage passwords from it and
/// an engineer holding a valid, approved token (break-glass included) is refused for the
/// whole window, "without its token being looked at".
#[tokio::test]
async fn attack_11_garbage_logins_lock_out_a_valid_token_from_the_same_address() {
    let env = Env::start("a11_lockout").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    for _ in 0..20 {
        let refused = env.connect("mallory", "not-a-token").await;
        assert!(refused.is_err(), "garbage is refused");
    }
    let eve = env.connect("eve", &token).await;
    assert!(
        eve.is_ok(),
        "eve's valid token is refused because someone else at her address failed: {:?}",
        eve.err()
    );
}

/// A killed session's backend must not go on running the query it was running.
#[tokio::test]
async fn attack_11_a_killed_session_loses_its_running_backend() {
    let env = Env::start("a11_kill").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("eve connects");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(120)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sessions = env.client("carol").list_sessions().await.expect("list");
    let session = sessions
        .iter()
        .find(|s| s.engineer == "eve")
        .expect("eve's session is listed");
    // Engineers neither see nor end it.
    let bob = env.client("bob").list_sessions().await.expect("bob lists");
    assert!(bob.is_empty(), "bob sees eve's session: {bob:?}");
    assert!(env
        .client("bob")
        .kill_session(&session.session_id, "mine now")
        .await
        .is_err());
    env.client("carol")
        .kill_session(&session.session_id, "customer asked")
        .await
        .expect("carol kills");
    let started = Instant::now();
    loop {
        let alive = env.superuser_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ));
        if alive.trim() == "0" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "backend {pid} still runs 15s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), sleeper).await;
    let audit = env.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "session_killed" && r["actor"] == "carol"),
        "the kill is audited"
    );
}

/// The audit trail holds every statement an engineer ran against customer data (literals
/// included), and the state store every request; the proxy creates both with the
/// process umask (0644 under the usual 022): any local user of the host reads them.
#[tokio::test]
async fn attack_11_audit_trail_and_state_store_are_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start("a11_modes").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("eve connects");
    client
        .simple_query("SELECT 'card 4111-1111-1111-1111'")
        .await
        .expect("query");
    let mut open_to_others = Vec::new();
    let mut paths = vec![env.audit_path.clone()];
    for entry in walk(&env.deployment.dir) {
        if entry.extension().is_some_and(|e| e == "db") {
            paths.push(entry);
        }
    }
    for path in paths {
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            open_to_others.push(format!("{} {:o}", path.display(), mode & 0o777));
        }
    }
    assert!(
        open_to_others.is_empty(),
        "readable by others: {open_to_others:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `lockbox audit list --format csv` prints to the terminal like `--format table` does,
/// but its cells are not escaped: a statement an engineer ran with an escape sequence in
/// a literal (here OSC 8, a hyperlink, and a line erase) reaches the auditor's terminal.
#[tokio::test]
async fn attack_11_audit_list_csv_prints_terminal_escapes_raw() {
    let env = Env::start("a11_csv_term").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("eve connects");
    client
        .simple_query("SELECT '\u{1b}[2K\u{1b}[1Ainnocent \u{202e}'")
        .await
        .expect("query");
    env.wait_for_audit("the statement", |records| {
        records.iter().any(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("innocent"))
        })
    })
    .await;
    let key = env
        .deployment
        .api_keys
        .get("dave")
        .expect("dave's key")
        .clone();
    for format in ["table", "csv"] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .args([
                "--server",
                &env.deployment.server_url(),
                "audit",
                "list",
                "--format",
                format,
            ])
            .env("LOCKBOX_API_KEY", &key)
            .env_remove("LOCKBOX_CA_CERT")
            .output()
            .await
            .expect("run lockbox");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("innocent"), "{format}: {stdout}");
        assert!(
            !stdout.contains('\u{1b}') && !stdout.contains('\u{202e}'),
            "--format {format} prints the engineer's escapes raw: {stdout:?}"
        );
    }
}

/// One anonymous source opens `max_connections` TCP connections and sends nothing (or a
/// startup packet and no password): each holds a slot for the 30s negotiation timeout
/// plus the 30s login timeout, is never a "failed login" (so the per-source limit never
/// applies) and leaves no audit record. Reconnecting as they time out, it keeps every
/// engineer out with 53300.
#[tokio::test]
async fn attack_11_idle_connections_from_one_source_hold_every_slot() {
    let mut env = Env::prepare("a11_slowloris", crate::harness::Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen("[proxy]\n", "[proxy]\nmax_connections = 4\n", 1);
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let (_id, token) = env.approved_token("eve", "10m").await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", env.proxy_port()))
                .await
                .expect("tcp"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let eve = env.connect("eve", &token).await;
    assert!(
        eve.is_ok(),
        "4 silent sockets from one address keep eve (valid token) out: {:?}",
        eve.err()
    );
    drop(idle);
}

/// A 40-byte statement makes PostgreSQL answer with an ErrorResponse that quotes a value
/// of the engineer's choosing in full (`invalid input syntax for type integer: "xxx…"`):
/// the scanner collects the whole message in memory (ErrorResponse is "interesting") and
/// the audit record keeps the message uncut. 20 MB here; up to ~1 GB a query, held in the
/// proxy's memory, fsynced to the trail, shipped to the sink: an engineer with read access
/// exhausts the proxy's memory and the audit disk.
#[tokio::test]
async fn attack_11_a_short_statement_makes_a_huge_error_record() {
    let env = Env::start("a11_bigerror").await;
    let (_id, token) = env.approved_token("eve", "10m").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("eve connects");
    let error = client
        .simple_query("SELECT repeat('x', 20000000)::int")
        .await
        .expect_err("not an integer");
    assert!(error.to_string().len() > 1_000_000 || error.as_db_error().is_some());
    env.wait_for_audit("the failed statement", |records| {
        records.iter().any(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("repeat("))
        })
    })
    .await;
    let text = std::fs::read_to_string(&env.audit_path).expect("trail");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 1_000_000,
        "one audit line of {longest} bytes from a 40-byte statement"
    );
}

/// The expiry warning fires while two sessions stream results that arrive in many chunks:
/// slow 200 kB DataRows and a slow COPY OUT. A notice written inside one of those messages
/// corrupts the stream, and the client's query fails.
#[tokio::test]
async fn attack_11_expiry_warning_lands_between_messages_of_streamed_results() {
    let env = Env::with(
        "a11_notice_stream",
        crate::harness::Options {
            timings: "warn_before = [\"10s\"]",
            ..crate::harness::Options::default()
        },
    )
    .await;
    let (_id, token) = env.approved_token("eve", "14s").await;
    let (rows, _c1) = env.connect("eve", &token).await.expect("eve connects");
    let (copy, _c2) = env.connect("eve", &token).await.expect("eve connects");
    let slow_rows = async {
        rows.query(
            "SELECT g, repeat(md5(g::text), 6000), pg_sleep(0.02) FROM generate_series(1, 250) g",
            &[],
        )
        .await
        .map(|r| r.len())
    };
    let slow_copy = async {
        use futures::StreamExt;
        let stream = copy
            .copy_out(
                "COPY (SELECT g, repeat(md5(g::text), 3001), pg_sleep(0.02) FROM generate_series(1, 250) g) TO STDOUT",
            )
            .await?;
        futures::pin_mut!(stream);
        let mut bytes = 0usize;
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.len();
        }
        Ok::<usize, tokio_postgres::Error>(bytes)
    };
    let started = Instant::now();
    let (rows, copied) = tokio::join!(slow_rows, slow_copy);
    let took = started.elapsed();
    assert_eq!(rows.expect("rows arrive intact"), 250);
    assert!(copied.expect("COPY data arrives intact") > 250 * 96_000);
    assert!(
        took > Duration::from_secs(5),
        "spanned the warning: {took:?}"
    );
}
