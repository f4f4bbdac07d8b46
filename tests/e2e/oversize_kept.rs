//! What a session keeps past its messages — the texts of its prepared statements, its
//! portals' parameter values — comes out of the same budget as large messages
//! (`proxy.max_message_memory`): an attack review made one session keep 392 MB with 400
//! Parses of 900 KiB, each message within `max_message_size`.

use lockbox::wire::BackendEvent;

use crate::frontend::{bind_with, execute, parse};
use crate::harness::{errors_in, message, Env, Options, Raw};

const STATEMENT_BYTES: usize = 800 * 1024;

/// A named statement of about [`STATEMENT_BYTES`] of text, on its own group.
fn large_parse(name: &str) -> Vec<u8> {
    let text = format!("SELECT '{}' AS s", "x".repeat(STATEMENT_BYTES));
    [parse(name, &text), message(b'S', &[])].concat()
}

/// Parses `names` one group at a time, up to the first error; the errors.
async fn keep(raw: &mut Raw, names: &[&str]) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for name in names {
        raw.send(&large_parse(name)).await;
        let reply = raw
            .read_until(|events| {
                events
                    .iter()
                    .any(|e| matches!(e, BackendEvent::Ready(_) | BackendEvent::Error { .. }))
            })
            .await;
        errors.extend(errors_in(&reply));
        if !errors.is_empty() {
            break;
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_kept_share_the_room_of_large_messages() {
    let env = Env::with(
        "oversize_kept",
        Options {
            proxy_extra: "max_message_size = 2097152\nmax_message_memory = 4194304",
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    // The first session keeps three statements of 800 KiB: 1.4 MiB past what a session
    // keeps without a share.
    let mut first = Raw::login(&env, "eve", &token).await;
    first.read_until_ready().await;
    assert_eq!(keep(&mut first, &["a1", "a2", "a3"]).await, []);
    // They still run, by name, with their text.
    first
        .send(&[bind_with("", "a2", &[]), execute(""), message(b'S', &[])].concat())
        .await;
    let ran = first.read_until_ready().await;
    assert_eq!(errors_in(&ran), []);
    // A second session may keep as much, but not a fourth statement beside the first's.
    let mut second = Raw::login(&env, "eve", &token).await;
    second.read_until_ready().await;
    let errors = keep(&mut second, &["b1", "b2", "b3", "b4"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "53200", "{errors:?}");
    assert!(
        errors[0]
            .1
            .contains("prepared statements and portals holding ")
            && errors[0]
                .1
                .contains("proxy.max_message_memory (4194304 bytes)"),
        "{errors:?}"
    );
    second.read_to_close().await;
    // Small work goes on beside them.
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!(one, 1);
    // What the first session lets go of comes back: a new session keeps four.
    first.send(&message(b'Q', b"DEALLOCATE ALL\0")).await;
    assert_eq!(errors_in(&first.read_until_ready().await), []);
    let mut third = Raw::login(&env, "eve", &token).await;
    third.read_until_ready().await;
    assert_eq!(keep(&mut third, &["c1", "c2", "c3", "c4"]).await, []);
    let records = env
        .wait_for_audit("the refused session's end", |records| {
            records.iter().any(|r| {
                r["request_id"] == id.as_str()
                    && r["event"] == "disconnected"
                    && r["reason"].as_str().is_some_and(|reason| {
                        reason.starts_with("prepared statements and portals holding ")
                    })
            })
        })
        .await;
    assert!(!records.is_empty());
}
