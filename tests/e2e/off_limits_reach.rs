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
    CREATE TABLE depts2 (id int PRIMARY KEY);
    INSERT INTO depts2 VALUES (1), (2);
    CREATE TABLE hr.staff3 (id int, dept int REFERENCES depts2 ON UPDATE CASCADE);
    INSERT INTO hr.staff3 VALUES (1, 1), (2, 2);
    CREATE TABLE rsrc (id int);
    CREATE RULE bump AS ON INSERT TO rsrc DO ALSO UPDATE depts2 SET id = id + 100 WHERE id = new.id;
    CREATE TABLE inbox (v text);
    CREATE RULE copy_to_hr AS ON INSERT TO inbox DO ALSO INSERT INTO hr.staff VALUES (9, 1, 1);
    CREATE TABLE offices (id int PRIMARY KEY);
    CREATE TABLE hr.desks (office int REFERENCES offices);
    INSERT INTO offices VALUES (1);
    INSERT INTO hr.desks VALUES (1);
    CREATE VIEW public.\"v.x\" AS SELECT * FROM hr.bonus;
    CREATE SCHEMA \"x.y\";
    CREATE VIEW \"x.y\".vv AS SELECT * FROM hr.bonus;
    CREATE EXTENSION postgres_fdw;
    CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'nowhere');
    CREATE FOREIGN TABLE bonus_remote (id int, pay int) SERVER loop
        OPTIONS (schema_name 'hr', table_name 'bonus');
    CREATE DOMAIN code_base AS text;
    CREATE DOMAIN code AS code_base;
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE TYPE weather AS ENUM ('sun', 'rain');
    CREATE TABLE forecasts (w weather);
    CREATE TYPE mood2 AS ENUM ('calm', 'wild');
    CREATE TYPE comp2 AS (m mood2, n int);
    CREATE TYPE mood3 AS ENUM ('low', 'high');
    CREATE TYPE mood3range AS RANGE (subtype = mood3);
    CREATE TABLE vault (id serial PRIMARY KEY, v text, c code, m mood[], c2 comp2,
                        r3 mood3range);
    CREATE INDEX vault_v ON vault (v);
    CREATE TABLE vault_refs (vault_id int REFERENCES vault (id));
    CREATE SEQUENCE emp_ids;
    CREATE TABLE hr.emp (id int DEFAULT nextval('emp_ids'), n text);
    INSERT INTO hr.emp (n) VALUES ('x');
    INSERT INTO vault (v) VALUES ('a');
    CREATE TABLE strongroom (id int GENERATED ALWAYS AS IDENTITY, v text);
    CREATE SEQUENCE strongroom_v_seq_open;
    INSERT INTO strongroom (v) VALUES ('a');
    CREATE VIEW stats_view AS SELECT attname, most_common_vals::text FROM pg_stats;
    CREATE VIEW stats_view_2 AS SELECT * FROM stats_view;
    CREATE VIEW seq_view AS SELECT sequencename, last_value FROM pg_catalog.pg_sequences;
    GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;
    GRANT ALL ON ALL TABLES IN SCHEMA public, hr, \"x.y\" TO PUBLIC;
    GRANT USAGE ON SCHEMA hr, \"x.y\" TO PUBLIC;
";

#[tokio::test(flavor = "multi_thread")]
async fn relations_that_reach_an_off_limits_table_are_off_limits() {
    let env = Env::with(
        "off_limits_reach",
        Options {
            guardrails: "off_limits = [\"hr.*\", \"vault\", \"strongroom\"]",
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
        // An upsert updates, and a rule's UPDATE cascades.
        (
            "INSERT INTO depts2 VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 50",
            "hr.staff3",
        ),
        ("INSERT INTO rsrc VALUES (2)", "hr.staff3"),
        // Whatever a key's action, TRUNCATE … CASCADE empties the referencing table.
        ("TRUNCATE offices CASCADE", "hr.desks"),
        // Names with dots in them.
        ("SELECT * FROM public.\"v.x\"", "hr.bonus"),
        ("SELECT * FROM \"v.x\"", "hr.bonus"),
        ("SELECT * FROM \"x.y\".vv", "hr.bonus"),
        // A foreign table whose options name a protected table (a loopback server reads it).
        ("SELECT * FROM bonus_remote", "hr.bonus"),
        // A sequence a protected table owns (serial, identity) counts its rows, wherever
        // it is.
        ("SELECT last_value FROM vault_id_seq", "public.vault"),
        (
            "SELECT pg_sequence_last_value('public.vault_id_seq')",
            "public.vault",
        ),
        (
            "SELECT last_value FROM strongroom_id_seq",
            "public.strongroom",
        ),
        // A sequence a protected table's default takes its values from.
        ("SELECT last_value FROM emp_ids", "hr.emp"),
        ("SELECT setval('vault_id_seq', 1000)", "public.vault"),
        ("SELECT ('vault_id_seq'::regclass).nextval", "expression"),
        // Where a protected table's rows are; an index of it.
        ("SELECT currtid2('vault', '(0,1)')", "vault"),
        ("ALTER INDEX vault_v RENAME TO vault_w", "public.vault"),
        // A foreign key's check reads the table it looks in: a new key's, and a deleted
        // key's referencing rows (its error tells whether a value is there).
        ("INSERT INTO vault_refs VALUES (1)", "public.vault"),
        ("DELETE FROM offices WHERE id = 42", "hr.desks"),
        // A type a protected table's column is of: a new check reads its values, a
        // renamed label changes them (through a domain over it, an array of it).
        (
            "ALTER DOMAIN code_base ADD CONSTRAINT probe CHECK (VALUE < 'x')",
            "public.vault",
        ),
        (
            "ALTER TYPE mood RENAME VALUE 'happy' TO 'furious'",
            "public.vault",
        ),
        // Renamed, moved or given away first, it would be a name the links do not know.
        ("ALTER TYPE mood RENAME TO mood_x", "public.vault"),
        ("ALTER TYPE mood SET SCHEMA hr", "hr.mood"),
        ("ALTER DOMAIN code RENAME TO code_x", "public.vault"),
        ("ALTER TYPE mood OWNER TO CURRENT_USER", "public.vault"),
        // In a composite, a range.
        (
            "ALTER TYPE mood2 RENAME VALUE 'calm' TO 'still'",
            "public.vault",
        ),
        (
            "ALTER TYPE mood3 RENAME VALUE 'high' TO 'top'",
            "public.vault",
        ),
        // DDL rewrites and re-checks keys both ways, or names anew what reaches a
        // protected table: any link counts.
        (
            "ALTER TABLE offices ALTER COLUMN id TYPE int USING (id + 1000)",
            "hr.desks",
        ),
        ("ALTER TABLE depts RENAME TO depts_r", "hr.staff"),
        ("CREATE VIEW depts_view AS SELECT * FROM depts", "hr.staff"),
        // Files, programs and other roles read around the rules.
        (
            "COPY items FROM PROGRAM 'true'",
            "reaches outside the database",
        ),
        ("SET ROLE NONE", "reaches outside the database"),
        // A foreign table made or renamed in the session reads what its name says.
        (
            "CREATE FOREIGN TABLE ft (id int) SERVER loop OPTIONS (schema_name 'public')",
            "reaches outside the database",
        ),
        (
            "ALTER FOREIGN TABLE bonus_remote RENAME TO bonus_r",
            "reaches outside the database",
        ),
        // `ALTER TABLE` takes a foreign table's options too; and a relation renamed like a
        // protected table (a foreign table without options then reads that table).
        (
            "ALTER TABLE bonus_remote OPTIONS (SET table_name 'contractors')",
            "reaches outside the database",
        ),
        ("ALTER TABLE contractors RENAME TO vault", "vault"),
        // A view of the customer's over the catalogs that show every table's values.
        ("SELECT * FROM stats_view", "pg_catalog.pg_stats"),
        ("SELECT * FROM public.stats_view_2", "pg_catalog.pg_stats"),
        ("SELECT * FROM seq_view", "pg_catalog.pg_sequences"),
        // A replication slot's changes hold every table's new rows.
        (
            "SELECT * FROM pg_logical_slot_peek_changes('cdc', NULL, NULL)",
            "reaches outside the database",
        ),
        // Every table, unnamed.
        ("REINDEX SCHEMA hr", "whole schemas"),
        ("VACUUM", "whole schemas"),
        (
            "ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE pg_default",
            "whole schemas",
        ),
        // A protected schema's privileges undo the database's own defence; a sequence given
        // to a protected table is named in an option only.
        ("GRANT ALL ON SCHEMA hr TO PUBLIC", "schema hr"),
        ("ALTER SCHEMA hr OWNER TO CURRENT_USER", "schema hr"),
        (
            "ALTER SEQUENCE strongroom_v_seq_open OWNED BY hr.emp.id",
            "hr.emp",
        ),
        ("COMMENT ON DOMAIN code IS 'probe'", "public.vault"),
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
    let desks = env.superuser_sql("SELECT count(*) FROM hr.desks");
    assert_eq!(desks.trim(), "1", "no TRUNCATE cascaded");
    let depts = env.superuser_sql("SELECT string_agg(dept::text, ',' ORDER BY id) FROM hr.staff3");
    assert_eq!(depts.trim(), "1,2", "no update cascaded");
    // A sibling's rows are its own; a key with no action on delete writes nothing of hr's.
    for sql in [
        "SELECT count(*) FROM contractors",
        "SELECT count(*) FROM ledger_p2",
        "SELECT count(*) FROM sites",
        "SELECT count(*) FROM depts",
        "UPDATE contractors SET pay = 11 WHERE id = 2",
        // psql's `\\d` and pg_dump read the extended statistics' definitions.
        "SELECT stxname FROM pg_catalog.pg_statistic_ext WHERE stxrelid = 'items'::regclass",
        // An INSERT into a referenced table cascades nothing and checks nothing.
        "INSERT INTO depts VALUES (2)",
        "INSERT INTO depts2 VALUES (3)",
        "SELECT nextval('strongroom_v_seq_open')",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
    // A type no protected table uses goes to the server (which says who may alter it).
    let altered = client
        .simple_query("ALTER TYPE weather RENAME VALUE 'rain' TO 'showers'")
        .await;
    if let Err(error) = altered {
        let (_, message) = db_error(&error);
        assert!(!message.contains("lockbox"), "{message}");
    }
}

/// A schema off limits as a whole keeps every object in it, not only its tables: its
/// functions may not be dropped, re-owned or made `SECURITY DEFINER`, nothing may be created
/// in it or moved into it, and its types may not be used (an attack review did each under an
/// admin grant, and only the server's privileges stood in the way).
#[tokio::test(flavor = "multi_thread")]
async fn every_object_of_an_off_limits_schema_is_off_limits() {
    let env = Env::with(
        "off_limits_objects",
        Options {
            guardrails: "off_limits = [\"hr.*\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE SCHEMA hr;
         CREATE FUNCTION hr.pay_rise(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
         CREATE DOMAIN hr.grade AS int;
         CREATE TABLE hr.pay (id int, amount int);
         CREATE INDEX pay_brin ON hr.pay USING brin (id);
         CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE TABLE public.notes (hr int, n text);
         GRANT ALL ON SCHEMA hr TO PUBLIC;
         GRANT ALL ON ALL FUNCTIONS IN SCHEMA hr, public TO PUBLIC;
         GRANT ALL ON public.notes TO PUBLIC;",
    );
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    for sql in [
        "DROP FUNCTION hr.pay_rise(int)",
        "ALTER FUNCTION hr.pay_rise(int) SECURITY DEFINER",
        "ALTER FUNCTION hr.pay_rise(int) OWNER TO CURRENT_USER",
        "GRANT EXECUTE ON FUNCTION hr.pay_rise(int) TO PUBLIC",
        "COMMENT ON FUNCTION hr.pay_rise(int) IS 'probe'",
        "CREATE FUNCTION hr.planted() RETURNS int LANGUAGE sql AS 'SELECT 2'",
        "CREATE DOMAIN hr.planted_grade AS int",
        "ALTER FUNCTION public.helper() SET SCHEMA hr",
        "CREATE TABLE public.graded (g hr.grade)",
        "SELECT 3::hr.grade",
        "SELECT hr.pay_rise(1)",
        // A function that writes the index named in a string.
        "SELECT brin_summarize_new_values('hr.pay_brin')",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.contains("off_limits") && message.contains("hr"),
            "{sql}: {message}"
        );
    }
    let left = env.superuser_sql(
        "SELECT string_agg(p.proname || ':' || p.prosecdef || ':' || n.nspname, ',' ORDER BY p.proname)
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('hr', 'public') AND p.proname IN ('pay_rise', 'planted', 'helper')",
    );
    assert_eq!(left.trim(), "helper:false:public,pay_rise:false:hr");
    // A column or an alias named like the schema is no use of it.
    for sql in [
        "SELECT hr FROM public.notes",
        "SELECT hr.n FROM public.notes hr",
        "SELECT n.hr FROM public.notes n",
        "INSERT INTO public.notes (hr, n) VALUES (1, 'a')",
        "UPDATE public.notes SET hr = 2 WHERE n = 'a'",
        "SELECT * FROM public.notes a JOIN public.notes b USING (hr, n)",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
}

const CODE: &str = "
    CREATE FUNCTION app_leak(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
    CREATE VIEW report AS SELECT app_leak(id) AS v FROM items;
    CREATE VIEW report_2 AS SELECT * FROM report;
    CREATE TABLE audited (id int);
    CREATE TRIGGER touch_it BEFORE INSERT ON audited FOR EACH ROW EXECUTE FUNCTION touch();
    CREATE TABLE defaulted (id int, v int DEFAULT app_leak(1));
    CREATE DOMAIN checked_int AS int CHECK (app_leak(VALUE) > 0);
    CREATE TABLE domained (v checked_int);
    CREATE TABLE checked (v int CHECK (app_leak(v) > 0));
    CREATE TABLE indexed (v int);
    CREATE FUNCTION app_key(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
    CREATE INDEX indexed_key ON indexed (app_key(v));
    CREATE FUNCTION app_const() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
    CREATE TABLE planned (x int);
    CREATE INDEX planned_partial ON planned (x) WHERE x > app_const();
    CREATE EXTENSION citext;
    CREATE TABLE named (n citext);
    CREATE VIEW citext_view AS SELECT n FROM named WHERE n = 'a';
    CREATE EXTENSION tablefunc;
    CREATE VIEW crossed AS SELECT * FROM normal_rand(1, 0, 1) AS v;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
    CREATE FUNCTION app_op(int, int) RETURNS int LANGUAGE sql AS 'SELECT $1 + $2';
    CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = app_op);
    CREATE VIEW op_view AS SELECT id ### 0 AS v FROM items;
    CREATE DOMAIN inner_int AS int CHECK (VALUE ### 0 IS NOT NULL);
    CREATE DOMAIN outer_int AS inner_int;
    CREATE TABLE nested_domain (v outer_int);
    CREATE TABLE domain_array (v inner_int[]);
    CREATE TYPE pair AS (a inner_int);
    CREATE TABLE composite (p pair);
    CREATE DOMAIN defaulted_int AS int DEFAULT app_leak(1);
    CREATE TABLE domain_default (id int, v defaulted_int);
    CREATE TABLE guarded (id int, v text);
    CREATE TRIGGER guarded_when BEFORE UPDATE ON guarded FOR EACH ROW
        WHEN (app_leak(1) > 0) EXECUTE FUNCTION suppress_redundant_updates_trigger();
    CREATE VIEW xml_view AS SELECT query_to_xml('select 1', true, false, '') AS x;
    CREATE EXTENSION \"uuid-ossp\";
    CREATE TABLE with_uuid (id uuid DEFAULT uuid_generate_v4(), v int);
    GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
    CREATE FUNCTION on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';
    CREATE EVENT TRIGGER on_ddl ON ddl_command_start EXECUTE FUNCTION on_ddl();
    CREATE TABLE prefs (name text, setting text);
    CREATE RULE prefs_apply AS ON INSERT TO prefs
        DO INSTEAD SELECT set_config(NEW.name, NEW.setting, false);
    CREATE VIEW seq_status AS SELECT c.relname, pg_sequence_last_value(c.oid) AS last
        FROM pg_class c WHERE c.relkind = 'S';
    CREATE FUNCTION json_cmp(a json, b json) RETURNS int LANGUAGE sql IMMUTABLE
        AS 'SELECT bttextcmp(a::text, b::text)';
    CREATE FUNCTION json_lt(json, json) RETURNS bool LANGUAGE sql IMMUTABLE
        AS 'SELECT json_cmp($1, $2) < 0';
    CREATE FUNCTION json_eq(json, json) RETURNS bool LANGUAGE sql IMMUTABLE
        AS 'SELECT json_cmp($1, $2) = 0';
    CREATE OPERATOR <# (LEFTARG = json, RIGHTARG = json, FUNCTION = json_lt);
    CREATE OPERATOR =# (LEFTARG = json, RIGHTARG = json, FUNCTION = json_eq);
    CREATE OPERATOR CLASS json_btree_ops DEFAULT FOR TYPE json USING btree AS
        OPERATOR 1 <#, OPERATOR 3 =#, FUNCTION 1 json_cmp(json, json);
    CREATE TABLE events (id int, payload json);
    CREATE DOMAIN search_setting AS text
        CHECK (pg_catalog.set_config('search_path', VALUE, false) IS NOT NULL);
    CREATE TABLE session_notes (path text);
    CREATE TABLE note_log (path text);
    CREATE RULE apply_path AS ON INSERT TO session_notes
        WHERE pg_catalog.set_config('search_path', NEW.path, false) IS NOT NULL
        DO ALSO INSERT INTO note_log VALUES (NEW.path);
    CREATE DOMAIN path_marker AS text DEFAULT pg_catalog.set_config('search_path', 'public', false);
    CREATE TABLE visits (who text, marker path_marker);
    CREATE FUNCTION pg_catalog.upper(integer) RETURNS text LANGUAGE sql AS 'SELECT $1::text';
    CREATE OPERATOR #@# (RIGHTARG = regclass, FUNCTION = pg_catalog.pg_sequence_last_value);
    CREATE VIEW seq_progress AS SELECT #@# c.oid::regclass AS last FROM pg_class c
        WHERE c.relkind = 'S';
    CREATE VIEW server_file AS SELECT pg_read_file('postgresql.auto.conf') AS f;
    CREATE SEQUENCE ticket_numbers;
    CREATE TABLE tickets (id bigint DEFAULT nextval('ticket_numbers'::text), note text);
    CREATE TABLE serial_tickets (id serial, note text);
    CREATE VIEW sequence_bumper AS SELECT nextval(c.oid::regclass) AS n FROM pg_class c
        WHERE c.relname = 'ticket_numbers';
    CREATE TABLE bumped_by_default (id int,
        n bigint DEFAULT setval(to_regclass(current_schema() || '.ticket_numbers'), 7));
    GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
";

/// With guardrails in force a database function may not run out of the guard's sight: not
/// when a view calls it, nor a trigger, default, check or index on a write, nor a domain's
/// check on any use, nor an event trigger on DDL.
#[tokio::test(flavor = "multi_thread")]
async fn relations_that_run_a_database_function_are_opaque() {
    let env = Env::with(
        "reach_functions",
        Options {
            guardrails: "deny_drop = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(CODE);
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    for (sql, function) in [
        ("SELECT * FROM report", "public.app_leak"),
        ("SELECT count(*) FROM report_2", "public.app_leak"),
        ("INSERT INTO audited VALUES (1)", "public.touch"),
        ("INSERT INTO defaulted (id) VALUES (1)", "public.app_leak"),
        ("INSERT INTO domained VALUES (1)", "public.app_leak"),
        // A read can turn a value into the row type, which checks its domains (a fourth
        // outside review ran the check through `coalesce(t, '(8)')`).
        ("SELECT count(*) FROM domained", "public.app_leak"),
        (
            "SELECT coalesce(d, '(8)') FROM domained d",
            "public.app_leak",
        ),
        ("UPDATE checked SET v = 2 WHERE v = 1", "public.app_leak"),
        ("INSERT INTO indexed VALUES (1)", "public.app_key"),
        // Through operators, domains of domains, arrays, composites, domain defaults, a
        // trigger's WHEN.
        ("SELECT * FROM op_view", "public.app_op"),
        ("INSERT INTO nested_domain VALUES (1)", "public.app_op"),
        (
            "INSERT INTO domain_array VALUES (ARRAY[1])",
            "public.app_op",
        ),
        ("INSERT INTO composite VALUES (ROW(1))", "public.app_op"),
        (
            "INSERT INTO domain_default (id) VALUES (1)",
            "public.app_leak",
        ),
        ("UPDATE guarded SET v = 'x' WHERE id = 1", "public.app_leak"),
        // The planner evaluates an immutable call of constants (an index predicate) while
        // it plans a read.
        ("SELECT * FROM planned WHERE x = 5", "public.app_const"),
        // (Conservatively, any index expression: lockbox cannot tell a constant call.)
        ("SELECT count(*) FROM indexed", "public.app_key"),
        // An extension's function a view calls by name is as opaque as a call of it.
        ("SELECT * FROM crossed", "normal_rand"),
        // A built-in that runs SQL given as text, inside a view.
        ("SELECT * FROM xml_view", "query_to_xml"),
        // An event trigger runs its function on any DDL, and on what fires ddl_command_end.
        ("CREATE TABLE made_here (a int)", "public.on_ddl"),
        ("SELECT 1 AS a INTO made_here_too", "public.on_ddl"),
        // …whatever its CTEs write (a fifth review's SELECT INTO was recorded as an insert).
        (
            "WITH i AS (INSERT INTO items (id, name) VALUES (4243, 'x') RETURNING *) SELECT * INTO made_by_cte FROM i",
            "public.on_ddl",
        ),
        // Planning an INSERT evaluates its immutable defaults (a fifth review ran one with
        // a plain EXPLAIN).
        (
            "EXPLAIN INSERT INTO defaulted (id) VALUES (1)",
            "public.app_leak",
        ),
        // A named operator class runs its support functions, which may be the database's.
        ("CREATE INDEX ON items (id int4_ops)", "operator class"),
        // Built-ins judged by their arguments, where a rule or a view hides them (an
        // attack review put an off-limits schema on the search path through the rule).
        (
            "INSERT INTO prefs VALUES ('search_path', 'public')",
            "set_config",
        ),
        ("SELECT * FROM seq_status", "pg_sequence_last_value"),
        // A database's default btree class of a built-in type runs its functions when a
        // sort or a comparison uses the type.
        (
            "SELECT payload FROM events ORDER BY payload",
            "public.json_",
        ),
        (
            "SELECT DISTINCT x FROM (VALUES ('{}'::json)) AS v (x)",
            "the type json",
        ),
        // Built-ins judged by their arguments, in a domain's check or default, a rule's
        // WHERE, or behind an operator (a sixth review's ways around the fix above).
        ("SELECT 'public'::search_setting", "the type search_setting"),
        (
            "INSERT INTO session_notes VALUES ('public')",
            "set_config",
        ),
        ("INSERT INTO visits (who) VALUES ('me')", "set_config"),
        ("SELECT * FROM seq_progress", "pg_sequence_last_value"),
        // A built-in the guard refuses, behind a view.
        ("SELECT * FROM server_file", "pg_read_file"),
        // A function of the database's own made in pg_catalog, under a built-in's name.
        ("SELECT upper(3)", "upper"),
        // A sequence named by text, found only as the default runs (its name's conversion
        // and the nextval of what it finds both count; either may be named).
        ("INSERT INTO tickets (note) VALUES ('x')", "regclass|nextval"),
        // A conversion to a type given by OID runs its domain's check (an attack review
        // wrote through one so).
        (
            "SELECT domain_in('5', 'checked_int'::regtype, -1)",
            "type given by OID",
        ),
        // A sequence computed from the catalog: any sequence, an off-limits one too.
        ("SELECT * FROM sequence_bumper", "nextval"),
        ("INSERT INTO bumped_by_default (id) VALUES (1)", "setval"),
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("opaque_statement"), "{sql}: {message}");
        assert!(
            function.split('|').any(|f| message.contains(f)),
            "{sql} runs {function}: {message}"
        );
    }
    let written = env.superuser_sql(
        "SELECT (SELECT count(*) FROM audited) + (SELECT count(*) FROM defaulted) + (SELECT count(*) FROM domained) + (SELECT count(*) FROM indexed)",
    );
    assert_eq!(written.trim(), "0", "no write ran");
    // Reading a table runs none of its triggers or defaults.
    for sql in [
        "SELECT count(*) FROM audited",
        "SELECT count(*) FROM defaulted",
        "INSERT INTO items (id, name) VALUES (4242, 'plain')",
        // An extension's function is no function of the database's own.
        "INSERT INTO with_uuid (v) VALUES (1)",
        // Nor are an extension's overloads of built-in names (citext's `max`), or its
        // operators in a view.
        "SELECT max(id), min(id), replace('a', 'b', 'c') FROM items",
        "SELECT * FROM citext_view",
        // A serial column's default names its own sequence.
        "INSERT INTO serial_tickets (note) VALUES ('x')",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
}

/// `pg_dump --schema-only` of a whole database with off-limits tables works under a read
/// grant: it locks every table it dumps (`LOCK TABLE … IN ACCESS SHARE MODE`, which reads
/// nothing and runs nothing), and the definitions of a protected table are no rows of it.
/// Its data stays refused: a plain `pg_dump` stops at the first protected table it copies.
#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_schema_only_works_where_tables_are_off_limits_and_their_data_stays_refused() {
    let env = Env::with(
        "off_limits_pg_dump",
        Options {
            guardrails: "off_limits = [\"hr.*\", \"vault\", \"strongroom\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(SCHEMA);
    let pg_dump = |args: &[&str], token: &str| {
        std::process::Command::new(crate::harness::cluster().bin_dir().join("pg_dump"))
            .args(args)
            .args(["-h", "127.0.0.1", "-p", &env.proxy_port().to_string()])
            .args(["-U", "eve", &env.db])
            .env("PGPASSWORD", token)
            .output()
            .expect("run pg_dump")
    };
    let (_, token) = env.approved_token("eve", "1h").await;
    let out = pg_dump(&["--schema-only"], &token);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pg_dump -s failed: {stderr}");
    let dump = String::from_utf8_lossy(&out.stdout);
    for definition in [
        "CREATE TABLE hr.bonus",
        "CREATE TABLE public.vault",
        "CREATE VIEW public.bonus_view",
    ] {
        assert!(
            dump.contains(definition),
            "{definition} missing from:\n{dump}"
        );
    }
    let (_, token) = env.approved_token("eve", "1h").await;
    let out = pg_dump(&["--data-only"], &token);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a data dump ran: {stderr}");
    assert!(stderr.contains("off_limits"), "{stderr}");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        !dump.contains("1000"),
        "a protected row in the dump:\n{dump}"
    );
}
