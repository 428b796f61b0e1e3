//! Applies committed entries to the [`ClusterState`] and keeps its
//! snapshots.
//!
//! The state lives in memory and is published on a watch channel, so the
//! rest of the broker reads the committed cluster state without touching
//! Raft. A snapshot is the bincode of the state with the log id it
//! covers, stored in `raft.snapshot` (replaced atomically) so that a
//! restart starts from it and replays only the log after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::TypeConfig;
use crate::cluster::state::{ClusterState, Outcome};
use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

type NodeIdRaw = u64;

const SNAPSHOT: MetaKind = MetaKind {
    magic: *b"SPRS",
    // 2: partitions carry replicas, in-sync sets and leader epochs.
    // 3: groups may be queue-mode groups (their settings).
    // 4: lock sessions and the lock table.
    // 5: users, access rules and quotas.
    version: 5,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeIdRaw>>,
    membership: StoredMembership<NodeIdRaw, BasicNode>,
    state: ClusterState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeIdRaw, BasicNode>,
    data: Vec<u8>,
}

/// The state machine of one broker.
pub struct StateMachine {
    path: PathBuf,
    applied: Applied,
    published: watch::Sender<Arc<ClusterState>>,
    /// Taken for writing while a new state is published; a broker holds it
    /// for reading from "may I write this partition?" to the append (see
    /// [`ApplyFence`]).
    fence: ApplyFence,
}

/// Orders writes against state changes: once a new state is published,
/// every write that was allowed by the old one has already been appended.
/// A partition's new holder relies on this: when the old holder shows the
/// epoch of a `BeginMove`, nothing more can land in its copy.
#[derive(Clone, Debug, Default)]
pub struct ApplyFence(Arc<parking_lot::RwLock<()>>);

impl ApplyFence {
    /// Held while a write is checked against the state and appended.
    pub fn hold(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.0.read()
    }
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeIdRaw> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from the stored snapshot
    /// if there is one. `initial` is the state of a cluster with no
    /// history (it carries the configured lease TTL).
    pub fn open(
        dir: &Path,
        initial: ClusterState,
        fence: ApplyFence,
    ) -> Result<(StateMachine, watch::Receiver<Arc<ClusterState>>), crate::storage::StorageError>
    {
        let path = dir.join("raft.snapshot");
        let snapshot: Option<StoredSnapshot> = meta_file::read(&path, SNAPSHOT)?;
        let applied = match &snapshot {
            Some(s) => {
                decode_state(&s.data).map_err(|reason| crate::storage::StorageError::Metadata {
                    path: path.clone(),
                    reason,
                })?
            }
            None => Applied {
                state: initial,
                ..Applied::default()
            },
        };
        let (published, watcher) = watch::channel(Arc::new(applied.state.clone()));
        Ok((
            StateMachine {
                path,
                applied,
                published,
                fence,
            },
            watcher,
        ))
    }

    fn publish(&self) {
        let _writes_done = self.fence.0.write();
        self.published
            .send_replace(Arc::new(self.applied.state.clone()));
    }
}

/// Stores a snapshot durably, off the async workers.
async fn store(path: PathBuf, snapshot: StoredSnapshot) -> Result<(), StorageError<NodeIdRaw>> {
    crate::simulation::spawn_blocking(move || {
        meta_file::write(&path, SNAPSHOT, &snapshot, Durability::Synced)
    })
    .await
    .map_err(sm_err)?
    .map_err(sm_err)
}

fn decode_state(data: &[u8]) -> Result<Applied, String> {
    bincode::serde::decode_from_slice(data, bincode::config::standard())
        .map(|(a, _)| a)
        .map_err(|e| format!("snapshot does not decode: {e}"))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotOf;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeIdRaw>>,
            StoredMembership<NodeIdRaw, BasicNode>,
        ),
        StorageError<NodeIdRaw>,
    > {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeIdRaw>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::Unchanged,
                EntryPayload::Normal(command) => {
                    let outcome = self.applied.state.apply(command);
                    if outcome == Outcome::Applied {
                        crate::metrics::PLACEMENT_CHANGES.inc();
                        tracing::info!(
                            index = entry.log_id.index,
                            ?command,
                            epoch = self.applied.state.placement_epoch,
                            "cluster state changed"
                        );
                    }
                    outcome
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Outcome::Applied
                }
            };
            outcomes.push(outcome);
        }
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotOf {
            applied: self.applied.clone(),
            path: self.path.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeIdRaw>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeIdRaw, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeIdRaw>> {
        let data = snapshot.into_inner();
        let applied = decode_state(&data).map_err(sm_err)?;
        store(
            self.path.clone(),
            StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )
        .await?;
        self.applied = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeIdRaw>> {
        let path = self.path.clone();
        let stored: Option<StoredSnapshot> =
            crate::simulation::spawn_blocking(move || meta_file::read(&path, SNAPSHOT))
                .await
                .map_err(sm_err)?
                .map_err(sm_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot of the state as it was when the builder was made,
/// while the state machine goes on applying.
pub struct SnapshotOf {
    applied: Applied,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotOf {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeIdRaw>> {
        let data = bincode::serde::encode_to_vec(&self.applied, bincode::config::standard())
            .map_err(sm_err)?;
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: match last {
                Some(l) => format!("{}-{}", l.leader_id, l.index),
                None => "empty".to_string(),
            },
        };
        // Stored before it is offered, so the log before it can be purged.
        store(
            self.path.clone(),
            StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
