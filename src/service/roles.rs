//! The service's side of per-grant roles: the end of a grant drops its role, an extension
//! moves its validity, and a periodic pass drops the roles of grants that ended while a
//! drop failed or lockbox was down (their `VALID UNTIL` kept them out meanwhile).

use chrono::{DateTime, Utc};

use super::Lockbox;
use crate::config::Database;
use crate::ids::RequestId;
use crate::policy::Request;

impl Lockbox {
    /// The grant of `request` ended (revoked, cancelled, completed): its role goes, in the
    /// background, so a database that is down never holds up the change itself.
    pub(crate) fn end_grant_role(&self, request: &Request) {
        // Without a window no session was ever admitted, so no role exists.
        if request.access_expires_at.is_none() {
            return;
        }
        let Some(db) = self.database_of(request) else {
            return;
        };
        let provisioner = self.provisioner.clone();
        let id = request.id.clone();
        crate::runtime::spawn_control(async move {
            if let Err(e) = provisioner.end(&db, &id).await {
                tracing::warn!(request_id = %id, error = %e, "could not drop the grant's role yet; retried later");
            }
        });
    }

    /// An extension moved the grant's end: so does its role's `VALID UNTIL`.
    pub(crate) fn extend_grant_role(&self, request: &Request, until: DateTime<Utc>) {
        let Some(db) = self.database_of(request) else {
            return;
        };
        let provisioner = self.provisioner.clone();
        let id = request.id.clone();
        crate::runtime::spawn_control(async move {
            if let Err(e) = provisioner.extend(&db, &id, until).await {
                // The role then stops at the old end; new sessions move it (the safe side).
                tracing::warn!(request_id = %id, error = %e, "could not move the grant role's VALID UNTIL");
            }
        });
    }

    /// Drops every per-grant role whose grant is over; returns how many went.
    pub async fn reconcile_grant_roles(&self) -> usize {
        let config = self.config();
        let mut dropped = 0;
        for db in config.databases.values() {
            let existing = match self.provisioner.existing(db).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::debug!(database = %db.name, error = %e, "cannot list per-grant roles now");
                    continue;
                }
            };
            for id in existing {
                if self.grant_is_over(db, &id).await {
                    match self.provisioner.end(db, &id).await {
                        Ok(true) => dropped += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(request_id = %id, error = %e, "could not drop the grant's role yet")
                        }
                    }
                }
            }
        }
        self.provisioner.prune();
        dropped
    }

    /// Whether `id` is a grant of `db` (where its role's objects live) that is over. Roles
    /// of requests this store does not know (another deployment's) are left alone.
    async fn grant_is_over(&self, db: &Database, id: &RequestId) -> bool {
        match self.store.get(id).await {
            Ok(Some(request)) => {
                request.database == db.name && request.effective_status(Utc::now()).is_final()
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(request_id = %id, error = %e, "state store unavailable");
                false
            }
        }
    }

    fn database_of(&self, request: &Request) -> Option<Database> {
        let db = self.config().databases.get(&request.database).cloned();
        if db.is_none() {
            tracing::warn!(request_id = %request.id, database = %request.database, "database no longer configured: its grant roles are left to VALID UNTIL");
        }
        db
    }
}
