//! JIT rules: declarative checks every new request meets before anyone is asked. A rule
//! matches on the request (database, access level, duration) and the requester (MFA,
//! groups, name), and can deny at once, cap the duration, and set how many internal
//! (provider-side) and customer approvals the request needs. No I/O here.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AccessLevel;
use crate::config::{Role, User};

/// Which databases need customer approval (the seeds' "all / some / no environments").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    All,
    None,
    Only(BTreeSet<String>),
}

impl Protection {
    pub fn protects(&self, database: &str) -> bool {
        match self {
            Protection::All => true,
            Protection::None => false,
            Protection::Only(list) => list.contains(database),
        }
    }

    /// `all`, `none` or `DB,DB…`: the form `policy set --protect` takes and shows.
    pub fn parse(text: &str) -> Result<Protection, String> {
        match text.trim() {
            "all" => Ok(Protection::All),
            "none" => Ok(Protection::None),
            "" => Err("name `all`, `none` or a comma-separated list of databases".into()),
            list => Ok(Protection::Only(
                list.split(',')
                    .map(|d| d.trim().to_owned())
                    .filter(|d| !d.is_empty())
                    .collect(),
            )),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Protection::All => "all".into(),
            Protection::None => "none".into(),
            Protection::Only(list) => list.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

/// One JIT rule. Empty match lists match anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: String,
    pub databases: Vec<String>,
    pub access: Vec<AccessLevel>,
    /// Matches requests asking for at least this long.
    pub min_duration: Option<Duration>,
    /// Matches requesters whose credential does (true) or does not (false) carry MFA.
    pub mfa: Option<bool>,
    pub groups: Vec<String>,
    pub requesters: Vec<String>,
    /// Deny at once, with this reason shown to the requester.
    pub deny: Option<String>,
    pub max_duration: Option<Duration>,
    pub internal_approvals: u32,
    /// Who gives the internal approvals (default `support-lead`).
    pub internal_role: Role,
    pub customer_approvals: u32,
    /// How long the request may wait for its approvals.
    pub request_ttl: Option<Duration>,
}

impl Rule {
    pub fn new(name: &str) -> Rule {
        Rule {
            name: name.to_owned(),
            databases: Vec::new(),
            access: Vec::new(),
            min_duration: None,
            mfa: None,
            groups: Vec::new(),
            requesters: Vec::new(),
            deny: None,
            max_duration: None,
            internal_approvals: 0,
            internal_role: Role::SupportLead,
            customer_approvals: 0,
            request_ttl: None,
        }
    }

    fn matches(&self, ask: &Ask<'_>) -> bool {
        (self.databases.is_empty() || self.databases.iter().any(|d| d == ask.database))
            && (self.access.is_empty() || self.access.contains(&ask.access))
            && self.min_duration.is_none_or(|min| ask.duration >= min)
            && self.mfa.is_none_or(|mfa| ask.requester.mfa == mfa)
            && (self.groups.is_empty()
                || self.groups.iter().any(|g| ask.requester.groups.contains(g)))
            && (self.requesters.is_empty() || self.requesters.contains(&ask.requester.name))
    }
}

/// The rules in force when the configuration names none: no MFA, no access; write and
/// admin access need a support lead's approval first.
pub fn default_rules() -> Vec<Rule> {
    let mut mfa = Rule::new("require-mfa");
    mfa.mfa = Some(false);
    mfa.deny =
        Some("access requests need a credential signed in with multi-factor authentication".into());
    let mut write = Rule::new("write-needs-internal-approval");
    write.access = vec![AccessLevel::Write, AccessLevel::Admin];
    write.internal_approvals = 1;
    vec![mfa, write]
}

/// What is asked for, as the rules see it.
pub struct Ask<'a> {
    pub database: &'a str,
    pub access: AccessLevel,
    pub duration: Duration,
    pub requester: &'a User,
}

/// What the rules decided for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub duration: Duration,
    /// The duration asked for, when a rule capped it.
    pub capped_from: Option<Duration>,
    pub internal_approvals: u32,
    pub internal_role: Role,
    pub customer_approvals: u32,
    pub request_ttl: Option<Duration>,
    /// Names of the rules that matched.
    pub applied: Vec<String>,
}

/// A rule denied the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDenial {
    pub rule: String,
    pub reason: String,
}

/// Evaluates `rules` in order. Any matching deny wins; caps take the smallest; approval
/// counts take the largest. A protected database needs at least one customer approval;
/// an unprotected one at least one internal approval, so nothing is ever granted unasked.
pub fn evaluate(rules: &[Rule], ask: &Ask<'_>, protected: bool) -> Result<Plan, RuleDenial> {
    let mut plan = Plan {
        duration: ask.duration,
        capped_from: None,
        internal_approvals: 0,
        internal_role: Role::SupportLead,
        customer_approvals: 0,
        request_ttl: None,
        applied: Vec::new(),
    };
    for rule in rules.iter().filter(|r| r.matches(ask)) {
        if let Some(reason) = &rule.deny {
            return Err(RuleDenial {
                rule: rule.name.clone(),
                reason: reason.clone(),
            });
        }
        plan.applied.push(rule.name.clone());
        if let Some(max) = rule.max_duration.filter(|max| plan.duration > *max) {
            plan.capped_from.get_or_insert(ask.duration);
            plan.duration = max;
        }
        if rule.internal_approvals > plan.internal_approvals {
            plan.internal_approvals = rule.internal_approvals;
            plan.internal_role = rule.internal_role.clone();
        }
        plan.customer_approvals = plan.customer_approvals.max(rule.customer_approvals);
        plan.request_ttl = match (plan.request_ttl, rule.request_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if protected {
        plan.customer_approvals = plan.customer_approvals.max(1);
    } else {
        plan.customer_approvals = 0;
        plan.internal_approvals = plan.internal_approvals.max(1);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(mfa: bool, groups: &[&str]) -> User {
        User {
            name: "eve".into(),
            roles: vec![Role::Engineer],
            api_key_sha256: None,
            mfa,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            email: None,
        }
    }

    fn ask(user: &User, access: AccessLevel, hours: u64) -> Ask<'_> {
        Ask {
            database: "sales",
            access,
            duration: Duration::from_secs(hours * 3600),
            requester: user,
        }
    }

    #[test]
    fn defaults_deny_without_mfa_and_send_writes_to_a_lead() {
        let rules = default_rules();
        let no_mfa = user(false, &[]);
        let denied = evaluate(&rules, &ask(&no_mfa, AccessLevel::Read, 1), true);
        assert_eq!(denied.expect_err("denied").rule, "require-mfa");
        let eve = user(true, &[]);
        let read = evaluate(&rules, &ask(&eve, AccessLevel::Read, 1), true).expect("read");
        assert_eq!((read.internal_approvals, read.customer_approvals), (0, 1));
        let write = evaluate(&rules, &ask(&eve, AccessLevel::Write, 1), true).expect("write");
        assert_eq!((write.internal_approvals, write.customer_approvals), (1, 1));
        assert_eq!(write.internal_role, Role::SupportLead);
    }

    #[test]
    fn unprotected_databases_skip_the_customer_but_never_every_approval() {
        let eve = user(true, &[]);
        let plan =
            evaluate(&default_rules(), &ask(&eve, AccessLevel::Read, 1), false).expect("plan");
        assert_eq!((plan.internal_approvals, plan.customer_approvals), (1, 0));
    }

    #[test]
    fn caps_take_the_smallest_and_counts_the_largest() {
        let mut cap = Rule::new("cap-admin");
        cap.access = vec![AccessLevel::Admin];
        cap.max_duration = Some(Duration::from_secs(3600));
        cap.customer_approvals = 2;
        let mut contractors = Rule::new("contractors");
        contractors.groups = vec!["contractors".into()];
        contractors.max_duration = Some(Duration::from_secs(1800));
        contractors.internal_approvals = 2;
        let rules = vec![cap, contractors];
        let eve = user(true, &["contractors"]);
        let plan = evaluate(&rules, &ask(&eve, AccessLevel::Admin, 4), true).expect("plan");
        assert_eq!(plan.duration, Duration::from_secs(1800));
        assert_eq!(plan.capped_from, Some(Duration::from_secs(4 * 3600)));
        assert_eq!((plan.internal_approvals, plan.customer_approvals), (2, 2));
        assert_eq!(plan.applied, vec!["cap-admin", "contractors"]);
        let staff = user(true, &[]);
        let read = evaluate(&rules, &ask(&staff, AccessLevel::Read, 4), true).expect("plan");
        assert!(read.applied.is_empty() && read.capped_from.is_none());
    }

    #[test]
    fn protection_parses_all_none_and_lists() {
        assert_eq!(Protection::parse("all"), Ok(Protection::All));
        assert_eq!(Protection::parse("none"), Ok(Protection::None));
        let some = Protection::parse("sales, hr").expect("list");
        assert!(some.protects("hr") && !some.protects("ops"));
        assert_eq!(some.describe(), "hr,sales");
        assert!(Protection::parse(" ").is_err());
    }
}
