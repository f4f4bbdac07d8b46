//! Which relations reach the rows of an off-limits table without naming it: a parent whose
//! scan includes a child's rows, a partition that holds a protected table's rows, a view or
//! rule over it, a table whose deletes cascade into it. Names alone cannot tell: the links
//! are read from the database's catalog at login (`RelationLink`), and a statement naming
//! a relation that reaches an off-limits table is refused like one naming the table.

use std::collections::{HashMap, VecDeque};

use super::{off_limits_match, Analysis, Class, Refusal};

/// How one relation's use reaches another's rows, as the catalog records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// `to` inherits from `from` or is a partition of it (`pg_inherits`): a scan of
    /// `from` includes `to`'s rows, and `to`'s rows are `from`'s.
    Inherits,
    /// A view, materialized view or rule of `from` reads or writes `to` (`pg_rewrite`),
    /// or a row security policy of `from` reads it (`pg_policy`).
    Reads,
    /// `to` has a foreign key to `from` whose ON DELETE or ON UPDATE action changes `to`'s
    /// rows (CASCADE, SET NULL, SET DEFAULT): writing `from` writes `to`.
    Cascades,
}

/// One link of the catalog: using `from` may touch `to`'s rows. Names are
/// `schema.relation`, lowercased like the rules' patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationLink {
    pub kind: LinkKind,
    pub from: String,
    pub to: String,
}

/// An off-limits table a relation reaches, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    pub table: String,
    pub how: &'static str,
}

/// The relations that reach an off-limits table through the catalog's links: any use of
/// them, and a write (which cascades too).
#[derive(Debug, Default)]
pub struct OffLimitsReach {
    used: Reaching,
    written: Reaching,
}

/// Relations by `schema.relation` and by bare name (an unqualified name may resolve to any
/// of them).
#[derive(Debug, Default)]
struct Reaching {
    qualified: HashMap<String, Reached>,
    by_name: HashMap<String, Reached>,
}

impl OffLimitsReach {
    /// The relations that reach a table `patterns` put off limits, through `links`.
    pub fn new(patterns: &[String], links: &[RelationLink]) -> OffLimitsReach {
        if patterns.is_empty() {
            return OffLimitsReach::default();
        }
        // Reading a table does not cascade; reading a view over one that does is a read.
        let read_links: Vec<RelationLink> = links
            .iter()
            .filter(|l| l.kind != LinkKind::Cascades)
            .cloned()
            .collect();
        OffLimitsReach {
            used: Reaching::new(patterns, &read_links),
            written: Reaching::new(patterns, links),
        }
    }

    /// The off-limits table `relation` (a name as a statement writes it, lowercased)
    /// reaches, if any, when a statement of `class` names it.
    pub fn reached_by(&self, relation: &str, class: Class) -> Option<&Reached> {
        match class {
            Class::Read | Class::Session => self.used.reached_by(relation),
            _ => self.written.reached_by(relation),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.written.qualified.is_empty()
    }
}

impl Reaching {
    fn new(patterns: &[String], links: &[RelationLink]) -> Reaching {
        let off = |name: &str| patterns.iter().any(|p| off_limits_match(p, name));
        let mut reached: HashMap<String, Reached> = HashMap::new();
        // A protected table's partitions and children, at any depth, hold its rows (its
        // parents' other children hold their own).
        let mut queue: VecDeque<(String, Reached)> = links
            .iter()
            .filter(|l| l.kind == LinkKind::Inherits && off(&l.from))
            .map(|l| (l.to.clone(), reach(&l.from, "a partition or child of it")))
            .collect();
        while let Some((name, why)) = queue.pop_front() {
            if off(&name) || reached.contains_key(&name) {
                continue;
            }
            let below = links
                .iter()
                .filter(|l| l.kind == LinkKind::Inherits && l.from == name);
            queue.extend(below.map(|l| (l.to.clone(), reach(&why.table, why.how))));
            reached.insert(name, why);
        }
        // Whatever scans, reads or writes into a protected table or one of those reaches
        // its rows, and so on up: parents, views, rules and policies over it, tables whose
        // writes cascade into it.
        let mut queue: VecDeque<(String, Reached)> = links
            .iter()
            .filter(|l| off(&l.to) || reached.contains_key(&l.to))
            .map(|l| {
                let table = reached
                    .get(&l.to)
                    .map_or(l.to.as_str(), |r| r.table.as_str());
                (l.from.clone(), reach(table, how(l.kind)))
            })
            .collect();
        while let Some((name, why)) = queue.pop_front() {
            if off(&name) || reached.contains_key(&name) {
                continue;
            }
            let above = links.iter().filter(|l| l.to == name);
            queue.extend(above.map(|l| (l.from.clone(), reach(&why.table, how(l.kind)))));
            reached.insert(name, why);
        }
        let by_name = reached
            .iter()
            .map(|(name, why)| (bare(name).to_owned(), why.clone()))
            .collect();
        Reaching {
            qualified: reached,
            by_name,
        }
    }

    fn reached_by(&self, relation: &str) -> Option<&Reached> {
        let parts: Vec<&str> = relation.rsplitn(3, '.').collect();
        match parts[..] {
            [name] => self.by_name.get(name),
            [name, schema, ..] => self.qualified.get(&format!("{schema}.{name}")),
            [] => None,
        }
    }
}

fn reach(table: &str, how: &'static str) -> Reached {
    Reached {
        table: table.to_owned(),
        how,
    }
}

/// How a relation linked to one that holds protected rows reaches them.
fn how(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Inherits => "its scans include its rows",
        LinkKind::Reads => "a view, rule or policy reads it",
        LinkKind::Cascades => "its writes cascade into it",
    }
}

fn bare(qualified: &str) -> &str {
    qualified.rsplit('.').next().unwrap_or(qualified)
}

/// Refuses a statement that names a relation reaching an off-limits table (rule
/// `off_limits`), as if it named the table.
pub fn check_off_limits_reach(reach: &OffLimitsReach, analysis: &Analysis) -> Result<(), Refusal> {
    if reach.is_empty() {
        return Ok(());
    }
    for relation in analysis.facts.relations.iter() {
        if let Some(why) = reach.reached_by(relation, analysis.class) {
            return Err(Refusal {
                rule: "off_limits",
                message: format!(
                    "lockbox: touching {relation}, which reaches {} ({}), is not allowed on this database (rule off_limits)",
                    why.table, why.how
                ),
            });
        }
    }
    Ok(())
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
        ];
        let reach = OffLimitsReach::new(&["hr.*".into()], &links);
        for (relation, table) in [
            ("base", "hr.bonus"),
            ("public.top", "hr.bonus"),
            ("public.pay_p1", "hr.pay"),
            ("pay_p1a", "hr.pay"),
            ("v2", "hr.bonus"),
            ("public.regions", "hr.staff"),
        ] {
            let reached = reach.reached_by(relation, Class::Write).expect(relation);
            assert_eq!(reached.table, table, "{relation}");
        }
        for relation in [
            "sibling",
            "public.open_view",
            "hr.bonus",
            "other.base",
            "items",
        ] {
            assert!(
                reach.reached_by(relation, Class::Write).is_none(),
                "{relation}"
            );
        }
        // Reading a table whose deletes would cascade into a protected one reads nothing of it.
        assert!(reach.reached_by("depts", Class::Read).is_none());
        assert!(reach.reached_by("regions", Class::Read).is_none());
        assert!(reach.reached_by("v2", Class::Read).is_some());
        assert!(OffLimitsReach::new(&[], &links).is_empty());
    }
}
