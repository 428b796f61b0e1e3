//! Producer ids for idempotent producers: unique for the life of the data
//! directory. Handed out from blocks whose end is persisted before any id
//! in the block is used, so a crash skips the rest of a block and never
//! hands an id out twice.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};
use crate::storage::StorageError;

/// `producer-ids`: the first id of the next block.
const KIND: MetaKind = MetaKind {
    magic: *b"SPPI",
    version: 1,
};
const FILE: &str = "producer-ids";
/// Ids reserved per write of the file.
const BLOCK: u64 = 1024;
/// Ids stay below this: a cluster puts the broker's node id above it.
pub const ID_BITS: u32 = 40;

#[derive(Serialize, Deserialize)]
struct Persisted {
    next_block: u64,
}

/// The allocator.
pub(crate) struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the reserved block).
    range: Mutex<(u64, u64)>,
}

impl ProducerIds {
    /// Opens the allocator of the data directory `dir`.
    pub(crate) fn open(dir: &Path) -> Result<ProducerIds, StorageError> {
        let path = dir.join(FILE);
        // Id 0 means "no producer".
        let next = meta_file::read::<Persisted>(&path, KIND)?.map_or(1, |p| p.next_block);
        Ok(ProducerIds {
            path,
            range: Mutex::new((next, next)),
        })
    }

    /// A producer id never handed out before from this directory.
    pub(crate) fn next(&self) -> Result<u64, StorageError> {
        let mut range = self.range.lock();
        if range.0 == range.1 {
            let end = range.1 + BLOCK;
            if end >= 1 << ID_BITS {
                return Err(StorageError::InvalidConfig(
                    "producer ids of this data directory are used up".into(),
                ));
            }
            meta_file::write(
                &self.path,
                KIND,
                &Persisted { next_block: end },
                Durability::Synced,
            )?;
            range.1 = end;
        }
        let id = range.0;
        range.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let ids = ProducerIds::open(dir.path()).expect("open");
            for _ in 0..1500 {
                let id = ids.next().expect("id");
                assert_ne!(id, 0);
                assert!(seen.insert(id), "id {id} handed out twice");
            }
        }
    }
}
