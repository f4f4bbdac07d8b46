//! A small frontend of the differential test's own, written from the protocol chapter of
//! PostgreSQL's documentation rather than from lockbox's wire code, so the test does not
//! share a reading of the protocol with the code it checks. It talks to the server
//! directly (the reference) and to lockbox (the subject), and reports what each statement
//! did: one `Reply` per CommandComplete, EmptyQueryResponse or ErrorResponse.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the server answered for one statement of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// CommandComplete with its tag (`SELECT 1`, `INSERT 0 1`, `SET`, …).
    Done(String),
    /// EmptyQueryResponse: the query string held no statement.
    Empty,
    /// ErrorResponse: SQLSTATE and message.
    Failed { code: String, message: String },
}

impl Reply {
    pub fn tag(&self) -> Option<&str> {
        match self {
            Reply::Done(tag) => Some(tag),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Failed { .. })
    }
}

/// One connection, logged in and idle between calls.
pub struct Conn {
    stream: TcpStream,
}

const PATIENCE: Duration = Duration::from_secs(30);

impl Conn {
    /// Connects to 127.0.0.1:`port` as `user`; answers a cleartext password request with
    /// `password` (the proxy asks for the token that way), and expects trust otherwise.
    pub async fn connect(
        port: u16,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Result<Conn, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect to {port}: {e}"))?;
        let mut conn = Conn { stream };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend(body);
        conn.write(&startup).await?;
        loop {
            let (tag, body) = conn.read_message().await?;
            match tag {
                b'R' => match body.get(..4) {
                    Some([0, 0, 0, 0]) => {}
                    Some([0, 0, 0, 3]) => {
                        let password = password.ok_or("the server asked for a password")?;
                        let msg = message(b'p', &[password.as_bytes(), b"\0"].concat());
                        conn.write(&msg).await?;
                    }
                    other => return Err(format!("unsupported authentication request {other:?}")),
                },
                b'E' => return Err(format!("login refused: {:?}", error_fields(&body))),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    /// Sends `sql` as one simple Query message; the replies until ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Result<Vec<Reply>, String> {
        self.write(&message(b'Q', &[sql.as_bytes(), b"\0"].concat()))
            .await?;
        self.replies().await
    }

    /// Sends `sql` through the extended protocol: Parse and Bind of the unnamed statement
    /// and portal, Execute, Sync; the replies until ReadyForQuery.
    pub async fn extended(&mut self, sql: &str) -> Result<Vec<Reply>, String> {
        let mut out = message(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"].concat());
        out.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        out.extend(message(b'E', b"\0\0\0\0\0"));
        out.extend(message(b'S', b""));
        self.write(&out).await?;
        self.replies().await
    }

    pub async fn close(mut self) {
        let _ = self.write(&message(b'X', b"")).await;
    }

    async fn replies(&mut self) -> Result<Vec<Reply>, String> {
        let mut replies = Vec::new();
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'C' => replies.push(Reply::Done(cstring(&body))),
                b'I' => replies.push(Reply::Empty),
                b'E' => {
                    let fields = error_fields(&body);
                    let field = |f: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == f)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    replies.push(Reply::Failed {
                        code: field(b'C'),
                        message: field(b'M'),
                    });
                }
                b'G' | b'H' | b'W' => return Err("COPY is not part of this test".into()),
                b'Z' => return Ok(replies),
                _ => {}
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn read_message(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.read_exact(&mut head).await?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = usize::try_from(len - 4).map_err(|_| format!("bad length {len}"))?;
        let mut body = vec![0u8; len];
        self.read_exact(&mut body).await?;
        Ok((head[0], body))
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        match tokio::time::timeout(PATIENCE, self.stream.read_exact(buf)).await {
            Err(_) => Err("no answer in time".into()),
            Ok(Err(e)) => Err(format!("connection closed: {e}")),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstring(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// The (code, value) fields of an ErrorResponse or NoticeResponse.
fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}
