//! Queries the server runs from text (`query_to_xml('…')`, `ts_stat('…')`) and the
//! built-ins that read by name, called either way PostgreSQL allows: an attack review of a
//! read grant with off-limits rules ran SQL through both ways unseen.

use super::*;

fn rules() -> Guardrails {
    Guardrails {
        off_limits: vec!["secret".into(), "hr.*".into()],
        ..Guardrails::default()
    }
}

/// The rule `sql` breaks as one statement, with the access level's own check first.
fn refusal(access: AccessLevel, sql: &str) -> Option<&'static str> {
    let analyses = analyze_query(sql);
    let [one] = &analyses[..] else {
        panic!("one statement: {analyses:?}");
    };
    check_analysis(access, &rules(), &one.analysis)
        .err()
        .map(|r| r.rule)
}

#[test]
fn a_query_run_from_text_or_read_by_name_in_column_notation_is_unknown() {
    // `(x).f` calls f(x): the argument is an expression, whatever it looks like.
    for sql in [
        "SELECT ('select to_tsvector(ssn) from secret'::text).ts_stat",
        "SELECT ((SELECT 'select to_tsvector(name) from hr.payroll'::text)).ts_stat",
        "SELECT ('hr.counter'::regclass).pg_sequence_last_value",
        "SELECT x.pg_sequence_last_value FROM CAST('hr.counter' AS regclass) x",
        "SELECT t.ts_stat FROM reverse('x') t",
        "SELECT ('select to_tsvector(set_config(''role'',''sales_read'',false))'::text).ts_stat",
        "SELECT ('select to_tsvector(lo_from_bytea(0, ''x'')::text)'::text).ts_stat",
    ] {
        assert_ne!(classify(sql), Class::Read, "{sql}");
        assert!(check(AccessLevel::Read, sql).is_err(), "{sql}");
        // Under rules even an admin's: what it reads cannot be matched against them.
        assert!(refusal(AccessLevel::Admin, sql).is_some(), "{sql}");
        let facts = &analyze(sql).facts;
        assert!(
            facts.reads_tables_by_name && facts.opaque.is_some(),
            "{sql}"
        );
    }
}

#[test]
fn every_fact_of_a_query_run_from_text_is_the_statements_own() {
    for (sql, rule) in [
        (
            "SELECT query_to_xml('select schema_to_xml(''hr'', true, false, '''')', true, false, '')",
            "off_limits",
        ),
        (
            "SELECT query_to_xml('select database_to_xml(true,false,'''')', true, false, '')",
            "off_limits",
        ),
        (
            "SELECT * FROM ts_stat('select to_tsvector(table_to_xml(c.oid::regclass,true,false,'''')::text) from pg_class c where relname=''secret''')",
            "off_limits",
        ),
        (
            "SELECT query_to_xml('select set_config(''search_path'', ''hr'', false)', true, false, '')",
            "off_limits",
        ),
        (
            "SELECT * FROM ts_stat('select to_tsvector(set_config(''search_path'', ''hr'', false))')",
            "off_limits",
        ),
        (
            "SELECT query_to_xml('select query_to_xml(''select * from hr.pay'', true, false, '''')', true, false, '')",
            "off_limits",
        ),
    ] {
        assert_eq!(refusal(AccessLevel::Admin, sql), Some(rule), "{sql}");
    }
    let facts = analyze(
        "SELECT query_to_xml('select set_config(''search_path'', ''x, pg_catalog'', false)', true, false, '')",
    )
    .facts;
    assert_eq!(&facts.search_path[..], ["x", "pg_catalog"]);
    assert!(facts.may_shadow_catalog);
    assert!(analyze(
        "SELECT query_to_xml('select set_config(''work_mem'', ''1MB'', false)', true, false, '')"
    )
    .facts
    .settings
    .contains(&"work_mem".to_owned()));
    // What it reads counts as the statement's rows.
    assert!(
        !analyze("SELECT query_to_xml('select * from items', true, false, '') FROM pg_class")
            .facts
            .catalog_only
    );
}

#[test]
fn queries_from_text_that_stay_within_the_grant_still_run() {
    for sql in [
        "SELECT query_to_xml('select 1', true, false, '')",
        "SELECT * FROM ts_stat('select to_tsvector(name) from items')",
        "SELECT query_to_xml('select * from items', true, false, '')",
    ] {
        assert_eq!(refusal(AccessLevel::Read, sql), None, "{sql}");
    }
}

#[test]
fn between_runs_the_comparison_operators_not_an_operator_named_between() {
    // A review found `2 BETWEEN 1 AND 3` refused as opaque under rules: the keyword was
    // looked up as an operator symbol.
    for (sql, symbols) in [
        ("SELECT 1 WHERE 2 BETWEEN 1 AND 3", [">=", "<="]),
        ("SELECT 1 WHERE 2 BETWEEN SYMMETRIC 3 AND 1", [">=", "<="]),
        ("SELECT 1 WHERE 2 NOT BETWEEN 1 AND 3", ["<", ">"]),
        ("SELECT 1 WHERE 2 NOT BETWEEN SYMMETRIC 3 AND 1", ["<", ">"]),
    ] {
        assert_eq!(refusal(AccessLevel::Read, sql), None, "{sql}");
        let facts = analyze(sql).facts;
        assert_eq!(&facts.operators[..], symbols, "{sql}");
        assert!(facts.opaque.is_none(), "{sql}");
    }
    // The comparison a database defines for its own type is still found.
    let facts = analyze("SELECT 1 FROM t WHERE t.v BETWEEN 'a' AND 'b'").facts;
    let own: std::collections::HashSet<String> = ["operator >=".to_owned()].into();
    assert!(database_function_used(&facts, &own).is_some());
}

#[test]
fn a_sequence_changed_or_a_row_located_by_name_is_that_relation() {
    // A second review advanced and reset an off-limits table's sequence at write level,
    // and located its rows with currtid2.
    let rules = Guardrails {
        off_limits: vec!["secret_id_seq".into(), "hr.*".into()],
        ..Guardrails::default()
    };
    let verdict = |sql: &str| {
        check_rules(&rules, &analyze(sql).facts)
            .err()
            .map(|r| r.rule)
    };
    for sql in [
        "SELECT nextval('secret_id_seq')",
        "SELECT setval('public.secret_id_seq', 1000)",
        "SELECT nextval('public.secret_id_seq'::pg_catalog.regclass)",
        "SELECT currtid2('hr.pay', '(0,1)')",
        // Named by an expression, a cast lockbox does not read, or column notation.
        "SELECT nextval(pg_get_serial_sequence('secret', 'id'))",
        "SELECT nextval('items_id_seq'::regclass)",
        "SELECT ('items_id_seq'::regclass).nextval",
        "SELECT x.setval FROM (SELECT 'items_id_seq'::regclass) x",
        "ALTER TABLE items ALTER COLUMN id SET DEFAULT nextval('secret_id_seq')",
        // The table a sequence is given to is named in an option only.
        "ALTER SEQUENCE items_id_seq OWNED BY hr.pay.id",
        "CREATE SEQUENCE s2 OWNED BY hr.pay.id",
        "ALTER SEQUENCE items_id_seq INCREMENT 2 OWNED BY secret_id_seq.x",
        // Run from text, a sequence it cannot tell is still unknown (a third review).
        "SELECT query_to_xml('SELECT nextval(''hr.s''::regclass)', false, false, '')",
    ] {
        assert_eq!(verdict(sql), Some("off_limits"), "{sql}");
    }
    for sql in [
        "ALTER SEQUENCE items_id_seq OWNED BY items.id",
        "ALTER SEQUENCE items_id_seq OWNED BY NONE",
        "SELECT nextval('items_id_seq')",
        "SELECT nextval('public.items_id_seq'::pg_catalog.regclass)",
        "SELECT currval('items_id_seq')",
    ] {
        assert_eq!(verdict(sql), None, "{sql}");
    }
    // Other rules alone do not refuse a sequence named by an expression.
    let deny_drop = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    let facts = analyze("SELECT nextval('items_id_seq'::regclass)").facts;
    assert!(check_rules(&deny_drop, &facts).is_ok());
}

#[test]
fn maintenance_of_no_table_named_acts_on_every_table() {
    for sql in [
        "REINDEX SCHEMA hr",
        "REINDEX DATABASE sales",
        "REINDEX SYSTEM sales",
        "VACUUM",
        "VACUUM FULL",
        "ANALYZE",
        "CLUSTER",
    ] {
        assert!(analyze(sql).facts.schema_wide, "{sql}");
        assert_eq!(
            refusal(AccessLevel::Admin, sql),
            Some("off_limits"),
            "{sql}"
        );
    }
    // A fifth review moved every table of a tablespace (a protected one's rewritten).
    let sql = "ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE pg_default";
    assert!(analyze(sql).facts.schema_wide, "{sql}");
    for sql in [
        "REINDEX TABLE items",
        "VACUUM items",
        "ANALYZE items",
        "CLUSTER items USING items_pkey",
    ] {
        assert!(!analyze(sql).facts.schema_wide, "{sql}");
    }
}

#[test]
fn what_reads_around_off_limits_rules_is_refused_even_to_admin() {
    for sql in [
        "COPY items FROM PROGRAM 'cat base/1/2'",
        "COPY items TO '/tmp/items'",
        "SELECT pg_read_binary_file('base/1/2')",
        "SET ROLE hr",
        "SELECT set_config('role', 'hr', false)",
    ] {
        assert_eq!(
            refusal(AccessLevel::Admin, sql),
            Some("off_limits"),
            "{sql}"
        );
    }
    // Without off-limits rules an admin may (the database's roles bound it).
    let analyses = analyze_query("COPY items FROM PROGRAM 'true'");
    let deny_drop = Guardrails {
        deny_drop: true,
        ..Guardrails::default()
    };
    assert!(check_analysis(AccessLevel::Admin, &deny_drop, &analyses[0].analysis).is_ok());
}

#[test]
fn a_schema_off_limits_is_not_granted_given_away_or_described() {
    // A fifth review granted a protected schema to another role (undoing the database's
    // own defence) and commented on it and on a protected column's domain.
    for sql in [
        "GRANT ALL ON SCHEMA hr TO sales_write",
        "GRANT USAGE ON SCHEMA public, HR TO sales_write",
        "REVOKE USAGE ON SCHEMA hr FROM lockbox_read",
        "ALTER SCHEMA hr OWNER TO sales_write",
        "COMMENT ON SCHEMA \"hr\" IS 'x'",
    ] {
        assert_eq!(
            refusal(AccessLevel::Admin, sql),
            Some("off_limits"),
            "{sql}"
        );
    }
    for sql in [
        "GRANT USAGE ON SCHEMA public TO sales_write",
        "COMMENT ON SCHEMA hrx IS 'x'",
    ] {
        assert_eq!(refusal(AccessLevel::Admin, sql), None, "{sql}");
    }
    // A type is named by a TypeName, not a name list.
    for (sql, name) in [
        ("COMMENT ON DOMAIN app.code IS 'x'", "app.code"),
        ("COMMENT ON TYPE mood IS 'x'", "mood"),
        ("DROP TYPE app.mood", "app.mood"),
    ] {
        let facts = analyze(sql).facts;
        assert!(
            facts.relations.contains(&name.to_owned()),
            "{sql}: {:?}",
            facts.relations
        );
    }
}

#[test]
fn altering_a_type_names_it_under_every_name_it_has_or_gets() {
    for (sql, names) in [
        ("ALTER TYPE mood RENAME TO mood_x", &["mood"][..]),
        ("ALTER DOMAIN app.code RENAME TO code_x", &["app.code"]),
        ("ALTER TYPE mood SET SCHEMA hr", &["mood", "hr.mood"]),
        ("ALTER TYPE app.mood OWNER TO CURRENT_USER", &["app.mood"]),
        ("ALTER TYPE mood RENAME VALUE 'a' TO 'b'", &["mood"]),
        (
            "ALTER DOMAIN code ADD CONSTRAINT c CHECK (VALUE > 0)",
            &["code"],
        ),
    ] {
        let facts = analyze(sql).facts;
        for name in names {
            assert!(
                facts.relations.contains(&(*name).to_owned()),
                "{sql}: {:?}",
                facts.relations
            );
        }
    }
}

#[test]
fn foreign_tables_are_made_and_changed_as_other_servers_are() {
    // A foreign table without `table_name` reads the remote table of its own name: renamed
    // like a protected table, its loopback server read and wrote that table.
    for sql in [
        "CREATE FOREIGN TABLE z.f (id int) SERVER loop OPTIONS (schema_name 'public')",
        "ALTER FOREIGN TABLE z.f RENAME TO secret",
        "ALTER FOREIGN TABLE z.f SET SCHEMA public",
        "ALTER FOREIGN TABLE z.f OPTIONS (ADD table_name 'secret')",
        "ALTER FOREIGN TABLE z.f RENAME COLUMN id TO i",
    ] {
        assert_eq!(classify(sql), Class::Escalation("remote_server"), "{sql}");
        assert!(check(AccessLevel::Write, sql).is_err(), "{sql}");
        assert_eq!(
            refusal(AccessLevel::Admin, sql),
            Some("off_limits"),
            "{sql}"
        );
    }
    // A table of this database is no other server's.
    assert_eq!(classify("ALTER TABLE items RENAME TO goods"), Class::Ddl);
}

#[test]
fn a_relation_is_named_as_it_will_be_called_after_a_rename() {
    // `ALTER TABLE` renames (and sets options of) a foreign table too.
    for sql in [
        "ALTER TABLE z.f RENAME TO secret",
        // PostgreSQL's ALTER INDEX … RENAME renames any relation (a fifth review's form).
        "ALTER INDEX z.f RENAME TO secret",
        "ALTER VIEW z.v RENAME TO secret",
    ] {
        assert_eq!(
            refusal(AccessLevel::Admin, sql),
            Some("off_limits"),
            "{sql}"
        );
    }
    assert_eq!(
        classify("ALTER TABLE z.f OPTIONS (ADD schema_name 'public')"),
        Class::Escalation("remote_server")
    );
    let facts = analyze("ALTER TABLE z.f RENAME TO g").facts;
    assert!(
        facts.relations.contains(&"z.g".to_owned()),
        "{:?}",
        facts.relations
    );
    assert_eq!(
        refusal(AccessLevel::Write, "ALTER TABLE items RENAME TO goods"),
        None
    );
    assert_eq!(
        refusal(
            AccessLevel::Write,
            "ALTER TABLE items RENAME COLUMN name TO secret"
        ),
        None
    );
}
