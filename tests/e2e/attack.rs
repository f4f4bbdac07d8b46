//! Attacks on the guard, the audit and the relay (security review). Each test states the
//! secure behaviour; a failing test is a finding.

use lockbox::guard;
use lockbox::policy::AccessLevel;

// ---------------------------------------------------------------------------------------
// End-to-end attacks against a real PostgreSQL through lockbox.
// ---------------------------------------------------------------------------------------

use std::time::Duration;

use crate::frontend::{bind, execute, sync};
use crate::harness::{message, query, Env, Options, Raw};

async fn session(env: &Env, access: AccessLevel) -> (String, tokio_postgres::Client) {
    let (id, token) = env.approved_token_for("eve", "1h", access).await;
    let (client, _handle) = env.connect("eve", &token).await.expect("connect");
    (id, client)
}

/// First column of the first row of a simple query's answer, or the error.
async fn one(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("NULL").to_owned())
                }
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(format!("{:?}", crate::harness::db_error(&e))),
    }
}

fn statements_of(env: &Env, id: &str) -> Vec<String> {
    env.audit_of("statement", id)
        .iter()
        .map(|r| r["statement"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Logs in raw and waits for the first ReadyForQuery.
async fn raw_session(env: &Env, access: AccessLevel) -> (String, Raw) {
    let (id, token) = env.approved_token_for("eve", "1h", access).await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    (id, raw)
}

/// Reads whatever arrives within `wait` (the proxy may end the session meanwhile).
async fn drain(raw: &mut Raw, wait: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, raw.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}

/// Reads until `readies` ReadyForQuery have come or the proxy closed (bounded), so that
/// what the server was sent has run (or never will) before the test looks at its effects.
async fn answered_or_closed(raw: &mut Raw, readies: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut events = Vec::new();
        lockbox::wire::BackendScanner::default().feed(&out, &mut events);
        let ready = events
            .iter()
            .filter(|e| matches!(e, lockbox::wire::BackendEvent::Ready(_)))
            .count();
        if ready >= readies {
            return out;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, raw.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            Ok(_) => return out,
            Err(_) => panic!("neither {readies} answers nor a close in time: {out:?}"),
        }
    }
}

/// `set_config` whose name argument is the column `name` of a subquery, in a statement
/// shaped like pg_dump's `… FROM pg_settings WHERE name = '<harmless>'`: the guard takes
/// the outer WHERE's literal for the setting's name.
fn disguised_set_config(setting: &str, value: &str) -> String {
    format!(
        "SELECT (SELECT set_config(name, '{value}', false) FROM (VALUES ('{setting}')) v(name)) \
         FROM pg_settings WHERE name = 'work_mem'"
    )
}

/// Finding: under a read grant, `RESET transaction_read_only` (or `SET transaction_read_only
/// TO DEFAULT`) inside a transaction makes it read-write on PostgreSQL ≤ 15: the reset value
/// of transaction_read_only is its boot value (off), not default_transaction_read_only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_read_reset_transaction_read_only_leaves_read_only() {
    let env = Env::start("atk_reset_ro").await;
    // The read level's role may write items (as when a database has no
    // `[databases.access.read]` role and every level logs in as its `user`): read-only
    // mode is then the database's only half of the read grant.
    env.superuser_sql("GRANT UPDATE ON items TO lockbox_read");
    let (_id, c) = session(&env, AccessLevel::Read).await;
    let control = one(&c, "SELECT rename_all()").await;
    assert!(control.is_err(), "read-only mode holds: {control:?}");
    let mode = one(
        &c,
        "BEGIN; RESET transaction_read_only; SHOW transaction_read_only",
    )
    .await;
    let write = one(&c, "SELECT rename_all()").await;
    let _ = one(&c, "COMMIT").await;
    let renamed = env.superuser_sql("SELECT count(*) FROM items WHERE name = 'renamed'");
    let _ = one(&c, "BEGIN; SET transaction_read_only TO DEFAULT").await;
    let mode2 = one(&c, "SHOW transaction_read_only").await;
    let _ = one(&c, "ROLLBACK").await;
    let refused = mode
        .as_ref()
        .err()
        .is_some_and(|e| e.contains("read_only_setting"));
    assert!(
        refused,
        "RESET transaction_read_only was not refused: {mode:?}"
    );
    assert_eq!(
        (renamed.as_str(), mode2.clone()),
        ("0", Ok("on".into())),
        "a read grant left read-only mode and wrote: RESET -> {mode:?}, write -> {write:?}, \
         renamed rows {renamed}, SET TO DEFAULT -> {mode2:?}"
    );
}

/// Finding: the pg_dump `set_config(name, …) FROM pg_settings WHERE name = '…'` exemption
/// applies to a `set_config(name, …)` anywhere in the tree, so a subquery with its own
/// `name` column changes any setting while the guard believes it changes `work_mem`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_read_set_config_in_subquery_turns_off_read_only() {
    let env = Env::start("atk_subq_setcfg").await;
    env.superuser_sql("GRANT UPDATE ON items TO lockbox_read");
    let (id, c) = session(&env, AccessLevel::Read).await;
    let set = one(
        &c,
        &disguised_set_config("default_transaction_read_only", "off"),
    )
    .await;
    let mode = one(&c, "SHOW default_transaction_read_only").await;
    let write = one(&c, "SELECT rename_all()").await;
    let renamed = env.superuser_sql("SELECT count(*) FROM items WHERE name = 'renamed'");
    println!("audit: {:#?}", statements_of(&env, &id));
    assert_eq!(
        (mode.clone(), renamed.as_str()),
        (Ok("on".into()), "0"),
        "a read grant turned read-only mode off: set_config -> {set:?}, mode {mode:?}, \
         write -> {write:?}, renamed rows {renamed}"
    );
}

/// Finding: a function called with attribute notation (`(arg).function`) is no FuncCall in
/// the parse tree, so the guard never sees it: a read grant creates and deletes large
/// objects (allowed by PostgreSQL in a read-only transaction) and takes session advisory
/// locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_read_attribute_notation_calls_refused_builtins() {
    let env = Env::start("atk_attr_call").await;
    let (_id, c) = session(&env, AccessLevel::Read).await;
    let control = one(&c, "SELECT lo_create(4711)").await;
    assert!(control.is_err(), "lo_create() is refused: {control:?}");
    let created = one(&c, "SELECT (4711::oid).lo_create").await;
    let objects =
        env.superuser_sql("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4711");
    let unlinked = one(&c, "SELECT (4711::oid).lo_unlink").await;
    let locked = one(&c, "SELECT (770077::bigint).pg_advisory_lock").await;
    let locks = env.superuser_sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 770077",
    );
    assert_eq!(
        (objects.as_str(), locks.as_str()),
        ("0", "0"),
        "a read grant changed data / took locks: lo_create -> {created:?}, lo_unlink -> \
         {unlinked:?}, pg_advisory_lock -> {locked:?}"
    );
}

/// Finding: the ParameterStatus backstop comes too late for a pipelined client. A read
/// grant turns standard_conforming_strings off (through the subquery set_config above) and,
/// in the same write, sends a string the proxy reads as one SELECT of two literals while the
/// server, now reading backslash escapes, runs a second statement the audit never names and
/// the guard never checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_read_lexer_setting_hides_statement_from_audit() {
    let env = Env::start("atk_scs_read").await;
    let (id, mut raw) = raw_session(&env, AccessLevel::Read).await;
    let hidden = r"SELECT 'x\', ' ; SELECT lo_create(4242); -- '";
    let batch = [
        query(&disguised_set_config("standard_conforming_strings", "off")),
        query(hidden),
    ]
    .concat();
    raw.send(&batch).await;
    let _ = answered_or_closed(&mut raw, 2).await;
    let objects =
        env.superuser_sql("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4242");
    let recorded = statements_of(&env, &id);
    assert_eq!(
        objects, "0",
        "the server ran `SELECT lo_create(4242)`, which the audit records only as: {recorded:#?}"
    );
}

/// Finding: the same under write with guardrails: a DELETE without WHERE runs unrecorded
/// and unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_write_lexer_setting_hides_delete_from_guardrails() {
    let env = Env::with(
        "atk_scs_write",
        Options {
            guardrails: "deny_delete_without_where = true\ndeny_truncate = true\ndeny_drop = true",
            ..Options::default()
        },
    )
    .await;
    let (id, mut raw) = raw_session(&env, AccessLevel::Write).await;
    let hidden = r"SELECT 'x\', ' ; DELETE FROM items; -- '";
    let batch = [
        query(&disguised_set_config("standard_conforming_strings", "off")),
        query(hidden),
    ]
    .concat();
    raw.send(&batch).await;
    let _ = answered_or_closed(&mut raw, 2).await;
    let rows = env.superuser_sql("SELECT count(*) FROM items");
    let recorded = statements_of(&env, &id);
    assert_eq!(
        rows, "10",
        "a hidden DELETE without WHERE ran; the audit records: {recorded:#?}"
    );
}

/// Finding: with guardrails in force a call of a non-built-in function is refused as
/// opaque, but the same function reached through an operator (or attribute notation, or a
/// trigger) is not a FuncCall: a write grant deletes every row despite
/// deny_delete_without_where. Only pg_temp is needed (TEMP is PUBLIC's by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_write_operator_hides_delete_from_guardrails() {
    let env = Env::with(
        "atk_operator",
        Options {
            guardrails: "deny_delete_without_where = true\noff_limits = [\"secrets\"]",
            ..Options::default()
        },
    )
    .await;
    let (_id, c) = session(&env, AccessLevel::Write).await;
    // Installing code the guard cannot read is itself refused while rules are in force…
    let install = one(
        &c,
        "CREATE FUNCTION pg_temp.wipe(int, int) RETURNS int LANGUAGE sql \
         AS 'DELETE FROM items; SELECT 1'",
    )
    .await;
    assert!(
        install
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("opaque_statement")),
        "{install:?}"
    );
    // …so the function exists only if the database has it already (the test puts it there).
    env.superuser_sql(
        "CREATE FUNCTION public.wipe(int, int) RETURNS int LANGUAGE sql \
         AS 'DELETE FROM items; SELECT 1'",
    );
    let direct = one(&c, "SELECT public.wipe(1, 1)").await;
    assert!(
        direct.is_err(),
        "the direct call is refused as opaque: {direct:?}"
    );
    let operator = one(
        &c,
        "CREATE OPERATOR pg_temp.### (leftarg = int, rightarg = int, function = public.wipe)",
    )
    .await;
    assert!(operator.is_err(), "{operator:?}");
    env.superuser_sql(
        "CREATE OPERATOR public.### (leftarg = int, rightarg = int, function = public.wipe)",
    );
    let via = one(&c, "SELECT 1 OPERATOR(public.###) 1").await;
    assert!(
        via.is_err(),
        "an operator that is not built in is opaque: {via:?}"
    );
    let plain = one(&c, "SELECT 1 ### 1").await;
    assert!(plain.is_err(), "{plain:?}");
    let rows = env.superuser_sql("SELECT count(*) FROM items");
    assert_eq!(
        rows, "10",
        "DELETE without WHERE ran through an operator: {via:?}"
    );
}

/// Finding: off_limits under admin: built-ins read the table by a name the guard does not
/// match (leading blank, blanks around the dot, an OID literal) or run SQL text the guard
/// does not know runs SQL (`ts_rewrite`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_admin_off_limits_read_through_builtins() {
    let env = Env::with(
        "atk_offlimits",
        Options {
            guardrails: "off_limits = [\"secrets\"]",
            ..Options::default()
        },
    )
    .await;
    let (_id, c) = session(&env, AccessLevel::Admin).await;
    let control = one(&c, "SELECT table_to_xml('secrets', true, false, '')::text").await;
    assert!(control.is_err(), "the plain name is refused: {control:?}");
    let oid = env.superuser_sql("SELECT 'secrets'::regclass::oid");
    let attempts = [
        "SELECT table_to_xml(' secrets', true, false, '')::text".to_owned(),
        "SELECT table_to_xml('public . secrets', true, false, '')::text".to_owned(),
        format!("SELECT table_to_xml({oid}, true, false, '')::text"),
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, plainto_tsquery(value) FROM secrets')::text"
            .to_owned(),
    ];
    let mut leaks = Vec::new();
    for sql in &attempts {
        if let Ok(out) = one(&c, sql).await {
            if out.contains("launch") {
                leaks.push((sql.clone(), out));
            }
        }
    }
    assert!(leaks.is_empty(), "off_limits table read: {leaks:#?}");
}

/// Finding: deny_drop misses `DROP OWNED`, which drops every object the role owns (under
/// admin: the tables themselves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_admin_deny_drop_misses_drop_owned() {
    let env = Env::with(
        "atk_drop_owned",
        Options {
            guardrails: "deny_drop = true",
            ..Options::default()
        },
    )
    .await;
    let (_id, c) = session(&env, AccessLevel::Admin).await;
    let control = one(&c, "DROP TABLE secrets").await;
    assert!(control.is_err(), "DROP TABLE is refused: {control:?}");
    let dropped = one(&c, "DROP OWNED BY CURRENT_USER").await;
    let left =
        env.superuser_sql("SELECT count(*) FROM pg_tables WHERE tablename IN ('items', 'secrets')");
    assert_eq!(
        left, "2",
        "DROP OWNED dropped the tables under deny_drop: {dropped:?}"
    );
}

/// Finding (wrong refusal): the guard reads pg_query's protobuf, whose decoder stops at
/// 100 nested messages, so an ordinary expression of ~48 terms (`a || ',' || b …`), ~44
/// nested CASEs or 16 nested subqueries is "unparsable" and refused under read and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_read_wide_expression_wrongly_refused() {
    let env = Env::start("atk_wide_expr").await;
    let (_id, c) = session(&env, AccessLevel::Read).await;
    let columns = ["name", "','", "id::text"]
        .into_iter()
        .cycle()
        .take(60)
        .collect::<Vec<_>>()
        .join(" || ");
    let sql = format!("SELECT {columns} FROM items WHERE id = 1");
    let answer = one(&c, &sql).await;
    assert!(answer.is_ok(), "a plain read was refused: {answer:?}");
}

/// Finding: a statement prepared by server-side code (PL/pgSQL `EXECUTE 'PREPARE …'`) is
/// unknown to the proxy; a Bind/Execute of it is recorded with an empty text and kind
/// unknown while the server runs a DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_write_plpgsql_prepared_statement_recorded_as_empty() {
    let env = Env::start("atk_plpgsql_prep").await;
    let (id, mut raw) = raw_session(&env, AccessLevel::Write).await;
    raw.send(&query(
        "CREATE FUNCTION pg_temp.prep() RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN EXECUTE 'PREPARE zz AS DELETE FROM items WHERE id = 1'; END $$",
    ))
    .await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT pg_temp.prep()")).await;
    raw.read_until_ready().await;
    raw.send(&[bind("", "zz"), execute(""), sync()].concat())
        .await;
    raw.read_until_ready().await;
    let kept = env.superuser_sql("SELECT count(*) FROM items WHERE id = 1");
    assert_eq!(kept, "1", "a statement lockbox never saw prepared ran");
    let recorded = statements_of(&env, &id);
    let last = recorded.last().cloned().unwrap_or_default();
    assert!(
        last.contains("\"zz\"") || last.contains("portal"),
        "the refused Execute is recorded for what it is: {last:?}"
    );
}

/// Unit-level: a long left-deep expression (one `+` per two bytes, well under the 1 MiB the
/// guard parses) on a thread with tokio's default 2 MiB stack, as a proxy worker has.
#[test]
fn attack_probe_deep_expression_on_worker_stack() {
    let sql = format!("SELECT {}1", "1+".repeat(200_000));
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || guard::analyze_query(&sql).len())
        .expect("spawn");
    let n = handle.join().expect("the guard did not crash");
    println!("analysed into {n} statement(s)");
}

/// Garbage after login: each input gets an error or a closed connection, and the proxy
/// keeps serving a fresh session afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_garbage_never_crashes_the_proxy() {
    let env = Env::start("atk_garbage").await;
    let garbage: Vec<Vec<u8>> = vec![
        message(b'Q', b"SELECT '\xff\xfe'; SELECT 1\0"),
        message(b'Q', b"SELECT 1\0DELETE FROM items\0"),
        message(b'Q', b""),
        message(
            b'B',
            &[b"p\0s\0".as_slice(), &(-1i16).to_be_bytes()].concat(),
        ),
        message(
            b'B',
            &[
                b"p\0s\0".as_slice(),
                &0i16.to_be_bytes(),
                &i16::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
        message(b'C', b"Zname\0"),
        message(b'C', b""),
        [execute("nope"), sync()].concat(),
        message(
            b'F',
            &[
                0u32.to_be_bytes().as_slice(),
                &1i16.to_be_bytes(),
                &1i16.to_be_bytes(),
                &1i16.to_be_bytes(),
                &i32::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
        message(b'd', b"stray copy data"),
        message(b'P', b"s1\0DELETE FROM items\0\0\0"),
        [
            message(b'P', b"s1\0DELETE FROM items\0\0\0"),
            bind("", "s1"),
            execute(""),
            sync(),
        ]
        .concat(),
        query(&format!(
            "SELECT {}1{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        )),
        query(&format!("SELECT {}", "NOT ".repeat(100_000) + "true")),
        query(&"/*".repeat(50_000)),
        vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        let (_id, mut raw) = raw_session(&env, AccessLevel::Read).await;
        raw.send(bytes).await;
        let answer = drain(&mut raw, Duration::from_millis(700)).await;
        let errors = crate::harness::errors_in(&answer);
        println!(
            "garbage #{i}: {} bytes back, errors {errors:?}",
            answer.len()
        );
        let (_id2, c) = session(&env, AccessLevel::Read).await;
        assert_eq!(
            one(&c, "SELECT 1").await,
            Ok("1".into()),
            "after garbage #{i}"
        );
    }
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
}
