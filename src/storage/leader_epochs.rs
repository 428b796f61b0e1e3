//! A partition's leader epochs: at which offset each leadership of the
//! partition began. Replication's answer to the divergence Kafka fixed in
//! KIP-101.
//!
//! A high watermark alone cannot tell a returning replica what to keep: a
//! replica that had records past the high watermark, some of which the new
//! leader never got, would either keep records that contradict the new
//! leader's (if it keeps its whole log) or lose acknowledged ones (if it
//! cuts to its own, possibly stale, high watermark). With epochs it asks
//! the leader where its latest epoch ended *on the leader*
//! ([`LeaderEpochs::end_of`]) and cuts exactly there: what both logs hold
//! for that epoch is the same, and everything after it is the new leader's.
//!
//! Kept as a list of `(epoch, start offset)` in `leader-epochs` in the
//! partition's directory (a metadata file `SPLE`, replaced atomically and
//! synced: it changes only with leadership, never per record). A leader
//! records its epoch at its log's end when it takes over; a follower
//! records each epoch the leader's fetch answers name before appending the
//! records of that epoch.

use std::path::{Path, PathBuf};

use spool_protocol::Offset;

use super::atomic_file::Durability;
use super::meta_file::{self, MetaKind};
use super::StorageError;

/// File name, in the partition's directory.
pub const FILE_NAME: &str = "leader-epochs";

const KIND: MetaKind = MetaKind {
    magic: *b"SPLE",
    version: 1,
};

/// One leadership: its epoch and the first offset written under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    /// The leader epoch (grows with every leadership change).
    pub epoch: u64,
    /// The first offset of that epoch.
    pub start: Offset,
}

/// The epochs of one partition, oldest first, epochs and starts both
/// increasing.
#[derive(Debug)]
pub struct LeaderEpochs {
    path: PathBuf,
    entries: Vec<EpochStart>,
}

impl LeaderEpochs {
    /// The epochs recorded in `dir` (none if there is no file yet).
    pub fn open(dir: &Path) -> Result<LeaderEpochs, StorageError> {
        let path = dir.join(FILE_NAME);
        // On disk: (epoch, start offset) pairs.
        let pairs: Vec<(u64, u64)> = meta_file::read(&path, KIND)?.unwrap_or_default();
        let entries: Vec<EpochStart> = pairs
            .into_iter()
            .map(|(epoch, start)| EpochStart {
                epoch,
                start: Offset(start),
            })
            .collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start <= w[1].start);
        if !ordered {
            return Err(StorageError::Metadata {
                path,
                reason: "leader epochs out of order".into(),
            });
        }
        Ok(LeaderEpochs { path, entries })
    }

    /// Every recorded epoch, oldest first.
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The latest epoch, if any was recorded.
    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start`. An epoch not newer than the
    /// latest is ignored (a follower hears of an epoch again with every
    /// fetch). Entries starting at or after `start` are dropped first:
    /// they describe records a truncation should already have removed,
    /// and a newer epoch owns everything from its start. Durable on return.
    pub fn assign(&mut self, epoch: u64, start: Offset) -> Result<(), StorageError> {
        if self.latest().is_some_and(|l| l.epoch >= epoch) {
            return Ok(());
        }
        self.entries.retain(|e| e.start < start);
        self.entries.push(EpochStart { epoch, start });
        self.save()
    }

    /// Where `epoch` ended in this log whose end is `log_end`: the start of
    /// the first later epoch, or `log_end` if `epoch` is the latest. With
    /// it, the epoch this log actually had there: the largest recorded
    /// epoch not above `epoch` (a replica may ask about an epoch this log
    /// never saw). `None` if `epoch` is older than every recorded one: the
    /// asker must start over from the log's start.
    pub fn end_of(&self, epoch: u64, log_end: Offset) -> Option<EpochStart> {
        let at = self.entries.partition_point(|e| e.epoch <= epoch);
        let floor = self.entries.get(at.checked_sub(1)?)?;
        let end = self.entries.get(at).map_or(log_end, |next| next.start);
        Some(EpochStart {
            epoch: floor.epoch,
            start: end,
        })
    }

    /// Forgets epochs that start at or past `end` (the log was cut back
    /// to `end`). Durable on return.
    pub fn truncate_from_end(&mut self, end: Offset) -> Result<(), StorageError> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start < end);
        if self.entries.len() == before {
            return Ok(());
        }
        self.save()
    }

    /// Forgets epochs wholly before `start` (retention removed their
    /// records); the epoch holding `start` now starts there. Durable on
    /// return.
    pub fn truncate_from_start(&mut self, start: Offset) -> Result<(), StorageError> {
        let holding = self.entries.partition_point(|e| e.start <= start);
        if holding <= 1 {
            return Ok(());
        }
        self.entries.drain(..holding - 1);
        if let Some(first) = self.entries.first_mut() {
            first.start = start;
        }
        self.save()
    }

    fn save(&self) -> Result<(), StorageError> {
        let pairs: Vec<(u64, u64)> = self.entries.iter().map(|e| (e.epoch, e.start.0)).collect();
        meta_file::write(&self.path, KIND, &pairs, Durability::Synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epochs: &LeaderEpochs) -> Vec<(u64, u64)> {
        epochs
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start.0))
            .collect()
    }

    #[test]
    fn assign_keeps_epochs_and_starts_increasing_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = LeaderEpochs::open(dir.path()).unwrap();
        assert_eq!(epochs.latest(), None);
        epochs.assign(1, Offset(0)).unwrap();
        epochs.assign(1, Offset(10)).unwrap(); // heard again: ignored
        epochs.assign(3, Offset(10)).unwrap();
        epochs.assign(2, Offset(20)).unwrap(); // older: ignored
        epochs.assign(5, Offset(30)).unwrap();
        assert_eq!(at(&epochs), vec![(1, 0), (3, 10), (5, 30)]);
        // A newer epoch starting inside older ones owns the rest.
        epochs.assign(6, Offset(12)).unwrap();
        assert_eq!(at(&epochs), vec![(1, 0), (3, 10), (6, 12)]);
        let reopened = LeaderEpochs::open(dir.path()).unwrap();
        assert_eq!(at(&reopened), vec![(1, 0), (3, 10), (6, 12)]);
    }

    #[test]
    fn end_of_an_epoch_is_the_start_of_the_next_or_the_log_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = LeaderEpochs::open(dir.path()).unwrap();
        for (epoch, start) in [(1, 0), (3, 10), (5, 30)] {
            epochs.assign(epoch, Offset(start)).unwrap();
        }
        let end = |e| epochs.end_of(e, Offset(42)).map(|s| (s.epoch, s.start.0));
        assert_eq!(end(0), None, "before every epoch");
        assert_eq!(end(1), Some((1, 10)));
        // An epoch this log never saw ends where the next one it knows begins,
        // and is answered with the epoch it had there.
        assert_eq!(end(2), Some((1, 10)));
        assert_eq!(end(3), Some((3, 30)));
        assert_eq!(end(4), Some((3, 30)));
        assert_eq!(end(5), Some((5, 42)));
        assert_eq!(end(9), Some((5, 42)));
    }

    #[test]
    fn truncations_from_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = LeaderEpochs::open(dir.path()).unwrap();
        for (epoch, start) in [(1, 0), (3, 10), (5, 30), (7, 50)] {
            epochs.assign(epoch, Offset(start)).unwrap();
        }
        epochs.truncate_from_end(Offset(30)).unwrap();
        assert_eq!(at(&epochs), vec![(1, 0), (3, 10)]);
        epochs.truncate_from_start(Offset(12)).unwrap();
        assert_eq!(at(&epochs), vec![(3, 12)]);
        epochs.truncate_from_start(Offset(5)).unwrap();
        assert_eq!(at(&epochs), vec![(3, 12)], "nothing before the first");
        assert_eq!(at(&LeaderEpochs::open(dir.path()).unwrap()), vec![(3, 12)]);
    }

    /// The KIP-101 case at this level: leader L and follower F both wrote
    /// epoch 1; L also had offsets F did not (uncommitted). Both die, F
    /// comes back first and leads epoch 2, taking writes; then L returns
    /// and asks F where L's latest epoch (1) ended: at F's end of epoch 1,
    /// which is where L must cut before fetching epoch 2 from F. A high
    /// watermark alone would have let L keep its extra epoch-1 records,
    /// whose offsets F has given to epoch-2 records.
    #[test]
    fn a_returning_leader_learns_where_to_cut() {
        let (l_dir, f_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut l = LeaderEpochs::open(l_dir.path()).unwrap();
        let mut f = LeaderEpochs::open(f_dir.path()).unwrap();
        l.assign(1, Offset(0)).unwrap();
        f.assign(1, Offset(0)).unwrap();
        // L wrote offsets 0..12, F had fetched 0..10 when both died.
        let l_end = Offset(12);
        // F leads epoch 2 from its end, 10, and takes writes up to 15.
        f.assign(2, Offset(10)).unwrap();
        let f_end = Offset(15);
        let asked = l.latest().unwrap().epoch;
        let answer = f.end_of(asked, f_end).unwrap();
        assert_eq!((answer.epoch, answer.start), (1, Offset(10)));
        assert!(answer.start < l_end, "L must cut its divergent tail");
        l.truncate_from_end(answer.start).unwrap();
        l.assign(2, Offset(10)).unwrap();
        assert_eq!(at(&l), at(&f));
    }
}
