//! What a database's catalog makes run where the statement's text names none of it: an
//! operator family of its own that sorts or hashes a built-in type, and an implicit cast of
//! its own between built-in types. With rules, such statements are refused
//! (`opaque_statement`), checked against the real server's planner (the customer's
//! functions would write a row if they ran).

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

const RUN_LOG: &str = "
    CREATE TABLE ran (what text);
    GRANT ALL ON ran TO PUBLIC;
";

/// A database with a rule (so `opaque_statement` is on) and a table the customer's
/// functions write to when they run.
async fn env_with_rules(name: &str) -> Env {
    let env = Env::with(
        name,
        Options {
            guardrails: "deny_drop = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(RUN_LOG);
    env
}

async fn admin_session(env: &Env) -> tokio_postgres::Client {
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client
}

fn assert_opaque(error: &tokio_postgres::Error, sql: &str, naming: &str) {
    let (code, message) = db_error(error);
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(message.contains("opaque_statement"), "{sql}: {message}");
    assert!(message.contains(naming), "{sql} names {naming}: {message}");
}

/// The planner sorts or hashes with any btree or hash family that holds the operator, not
/// only a type's default class: `ORDER BY b USING <` on `box` ran a review's comparison
/// function from a class it never named, and `satisfies_hash_partition` by a table's OID ran
/// its partition key's hash function.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_family_of_the_databases_own_makes_its_operators_opaque() {
    let env = env_with_rules("opaque_families").await;
    env.superuser_sql(
        "CREATE FUNCTION box_cmp_logged(a box, b box) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('box_cmp_logged');
               RETURN CASE WHEN area(a) < area(b) THEN -1 WHEN area(a) > area(b) THEN 1 ELSE 0 END;
         END $$;
         CREATE OPERATOR CLASS box_area_ops FOR TYPE box USING btree AS
             OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,
             FUNCTION 1 box_cmp_logged(box, box);
         CREATE FUNCTION hash_logged(v int, seed bigint) RETURNS bigint LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('hash_logged'); RETURN v; END $$;
         CREATE OPERATOR CLASS int_logged_ops FOR TYPE int4 USING hash AS
             OPERATOR 1 =, FUNCTION 1 hashint4(int4), FUNCTION 2 hash_logged(int, bigint);
         CREATE TABLE spread (id int) PARTITION BY HASH (id int_logged_ops);
         CREATE TABLE spread_0 PARTITION OF spread FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE spread_1 PARTITION OF spread FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE FUNCTION not_contains_logged(a jsonb, b jsonb) RETURNS bool LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('not_contains_logged'); RETURN NOT a @> b; END $$;
         CREATE OPERATOR !@> (LEFTARG = jsonb, RIGHTARG = jsonb,
             FUNCTION = not_contains_logged, NEGATOR = @>);
         CREATE TABLE docs (id int, body jsonb);
         INSERT INTO docs VALUES (1, '{\"a\": 1}'), (2, '{}');
         GRANT ALL ON docs TO PUBLIC;",
    );
    let spread = env.superuser_sql("SELECT 'spread'::regclass::oid");
    let client = admin_session(&env).await;
    let ordered = "SELECT * FROM (VALUES (box(point(0,0), point(1,1))), (box(point(0,0), point(2,2)))) v (b) ORDER BY b USING <";
    let error = client.simple_query(ordered).await.expect_err(ordered);
    assert_opaque(&error, ordered, "operator <");
    let hashed = format!(
        "SELECT satisfies_hash_partition({}, 2, 0, 6)",
        spread.trim()
    );
    let error = client.simple_query(&hashed).await.expect_err(&hashed);
    assert_opaque(&error, &hashed, "opaque_statement");
    // The planner turns `NOT (a @> b)` into the negator the database gave `@>` (a third
    // review ran its function so on every row).
    let negated = "SELECT id FROM docs WHERE NOT (body @> '{\"a\": 1}')";
    let error = client.simple_query(negated).await.expect_err(negated);
    assert_opaque(&error, negated, "operator @>");
    let ran = env.superuser_sql("SELECT count(*) FROM ran");
    assert_eq!(ran.trim(), "0", "none of the database's functions ran");
    // Operators no family of the database's holds still run.
    let sum = client.simple_query("SELECT 1 + 1").await.expect("1 + 1");
    assert!(!sum.is_empty());
}

/// An implicit cast of the database's own between built-in types runs wherever a value of
/// one type meets a function of the other (`host(7)`), with no type written: with rules,
/// nothing may run on such a database.
#[tokio::test(flavor = "multi_thread")]
async fn an_implicit_cast_of_the_databases_own_between_built_in_types_refuses_every_statement() {
    let env = env_with_rules("opaque_implicit_cast").await;
    env.superuser_sql(
        "CREATE FUNCTION int_to_inet_logged(x int4) RETURNS inet LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('int_to_inet_logged'); RETURN '10.0.0.1'::inet; END $$;
         CREATE CAST (int4 AS inet) WITH FUNCTION int_to_inet_logged(int4) AS IMPLICIT;",
    );
    let client = admin_session(&env).await;
    for sql in ["SELECT host(7)", "SELECT 1"] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_opaque(&error, sql, "a cast of its own");
    }
    let ran = env.superuser_sql("SELECT count(*) FROM ran");
    assert_eq!(ran.trim(), "0", "the cast's function did not run");
    // An explicit one runs inside built-ins' SQL bodies (`textanycat` casts to text), and
    // an extension's member can be made its function: both count (a fifth review's).
    let env = env_with_rules("opaque_explicit_cast").await;
    env.superuser_sql(
        "CREATE FUNCTION int_to_text_logged(x int4) RETURNS text LANGUAGE sql AS
             'INSERT INTO ran VALUES (''int_to_text_logged'') RETURNING x::numeric::text';
         ALTER EXTENSION plpgsql ADD FUNCTION int_to_text_logged(int4);
         CREATE CAST (int4 AS text) WITH FUNCTION int_to_text_logged(int4);",
    );
    let client = admin_session(&env).await;
    let sql = "SELECT 'a' || 5";
    let error = client.simple_query(sql).await.expect_err(sql);
    assert_opaque(&error, sql, "a cast of its own");
    let ran = env.superuser_sql("SELECT count(*) FROM ran");
    assert_eq!(ran.trim(), "0", "the cast's function did not run");
}

/// A built-in type given an I/O function of the database's own runs it on any binary result
/// of the type (`COPY … (FORMAT binary)`, a driver's binary results), no type written: with
/// rules, nothing may run on such a database.
#[tokio::test(flavor = "multi_thread")]
async fn a_built_in_type_with_an_io_function_of_the_databases_own_refuses_every_statement() {
    let env = env_with_rules("opaque_type_io").await;
    env.superuser_sql(
        "CREATE FUNCTION xid8_send_logged(v xid8) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN RETURN pg_catalog.xid8send(v); END $$;
         ALTER TYPE pg_catalog.xid8 SET (SEND = xid8_send_logged);",
    );
    let client = admin_session(&env).await;
    let sql = "COPY (SELECT pg_snapshot_xmin(pg_current_snapshot())) TO STDOUT (FORMAT binary)";
    let error = client.simple_query(sql).await.expect_err(sql);
    assert_opaque(&error, sql, "built-in type");
}

/// A range type's constructors are made in the database's schema, but they are built-in
/// code: a table of a plain range type is read (a third review found every such table
/// refused). A range whose subtype difference or subtype operator class is the database's
/// own still runs that function.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_range_type_runs_no_function_of_the_databases_own() {
    let env = env_with_rules("opaque_ranges").await;
    env.superuser_sql(
        "CREATE TYPE floatrange AS RANGE (subtype = float8);
         CREATE TABLE plain_ranges (id int, r floatrange);
         INSERT INTO plain_ranges VALUES (1, '[1,2)');
         CREATE FUNCTION diff_logged(a float8, b float8) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN RETURN a - b; END $$;
         CREATE TYPE diffrange AS RANGE (subtype = float8, subtype_diff = diff_logged);
         CREATE TABLE diff_ranges (r diffrange);
         CREATE FUNCTION float_cmp_logged(a float8, b float8) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN RETURN btfloat8cmp(a, b); END $$;
         CREATE OPERATOR CLASS float_logged_ops FOR TYPE float8 USING btree AS
             OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,
             FUNCTION 1 float_cmp_logged(float8, float8);
         CREATE TYPE opclassrange AS RANGE (subtype = float8, subtype_opclass = float_logged_ops);
         CREATE TABLE opclass_ranges (r opclassrange);
         GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;",
    );
    let client = admin_session(&env).await;
    for sql in [
        "SELECT * FROM plain_ranges",
        "SELECT '[1,2)'::floatrange",
        "INSERT INTO plain_ranges VALUES (2, '[2,3)')",
    ] {
        client.simple_query(sql).await.expect(sql);
    }
    for (sql, function) in [
        ("SELECT * FROM diff_ranges", "diff_logged"),
        ("SELECT * FROM opclass_ranges", "float_cmp_logged"),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_opaque(&error, sql, function);
    }
}

/// A function of the database's own added to an extension (`ALTER EXTENSION plpgsql ADD
/// FUNCTION …`) is still its own: an extension's member is trusted only when it is not
/// written in a procedural language (a third review hid a built-in's overload and a
/// domain's check so).
#[tokio::test(flavor = "multi_thread")]
async fn a_procedural_function_added_to_an_extension_is_still_the_databases_own() {
    let env = env_with_rules("opaque_extension_members").await;
    env.superuser_sql(
        "CREATE FUNCTION public.lower(v int) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('lower'); RETURN v::text; END $$;
         ALTER EXTENSION plpgsql ADD FUNCTION public.lower(int);
         CREATE FUNCTION positive_logged(v int) RETURNS bool LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('positive_logged'); RETURN v > 0; END $$;
         ALTER EXTENSION plpgsql ADD FUNCTION positive_logged(int);
         CREATE DOMAIN positive AS int CHECK (positive_logged(VALUE));
         CREATE TABLE counted (n positive);
         GRANT ALL ON counted TO PUBLIC;
         CREATE FUNCTION public.upper(v int) RETURNS text LANGUAGE sql AS
             'INSERT INTO ran VALUES (''upper'') RETURNING v::text';
         ALTER EXTENSION plpgsql ADD FUNCTION public.upper(int);",
    );
    let client = admin_session(&env).await;
    for (sql, function) in [
        ("SELECT lower(5)", "lower"),
        // In SQL, under a built-in's name, with no type of the extension's (a fifth review).
        ("SELECT upper(3)", "upper"),
        ("INSERT INTO counted VALUES (7)", "positive"),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_opaque(&error, sql, function);
    }
    let ran = env.superuser_sql("SELECT count(*) FROM ran");
    assert_eq!(ran.trim(), "0", "none of the database's functions ran");
    // Built-ins the database has no overload of still run (one with an overload does not:
    // lockbox cannot tell which the server picks).
    client
        .simple_query("SELECT initcap('a')")
        .await
        .expect("initcap(text)");
}

/// Objects PostgreSQL made keep their OIDs when the database's superuser replaces or changes
/// them, so their code would pass for built in. A fourth review ran its own function through
/// each of these; a database with any of them refuses every statement under rules.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_changed_what_postgresql_made_refuses_every_statement() {
    const LOGGED: &str = "CREATE FUNCTION logged() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO ran VALUES ('logged'); RETURN 1; END $$;";
    for (name, change, statement) in [
        (
            "changed_plpgsql",
            "CREATE OR REPLACE FUNCTION pg_catalog.anytextcat(anynonarray, text) RETURNS text
                 LANGUAGE plpgsql STABLE STRICT AS $$ BEGIN PERFORM logged(); RETURN $1::text || $2; END $$;",
            "SELECT 1 || 'x'",
        ),
        (
            "changed_sql",
            "CREATE OR REPLACE FUNCTION pg_catalog.lpad(text, integer) RETURNS text
                 LANGUAGE sql IMMUTABLE STRICT AS 'SELECT pg_catalog.lpad($1, $2 + logged() - 1, '' '')';",
            "SELECT lpad('a', 3)",
        ),
        (
            "changed_aggregate",
            "CREATE FUNCTION logged_max(int4, int4) RETURNS int4 LANGUAGE plpgsql AS $$
                 BEGIN PERFORM logged(); RETURN greatest($1, $2); END $$;
             CREATE OR REPLACE AGGREGATE pg_catalog.max(int4) (SFUNC = logged_max, STYPE = int4);",
            "SELECT max(x) FROM generate_series(1, 3) AS x",
        ),
        (
            "changed_view",
            "CREATE OR REPLACE VIEW pg_catalog.pg_tables AS SELECT n.nspname AS schemaname,
                 c.relname AS tablename, pg_get_userbyid(c.relowner) AS tableowner,
                 t.spcname AS tablespace, c.relhasindex AS hasindexes, c.relhasrules AS hasrules,
                 c.relhastriggers AS hastriggers, c.relrowsecurity AS rowsecurity, logged() AS probe
               FROM pg_class c LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
              WHERE c.relkind = ANY (ARRAY['r'::\"char\", 'p'::\"char\"]);",
            "SELECT tablename FROM pg_tables LIMIT 1",
        ),
        (
            "changed_domain",
            "ALTER DOMAIN information_schema.cardinal_number
                 ADD CONSTRAINT logged CHECK (logged() = 1) NOT VALID;",
            "SELECT column_name FROM information_schema.columns LIMIT 1",
        ),
        (
            "changed_atomic_body",
            "CREATE FUNCTION logged_step(numeric, numeric) RETURNS numeric LANGUAGE plpgsql AS $$
                 BEGIN PERFORM logged(); RETURN $2; END $$;
             CREATE AGGREGATE logged_agg(numeric) (SFUNC = logged_step, STYPE = numeric);
             CREATE OR REPLACE FUNCTION pg_catalog.round(numeric) RETURNS numeric LANGUAGE sql
                 IMMUTABLE STRICT BEGIN ATOMIC
                 SELECT pg_catalog.round($1, 0) + 0 * logged_agg($1) OVER (); END;",
            "SELECT round(2.6)",
        ),
        (
            "changed_text_body",
            "CREATE OR REPLACE FUNCTION pg_catalog.bit_length(text) RETURNS integer LANGUAGE sql
                 IMMUTABLE STRICT BEGIN ATOMIC
                 SELECT pg_catalog.octet_length($1) * 8 + 0 * pg_catalog.length(
                     pg_catalog.query_to_xml('select logged()', false, false, '')::text); END;",
            "SELECT bit_length('ab'::text)",
        ),
        (
            "changed_catalog_schema",
            "CREATE VIEW information_schema.run_view AS SELECT * FROM ran;
             GRANT SELECT ON information_schema.run_view TO PUBLIC;",
            "SELECT * FROM information_schema.run_view",
        ),
    ] {
        let env = env_with_rules(name).await;
        env.superuser_sql(LOGGED);
        env.superuser_sql(change);
        let client = admin_session(&env).await;
        let error = client.simple_query(statement).await.expect_err(statement);
        assert_opaque(&error, statement, "changed objects PostgreSQL made");
        let ran = env.superuser_sql("SELECT count(*) FROM ran");
        assert_eq!(ran.trim(), "0", "{name}: the database's function did not run");
    }
    // Privileges changed on a built-in SQL function change its row, not what it runs.
    let env = env_with_rules("changed_privileges").await;
    env.superuser_sql(LOGGED);
    env.superuser_sql(
        "REVOKE EXECUTE ON FUNCTION pg_catalog.lpad(text, integer) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION pg_catalog.lpad(text, integer) TO PUBLIC;",
    );
    let client = admin_session(&env).await;
    let padded = client.simple_query("SELECT lpad('a', 3)").await;
    assert!(padded.is_ok(), "{padded:?}");
}
