//! Revocation-to-drop latency across nodes: two lockbox nodes (in-process, ports of their
//! own) share one PostgreSQL state store; each round an engineer's session runs through
//! node 2 and the request is revoked through node 1's API. The figure is the time from
//! sending the revocation until node 2 has closed the session (the client's connection
//! ends), over 100 revocations: p50, p99, max. Run: `cargo bench --bench revocation`.
//!
//! What it measures is the LISTEN/NOTIFY path (the 1 s reconcile is the backstop, so a
//! figure near a second would mean a notification was missed).

use std::time::{Duration, Instant};

use lockbox::demo::{write_deployment, DeploymentDatabase, DeploymentSpec};
use lockbox::policy::{AccessLevel, NewRequest};
use lockbox::sandbox::{free_port, PgSandbox};

const ROUNDS: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

async fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let pg = PgSandbox::start()?;
    pg.psql(
        "postgres",
        "CREATE ROLE bench_svc LOGIN PASSWORD 'bench-svc';
         CREATE ROLE bench_read LOGIN PASSWORD 'bench-read';",
    )?;
    pg.psql("postgres", "CREATE DATABASE bench OWNER bench_svc")?;
    pg.psql("postgres", "CREATE DATABASE bench_state")?;
    let dir = tempfile::tempdir()?;
    let deployment = write_deployment(
        dir.path(),
        &DeploymentSpec {
            databases: vec![DeploymentDatabase {
                name: "bench",
                host: "127.0.0.1",
                extra: "",
                port: pg.port,
                user: "bench_svc",
                password: "bench-svc",
                levels: vec![("read", "bench_read", "bench-read")],
                guardrails: "",
                provisioning: "per_grant_roles = false",
            }],
            users: vec![("eve", vec!["engineer"]), ("carol", vec!["approver"])],
            without_mfa: Vec::new(),
            allow_plaintext_loopback: true,
            proxy_ca: false,
            timings: "",
            proxy_extra: "",
            audit_durability: "fsync",
        },
    )?;
    let base = std::fs::read_to_string(&deployment.config_path)?.replace(
        "sqlite_path = \"state.db\"",
        &format!("url = \"{}\"", pg.url("bench_state")),
    );
    let node = |i: usize| -> Result<lockbox::config::Config, Box<dyn std::error::Error>> {
        let mut text = base.clone() + &format!("\n[node]\nid = \"node-{i}\"\n");
        if i > 1 {
            text = text
                .replace(
                    &format!("listen = \"127.0.0.1:{}\"", deployment.proxy_port),
                    &format!("listen = \"127.0.0.1:{}\"", free_port()?),
                )
                .replace(
                    &format!("listen = \"127.0.0.1:{}\"", deployment.api_port),
                    &format!("listen = \"127.0.0.1:{}\"", free_port()?),
                )
                .replace("audit/audit.jsonl", &format!("audit/node{i}.jsonl"));
        }
        let path = dir.path().join(format!("node{i}.toml"));
        std::fs::write(&path, text)?;
        Ok(lockbox::config::Config::load(&path)?)
    };
    eprintln!("starting two nodes");
    let one = lockbox::server::start(node(1)?).await?;
    let two = lockbox::server::start(node(2)?).await?;
    let client = |user: &str| {
        lockbox::client::ApiClient::new(
            &format!("http://{}", one.api_addr),
            deployment
                .api_keys
                .get(user)
                .map(String::as_str)
                .unwrap_or(""),
        )
    };
    let (eve, carol) = (client("eve"), client("carol"));

    eprintln!("running {ROUNDS} revocations");
    let mut latencies = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let id = eve
            .create_request(&NewRequest {
                database: "bench".into(),
                ticket: "T-1".into(),
                reason: "bench".into(),
                access: AccessLevel::Read,
                duration: Some("1h".into()),
                ..NewRequest::default()
            })
            .await?
            .id
            .0;
        carol.approve(&id, "ok").await?;
        let token = eve.token(&id).await?.token;
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(two.proxy_addr.port())
            .dbname("bench")
            .user("eve")
            .password(token);
        let (session, connection) = config.connect(tokio_postgres::NoTls).await?;
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = connection.await;
            let _ = ended_tx.send(Instant::now());
        });
        session.simple_query("SELECT 1").await?;
        let sent = Instant::now();
        carol.revoke(&id, "bench").await?;
        let dropped = tokio::time::timeout(Duration::from_secs(10), ended).await??;
        latencies.push(dropped.duration_since(sent));
        drop(session);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "revocation on node 1 → session on node 2 dropped, {ROUNDS} revocations: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    two.shutdown().await;
    one.shutdown().await;
    Ok(())
}
