//! Connections that have not sent a token: bounded in time, and a timeout is a failed
//! login of its source (audited while the source is under its limit).

use tokio::io::AsyncReadExt;

use crate::harness::Env;

#[tokio::test]
async fn a_silent_connection_is_closed_and_audited_as_a_failed_login() {
    let env = Env::start("preauth_silent").await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", env.proxy_port()))
        .await
        .expect("tcp");
    let records = env
        .wait_for_audit("the silent connection's failed login", |records| {
            records.iter().any(|r| {
                r["event"] == "authentication_failed"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("no token within"))
            })
        })
        .await;
    let failed = records
        .iter()
        .find(|r| r["event"] == "authentication_failed")
        .expect("the record");
    assert!(
        failed["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{failed}"
    );
    // The proxy closed the socket: the read ends instead of waiting.
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
