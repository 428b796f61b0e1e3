//! Topics: a name, a configuration, and N partition logs on disk.
//!
//! On disk a topic is `topics/<name>/` holding `topic.meta` (bincode,
//! replaced atomically) and one directory per partition. A topic is created
//! under a temporary name and renamed into place once its metadata is
//! durable, and deleted by renaming it away first, so a crash never leaves a
//! half-created or half-deleted topic that the next open would load.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spool_protocol::{Offset, PartitionId};

use super::BrokerError;
use crate::storage::meta_file::{self, MetaKind};
use crate::storage::{atomic_file, LogConfig, PartitionLog, StorageError, SyncPolicy};

/// Name of the metadata file inside a topic directory.
const META_FILE: &str = "topic.meta";
/// Version of the metadata encoding; bumped on incompatible change.
/// `topic.meta`: the topic's name and configuration.
const META_KIND: MetaKind = MetaKind {
    magic: *b"SPTM",
    version: 1,
};
/// Longest topic name accepted.
pub const MAX_TOPIC_NAME_LEN: usize = 200;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// A topic's settings, fixed when it is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// How each partition's log behaves.
    pub log: LogConfig,
}

impl TopicConfig {
    /// `partitions` partitions with the default log settings.
    pub fn new(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            log: LogConfig::default(),
        }
    }

    /// Sets the sync policy.
    pub fn sync(mut self, sync: SyncPolicy) -> TopicConfig {
        self.log.sync = sync;
        self
    }

    /// Sets the segment size.
    pub fn segment_size_bytes(mut self, bytes: u64) -> TopicConfig {
        self.log.segment_size_bytes = bytes;
        self
    }

    /// Sets retention by age (`None`: keep forever).
    pub fn retention_ms(mut self, ms: Option<u64>) -> TopicConfig {
        self.log.retention_ms = ms;
        self
    }

    /// Sets retention by total size (`None`: no limit).
    pub fn retention_bytes(mut self, bytes: Option<u64>) -> TopicConfig {
        self.log.retention_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<(), BrokerError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidConfig(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                self.partitions
            )));
        }
        self.log
            .validate()
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    config: TopicConfig,
}

/// A topic directory's name and settings, read without opening anything.
pub(crate) fn read_meta(dir: &std::path::Path) -> Result<(String, TopicConfig), StorageError> {
    let meta: TopicMeta = meta_file::read_existing(&dir.join(META_FILE), META_KIND)?;
    Ok((meta.name, meta.config))
}

/// First and next offset of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The partition.
    pub partition: PartitionId,
    /// First offset still stored.
    pub start: Offset,
    /// Offset the next record will get (exclusive end).
    pub end: Offset,
}

/// What `list_topics` and `describe_topic` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its configuration.
    pub config: TopicConfig,
    /// Per-partition offsets.
    pub partitions: Vec<PartitionOffsets>,
}

/// An open topic.
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) config: TopicConfig,
    pub(crate) partitions: Vec<Arc<PartitionLog>>,
}

impl Topic {
    /// Creates the topic's directory and metadata, then opens its partitions.
    pub(crate) fn create(
        topics_dir: &Path,
        name: &str,
        config: TopicConfig,
    ) -> Result<Topic, BrokerError> {
        validate_name(name)?;
        config.validate()?;
        let final_dir = topics_dir.join(name);
        let staging = topics_dir.join(format!(".creating-{name}-{}", unique_suffix()));
        let io = |path: &Path, e| BrokerError::Storage {
            context: format!("creating topic {name}"),
            source: StorageError::io(path, e),
        };
        fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
        let meta = TopicMeta {
            name: name.to_string(),
            config: config.clone(),
        };
        meta_file::write(
            &staging.join(META_FILE),
            META_KIND,
            &meta,
            atomic_file::Durability::Synced,
        )
        .map_err(|source| BrokerError::Storage {
            context: format!("creating topic {name}"),
            source,
        })?;
        fs::rename(&staging, &final_dir).map_err(|e| io(&final_dir, e))?;
        crate::storage::atomic_file::sync_dir(topics_dir).map_err(|source| {
            BrokerError::Storage {
                context: format!("creating topic {name}"),
                source,
            }
        })?;
        Topic::open_partitions(final_dir, name.to_string(), config, true)
    }

    /// Opens an existing topic directory.
    pub(crate) fn open(dir: PathBuf, clean_shutdown: bool) -> Result<Topic, BrokerError> {
        let meta_path = dir.join(META_FILE);
        let meta: TopicMeta =
            meta_file::read_existing(&meta_path, META_KIND).map_err(|source| {
                BrokerError::Storage {
                    context: "reading topic metadata".into(),
                    source,
                }
            })?;
        meta.config.validate()?;
        Topic::open_partitions(dir, meta.name, meta.config, clean_shutdown)
    }

    fn open_partitions(
        dir: PathBuf,
        name: String,
        config: TopicConfig,
        clean: bool,
    ) -> Result<Topic, BrokerError> {
        let partitions = (0..config.partitions)
            .map(|p| {
                PartitionLog::open(&dir.join(p.to_string()), config.log.clone(), clean)
                    .map(Arc::new)
                    .map_err(|source| BrokerError::Storage {
                        context: format!("opening {name}/{p}"),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topic {
            name,
            config,
            partitions,
        })
    }

    /// The partition's log, or a clear error naming the valid range.
    pub(crate) fn partition(
        &self,
        partition: PartitionId,
    ) -> Result<&Arc<PartitionLog>, BrokerError> {
        self.partitions
            .get(partition.0 as usize)
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: self.name.clone(),
                partition,
                partitions: self.config.partitions,
            })
    }

    pub(crate) fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            config: self.config.clone(),
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .map(|(i, log)| PartitionOffsets {
                    partition: PartitionId(i as u32),
                    start: log.start_offset(),
                    end: log.visible_end(),
                })
                .collect(),
        }
    }
}

/// Checks a topic name: 1 to 200 of `[A-Za-z0-9._-]`, not starting with a
/// dot (dot-names are reserved for the broker's own staging directories).
pub fn validate_name(name: &str) -> Result<(), BrokerError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_TOPIC_NAME_LEN {
        Some("must be at most 200 bytes")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("may only contain ASCII letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BrokerError::InvalidTopicName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Moves a topic directory out of the way, then removes it.
pub(crate) fn remove_topic_dir(topics_dir: &Path, name: &str) -> Result<(), BrokerError> {
    let dir = topics_dir.join(name);
    let trash = topics_dir.join(format!(".deleting-{name}-{}", unique_suffix()));
    let storage = |source| BrokerError::Storage {
        context: format!("deleting topic {name}"),
        source,
    };
    fs::rename(&dir, &trash).map_err(|e| storage(StorageError::io(&dir, e)))?;
    crate::storage::atomic_file::sync_dir(topics_dir).map_err(storage)?;
    fs::remove_dir_all(&trash).map_err(|e| storage(StorageError::io(&trash, e)))?;
    Ok(())
}

fn unique_suffix() -> u128 {
    crate::simulation::unix_time().as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        for ok in ["orders", "a", "a.b_c-9", &"x".repeat(200)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ü", "..", &"x".repeat(201)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
