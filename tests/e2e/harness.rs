//! Test harness: one real PostgreSQL per test binary, one database and one in-process
//! lockbox per test, real clients.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use lockbox::client::ApiClient;
use lockbox::demo::{write_deployment, Deployment, DeploymentDatabase, DeploymentSpec};
use lockbox::policy::{AccessLevel, NewRequest, RequestStatus};
use lockbox::sandbox::PgSandbox;
use lockbox::server::RunningServer;
use lockbox::wire::BackendEvent;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SERVICE_ROLE: &str = "lockbox_svc";
pub const SERVICE_PASSWORD: &str = "svc-password-for-tests";
/// A service role that may create roles: with it, grants get roles of their own
/// (`lockbox_svc` may not, so by default the tests' grants log in as the level roles).
pub const PROVISIONER_ROLE: &str = "lockbox_provisioner";
pub const PROVISIONER_PASSWORD: &str = "provisioner-password";

/// The CA that signed the shared cluster's TLS certificate (for 127.0.0.1 only).
pub fn cluster_ca() -> &'static str {
    static CA: OnceLock<String> = OnceLock::new();
    CA.get_or_init(|| {
        let pg = cluster();
        let (ca, cert, key) =
            lockbox::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate CA");
        pg.enable_tls(&cert, &key)
            .expect("enable TLS on the test cluster");
        ca
    })
}

/// The shared cluster. Fails loudly, never skips, when PostgreSQL is not installed.
pub fn cluster() -> &'static PgSandbox {
    static CLUSTER: OnceLock<PgSandbox> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let pg =
            PgSandbox::start().unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
        create_roles(&pg);
        pg
    })
}

/// The roles `Env` logs in with, on a cluster of a test's own (the shared one has them).
pub fn create_roles(pg: &PgSandbox) {
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {SERVICE_ROLE} LOGIN PASSWORD '{SERVICE_PASSWORD}';
                 SET password_encryption = 'md5';
                 CREATE ROLE lockbox_md5 LOGIN PASSWORD 'md5-password';
                 CREATE ROLE lockbox_trust LOGIN;
                 RESET password_encryption;
                 CREATE ROLE lockbox_read LOGIN PASSWORD 'read-password';
                 CREATE ROLE lockbox_write LOGIN PASSWORD 'write-password';
                 CREATE ROLE {PROVISIONER_ROLE} LOGIN CREATEROLE PASSWORD '{PROVISIONER_PASSWORD}';"
        ),
    )
    .expect("create roles");
}

/// Options for one test's lockbox.
pub struct Options {
    pub plaintext: bool,
    pub timings: &'static str,
    /// More `[proxy]` keys.
    pub proxy_extra: &'static str,
    pub upstream_user: &'static str,
    pub upstream_password: &'static str,
    pub guardrails: &'static str,
    /// Body of `[databases.provisioning]` of the test's database.
    pub provisioning: &'static str,
    pub upstream_host: &'static str,
    /// `tls = …` for the upstream; `tls_ca = "ca.pem"` points at the cluster's CA.
    pub upstream_tls: &'static str,
    /// Write this PEM as the deployment's `ca.pem` instead of the cluster's CA.
    pub ca_override: Option<String>,
    /// Put the audit file here instead of inside the deployment folder.
    pub audit_path: Option<PathBuf>,
    pub audit_durability: &'static str,
    /// More top-level TOML (`[policy]` keys, `[[rules]]`), appended to the config.
    pub policy: &'static str,
    /// Run against this cluster (roles made by `create_roles`) instead of the shared one.
    pub cluster: Option<&'static PgSandbox>,
    /// Put the deployment's second database, `other`, on this cluster instead of the
    /// test database's (a test that stops its own cluster keeps another one served).
    pub other_cluster: Option<&'static PgSandbox>,
    /// Keep the state in a PostgreSQL database of the test's cluster (`[state] url`, node
    /// id `node-1`) instead of SQLite; `LOCKBOX_TEST_STATE=postgres` sets it for every test.
    pub state_postgres: bool,
    /// Create the test's database in this encoding (`LATIN1`, `SQL_ASCII`) instead of the
    /// cluster's UTF8.
    pub db_encoding: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plaintext: true,
            timings: "",
            proxy_extra: "",
            upstream_user: SERVICE_ROLE,
            upstream_password: SERVICE_PASSWORD,
            guardrails: "",
            provisioning: "",
            upstream_host: "127.0.0.1",
            upstream_tls: "",
            ca_override: None,
            audit_path: None,
            audit_durability: "fsync",
            policy: "",
            cluster: None,
            other_cluster: None,
            state_postgres: std::env::var("LOCKBOX_TEST_STATE").is_ok_and(|v| v == "postgres"),
            db_encoding: None,
        }
    }
}

/// One test's world: a fresh database, a deployment and a running lockbox.
pub struct Env {
    pub db: String,
    pub deployment: Deployment,
    pub server: Option<RunningServer>,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    /// The cluster this test's database lives on.
    pub pg: &'static PgSandbox,
    _dir: tempfile::TempDir,
}

/// Every test deployment lets the `oncall` role use break-glass access.
pub const BREAK_GLASS_POLICY: &str =
    "\n[policy.break_glass]\nenabled = true\nroles = [\"oncall\"]\nmax_duration = \"30m\"\n";

pub const USERS: &[(&str, &[&str])] = &[
    ("eve", &["engineer"]),
    ("bob", &["engineer"]),
    ("carol", &["approver"]),
    ("alice", &["admin"]),
    ("dave", &["auditor"]),
    ("selma", &["engineer", "approver"]),
    ("lena", &["support-lead"]),
    ("cleo", &["approver"]),
    ("nomfa", &["engineer"]),
    ("oncall", &["engineer", "oncall"]),
];

impl Env {
    pub async fn start(name: &str) -> Env {
        Env::with(name, Options::default()).await
    }

    /// A test world whose service role may create roles (per-grant roles by default).
    pub async fn provisioned(name: &str) -> Env {
        Env::with(
            name,
            Options {
                upstream_user: PROVISIONER_ROLE,
                upstream_password: PROVISIONER_PASSWORD,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn with(name: &str, options: Options) -> Env {
        let mut env = Env::prepare(name, options);
        let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
        env.audit_path = config.audit_path.clone();
        env.server = Some(lockbox::server::start(config).await.expect("server starts"));
        env
    }

    /// The test's database and deployment, with lockbox not started.
    pub fn prepare(name: &str, options: Options) -> Env {
        let pg = options.cluster.unwrap_or_else(cluster);
        let db = format!("t_{name}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
            .expect("drop database");
        let encoding = options.db_encoding.map_or(String::new(), |e| {
            format!(" ENCODING '{e}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        });
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {db} OWNER {SERVICE_ROLE}{encoding}"),
        )
        .expect("create database");
        pg.psql(
            &db,
            &format!(
                "SET ROLE {SERVICE_ROLE};
                 CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
                 INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
                 GRANT ALL ON items TO lockbox_md5, lockbox_trust;
                 GRANT SELECT ON items TO lockbox_read;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON items TO lockbox_write;
                 CREATE TABLE secrets (id int, value text);
                 INSERT INTO secrets VALUES (1, 'the launch codes');
                 CREATE FUNCTION rename_all() RETURNS void LANGUAGE sql AS $$ UPDATE items SET name = 'renamed' $$;"
            ),
        )
        .expect("create table");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = options
            .ca_override
            .clone()
            .unwrap_or_else(|| cluster_ca().to_owned());
        std::fs::write(dir.path().join("ca.pem"), ca).expect("write CA");
        let upstream_tls = options.upstream_tls.to_owned();
        let deployment = write_deployment(
            dir.path(),
            &DeploymentSpec {
                databases: vec![
                    DeploymentDatabase {
                        name: &db,
                        host: options.upstream_host,
                        extra: &upstream_tls,
                        port: pg.port,
                        user: options.upstream_user,
                        password: options.upstream_password,
                        levels: vec![
                            ("read", "lockbox_read", "read-password"),
                            ("write", "lockbox_write", "write-password"),
                        ],
                        guardrails: options.guardrails,
                        provisioning: options.provisioning,
                    },
                    DeploymentDatabase {
                        name: "other",
                        host: "127.0.0.1",
                        extra: "",
                        port: options.other_cluster.unwrap_or(pg).port,
                        user: SERVICE_ROLE,
                        password: SERVICE_PASSWORD,
                        levels: vec![("read", "lockbox_read", "read-password")],
                        guardrails: "",
                        provisioning: "",
                    },
                ],
                users: USERS.iter().map(|(n, r)| (*n, r.to_vec())).collect(),
                without_mfa: vec!["nomfa"],
                allow_plaintext_loopback: options.plaintext,
                proxy_ca: false,
                timings: options.timings,
                proxy_extra: options.proxy_extra,
                audit_durability: options.audit_durability,
            },
        )
        .expect("write deployment");
        let config_path = deployment.config_path.clone();
        if let Some(audit) = &options.audit_path {
            let text = std::fs::read_to_string(&config_path).expect("config");
            let text = text.replace(
                "path = \"audit/audit.jsonl\"",
                &format!("path = \"{}\"", audit.display()),
            );
            std::fs::write(&config_path, text).expect("config");
        }
        let mut text = std::fs::read_to_string(&config_path).expect("config");
        text.push_str(BREAK_GLASS_POLICY);
        text.push_str(options.policy);
        if options.state_postgres {
            // On the shared cluster even when the test has a cluster of its own: that one
            // is the upstream a fault test crashes or stalls, and a store going down with
            // it is another test (`fleet::with_the_state_store_down_…`).
            text = postgres_state(cluster(), &format!("s_{name}"), &text);
        }
        std::fs::write(&config_path, text).expect("config");
        Env {
            db,
            deployment,
            server: None,
            config_path,
            audit_path: PathBuf::new(),
            pg,
            _dir: dir,
        }
    }

    pub fn client(&self, user: &str) -> ApiClient {
        self.deployment.client(user)
    }

    pub fn proxy_port(&self) -> u16 {
        // The configured port: the in-process server binds it, and so does `lockbox serve`.
        self.deployment.proxy_port
    }

    /// Files a read request as `engineer`, has carol approve it, returns (request id, token).
    pub async fn approved_token(&self, engineer: &str, duration: &str) -> (String, String) {
        self.approved_token_for(engineer, duration, AccessLevel::Read)
            .await
    }

    pub async fn approved_token_for(
        &self,
        engineer: &str,
        duration: &str,
        access: AccessLevel,
    ) -> (String, String) {
        self.approved(engineer, self.new_request(duration, access))
            .await
    }

    /// Files `new` as `engineer`, has it approved (by the support lead lena where the
    /// rules want an internal approval, then by carol), returns (request id, token).
    pub async fn approved(&self, engineer: &str, new: NewRequest) -> (String, String) {
        let id = self.file(engineer, &new).await;
        self.approve_all(&id).await;
        let token = self.client(engineer).token(&id).await.expect("token");
        (id, token.token)
    }

    /// Approves every stage of `id`: lena for the internal stage, carol for the customer's.
    pub async fn approve_all(&self, id: &str) {
        loop {
            let request = self.client("carol").show_request(id).await.expect("show");
            let approver = match request.status {
                RequestStatus::PendingInternal => "lena",
                RequestStatus::PendingCustomer => "carol",
                _ => return,
            };
            self.client(approver)
                .approve(id, "ok for the ticket")
                .await
                .expect("approve");
        }
    }

    pub async fn pending_request(&self, engineer: &str, duration: &str) -> String {
        self.request_for(engineer, duration, AccessLevel::Read)
            .await
    }

    pub async fn request_for(&self, engineer: &str, duration: &str, access: AccessLevel) -> String {
        self.file(engineer, &self.new_request(duration, access))
            .await
    }

    /// A request for this test's database, ticket T-1.
    fn new_request(&self, duration: &str, access: AccessLevel) -> NewRequest {
        NewRequest {
            database: self.db.clone(),
            ticket: "T-1".into(),
            reason: "investigate".into(),
            access,
            duration: Some(duration.into()),
            ..NewRequest::default()
        }
    }

    /// Files `new` as `engineer`, returns the request id.
    pub async fn file(&self, engineer: &str, new: &NewRequest) -> String {
        self.client(engineer)
            .create_request(new)
            .await
            .expect("create request")
            .id
            .0
    }

    pub fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        self.pg_config_at(self.proxy_port(), user, password)
    }

    /// `pg_config` for the proxy on `port` (another node of a fleet).
    pub fn pg_config_at(&self, port: u16, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(port)
            .dbname(&self.db)
            .user(user)
            .password(password)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connects through the proxy in plaintext (allowed from loopback in tests). The join
    /// handle yields the connection's final error.
    pub async fn connect(
        &self,
        user: &str,
        token: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        let (client, connection) = self
            .pg_config(user, token)
            .connect(tokio_postgres::NoTls)
            .await?;
        let handle = tokio::spawn(async move { connection.await.err() });
        Ok((client, handle))
    }

    /// Every record in the audit file.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        // The writer may be mid-line: only lines that are finished count.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect()
    }

    /// Audit records of `kind` ("statement", "outcome", …) for `request`.
    pub fn audit_of(&self, kind: &str, request: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["type"] == kind && r["request_id"] == request)
            .collect()
    }

    /// Waits (bounded) until `check` holds on the audit trail.
    pub async fn wait_for_audit(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..100 {
            let records = self.audit();
            if check(&records) {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("audit never showed {what}: {:#?}", self.audit());
    }

    /// The (SQLite) state store, opened behind the server's back, and its path.
    fn state_store(&self) -> (rusqlite::Connection, PathBuf) {
        let path = self
            .config_path
            .parent()
            .expect("config folder")
            .join("state.db");
        let db = rusqlite::Connection::open(&path).expect("state store");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        (db, path)
    }

    /// Writes `reason` into request `id` as the (SQLite) state store holds it, past the
    /// API's checks: what a request filed before those checks, or restored from a backup,
    /// may hold. What shows it must still escape it.
    pub fn store_reason(&self, id: &str, reason: &str) {
        let (db, path) = self.state_store();
        let changed = db
            .execute(
                "UPDATE requests SET body = json_set(body, '$.reason', ?1) WHERE id = ?2",
                (reason, id),
            )
            .expect("rewrite the reason");
        assert_eq!(changed, 1, "request {id} in {}", path.display());
    }

    /// Marks request `id` revoked in the (SQLite) state store, as another node sharing it
    /// would (its clock `ahead` of this one's), without this node's proxy being told: what
    /// a session learns of it, it learns from the store.
    pub fn store_revoked_elsewhere(&self, id: &str, ahead: chrono::TimeDelta) {
        let (db, path) = self.state_store();
        let now = (chrono::Utc::now() + ahead).to_rfc3339();
        let changed = db
            .execute(
                "UPDATE requests SET status = 'revoked', body = json_insert(
                     json_set(body, '$.status', 'revoked', '$.revoked_at', ?1,
                              '$.revoked_by', 'carol', '$.revoke_reason', 'revoked elsewhere'),
                     '$.history[#]',
                     json_object('from', json_extract(body, '$.status'), 'to', 'revoked',
                                 'by', 'carol', 'at', ?1, 'reason', 'revoked elsewhere'))
                 WHERE id = ?2",
                (now, id),
            )
            .expect("revoke in the store");
        assert_eq!(changed, 1, "request {id} in {}", path.display());
    }

    /// Moves the end of request `id`'s window `later` in the (SQLite) state store, as an
    /// extension approved on another node would, without this node's proxy being told.
    pub fn store_extended_elsewhere(&self, id: &str, later: chrono::TimeDelta) {
        let (db, path) = self.state_store();
        let end: String = db
            .query_row(
                "SELECT json_extract(body, '$.access_expires_at') FROM requests WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .expect("the window's end");
        let end = chrono::DateTime::parse_from_rfc3339(&end).expect("a time") + later;
        let changed = db
            .execute(
                "UPDATE requests SET body = json_set(body, '$.access_expires_at', ?1) WHERE id = ?2",
                (end.to_rfc3339(), id),
            )
            .expect("extend in the store");
        assert_eq!(changed, 1, "request {id} in {}", path.display());
    }

    /// `lockbox audit verify --config` of this deployment's whole trail, as an auditor runs it.
    pub fn verify_trail(&self) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .args(["audit", "verify", "--config"])
            .arg(&self.config_path)
            .output()
            .expect("run lockbox")
    }

    pub fn superuser_sql(&self, sql: &str) -> String {
        self.pg.psql(&self.db, sql).expect("superuser query")
    }

    /// When request `id`'s access window ends, as the server says now.
    pub async fn window_end(&self, id: &str) -> chrono::DateTime<chrono::Utc> {
        self.client("alice")
            .show_request(id)
            .await
            .expect("show the request")
            .access_expires_at
            .expect("an approved request's window end")
    }

    /// Waits until a second past `end`: a window that ended then is over by any clock
    /// lockbox reads.
    pub async fn sleep_past(end: chrono::DateTime<chrono::Utc>) {
        let left = (end - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }

    /// Waits (bounded) until the server runs `statement` in the test's database
    /// (`pg_stat_activity` shows it active; other tests share the cluster). Its audit record
    /// is written before it is forwarded, so the record alone does not say the server has
    /// it: a cancel sent then may reach an idle backend.
    pub async fn wait_until_running(&self, statement: &str) {
        let literal = statement.replace('\'', "''");
        let count = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query = '{literal}' AND state = 'active'"
        );
        for _ in 0..400 {
            if self.superuser_sql(&count).trim() != "0" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server never ran {statement:?}");
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Restarts lockbox on the same config, state and audit files.
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = lockbox::config::Config::load(&self.config_path).expect("config loads");
        self.server = Some(
            lockbox::server::start(config)
                .await
                .expect("server restarts"),
        );
    }
}

/// `config` with its state in a fresh database `state_db` of `pg` instead of SQLite, as
/// node `node-1`.
pub fn postgres_state(pg: &PgSandbox, state_db: &str, config: &str) -> String {
    pg.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {state_db} WITH (FORCE)"),
    )
    .expect("drop state database");
    pg.psql("postgres", &format!("CREATE DATABASE {state_db}"))
        .expect("create state database");
    let mut text = config.replace(
        "sqlite_path = \"state.db\"",
        &format!(
            "url = \"postgres://postgres@127.0.0.1:{}/{state_db}\"",
            pg.port
        ),
    );
    text.push_str("\n[node]\nid = \"node-1\"\n");
    text
}

/// The SQLSTATE and message of a failed connect or query.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

/// The proxy's FATAL error when a session ends mid-statement: tokio-postgres hands it to the
/// statement or to the connection, whichever was reading; the other sees "closed".
pub fn fatal_error(
    statement: Option<tokio_postgres::Error>,
    connection: Option<tokio_postgres::Error>,
) -> (String, String) {
    [statement, connection]
        .into_iter()
        .flatten()
        .map(|e| db_error(&e))
        .find(|(code, _)| !code.is_empty())
        .unwrap_or_default()
}

/// A TLS connection to `env`'s proxy, before its startup packet: an SSLRequest, then a
/// handshake that trusts only the proxy's certificate.
pub async fn tls_to_proxy(env: &Env) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", env.proxy_port()))
        .await
        .expect("connect");
    tls_over(env, tcp).await
}

/// [`tls_to_proxy`] over a socket the caller connected (with its own buffer sizes).
pub async fn tls_over(env: &Env, mut tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    tcp.write_all(&ssl_request).await.expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    let config = lockbox::tls::client_config_pinned(&env.deployment.cert_pem).expect("config");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Logs in to `env`'s proxy over TLS as `user` with `token`, without waiting for the
/// answer.
pub async fn tls_login(
    env: &Env,
    user: &str,
    token: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_to_proxy(env).await;
    tls.write_all(&startup_packet(&[("user", user), ("database", &env.db)]))
        .await
        .expect("startup");
    tls.write_all(&message(b'p', &[token.as_bytes(), b"\0"].concat()))
        .await
        .expect("password");
    tls.flush().await.expect("flush");
    tls
}

/// Raw protocol access for the tests that misbehave on purpose.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
        Raw {
            stream: TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        }
    }

    /// Connects and logs in as `user` with `token`, without waiting for the answer.
    pub async fn login(env: &Env, user: &str, token: &str) -> Raw {
        let mut raw = Raw::connect(env.proxy_port()).await;
        raw.send(&startup_packet(&[("user", user), ("database", &env.db)]))
            .await;
        let mut password = token.as_bytes().to_vec();
        password.push(0);
        raw.send(&message(b'p', &password)).await;
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads (bounded) until a ReadyForQuery has arrived; returns what was read.
    pub async fn read_until_ready(&mut self) -> Vec<u8> {
        self.read_until(|events| events.iter().any(|e| matches!(e, BackendEvent::Ready(_))))
            .await
    }

    /// Reads (bounded) until `n` ReadyForQuery have arrived; returns what was read.
    pub async fn read_until_readies(&mut self, n: usize) -> Vec<u8> {
        self.read_until(|events| {
            events
                .iter()
                .filter(|e| matches!(e, BackendEvent::Ready(_)))
                .count()
                >= n
        })
        .await
    }

    /// Reads (bounded) until an ErrorResponse and the ReadyForQuery after it have arrived.
    pub async fn read_until_ready_after_error(&mut self) -> Vec<u8> {
        self.read_until(|events| {
            let error_at = events
                .iter()
                .position(|e| matches!(e, BackendEvent::Error { .. }));
            error_at.is_some_and(|i| {
                events[i..]
                    .iter()
                    .any(|e| matches!(e, BackendEvent::Ready(_)))
            })
        })
        .await
    }

    /// Reads (bounded) until the messages received so far satisfy `done`.
    pub async fn read_until(&mut self, done: impl Fn(&[BackendEvent]) -> bool) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut events = Vec::new();
            lockbox::wire::BackendScanner::default().feed(&out, &mut events);
            if done(&events) {
                return out;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("the expected messages did not arrive in time")
                .expect("read");
            assert!(n > 0, "connection closed early: {out:?}");
            out.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the proxy closes (bounded); returns everything received.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the proxy did not close the connection");
        out
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The ErrorResponses in a byte stream from the proxy: (sqlstate, message).
/// DataRows in `bytes`.
pub fn rows_in(bytes: &[u8]) -> usize {
    let mut events = Vec::new();
    lockbox::wire::BackendScanner::counting_rows(true).feed(bytes, &mut events);
    events
        .iter()
        .filter(|e| matches!(e, lockbox::wire::BackendEvent::DataRow))
        .count()
}

/// A raw session of a grant at `access` with a row limit of `max_rows`, ready for queries.
pub async fn limited_session(env: &Env, access: AccessLevel, max_rows: u64) -> Raw {
    let (_id, token) = env
        .approved(
            "eve",
            NewRequest {
                database: env.db.clone(),
                ticket: "T-6".into(),
                reason: "a bounded look".into(),
                access,
                duration: Some("1h".into()),
                max_rows: Some(max_rows),
                ..NewRequest::default()
            },
        )
        .await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw
}

pub fn errors_in(bytes: &[u8]) -> Vec<(String, String)> {
    let mut events = Vec::new();
    lockbox::wire::BackendScanner::default().feed(bytes, &mut events);
    events
        .into_iter()
        .filter_map(|e| match e {
            lockbox::wire::BackendEvent::Error {
                sqlstate, message, ..
            } => Some((sqlstate, message)),
            _ => None,
        })
        .collect()
}

/// Runs a Python script (psycopg 3, asyncpg) against `env`'s proxy, with `LB_PORT`,
/// `LB_DB` and `LB_TOKEN` in its environment; its standard output, trimmed. A script that
/// fails, or a Python without its modules, fails the test.
pub fn python(env: &Env, token: &str, script: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .env("LB_PORT", env.proxy_port().to_string())
        .env("LB_DB", &env.db)
        .env("LB_TOKEN", token)
        .output()
        .expect("python3 runs (.ci/run installs psycopg 3 and asyncpg)");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "python failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of series `name` once `check` holds of it, scraped every 100 ms; after
/// `within`, the last value read, for the caller's assertion to show.
pub async fn metric_when(
    env: &Env,
    name: &str,
    within: Duration,
    check: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = metric(env, name).await;
        if check(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled series `name` in `env`'s `/metrics`, scraped as an admin.
pub async fn metric(env: &Env, name: &str) -> f64 {
    let key = &env.deployment.api_keys["alice"];
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", env.deployment.server_url()))
        .bearer_auth(key)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `user`'s `[[users]]` block in the config `text` (after its `[[users]]` line), and in it the
/// line of their roles: what a test rewrites to change their roles, or cuts to remove them.
pub fn user_block<'t>(text: &'t str, user: &str) -> (&'t str, &'t str) {
    let block = text
        .split("[[users]]")
        .find(|block| block.contains(&format!("name = \"{user}\"")))
        .expect("the user's block");
    let roles = block
        .lines()
        .find(|l| l.starts_with("roles = "))
        .expect("the user's roles");
    (block, roles)
}
