//! Sessions the server ends mid-result, mid-COPY and mid-pipeline, over TLS and plain TCP.

use super::*;

/// Rows produced slowly (the backend waits in pg_sleep, not in a write), the client reads
/// at once: the server's own FATAL (57P01) arrives mid-result.
#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_mid_result_streaming() {
    let env = Env::with("se_mid_stream", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, None).await;
    tls.write_all(&query(
        "SELECT /* se_stream */ g, repeat('x', 3000) FROM generate_series(1, 1000000) g \
         WHERE pg_sleep(0.0002) IS NOT NULL",
    ))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut first = read_until(&mut tls, |m| {
        m.iter().filter(|(t, _)| *t == b'D').count() > 50
    })
    .await;
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    let (rest, close) =
        read_to_end_slowly(&mut tls, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    first.extend_from_slice(&rest);
    let code = assert_ends_with_fatal_then_clean_close("mid-result", &first, &close);
    assert_eq!(code, "57P01");
}

/// A slow reader with megabytes queued: whatever FATAL comes (the backend blocked in a write
/// dies without one, PostgreSQL then says nothing and the proxy says 08006), it comes after
/// whole rows, and then close_notify. Rows under and over the 64 KiB hold limit.
#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_with_slow_reader_small_rows() {
    slow_reader_terminated("se_slow_small", 20_000, 2_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_with_slow_reader_huge_rows() {
    slow_reader_terminated("se_slow_huge", 300_000, 200).await;
}

async fn slow_reader_terminated(name: &str, width: usize, rows: usize) {
    let env = Env::with(name, tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, Some(4096)).await;
    tls.write_all(&query(&format!(
        "SELECT g, repeat('x', {width}) FROM generate_series(1, {rows}) g"
    )))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut got = vec![0u8; 4096];
    let n = tls.read(&mut got).await.unwrap();
    got.truncate(n);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    // ~1 MB/s: the queue drains well within the farewell's 30 s.
    let (rest, close) = read_to_end_slowly(
        &mut tls,
        32 * 1024,
        Duration::from_millis(30),
        Duration::from_secs(60),
    )
    .await;
    got.extend_from_slice(&rest);
    if width > 64 * 1024 {
        // A row over the hold limit streams: the proxy may have had part of one.
        let s = shape(&got);
        eprintln!(
            "{name}: {} messages, torn {}, close {close:?}, errors {:?}",
            s.messages.len(),
            s.torn,
            errors(&got)
        );
        assert_ne!(close, Close::Open, "{name}: never closed");
        if s.torn > 0 {
            // Documented by design ("a farewell without words"): the client sees a torn
            // row and a clean close; report it.
            eprintln!("{name}: TORN ROW then {close:?}");
        } else {
            assert_ends_with_fatal_then_clean_close(name, &got, &close);
        }
    } else {
        assert_ends_with_fatal_then_clean_close(name, &got, &close);
    }
}

/// The result is fully in the socket buffers and the backend idle; it ends itself
/// (idle_session_timeout, settable by any grant). The slow reader reads the rows, the
/// ReadyForQuery, then the server's FATAL 57P05 and close_notify.
#[tokio::test(flavor = "multi_thread")]
async fn se_tls_idle_session_timeout_behind_queued_rows() {
    let env = Env::with("se_idle_timeout", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, Some(4096)).await;
    tls.write_all(&query("SET idle_session_timeout = '300ms'"))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    read_until_ready(&mut tls).await;
    tls.write_all(&query(
        "SELECT g, repeat('x', 2000) FROM generate_series(1, 400) g",
    ))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (got, close) = read_to_end_slowly(
        &mut tls,
        8192,
        Duration::from_millis(20),
        Duration::from_secs(40),
    )
    .await;
    let code = assert_ends_with_fatal_then_clean_close("idle timeout", &got, &close);
    assert_eq!(code, "57P05");
    assert!(shape(&got).messages.iter().any(|(t, _)| *t == b'Z'));
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_during_copy_out() {
    let env = Env::with("se_copy_out", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, None).await;
    tls.write_all(&query(
        "COPY (SELECT g, repeat('x', 3000) FROM generate_series(1, 1000000) g \
         WHERE pg_sleep(0.0002) IS NOT NULL) TO STDOUT",
    ))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut got = read_until(&mut tls, |m| {
        m.iter().any(|(t, _)| *t == b'E') || m.iter().filter(|(t, _)| *t == b'd').count() > 50
    })
    .await;
    assert!(
        errors(&got).is_empty(),
        "COPY TO STDOUT refused: {:?}",
        errors(&got)
    );
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    let (rest, close) =
        read_to_end_slowly(&mut tls, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    got.extend_from_slice(&rest);
    let code = assert_ends_with_fatal_then_clean_close("copy out", &got, &close);
    assert_eq!(code, "57P01");
}

/// COPY FROM STDIN, the client streaming CopyData (and still streaming after the FATAL).
async fn copy_in_terminated<S>(env: &Env, s: S) -> (Vec<u8>, Close)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(&query("COPY items FROM STDIN")).await.unwrap();
    w.flush().await.unwrap();
    let mut got = read_until(&mut r, |m| m.iter().any(|(t, _)| *t == b'G' || *t == b'E')).await;
    assert!(
        errors(&got).is_empty(),
        "COPY FROM STDIN refused: {:?}",
        errors(&got)
    );
    let writer = tokio::spawn(async move {
        let name = "y".repeat(8 * 1024);
        for id in 1000.. {
            let row = format!("{id}\t{name}\n");
            if w.write_all(&message(b'd', row.as_bytes())).await.is_err()
                || w.flush().await.is_err()
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        0
    });
    wait_running(env.pg, &env.db, "COPY items FROM STDIN").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(terminate_backends(env, "lockbox_write"), "1");
    let (rest, close) =
        read_to_end_slowly(&mut r, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    got.extend_from_slice(&rest);
    writer.abort();
    (got, close)
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_during_copy_in() {
    let env = Env::with("se_copy_in_tls", tls_options()).await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let tls = tls_session(&env, "eve", &token, None).await;
    let (got, close) = copy_in_terminated(&env, tls).await;
    let code = assert_ends_with_fatal_then_clean_close("copy in (tls)", &got, &close);
    eprintln!("copy in (tls): FATAL {code}");
}

#[tokio::test(flavor = "multi_thread")]
async fn se_plain_terminated_during_copy_in() {
    let env = Env::start("se_copy_in_plain").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let tcp = plain_session(&env, "eve", &token, None).await;
    let (got, close) = copy_in_terminated(&env, tcp).await;
    let code = assert_ends_with_fatal_then_clean_close("copy in (plain)", &got, &close);
    eprintln!("copy in (plain): FATAL {code}");
}

fn parse(sql: &str) -> Vec<u8> {
    message(b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]].concat())
}
fn bind() -> Vec<u8> {
    message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0])
}
fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

#[tokio::test(flavor = "multi_thread")]
async fn se_tls_terminated_mid_extended_pipeline() {
    let env = Env::with("se_pipeline", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, None).await;
    let mut batch = Vec::new();
    for sql in ["SELECT 1", "SELECT /* se_pipe */ pg_sleep(30)", "SELECT 2"] {
        batch.extend(parse(sql));
        batch.extend(bind());
        batch.extend(execute());
        // A Flush, so what came before the sleep reaches the client first.
        batch.extend(message(b'H', &[]));
    }
    batch.extend(message(b'S', &[]));
    tls.write_all(&batch).await.unwrap();
    tls.flush().await.unwrap();
    let head = read_until(&mut tls, |m| {
        m.iter().any(|(t, _)| *t == b'C' || *t == b'E')
    })
    .await;
    eprintln!(
        "pipeline head: {:?} {:?}",
        shape(&head)
            .messages
            .iter()
            .map(|(t, _)| char::from(*t))
            .collect::<String>(),
        errors(&head)
    );
    wait_running(env.pg, &env.db, "se_pipe").await;
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    let (rest, close) =
        read_to_end_slowly(&mut tls, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    let got = [head, rest].concat();
    let code = assert_ends_with_fatal_then_clean_close("pipeline", &got, &close);
    assert_eq!(code, "57P01");
    let tags: String = shape(&got)
        .messages
        .iter()
        .map(|(t, _)| char::from(*t))
        .collect();
    eprintln!("pipeline tags {tags}");
    assert!(tags.starts_with("12DC12"), "{tags}");
}

#[tokio::test(flavor = "multi_thread")]
async fn se_plain_terminated_mid_result_no_reset() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("lockbox=debug"))
        .with_test_writer()
        .try_init();
    let env = Env::start("se_plain_mid").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tcp = plain_session(&env, "eve", &token, Some(4096)).await;
    tcp.write_all(&query(
        "SELECT g, repeat('x', 20000) FROM generate_series(1, 2000) g",
    ))
    .await
    .unwrap();
    let mut got = vec![0u8; 4096];
    let n = tcp.read(&mut got).await.unwrap();
    got.truncate(n);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    // The client keeps sending queries it does not wait for (unread bytes at the proxy's
    // close would make a reset).
    let (mut r, mut w) = tcp.into_split();
    // The write half is kept open (its drop would half-close: the client leaving).
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let chatter = tokio::spawn(async move {
        loop {
            if stopped.try_recv().is_ok() || w.write_all(&query("SELECT 1")).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    });
    let (rest, close) = read_to_end_slowly(
        &mut r,
        32 * 1024,
        Duration::from_millis(30),
        Duration::from_secs(60),
    )
    .await;
    let _ = stop.send(());
    let _w = chatter.await.unwrap();
    got.extend_from_slice(&rest);
    for r in env.audit().iter().filter(|r| r["event"] == "disconnected") {
        eprintln!("end record: {r}");
    }
    assert_ends_with_fatal_then_clean_close("plain slow reader", &got, &close);
}

// PostgreSQL itself stopped: immediate (SIGQUIT: a WARNING, no FATAL) and fast (SIGTERM:
// FATAL 57P01), on a cluster of the test's own.

/// COPY FROM STDIN at full speed (the proxy's writes upstream always pending) when the
/// backend is terminated: the server says why (57P01) and closes with the client's data
/// unread, which resets the connection, so the proxy's next write upstream fails at once.
/// What the server sent before it went is still to be read then, as libpq reads it after a
/// failed send: the client must get the server's own FATAL, not the proxy's 08006 for a
/// server that went without a word.
async fn full_speed_copy_in_terminated<S>(env: &Env, s: S) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(&query("COPY items FROM STDIN")).await.unwrap();
    w.flush().await.unwrap();
    read_until(&mut r, |m| m.iter().any(|(t, _)| *t == b'G')).await;
    let writer = tokio::spawn(async move {
        let name = "y".repeat(8 * 1024);
        // Ids of their own: the table's id is its key.
        for first in (1_000_000..).step_by(16) {
            let chunk: Vec<u8> = (first..first + 16)
                .flat_map(|id| message(b'd', format!("{id}\t{name}\n").as_bytes()))
                .collect();
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    wait_running(env.pg, &env.db, "COPY items FROM STDIN").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(terminate_backends(env, "lockbox_write"), "1");
    let (got, close) =
        read_to_end_slowly(&mut r, 16384, Duration::ZERO, Duration::from_secs(30)).await;
    writer.abort();
    let code = assert_ends_with_fatal_then_clean_close("full-speed copy in", &got, &close);
    let fatal = errors(&got).pop().expect("a FATAL");
    assert_eq!(
        code, "57P01",
        "the server's word, not the proxy's: {fatal:?}"
    );
    code
}

#[tokio::test(flavor = "multi_thread")]
async fn se_full_speed_copy_in_terminated_shows_the_servers_fatal_plain_and_tls() {
    for tls in [false, true] {
        let env = if tls {
            Env::with("se_copy_fast_tls", tls_options()).await
        } else {
            Env::start("se_copy_fast_plain").await
        };
        let (_, token) = env
            .approved_token_for("eve", "1h", AccessLevel::Write)
            .await;
        if tls {
            full_speed_copy_in_terminated(&env, tls_session(&env, "eve", &token, None).await).await;
        } else {
            full_speed_copy_in_terminated(&env, plain_session(&env, "eve", &token, None).await)
                .await;
        }
    }
}
