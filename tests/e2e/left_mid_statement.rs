//! A client that leaves while its statement runs: the proxy cancels the statement and reads
//! the server's answers before it closes, so the trail records what became of each
//! statement (cancelled, not executed) instead of `interrupted`, wherever everything the
//! client sent ends with one group the server closes. The backend still goes at once.

use crate::harness::{message, query, Env, Raw};
use crate::vanish::{assert_gone_by_itself, backend_running, with_a_patient_reaper};

const SLEEP: &str = "SELECT pg_sleep(600)";

/// Parse, Bind and Execute of `sql` (unnamed statement and portal).
fn extended(sql: &str) -> Vec<u8> {
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(b"\0\0\0");
    [
        message(b'P', &parse),
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
    ]
    .concat()
}

/// Logs in, sends `bytes`, leaves once the server runs [`SLEEP`]; returns each statement's
/// text with its outcome record, in the order sent, once the backend is gone.
async fn leave_while_sleeping(name: &str, bytes: &[u8]) -> Vec<(String, serde_json::Value)> {
    let env = with_a_patient_reaper(name).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(bytes).await;
    let pid = backend_running(&env, SLEEP).await;
    drop(raw);
    assert_gone_by_itself(&env, &id, pid).await;
    let records = env
        .wait_for_audit("an outcome for every statement", |records| {
            let mine = |kind: &str| {
                records
                    .iter()
                    .filter(|r| r["request_id"] == id.as_str() && r["type"] == kind)
                    .count()
            };
            mine("statement") > 0 && mine("outcome") >= mine("statement")
        })
        .await;
    let mine: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str())
        .collect();
    mine.iter()
        .filter(|r| r["type"] == "statement")
        .map(|statement| {
            let outcome = mine
                .iter()
                .find(|r| r["type"] == "outcome" && r["statement_seq"] == statement["seq"])
                .expect("an outcome");
            (
                statement["statement"].as_str().unwrap_or("?").to_owned(),
                (*outcome).clone(),
            )
        })
        .collect()
}

/// The outcome of the `i`th statement sent (texts may be redacted: by order, not text).
fn outcome_of(outcomes: &[(String, serde_json::Value)], i: usize) -> &serde_json::Value {
    &outcomes
        .get(i)
        .unwrap_or_else(|| panic!("no statement {i}: {outcomes:?}"))
        .1
}

/// A query string: the statement is cancelled, and its record says so (the server's 57014).
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_whose_client_left_is_recorded_as_cancelled() {
    let outcomes = leave_while_sleeping("left_query", &query(SLEEP)).await;
    let sleep = outcome_of(&outcomes, 0);
    assert_eq!(sleep["status"], "error", "{sleep}");
    assert_eq!(sleep["sqlstate"], "57014", "{sleep}");
}

/// Steps and their Sync: the running statement is cancelled, the one after it never runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_whose_client_left_records_what_ran_and_what_did_not() {
    let later = "SELECT 'after the sleep'";
    let bytes = [extended(SLEEP), extended(later), message(b'S', b"")].concat();
    let outcomes = leave_while_sleeping("left_pipeline", &bytes).await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let sleep = outcome_of(&outcomes, 0);
    assert_eq!(
        (&sleep["status"], &sleep["sqlstate"]),
        (&"error".into(), &"57014".into()),
        "{sleep}"
    );
    let after = outcome_of(&outcomes, 1);
    assert_eq!(after["status"], "not_executed", "{after}");
}

/// Two groups open: the second would run once the first is cancelled, after the client
/// left. The proxy closes at once instead, and the record cannot say more than
/// `interrupted`.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_second_group_sent_the_statements_stay_interrupted() {
    let later = "SELECT 'second group'";
    let bytes = [
        extended(SLEEP),
        message(b'S', b""),
        extended(later),
        message(b'S', b""),
    ]
    .concat();
    let outcomes = leave_while_sleeping("left_two_groups", &bytes).await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcome_of(&outcomes, 0)["status"], "interrupted");
    assert_eq!(outcome_of(&outcomes, 1)["status"], "interrupted");
}

/// A procedure that ignores the cancel keeps the answers from coming; the grant is revoked
/// meanwhile. The wait ends at once and the session ends as revoked: its per-grant role is
/// dropped with its backend, and the reaper does not try to log in as a role that is gone
/// (before, it recorded a termination failure, and the session's end said only that the
/// client left).
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_while_the_answers_are_awaited_ends_the_session_as_revoked() {
    use crate::revoked_elsewhere::{leave_while_the_proxy_awaits_the_answers, CALL};
    use crate::terminate::wait_until_gone;

    let env = Env::with(
        "left_revoked",
        crate::harness::Options {
            upstream_user: crate::harness::PROVISIONER_ROLE,
            upstream_password: crate::harness::PROVISIONER_PASSWORD,
            // The longest window, so the wait (half of it) outlasts the revocation.
            timings: "terminate_after = \"5s\"",
            ..Default::default()
        },
    )
    .await;
    // The client leaves and the proxy's cancel has landed (the procedure caught it and
    // goes on): the proxy awaits the answers when the revocation comes.
    let id = leave_while_the_proxy_awaits_the_answers(&env).await;
    let pid = backend_running(&env, CALL).await;
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    wait_until_gone(&env, pid).await;
    let records = env
        .wait_for_audit("the session's end", |records| {
            records.iter().any(|r| {
                r["request_id"] == id.as_str()
                    && r["type"] == "session"
                    && r["event"] != "connected"
            })
        })
        .await;
    let ends: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str() && r["type"] == "session")
        .collect();
    assert!(
        ends.iter().any(|r| r["event"] == "dropped_revoked"),
        "{ends:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "backend_termination_failed"),
        "a termination failure recorded for a backend the role's drop ended"
    );
}
