//! Where `audit list`, the API and the admin center read the trail: the whole fleet's from
//! the PostgreSQL audit sink's table when the sink is configured, else this node's file
//! (with its rotated segments). Same filters, paging and answers either way.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{fleet, read_records, visit_records, AuditError, AuditQuery};
use crate::config::{Config, PgSink};

pub(crate) enum TrailSource {
    /// This node's trail: its active file.
    Local(PathBuf),
    /// Every node's trail, in the audit database.
    Fleet(Box<PgSink>),
}

impl TrailSource {
    /// The sink's table when `config` has one, else the trail whose active file is `local`.
    pub(crate) fn of(config: &Config, local: &Path) -> TrailSource {
        match &config.audit_pg_sink {
            Some(sink) => TrailSource::Fleet(Box::new(sink.clone())),
            None => TrailSource::Local(local.to_owned()),
        }
    }

    /// Whether paging needs the node of the last record beside its `seq`.
    pub(crate) fn is_fleet(&self) -> bool {
        matches!(self, TrailSource::Fleet(_))
    }

    /// Matching records, oldest first, at most `query.limit`.
    pub(crate) async fn page(&self, query: AuditQuery) -> Result<Vec<Value>, AuditError> {
        match self {
            TrailSource::Fleet(sink) => fleet::page(sink, &query).await,
            TrailSource::Local(path) => {
                let path = path.clone();
                blocking(move || read_records(&path, &query)).await
            }
        }
    }

    /// The newest `keep` matching records (oldest first) and how many match in all.
    pub(crate) async fn newest(
        &self,
        query: AuditQuery,
        keep: usize,
    ) -> Result<(VecDeque<Value>, usize), AuditError> {
        match self {
            TrailSource::Fleet(sink) => fleet::newest(sink, &query, keep).await,
            TrailSource::Local(path) => {
                let path = path.clone();
                blocking(move || {
                    let mut kept = VecDeque::with_capacity(keep.min(1024));
                    let mut total = 0;
                    visit_records(&path, &query, |record| {
                        total += 1;
                        if kept.len() == keep {
                            kept.pop_front();
                        }
                        kept.push_back(record);
                        true
                    })
                    .map(|()| (kept, total))
                })
                .await
            }
        }
    }

    /// Every matching record in order, sent as read (a download holds a few records, not
    /// the trail); an error ends the stream with it.
    pub(crate) fn stream(&self, query: AuditQuery) -> mpsc::Receiver<Result<Value, AuditError>> {
        let (tx, rx) = mpsc::channel(64);
        match self {
            TrailSource::Fleet(sink) => {
                let sink = sink.as_ref().clone();
                tokio::spawn(async move {
                    let rows = match fleet::all(&sink, &query).await {
                        Ok(rows) => rows,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let mut rows = Box::pin(rows);
                    while let Some(record) = rows.next().await {
                        let failed = record.is_err();
                        match tokio::time::timeout(UNREAD_LIMIT, tx.send(record)).await {
                            Ok(Ok(())) if !failed => {}
                            Ok(_) => return,
                            Err(_) => {
                                // The client stopped reading: the rows (and with them the
                                // audit database's connection and this read's turn among
                                // the readers) go now, not when the client hangs up; the
                                // download then ends in an error, never looking whole.
                                drop(rows);
                                let _ = tx.send(Err(unread())).await;
                                return;
                            }
                        }
                    }
                });
            }
            TrailSource::Local(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let read = visit_records(&path, &query, |r| tx.blocking_send(Ok(r)).is_ok());
                    if let Err(e) = read {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
            }
        }
        rx
    }
}

/// Longest a download of the fleet's trail waits for its client to take the next record.
const UNREAD_LIMIT: Duration = Duration::from_secs(30);

fn unread() -> AuditError {
    AuditError::Database {
        message: format!(
            "the download was not read for {} s: its read of the audit database ended",
            UNREAD_LIMIT.as_secs()
        ),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::Io {
            path: "audit trail".into(),
            message: format!("the reading task failed: {e}"),
        })?
}
