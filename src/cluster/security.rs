//! Users, access rules and quotas in a cluster: they live in the Raft
//! state, so every broker authenticates and authorizes alike. A change is
//! committed through the Raft leader; every broker copies each committed
//! state into its own [`Auth`] (and its files). The first broker that
//! finds the cluster's security unset and has users of its own (created
//! offline with `spool users add NAME --data DIR`) seeds it.

use std::sync::Arc;
use std::time::Duration;

use super::node::ClusterNode;
use super::state::{Command, Outcome};
use crate::auth::{Auth, AuthError, SecurityChange};

/// Why a change to the cluster's security did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SecurityChangeError {
    /// The change breaks a rule (no such user, an invalid name).
    #[error("{0}")]
    Refused(String),
    /// The control plane could not commit it.
    #[error("{0}")]
    Unavailable(String),
    /// Committed, but this broker could not save its copy.
    #[error(transparent)]
    Local(#[from] AuthError),
}

/// How long an admin change may wait for the control plane.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

impl ClusterNode {
    /// Commits `change`, waits until this broker has applied it, and
    /// copies the result into `auth` (so that this broker's next answer
    /// already knows it).
    pub async fn change_security(
        &self,
        auth: &Auth,
        change: SecurityChange,
    ) -> Result<(), SecurityChangeError> {
        let outcome = self
            .control
            .submit(Command::Security(change.clone()), CHANGE_TIMEOUT)
            .await
            .map_err(|e| SecurityChangeError::Unavailable(e.to_string()))?;
        if let Outcome::Refused(why) = outcome {
            return Err(SecurityChangeError::Refused(why));
        }
        self.wait_applied(|s| s.security.reflects(&change)).await;
        auth.replace(&self.state().security)?;
        Ok(())
    }

    /// Keeps `auth` a copy of the committed state's security, seeding an
    /// unset one from `auth`'s own users, until the node stops.
    pub async fn mirror_security(self: Arc<Self>, auth: Arc<Auth>) {
        let mut states = self.control.state.clone();
        let mut seeded = false;
        let mut first = true;
        loop {
            let state = states.borrow_and_update().clone();
            if state.security.initialized {
                // Only the first copy can overwrite files made offline;
                // later ones follow the cluster's own changes.
                let differs = first && {
                    let local = auth.data();
                    !local.is_empty()
                        && (local.users != state.security.users
                            || local.rules != state.security.rules
                            || local.quotas != state.security.quotas)
                };
                if differs {
                    tracing::warn!("this broker's users, rules and quotas differ from the cluster's: taking the cluster's (change them online with --addr; offline changes only seed a new cluster)");
                }
                first = false;
                if let Err(e) = auth.replace(&state.security) {
                    tracing::error!(error = %e, "cannot save the cluster's users, rules and quotas here");
                }
            } else if !seeded {
                let local = auth.data();
                if !local.is_empty() {
                    match self
                        .control
                        .submit(
                            Command::Security(SecurityChange::Seed(local)),
                            CHANGE_TIMEOUT,
                        )
                        .await
                    {
                        Ok(_) => {
                            seeded = true;
                            tracing::info!(
                                "seeded the cluster's users, rules and quotas from this broker's"
                            );
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot seed the cluster's users yet");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = states.changed() => if changed.is_err() { return },
            }
        }
    }
}
