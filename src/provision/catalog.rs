//! The database's own code and the links between its relations, read from its catalog on
//! a service connection: what the guard's rules and reach checks need to know of objects
//! lockbox did not make (`guard::reach`).

use super::roles::{connect, failed};
use super::ProvisionError;
use crate::config::Database;
use crate::guard::{LinkKind, RelationLink};

/// The database's own code and links, on one service connection: the names of its
/// functions that are not built in (made after initdb, OID 16384 or more, in any schema),
/// lowercased as PostgreSQL stores unquoted names, and how its relations reach each other.
pub(super) async fn database_code(
    db: &Database,
) -> Result<(Vec<String>, Vec<RelationLink>), ProvisionError> {
    let client = connect(db).await?;
    // The catalog walks below are cheap but estimated dear: with JIT on, PostgreSQL spent
    // 2.5 s compiling one that then ran in 0.1 s, on every login (there is no `jit` before
    // PostgreSQL 11).
    client
        .query(
            "SELECT pg_catalog.set_config('jit', 'off', false) \
             WHERE pg_catalog.current_setting('server_version_num')::int >= 110000",
            &[],
        )
        .await
        .map_err(failed(db, "turning JIT off for the catalog's reading"))?;
    let rows = client
        .query(
            // Built in means made by initdb: an OID below 16384 (FirstNormalObjectId), in
            // whatever schema, since a superuser can create functions and operators in
            // pg_catalog too (a review's `pg_catalog.upper(integer)` read an off-limits
            // table from `SELECT upper(3)`).
            // Operators too, named `operator <symbol>`, that no extension installed: an
            // unqualified operator of a catalog read can resolve to one (`c @@ 1` with a
            // `public.@@(pg_class, int)`); extensions' own (PostGIS, citext) are left out,
            // as they define common symbols for their own types.
            // An extension's overload of a built-in's name (citext's `max(citext)`,
            // `replace(citext, …)`) is left out: it is the built-in for the extension's type,
            // and counting it would refuse every `max(id)` where citext is installed. Only
            // one written in C, or taking a type of the same extension, though: an SQL
            // `upper(int)` added to `plpgsql` ran a fifth review's code from `upper(3)`. Its
            // other functions (`crosstab`, `dblink`) stay: what they run is out of sight.
            // A btree or hash operator family of the database's own with a support function
            // of its own makes its operators the database's, built-in ones too: the planner
            // sorts and hashes with any family that holds the operator (`ORDER BY b USING
            // <` ran a review's comparison function for `box`; a merge or hash join may too).
            // A cast of the database's own between built-in types may run where no type is
            // written: implicitly (`host(7)` ran a review's int4 → inet cast function), or
            // explicitly inside a built-in's SQL body (`'a' || 5` runs `textanycat`, which
            // casts to text), whoever made its function (an extension's member can be
            // added): noted as one entry (`$1`), which refuses every statement
            // (`guard::IMPLICIT_CAST`), and
            // so is a built-in type given an I/O function of the database's own (`$2`: a
            // review's `ALTER TYPE xid8 SET (SEND = …)` ran on binary results).
            // A built-in operator whose negator or commutator is the database's is the
            // database's too: the planner turns `NOT (a @> b)` into its negator.
            // A range type's constructors are made in the database's schema with OIDs of
            // its own, but are built-in code (`LANGUAGE internal`): not the database's.
            // Objects PostgreSQL made that the database changed (`$3`) keep their OIDs below
            // 16384, so what they run would pass for built in: a function replaced by one in
            // a procedural language, given settings, `SECURITY DEFINER` or a support function,
            // or whose body now refers to the database's objects (an SQL body of initdb's
            // bootstrap has `xmin` 1 until its row changes — a GRANT changes it too — so a
            // changed one's words are looked up among the database's own names, and its text
            // for the database's operators, but `_pg_expandarray`'s, which initdb writes
            // outside bootstrap with operators it qualifies with pg_catalog); an aggregate given the database's functions; a view of
            // theirs replaced or given a rule; a built-in domain given a check or default; a
            // relation of the database's own in `pg_catalog` or `information_schema`, which
            // the links leave out. A body's dependencies (`pg_depend`) on the database's
            // objects count, and so do calls of the built-ins followed in stored code (`$4`:
            // `query_to_xml('select f()', …)` in a fifth review's `BEGIN ATOMIC` body). A
            // fourth review ran its code through each of these. Any one refuses
            // every statement (`guard::BUILT_IN_CHANGED`).
            // An extension's member counts as the extension's only if it is not written in
            // a procedural language: `ALTER EXTENSION plpgsql ADD FUNCTION` made a review's
            // own functions look like an extension's, everywhere below too.
            "SELECT p.proname::text, bool_and(EXISTS (SELECT FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q JOIN pg_catalog.pg_language l ON l.oid = q.prolang WHERE q.oid = d.objid AND l.lanispl) \
               AND (p.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname IN ('c', 'internal')) \
                 OR EXISTS (SELECT FROM pg_catalog.unnest(p.proargtypes::oid[]) AS a (typ) \
                   JOIN pg_catalog.pg_depend td ON td.classid = 'pg_catalog.pg_type'::regclass AND td.objid = a.typ \
                     AND td.deptype = 'e' AND td.refobjid = d.refobjid)))) \
             FROM pg_catalog.pg_proc p \
             WHERE p.oid >= 16384 AND NOT (p.prolang = 12 AND p.prosrc IN ('range_constructor2', 'range_constructor3', 'multirange_constructor0', 'multirange_constructor1', 'multirange_constructor2')) \
             GROUP BY p.proname \
             UNION SELECT DISTINCT pg_catalog.concat('operator ', o.oprname), false FROM pg_catalog.pg_operator o \
             WHERE o.oid >= 16384 \
             AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_operator'::regclass AND d.objid = o.oid AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_operator q JOIN pg_catalog.pg_proc f ON f.oid = q.oprcode JOIN pg_catalog.pg_language l ON l.oid = f.prolang WHERE q.oid = d.objid AND l.lanispl)) \
             UNION SELECT DISTINCT pg_catalog.concat('operator ', o.oprname), false \
             FROM pg_catalog.pg_amop a JOIN pg_catalog.pg_operator o ON o.oid = a.amopopr \
             JOIN pg_catalog.pg_opfamily f ON f.oid = a.amopfamily \
             JOIN pg_catalog.pg_am m ON m.oid = f.opfmethod AND m.amname IN ('btree', 'hash') \
             WHERE EXISTS (SELECT FROM pg_catalog.pg_amproc s WHERE s.amprocfamily = f.oid \
               AND s.amproc >= 16384 AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                 WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = s.amproc AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q JOIN pg_catalog.pg_language l ON l.oid = q.prolang WHERE q.oid = d.objid AND l.lanispl))) \
             UNION SELECT $1::text, false FROM pg_catalog.pg_cast c \
             WHERE c.castfunc >= 16384 AND c.castsource < 16384 AND c.casttarget < 16384 \
             UNION SELECT DISTINCT pg_catalog.concat('operator ', o.oprname), false \
             FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_operator n ON n.oid IN (o.oprnegate, o.oprcom) \
             WHERE n.oid >= 16384 AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_operator'::regclass AND d.objid = n.oid AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_operator q JOIN pg_catalog.pg_proc f ON f.oid = q.oprcode JOIN pg_catalog.pg_language l ON l.oid = f.prolang WHERE q.oid = d.objid AND l.lanispl)) \
             UNION SELECT $2::text, false FROM pg_catalog.pg_type t, \
               LATERAL (VALUES (t.typinput), (t.typoutput), (t.typreceive), (t.typsend), (t.typmodin), \
                               (t.typmodout), (t.typanalyze), (t.typsubscript)) AS x (fn) \
             WHERE t.oid < 16384 AND x.fn >= 16384 AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
               WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = x.fn AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q JOIN pg_catalog.pg_language l ON l.oid = q.prolang WHERE q.oid = d.objid AND l.lanispl)) \
             UNION SELECT $3::text, false WHERE EXISTS (SELECT FROM pg_catalog.pg_proc p \
               JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE p.oid < 16384 \
               AND (l.lanispl OR p.proconfig IS NOT NULL OR p.prosecdef OR p.prosupport::oid >= 16384 \
                 OR EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
                   AND d.objid = p.oid AND d.refobjid >= 16384) \
                 OR EXISTS (SELECT FROM pg_catalog.regexp_matches(p.prosqlbody::text, ':(?:func|opfunc)id ([0-9]+)', 'g') AS m \
                   WHERE m[1]::oid IN (SELECT f.oid FROM pg_catalog.pg_proc f WHERE f.oid < 16384 AND f.proname = ANY($4::text[]))) \
                 OR EXISTS (SELECT FROM pg_catalog.regexp_matches(p.prosqlbody::text, ':(?:funcid|opfuncid|opno|relid|aggfnoid|consttype|resulttype|typeid) ([0-9]+)', 'g') AS m WHERE m[1]::oid >= 16384) \
                 OR (l.lanname = 'sql' AND p.prosqlbody IS NULL AND p.xmin <> '1'::xid \
                     AND (p.prosrc ~* 'u&' \
                       OR EXISTS (SELECT FROM pg_catalog.regexp_matches(p.prosrc, '[A-Za-z_][A-Za-z0-9_$]*', 'g') AS w \
                         WHERE pg_catalog.lower(w[1]) IN (SELECT pg_catalog.lower(proname) FROM pg_catalog.pg_proc WHERE oid >= 16384 \
                             UNION ALL SELECT pg_catalog.lower(relname) FROM pg_catalog.pg_class WHERE oid >= 16384 \
                             UNION ALL SELECT pg_catalog.lower(typname) FROM pg_catalog.pg_type WHERE oid >= 16384 \
                             UNION ALL SELECT pg_catalog.lower(nspname) FROM pg_catalog.pg_namespace \
                               WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
                             UNION ALL SELECT pg_catalog.unnest($4::text[])) \
                           AND NOT (p.proname = '_pg_expandarray' AND pg_catalog.lower(w[1]) IN ('select', 's', \
                             'operator', 'pg_catalog', 'array_lower', 'array_upper', 'generate_series', 'from', 'as', 'g'))) \
                       OR (p.proname <> '_pg_expandarray' AND EXISTS (SELECT FROM pg_catalog.pg_operator o \
                         WHERE o.oid >= 16384 AND pg_catalog.strpos(p.prosrc, o.oprname) > 0)))))) \
             OR EXISTS (SELECT FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid::oid < 16384 \
               AND (a.aggtransfn::oid >= 16384 OR a.aggfinalfn::oid >= 16384 OR a.aggcombinefn::oid >= 16384 \
                 OR a.aggserialfn::oid >= 16384 OR a.aggdeserialfn::oid >= 16384 OR a.aggmtransfn::oid >= 16384 \
                 OR a.aggminvtransfn::oid >= 16384 OR a.aggmfinalfn::oid >= 16384 OR a.aggsortop >= 16384)) \
             OR EXISTS (SELECT FROM pg_catalog.pg_rewrite r WHERE r.ev_class < 16384 \
               AND (r.oid >= 16384 OR EXISTS (SELECT FROM pg_catalog.regexp_matches(pg_catalog.concat(r.ev_qual::text, r.ev_action::text), ':(?:funcid|opfuncid|opno|relid|aggfnoid|consttype|resulttype|typeid) ([0-9]+)', 'g') AS m WHERE m[1]::oid >= 16384))) \
             OR EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.oid >= 16384 \
               AND ((k.contypid <> 0 AND k.contypid < 16384) OR (k.conrelid <> 0 AND k.conrelid < 16384))) \
             OR EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.oid < 16384 AND EXISTS (SELECT FROM pg_catalog.regexp_matches(t.typdefaultbin::text, ':(?:funcid|opfuncid|opno|relid|aggfnoid|consttype|resulttype|typeid) ([0-9]+)', 'g') AS m WHERE m[1]::oid >= 16384)) \
             OR EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid >= 16384 \
               AND c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace))",
            &[
                &crate::guard::IMPLICIT_CAST,
                &crate::guard::BUILT_IN_TYPE_IO,
                &crate::guard::BUILT_IN_CHANGED,
                &crate::guard::followed_in_stored_code(),
            ],
        )
        .await
        .map_err(failed(db, "listing the database's functions"))?;
    let mut functions = Vec::with_capacity(rows.len());
    for row in &rows {
        let read = |row: &tokio_postgres::Row| -> Result<(String, bool), tokio_postgres::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?))
        };
        let (name, extensions_only) =
            read(row).map_err(failed(db, "listing the database's functions"))?;
        if !(extensions_only && crate::guard::is_builtin_name(&name)) {
            functions.push(name);
        }
    }
    let text_sql = crate::guard::followed_in_stored_code();
    let listing_types = "listing the types whose casts or checks run the database's functions";
    let typed = client
        .query(TYPES_RUNNING_FUNCTIONS, &[&text_sql])
        .await
        .map_err(failed(db, listing_types))?;
    // Types are named like functions; the relations that hold them link to what they run.
    let mut type_links = Vec::new();
    for row in typed {
        let kind: String = row.try_get(0).map_err(failed(db, listing_types))?;
        if kind == "ty" {
            let name: String = row.try_get(2).map_err(failed(db, listing_types))?;
            let oid: i64 = row.try_get(5).map_err(failed(db, listing_types))?;
            functions.push(crate::guard::type_entry(&name));
            functions.push(crate::guard::type_oid_entry(oid));
        } else {
            type_links.push(row);
        }
    }
    let mut rows = client.query(RELATION_LINKS, &[]).await.map_err(failed(
        db,
        "listing how the database's relations reach each other",
    ))?;
    rows.extend(type_links);
    rows.extend(
        client
            .query(FUNCTION_LINKS, &[&text_sql])
            .await
            .map_err(failed(
                db,
                "listing the functions the database's relations run",
            ))?,
    );
    let links = rows
        .iter()
        .map(|row| {
            let kind: String = row.try_get(0)?;
            let name = |schema: usize, relation: usize| -> Result<String, tokio_postgres::Error> {
                let (schema, name) = (
                    row.try_get::<_, String>(schema)?,
                    row.try_get::<_, String>(relation)?,
                );
                Ok(match kind.starts_with('c') {
                    true if relation == 4 => RelationLink::function(&schema, &name),
                    _ if kind == "ce" => String::new(),
                    _ => format!("{schema}.{name}").to_lowercase(),
                })
            };
            Ok(RelationLink {
                kind: match kind.as_str() {
                    "i" => LinkKind::Inherits,
                    "r" | "cr" => LinkKind::Reads,
                    "k" => LinkKind::Cascades,
                    "t" => LinkKind::Truncates,
                    "f" => LinkKind::References,
                    _ => LinkKind::OnWrite,
                },
                from: name(1, 2)?,
                to: name(3, 4)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(failed(
            db,
            "listing how the database's relations reach each other",
        ))?;
    Ok((functions, links))
}

/// The functions each relation runs (kind, the relation's schema and name, the function's):
/// `cw` on writes (triggers and their WHEN, defaults and generated columns, write rules,
/// its columns' types — domains of domains, arrays, composites — with their checks and
/// defaults), `cr` on any use (everything else: a view's query, policies, and what the
/// planner may evaluate while planning a read — checks, index expressions and predicates,
/// statistics expressions, a partitioned table's key). It follows the catalog's
/// dependencies from the relation's parts, through operators and operator classes, until a
/// function: one of the database's own (not built in; the walk does not enter extensions),
/// any function a view, policy or trigger calls by name (an extension's `crosstab` or
/// `check_foreign_key` runs SQL out of sight too), or a built-in that runs SQL given as text
/// or that the guard judges by its arguments or does not take as a plain read (`$1`,
/// `guard::followed_in_stored_code`: `set_config` in a rule opened an off-limits schema to a
/// review; those are pinned, so not in `pg_depend`: found in the parts' expression trees,
/// as a call or as an operator's function, a rule's WHERE included). `nextval` and `setval`
/// count only where their sequence is computed (`nextval(c.oid::regclass)` in a view
/// advanced every sequence, an off-limits one too, for a review): a serial column's
/// default names its own sequence as a constant, which the links follow.
const FUNCTION_LINKS: &str = "\
    WITH RECURSIVE \
    ext AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e' \
       AND NOT (classid = 'pg_catalog.pg_proc'::regclass AND objid IN (SELECT q.oid FROM pg_catalog.pg_proc q \
         JOIN pg_catalog.pg_language l ON l.oid = q.prolang WHERE l.lanispl))), \
    stored (rel, on_read, tree) AS ( \
      SELECT * FROM ( \
          SELECT ev_class, ev_type = '1', concat(ev_qual::text, ev_action::text) FROM pg_catalog.pg_rewrite \
          UNION ALL SELECT polrelid, true, concat(polqual::text, polwithcheck::text) FROM pg_catalog.pg_policy \
          UNION ALL SELECT adrelid, false, adbin::text FROM pg_catalog.pg_attrdef \
          UNION ALL SELECT conrelid, false, conbin::text FROM pg_catalog.pg_constraint WHERE conrelid <> 0 \
          UNION ALL SELECT tgrelid, false, tgqual::text FROM pg_catalog.pg_trigger \
          UNION ALL SELECT indrelid, false, concat(indexprs::text, indpred::text) FROM pg_catalog.pg_index \
          UNION ALL SELECT stxrelid, false, stxexprs::text FROM pg_catalog.pg_statistic_ext \
        ) AS t (rel, on_read, tree) WHERE t.tree IS NOT NULL), \
    part (rel, on_read, classid, objid) AS ( \
      SELECT c.oid, c.relkind = 'p', 'pg_catalog.pg_class'::regclass, c.oid FROM pg_catalog.pg_class c \
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
      UNION SELECT d.refobjid, \
             NOT (d.classid IN ('pg_catalog.pg_trigger'::regclass, 'pg_catalog.pg_attrdef'::regclass) \
                  OR (d.classid = 'pg_catalog.pg_rewrite'::regclass \
                      AND (SELECT w.ev_type <> '1' FROM pg_catalog.pg_rewrite w WHERE w.oid = d.objid))), \
             d.classid, d.objid \
        FROM pg_catalog.pg_depend d \
       WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
         AND d.classid <> 'pg_catalog.pg_type'::regclass), \
    edge (classid, objid, to_class, to_obj) AS ( \
      SELECT classid, objid, refclassid, refobjid FROM pg_catalog.pg_depend \
       WHERE deptype IN ('n', 'a', 'i') AND refclassid IN ('pg_catalog.pg_type'::regclass, \
             'pg_catalog.pg_operator'::regclass, 'pg_catalog.pg_opclass'::regclass, \
             'pg_catalog.pg_opfamily'::regclass, 'pg_catalog.pg_proc'::regclass, \
             'pg_catalog.pg_class'::regclass, 'pg_catalog.pg_amproc'::regclass, \
             'pg_catalog.pg_amop'::regclass, 'pg_catalog.pg_constraint'::regclass) \
      UNION ALL SELECT refclassid, refobjid, classid, objid FROM pg_catalog.pg_depend \
       WHERE deptype IN ('a', 'i') AND refclassid IN ('pg_catalog.pg_type'::regclass, \
             'pg_catalog.pg_opfamily'::regclass, 'pg_catalog.pg_opclass'::regclass)), \
    walk (rel, on_read, classid, objid) AS ( \
      SELECT rel, on_read, classid, objid FROM part \
      UNION SELECT w.rel, w.on_read, e.to_class, e.to_obj FROM walk w \
        JOIN edge e ON e.classid = w.classid AND e.objid = w.objid \
       WHERE w.classid <> 'pg_catalog.pg_proc'::regclass \
         AND NOT EXISTS (SELECT FROM ext x WHERE x.classid = e.to_class AND x.objid = e.to_obj)), \
    ran (rel, on_read, fn, any_fn) AS ( \
      SELECT rel, on_read, objid, false FROM walk WHERE classid = 'pg_catalog.pg_proc'::regclass \
      UNION SELECT p.rel, p.on_read, d.refobjid, true FROM part p JOIN pg_catalog.pg_depend d \
          ON d.classid = p.classid AND d.objid = p.objid AND d.refclassid = 'pg_catalog.pg_proc'::regclass \
       WHERE p.classid IN ('pg_catalog.pg_rewrite'::regclass, 'pg_catalog.pg_policy'::regclass, \
                           'pg_catalog.pg_trigger'::regclass) \
      UNION SELECT t.rel, t.on_read, m[1]::oid, true FROM stored t, \
        LATERAL pg_catalog.regexp_matches(t.tree, ':(?:func|opfunc)id ([0-9]+)', 'g') AS m \
       WHERE m[1]::oid IN (SELECT p.oid FROM pg_catalog.pg_proc p \
             WHERE p.oid < 16384 AND p.proname = ANY($1::text[])) \
      UNION SELECT t.rel, t.on_read, m[1]::oid, true FROM stored t, \
        LATERAL pg_catalog.regexp_matches(t.tree, ':funcid ([0-9]+) [^{}]*:args \\(\\{(?!CONST )', 'g') AS m \
       WHERE m[1]::oid IN (SELECT p.oid FROM pg_catalog.pg_proc p \
             WHERE p.oid < 16384 AND p.proname IN ('nextval', 'setval'))) \
    SELECT DISTINCT CASE WHEN ran.on_read THEN 'cr' ELSE 'cw' END, rn.nspname::text, r.relname::text, \
           pn.nspname::text, p.proname::text \
      FROM ran JOIN pg_catalog.pg_class r ON r.oid = ran.rel \
      JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
      JOIN pg_catalog.pg_proc p ON p.oid = ran.fn JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
     WHERE rn.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND ((p.oid >= 16384 AND NOT (p.prolang = 12 AND p.prosrc IN ('range_constructor2', 'range_constructor3', 'multirange_constructor0', 'multirange_constructor1', 'multirange_constructor2'))) \
            OR p.proname = ANY($1::text[]) OR p.proname IN ('nextval', 'setval')) \
       AND (ran.any_fn OR NOT EXISTS (SELECT FROM ext x \
            WHERE x.classid = 'pg_catalog.pg_proc'::regclass AND x.objid = p.oid))";

/// What uses of types run of the database's own functions (not built in, not an
/// extension's), where a statement names no function. A type runs a function when a cast
/// with it converts to or from the type (only its ends not built in, unless both are:
/// `9::mood`, `m::text`, `to_json(row)`), when it is one of the type's own (input, output, a
/// domain's default), when a domain's check calls it (directly or through an operator:
/// `7::posint`), or when the type's default operator class is built on it (ORDER BY,
/// DISTINCT, GROUP BY, comparisons) — a built-in type's too where the class is btree's or
/// hash's, which sorting, grouping and hashing use unasked (an attack review's default
/// btree class for `json` ran its comparison function on `ORDER BY payload`; a database's
/// own default class of another method runs only in an index, which names its columns'
/// types); and every type built on such a type runs it too (a
/// domain over it, an array of it, a composite or a table's row with a field of it). A
/// domain's check or default that calls a built-in of `guard::followed_in_stored_code` (`$1`;
/// a review's domain check called `set_config('search_path', VALUE, …)`) counts as well.
///
/// Rows: `ty` (a type's schema and name, the function's, the type's OID, which a Parse may
/// give a parameter) for each such type; `cr` or `cw` (a relation's schema and name, the
/// function's) for a relation with a column of such a type, or whose row type is one: `cr`
/// where reading it may run the function (casts, I/O, operator classes, and a domain's
/// check: a read can turn a value into the relation's row type, `coalesce(t, '(8)')` or
/// `jsonb_populate_record(t, …)`, which checks its domains), `cw` where only writing does
/// (a domain's default, as `FUNCTION_LINKS` has it). The system's own relations are left
/// out, as in `RELATION_LINKS`.
const TYPES_RUNNING_FUNCTIONS: &str = "\
    WITH RECURSIVE \
    db_function AS (SELECT p.oid FROM pg_catalog.pg_proc p \
       WHERE p.oid >= 16384 AND NOT (p.prolang = 12 AND p.prosrc IN ('range_constructor2', 'range_constructor3', 'multirange_constructor0', 'multirange_constructor1', 'multirange_constructor2')) \
         AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
                         AND d.objid = p.oid AND d.deptype = 'e' AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q JOIN pg_catalog.pg_language l ON l.oid = q.prolang WHERE q.oid = d.objid AND l.lanispl))), \
    followed AS (SELECT oid FROM pg_catalog.pg_proc WHERE oid < 16384 AND proname = ANY($1::text[])), \
    builtin_type AS (SELECT oid FROM pg_catalog.pg_type WHERE oid < 16384), \
    implicit_am AS (SELECT oid FROM pg_catalog.pg_am WHERE amname IN ('btree', 'hash')), \
    direct (typ, fn, on_read) AS ( \
      SELECT x.typ, c.castfunc, true FROM pg_catalog.pg_cast c, LATERAL (VALUES (c.castsource), (c.casttarget)) AS x (typ) \
       WHERE c.castfunc IN (SELECT oid FROM db_function) \
         AND (x.typ NOT IN (SELECT oid FROM builtin_type) \
              OR c.castsource IN (SELECT oid FROM builtin_type) AND c.casttarget IN (SELECT oid FROM builtin_type)) \
      UNION SELECT t.oid, x.fn, true FROM pg_catalog.pg_type t, \
             LATERAL (VALUES (t.typinput), (t.typoutput), (t.typreceive), (t.typsend)) AS x (fn) \
       WHERE x.fn IN (SELECT oid FROM db_function) \
      UNION SELECT d.objid, d.refobjid, false FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.refclassid = 'pg_catalog.pg_proc'::regclass \
         AND d.refobjid IN (SELECT oid FROM db_function) \
      UNION SELECT k.contypid, coalesce(o.oprcode, d.refobjid), true FROM pg_catalog.pg_constraint k \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = k.oid \
         LEFT JOIN pg_catalog.pg_operator o ON d.refclassid = 'pg_catalog.pg_operator'::regclass AND o.oid = d.refobjid \
       WHERE k.contypid <> 0 AND coalesce(o.oprcode, d.refobjid) IN (SELECT oid FROM db_function) \
         AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass) \
      UNION SELECT r.rngtypid, p.amproc, true FROM pg_catalog.pg_range r \
         JOIN pg_catalog.pg_opclass c ON c.oid = r.rngsubopc \
         JOIN pg_catalog.pg_amproc p ON p.amprocfamily = c.opcfamily \
       WHERE p.amproc IN (SELECT oid FROM db_function) \
      UNION SELECT c.opcintype, p.amproc, true FROM pg_catalog.pg_opclass c \
         JOIN pg_catalog.pg_amproc p ON p.amprocfamily = c.opcfamily \
       WHERE c.opcdefault AND (c.opcintype NOT IN (SELECT oid FROM builtin_type) OR c.opcmethod IN (SELECT oid FROM implicit_am)) \
         AND p.amproc IN (SELECT oid FROM db_function) \
      UNION SELECT c.opcintype, o.oprcode, true FROM pg_catalog.pg_opclass c \
         JOIN pg_catalog.pg_amop a ON a.amopfamily = c.opcfamily \
         JOIN pg_catalog.pg_operator o ON o.oid = a.amopopr \
       WHERE c.opcdefault AND (c.opcintype NOT IN (SELECT oid FROM builtin_type) OR c.opcmethod IN (SELECT oid FROM implicit_am)) \
         AND o.oprcode IN (SELECT oid FROM db_function) \
      UNION SELECT k.contypid, m[1]::oid, true FROM pg_catalog.pg_constraint k, \
             LATERAL pg_catalog.regexp_matches(k.conbin::text, ':(?:func|opfunc)id ([0-9]+)', 'g') AS m \
       WHERE k.contypid <> 0 AND k.conbin IS NOT NULL AND m[1]::oid IN (SELECT oid FROM followed) \
      UNION SELECT t.oid, m[1]::oid, false FROM pg_catalog.pg_type t, \
             LATERAL pg_catalog.regexp_matches(t.typdefaultbin::text, ':(?:func|opfunc)id ([0-9]+)', 'g') AS m \
       WHERE t.typdefaultbin IS NOT NULL AND m[1]::oid IN (SELECT oid FROM followed)), \
    built_on (base, typ) AS ( \
      SELECT typbasetype, oid FROM pg_catalog.pg_type WHERE typbasetype <> 0 \
      UNION ALL SELECT typelem, oid FROM pg_catalog.pg_type WHERE typelem <> 0 \
      UNION ALL SELECT rngsubtype, rngtypid FROM pg_catalog.pg_range \
      UNION ALL SELECT rngtypid, rngmultitypid FROM pg_catalog.pg_range \
      UNION ALL SELECT a.atttypid, t.oid FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_type t ON t.typrelid = a.attrelid WHERE a.attnum > 0 AND NOT a.attisdropped), \
    runs (typ, fn, on_read) AS ( \
      SELECT typ, fn, on_read FROM direct \
      UNION SELECT b.typ, r.fn, r.on_read FROM runs r JOIN built_on b ON b.base = r.typ), \
    named (kind, schema, name, fn, typ) AS ( \
      SELECT 'ty', tn.nspname, t.typname, runs.fn, t.oid FROM runs JOIN pg_catalog.pg_type t ON t.oid = runs.typ \
        JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
      UNION SELECT CASE WHEN runs.on_read THEN 'cr' ELSE 'cw' END, cn.nspname, c.relname, runs.fn, 0::oid \
        FROM runs JOIN pg_catalog.pg_type t ON t.oid = runs.typ \
        JOIN pg_catalog.pg_class c ON c.oid = t.typrelid AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
        JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
       WHERE cn.nspname NOT IN ('pg_catalog', 'information_schema')) \
    SELECT DISTINCT named.kind, named.schema::text, named.name::text, pn.nspname::text, p.proname::text, \
           named.typ::bigint \
      FROM named JOIN pg_catalog.pg_proc p ON p.oid = named.fn \
      JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace";

/// Links of the catalog (kind, from's schema and name, to's): using the relation `from`
/// touches `to`. `i`: `to` inherits from or is a partition of `from`; `r`: a view or
/// materialized view of `from` reads `to`, a row security policy of `from` does, `from` is
/// `to`'s TOAST table, `from` is a type a column of `to` is of (a domain, an enum, a
/// composite; through arrays, domains, composites and ranges over it: a new check of it
/// reads the column, a
/// renamed label changes its values), `from` is a sequence `to` owns (serial, identity) or whose column
/// default takes its values from it (its value counts `to`'s rows), `from` is an index of
/// `to`, or `from` is a foreign table whose options name `to` (a loopback server
/// may read it); `w`: a rule on INSERT, UPDATE or DELETE of `from` writes `to`, or a
/// default of it uses the sequence `to`; `k`: a foreign key of `to` to `from` changes `to`'s
/// rows on delete or update (CASCADE, SET NULL, SET DEFAULT); `t`: any other foreign key
/// (TRUNCATE … CASCADE empties `to`; a delete from `from` reads it); `f`: a foreign key of
/// `from` to `to` (a write of `from` reads `to`); `ce`: an event trigger calls the function `to` on DDL
/// (`from` is empty). The system's own relations are left out. (The functions relations
/// run: `FUNCTION_LINKS`.)
const RELATION_LINKS: &str = "\
    WITH RECURSIVE rel AS (SELECT c.oid, n.nspname::text AS s, c.relname::text AS r \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace), \
    fn AS (SELECT p.oid, n.nspname::text AS s, p.proname::text AS r \
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')), \
    dep AS (SELECT classid, objid, refclassid, refobjid FROM pg_catalog.pg_depend \
            WHERE refclassid = 'pg_catalog.pg_class'::regclass), \
    type_used (col_type, typ) AS ( \
      SELECT DISTINCT a.atttypid, a.atttypid FROM pg_catalog.pg_attribute a \
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'm', 'f') \
       WHERE a.attnum > 0 AND NOT a.attisdropped \
      UNION SELECT u.col_type, x.base FROM type_used u JOIN pg_catalog.pg_type t ON t.oid = u.typ, \
        LATERAL (SELECT t.typbasetype UNION ALL SELECT t.typelem \
          UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
           WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
          UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid \
          UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid) AS x (base) \
       WHERE x.base <> 0), \
    pair (kind, from_oid, to_oid) AS ( \
      SELECT 'i', inhparent, inhrelid FROM pg_catalog.pg_inherits \
      UNION SELECT CASE w.ev_type WHEN '1' THEN 'r' ELSE 'w' END, w.ev_class, d.refobjid \
        FROM pg_catalog.pg_rewrite w JOIN dep d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
         AND d.objid = w.oid AND d.refobjid <> w.ev_class \
      UNION SELECT 'r', p.polrelid, d.refobjid FROM pg_catalog.pg_policy p \
        JOIN dep d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid \
         AND d.refobjid <> p.polrelid \
      UNION SELECT CASE WHEN k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd') \
                   THEN 'k' ELSE 't' END, k.confrelid, k.conrelid \
        FROM pg_catalog.pg_constraint k WHERE k.contype = 'f' \
      UNION SELECT 'f', k.conrelid, k.confrelid FROM pg_catalog.pg_constraint k WHERE k.contype = 'f' \
      UNION SELECT 'r', c.reltoastrelid, c.oid FROM pg_catalog.pg_class c \
        WHERE c.reltoastrelid <> 0 \
      UNION SELECT 'w', a.adrelid, d.refobjid FROM pg_catalog.pg_attrdef a \
        JOIN dep d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = a.oid \
      UNION SELECT 'w', k.conrelid, d.refobjid FROM pg_catalog.pg_constraint k \
        JOIN dep d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = k.oid \
        WHERE k.conrelid <> 0 AND k.contype = 'c' \
      UNION SELECT 'w', i.indrelid, d.refobjid FROM pg_catalog.pg_index i \
        JOIN dep d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = i.indexrelid \
         AND d.refobjid <> i.indrelid \
      UNION SELECT 'r', d.objid, d.refobjid FROM pg_catalog.pg_depend d \
        JOIN pg_catalog.pg_class q ON q.oid = d.objid AND q.relkind = 'S' \
        WHERE d.classid = 'pg_catalog.pg_class'::regclass \
          AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
      UNION SELECT 'r', d.refobjid, a.adrelid FROM pg_catalog.pg_attrdef a \
        JOIN dep d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = a.oid \
        JOIN pg_catalog.pg_class q ON q.oid = d.refobjid AND q.relkind = 'S' \
      UNION SELECT 'r', i.indexrelid, i.indrelid FROM pg_catalog.pg_index i \
      ) \
    SELECT pair.kind, f.s, f.r, t.s, t.r FROM pair \
      JOIN rel f ON f.oid = pair.from_oid JOIN rel t ON t.oid = pair.to_oid \
     WHERE f.s NOT IN ('pg_catalog', 'information_schema') \
    UNION SELECT 'ce', '', '', t.s, t.r FROM pg_catalog.pg_event_trigger e JOIN fn t ON t.oid = e.evtfoid \
     WHERE e.evtenabled <> 'D' AND e.evtevent <> 'login' \
    UNION SELECT 'r', f.s, f.r, \
      coalesce((SELECT substr(o, 13) FROM pg_catalog.unnest(t.ftoptions) o WHERE o LIKE 'schema\\_name=%'), f.s), \
      coalesce((SELECT substr(o, 12) FROM pg_catalog.unnest(t.ftoptions) o WHERE o LIKE 'table\\_name=%'), f.r) \
      FROM pg_catalog.pg_foreign_table t JOIN rel f ON f.oid = t.ftrelid \
    UNION SELECT 'r', tn.nspname::text, t.typname::text, n.nspname::text, c.relname::text \
      FROM pg_catalog.pg_attribute a \
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'm', 'f') \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
      JOIN type_used u ON u.col_type = a.atttypid \
      JOIN pg_catalog.pg_type t ON t.oid = u.typ \
      JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
     WHERE a.attnum > 0 AND NOT a.attisdropped \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND tn.nspname NOT IN ('pg_catalog', 'information_schema')";
