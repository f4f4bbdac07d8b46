//! What the server's search path at login (its role's and database's defaults, which the
//! proxy never sees set) means for the session: catalog names it may shadow, off-limits
//! schemas it may open.

use crate::proxy::upstream;

/// Whether the search path the server gave the session at login (its role's and
/// database's defaults, which the proxy never sees set) lists a schema before pg_catalog,
/// where a relation could shadow a catalog's unqualified name. Asked on the session's own
/// connection before the client may send anything; a failure counts as yes (the catalog
/// reads are then counted against the row limit, the safe direction).
pub(super) async fn search_path_shadows_catalog(upstream: &mut upstream::Upstream) -> bool {
    // The rule of `guard::search_path_text_shadows`, asked of the server's own value:
    // every name schema-qualified, the operator too (a database's own would be found
    // first); the blanks are those PostgreSQL's identifier splitter skips (not `\s`, which
    // takes a vertical tab too).
    const ASK: &str = "SELECT 1 FROM (SELECT pg_catalog.current_setting('search_path') AS s) p \
        WHERE pg_catalog.strpos(pg_catalog.lower(p.s), 'pg_catalog') OPERATOR(pg_catalog.>) 0 \
        AND p.s OPERATOR(pg_catalog.!~) pg_catalog.concat('^[', E' \\t\\n\\r\\f', \
        ']*pg_catalog[', E' \\t\\n\\r\\f', ']*(,|$)')";
    match upstream.simple_query(ASK).await {
        Ok(rows) => rows > 0,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the session's search path; catalog reads are counted");
            true
        }
    }
}

/// A schema that is off limits as a whole (`schema.*`) must not be on the search path the
/// server gave the session at login (its role's or database's default, which the proxy never
/// sees set): an unqualified name would then read its tables, matched by no rule (an attack
/// review read `hr.pay` as `pay` after `ALTER DATABASE … SET search_path = public, hr`).
/// Asked on the session's own connection before the client may send anything; a failure
/// to ask refuses the session.
pub(super) async fn login_search_path_clear(
    upstream: &mut upstream::Upstream,
    rules: &crate::config::Guardrails,
) -> Result<(), String> {
    let schemas: Vec<String> = rules
        .off_limits
        .iter()
        .filter_map(|p| p.to_lowercase().strip_suffix(".*").map(str::to_owned))
        .collect();
    if schemas.is_empty() {
        return Ok(());
    }
    // E'' literals, quotes and backslashes escaped: read alike whatever the server's
    // standard_conforming_strings.
    let literals: Vec<String> = schemas
        .iter()
        .map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    let ask = format!(
        "SELECT 1 FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) AS s(name) \
         WHERE pg_catalog.lower(s.name::pg_catalog.text) OPERATOR(pg_catalog.=) ANY (ARRAY[{}]::pg_catalog.text[])",
        literals.join(", ")
    );
    match upstream.simple_query(&ask).await {
        Ok(0) => Ok(()),
        Ok(_) => Err("lockbox: the search path this session starts with (set for its role or the database) includes a schema that is off limits on this database; its tables would be read by unqualified names no rule matches".into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the session's search path");
            Err("lockbox cannot read the session's search path to enforce this database's off-limits schemas".into())
        }
    }
}
