//! Whose end a session's end was, when the client and the server both go: a client that
//! reads the server's FATAL and closes first left because the server ended the session;
//! a server that ends the connection with its FATAL while the answers of a client that
//! left are awaited leaves no backend to cancel or reap (and its end may be a
//! revocation's, which the session's end asks the state store about), but a connection
//! that just ends may have a backend behind it still.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::fuzz::message;
use super::{CancelKey, End, Grant, Limits, Relay};
use crate::audit::{AuditLog, SessionFields};
use crate::proxy::registry::Control;
use crate::wire::{self, Severity};

struct Setup {
    relay: Relay,
    client: DuplexStream,
    server: DuplexStream,
    _audit_dir: tempfile::TempDir,
    /// Never used: the session is not ended from outside here.
    _kill: tokio::sync::watch::Sender<Control>,
}

/// A relay between an in-memory client and server whose statements are cancelled through
/// `cancel` (a listener that takes the cancel requests), if given.
fn setup(cancel: Option<u16>) -> Setup {
    setup_with(cancel, None)
}

/// [`setup`] with the grant's statement timeout.
fn setup_with(cancel: Option<u16>, statement_timeout: Option<std::time::Duration>) -> Setup {
    let (relay_client, client) = tokio::io::duplex(1 << 16);
    let (relay_server, server) = tokio::io::duplex(1 << 16);
    let dir = tempfile::tempdir().expect("a folder");
    let (audit, _syncer) = AuditLog::open(&dir.path().join("audit.jsonl"), None).expect("audit");
    let ends_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let session = Arc::new(SessionFields::new(
        "s-end".into(),
        "req-end".into(),
        "T-0".into(),
        "eve".into(),
        "sales".into(),
        "127.0.0.1:1".into(),
        false,
    ));
    let grant = Grant {
        limits: Limits {
            cancel: cancel.map(|port| CancelKey {
                host: "127.0.0.1".into(),
                port,
                pid: 1,
                secret: 2,
            }),
            settle_within: std::time::Duration::from_secs(60),
            statement_timeout,
            ..Limits::default()
        },
        ..Grant::plain_read(ends_at)
    };
    let (kill, control) = tokio::sync::watch::channel(Control::Run);
    let relay = Relay::new(
        Box::new(relay_client),
        Box::new(relay_server),
        BytesMut::new(),
        session,
        audit,
        1 << 20,
        control,
        super::monotonic_deadline(ends_at),
        grant,
    );
    Setup {
        relay,
        client,
        server,
        _audit_dir: dir,
        _kill: kill,
    }
}

/// The FATAL a backend sends as `pg_terminate_backend` (or a role's drop) ends it.
fn administrators_fatal() -> Vec<u8> {
    let mut fatal = BytesMut::new();
    wire::error_response(
        &mut fatal,
        Severity::Fatal,
        "57P01",
        "terminating connection due to administrator command",
    );
    fatal.to_vec()
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// Reads until `want` bytes came (or the stream ended); returns them.
async fn read_exactly(stream: &mut DuplexStream, want: usize) -> Vec<u8> {
    let mut got = vec![0u8; want];
    let mut at = 0;
    while at < want {
        match stream.read(&mut got[at..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    got.truncate(at);
    got
}

#[tokio::test]
async fn a_client_that_closes_after_the_servers_fatal_left_because_the_server_ended_it() {
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup(None);
    let fatal = administrators_fatal();
    let peers = async {
        // The server says why and stays open; the client reads that and closes first.
        server.write_all(&fatal).await.expect("the server writes");
        assert_eq!(read_exactly(&mut client, fatal.len()).await, fatal);
        drop(client);
        server
    };
    let (end, _server) = tokio::join!(relay.run(), peers);
    assert!(matches!(end, End::UpstreamGone), "{end:?}");
}

#[tokio::test]
async fn a_client_that_closes_between_statements_on_its_own_is_the_end() {
    let Setup {
        relay,
        client,
        server,
        _audit_dir,
        _kill,
    } = setup(None);
    drop(client);
    let end = relay.run().await;
    assert!(matches!(end, End::ClientGone), "{end:?}");
    drop(server);
}

/// A listener standing in for the postmaster, to which the relay's cancels go, and its port.
async fn postmaster() -> (tokio::net::TcpListener, u16) {
    let cancels = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let port = cancels.local_addr().expect("its address").port();
    (cancels, port)
}

/// Takes the next cancel request (for setup's pid 1 and secret 2), leaving its connection
/// open: the postmaster closes it once it has signalled the backend.
async fn take_cancel(cancels: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    let (mut request, _) = cancels.accept().await.expect("a cancel request");
    let mut packet = [0u8; 16];
    request
        .read_exact(&mut packet)
        .await
        .expect("the cancel request");
    assert_eq!(&packet[8..], &[0, 0, 0, 1, 0, 0, 0, 2]);
    request
}

/// The client sends a statement and leaves; once the proxy's cancel came (taken by a
/// listener standing in for the postmaster), the server writes `last` and closes.
async fn leave_then_server_closes(last: &[u8]) -> End {
    let (cancels, port) = postmaster().await;
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup(Some(port));
    let sent = query("SELECT pg_sleep(600)");
    let peers = async {
        client.write_all(&sent).await.expect("the client writes");
        assert_eq!(read_exactly(&mut server, sent.len()).await, sent);
        drop(client);
        // The proxy cancels the statement once it sees the client gone.
        let _request = take_cancel(&cancels).await;
        server.write_all(last).await.expect("the server writes");
        drop(server);
    };
    let (end, ()) = tokio::join!(relay.run(), peers);
    end
}

/// A statement past the grant's timeout is cancelled, and ends by itself just as the
/// cancel goes out; the client's next statement waits until the server has taken the
/// cancel (the postmaster closes the cancel's connection once it signalled the backend).
/// Sent before, it could be the one the signal interrupts: an attack review had a
/// statement of its own fail with 57014 for the one before it.
#[tokio::test]
async fn the_statement_after_a_timeout_cancel_waits_until_the_server_took_the_cancel() {
    let (cancels, port) = postmaster().await;
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup_with(Some(port), Some(std::time::Duration::from_millis(10)));
    let slow = query("SELECT pg_sleep(2)");
    let next = query("SELECT 'next'");
    let peers = async {
        client.write_all(&slow).await.expect("the client writes");
        assert_eq!(read_exactly(&mut server, slow.len()).await, slow);
        // The proxy cancels past the timeout; the postmaster (this listener) has the
        // request but has not yet acted on it.
        let request = take_cancel(&cancels).await;
        // Meanwhile the statement ended by itself, and the client sends its next.
        let done = [message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
        server.write_all(&done).await.expect("the server answers");
        assert_eq!(read_exactly(&mut client, done.len()).await, done);
        client
            .write_all(&next)
            .await
            .expect("the client writes again");
        let mut early = [0u8; 1];
        let reached = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            server.read(&mut early),
        )
        .await;
        assert!(
            reached.is_err(),
            "the next statement reached the server before it took the cancel"
        );
        drop(request);
        assert_eq!(read_exactly(&mut server, next.len()).await, next);
        drop(client);
        drop(server);
    };
    let (end, ()) = tokio::join!(relay.run(), peers);
    assert!(
        matches!(
            end,
            End::ClientGone | End::UpstreamGone | End::ClientLeftMidStatement
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_server_that_ends_the_session_while_a_leaving_clients_answers_are_awaited_is_the_end() {
    let fatal = administrators_fatal();
    let end = leave_then_server_closes(&fatal).await;
    assert!(matches!(end, End::ClientLeftThenServerClosed), "{end:?}");
}

/// A connection that ends without the server's word may have been closed by something in
/// between (a load balancer) while the backend runs on: the end stays the client's, whose
/// backend the proxy cancels and reaps.
#[tokio::test]
async fn a_connection_that_ends_without_the_servers_word_meanwhile_leaves_the_backend_to_reap() {
    let end = leave_then_server_closes(b"").await;
    assert!(matches!(end, End::ClientLeftMidStatement), "{end:?}");
}

/// The client sends a statement and stays; the server reads it, writes `last` and closes.
/// Returns the relay's end and whether it left the backend to be made sure of.
async fn server_closes_mid_statement(last: &[u8]) -> (End, bool) {
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup(None);
    let sent = query("SELECT pg_sleep(600)");
    let peers = async {
        client.write_all(&sent).await.expect("the client writes");
        assert_eq!(read_exactly(&mut server, sent.len()).await, sent);
        server.write_all(last).await.expect("the server writes");
        drop(server);
        client
    };
    let (ended, _client) = tokio::join!(relay.run_to_farewell(), peers);
    (ended.end, ended.backend_may_run_on)
}

/// Something in between (a load balancer) may close the connection while the backend
/// runs on: the cancel and the reaper make sure of it.
#[tokio::test]
async fn a_connection_that_ends_without_a_word_mid_statement_leaves_the_backend_to_make_sure_of() {
    let (end, may_run_on) = server_closes_mid_statement(b"").await;
    assert!(matches!(end, End::UpstreamGone), "{end:?}");
    assert!(may_run_on);
}

#[tokio::test]
async fn a_server_that_ends_the_session_mid_statement_leaves_no_backend_behind() {
    let fatal = administrators_fatal();
    let (end, may_run_on) = server_closes_mid_statement(&fatal).await;
    assert!(matches!(end, End::UpstreamGone), "{end:?}");
    assert!(!may_run_on);
}

#[tokio::test]
async fn a_connection_that_ends_between_statements_leaves_an_idle_backend_at_most() {
    let Setup {
        relay,
        client,
        server,
        _audit_dir,
        _kill,
    } = setup(None);
    drop(server);
    let ended = relay.run_to_farewell().await;
    assert!(matches!(ended.end, End::UpstreamGone), "{:?}", ended.end);
    assert!(!ended.backend_may_run_on);
    // Its farewell's passes count against its engineer, whichever of their grants it came
    // through (an engineer may revoke each of their own: see `Aftermath::releasing`).
    let farewell = ended.farewell.as_ref().expect("a farewell");
    assert_eq!(farewell.engineer(), "eve");
    drop(client);
}

/// A refused statement's stand-in answered by the server's FATAL (an administrator ended
/// the backend just then), then the close: the client reads that FATAL, not the refusal's
/// ERROR in its place and then a silent close.
#[tokio::test]
async fn a_fatal_in_a_refused_statements_place_reaches_the_client() {
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup(None);
    let fatal = administrators_fatal();
    let peers = async {
        client
            .write_all(&query("DELETE FROM accounts"))
            .await
            .expect("the client writes");
        // The server reads the stand-in, answers it with its FATAL and closes.
        let stand_in = read_exactly(&mut server, 5).await;
        assert_eq!(stand_in.first(), Some(&b'Q'), "the stand-in went upstream");
        server.write_all(&fatal).await.expect("the server writes");
        drop(server);
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        got
    };
    let (end, got) = tokio::join!(relay.run(), peers);
    assert!(matches!(end, End::UpstreamGone), "{end:?}");
    assert_eq!(got, fatal, "{:?}", String::from_utf8_lossy(&got));
}

/// A script may send its statement and the Terminate in one write and then read: the
/// server answers the statement before it reads the Terminate, and so does the proxy. The
/// session ends as the client's own leaving, with no statement left to cancel (an attack
/// review found the answer lost and the statement called cancelled).
#[tokio::test]
async fn a_statement_sent_with_the_terminate_is_answered_before_the_session_ends() {
    let Setup {
        relay,
        mut client,
        mut server,
        _audit_dir,
        _kill,
    } = setup(None);
    let sent = [query("SELECT 1"), message(b'X', b"")].concat();
    let answer = [message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
    let peers = async {
        client.write_all(&sent).await.expect("the client writes");
        assert_eq!(read_exactly(&mut server, sent.len()).await, sent);
        server.write_all(&answer).await.expect("the server answers");
        // Having read the Terminate, the server closes.
        drop(server);
        read_exactly(&mut client, answer.len()).await
    };
    let (ended, got) = tokio::join!(relay.run_to_farewell(), peers);
    assert_eq!(got, answer, "the client reads the statement's answer");
    assert!(matches!(ended.end, End::ClientGone), "{:?}", ended.end);
    assert!(!ended.backend_may_run_on);
}
