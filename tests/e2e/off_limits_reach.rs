//! `off_limits` reaches through the catalog: a table that is off limits may not be read or
//! written through a parent whose scans include it, a partition or child that holds its
//! rows, a view or rule over it, or a table whose deletes cascade into it. The links are
//! the server's own (`pg_inherits`, `pg_rewrite`, `pg_constraint`), made here by the
//! superuser before the grant's session logs in.

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

const SCHEMA: &str = "
    CREATE SCHEMA hr;
    CREATE TABLE emp_base (id int, pay int);
    CREATE TABLE hr.bonus () INHERITS (emp_base);
    CREATE TABLE contractors () INHERITS (emp_base);
    INSERT INTO hr.bonus VALUES (1, 1000);
    INSERT INTO contractors VALUES (2, 10);
    CREATE TABLE ledger (k int, v text) PARTITION BY LIST (k);
    CREATE TABLE hr.ledger_p1 PARTITION OF ledger FOR VALUES IN (1);
    CREATE TABLE ledger_p2 PARTITION OF ledger FOR VALUES IN (2);
    INSERT INTO ledger VALUES (1, 'secret'), (2, 'open');
    CREATE TABLE hr.payments (k int) PARTITION BY RANGE (k);
    CREATE TABLE payments_2026 PARTITION OF hr.payments FOR VALUES FROM (0) TO (100);
    CREATE TABLE payments_2026_q1 PARTITION OF hr.payments FOR VALUES FROM (100) TO (200)
        PARTITION BY RANGE (k);
    CREATE TABLE payments_2026_q1a PARTITION OF payments_2026_q1 FOR VALUES FROM (100) TO (150);
    CREATE VIEW bonus_view AS SELECT id, pay FROM hr.bonus;
    CREATE VIEW bonus_view_2 AS SELECT * FROM bonus_view;
    CREATE MATERIALIZED VIEW bonus_copy AS SELECT * FROM hr.bonus;
    CREATE TABLE depts (id int PRIMARY KEY);
    CREATE TABLE sites (id int PRIMARY KEY);
    INSERT INTO depts VALUES (1);
    INSERT INTO sites VALUES (1);
    CREATE TABLE hr.staff (id int, dept int REFERENCES depts ON DELETE CASCADE,
                           site int REFERENCES sites);
    INSERT INTO hr.staff VALUES (1, 1, 1);
    CREATE TABLE inbox (v text);
    CREATE RULE copy_to_hr AS ON INSERT TO inbox DO ALSO INSERT INTO hr.staff VALUES (9, 1, 1);
    GRANT ALL ON ALL TABLES IN SCHEMA public, hr TO PUBLIC;
    GRANT USAGE ON SCHEMA hr TO PUBLIC;
";

#[tokio::test(flavor = "multi_thread")]
async fn relations_that_reach_an_off_limits_table_are_off_limits() {
    let env = Env::with(
        "off_limits_reach",
        Options {
            guardrails: "off_limits = [\"hr.*\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(SCHEMA);
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    for (sql, reached) in [
        ("SELECT * FROM emp_base", "hr.bonus"),
        ("SELECT * FROM public.emp_base WHERE pay > 0", "hr.bonus"),
        ("DELETE FROM emp_base WHERE id = 1", "hr.bonus"),
        ("CREATE TABLE copied AS SELECT * FROM emp_base", "hr.bonus"),
        (
            "ALTER TABLE emp_base ALTER COLUMN pay TYPE bigint",
            "hr.bonus",
        ),
        ("SELECT v FROM ledger", "hr.ledger_p1"),
        ("UPDATE ledger SET v = 'x' WHERE k = 1", "hr.ledger_p1"),
        ("SELECT * FROM payments_2026", "hr.payments"),
        ("SELECT * FROM payments_2026_q1a", "hr.payments"),
        ("SELECT * FROM bonus_view", "hr.bonus"),
        ("SELECT * FROM bonus_view_2", "hr.bonus"),
        ("SELECT * FROM bonus_copy", "hr.bonus"),
        ("REFRESH MATERIALIZED VIEW bonus_copy", "hr.bonus"),
        ("DELETE FROM depts WHERE id = 1", "hr.staff"),
        ("INSERT INTO inbox VALUES ('x')", "hr.staff"),
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("off_limits"), "{sql}: {message}");
        assert!(
            message.contains(reached),
            "{sql} reaches {reached}: {message}"
        );
    }
    // Nothing reached the protected rows.
    let staff = env.superuser_sql("SELECT count(*) FROM hr.staff");
    assert_eq!(staff.trim(), "1", "no cascade, no rule ran");
    let pay = env.superuser_sql("SELECT pay FROM hr.bonus");
    assert_eq!(pay.trim(), "1000");
    // A sibling's rows are its own; a key with no action on delete writes nothing of hr's.
    for sql in [
        "SELECT count(*) FROM contractors",
        "SELECT count(*) FROM ledger_p2",
        "SELECT count(*) FROM sites",
        "SELECT count(*) FROM depts",
        "UPDATE contractors SET pay = 11 WHERE id = 2",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
}
