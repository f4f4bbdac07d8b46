//! Names PostgreSQL would truncate. The server keys prepared statements and portals by a
//! name's first 63 bytes (NAMEDATALEN - 1), so two longer names alike that far are one to
//! it. An attack review used that to run one statement under another's record: a Close of
//! the second name closed the first, a Parse of the second replaced it, and a Bind of the
//! first ran the replacement while the audit named the decoy (and a row limit, judging the
//! decoy, counted nothing). Such a name, or one that is not UTF-8, ends the session before
//! anything in its batch runs.

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, close, describe, execute, parse, sync};
use crate::harness::{errors_in, message, rows_in, Env, Raw};

async fn session(env: &Env) -> Raw {
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw
}

/// 63 bytes of `fill`, then `tail`: names alike as far as PostgreSQL looks.
fn long(fill: &str, tail: &str) -> String {
    format!("{}{tail}", fill.repeat(63))
}

fn codes(bytes: &[u8]) -> Vec<String> {
    errors_in(bytes).into_iter().map(|(c, _)| c).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_swapped_under_a_long_name_never_runs_under_the_decoys_record() {
    let env = Env::start("long_names_statement").await;
    let mut raw = session(&env).await;
    let (first, second) = (long("s", "_one"), long("s", "_two"));
    raw.send(
        &[
            parse(&first, "SELECT 'decoy' AS shown"),
            sync(),
            close(b'S', &second),
            sync(),
            parse(&second, "SELECT id FROM items"),
            sync(),
            bind("", &first),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_to_close().await;
    let errors = errors_in(&answer);
    assert_eq!(codes(&answer), ["08P01"], "{errors:?}");
    assert!(errors[0].1.contains("63 bytes"), "{errors:?}");
    assert_eq!(rows_in(&answer), 0, "no statement of the batch ran");
    let decoy_recorded = env.audit().iter().any(|r| {
        r["type"] == "statement" && r["statement"].as_str() == Some("SELECT 'decoy' AS shown")
    });
    assert!(
        !decoy_recorded,
        "nothing ran, so nothing ran under the decoy's record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_portal_name_ends_the_session() {
    let env = Env::start("long_names_portal").await;
    let mut raw = session(&env).await;
    raw.send(
        &[
            parse("s", "SELECT id FROM items"),
            bind(&long("p", "_one"), "s"),
            execute(&long("p", "_one")),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_to_close().await;
    assert_eq!(codes(&answer), ["08P01"], "{:?}", errors_in(&answer));
    assert_eq!(rows_in(&answer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_ends_the_session() {
    let env = Env::start("long_names_not_utf8").await;
    let mut raw = session(&env).await;
    let parse_of_bytes = message(b'P', b"\xff\0SELECT id FROM items\0\0\0");
    raw.send(&[parse_of_bytes, sync()].concat()).await;
    let answer = raw.read_to_close().await;
    assert_eq!(codes(&answer), ["08P01"], "{:?}", errors_in(&answer));
}

/// The longest names PostgreSQL keeps whole still work, and the audit names what ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_63_bytes_work() {
    let env = Env::start("long_names_at_the_limit").await;
    let mut raw = session(&env).await;
    let (statement, portal) = ("s".repeat(63), format!("{}é", "p".repeat(61)));
    raw.send(
        &[
            parse(&statement, "SELECT id FROM items ORDER BY id"),
            bind(&portal, &statement),
            execute(&portal),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_ready().await;
    assert!(codes(&answer).is_empty(), "{:?}", errors_in(&answer));
    assert_eq!(rows_in(&answer), 10);
    env.wait_for_audit("the statement's record", |records| {
        records.iter().any(|r| {
            r["type"] == "statement"
                && r["statement"].as_str() == Some("SELECT id FROM items ORDER BY id")
        })
    })
    .await;
}

/// A Describe runs nothing, but its name follows the same rule: a long one means no
/// different statement to a Describe than to a Bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_of_a_long_name_ends_the_session() {
    let env = Env::start("long_names_describe").await;
    let mut raw = session(&env).await;
    raw.send(&[describe(b'S', &long("q", "_x")), sync()].concat())
        .await;
    let answer = raw.read_to_close().await;
    assert_eq!(codes(&answer), ["08P01"], "{:?}", errors_in(&answer));
}

/// However long the name, the client is told why its session ends (a review saw a bare
/// close for a Parse of a 1,000-byte name with its Sync behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_of_a_very_long_name_gets_its_error_before_the_close() {
    let env = Env::start("long_names_parse").await;
    let mut raw = session(&env).await;
    let name = format!("n_{}", "x".repeat(1000));
    raw.send(&[parse(&name, "SELECT 1"), sync()].concat()).await;
    let answer = raw.read_to_close().await;
    assert_eq!(codes(&answer), ["08P01"], "{:?}", errors_in(&answer));
    assert!(
        errors_in(&answer)[0].1.contains("name of 1002 bytes"),
        "{:?}",
        errors_in(&answer)
    );
}
