//! Cursors live and die with transactions, and the proxy's idea of which exist must be the
//! server's: a cursor the proxy believes in but the server dropped lets a FETCH through under
//! that cursor's recorded text, while the name may by then be another cursor's, one that
//! server-side code opened. PostgreSQL keeps a cursor declared WITH HOLD past its
//! transaction's commit only; a rollback (explicit, a failed COMMIT, an error in a query
//! string's implicit transaction) drops it, a rollback to a savepoint drops those opened
//! since the savepoint, and a CLOSE is not undone by a rollback.
//! Compared here with what the server itself lists in `pg_cursors`, in the same session.

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, query, rows_in, Env, Raw};
use crate::names_unrecorded::{codes, session};

/// Each scenario: the messages sent (each a group, answered before the next), the cursor
/// it is about.
fn scenarios() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let q = |sql: &str| query(sql);
    vec![
        (
            "implicit_error",
            vec![q("DECLARE implicit_error CURSOR WITH HOLD FOR SELECT 1; SELECT 1/0")],
        ),
        (
            "committed_then_error",
            vec![q(
                "BEGIN; DECLARE committed_then_error CURSOR WITH HOLD FOR SELECT 1; COMMIT; SELECT 1/0",
            )],
        ),
        (
            "rolled_back",
            vec![
                q("BEGIN"),
                q("DECLARE rolled_back CURSOR WITH HOLD FOR SELECT 1"),
                q("ROLLBACK"),
            ],
        ),
        (
            "failed_commit",
            vec![
                q("BEGIN"),
                q("DECLARE failed_commit CURSOR WITH HOLD FOR SELECT 1"),
                q("SELECT 1/0"),
                q("COMMIT"),
            ],
        ),
        (
            "chained",
            vec![
                q("BEGIN"),
                q("DECLARE chained CURSOR WITH HOLD FOR SELECT 1"),
                q("COMMIT AND CHAIN"),
                q("ROLLBACK"),
            ],
        ),
        (
            "savepoint",
            vec![
                q("BEGIN"),
                q("DECLARE savepoint CURSOR WITH HOLD FOR SELECT 1"),
                q("SAVEPOINT s"),
                q("SELECT 1/0"),
                q("ROLLBACK TO s"),
                q("COMMIT"),
            ],
        ),
        (
            "after_savepoint",
            vec![
                q("BEGIN"),
                q("SAVEPOINT s"),
                q("DECLARE after_savepoint CURSOR WITH HOLD FOR SELECT 1"),
                q("ROLLBACK TO s"),
                q("COMMIT"),
            ],
        ),
        (
            "released",
            vec![
                q("BEGIN"),
                q("SAVEPOINT s"),
                q("DECLARE released CURSOR WITH HOLD FOR SELECT 1"),
                q("RELEASE s"),
                q("COMMIT"),
            ],
        ),
        (
            "plain_in_open_transaction",
            vec![
                q("BEGIN"),
                q("SAVEPOINT a"),
                q("DECLARE plain_in_open_transaction CURSOR FOR SELECT 1"),
                q("ROLLBACK TO a"),
            ],
        ),
        (
            "released_then_rolled_back",
            vec![
                q("BEGIN"),
                q("SAVEPOINT a"),
                q("SAVEPOINT b"),
                q("DECLARE released_then_rolled_back CURSOR WITH HOLD FOR SELECT 1"),
                q("RELEASE b"),
                q("ROLLBACK TO a"),
                q("COMMIT"),
            ],
        ),
        (
            "name_used_twice",
            vec![
                q("BEGIN"),
                q("SAVEPOINT a"),
                q("DECLARE name_used_twice CURSOR WITH HOLD FOR SELECT 1"),
                q("SAVEPOINT a"),
                q("ROLLBACK TO a"),
                q("COMMIT"),
            ],
        ),
        (
            "closed_in_rollback",
            vec![
                q("DECLARE closed_in_rollback CURSOR WITH HOLD FOR SELECT 1"),
                q("BEGIN; CLOSE closed_in_rollback; ROLLBACK"),
            ],
        ),
        (
            "pipeline_error",
            vec![[
                parse("", "DECLARE pipeline_error CURSOR WITH HOLD FOR SELECT 1"),
                bind("", ""),
                execute(""),
                parse("", "SELECT 1/0"),
                bind("", ""),
                execute(""),
                sync(),
            ]
            .concat()],
        ),
        (
            "pipeline_committed",
            vec![[
                parse("", "DECLARE pipeline_committed CURSOR WITH HOLD FOR SELECT 1"),
                bind("", ""),
                execute(""),
                sync(),
            ]
            .concat()],
        ),
    ]
}

async fn server_has_cursor(raw: &mut Raw, name: &str) -> bool {
    raw.send(&query(&format!(
        "SELECT 1 FROM pg_cursors WHERE name = '{name}'"
    )))
    .await;
    let answer = raw.read_until_ready().await;
    assert!(codes(&answer).is_empty(), "{:?}", errors_in(&answer));
    rows_in(&answer) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_knows_the_cursors_the_server_keeps_after_each_kind_of_transaction_end() {
    let env = Env::start("names_transactions").await;
    let mut raw = session(&env, AccessLevel::Write).await;
    let mut kept = 0;
    for (name, groups) in scenarios() {
        for group in groups {
            raw.send(&group).await;
            raw.read_until_ready().await;
        }
        let on_server = server_has_cursor(&mut raw, name).await;
        kept += usize::from(on_server);
        // FETCH of a cursor the proxy does not know is refused (42501); of one it knows, it
        // goes to the server, which answers rows, or 34000 when it has no such cursor.
        raw.send(&query(&format!("FETCH 1 FROM {name}"))).await;
        let fetched = raw.read_until_ready().await;
        let expected: &[&str] = if on_server { &[] } else { &["42501"] };
        assert_eq!(
            codes(&fetched),
            expected,
            "{name}: the server {} the cursor: {:?}",
            if on_server { "keeps" } else { "dropped" },
            errors_in(&fetched)
        );
        // A scenario that leaves its transaction open ends it here.
        raw.send(&query("ROLLBACK")).await;
        raw.read_until_ready().await;
    }
    // Both outcomes were seen, so neither half of the comparison is vacuous.
    assert_eq!(
        kept, 6,
        "committed_then_error, chained, savepoint, released, name_used_twice, pipeline_committed"
    );
}
