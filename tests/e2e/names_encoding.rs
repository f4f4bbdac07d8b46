//! Names on a server whose encoding is not UTF8. The proxy's parser reads SQL as UTF-8 and
//! cuts an identifier over 63 bytes there; a LATIN1 or SQL_ASCII server cuts the same text
//! at 63 bytes of its own encoding, so one name could mean two statements, and a statement
//! made by a Parse (no record of its own) could run under a record of another. An attack
//! review ran a Parse'd statement's text, in no record, that way.

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, query, Env, Options};
use crate::names_unrecorded::{codes, session};

async fn latin1(name: &str) -> Env {
    Env::with(
        name,
        Options {
            db_encoding: Some("LATIN1"),
            ..Options::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_parser_cuts_elsewhere_than_a_latin1_server_is_refused() {
    let env = latin1("names_latin1_cut").await;
    assert_eq!(
        env.superuser_sql("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"),
        "LATIN1"
    );
    let mut raw = session(&env, AccessLevel::Read).await;
    // An ASCII protocol name is taken (a Parse'd statement has no record of its own).
    let parsed_name = "b".repeat(62);
    raw.send(
        &[
            parse(&parsed_name, "SELECT 'parsed, never recorded' AS x"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let parsed = raw.read_until_ready().await;
    assert!(codes(&parsed).is_empty(), "{:?}", errors_in(&parsed));
    // 64 bytes of UTF-8, cut by the parser to the Parse'd name; 63 of LATIN1, not cut by
    // the server: a record of this PREPARE would stand for the Parse'd statement.
    let decoy = format!("{parsed_name}é");
    for sql in [
        format!("PREPARE \"{decoy}\" AS SELECT 'decoy'"),
        format!("EXECUTE {parsed_name}"),
        format!("DEALLOCATE {parsed_name}"),
        "PREPARE \"é\" AS SELECT 1".to_owned(),
        "BEGIN; DECLARE \"ü\" CURSOR FOR SELECT 1; COMMIT".to_owned(),
    ] {
        raw.send(&query(&sql)).await;
        let answer = raw.read_until_ready().await;
        assert_eq!(codes(&answer), ["42501"], "{sql}: {:?}", errors_in(&answer));
    }
    // An ASCII name under 60 bytes reads alike everywhere.
    raw.send(&query("PREPARE q AS SELECT 1; EXECUTE q")).await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
    let ascii_long = "q".repeat(60);
    raw.send(&query(&format!("PREPARE {ascii_long} AS SELECT 1")))
        .await;
    let answer = raw.read_until_ready().await;
    assert_eq!(codes(&answer), ["42501"], "{:?}", errors_in(&answer));
    let records = env.audit();
    assert!(
        !records.iter().any(|r| r["statement"]
            .as_str()
            .is_some_and(|s| s.contains("parsed, never recorded"))),
        "the Parse'd text never ran, so no record holds it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_name_outside_ascii_ends_the_session_on_a_latin1_server() {
    let env = latin1("names_latin1_protocol").await;
    let mut raw = session(&env, AccessLevel::Read).await;
    raw.send(&[parse("s", "SELECT 1"), bind("", "s"), execute(""), sync()].concat())
        .await;
    let ascii = raw.read_until_ready().await;
    assert!(codes(&ascii).is_empty(), "{:?}", errors_in(&ascii));
    raw.send(&[parse("é", "SELECT 1"), sync()].concat()).await;
    let reply = raw.read_to_close().await;
    assert_eq!(codes(&reply), ["08P01"], "{:?}", errors_in(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_ascii_work_on_a_utf8_server() {
    let env = Env::start("names_utf8").await;
    let mut raw = session(&env, AccessLevel::Read).await;
    let name = "é".repeat(31);
    raw.send(&query(&format!(
        "PREPARE \"{name}\" AS SELECT 1; EXECUTE \"{name}\""
    )))
    .await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
    raw.send(&[parse("é", "SELECT 2"), bind("ü", "é"), execute("ü"), sync()].concat())
        .await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
}
