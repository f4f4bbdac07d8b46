//! The whole fleet's trail, read back from the PostgreSQL audit sink's table: every node
//! ships its own chain there (`pg_sink.rs`), so the table is the one place that holds all
//! of them. Same filters as the local reader (`AuditQuery::matches`), as SQL; records in
//! the order the table received them (`arrival.rs`: a cursor then has nothing behind it
//! that a lagging node can still ship), each naming its node. As fresh as the sink: a
//! node's records appear once its sink shipped them (its lag shows in `/v1/cluster`).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::pg_sink::connect_keeping;
use super::{AuditError, AuditQuery};
use crate::config::PgSink;

/// A record's node: the one it names, else (records written before nodes were named)
/// the sink's `proxy_id` it was shipped under.
const NODE: &str = "coalesce(record->>'node', proxy_id)";

type Param = Box<dyn ToSql + Sync + Send>;

/// A WHERE clause and its parameters, built from a query's filters.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    /// The next parameter's placeholder, bound to `value`.
    fn bind(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    /// A clause no row passes, for a filter no record can match.
    fn nothing(&mut self) {
        self.clauses.push("FALSE".into());
    }

    fn equals(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            // PostgreSQL refuses a NUL in a text parameter (the whole read failed, a 503);
            // no column holds one, so like the local file's filter it matches nothing.
            if v.contains('\0') {
                self.nothing();
                return;
            }
            let p = self.bind(Box::new(v.clone()));
            self.clauses.push(format!("{column} = {p}"));
        }
    }

    fn of(query: &AuditQuery, table: &str, order: Order) -> Filter {
        let mut f = Filter::default();
        f.equals("request_id", &query.request);
        f.equals("\"database\"", &query.database);
        if let Some(databases) = &query.within {
            let p = f.bind(Box::new(databases.clone()));
            f.clauses.push(format!("\"database\" = ANY({p})"));
        }
        f.equals("session_id", &query.session);
        f.equals("engineer", &query.engineer);
        f.equals("record->>'kind'", &query.kind);
        if query.outcome.is_some() {
            f.clauses.push("\"type\" = 'outcome'".into());
            f.equals("record->>'status'", &query.outcome);
        }
        if let Some(text) = &query.text {
            if text.contains('\0') {
                // As above: no statement holds a NUL (the protocol ends its text at one).
                f.nothing();
            } else {
                let p = f.bind(Box::new(text.clone()));
                // As the file's filter: a clipped statement's kept names count too.
                f.clauses.push(format!(
                    "(strpos(record->>'statement', {p}) > 0 OR EXISTS (SELECT 1 FROM \
                     jsonb_array_elements_text(coalesce(record->'statement_clipped'->'relations', '[]') \
                     || coalesce(record->'statement_clipped'->'functions', '[]') \
                     || coalesce(record->'statement_clipped'->'fields', '[]')) AS kept(name) \
                     WHERE strpos(kept.name, {p}) > 0))"
                ));
            }
        }
        for (bound, op) in [(query.since, ">="), (query.until, "<=")] {
            let Some(at) = bound else { continue };
            // An age can reach before year 1 (`since=3000000d`), whose RFC 3339 text
            // (`-6188-…`) PostgreSQL does not read: every record is after it, none before.
            if chrono::Datelike::year(&at) < 1 {
                if op == "<=" {
                    f.nothing();
                }
                continue;
            }
            // Records hold microseconds and the file's filter compares to the nanosecond;
            // PostgreSQL would round a finer bound to the nearest microsecond (half to
            // even), taking in a record just outside it. A `since` goes up, an `until` down.
            let at = whole_micros(at, op == ">=");
            let p = f.bind(Box::new(at.to_rfc3339()));
            f.clauses
                .push(format!("\"time\" {op} ({p}::text)::timestamptz"));
        }
        let after = query
            .after_seq
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        match (after, &query.after_node) {
            // After one node's record in the fleet's order (paging). A cursor naming no
            // record leaves nothing after it.
            (Some(_), Some(node)) if node.contains('\0') => f.nothing(),
            (Some(seq), Some(node)) => {
                let node = f.bind(Box::new(node.clone()));
                let seq = f.bind(Box::new(seq));
                let columns = order.ascending();
                f.clauses.push(format!(
                    "({columns}) > (SELECT {columns} FROM {table} WHERE {NODE} = {node} \
                     AND seq = {seq} LIMIT 1)"
                ));
            }
            // Without a node: each node's records after that sequence number.
            (Some(seq), None) => {
                let seq = f.bind(Box::new(seq));
                f.clauses.push(format!("seq > {seq}"));
            }
            (None, _) => {}
        }
        f
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// `at` on a whole microsecond: the next one up (`up`) or down, unless it is on one.
/// (Checked arithmetic: `at` comes from a query string; a bound at the edge of chrono's
/// range stays as it is.)
fn whole_micros(at: DateTime<Utc>, up: bool) -> DateTime<Utc> {
    let below = i64::from(at.timestamp_subsec_nanos() % 1000);
    let step = if up { 1000 - below } else { -below };
    if below == 0 {
        return at;
    }
    at.checked_add_signed(chrono::Duration::nanoseconds(step))
        .unwrap_or(at)
}

/// The fleet's order: the table's arrival order, or time order on a table without the
/// arrival column (one the sink's role could not alter: `arrival.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Arrival,
    Time,
}

impl Order {
    async fn of(client: &tokio_postgres::Client, sink: &PgSink) -> Result<Order, AuditError> {
        let arrival = super::arrival::has_column(client, &sink.table)
            .await
            .map_err(db_error)?;
        Ok(if arrival { Order::Arrival } else { Order::Time })
    }

    /// The columns a row's place is given by, in order.
    fn ascending(self) -> String {
        match self {
            Order::Arrival => super::arrival::COLUMN.into(),
            Order::Time => format!("\"time\", {NODE}, seq"),
        }
    }

    fn descending(self) -> String {
        match self {
            Order::Arrival => format!("{} DESC", super::arrival::COLUMN),
            Order::Time => format!("\"time\" DESC, {NODE} DESC, seq DESC"),
        }
    }
}

fn db_error(e: tokio_postgres::Error) -> AuditError {
    AuditError::Database {
        message: crate::store::pg::error_text(&e),
    }
}

/// Longest a read of the audit database may wait: for a page, the whole query; for a
/// download, the query's start and each gap between two rows. A locked table or a stalled
/// server otherwise held the API request (and its caller) for as long as it lasted.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn stalled() -> AuditError {
    AuditError::Database {
        message: format!(
            "the audit database did not answer within {} s",
            READ_TIMEOUT.as_secs()
        ),
    }
}

/// `work`, or the stall error once it took longer than [`READ_TIMEOUT`].
async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, AuditError>>,
) -> Result<T, AuditError> {
    tokio::time::timeout(READ_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(stalled()))
}

/// Most reads of the audit database at once on this node (pages, request pages and
/// downloads; the turns live in [`PgSink::readers`]): each holds a connection, and without
/// a bound a burst of page views, or readers of a locked table, took every connection the
/// audit database has (the sink's own reconnect included). A read waits for its turn
/// within [`READ_TIMEOUT`].
pub(crate) const MAX_READERS: usize = 16;

/// A connection for one read; its place among the [`MAX_READERS`] is held by the
/// connection's task until the connection has ended.
struct Reader {
    client: tokio_postgres::Client,
}

impl std::ops::Deref for Reader {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

/// A connection to the audit database for reading. The server gives up too (a client
/// that timed out leaves no backend waiting on the lock behind it): a page's whole query
/// is bounded, a download's wait for a lock.
async fn client(sink: &PgSink, whole_query: bool) -> Result<Reader, AuditError> {
    // The semaphore is never closed; were it, no read could go on.
    let turn = sink
        .readers
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| stalled())?;
    let client = connect_keeping(sink, turn)
        .await
        .map_err(|e| AuditError::Database {
            message: e.to_string(),
        })?;
    // A little shorter than the client's bound: the server gives up first and ends the
    // backend, instead of leaving it behind a client that stopped waiting.
    let ms = READ_TIMEOUT
        .saturating_sub(Duration::from_secs(5))
        .as_millis();
    let limits = if whole_query {
        format!("SET lock_timeout = {ms}; SET statement_timeout = {ms}")
    } else {
        format!("SET lock_timeout = {ms}")
    };
    client.batch_execute(&limits).await.map_err(db_error)?;
    Ok(Reader { client })
}

/// The record of a row, naming its node.
fn record_of(row: &tokio_postgres::Row) -> Result<Value, AuditError> {
    let line: &str = row.try_get(0).map_err(db_error)?;
    let mut record: Value = serde_json::from_str(line).map_err(|e| AuditError::Database {
        message: format!("a record in the audit table is not JSON: {e}"),
    })?;
    if let Some(fields) = record.as_object_mut() {
        if !fields.contains_key("node") {
            let proxy_id: String = row.try_get(1).map_err(db_error)?;
            fields.insert("node".into(), Value::String(proxy_id));
        }
    }
    Ok(record)
}

/// Matching records in the fleet's order, at most `query.limit`.
pub(crate) async fn page(sink: &PgSink, query: &AuditQuery) -> Result<Vec<Value>, AuditError> {
    bounded(page_unbounded(sink, query)).await
}

async fn page_unbounded(sink: &PgSink, query: &AuditQuery) -> Result<Vec<Value>, AuditError> {
    let client = client(sink, true).await?;
    let order = Order::of(&client, sink).await?;
    let mut filter = Filter::of(query, &sink.table_sql, order);
    let limit = match query.limit {
        Some(l) => format!(
            " LIMIT {}",
            filter.bind(Box::new(i64::try_from(l).unwrap_or(i64::MAX)))
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT line, proxy_id FROM {}{} ORDER BY {}{limit}",
        sink.table_sql,
        filter.sql(),
        order.ascending()
    );
    let rows = client
        .query(&sql, &filter.params())
        .await
        .map_err(db_error)?;
    rows.iter().map(record_of).collect()
}

/// The newest `keep` matching records (oldest first) and how many match in all.
pub(crate) async fn newest(
    sink: &PgSink,
    query: &AuditQuery,
    keep: usize,
) -> Result<(VecDeque<Value>, usize), AuditError> {
    bounded(newest_unbounded(sink, query, keep)).await
}

async fn newest_unbounded(
    sink: &PgSink,
    query: &AuditQuery,
    keep: usize,
) -> Result<(VecDeque<Value>, usize), AuditError> {
    let client = client(sink, true).await?;
    let order = Order::of(&client, sink).await?;
    let mut filter = Filter::of(query, &sink.table_sql, order);
    let count_sql = format!("SELECT count(*) FROM {}{}", sink.table_sql, filter.sql());
    let total: i64 = client
        .query_one(&count_sql, &filter.params())
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    let limit = filter.bind(Box::new(i64::try_from(keep).unwrap_or(i64::MAX)));
    let sql = format!(
        "SELECT line, proxy_id FROM {}{} ORDER BY {} LIMIT {limit}",
        sink.table_sql,
        filter.sql(),
        order.descending()
    );
    let rows = client
        .query(&sql, &filter.params())
        .await
        .map_err(db_error)?;
    let mut out = VecDeque::with_capacity(rows.len());
    for row in rows.iter().rev() {
        out.push_back(record_of(row)?);
    }
    Ok((out, usize::try_from(total).unwrap_or(0)))
}

/// Every matching record in the fleet's order, as the server sends the rows: a download
/// of the whole trail holds a few rows in memory, not the trail.
pub(crate) async fn all(
    sink: &PgSink,
    query: &AuditQuery,
) -> Result<impl Stream<Item = Result<Value, AuditError>>, AuditError> {
    let (client, rows) = bounded(async {
        let client = client(sink, false).await?;
        let order = Order::of(&client, sink).await?;
        let filter = Filter::of(query, &sink.table_sql, order);
        let sql = format!(
            "SELECT line, proxy_id FROM {}{} ORDER BY {}",
            sink.table_sql,
            filter.sql(),
            order.ascending()
        );
        let rows = client
            .query_raw(&sql, filter.params())
            .await
            .map_err(db_error)?;
        Ok((client, rows))
    })
    .await?;
    // The client goes along with the rows: its connection must outlive them. A row that
    // does not come within READ_TIMEOUT ends the stream with the stall error.
    let rows = Box::pin(rows);
    Ok(futures::stream::unfold(
        Some((client, rows)),
        |state| async move {
            let (client, mut rows) = state?;
            match tokio::time::timeout(READ_TIMEOUT, rows.next()).await {
                Ok(None) => None,
                Ok(Some(row)) => {
                    let record = row.map_err(db_error).and_then(|r| record_of(&r));
                    Some((record, Some((client, rows))))
                }
                Err(_) => Some((Err(stalled()), None)),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: AuditQuery, expected: &str) {
        assert_eq!(Filter::of(&query, "t", Order::Arrival).sql(), expected);
    }

    #[test]
    fn each_filter_becomes_its_clause() {
        check(AuditQuery::default(), "");
        check(
            AuditQuery {
                engineer: Some("eve".into()),
                outcome: Some("error".into()),
                ..AuditQuery::default()
            },
            " WHERE engineer = $1 AND \"type\" = 'outcome' AND record->>'status' = $2",
        );
        check(
            AuditQuery {
                after_seq: Some(4),
                ..AuditQuery::default()
            },
            " WHERE seq > $1",
        );
        let cursor = AuditQuery {
            text: Some("x".into()),
            after_seq: Some(4),
            after_node: Some("node-2".into()),
            ..AuditQuery::default()
        };
        let paged = Filter::of(&cursor, "t", Order::Arrival);
        assert_eq!(paged.params.len(), 3);
        assert!(
            paged.sql().contains(&format!(
                "(arrival) > (SELECT arrival FROM t WHERE {NODE} = $2 AND seq = $3 LIMIT 1)"
            )),
            "{}",
            paged.sql()
        );
        // A table without the arrival column pages in time order.
        let by_time = Filter::of(&cursor, "t", Order::Time).sql();
        assert!(
            by_time.contains(&format!(
                "(\"time\", {NODE}, seq) > (SELECT \"time\", {NODE}, seq FROM t WHERE {NODE} = $2"
            )),
            "{by_time}"
        );
    }
}
