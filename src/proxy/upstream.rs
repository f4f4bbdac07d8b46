//! The proxy's own connection to the upstream database, logged in as the grant's role
//! (trust, cleartext, MD5 or SCRAM-SHA-256, via postgres-protocol).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;

use super::scram::{ScramClient, ScramError};
use postgres_protocol::message::{backend::Message, frontend};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::BoxStream;
use crate::config::{Credentials, Database};
use crate::policy::AccessLevel;
use crate::wire::{self, BackendEvent, BackendScanner};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the proxy's own queries (not a session's) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message accepted from upstream during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {0} did not answer in time")]
    Timeout(String),
    #[error("upstream refused TLS")]
    NoTls,
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream rejected the login: {sqlstate} {message}")]
    Rejected {
        sqlstate: String,
        message: String,
        /// The server's routine that refused it (the ErrorResponse's `R` field, empty if
        /// none): unlike the message, never translated.
        routine: String,
    },
    #[error("upstream asks for a password and none is configured")]
    NoPassword,
    #[error("upstream wants an unsupported authentication method")]
    UnsupportedAuth,
    #[error("upstream did not answer the proxy's query in time")]
    QueryTimeout,
    #[error("upstream query failed: {sqlstate} {message}")]
    Query { sqlstate: String, message: String },
    #[error("upstream protocol: {0}")]
    Protocol(String),
    #[error("upstream closed the connection during login")]
    Closed,
    #[error("upstream login: {0}")]
    Scram(#[from] ScramError),
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl UpstreamError {
    /// Whether the server could not take the login for now, rather than refused the
    /// login itself: unreachable, closing the connection, starting up or shutting down
    /// (57P01–57P03, crash recovery among them), or out of connections (53300).
    pub(crate) fn server_unavailable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Closed
            | UpstreamError::Io(_) => true,
            UpstreamError::Rejected { sqlstate, .. } => {
                sqlstate.starts_with("57P") || sqlstate == "53300"
            }
            _ => false,
        }
    }

    /// The SQLSTATE of a login the server refused.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            UpstreamError::Rejected { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    /// A login the server refused for the role's `CONNECTION LIMIT` (PostgreSQL's "too many
    /// connections for role"), not the database's or the server's: the one limit lockbox
    /// sets, to a grant's session limit plus the reaper's slot. Told by the routine that
    /// checks it, so a server whose messages are translated (`lc_messages`) is read alike;
    /// by the English text where a server names no routine.
    pub(crate) fn role_at_its_limit(&self) -> bool {
        matches!(self, UpstreamError::Rejected { sqlstate, message, routine }
            if sqlstate == "53300"
                && (routine == ROLE_LIMIT_ROUTINE
                    || (routine.is_empty() && message.contains("for role"))))
    }

    /// What the engineer's client is told when admission fails on this: the cause in a
    /// few words (down, stalled, refusing), never the address or the role lockbox used.
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            UpstreamError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                "lockbox could not connect to the upstream database: it refused the connection (is it running?)"
            }
            UpstreamError::Connect { .. } => {
                "lockbox could not connect to the upstream database: it could not be reached"
            }
            UpstreamError::Timeout(_) => {
                "lockbox could not connect to the upstream database: it did not answer within 10 s"
            }
            UpstreamError::Rejected { sqlstate, .. } if sqlstate == "57P03" => {
                "lockbox could not connect to the upstream database: it is starting up or shutting down"
            }
            e if e.role_at_its_limit() => {
                "lockbox could not connect to the upstream database: the role this access logs in as is at its connection limit there (sessions through this proxy or another)"
            }
            UpstreamError::Rejected { sqlstate, .. } if sqlstate == "53300" => {
                "lockbox could not connect to the upstream database: it has no connection slot free (too many connections, the server's or the role's limit)"
            }
            UpstreamError::Rejected { .. } => {
                "lockbox could not connect to the upstream database: it refused lockbox's login"
            }
            UpstreamError::NoTls | UpstreamError::Tls(_) => {
                "lockbox could not connect to the upstream database: TLS to it failed"
            }
            _ => "lockbox could not connect to the upstream database: its login failed",
        }
    }
}

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    pub stream: BoxStream,
    /// ParameterStatus (and notice) messages to replay to the client, as received.
    pub greeting: BytesMut,
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Transaction status byte of the first ReadyForQuery.
    pub ready_status: u8,
}

/// Whether the server's greeting (its ParameterStatus messages at login) says its encoding
/// is UTF8, the parser's own: only then does the server cut an identifier over 63 bytes
/// where the parser does (in another encoding its bytes differ, and so may the cut). Fails
/// closed: a greeting that does not say so reads as another encoding.
pub(crate) fn greeting_says_utf8(greeting: &[u8]) -> bool {
    let mut rest = greeting;
    while let [tag, l0, l1, l2, l3, after @ ..] = rest {
        let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
        let Some(body) = len.checked_sub(4).and_then(|n| after.get(..n)) else {
            return false;
        };
        if *tag == b'S' {
            let mut fields = body.split(|b| *b == 0);
            if fields.next() == Some(b"server_encoding".as_slice()) {
                return fields.next() == Some(b"UTF8".as_slice());
            }
        }
        rest = &after[body.len()..];
    }
    false
}

/// Connects and logs in to `db` as `credentials` (the grant's role, see `provision`),
/// passing `params` (already filtered) in the startup packet. Read sessions also start
/// read-only, on top of a role that cannot write.
pub async fn connect(
    db: &Database,
    credentials: &Credentials,
    access: AccessLevel,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let stream = dial(&DialTarget::of(db)).await?;
    login_on(stream, db, credentials, access, params).await
}

/// What a dial needs of a database, owned: a login's dial runs as a task of its own
/// (see `early_dial`).
#[derive(Clone)]
pub(crate) struct DialTarget {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The same server, reached the same way (the very TLS settings, not merely equal ones: a
/// reload builds new ones, and a dial made under the old ones is not used after it).
impl PartialEq for DialTarget {
    fn eq(&self, other: &DialTarget) -> bool {
        self.host == other.host
            && self.port == other.port
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl DialTarget {
    pub(crate) fn of(db: &Database) -> DialTarget {
        DialTarget {
            host: db.host.clone(),
            port: db.port,
            tls: db.tls_client.clone(),
        }
    }

    /// A plaintext database on the loopback interface.
    #[cfg(test)]
    pub(crate) fn loopback(port: u16) -> DialTarget {
        DialTarget {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        }
    }
}

/// The connection to a database, TLS negotiated when it is configured, and not a byte of
/// a login sent: a server closed now sees a connection that never said anything.
pub(crate) async fn dial(target: &DialTarget) -> Result<BoxStream, UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(addr.clone()))?
    .map_err(|source| UpstreamError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    // The TLS negotiation shares the login's bound: a stalled server (SIGSTOP, a hung host)
    // still completes the TCP handshake from the kernel's backlog, then never answers the
    // SSLRequest, and admission would wait for ever.
    match &target.tls {
        None => Ok(Box::new(tcp) as BoxStream),
        Some(config) => tokio::time::timeout(
            CONNECT_TIMEOUT,
            start_tls(tcp, &target.host, config.clone()),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(addr))?,
    }
}

/// Logs in on a dialed `stream` to `db` as `credentials`: see [`connect`].
pub(crate) async fn login_on(
    stream: BoxStream,
    db: &Database,
    credentials: &Credentials,
    access: AccessLevel,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut params = params.to_vec();
    // The proxy splits query strings as a server with these settings does; pinning them
    // keeps a role or database default from making the two readings differ.
    // The text is read as UTF-8 whatever encoding the client asked for (it learns the
    // encoding in force from ParameterStatus, as after any SET).
    params.push(("client_encoding".into(), "UTF8".into()));
    params.push(("standard_conforming_strings".into(), "on".into()));
    params.push(("backslash_quote".into(), "safe_encoding".into()));
    if access == AccessLevel::Read {
        params.push(("default_transaction_read_only".into(), "on".into()));
    }
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        login(stream, &db.dbname, credentials, &params),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(format!("{}:{}", db.host, db.port)))?
}

async fn start_tls(
    mut tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<BoxStream, UpstreamError> {
    tcp.write_all(&ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::NoTls);
    }
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

fn ssl_request() -> [u8; 8] {
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&8i32.to_be_bytes());
    p[4..8].copy_from_slice(&wire::codes::SSL_REQUEST.to_be_bytes());
    p
}

async fn login(
    mut stream: BoxStream,
    dbname: &str,
    db: &Credentials,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", &db.user), ("database", dbname)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut out)?;
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut greeting = BytesMut::new();
    let mut scram: Option<ScramClient> = None;
    let mut key = (0, 0);
    loop {
        let frame = next_frame(&mut stream, &mut buf).await?;
        let tag = frame[0];
        let raw = frame.clone().freeze();
        let mut parse_buf = frame;
        let message = Message::parse(&mut parse_buf)?
            .ok_or_else(|| UpstreamError::Protocol("incomplete message".into()))?;
        out.clear();
        match message {
            // A server that started SCRAM must prove it knows the password before it
            // says the login succeeded; one that skips the final message is not trusted.
            Message::AuthenticationOk if scram.as_ref().is_some_and(|s| !s.verified()) => {
                return Err(UpstreamError::Scram(ScramError::Protocol(
                    "the server accepted the login without proving it knows the password",
                )));
            }
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password(db)?.as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    db.user.as_bytes(),
                    password(db)?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(_) => {
                let s = ScramClient::new(password(db)?);
                frontend::sasl_initial_response(
                    SCRAM_SHA_256,
                    s.first_message().as_bytes(),
                    &mut out,
                )?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                frontend::sasl_response(s.respond(body.data())?.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                s.verify(body.data())?;
            }
            Message::BackendKeyData(body) => key = (body.process_id(), body.secret_key()),
            Message::ParameterStatus(_) | Message::NoticeResponse(_) => {
                greeting.extend_from_slice(&raw)
            }
            Message::ErrorResponse(_) => return Err(rejected(&raw)),
            Message::ReadyForQuery(body) => {
                return Ok(Upstream {
                    stream,
                    greeting,
                    backend_pid: key.0,
                    backend_secret: key.1,
                    ready_status: body.status(),
                })
            }
            _ if tag == b'R' => return Err(UpstreamError::UnsupportedAuth),
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

impl Upstream {
    /// Runs `sql` (one statement, simple protocol) on the proxy's own connection and
    /// returns the row count of its command tag (`SELECT 3` → 3). Rows themselves are
    /// skipped: the proxy's queries say what they found by how many rows match.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<u64, UpstreamError> {
        tokio::time::timeout(QUERY_TIMEOUT, self.run_simple_query(sql))
            .await
            .map_err(|_| UpstreamError::QueryTimeout)?
    }

    async fn run_simple_query(&mut self, sql: &str) -> Result<u64, UpstreamError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        // The scanner keeps partial messages itself and skips row data, so what is read
        // never piles up, however many rows come back.
        let mut scanner = BackendScanner::default();
        let mut buf = BytesMut::with_capacity(4096);
        let mut events = Vec::new();
        let (mut rows, mut error) = (None, None);
        loop {
            buf.clear();
            if self.stream.read_buf(&mut buf).await? == 0 {
                return Err(UpstreamError::Protocol(
                    "upstream closed the connection during a query".into(),
                ));
            }
            scanner.feed(&buf, &mut events);
            for event in events.drain(..) {
                match event {
                    BackendEvent::Complete(tag) => rows = Some(tag_rows(&tag)?),
                    BackendEvent::Error {
                        sqlstate, message, ..
                    } => {
                        error.get_or_insert(UpstreamError::Query { sqlstate, message });
                    }
                    BackendEvent::Ready(_) => {
                        return match (error, rows) {
                            (Some(e), _) => Err(e),
                            (None, Some(n)) => Ok(n),
                            (None, None) => {
                                Err(UpstreamError::Protocol("query completed nothing".into()))
                            }
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Upstream {
    /// Logs out (Terminate), so the server does not log the proxy's own connection as
    /// lost. Bounded: a server that does not take it is simply left.
    pub(crate) async fn close(mut self) {
        let terminate = async {
            let mut out = BytesMut::new();
            frontend::terminate(&mut out);
            self.stream.write_all(&out).await?;
            self.stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), terminate).await;
    }

    /// Logs out and waits (bounded, 1 s) until the server closes the connection: its
    /// backend has exited, so its connection slot is free again.
    pub(crate) async fn close_and_wait(mut self) {
        let logged_out = async {
            let mut out = BytesMut::new();
            frontend::terminate(&mut out);
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
            let mut rest = [0u8; 512];
            while self.stream.read(&mut rest).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), logged_out).await;
    }
}

/// The row count at the end of a command tag (`SELECT 3`, `INSERT 0 3`).
fn tag_rows(tag: &str) -> Result<u64, UpstreamError> {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| UpstreamError::Protocol(format!("command tag without a count: {tag}")))
}

fn password(db: &Credentials) -> Result<&str, UpstreamError> {
    db.password.as_deref().ok_or(UpstreamError::NoPassword)
}

/// PostgreSQL's routine that refuses a login past its role's `CONNECTION LIMIT`
/// (`miscinit.c`, the same from 8.1 to 18).
const ROLE_LIMIT_ROUTINE: &str = "InitializeSessionUserId";

fn rejected(raw: &Bytes) -> UpstreamError {
    let mut events = Vec::new();
    BackendScanner::default().feed(raw, &mut events);
    match events.pop() {
        Some(BackendEvent::Error {
            sqlstate, message, ..
        }) => UpstreamError::Rejected {
            sqlstate,
            message,
            routine: error_routine(raw),
        },
        _ => UpstreamError::Protocol("unreadable error response".into()),
    }
}

/// The `R` field of an ErrorResponse frame (type byte, length, then fields each a type
/// byte and a NUL-terminated value), empty if it has none.
fn error_routine(frame: &[u8]) -> String {
    frame
        .get(5..)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"R"))
        .map(|routine| String::from_utf8_lossy(routine).into_owned())
        .unwrap_or_default()
}

async fn next_frame(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<BytesMut, UpstreamError> {
    loop {
        if let Some(frame) = wire::split_frame(buf, MAX_LOGIN_MESSAGE)
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

/// Asks the upstream server to cancel whatever `pid` is running.
pub async fn send_cancel(host: &str, port: u16, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel connect timed out")
        })??;
    tcp.write_all(&wire::cancel_request(pid, secret)).await?;
    // The server closes once it has read the request; waiting for that makes sure it did.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, value: &str) -> Vec<u8> {
        let body = [name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat();
        let mut message = vec![b'S'];
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn the_greeting_says_whether_the_server_reads_names_as_utf8() {
        let others = [
            parameter("application_name", "UTF8"),
            parameter("client_encoding", "UTF8"),
        ]
        .concat();
        let with =
            |encoding: &str| [others.clone(), parameter("server_encoding", encoding)].concat();
        assert!(greeting_says_utf8(&with("UTF8")));
        for other in ["LATIN1", "SQL_ASCII", "utf8", "UTF8 "] {
            assert!(!greeting_says_utf8(&with(other)), "{other}");
        }
        assert!(!greeting_says_utf8(&others), "not said: not UTF8");
        let whole = with("UTF8");
        for cut in 0..whole.len() {
            assert!(!greeting_says_utf8(&whole[..cut]), "cut at {cut}");
        }
        let mut lying = with("UTF8");
        lying[others.len() + 4] = 0xff;
        assert!(!greeting_says_utf8(&lying), "a length past the end");
    }

    #[test]
    fn a_server_restarting_or_full_is_unavailable_and_a_refused_login_is_not() {
        let rejected = |sqlstate: &str| UpstreamError::Rejected {
            sqlstate: sqlstate.into(),
            message: String::new(),
            routine: String::new(),
        };
        for unavailable in [
            rejected("57P03"),
            rejected("57P01"),
            rejected("53300"),
            UpstreamError::Closed,
            UpstreamError::Timeout("db".into()),
        ] {
            assert!(unavailable.server_unavailable(), "{unavailable}");
        }
        for refused in [
            rejected("28P01"),
            rejected("28000"),
            UpstreamError::NoPassword,
        ] {
            assert!(!refused.server_unavailable(), "{refused}");
        }
    }

    /// An ErrorResponse frame with `fields`, as the server sends it.
    fn error_frame(fields: &[(u8, &str)]) -> Bytes {
        let mut body = Vec::new();
        for (kind, value) in fields {
            body.push(*kind);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        frame.extend_from_slice(&body);
        Bytes::from(frame)
    }

    /// The role's limit is told from the database's and the server's by the routine that
    /// refused (fields as PostgreSQL 15 sends them), in any language; by its English text
    /// only where the server names no routine.
    #[test]
    fn a_refusal_at_the_roles_limit_is_told_in_any_language() {
        let refusal = |message: &str, routine: Option<&str>| {
            let mut fields = vec![(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "53300")];
            fields.push((b'M', message));
            fields.extend([(b'F', "miscinit.c"), (b'L', "842")]);
            fields.extend(routine.map(|r| (b'R', r)));
            rejected(&error_frame(&fields))
        };
        let role = "InitializeSessionUserId";
        for at_role_limit in [
            refusal("too many connections for role \"lockbox_r\"", Some(role)),
            refusal("zu viele Verbindungen für Rolle »lockbox_r«", Some(role)),
            refusal("too many connections for role \"lockbox_r\"", None),
        ] {
            assert!(at_role_limit.role_at_its_limit(), "{at_role_limit}");
        }
        for other_limit in [
            refusal(
                "too many connections for database \"d\"",
                Some("CheckMyDatabase"),
            ),
            refusal("sorry, too many clients already", Some("InitProcess")),
            refusal("zu viele Verbindungen für Datenbank »d«", None),
            refusal("too many connections for role \"r\"", Some("InitProcess")),
        ] {
            assert!(!other_limit.role_at_its_limit(), "{other_limit}");
        }
    }

    #[test]
    fn command_tags_give_their_row_count() {
        assert_eq!(tag_rows("SELECT 0").ok(), Some(0));
        assert_eq!(tag_rows("SELECT 3").ok(), Some(3));
        assert_eq!(tag_rows("INSERT 0 7").ok(), Some(7));
        assert!(tag_rows("BEGIN").is_err());
    }

    /// A server that starts SCRAM, then says "ok" without its final message (so without
    /// proving it knows the password), is refused.
    #[tokio::test]
    async fn a_server_skipping_the_scram_proof_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (proxy_side, mut server) = tokio::io::duplex(64 * 1024);
        let fake = tokio::spawn(async move {
            let auth = |code: i32, body: &[u8]| {
                let mut m = vec![b'R'];
                m.extend_from_slice(&(8 + body.len() as i32).to_be_bytes());
                m.extend_from_slice(&code.to_be_bytes());
                m.extend_from_slice(body);
                m
            };
            let mut buf = vec![0u8; 4096];
            let _startup = server.read(&mut buf).await;
            server.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
            let n = server.read(&mut buf).await?;
            let first = String::from_utf8_lossy(&buf[..n]).into_owned();
            let nonce = first.rsplit("r=").next().unwrap_or_default().to_owned();
            let challenge = format!("r={nonce}server,s=c2FsdA==,i=4096");
            server.write_all(&auth(11, challenge.as_bytes())).await?;
            let _final = server.read(&mut buf).await?;
            server.write_all(&auth(0, b"")).await?;
            server.write_all(b"Z\0\0\0\x05I").await?;
            Ok::<_, std::io::Error>(())
        });
        let credentials = Credentials {
            user: "u".into(),
            password: Some("pw".into()),
        };
        let result = login(Box::new(proxy_side), "d", &credentials, &[]).await;
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("without proving"), "{error}");
        let _ = fake.await;
    }
}
