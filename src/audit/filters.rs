//! What an auditor may filter the trail by, read the same way by the CLI and the API:
//! times in three spellings (RFC 3339, a date, an age) and the closed sets of statement
//! kinds and outcome statuses. A value outside those sets is an error naming the valid
//! ones: a typo must never look like "no such records".

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer};

use super::reader::AuditQuery;

/// Statement kinds a statement record can have (`StatementKind`, lowercase).
pub const KINDS: &[&str] = &[
    "select", "insert", "update", "delete", "merge", "ddl", "other", "unknown", "empty",
];

/// Outcome statuses an outcome record can have (`OutcomeStatus`, snake_case).
pub const OUTCOMES: &[&str] = &["ok", "error", "not_executed", "interrupted", "refused"];

/// A filter value the trail cannot be searched by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`{0}` is not a time: use RFC 3339 (2026-11-30T09:00:00Z), a date (2026-11-30, that day 00:00 UTC) or an age (30m, 1h, 2d: that long ago)")]
    Time(String),
    #[error("unknown statement kind `{0}`; valid kinds: {kinds}", kinds = KINDS.join(", "))]
    Kind(String),
    #[error("unknown outcome `{0}`; valid outcomes: {outcomes}", outcomes = OUTCOMES.join(", "))]
    Outcome(String),
}

/// Reads `text` as a point in time: RFC 3339; a date (`2026-11-30`: that day 00:00 UTC);
/// or an age (`30m`, `1h`, `2d`, `1h 30m`: `now` minus that).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, FilterError> {
    let text = text.trim();
    let invalid = || FilterError::Time(text.to_owned());
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(invalid);
    }
    // An age must start with its number: humantime alone would also take words.
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let age = humantime::parse_duration(text).map_err(|_| invalid())?;
    let age = chrono::Duration::from_std(age).map_err(|_| invalid())?;
    now.checked_sub_signed(age).ok_or_else(invalid)
}

/// `--since` / `--until` on the command line.
pub fn time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    parse_time(text, Utc::now()).map_err(|e| e.to_string())
}

/// `since` / `until` in a query string: any spelling [`parse_time`] takes.
pub(crate) fn deserialize_time<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|t| parse_time(&t, Utc::now()))
        .transpose()
        .map_err(serde::de::Error::custom)
}

impl AuditQuery {
    /// Refuses a kind or outcome no record can have.
    pub(crate) fn validate(&self) -> Result<(), FilterError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| !KINDS.contains(k)) {
            return Err(FilterError::Kind(kind.to_owned()));
        }
        if let Some(outcome) = self.outcome.as_deref().filter(|o| !OUTCOMES.contains(o)) {
            return Err(FilterError::Outcome(outcome.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::OutcomeStatus;
    use crate::sql::StatementKind;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn check(text: &str, expected: &str) {
        let expected = DateTime::parse_from_rfc3339(expected).expect("expected");
        assert_eq!(
            parse_time(text, now()),
            Ok(expected.with_timezone(&Utc)),
            "{text}"
        );
    }

    #[test]
    fn times_are_read_as_rfc3339_dates_and_ages() {
        check("2026-11-23T09:00:00Z", "2026-11-23T09:00:00Z");
        check("2026-11-23T10:00:00+01:00", "2026-11-23T09:00:00Z");
        check("2026-11-29", "2026-11-29T00:00:00Z");
        check("30m", "2026-11-30T11:30:00Z");
        check("1h", "2026-11-30T11:00:00Z");
        check("2d", "2026-11-28T12:00:00Z");
        check("1h 30m", "2026-11-30T10:30:00Z");
        check(" 1h ", "2026-11-30T11:00:00Z");
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_it_takes() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-30 09:00",
            "1x",
            "-1h",
            "h",
        ] {
            let error = parse_time(bad, now()).expect_err(bad);
            assert!(error.to_string().contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_kinds_and_outcomes_are_errors_listing_the_valid_ones() {
        let query = |kind: Option<&str>, outcome: Option<&str>| AuditQuery {
            kind: kind.map(str::to_owned),
            outcome: outcome.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(query(Some("select"), Some("refused")).validate(), Ok(()));
        let kind = query(Some("bogus"), None).validate().expect_err("kind");
        assert_eq!(kind, FilterError::Kind("bogus".into()));
        assert!(kind.to_string().contains("select, insert"), "{kind}");
        let outcome = query(None, Some("failed")).validate().expect_err("outcome");
        assert!(
            outcome.to_string().contains("ok, error, not_executed"),
            "{outcome}"
        );
    }

    /// The lists are the enums' spellings: a new variant must be added here (the match
    /// stops compiling) and to the list (the assertion fails).
    #[test]
    fn the_lists_are_exactly_the_record_values() {
        let kind = |k: StatementKind| match k {
            StatementKind::Select
            | StatementKind::Insert
            | StatementKind::Update
            | StatementKind::Delete
            | StatementKind::Merge
            | StatementKind::Ddl
            | StatementKind::Other
            | StatementKind::Unknown
            | StatementKind::Empty => serde_json::to_value(k).expect("kind"),
        };
        let kinds: Vec<serde_json::Value> = [
            StatementKind::Select,
            StatementKind::Insert,
            StatementKind::Update,
            StatementKind::Delete,
            StatementKind::Merge,
            StatementKind::Ddl,
            StatementKind::Other,
            StatementKind::Unknown,
            StatementKind::Empty,
        ]
        .into_iter()
        .map(kind)
        .collect();
        assert_eq!(kinds, KINDS);
        let status = |s: OutcomeStatus| match s {
            OutcomeStatus::Ok
            | OutcomeStatus::Error
            | OutcomeStatus::NotExecuted
            | OutcomeStatus::Interrupted
            | OutcomeStatus::Refused => serde_json::to_value(s).expect("status"),
        };
        let statuses: Vec<serde_json::Value> = [
            OutcomeStatus::Ok,
            OutcomeStatus::Error,
            OutcomeStatus::NotExecuted,
            OutcomeStatus::Interrupted,
            OutcomeStatus::Refused,
        ]
        .into_iter()
        .map(status)
        .collect();
        assert_eq!(statuses, OUTCOMES);
    }

    #[test]
    fn a_query_string_takes_every_time_form_and_names_a_bad_one() {
        let query: AuditQuery =
            serde_urlencoded::from_str("since=2026-11-29&until=2026-11-30T01:00:00Z&limit=5")
                .expect("query");
        assert_eq!(
            query.since,
            Some(
                DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
                    .expect("t")
                    .with_timezone(&Utc)
            )
        );
        let relative: AuditQuery = serde_urlencoded::from_str("since=1h").expect("query");
        assert!(relative.since.is_some_and(|t| t < Utc::now()));
        let error = serde_urlencoded::from_str::<AuditQuery>("since=soon").expect_err("bad");
        assert!(
            error.to_string().contains("`soon` is not a time"),
            "{error}"
        );
        // What the client sends (RFC 3339) reads back unchanged.
        let text = serde_urlencoded::to_string(&query).expect("encode");
        let again: AuditQuery = serde_urlencoded::from_str(&text).expect("decode");
        assert_eq!((again.since, again.until), (query.since, query.until));
    }
}
