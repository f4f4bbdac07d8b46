//! What naming a relation reaches beyond it, which names alone cannot tell: a parent whose
//! scan includes a child's rows, a partition that holds a protected table's rows, a view or
//! rule over a table, a table whose deletes cascade into another; and the database's own
//! functions a relation runs when used (a view's expressions, a trigger, a column default,
//! a check). The links are read from the database's catalog at login (`RelationLink`); a
//! statement naming a relation that reaches an off-limits table is refused like one naming
//! the table (rule `off_limits`), and one naming a relation that runs a database function
//! like one calling it (rule `opaque_statement`).

use std::collections::{HashMap, VecDeque};

use super::rules::off_limits_match;
use super::{has_guardrails, Analysis, Class, Guardrails, Refusal};

/// How using one relation reaches another relation's rows or a function, as the catalog
/// records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// `to` inherits from `from` or is a partition of it (`pg_inherits`): a scan of
    /// `from` includes `to`'s rows, and `to`'s rows are `from`'s.
    Inherits,
    /// Any use of `from` reads `to`: a view or materialized view over it (`pg_rewrite`), a
    /// row security policy of `from` that reads it or calls it (`pg_policy`).
    Reads,
    /// Writing `from` writes or runs `to`: a rule on INSERT, UPDATE or DELETE of `from`; a
    /// trigger, default, check or index expression of `from` calling the function `to`. An
    /// empty `from`: any DDL runs `to` (an event trigger).
    OnWrite,
    /// Deleting from or updating `from` changes `to`'s rows: a foreign key of `to` whose
    /// action is CASCADE, SET NULL or SET DEFAULT.
    Cascades,
    /// `TRUNCATE from CASCADE` empties `to`: any foreign key of `to` to `from`. Deleting
    /// from or updating `from` also reads `to` (the key's check that no row of `to` still
    /// points at what goes).
    Truncates,
    /// Writing `from` reads `to`: a foreign key of `from` to `to`, whose check looks the
    /// new key up in `to` (its error tells whether a value is there).
    References,
}

/// One link of the catalog: using `from` may touch `to`. Relations are `schema.relation`,
/// functions `schema.function()`, lowercased like the rules' patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationLink {
    pub kind: LinkKind,
    pub from: String,
    pub to: String,
}

impl RelationLink {
    /// The name of a function as a link's `to`.
    pub fn function(schema: &str, name: &str) -> String {
        format!("{schema}.{name}()").to_lowercase()
    }
}

fn is_function(node: &str) -> bool {
    node.ends_with("()")
}

/// The protected table or the database function a relation reaches, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    pub target: String,
    pub how: &'static str,
}

/// What naming a relation reaches, from the database's catalog at login: off-limits tables
/// (under `off_limits`) and the database's own functions (under any guardrail).
#[derive(Debug, Default)]
pub struct CatalogReach {
    off_limits: Reach,
    functions: Reach,
    /// A function of the database an event trigger runs on DDL, under any guardrail.
    ddl_runs: Option<String>,
}

impl CatalogReach {
    pub fn new(rules: &Guardrails, links: &[RelationLink]) -> CatalogReach {
        let patterns = &rules.off_limits;
        let off = |node: &str| {
            !is_function(node)
                && (patterns.iter().any(|p| off_limits_match(p, node))
                    || reached_around_the_rules(node))
        };
        CatalogReach {
            off_limits: match patterns.is_empty() {
                true => Reach::default(),
                false => Reach::new(&off, links),
            },
            functions: match has_guardrails(rules) {
                true => Reach::new(&is_function, links),
                false => Reach::default(),
            },
            ddl_runs: links
                .iter()
                .find(|l| l.from.is_empty() && is_function(&l.to))
                .filter(|_| has_guardrails(rules))
                .map(|l| l.to.clone()),
        }
    }
}

/// Catalogs that what reaches them makes off limits too, wherever anything is: the
/// statistics and `pg_sequences` show every table's values (an attack review read a
/// protected column's histogram through a customer's view over `pg_stats`), and an UPDATE of
/// a view over `pg_settings` writes through its rule to `set_config` of any setting, the
/// search path included (a third review opened an off-limits schema so).
fn reached_around_the_rules(node: &str) -> bool {
    node == "pg_catalog.pg_settings"
        || (node.starts_with("pg_catalog.") && super::classify::shows_every_tables_values(node))
}

/// The relations that reach a target through the catalog's links, by what a statement
/// does with them: read them; write them (rules, triggers, defaults and checks run); delete
/// or update rows (foreign keys' actions cascade too); truncate or drop them (every
/// referencing table goes too, with CASCADE).
#[derive(Debug, Default)]
struct Reach {
    used: Reaching,
    written: Reaching,
    changed: Reaching,
    truncated: Reaching,
}

impl Reach {
    fn new(target: &dyn Fn(&str) -> bool, links: &[RelationLink]) -> Reach {
        use LinkKind::*;
        let up_to = |kinds: &[LinkKind]| -> Vec<RelationLink> {
            links
                .iter()
                .filter(|l| kinds.contains(&l.kind))
                .cloned()
                .collect()
        };
        // A foreign key's check reads the one table it looks in and changes nothing, so
        // it reaches a target only directly (or a partition of one), never through what
        // reaches one.
        let changed = Reaching::climbing(
            target,
            &up_to(&[Inherits, Reads, OnWrite, Cascades, Truncates, References]),
            None,
            &[Truncates, References],
        );
        Reach {
            used: Reaching::new(target, &up_to(&[Inherits, Reads])),
            // An INSERT cascades nothing, but a rule it fires may update or delete.
            written: Reaching::climbing(
                target,
                &up_to(&[Inherits, Reads, OnWrite, References]),
                Some(&changed),
                &[References],
            ),
            changed,
            truncated: Reaching::new(
                target,
                &up_to(&[Inherits, Reads, OnWrite, Cascades, Truncates]),
            ),
        }
    }

    /// What `relation` (a name as a statement writes it, lowercased) reaches, if anything,
    /// when `analysis`'s statement names it.
    fn reached_by(&self, relation: &str, analysis: &Analysis) -> Option<&Reached> {
        let facts = &analysis.facts;
        let scope = match analysis.class {
            _ if facts.truncate || facts.drop => &self.truncated,
            _ if facts.changes_rows => &self.changed,
            // Planning evaluates what is immutable, an INSERT's defaults among them (a fifth
            // review ran a database function so with a plain `EXPLAIN INSERT`): what an
            // EXPLAIN names counts as written.
            _ if facts.plan_only => &self.written,
            Class::Read | Class::Session => &self.used,
            // DDL can rewrite a table and re-check every key into and out of it (`ALTER
            // COLUMN … TYPE … USING`), or make a new name for what reaches a protected table
            // (a view, a rename) that the links read at login do not know: any link counts
            // (an attack review read and changed protected rows both ways).
            Class::Ddl | Class::Escalation(_) => {
                return self
                    .truncated
                    .reached_by(relation)
                    .or_else(|| self.changed.reached_by(relation))
                    .or_else(|| self.written.reached_by(relation));
            }
            _ => &self.written,
        };
        scope.reached_by(relation)
    }

    fn is_empty(&self) -> bool {
        self.truncated.qualified.is_empty()
    }
}

/// Relations by `schema.relation` and by bare name (an unqualified name may resolve to any
/// of them).
#[derive(Debug, Default)]
struct Reaching {
    qualified: HashMap<String, Reached>,
    by_name: HashMap<String, Reached>,
}

impl Reaching {
    fn new(target: &dyn Fn(&str) -> bool, links: &[RelationLink]) -> Reaching {
        Reaching::climbing(target, links, None, &[])
    }

    /// What reaches a target through `links`; with `changing`, also what writes through a
    /// rule into a relation `changing` holds (whose changed rows cascade into a target).
    /// Links of the kinds in `checks` reach only a target or its partitions and children.
    fn climbing(
        target: &dyn Fn(&str) -> bool,
        links: &[RelationLink],
        changing: Option<&Reaching>,
        checks: &[LinkKind],
    ) -> Reaching {
        let mut reached: HashMap<String, Reached> = HashMap::new();
        // The links by the relation they lead to, and inheritance by parent: each step of
        // the walks below is a lookup, not a pass over every link of a large catalog.
        let mut into: HashMap<&str, Vec<&RelationLink>> = HashMap::new();
        let mut children: HashMap<&str, Vec<&RelationLink>> = HashMap::new();
        for link in links {
            into.entry(&link.to).or_default().push(link);
            if link.kind == LinkKind::Inherits {
                children.entry(&link.from).or_default().push(link);
            }
        }
        // A protected table's partitions and children, at any depth, hold its rows (its
        // parents' other children hold their own).
        let mut queue: VecDeque<(String, Reached)> = links
            .iter()
            .filter(|l| l.kind == LinkKind::Inherits && target(&l.from))
            .map(|l| (l.to.clone(), reach(&l.from, "a partition or child of it")))
            .collect();
        while let Some((name, why)) = queue.pop_front() {
            if target(&name) || reached.contains_key(&name) {
                continue;
            }
            let below = children.get(name.as_str()).into_iter().flatten();
            queue.extend(below.map(|l| (l.to.clone(), reach(&why.target, why.how))));
            reached.insert(name, why);
        }
        // Whatever scans, reads, writes into or runs a target or one of those reaches it,
        // and so on up: parents, views, rules and policies over it, tables whose writes
        // cascade into it.
        let mut queue: VecDeque<(String, Reached)> = links
            .iter()
            .filter(|l| target(&l.to) || reached.contains_key(&l.to))
            .map(|l| {
                let first = reached.get(&l.to).map_or(l.to.as_str(), |r| &r.target);
                let how = match checks.contains(&l.kind) {
                    true => "a foreign key's check of it reads it",
                    false => how(l.kind, target(&l.to)),
                };
                (l.from.clone(), reach(first, how))
            })
            .collect();
        // A write rule's UPDATE or DELETE of a table whose changed rows cascade.
        let into_changing = links.iter().filter(|l| l.kind == LinkKind::OnWrite);
        queue.extend(into_changing.filter_map(|l| {
            let why = changing?.qualified.get(&l.to)?;
            Some((
                l.from.clone(),
                reach(
                    &why.target,
                    "a write rule of it changes rows that cascade into it",
                ),
            ))
        }));
        while let Some((name, why)) = queue.pop_front() {
            // An empty name is no relation: any DDL (see `ddl_runs`).
            if name.is_empty() || target(&name) || reached.contains_key(&name) {
                continue;
            }
            let above = into.get(name.as_str()).into_iter().flatten();
            let above = above.filter(|l| !checks.contains(&l.kind));
            queue.extend(above.map(|l| (l.from.clone(), reach(&why.target, how(l.kind, false)))));
            reached.insert(name, why);
        }
        // A name may hold dots (`public."v.x"`): its bare name is any part after a dot.
        let by_name = reached
            .iter()
            .flat_map(|(name, why)| {
                suffixes(name)
                    .skip(1)
                    .map(|bare| (bare.to_owned(), why.clone()))
            })
            .collect();
        Reaching {
            qualified: reached,
            by_name,
        }
    }

    /// What `relation` reaches: read as a bare name, or as qualified at any of its dots
    /// (`public.v.x` is `public."v.x"` or `"public.v".x`; `app.public.t` is `public.t` in
    /// database `app`).
    fn reached_by(&self, relation: &str) -> Option<&Reached> {
        self.by_name
            .get(relation)
            .or_else(|| suffixes(relation).find_map(|name| self.qualified.get(name)))
    }
}

/// `name` and each part of it after a dot: `a.b.c`, `b.c`, `c`.
fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name).chain(name.match_indices('.').map(move |(at, _)| &name[at + 1..]))
}

fn reach(target: &str, how: &'static str) -> Reached {
    Reached {
        target: target.to_owned(),
        how,
    }
}

/// How a relation linked to a target (`direct`) or to what reaches one reaches it.
fn how(kind: LinkKind, direct: bool) -> &'static str {
    match (kind, direct) {
        (LinkKind::Inherits, true) => "a parent of it",
        (LinkKind::Inherits, false) => "a parent of what reaches it",
        (LinkKind::Reads, true) => "a view or policy over it or calling it",
        (LinkKind::Reads, false) => "a view or policy over what reaches it",
        (LinkKind::OnWrite, true) => "a rule, trigger, default, check or index of it runs it",
        (LinkKind::OnWrite, false) => "its writes reach what reaches it",
        (LinkKind::Cascades, true) => "its deletes and updates cascade into it",
        (LinkKind::Cascades, false) => "its deletes and updates cascade into what reaches it",
        (LinkKind::Truncates, true) => "TRUNCATE … CASCADE of it empties it",
        (LinkKind::Truncates, false) => "TRUNCATE … CASCADE of it empties what reaches it",
        (LinkKind::References, _) => "a foreign key's check of it reads it",
    }
}

/// Refuses a statement that names a relation reaching an off-limits table (rule
/// `off_limits`) as if it named the table, and one naming a relation that runs one of the
/// database's own functions (rule `opaque_statement`) as if it called it.
pub fn check_reach(reach: &CatalogReach, analysis: &Analysis) -> Result<(), Refusal> {
    if let Some((relation, why)) = first_reaching(&reach.off_limits, analysis) {
        return Err(Refusal {
            rule: "off_limits",
            message: format!(
                "lockbox: touching {relation}, which reaches {} ({}), is not allowed on this database (rule off_limits)",
                why.target, why.how
            ),
        });
    }
    if let Some(function) = reach
        .ddl_runs
        .as_ref()
        .filter(|_| fires_event_triggers(analysis))
    {
        return Err(Refusal {
            rule: "opaque_statement",
            message: format!(
                "lockbox: DDL, which runs {} (an event trigger's function of this database, whose effect lockbox cannot check against its rules), is not allowed on this database (rule opaque_statement)",
                function.trim_end_matches("()")
            ),
        });
    }
    if let Some((relation, why)) = first_reaching(&reach.functions, analysis) {
        let function = why.target.trim_end_matches("()");
        let what = match function.strip_prefix("pg_catalog.") {
            Some("nextval" | "setval") => "a built-in given a sequence computed as it runs",
            Some(_) => "a built-in that runs SQL given as text, is judged by its arguments or is no plain read",
            None => "a function of this database",
        };
        return Err(Refusal {
            rule: "opaque_statement",
            message: format!(
                "lockbox: touching {relation}, which runs {function}, {what} ({}) whose effect lockbox cannot check against its rules, is not allowed on this database (rule opaque_statement)",
                why.how
            ),
        });
    }
    Ok(())
}

/// Whether the statement may fire event triggers: DDL (`CREATE`, `ALTER`, `SELECT … INTO`)
/// and the other utility statements that write (`REFRESH MATERIALIZED VIEW`…), not DML or
/// `COPY … FROM STDIN`.
fn fires_event_triggers(analysis: &Analysis) -> bool {
    use crate::sql::StatementKind as K;
    matches!(analysis.class, Class::Ddl | Class::Escalation(_))
        || analysis.kind == K::Ddl
        || (analysis.class == Class::Write && analysis.kind == K::Other && !analysis.facts.copy_in)
}

/// The first relation the statement names that reaches a target of `reach`, and how.
fn first_reaching<'a>(reach: &'a Reach, analysis: &'a Analysis) -> Option<(&'a str, &'a Reached)> {
    if reach.is_empty() || analysis.facts.share_lock_only {
        // A share lock reads and runs nothing of what it locks (pg_dump takes one on every
        // table it dumps, a view's base tables and a parent's children among them).
        return None;
    }
    analysis.facts.relations.iter().find_map(|relation| {
        reach
            .reached_by(relation, analysis)
            .map(|why| (relation.as_str(), why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: LinkKind, from: &str, to: &str) -> RelationLink {
        RelationLink {
            kind,
            from: from.into(),
            to: to.into(),
        }
    }

    /// A statement of `class`; a Write that `changes` rows (DELETE/UPDATE) or truncates.
    fn doing(class: Class, changes: bool, truncates: bool) -> Analysis {
        let mut analysis = Analysis::of(crate::sql::StatementKind::Other, class);
        analysis.facts.changes_rows = changes;
        analysis.facts.truncate = truncates;
        analysis
    }

    fn rules(off_limits: &[&str]) -> Guardrails {
        Guardrails {
            off_limits: off_limits.iter().map(|p| p.to_string()).collect(),
            ..Guardrails::default()
        }
    }

    #[test]
    fn a_view_over_the_statistics_reaches_them_wherever_anything_is_off_limits() {
        use LinkKind::*;
        let links = [
            link(Reads, "public.vst", "pg_catalog.pg_stats"),
            link(Reads, "public.vst2", "public.vst"),
            link(Reads, "public.vseq", "pg_catalog.pg_sequences"),
            link(Reads, "public.vcls", "pg_catalog.pg_class"),
            link(Reads, "public.myset", "pg_catalog.pg_settings"),
        ];
        let reach = CatalogReach::new(&rules(&["secret"]), &links).off_limits;
        for (relation, catalog) in [
            ("vst", "pg_catalog.pg_stats"),
            ("public.vst2", "pg_catalog.pg_stats"),
            ("vseq", "pg_catalog.pg_sequences"),
            // Written, its rule calls set_config with the row's name.
            ("myset", "pg_catalog.pg_settings"),
        ] {
            let reached = reach
                .reached_by(relation, &doing(Class::Read, false, false))
                .expect(relation);
            assert_eq!(reached.target, catalog, "{relation}");
        }
        let read = doing(Class::Read, false, false);
        assert!(reach.reached_by("vcls", &read).is_none());
        let no_rules = CatalogReach::new(&rules(&[]), &links).off_limits;
        assert!(no_rules.reached_by("vst", &read).is_none());
    }

    #[test]
    fn parents_children_views_and_cascades_reach_but_siblings_do_not() {
        use LinkKind::*;
        let links = [
            link(Inherits, "public.base", "hr.bonus"),
            link(Inherits, "public.base", "public.sibling"),
            link(Inherits, "public.top", "public.base"),
            link(Inherits, "hr.pay", "public.pay_p1"),
            link(Inherits, "public.pay_p1", "public.pay_p1a"),
            link(Reads, "public.v1", "public.base"),
            link(Reads, "public.v2", "public.v1"),
            link(Reads, "public.open_view", "public.sibling"),
            link(Cascades, "public.depts", "hr.staff"),
            link(Cascades, "public.regions", "public.depts"),
            link(Truncates, "public.sites", "hr.staff"),
            link(OnWrite, "public.inbox", "public.depts"),
            link(Reads, "public.v.x", "hr.bonus"),
            link(Reads, "x.y.vv", "hr.bonus"),
        ];
        let reach = CatalogReach::new(&rules(&["hr.*"]), &links).off_limits;
        for (relation, table) in [
            ("base", "hr.bonus"),
            ("public.top", "hr.bonus"),
            ("public.pay_p1", "hr.pay"),
            ("pay_p1a", "hr.pay"),
            ("v2", "hr.bonus"),
            ("public.regions", "hr.staff"),
            // Names with dots, however the statement's parts split.
            ("public.v.x", "hr.bonus"),
            ("v.x", "hr.bonus"),
            ("app.public.v.x", "hr.bonus"),
            ("x.y.vv", "hr.bonus"),
        ] {
            let reached = reach
                .reached_by(relation, &doing(Class::Write, true, false))
                .expect(relation);
            assert_eq!(reached.target, table, "{relation}");
        }
        for relation in [
            "sibling",
            "public.open_view",
            "hr.bonus",
            "other.base",
            "items",
        ] {
            assert!(
                reach
                    .reached_by(relation, &doing(Class::Write, true, false))
                    .is_none(),
                "{relation}"
            );
        }
        // A write rule that updates a table whose key cascades writes the protected table.
        let reached = reach.reached_by("inbox", &doing(Class::Write, false, false));
        assert_eq!(reached.map(|r| r.target.as_str()), Some("hr.staff"));
        // Only TRUNCATE … CASCADE empties a table whatever its key's action; a DELETE or
        // UPDATE reads the referencing table (the key's check: its error tells whether a
        // row there points at what goes), an INSERT does not.
        let checked = reach.reached_by("sites", &doing(Class::Write, true, false));
        assert_eq!(
            checked.map(|r| r.how),
            Some("a foreign key's check of it reads it")
        );
        assert!(reach
            .reached_by("sites", &doing(Class::Write, false, true))
            .is_some_and(|r| r.how.starts_with("TRUNCATE")));
        assert!(reach
            .reached_by("sites", &doing(Class::Write, false, false))
            .is_none());
        // An INSERT into a table whose deletes cascade into a protected one changes nothing of it.
        assert!(reach
            .reached_by("depts", &doing(Class::Write, false, false))
            .is_none());
        // Reading a table whose deletes would cascade into a protected one reads nothing of it.
        assert!(reach
            .reached_by("depts", &doing(Class::Read, false, false))
            .is_none());
        assert!(reach
            .reached_by("regions", &doing(Class::Read, false, false))
            .is_none());
        assert!(reach
            .reached_by("v2", &doing(Class::Read, false, false))
            .is_some());
        assert!(CatalogReach::new(&rules(&[]), &links).off_limits.is_empty());
    }

    #[test]
    fn a_foreign_keys_check_reads_the_one_table_it_looks_in() {
        use LinkKind::*;
        let links = [
            link(References, "public.orders", "public.secret"),
            link(References, "public.lines", "public.orders"),
            link(Reads, "public.orders_view", "public.orders"),
            link(Inherits, "public.secret", "public.secret_p1"),
            link(References, "public.notes", "public.secret_p1"),
        ];
        let reach = CatalogReach::new(&rules(&["secret"]), &links).off_limits;
        let insert = doing(Class::Write, false, false);
        let update = doing(Class::Write, true, false);
        for (relation, doing) in [
            ("orders", &insert),
            ("orders", &update),
            // An auto-updatable view writes the table whose key is checked.
            ("orders_view", &insert),
            // A partition holds the protected table's rows.
            ("notes", &insert),
        ] {
            let reached = reach.reached_by(relation, doing).expect(relation);
            assert_eq!(reached.target, "public.secret", "{relation}");
        }
        // Writing `lines` checks `orders`, which it does not write: nothing of `secret`.
        assert!(reach.reached_by("lines", &insert).is_none());
        assert!(reach.reached_by("lines", &update).is_none());
        // Reading, truncating or dropping the referencing table reads nothing of it.
        assert!(reach
            .reached_by("orders", &doing(Class::Read, false, false))
            .is_none());
        assert!(reach
            .reached_by("orders", &doing(Class::Write, false, true))
            .is_none());
    }

    #[test]
    fn views_over_functions_run_them_and_triggers_run_them_on_write() {
        use LinkKind::*;
        let f = RelationLink::function("app", "leak");
        let links = [
            link(Reads, "public.report", &f),
            link(Reads, "public.report_2", "public.report"),
            link(OnWrite, "public.orders", &f),
            link(Reads, "public.orders_view", "public.orders"),
            link(Cascades, "public.customers", "public.orders"),
            // A function named like an off-limits table is no table.
            link(
                Reads,
                "public.open",
                &RelationLink::function("hr", "secret"),
            ),
        ];
        let reach = CatalogReach::new(&rules(&["secret", "hr.*"]), &links);
        for (relation, class, changes) in [
            ("report", Class::Read, false),
            ("public.report_2", Class::Read, false),
            ("orders", Class::Write, false),
            ("orders_view", Class::Write, false),
            ("customers", Class::Write, true),
        ] {
            let doing = doing(class, changes, false);
            let reached = reach
                .functions
                .reached_by(relation, &doing)
                .expect(relation);
            assert_eq!(reached.target, "app.leak()", "{relation}");
        }
        for relation in ["orders", "orders_view", "customers", "items"] {
            assert!(
                reach
                    .functions
                    .reached_by(relation, &doing(Class::Read, false, false))
                    .is_none(),
                "{relation}"
            );
        }
        assert!(reach.off_limits.is_empty(), "{:?}", reach.off_limits);
        assert!(reach.ddl_runs.is_none());
        // An event trigger runs its function on any DDL.
        let mut with_event = links.to_vec();
        with_event.push(link(OnWrite, "", &RelationLink::function("app", "on_ddl")));
        let reach = CatalogReach::new(&rules(&["secret"]), &with_event);
        assert_eq!(reach.ddl_runs.as_deref(), Some("app.on_ddl()"));
        assert!(reach
            .functions
            .reached_by("", &doing(Class::Ddl, false, false))
            .is_none());
        // Without guardrails nothing is refused for running code.
        assert!(CatalogReach::new(&Guardrails::default(), &links)
            .functions
            .is_empty());
    }
}
