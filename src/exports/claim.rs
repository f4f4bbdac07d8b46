//! A run of a schedule is claimed in the state store before it starts, so however many
//! nodes find it due, one runs it. The claim is a lease the running node renews; a node
//! that dies mid-run stops renewing and the next node to find the run due takes it over.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use crate::store::{Store, StoreError};

/// How long a claim holds without renewal: long enough that a store hiccup does not hand
/// a live run to another node, short enough that a dead node's run is taken over soon.
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// How often the running node renews its claim (well within the lease).
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// This node's claim on one schedule's run.
pub(super) struct StoreClaim {
    store: Store,
    schedule: String,
    node: String,
}

impl StoreClaim {
    /// The claim, or `None` when another node holds one that has not lapsed.
    pub(super) async fn take(
        store: &Store,
        schedule: &str,
        node: &str,
    ) -> Result<Option<StoreClaim>, StoreError> {
        if !store
            .claim_export_run(schedule, node, Utc::now(), LEASE)
            .await?
        {
            return Ok(None);
        }
        Ok(Some(StoreClaim {
            store: store.clone(),
            schedule: schedule.to_owned(),
            node: node.to_owned(),
        }))
    }

    /// Runs `work`, renewing the claim while it runs.
    pub(super) async fn hold<F: Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep(RENEW_EVERY) => self.renew().await,
            }
        }
    }

    async fn renew(&self) {
        match self
            .store
            .claim_export_run(&self.schedule, &self.node, Utc::now(), LEASE)
            .await
        {
            Ok(true) => {}
            // The run goes on: its result is recorded compare-and-set on this node's
            // watermark, and another node exports its own trail, so nothing is doubled.
            Ok(false) => {
                tracing::warn!(schedule = %self.schedule, "another node took over an export run's lapsed claim")
            }
            Err(e) => {
                tracing::warn!(schedule = %self.schedule, error = %e, "could not renew an export run's claim")
            }
        }
    }

    /// Lets go of the claim; one that cannot be let go of lapses by itself.
    pub(super) async fn release(self) {
        if let Err(e) = self
            .store
            .release_export_run(&self.schedule, &self.node)
            .await
        {
            tracing::warn!(schedule = %self.schedule, error = %e, "could not release an export run's claim");
        }
    }
}

/// Where this node's runs of a schedule go. On a shared store every node exports its own
/// trail (its own sequence numbers), into a folder of its own under the target, so runs
/// of two nodes never share a name and each folder verifies as one trail's runs.
pub(super) fn node_target(target: &str, node: &str, shared: bool) -> PathBuf {
    if !shared {
        return Path::new(target).to_owned();
    }
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // `.` and `..` (and hidden names, which verify skips) are no folder of a node.
    let safe = if safe.trim_start_matches('.').is_empty() || safe.starts_with('.') {
        format!("node-{safe}")
    } else {
        safe
    };
    Path::new(target).join(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_a_folder_of_its_own_on_a_shared_store() {
        let check = |node: &str, shared: bool, expected: &str| {
            assert_eq!(
                node_target("/exports", node, shared),
                Path::new(expected),
                "{node}"
            );
        };
        check("node-1", false, "/exports");
        check("node-1", true, "/exports/node-1");
        check("eu/1 x", true, "/exports/eu_1_x");
        check("..", true, "/exports/node-..");
        check(".hidden", true, "/exports/node-.hidden");
    }
}
