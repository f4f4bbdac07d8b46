//! The last words to a client whose session the proxy ended: the rest of a message a write
//! was cut short in, the FATAL that says why, and a close the client can read to the end.
//! A session the server ended (its own FATAL relayed) gets a farewell without words: the
//! close, which over TLS is a close_notify after every byte, as PostgreSQL ends it.
//!
//! By the time a session ends, megabytes of whole rows may sit in the socket's send queue
//! for a client that reads slowly. The FATAL can only follow them, so it is delivered for as
//! long as the client keeps taking bytes, not for a fixed time: a fixed bound cut the rest
//! of a row short (a torn row) or dropped the FATAL unread. The upstream connection is
//! closed before this starts, and this runs beside the reaper, so a slow reader holds
//! nothing of the database's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::proxy::stream::BoxStream;

/// How long the client may take no bytes at all before it is given up on.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// The longest a farewell lasts, however steadily the client reads.
const FAREWELL_LIMIT: Duration = Duration::from_secs(30);

/// How often the send queue is looked at while a write waits.
const TICK: Duration = Duration::from_millis(100);

/// How long the client has to close once it has every byte (see [`Farewell::deliver`]).
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// A client connection and what it is still to be told.
pub(crate) struct Farewell {
    pub(super) client: BoxStream,
    /// The TCP socket under `client` (TLS or not), to see whether queued bytes drain, and
    /// to discard them if the client is given up on.
    pub(super) client_fd: Option<std::os::fd::RawFd>,
    /// Whether it waits while the client keeps taking bytes (else [`CLOSE_WAIT`] per step).
    pub(super) patient: bool,
    /// The rest of a message cut short, then the FATAL.
    pub(super) words: Vec<u8>,
    /// The client could have brought this end about itself (see `Relay::run_to_farewell`).
    pub(super) provoked: bool,
    /// The engineer whose session this was: one engineer's sessions hold at most half the
    /// passes, however many grants they hold (see `Aftermath::releasing`).
    pub(super) engineer: String,
}

impl Farewell {
    /// Gives the client no more than [`CLOSE_WAIT`] per step, as if its send queue could
    /// not be seen: too many farewells wait on slow readers already.
    pub(crate) fn hurry(&mut self) {
        self.patient = false;
    }

    /// Whether the client could have brought this end about itself: such farewells get a
    /// pass only from the first half (see `Aftermath::releasing`).
    pub(crate) fn is_provoked(&self) -> bool {
        self.provoked
    }

    /// The engineer whose session this was.
    pub(crate) fn engineer(&self) -> &str {
        &self.engineer
    }

    /// Whether it waits on a slow reader (else [`CLOSE_WAIT`] per step).
    pub(crate) fn is_patient(&self) -> bool {
        self.patient && self.client_fd.is_some()
    }

    /// Writes the words and closes, patiently while the client takes bytes (see the module
    /// docs). Then reads and drops what the client still sends until it closes: closing a
    /// socket with unread bytes in it sends a reset, and a reset makes the client's system
    /// throw away what it had not read yet, the FATAL among it.
    ///
    /// A client given up on (stalled, or past [`FAREWELL_LIMIT`]) gets a reset: the kernel
    /// would otherwise go on sending what the socket still queues for as long as the client
    /// acknowledges it, after the socket is closed (an attack review read rows for 99 s after
    /// its grant was revoked, the FATAL never coming).
    pub(crate) async fn deliver(mut self) {
        let mut patience = Patience::new(self.client_fd.filter(|_| self.patient));
        let words = std::mem::take(&mut self.words);
        let said = async {
            self.client.write_all(&words).await?;
            self.client.shutdown().await
        };
        if !patience.wait_for(said).await {
            tracing::debug!("client took no bytes; its last words are dropped");
            discard_unsent(self.client_fd);
            return;
        }
        // Until the queue is drained the client is still reading what came before.
        let mut scratch = [0u8; 8192];
        let client = &mut self.client;
        let drained = async {
            while let Ok(n) = client.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        if !patience.wait_for_drain(drained).await {
            discard_unsent(self.client_fd);
        }
    }
}

/// Makes the close of a socket that still queues bytes for the peer a reset, which drops
/// them, rather than a FIN behind them (`SO_LINGER` on, 0 s).
fn discard_unsent(fd: Option<std::os::fd::RawFd>) {
    let Some(fd) = fd else { return };
    if unsent_bytes(fd).is_some_and(|queued| queued == 0) {
        return;
    }
    // SAFETY: `fd` is the socket of the stream the farewell still owns (it is closed only
    // when the farewell is dropped, after this); the kernel only reads the linger value.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Err(error) = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%error, "could not make the close a reset");
    }
}

/// Waits while the client makes progress, up to [`FAREWELL_LIMIT`].
struct Patience {
    fd: Option<std::os::fd::RawFd>,
    started: Instant,
    last_progress: Instant,
    queued: Option<usize>,
}

impl Patience {
    fn new(fd: Option<std::os::fd::RawFd>) -> Self {
        let now = Instant::now();
        Patience {
            fd,
            started: now,
            last_progress: now,
            queued: fd.and_then(unsent_bytes),
        }
    }

    /// Runs `fut` to its end (`true`, and it went well) or until the client stalls.
    async fn wait_for<T, E>(
        &mut self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> bool {
        tokio::pin!(fut);
        loop {
            match tokio::time::timeout(TICK, &mut fut).await {
                Ok(done) => {
                    self.last_progress = Instant::now();
                    return done.is_ok();
                }
                Err(_) if self.keeps_taking() => {}
                Err(_) => return false,
            }
        }
    }

    /// Runs `fut` (a read to the client's close) while queued bytes still drain, and then
    /// for [`CLOSE_WAIT`] more.
    async fn wait_for_drain(&mut self, fut: impl std::future::Future<Output = ()>) -> bool {
        tokio::pin!(fut);
        let mut empty_since: Option<Instant> = None;
        loop {
            if tokio::time::timeout(TICK, &mut fut).await.is_ok() {
                return true;
            }
            if !self.keeps_taking() {
                return false;
            }
            if self.queued.unwrap_or(0) > 0 {
                empty_since = None;
            } else if empty_since.get_or_insert_with(Instant::now).elapsed() >= CLOSE_WAIT {
                return false;
            }
        }
    }

    /// Whether the client took bytes lately: the send queue shrank or is empty within
    /// [`STALL_LIMIT`], and the farewell is within [`FAREWELL_LIMIT`]. Where the queue
    /// cannot be seen, [`CLOSE_WAIT`] from the last step done is all it gets.
    fn keeps_taking(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.started) >= FAREWELL_LIMIT {
            return false;
        }
        let Some(queued) = self.fd.and_then(unsent_bytes) else {
            self.queued = None;
            return now.duration_since(self.last_progress) < CLOSE_WAIT;
        };
        if queued == 0 || self.queued.is_none_or(|before| queued < before) {
            self.last_progress = now;
        }
        self.queued = Some(queued);
        now.duration_since(self.last_progress) < STALL_LIMIT
    }
}

/// Bytes in the socket's send queue that the peer has not acknowledged yet.
#[cfg(target_os = "linux")]
fn unsent_bytes(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is the socket of a stream the farewell owns, open for the whole call;
    // SIOCOUTQ (TIOCOUTQ) writes one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| usize::try_from(queued).ok()).flatten()
}

#[cfg(not(target_os = "linux"))]
fn unsent_bytes(_fd: std::os::fd::RawFd) -> Option<usize> {
    None
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    use super::*;

    /// The proxy's side with a full send queue, and the client's (receive buffer
    /// `rcvbuf`), and how many bytes wait in the queue for the client.
    pub(in crate::proxy::relay) async fn queued_pair(
        rcvbuf: Option<u32>,
    ) -> (TcpStream, TcpStream, usize) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("rcvbuf");
        }
        let client = socket
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (proxy, _) = listener.accept().await.expect("accept");
        let chunk = vec![b'r'; 64 * 1024];
        let mut filler = 0;
        // Fill, letting the kernel grow the buffers, until it takes no more.
        for _ in 0..20 {
            while let Ok(n) = proxy.try_write(&chunk) {
                filler += n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (proxy, client, filler)
    }

    pub(in crate::proxy::relay) fn farewell(proxy: TcpStream, words: &[u8]) -> Farewell {
        let fd = proxy.as_raw_fd();
        Farewell {
            client: Box::new(proxy),
            client_fd: Some(fd),
            patient: true,
            words: words.to_vec(),
            provoked: false,
            engineer: "eve".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_client_reading_slowly_gets_every_queued_byte_then_the_last_words() {
        let (proxy, mut client, filler) = queued_pair(None).await;
        let words = b"the FATAL".repeat(1000);
        let deliver = tokio::spawn(farewell(proxy, &words).deliver());
        // Slowly enough that the queue takes well over a second to drain: a fixed bound of
        // half a second cut the words short.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = client.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let per_second = (filler / 2).max(64 * 1024);
            let pause = Duration::from_secs_f64(n as f64 / per_second as f64);
            tokio::time::sleep(pause).await;
        }
        assert_eq!(got.len(), filler + words.len(), "{filler} queued bytes");
        assert!(got[..filler].iter().all(|b| *b == b'r'));
        assert_eq!(&got[filler..], &words[..]);
        deliver
            .await
            .expect("the farewell ends once the client closed");
    }

    /// Words that outgrow the socket (as a TLS stream's buffered records do): the send
    /// queue stays full while they go out, so only the bytes the client acknowledges show
    /// that it reads.
    #[tokio::test]
    async fn words_larger_than_the_socket_reach_a_client_that_reads_steadily() {
        let (proxy, mut client, filler) = queued_pair(None).await;
        let words = vec![b'w'; 3 * filler.max(1 << 20)];
        let deliver = tokio::spawn(farewell(proxy, &words).deliver());
        let mut got = 0usize;
        let mut buf = vec![0u8; 32 * 1024];
        // One socket-full a second: the words take twice the stall limit.
        let per_second = filler.max(64 * 1024);
        loop {
            let n = client.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / per_second as f64)).await;
        }
        assert_eq!(
            got,
            filler + words.len(),
            "{filler} queued bytes, then the words"
        );
        deliver
            .await
            .expect("the farewell ends once the client closed");
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_given_up_on() {
        let (proxy, mut client, filler) = queued_pair(None).await;
        let words = b"the FATAL".to_vec();
        // The farewell ends while the client still reads nothing: a stalled client does
        // not hold its socket for the whole farewell limit.
        tokio::time::timeout(FAREWELL_LIMIT / 2, farewell(proxy, &words).deliver())
            .await
            .expect("the farewell gave up on a client that takes no bytes");
        // What the proxy still queued is dropped with a reset: the client gets at most what
        // its own buffer took before, never the rest.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let reset = loop {
            match client.read(&mut buf).await {
                Ok(0) => break false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(error) => break error.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(reset, "the close is a reset");
        assert!(
            got.len() < filler,
            "{} of {filler} queued bytes arrived",
            got.len()
        );
    }
}
