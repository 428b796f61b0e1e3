//! A read-only check of a whole data directory (`spool verify`, `spool
//! inspect`): every topic's metadata and every partition's files, every
//! consumer group's metadata, ack logs and snapshots, as recovery would
//! see them, with nothing written.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::broker::{GROUPS_DIR, LOCK_FILE, TOPICS_DIR};
use super::{BrokerError, TopicConfig};
use crate::storage::verify::{check_partition, PartitionCheck, Problem};
use crate::storage::StorageError;

/// One topic's check.
#[derive(Clone, Debug, Serialize)]
pub struct TopicCheck {
    /// Its name (the directory's, if the metadata does not read).
    pub topic: String,
    /// Its settings, if the metadata reads.
    #[serde(skip)]
    pub config: Option<TopicConfig>,
    /// Problems with the topic's own files.
    pub problems: Vec<Problem>,
    /// Each partition directory found, by number.
    pub partitions: Vec<(u32, PartitionCheck)>,
}

impl TopicCheck {
    /// Every problem of the topic and its partitions.
    pub fn all_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .chain(self.partitions.iter().flat_map(|(_, p)| p.problems.iter()))
    }
}

/// One consumer group's check.
#[derive(Clone, Debug, Serialize)]
pub struct GroupCheck {
    /// Its name (the directory's, if the metadata does not read).
    pub group: String,
    /// Problems with its metadata, ack logs and snapshots.
    pub problems: Vec<Problem>,
}

/// Everything a check of a data directory found.
#[derive(Clone, Debug, Serialize)]
pub struct DataDirCheck {
    /// Each topic, by name.
    pub topics: Vec<TopicCheck>,
    /// Each consumer group, by name.
    pub groups: Vec<GroupCheck>,
}

impl DataDirCheck {
    /// Every problem found.
    pub fn all_problems(&self) -> impl Iterator<Item = &Problem> {
        self.topics
            .iter()
            .flat_map(TopicCheck::all_problems)
            .chain(self.groups.iter().flat_map(|g| g.problems.iter()))
    }
}

/// Checks every topic and group under `dir` without changing anything.
/// Fails if a broker has the directory open (its files are changing).
pub fn check_data_dir(dir: &Path) -> Result<DataDirCheck, BrokerError> {
    let storage = |context: &str, source| BrokerError::Storage {
        context: context.to_string(),
        source,
    };
    // Only a directory a broker has opened has a lock file; taking it
    // briefly (never creating it) says no broker is running on it.
    let lock_path = dir.join(LOCK_FILE);
    let _lock = match fs::File::open(&lock_path) {
        Ok(file) => {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared)
                .map_err(|_| BrokerError::DirectoryLocked(dir.to_path_buf()))?;
            Some(file)
        }
        Err(_) => None,
    };
    let topics_dir = dir.join(TOPICS_DIR);
    let mut names: Vec<PathBuf> = fs::read_dir(&topics_dir)
        .map_err(|e| storage("listing topics", StorageError::io(&topics_dir, e)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    let mut checks = Vec::new();
    for topic_dir in names {
        let dir_name = topic_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Directories of a deletion or creation under way are not topics.
        if dir_name.starts_with('.') {
            continue;
        }
        let mut problems = Vec::new();
        let (topic, config) = match super::topic::read_meta(&topic_dir) {
            Ok((name, config)) => (name, Some(config)),
            Err(e) => {
                problems.push(Problem {
                    file: topic_dir.join("topic.meta"),
                    position: None,
                    kind: "metadata",
                    detail: e.to_string(),
                });
                (dir_name, None)
            }
        };
        let mut partitions = Vec::new();
        let entries = fs::read_dir(&topic_dir)
            .map_err(|e| storage("listing partitions", StorageError::io(&topic_dir, e)))?;
        for entry in entries.filter_map(Result::ok) {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let check = check_partition(&entry.path())
                .map_err(|e| storage(&format!("checking {topic}/{p}"), e))?;
            partitions.push((p, check));
        }
        partitions.sort_by_key(|(p, _)| *p);
        if let Some(config) = &config {
            if partitions.len() != config.partitions as usize {
                problems.push(Problem {
                    file: topic_dir.clone(),
                    position: None,
                    kind: "gap",
                    detail: format!(
                        "{} partition directories for {} partitions",
                        partitions.len(),
                        config.partitions
                    ),
                });
            }
        }
        checks.push(TopicCheck {
            topic,
            config,
            problems,
            partitions,
        });
    }
    let groups_dir = dir.join(GROUPS_DIR);
    let mut group_dirs: Vec<PathBuf> = fs::read_dir(&groups_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    group_dirs.sort();
    let groups = group_dirs
        .iter()
        .map(|dir| {
            let (group, problems) = super::group::Group::check_dir(dir);
            GroupCheck { group, problems }
        })
        .collect();
    Ok(DataDirCheck {
        topics: checks,
        groups,
    })
}
