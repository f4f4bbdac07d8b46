//! A session the server ends itself (a terminated backend, a restart) ends over TLS as
//! PostgreSQL ends it: the server's FATAL, then a TLS close (close_notify). Without the
//! close, libpq and rustls clients report a truncated connection ("unexpected eof") on top
//! of the server's reason, and cannot tell it from a cut cable.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::harness::{errors_in, tls_login, Env, Options};

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_the_server_terminates_ends_over_tls_with_its_fatal_and_close_notify() {
    let env = Env::with(
        "server_end_tls",
        Options {
            plaintext: false,
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_login(&env, "eve", &token).await;
    let mut seen = Vec::new();
    while !seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut chunk))
            .await
            .expect("ReadyForQuery in time")
            .expect("read");
        assert!(n > 0, "closed before ReadyForQuery");
        seen.extend_from_slice(&chunk[..n]);
    }
    let ended = env.superuser_sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND usename = 'lockbox_read'",
        env.db
    ));
    assert_eq!(ended, "1", "the session's backend");
    let mut rest = Vec::new();
    // rustls reads a close without close_notify as UnexpectedEof; with it, a clean EOF.
    let read = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut rest))
        .await
        .expect("the proxy never closed the session");
    assert!(
        read.is_ok(),
        "expected a clean TLS close after the server's FATAL, got {read:?} after {:?}",
        errors_in(&rest)
    );
    let errors = errors_in(&rest);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "57P01", "{errors:?}");
    assert!(errors[0].1.contains("administrator command"), "{errors:?}");
}
