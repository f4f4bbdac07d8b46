//! Types that run the database's code. A cast to a domain runs the domain's checks, and a
//! cast the database defines runs its function: `SELECT 7::posint` calls whatever posint's
//! check calls, naming no function. An attack review ran a function that took an advisory
//! lock that way from a read session. With rules in force, a statement naming such a type
//! is refused as opaque, like a call of the function, and so is one naming a relation
//! holding such a type (a second review ran them through a column's implicit cast, a cast
//! to JSON, and a sort by the type's operator class).

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, execute, sync};
use crate::harness::{db_error, errors_in, message, Env, Options, Raw};

async fn env_with_typed_code(name: &str) -> Env {
    let env = Env::with(
        name,
        Options {
            guardrails: "deny_delete_without_where = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE FUNCTION public.probe(int) RETURNS bool LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_lock(4242); RETURN true; END'; \
         CREATE DOMAIN public.posint AS int CHECK (public.probe(VALUE)); \
         CREATE DOMAIN public.posint_too AS public.posint; \
         CREATE DOMAIN public.positive AS int CHECK (VALUE > 0); \
         CREATE TYPE public.mood AS ENUM ('calm', 'busy'); \
         CREATE FUNCTION public.to_mood(int) RETURNS public.mood LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_lock(4243); RETURN ''calm''; END'; \
         CREATE CAST (int AS public.mood) WITH FUNCTION public.to_mood(int); \
         CREATE TYPE public.pair AS (a public.posint, b int); \
         CREATE TYPE public.tone AS ENUM ('low', 'high'); \
         CREATE TABLE public.tones (t public.tone); \
         INSERT INTO public.tones VALUES ('low'), ('high'); \
         CREATE FUNCTION public.tone_text(public.tone) RETURNS text LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_lock(4244); RETURN ''t''; END'; \
         CREATE CAST (public.tone AS text) WITH FUNCTION public.tone_text(public.tone) AS IMPLICIT; \
         CREATE FUNCTION public.tone_json(public.tone) RETURNS json LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_lock(4245); RETURN ''1''; END'; \
         CREATE CAST (public.tone AS json) WITH FUNCTION public.tone_json(public.tone); \
         CREATE TABLE public.boxes (id int); \
         CREATE FUNCTION public.box_text(public.boxes) RETURNS text LANGUAGE plpgsql \
           AS 'BEGIN PERFORM pg_advisory_lock(4246); RETURN ''b''; END'; \
         CREATE CAST (public.boxes AS text) WITH FUNCTION public.box_text(public.boxes); \
         CREATE TYPE public.level AS ENUM ('a', 'b'); \
         CREATE FUNCTION public.level_cmp(public.level, public.level) RETURNS int \
           LANGUAGE plpgsql IMMUTABLE \
           AS 'BEGIN PERFORM pg_advisory_lock(4247); RETURN enum_cmp($1, $2); END'; \
         CREATE FUNCTION public.level_lt(public.level, public.level) RETURNS bool \
           LANGUAGE sql IMMUTABLE AS 'SELECT enum_lt($1, $2)'; \
         CREATE FUNCTION public.level_eq(public.level, public.level) RETURNS bool \
           LANGUAGE sql IMMUTABLE AS 'SELECT enum_eq($1, $2)'; \
         CREATE FUNCTION public.level_gt(public.level, public.level) RETURNS bool \
           LANGUAGE sql IMMUTABLE AS 'SELECT enum_gt($1, $2)'; \
         CREATE OPERATOR public.<< (leftarg = public.level, rightarg = public.level, \
           function = public.level_lt); \
         CREATE OPERATOR public.== (leftarg = public.level, rightarg = public.level, \
           function = public.level_eq); \
         CREATE OPERATOR public.>> (leftarg = public.level, rightarg = public.level, \
           function = public.level_gt); \
         CREATE OPERATOR CLASS public.level_ops DEFAULT FOR TYPE public.level USING btree AS \
           OPERATOR 1 public.<<, OPERATOR 3 public.==, OPERATOR 5 public.>>, \
           FUNCTION 1 public.level_cmp(public.level, public.level); \
         CREATE TYPE public.ranked AS (l public.level, n int); \
         CREATE TABLE public.levels (r public.ranked); \
         CREATE TABLE public.leveled (l public.level); \
         INSERT INTO public.leveled VALUES ('b'), ('a')",
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_that_run_the_databases_functions_are_opaque() {
    let env = env_with_typed_code("type_functions_casts").await;
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for sql in [
        "SELECT 7::posint",
        "SELECT CAST(8 AS public.posint)",
        "SELECT '3'::posint",
        "SELECT ARRAY[1]::posint[]",
        "SELECT 4::posint_too",
        "SELECT 9::mood",
        "SELECT ROW(1, 2)::pair",
        "SELECT query_to_xml('select 5::posint', true, true, '')",
        // Named nowhere: a column's type converted by the database's cast, implicitly or
        // to JSON; a row converted by one; a sort by the type's default operator class.
        "SELECT t::text FROM tones",
        "SELECT upper(t) FROM tones",
        "SELECT row_to_json(x) FROM tones x",
        "SELECT b::text FROM boxes b",
        "SELECT l FROM leveled ORDER BY l",
        "SELECT DISTINCT l FROM leveled",
        "SELECT r FROM levels ORDER BY r",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let message = db_error(&err).1;
        assert!(message.contains("opaque_statement"), "{sql}: {message}");
    }
    let locks = env.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'");
    assert_eq!(
        locks.trim(),
        "0",
        "no refused statement ran its type's function"
    );
    // Casts to built-in types, and to a domain whose check calls only built-ins, still run.
    for sql in ["SELECT 1::int", "SELECT 5::positive", "SELECT 'calm'::text"] {
        client.batch_execute(sql).await.unwrap_or_else(|e| {
            panic!("{sql}: {:?}", db_error(&e));
        });
    }
}

/// A Parse gives its parameters types by OID, naming none in its text: a third review ran
/// the cast and the check that way (`SELECT upper($1)` with `$1` a tone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_given_such_a_type_is_opaque_too() {
    let env = env_with_typed_code("type_functions_parameters").await;
    let oid_of = |name: &str| -> u32 {
        let oid = env.superuser_sql(&format!("SELECT '{name}'::regtype::oid"));
        oid.trim().parse().expect("an OID")
    };
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let typed_parse = |sql: &str, oid: u32| {
        let body = [
            b"\0".as_slice(),
            sql.as_bytes(),
            b"\0",
            &1i16.to_be_bytes(),
            &oid.to_be_bytes(),
        ]
        .concat();
        message(b'P', &body)
    };
    for (sql, type_name) in [
        ("SELECT upper($1)", "public.tone"),
        ("SELECT $1", "public.posint"),
        ("SELECT $1 IS NULL", "public.level"),
    ] {
        raw.send(
            &[
                typed_parse(sql, oid_of(type_name)),
                bind("", ""),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        let answer = raw.read_until_ready().await;
        let errors = errors_in(&answer);
        assert!(
            errors
                .first()
                .is_some_and(|(_, m)| m.contains("opaque_statement")),
            "{sql} with a {type_name}: {errors:?}"
        );
    }
    // A built-in parameter type is still parsed.
    raw.send(&[typed_parse("SELECT $1", 23), sync()].concat())
        .await;
    let answer = raw.read_until_ready().await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    let locks = env.superuser_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'");
    assert_eq!(locks.trim(), "0");
}
