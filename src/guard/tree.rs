//! A walk over every node of a parse tree. The tree is read through its serde form so the
//! walk reaches every field of every node type PostgreSQL's grammar has, including ones
//! added in later versions: nothing nested (a CTE, a subquery in a function argument, a
//! function's SET clause, the query of a COPY or EXPLAIN) is out of its sight.
//!
//! Node types appear two ways: as a tagged `Node` (`{"DeleteStmt": {…}}`) and, where a field
//! has a fixed type, untagged (`DeleteStmt.relation` is a bare RangeVar). The walk knows
//! the tagged ones by their tag and the few untagged ones it needs by their fields.

use serde_json::{Map, Value};

pub(crate) use super::literals::{literal, string_node, string_nodes};

#[path = "tree_names.rs"]
mod names;
use names::{
    altered_type, listed_relation, moved_relation, moved_type, note_qualifiers, note_schema,
    push_listed, renamed_relation, sequence_owner,
};

/// A function call as written: its name after PostgreSQL's identifier normalisation
/// (unquoted names folded to lower case, quoted and Unicode-escaped names decoded) and
/// its arguments.
#[derive(Debug)]
pub(crate) struct Call<'t> {
    pub schema: Option<String>,
    pub name: String,
    pub args: Vec<&'t Value>,
    /// Arguments given as `name => value`.
    pub named: Vec<(String, &'t Value)>,
}

/// `SET name …` wherever it appears: a statement, a function's or role's SET clause.
#[derive(Debug)]
pub(crate) struct SetClause<'t> {
    pub kind: i64,
    pub name: String,
    pub args: &'t [Value],
}

/// Everything in one statement's tree the guard looks at.
#[derive(Debug, Default)]
pub(crate) struct Found<'t> {
    pub calls: Vec<Call<'t>>,
    pub relations: Vec<String>,
    pub sets: Vec<SetClause<'t>>,
    /// INSERT, UPDATE, DELETE or MERGE anywhere (writable CTEs included).
    pub writes: bool,
    /// Which of them, for the audit's kind of a statement that writes inside (a writable
    /// CTE, EXPLAIN ANALYZE).
    pub inserts: bool,
    pub updates: bool,
    pub deletes: bool,
    pub merges: bool,
    /// `INSERT … ON CONFLICT DO UPDATE`: it may update rows (and cascade).
    pub upserts: bool,
    pub delete_without_where: bool,
    pub update_without_where: bool,
    /// `FOR UPDATE` / `FOR SHARE` …
    pub row_locks: bool,
    /// `SELECT … INTO`.
    pub select_into: bool,
    /// An INSERT, UPDATE or DELETE on `pg_settings`, whose rules call set_config.
    pub writes_pg_settings: bool,
    pub drop: bool,
    pub truncate: bool,
    /// Names used in column or attribute notation (`t.name`, `(expr).name`), lowercased as
    /// written: PostgreSQL calls a one-argument function of that name when no column has it.
    pub field_names: Vec<String>,
    /// Relations named as name lists rather than RangeVars (lowercased): what a DROP
    /// removes, a COMMENT or SECURITY LABEL describes, and where `SET SCHEMA` moves a table.
    pub listed_relations: Vec<String>,
    /// It acts on whole schemas or on everything a role owns (`DROP SCHEMA`, `DROP OWNED`,
    /// `REASSIGN OWNED`, `ALTER SCHEMA … RENAME`), or drops with CASCADE: tables it touches
    /// go unnamed.
    pub schema_wide: bool,
    /// Schemas named as the object acted on (`GRANT … ON SCHEMA hr`, `ALTER SCHEMA hr OWNER
    /// TO …`, `COMMENT ON SCHEMA hr`), as where an object goes (`SET SCHEMA hr`), or as the
    /// qualifier of any name but a column's (`hr.f()`, `hr.d`), lowercased.
    pub schemas: Vec<String>,
    /// Every relation named, as the server resolves it (`relations` lowercases them for
    /// the rules' case-insensitive patterns).
    pub written_relations: Vec<String>,
    /// Names in `(expr).name`: a field of a composite value, or a call of `name(expr)`.
    pub indirection_names: Vec<String>,
    /// Types named (a cast's, a column's, `ROW(…)::t`), unqualified as the catalog stores
    /// them: a cast to or from one, or a domain's check, may run a function of the database.
    pub type_names: Vec<String>,
    /// A temporary relation is named (created, most likely): it can shadow a catalog's name.
    pub temporary_relations: bool,
    /// An index, exclusion constraint or partition key names an operator class.
    pub operator_class_named: bool,
    /// A relation is named that is not certainly one of the system catalogs (compared as
    /// the server resolves names: case-sensitive, see `is_catalog`).
    pub non_catalog_relations: bool,
    /// Operators as written: schema (if qualified) and symbol.
    pub operators: Vec<(Option<String>, String)>,
    /// A foreign table's `schema_name` and `table_name` options: the table a loopback
    /// server reads for it.
    pub foreign_schema: Option<String>,
    pub foreign_table: Option<String>,
    /// Prepared statements run by name anywhere in it: `EXECUTE s`, and below the top,
    /// `CREATE TABLE t AS EXECUTE s` and `EXPLAIN ANALYZE` of either.
    pub executes: Vec<String>,
}

/// Collects what the guard looks at from the serde form of a statement's tree.
pub(crate) fn walk(tree: &Value) -> Found<'_> {
    let mut found = Found::default();
    visit(tree, &mut found);
    note_foreign_target(&mut found);
    found
}

/// `CREATE FOREIGN TABLE f … OPTIONS (schema_name 'hr', table_name 'pay')` (or `ALTER
/// FOREIGN TABLE … OPTIONS`) names the table its server reads: `hr.pay`, a relation like any
/// other (a loopback server reads this database). A missing option defaults to the foreign
/// table's own schema or name.
fn note_foreign_target(found: &mut Found<'_>) {
    if found.foreign_schema.is_none() && found.foreign_table.is_none() {
        return;
    }
    let own = found.written_relations.first().cloned().unwrap_or_default();
    let (own_schema, own_name) = own.rsplit_once('.').unwrap_or(("", &own));
    let schema = found
        .foreign_schema
        .clone()
        .unwrap_or(own_schema.to_owned());
    let name = found.foreign_table.clone().unwrap_or(own_name.to_owned());
    push_listed(&schema, &name, found);
}

fn visit<'t>(value: &'t Value, found: &mut Found<'t>) {
    visit_names(value, found, true);
}

/// `qualified`: name lists below may be qualified names (not so in an option that lists
/// columns: `COPY … (FORCE_QUOTE (hr, x))`).
fn visit_names<'t>(value: &'t Value, found: &mut Found<'t>, qualified: bool) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| visit_names(v, found, qualified)),
        Value::Object(map) => {
            inspect_untagged(map, found);
            let qualified = qualified
                && !map
                    .get("defname")
                    .and_then(Value::as_str)
                    .is_some_and(|name| COLUMN_LIST_OPTIONS.contains(&name));
            for (key, child) in map {
                inspect_tagged(key, child, found);
                if let (Value::Array(items), true) = (child, qualified) {
                    note_qualifiers(key, items, found);
                }
                visit_names(child, found, qualified);
            }
        }
        _ => {}
    }
}

/// COPY options whose value is a list of columns.
const COLUMN_LIST_OPTIONS: &[&str] = &["force_quote", "force_not_null", "force_null"];

/// Node types recognised by their fields (they appear untagged in typed fields).
fn inspect_untagged<'t>(map: &'t Map<String, Value>, found: &mut Found<'t>) {
    if map.contains_key("relname") && map.contains_key("relpersistence") {
        let written = written_relation_name(map);
        found.relations.push(written.to_lowercase());
        found.written_relations.push(written);
        let part = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
        let (schema, name) = (part("schemaname"), part("relname"));
        // `pg_temp` is the session's temporary schema, and so is its own name (`pg_temp_3`).
        let temporary = part("relpersistence") == "t" || schema.starts_with("pg_temp");
        found.temporary_relations |= temporary;
        found.non_catalog_relations |= !is_catalog(schema, name);
    }
    if map.contains_key("funcname") && map.contains_key("agg_star") {
        found.calls.push(call_of(map));
    }
    if map.contains_key("names") && map.contains_key("pct_type") {
        let names = map.get("names").and_then(Value::as_array);
        if let Some(name) = names.and_then(|n| n.last()).and_then(string_node) {
            found.type_names.push(name);
        }
    }
    if let (Some(kind), Some(Value::String(name)), Some(Value::Array(args))) =
        (map.get("kind"), map.get("name"), map.get("args"))
    {
        if map.contains_key("is_local") {
            found.sets.push(SetClause {
                kind: kind.as_i64().unwrap_or(0),
                name: name.to_lowercase(),
                args,
            });
        }
    }
}

/// Node types recognised by their tag.
fn inspect_tagged(key: &str, node: &Value, found: &mut Found<'_>) {
    let has = |field: &str| !is_empty(node.get(field));
    if let Some(name) = sql_json_call(key, node) {
        found.calls.push(Call {
            schema: None,
            name: name.to_owned(),
            args: Vec::new(),
            named: Vec::new(),
        });
    }
    // `DROP … CASCADE`, `ALTER TABLE/TYPE … DROP … CASCADE`: what else goes is unnamed (a
    // protected table's column of a dropped domain, a view in a protected schema).
    let cascades = node.get("behavior").and_then(Value::as_i64) == Some(DROP_CASCADE);
    if cascades && matches!(key, "DropStmt" | "AlterTableCmd" | "AlterDomainStmt") {
        found.schema_wide = true;
    }
    match key {
        "InsertStmt" => {
            found.writes = true;
            found.inserts = true;
            found.writes_pg_settings |= targets_pg_settings(node);
            found.update_without_where |= unbounded_upsert(node);
            found.upserts |= upserts(node);
        }
        "MergeStmt" => {
            found.writes = true;
            found.merges = true;
            found.writes_pg_settings |= targets_pg_settings(node);
            // A MERGE's join is no filter: the source can be the whole table. An UPDATE or
            // DELETE action without a condition of its own is unbounded.
            for (command, unconditioned) in merge_actions(node) {
                found.update_without_where |= command == CMD_UPDATE && unconditioned;
                found.delete_without_where |= command == CMD_DELETE && unconditioned;
            }
        }
        "AlterTableCmd" => {
            let subtype = node.get("subtype").and_then(Value::as_i64).unwrap_or(0);
            found.drop |= ALTER_TABLE_DROPS.contains(&subtype);
            found.drop |= RELOPTION_CHANGES.contains(&subtype) && changes_a_view_check(node);
            // ALTER COLUMN … TYPE rewrites every row (with USING, to any value).
            found.update_without_where |= subtype == AT_ALTER_COLUMN_TYPE;
        }
        "AlterDomainStmt" => {
            let subtype = node.get("subtype").and_then(Value::as_str).unwrap_or("");
            found.drop |= ALTER_DOMAIN_DROPS.contains(&subtype);
            altered_type(node, found);
        }
        // Row security's checks: `ALTER POLICY` rewrites what rows are held to (or whom it
        // binds), and a permissive policy widens what passes (policies are OR'ed), as an
        // attack review made `WITH CHECK (true)` let a refused row in.
        "AlterPolicyStmt" => found.drop = true,
        "CreatePolicyStmt" => found.drop |= flag(node, "permissive"),
        // `CREATE OR REPLACE VIEW` replaces a view's query and options, its `WITH CHECK
        // OPTION` among them; a view made anew says `CREATE VIEW`.
        "ViewStmt" => found.drop |= flag(node, "replace"),
        // `WITH NO DATA` empties a materialized view.
        "RefreshMatViewStmt" => found.truncate |= flag(node, "skip_data"),
        // A publication's subscribers stop getting the rows of tables dropped from it (or
        // left out of a list set anew), or of the changes its `publish` option leaves out
        // (`SET (publish = '')` publishes nothing).
        "AlterPublicationStmt" => {
            use pg_query::protobuf::AlterPublicationAction as A;
            let action = node.get("action").and_then(Value::as_i64).unwrap_or(0);
            found.drop |= action == A::ApDropObjects as i64 || action == A::ApSetObjects as i64;
            found.drop |= option_names(node.get("options")).any(|name| name == "publish");
        }
        // `ALTER CONSTRAINT c NOT ENFORCED` keeps the constraint and stops checking it;
        // `NO INHERIT` stops checking it on the children (PostgreSQL 18).
        "AtalterConstraint" => {
            found.drop |= flag(node, "alter_enforceability") && !flag(node, "is_enforced");
            found.drop |= flag(node, "alter_inheritability") && flag(node, "noinherit");
        }
        // `ALTER EVENT TRIGGER … DISABLE` (or `ENABLE REPLICA`: it then fires only on
        // replicas) turns off a check the database's DDL is held to.
        "AlterEventTrigStmt" => {
            let enabled = node.get("tgenabled").and_then(Value::as_str).unwrap_or("");
            found.drop |= matches!(enabled, "D" | "R");
        }
        // A new check of a domain reads every column of it; an enum's renamed label
        // changes every value of it: the type is named like the relations that use it
        // (the catalog's links lead from it to them).
        "AlterEnumStmt" | "AlterTypeStmt" => altered_type(node, found),
        "CreateSeqStmt" | "AlterSeqStmt" => sequence_owner(node, found),
        "SubLink" => {
            // `x OPERATOR(s.op) ANY (SELECT …)` keeps its operator here, not in an A_Expr;
            // `x IN (SELECT …)` names none and means `=`.
            let named = operator_named(node.get("oper_name"));
            let any = node.get("sub_link_type").and_then(Value::as_i64) == Some(ANY_SUBLINK);
            if named.is_none() && any {
                found.operators.push((None, "=".to_owned()));
            }
            found.operators.extend(named);
        }
        // `ORDER BY x USING <<<` (a query's, an aggregate's, a window's) sorts with that
        // operator's function.
        "SortBy" => found.operators.extend(operator_named(node.get("use_op"))),
        // `CASE x WHEN v …` compares with `=`, which names no operator.
        "CaseExpr" if !is_empty(node.get("arg")) => found.operators.push((None, "=".to_owned())),
        // So do `JOIN … USING (c)` and `NATURAL JOIN`, looking `=` up by name like a
        // written one (a review's customer `=(varchar, varchar)` ran through USING).
        "JoinExpr"
            if has("using_clause")
                || node.get("is_natural").and_then(Value::as_bool) == Some(true) =>
        {
            found.operators.push((None, "=".to_owned()))
        }
        "UpdateStmt" => {
            found.writes = true;
            found.updates = true;
            found.update_without_where |= !has("where_clause");
            found.writes_pg_settings |= targets_pg_settings(node);
        }
        "DeleteStmt" => {
            found.writes = true;
            found.deletes = true;
            found.delete_without_where |= !has("where_clause");
            found.writes_pg_settings |= targets_pg_settings(node);
        }
        "ExecuteStmt" => found
            .executes
            .extend(node.get("name").and_then(Value::as_str).map(str::to_owned)),
        "SelectStmt" => {
            found.row_locks |= has("locking_clause");
            found.select_into |= has("into_clause");
        }
        "DropStmt" => {
            found.drop = true;
            let kind = node.get("remove_type").and_then(Value::as_i64).unwrap_or(0);
            if kind == pg_query::protobuf::ObjectType::ObjectSchema as i64 {
                found.schema_wide = true;
            }
            let objects = node.get("objects").and_then(Value::as_array);
            for object in objects.into_iter().flatten() {
                listed_relation(kind, object, found);
            }
        }
        // `COMMENT ON TABLE payroll`, `SECURITY LABEL ON COLUMN hr.pay.amount`: the object
        // is a name list, its table a relation like any other.
        "CommentStmt" | "SecLabelStmt" => {
            let kind = node.get("objtype").and_then(Value::as_i64).unwrap_or(0);
            if let Some(object) = node.get("object") {
                listed_relation(kind, object, found);
            }
        }
        // `ALTER TABLE x SET SCHEMA hr` names, besides `x`, the table it makes: `hr.x`.
        "AlterObjectSchemaStmt" => {
            moved_relation(node, found);
            moved_type(node, found);
            note_schema(node.get("newschema"), found);
        }
        // The schema an object goes into or comes from names it as much as a qualified
        // name does: `CREATE SCHEMA hr`, `CREATE EXTENSION e SCHEMA hr`, `CREATE
        // PUBLICATION p FOR TABLES IN SCHEMA hr` (all of its tables, unnamed).
        "CreateSchemaStmt" => note_schema(node.get("schemaname"), found),
        // An object named in a string cast to its identifier type (`'hr.cfg'::regconfig`).
        "TypeCast" => found
            .schemas
            .extend(super::literals::object_cast_schema(node)),
        "PublicationObjSpec" => note_schema(node.get("name"), found),
        "CreateExtensionStmt" => {
            let options = node.get("options").and_then(Value::as_array);
            for option in options.into_iter().flatten() {
                let option = option.pointer("/node/DefElem");
                if option
                    .and_then(|o| o.get("defname"))
                    .and_then(Value::as_str)
                    == Some("schema")
                {
                    let schema = option.and_then(|o| o.get("arg")).and_then(string_node);
                    found.schemas.extend(schema.map(|s| s.to_lowercase()));
                }
            }
        }
        "DropOwnedStmt" => {
            found.drop = true;
            found.schema_wide = true;
        }
        "ReassignOwnedStmt" | "AlterDefaultPrivilegesStmt" => found.schema_wide = true,
        // `REINDEX SCHEMA/DATABASE/SYSTEM`, and VACUUM, ANALYZE or CLUSTER of no table
        // named: every table they reach, unnamed.
        "ReindexStmt" => {
            use pg_query::protobuf::ReindexObjectType as R;
            let kind = node.get("kind").and_then(Value::as_i64);
            let named = [R::ReindexObjectIndex, R::ReindexObjectTable].map(|k| Some(k as i64));
            found.schema_wide |= !named.contains(&kind);
        }
        "VacuumStmt" => found.schema_wide |= is_empty(node.get("rels")),
        "ClusterStmt" => found.schema_wide |= is_empty(node.get("relation")),
        // `GRANT … ON ALL TABLES IN SCHEMA hr`: every table of the schema, unnamed.
        "GrantStmt" => {
            let target = node.get("targtype").and_then(Value::as_i64);
            let all = pg_query::protobuf::GrantTargetType::AclTargetAllInSchema as i64;
            found.schema_wide |= target == Some(all);
            // `GRANT ALL ON SCHEMA hr TO …`.
            let kind = node.get("objtype").and_then(Value::as_i64).unwrap_or(0);
            let objects = node.get("objects").and_then(Value::as_array);
            for object in objects.into_iter().flatten() {
                listed_relation(kind, object, found);
            }
        }
        // `ALTER TABLE ALL IN TABLESPACE … SET TABLESPACE`: every table there, unnamed.
        "AlterTableMoveAllStmt" => found.schema_wide = true,
        "RenameStmt" => {
            let kind = node.get("rename_type").and_then(Value::as_i64);
            found.schema_wide |= kind == Some(pg_query::protobuf::ObjectType::ObjectSchema as i64);
            // `ALTER TYPE mood RENAME TO m2`: the type by its old name (its new one is in
            // no link until the next login).
            if let (Some(kind), Some(object)) = (kind, node.get("object")) {
                listed_relation(kind, object, found);
            }
            renamed_relation(node, found);
        }
        // `ALTER TYPE mood OWNER TO …`.
        "AlterOwnerStmt" => {
            let kind = node.get("object_type").and_then(Value::as_i64);
            if let (Some(kind), Some(object)) = (kind, node.get("object")) {
                listed_relation(kind, object, found);
            }
        }
        "DropdbStmt"
        | "DropRoleStmt"
        | "DropTableSpaceStmt"
        | "DropSubscriptionStmt"
        | "DropUserMappingStmt" => found.drop = true,
        "ColumnRef" => {
            let last = node
                .get("fields")
                .and_then(Value::as_array)
                .and_then(|fields| fields.last())
                .and_then(string_node);
            found.field_names.extend(last);
        }
        "AExpr" => found.operators.extend(aexpr_operators(node)),
        "IndexElem" | "PartitionElem" => {
            found.operator_class_named |= !is_empty(node.get("opclass"));
        }
        "AIndirection" => {
            let names = string_nodes(node.get("indirection"));
            found.indirection_names.extend(names.iter().cloned());
            found.field_names.extend(names);
        }
        "TruncateStmt" => found.truncate = true,
        "DefElem" => {
            let value = || {
                node.pointer("/arg/node/String/sval")
                    .and_then(Value::as_str)
            };
            match node.get("defname").and_then(Value::as_str) {
                Some("schema_name") => found.foreign_schema = value().map(str::to_owned),
                Some("table_name") => found.foreign_table = value().map(str::to_owned),
                _ => {}
            }
        }
        // Every table of a remote schema, unnamed: this database's own, on a loopback server.
        "ImportForeignSchemaStmt" => found.schema_wide = true,
        "AConst" => super::numbers::note_constant(node),
        _ => {}
    }
}

/// `SubLinkType::AnySublink`: `x IN (SELECT …)`, `x op ANY (SELECT …)`.
const ANY_SUBLINK: i64 = pg_query::protobuf::SubLinkType::AnySublink as i64;
/// `DropBehavior::DropCascade`.
const DROP_CASCADE: i64 = pg_query::protobuf::DropBehavior::DropCascade as i64;
/// `CmdType` values of a MERGE action.
const CMD_UPDATE: i64 = 3;
const CMD_DELETE: i64 = 5;
/// `AlterTableType` values that lose something (rule `deny_drop`): a column's data
/// (`DROP COLUMN`, `ALTER TYPE … DROP ATTRIBUTE`, and `ALTER COLUMN … TYPE`, which rewrites
/// every value: `USING ''` empties the column, a narrower numeric rounds it), a rule the data
/// is checked against (`DROP CONSTRAINT`, `DROP NOT NULL`, a trigger or rule disabled or set
/// to fire only on replicas, row security turned off or no longer forced on the owner), a
/// generated expression or an identity, rows a table answers for (`DETACH PARTITION
/// [FINALIZE]`, `NO INHERIT`), and the rows' survival (`SET UNLOGGED`: a crash empties the
/// table and standbys never get its rows). `DROP DEFAULT` and the like lose neither data nor
/// a check and stay allowed. (An attack review emptied a column with `ALTER COLUMN … TYPE
/// text USING ''` under `deny_drop`.)
const ALTER_TABLE_DROPS: &[i64] = {
    use pg_query::protobuf::AlterTableType as A;
    &[
        A::AtDropNotNull as i64,
        A::AtDropExpression as i64,
        A::AtDropColumn as i64,
        A::AtDropConstraint as i64,
        A::AtAlterColumnType as i64,
        A::AtSetUnLogged as i64,
        A::AtEnableReplicaTrig as i64,
        A::AtDisableTrig as i64,
        A::AtDisableTrigAll as i64,
        A::AtDisableTrigUser as i64,
        A::AtEnableReplicaRule as i64,
        A::AtDisableRule as i64,
        A::AtDropInherit as i64,
        A::AtDisableRowSecurity as i64,
        A::AtNoForceRowSecurity as i64,
        A::AtDetachPartition as i64,
        A::AtDetachPartitionFinalize as i64,
        A::AtDropIdentity as i64,
    ]
};
/// `AlterTableType` values that set, reset or replace a relation's options.
const RELOPTION_CHANGES: &[i64] = {
    use pg_query::protobuf::AlterTableType as A;
    &[
        A::AtSetRelOptions as i64,
        A::AtResetRelOptions as i64,
        A::AtReplaceRelOptions as i64,
    ]
};

/// Whether an options change (`ALTER VIEW v RESET (check_option)`) touches an option a
/// view's rows or readers are checked by: `check_option` (the check written rows are held
/// to), `security_barrier`, `security_invoker` (whose privileges and row security apply).
fn changes_a_view_check(cmd: &Value) -> bool {
    const CHECKS: &[&str] = &["check_option", "security_barrier", "security_invoker"];
    option_names(cmd.pointer("/def/node/List/items")).any(|name| CHECKS.contains(&name.as_str()))
}

/// The names of a list of options (`DefElem`s), lowercased: the grammar folds unquoted
/// ones, and a quoted `"Check_Option"` counts as `check_option` would, whatever the server
/// makes of it (refusing too much is the safe side).
fn option_names(options: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    options
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|option| {
            option
                .pointer("/node/DefElem/defname")
                .and_then(Value::as_str)
        })
        .map(str::to_ascii_lowercase)
}

/// A boolean field of a parse-tree node; absent is false, as the JSON leaves defaults out.
fn flag(node: &Value, key: &str) -> bool {
    node.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// `AlterDomainStmt` subtypes that drop a check: `DROP CONSTRAINT`, `DROP NOT NULL`.
const ALTER_DOMAIN_DROPS: &[&str] = &["X", "N"];
const AT_ALTER_COLUMN_TYPE: i64 = 25;
/// `OnConflictAction::OnconflictUpdate`.
const ON_CONFLICT_UPDATE: i64 = 3;

/// Each action of a MERGE: its command and whether it has no condition of its own.
fn merge_actions(node: &Value) -> Vec<(i64, bool)> {
    node.get("merge_when_clauses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|clause| clause.pointer("/node/MergeWhenClause"))
        .map(|clause| {
            (
                clause
                    .get("command_type")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                is_empty(clause.get("condition")),
            )
        })
        .collect()
}

/// `INSERT … ON CONFLICT DO UPDATE`.
fn upserts(node: &Value) -> bool {
    node.get("on_conflict_clause")
        .and_then(|clause| clause.get("action"))
        .and_then(Value::as_i64)
        == Some(ON_CONFLICT_UPDATE)
}

/// `INSERT … ON CONFLICT DO UPDATE` without a WHERE, fed by anything but one VALUES row:
/// it can rewrite every row of the table.
fn unbounded_upsert(node: &Value) -> bool {
    let Some(clause) = node.get("on_conflict_clause").filter(|c| !c.is_null()) else {
        return false;
    };
    let update = clause.get("action").and_then(Value::as_i64) == Some(ON_CONFLICT_UPDATE);
    let one_row = node
        .pointer("/select_stmt/node/SelectStmt/values_lists")
        .and_then(Value::as_array)
        .is_some_and(|rows| rows.len() == 1);
    update && is_empty(clause.get("where_clause")) && !one_row
}

/// The operators an A_Expr runs. `a BETWEEN b AND c` is named by its keywords; the server
/// runs `>=` and `<=` (`<` and `>` for NOT BETWEEN), found for the operands' types like any
/// other (a database's own for its own types).
fn aexpr_operators(node: &Value) -> Vec<(Option<String>, String)> {
    use pg_query::protobuf::AExprKind as K;
    let kind = node.get("kind").and_then(Value::as_i64);
    let between = [K::AexprBetween, K::AexprBetweenSym].map(|k| Some(k as i64));
    let not_between = [K::AexprNotBetween, K::AexprNotBetweenSym].map(|k| Some(k as i64));
    let symbols: &[&str] = if between.contains(&kind) {
        &[">=", "<="]
    } else if not_between.contains(&kind) {
        &["<", ">"]
    } else {
        return operator_named(node.get("name")).into_iter().collect();
    };
    symbols.iter().map(|s| (None, (*s).to_owned())).collect()
}

/// An operator's name list (`["pg_catalog", "="]`) as its schema, if qualified, and symbol.
fn operator_named(names: Option<&Value>) -> Option<(Option<String>, String)> {
    let mut parts = string_nodes(names);
    let symbol = parts.pop()?;
    Some((parts.pop(), symbol))
}

fn targets_pg_settings(node: &Value) -> bool {
    node.get("relation")
        .and_then(|r| r.get("relname"))
        .and_then(Value::as_str)
        .is_some_and(|name| name.eq_ignore_ascii_case("pg_settings"))
}

/// Null, an empty list or an absent field.
fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

/// A relation of the system catalogs, by the exact (case-sensitive) names the parser
/// gives: qualified with pg_catalog or information_schema, where nobody but a superuser
/// creates anything; or unqualified with the name of a pg_catalog relation (all of them
/// start `pg_`), which pg_catalog resolves first unless a temporary relation or the search
/// path puts another in front (the relay keeps track of both: `Facts::may_shadow_catalog`).
/// An unqualified information_schema name (`tables`, `parameters`) is not one: that schema
/// is on no search path by default, and a customer's table of that name is found instead.
fn is_catalog(schema: &str, name: &str) -> bool {
    match schema {
        "" => name.starts_with("pg_") && super::functions::is_catalog_relation(name),
        "pg_catalog" | "information_schema" => true,
        _ => false,
    }
}

/// The function a server before PostgreSQL 16 calls where this parser (PostgreSQL 18's
/// grammar) reads SQL/JSON syntax: `json_scalar(1)` is a node of its own here, but a
/// plain call there, of whatever function of the database bears the name. Judged as a
/// call of that name (not a built-in of PostgreSQL 15, so opaque), with its arguments
/// unknown; `json_object` is a built-in there and is judged as one.
fn sql_json_call(key: &str, node: &Value) -> Option<&'static str> {
    Some(match key {
        "JsonScalarExpr" => "json_scalar",
        "JsonSerializeExpr" => "json_serialize",
        "JsonParseExpr" => "json",
        "JsonArrayConstructor" | "JsonArrayQueryConstructor" => "json_array",
        "JsonObjectConstructor" => "json_object",
        "JsonArrayAgg" => "json_arrayagg",
        "JsonObjectAgg" => "json_objectagg",
        "JsonTable" => "json_table",
        "MergeSupportFunc" => "merge_action",
        "JsonFuncExpr" => match node.get("op").and_then(Value::as_str) {
            Some("JSON_EXISTS_OP") => "json_exists",
            Some("JSON_QUERY_OP") => "json_query",
            _ => "json_value",
        },
        _ => return None,
    })
}

/// A relation's name as the server resolves it: an unquoted name is folded to lower case by
/// the parser already, a quoted one (`"Secret"`) keeps its case.
fn written_relation_name(map: &Map<String, Value>) -> String {
    let part = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
    let (schema, name) = (part("schemaname"), part("relname"));
    if schema.is_empty() {
        name.to_owned()
    } else {
        format!("{schema}.{name}")
    }
}

fn call_of(map: &Map<String, Value>) -> Call<'_> {
    let mut parts = string_nodes(map.get("funcname"));
    let name = parts.pop().unwrap_or_default();
    // `catalog.schema.name` names the schema just before the function.
    let schema = parts.pop();
    let mut args = Vec::new();
    let mut named = Vec::new();
    for arg in map
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match arg.pointer("/node/NamedArgExpr") {
            Some(n) => named.push((
                n.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase(),
                n.get("arg").unwrap_or(&Value::Null),
            )),
            None => args.push(arg),
        }
    }
    Call {
        schema,
        name,
        args,
        named,
    }
}
