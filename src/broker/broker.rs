//! [`Broker`]: the embedded API over a data directory.
//!
//! Layout of the directory:
//!
//! ```text
//! <dir>/LOCK                      flock'ed while a broker has the directory open
//! <dir>/clean-shutdown            exists only between a clean close and the next open
//! <dir>/topics/<name>/topic.meta  the topic's configuration (bincode)
//! <dir>/topics/<name>/<p>/        partition p's segments and indexes
//! ```
//!
//! Topics live in a concurrent map, each partition behind its own writer
//! lock, so producers to different partitions never wait on each other.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use dashmap::DashMap;
use spool_protocol::{Batch, BatchBuilder, Offset, PartitionId};

use super::clock::Clock;
use super::group::queue_state::MemberId;
use super::group::{self, Group};
use super::topic::{self, PartitionOffsets, Topic, TopicConfig, TopicInfo};
use super::BrokerError;
use crate::storage::{AppendInfo, Fetched, FileSync, Flusher, PartitionLog, StorageError};

pub(super) const LOCK_FILE: &str = "LOCK";
const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
pub(super) const TOPICS_DIR: &str = "topics";
pub(super) const GROUPS_DIR: &str = "groups";

/// Broker-wide settings.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Largest batch an append accepts.
    pub max_batch_bytes: usize,
    /// Sealed segments nobody read for this long are unmapped, so resident
    /// memory follows what is being read, not what is stored.
    pub unmap_idle_segments_ms: u64,
    /// Most topics at once; creating one more fails with
    /// [`BrokerError::LimitReached`].
    pub max_topics: usize,
    /// Most consumer groups at once.
    pub max_groups: usize,
    /// Most members of one consumer group at once.
    pub max_members_per_group: usize,
    /// The clock of consumer-group timing (deadlines, delays); tests pass
    /// [`Clock::manual`].
    pub clock: Clock,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_batch_bytes: 16 * 1024 * 1024,
            unmap_idle_segments_ms: 10_000,
            max_topics: 10_000,
            max_groups: 10_000,
            max_members_per_group: 1_000,
            clock: Clock::system(),
        }
    }
}

/// Counts across all partitions, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Partitions open.
    pub partitions: usize,
    /// Segment files.
    pub segments: usize,
    /// Segments currently memory-mapped (every active one, plus sealed ones
    /// being read).
    pub mapped_segments: usize,
    /// Bytes of stored batches.
    pub size_bytes: u64,
    /// Group-commit flushes done since open.
    pub flushes: u64,
    /// Partitions whose appends fail now for want of disk space.
    pub partitions_out_of_space: usize,
    /// `interval` appends whose acknowledgement waited for a flush because
    /// the flusher was behind (the disk slower than the producers).
    pub flush_waits: u64,
    /// Syncs of consumer groups' ack logs since open (`always` topics;
    /// concurrent acks share one).
    pub ack_log_syncs: u64,
    /// Files of segments retention dropped, kept for new segments to
    /// write over (at most two per partition).
    pub recycled_files: usize,
    /// Segments started in a recycled file since open, instead of a new
    /// one.
    pub segments_recycled: u64,
    /// Bytes of `interval` topics handed to the disk as they came, ahead
    /// of their flush, since open.
    pub written_behind_bytes: u64,
}

type DurableWait =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send>>;

/// An append that has been applied and may still be waiting for its flush;
/// see [`Broker::append_pending`].
#[must_use = "the append is acknowledged only once `durable` resolves"]
pub struct PendingAppend {
    info: AppendInfo,
    wait: Option<(DurableWait, String)>,
}

impl PendingAppend {
    /// Where the batch landed (not yet durable under `always`).
    pub fn info(&self) -> AppendInfo {
        self.info
    }

    /// Resolves once the batch is as durable as the topic's policy promises.
    pub async fn durable(self) -> Result<AppendInfo, BrokerError> {
        if let Some((wait, context)) = self.wait {
            wait.await
                .map_err(|source| BrokerError::Storage { context, source })?;
        }
        Ok(self.info)
    }
}

/// A message to produce, for callers that do not build batches themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Optional key; also picks the partition in [`Broker::produce_keyed`].
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Name/value headers.
    pub headers: Vec<(Bytes, Bytes)>,
    /// Milliseconds since the Unix epoch; `None` stamps the current time.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    /// A message with just a value.
    pub fn new(value: impl Into<Bytes>) -> Message {
        Message {
            value: value.into(),
            ..Message::default()
        }
    }

    /// Adds a key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Message {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An embedded broker over one data directory. Cheap to clone; all clones
/// share the same state. `Send + Sync`: use it from as many tasks or threads
/// as you like.
///
/// Dropping the last clone closes it (see [`Broker::close`]).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: BrokerConfig,
    topics: DashMap<String, Arc<Topic>>,
    groups: DashMap<String, Arc<Group>>,
    /// Member ids start from the open time in nanoseconds, so an id never
    /// repeats across restarts and a client holding a stale one is told so.
    next_member: AtomicU64,
    flusher: Mutex<Flusher>,
    /// Serialises creating and deleting topics and groups, so the limits
    /// above are exact (a DashMap's `len` cannot be read under one of its
    /// entry locks). Never held on a data path.
    admin: Mutex<()>,
    closed: AtomicBool,
    /// Holds the directory's flock until the broker is closed.
    lock: Mutex<Option<File>>,
    /// Ids for idempotent producers.
    producer_ids: super::producer_ids::ProducerIds,
    /// Where dead letters go when not to the local dead-letter topic.
    dead_letter_sink: std::sync::OnceLock<Arc<dyn DeadLetterSink>>,
    /// The lock service, opened on first use.
    locks: std::sync::OnceLock<Arc<crate::locks::LocalLocks>>,
}

/// Where a queue group's dead letters are written. Unset, they are appended
/// to the local `<group>.dlq` (created on first use); a cluster installs a
/// sink that writes them to that topic's leader, wherever it is.
pub trait DeadLetterSink: Send + Sync {
    /// Writes `batch` to partition 0 of `topic`, durably and replicated as
    /// the topic promises, before resolving.
    fn write(
        &self,
        topic: String,
        batch: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BrokerError>> + Send>>;
}

impl Broker {
    /// Opens the broker on `dir`, creating it if needed, and recovers every
    /// partition (torn tails are cut, see `storage`). Fails if another
    /// process has the directory open.
    pub fn open(dir: impl AsRef<Path>, config: BrokerConfig) -> Result<Broker, BrokerError> {
        let dir = dir.as_ref().to_path_buf();
        let storage = |context: &str, source| BrokerError::Storage {
            context: context.to_string(),
            source,
        };
        let topics_dir = dir.join(TOPICS_DIR);
        let fresh = !topics_dir.exists();
        fs::create_dir_all(&topics_dir)
            .map_err(|e| storage("creating data directory", StorageError::io(&dir, e)))?;
        let lock = lock_directory(&dir)?;

        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean_shutdown = marker.exists();
        if clean_shutdown {
            // From here on the directory is being written: a crash must not
            // leave the marker behind.
            fs::remove_file(&marker)
                .map_err(|e| storage("removing shutdown marker", StorageError::io(&marker, e)))?;
            crate::storage::atomic_file::sync_dir(&dir)
                .map_err(|e| storage("removing shutdown marker", e))?;
        }

        let flusher = Flusher::start(config.unmap_idle_segments_ms)
            .map_err(|e| storage("starting flusher thread", StorageError::io(&dir, e)))?;
        let topics = DashMap::new();
        let entries = fs::read_dir(&topics_dir)
            .map_err(|e| storage("listing topics", StorageError::io(&topics_dir, e)))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| storage("listing topics", StorageError::io(&topics_dir, e)))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".creating-") || name.starts_with(".deleting-") {
                // Left by a crash in the middle of a create or delete.
                tracing::info!(dir = %entry.path().display(), "removing leftover of an interrupted topic change");
                fs::remove_dir_all(entry.path()).map_err(|e| {
                    storage(
                        "removing leftover topic directory",
                        StorageError::io(entry.path(), e),
                    )
                })?;
                continue;
            }
            if topic::validate_name(&name).is_err() || !entry.path().is_dir() {
                tracing::warn!(path = %entry.path().display(), "ignoring unexpected entry in topics directory");
                continue;
            }
            let topic = Topic::open(entry.path(), clean_shutdown)?;
            for log in &topic.partitions {
                flusher.watch(log);
            }
            topics.insert(name, Arc::new(topic));
        }
        let groups = DashMap::new();
        for g in group::open_all(&dir.join(GROUPS_DIR), |name| {
            topics.get(name).map(|t| t.value().clone())
        })? {
            groups.insert(g.name.clone(), Arc::new(g));
        }
        if fresh {
            tracing::info!(dir = %dir.display(), "broker opened on a new data directory");
        } else {
            tracing::info!(dir = %dir.display(), topics = topics.len(), groups = groups.len(), clean_shutdown, "broker opened");
        }
        let epoch_ns = (crate::simulation::unix_time().as_nanos() as u64).max(1);
        let producer_ids = super::producer_ids::ProducerIds::open(&dir)
            .map_err(|e| storage("opening producer ids", e))?;
        Ok(Broker {
            inner: Arc::new(Inner {
                dir,
                config,
                topics,
                groups,
                next_member: AtomicU64::new(epoch_ns),
                flusher: Mutex::new(flusher),
                admin: Mutex::new(()),
                closed: AtomicBool::new(false),
                lock: Mutex::new(Some(lock)),
                producer_ids,
                dead_letter_sink: std::sync::OnceLock::new(),
                locks: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Sends dead letters to `sink` from now on (once; a second sink is
    /// refused).
    pub fn set_dead_letter_sink(&self, sink: Arc<dyn DeadLetterSink>) -> Result<(), BrokerError> {
        self.inner
            .dead_letter_sink
            .set(sink)
            .map_err(|_| BrokerError::InvalidConfig("the dead-letter sink is already set".into()))
    }

    pub(super) fn dead_letter_sink(&self) -> Option<&Arc<dyn DeadLetterSink>> {
        self.inner.dead_letter_sink.get()
    }

    /// A new id for an idempotent producer: batches it finishes with
    /// [`BatchBuilder::finish_from`] and consecutive sequence numbers per
    /// partition are stored once however often they are retried. Unique
    /// for the life of the data directory (below 2^40).
    pub fn init_producer(&self) -> Result<u64, BrokerError> {
        self.check_open()?;
        self.inner
            .producer_ids
            .next()
            .map_err(|source| BrokerError::Storage {
                context: "allocating a producer id".into(),
                source,
            })
    }

    /// The broker's lock service: sessions, locks and fencing tokens (see
    /// [`crate::locks`]), kept in `<dir>/locks`.
    pub fn locks(&self) -> Result<Arc<crate::locks::LocalLocks>, crate::locks::LockError> {
        if let Some(locks) = self.inner.locks.get() {
            return Ok(locks.clone());
        }
        let _admin = self.inner.admin.lock();
        if let Some(locks) = self.inner.locks.get() {
            return Ok(locks.clone());
        }
        let locks = crate::locks::LocalLocks::open(&self.inner.dir)?;
        Ok(self.inner.locks.get_or_init(|| locks).clone())
    }

    /// The lock service, if something has used it since the broker opened.
    pub fn opened_locks(&self) -> Option<Arc<crate::locks::LocalLocks>> {
        self.inner.locks.get().cloned()
    }

    /// Takes the lock `name`, waiting as `options` say, in a session of
    /// its own that the returned guard keeps alive. `Ok(None)` if the wait
    /// ran out. Must be called within a Tokio runtime.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let broker = spool::Broker::open(dir.path(), Default::default()).unwrap();
    /// let guard = broker.lock("nightly-report", Default::default()).await.unwrap().unwrap();
    /// // Pass guard.token() to whatever the lock protects.
    /// assert!(guard.token() > 0);
    /// guard.release().await.unwrap();
    /// # });
    /// ```
    pub async fn lock(
        &self,
        name: &str,
        options: crate::locks::LockOptions,
    ) -> Result<Option<crate::locks::LockGuard>, crate::locks::LockError> {
        crate::locks::LockGuard::acquire(self.locks()?, name, &options).await
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a topic. Fails if it exists.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), BrokerError> {
        self.check_open()?;
        let topics_dir = self.inner.dir.join(TOPICS_DIR);
        let _admin = self.inner.admin.lock();
        let limit = self.inner.config.max_topics;
        if self.inner.topics.len() >= limit && !self.inner.topics.contains_key(name) {
            return Err(BrokerError::LimitReached {
                what: "topics",
                limit,
            });
        }
        match self.inner.topics.entry(name.to_string()) {
            dashmap::Entry::Occupied(_) => Err(BrokerError::TopicExists(name.to_string())),
            dashmap::Entry::Vacant(slot) => {
                let topic = Topic::create(&topics_dir, name, config)?;
                let flusher = self.inner.flusher.lock();
                for log in &topic.partitions {
                    flusher.watch(log);
                }
                slot.insert(Arc::new(topic));
                tracing::info!(topic = name, "topic created");
                Ok(())
            }
        }
    }

    /// Deletes a topic and all its data.
    pub fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let _admin = self.inner.admin.lock();
        let (_, topic) = self
            .inner
            .topics
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        topic::remove_topic_dir(&self.inner.dir.join(TOPICS_DIR), &topic.name)?;
        // Groups of a deleted topic go with it.
        let orphans: Vec<String> = self
            .inner
            .groups
            .iter()
            .filter(|g| g.topic == name)
            .map(|g| g.key().clone())
            .collect();
        for g in orphans {
            if let Err(e) = self.remove_group(&g) {
                tracing::warn!(group = %g, error = %e, "could not remove the group of a deleted topic");
            }
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// All topics, sorted by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut topics: Vec<TopicInfo> = self.inner.topics.iter().map(|t| t.info()).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// One topic's configuration and offsets.
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        Ok(self.topic(name)?.info())
    }

    /// First and next offset of a partition.
    pub fn offsets(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<PartitionOffsets, BrokerError> {
        let log = self.partition_log(topic, partition)?;
        Ok(PartitionOffsets {
            partition,
            start: log.start_offset(),
            end: log.visible_end(),
        })
    }

    /// The first offset of a partition whose record timestamp is at or after
    /// `timestamp_ms` (the end offset if there is none).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Offset, BrokerError> {
        self.partition_log(topic, partition)?
            .offset_for_timestamp(timestamp_ms)
            .map_err(|source| BrokerError::Storage {
                context: format!("looking up a timestamp in {topic}/{partition}"),
                source,
            })
    }

    /// The partition a key maps to: CRC-32 (IEEE) of the key modulo the
    /// partition count. Stable across restarts and versions, so a key's
    /// messages stay in order in one partition.
    pub fn partition_for_key(&self, topic: &str, key: &[u8]) -> Result<PartitionId, BrokerError> {
        let topic = self.topic(topic)?;
        Ok(spool_protocol::partition_for_key(
            key,
            topic.config.partitions,
        ))
    }

    /// Appends a record batch (built with [`BatchBuilder`]) to a partition.
    /// The batch is validated completely first; an invalid batch stores
    /// nothing. Returns once the batch is as durable as the topic's sync
    /// policy promises.
    pub async fn append(
        &self,
        topic: &str,
        partition: PartitionId,
        batch: &[u8],
    ) -> Result<AppendInfo, BrokerError> {
        self.append_pending(topic, partition, batch)?
            .durable()
            .await
    }

    /// The first half of [`Broker::append`]: validates and appends the batch
    /// now (offsets are assigned in call order) and returns a handle that
    /// resolves once the batch is durable. The server uses this to apply a
    /// connection's pipelined produces in arrival order while their flush
    /// waits overlap.
    pub fn append_pending(
        &self,
        topic: &str,
        partition: PartitionId,
        batch: &[u8],
    ) -> Result<PendingAppend, BrokerError> {
        self.check_open()?;
        if batch.len() > self.inner.config.max_batch_bytes {
            return Err(BrokerError::BatchTooLarge {
                len: batch.len(),
                max: self.inner.config.max_batch_bytes,
            });
        }
        let input_len = batch.len();
        let batch = Batch::validate(batch)?;
        // One append is one batch: bytes after it are refused, not dropped.
        if batch.bytes().len() != input_len {
            return Err(BrokerError::InvalidBatch(
                spool_protocol::BatchError::BadLength(input_len as u64),
            ));
        }
        let log = self.partition_log(topic, partition)?;
        let context = move || format!("appending to {topic}/{partition}");
        let info = log.append(batch).map_err(|source| BrokerError::Storage {
            context: context(),
            source,
        })?;
        let wait = if log.ack_waits_for_flush() {
            let flusher = self.inner.flusher.lock();
            Some((
                Box::pin(flusher.request_sync(log.clone(), info.next_offset)) as DurableWait,
                context(),
            ))
        } else {
            None
        };
        Ok(PendingAppend { info, wait })
    }

    /// Builds one batch from `messages` and appends it to `partition`.
    pub async fn produce(
        &self,
        topic: &str,
        partition: PartitionId,
        messages: &[Message],
    ) -> Result<AppendInfo, BrokerError> {
        let batch = build_batch(messages)?;
        self.append(topic, partition, &batch).await
    }

    /// Appends one message to the partition its key maps to.
    pub async fn produce_keyed(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<(PartitionId, AppendInfo), BrokerError> {
        let key = message.key.clone().unwrap_or_default();
        let partition = self.partition_for_key(topic, &key)?;
        let info = self
            .produce(topic, partition, std::slice::from_ref(&message))
            .await?;
        Ok((partition, info))
    }

    /// Like [`Broker::read`], but at the end of the log waits up to
    /// `max_wait` for data to arrive (long polling), returning as soon as it
    /// does. An empty answer means nothing arrived in time.
    pub async fn read_wait(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u64,
        max_wait: std::time::Duration,
    ) -> Result<Fetched, BrokerError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let log = self.partition_log(topic, partition)?;
        loop {
            let moved = log.visible_end_moved();
            tokio::pin!(moved);
            // Register before reading, so an append in between wakes us.
            moved.as_mut().enable();
            let fetched = self.read(topic, partition, offset, max_bytes)?;
            if !fetched.batches.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(fetched);
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return self.read(topic, partition, offset, max_bytes);
            }
        }
    }

    /// Reads whole batches from the one holding `offset`, up to `max_bytes`
    /// (always at least one batch). The bytes are the stored batches,
    /// borrowed from the segment's memory map, each CRC-checked; a corrupt
    /// batch is reported as an error, never returned.
    pub fn read(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<Fetched, BrokerError> {
        // After close another process may own the files.
        self.check_open()?;
        let log = self.partition_log(topic, partition)?;
        log.read(offset, max_bytes)
            .map_err(|source| BrokerError::Storage {
                context: format!("reading {topic}/{partition} at {offset}"),
                source,
            })
    }

    /// Segment and memory-map counts across all partitions.
    pub fn storage_stats(&self) -> StorageStats {
        let mut stats = StorageStats::default();
        for topic in self.inner.topics.iter() {
            for log in &topic.partitions {
                stats.partitions += 1;
                stats.segments += log.segment_count();
                stats.mapped_segments += log.mapped_segment_count();
                stats.size_bytes += log.size_bytes();
                stats.flushes += log.flush_count();
                stats.partitions_out_of_space += usize::from(log.out_of_space());
                stats.flush_waits += log.flush_wait_count();
                stats.recycled_files += log.recycled_file_count();
                stats.segments_recycled += log.reused_file_count();
                stats.written_behind_bytes += log.written_behind_bytes();
            }
        }
        stats.ack_log_syncs = self.inner.flusher.lock().file_sync_count();
        stats
    }

    /// Flushes every partition, marks the directory cleanly shut down and
    /// releases it, so it can be opened again (by this process or another).
    /// Later calls on any clone fail with [`BrokerError::Closed`]. Dropping
    /// the last clone of the broker closes it too.
    pub fn close(&self) -> Result<(), BrokerError> {
        self.inner.close()
    }

    pub(super) fn groups(&self) -> &DashMap<String, Arc<Group>> {
        &self.inner.groups
    }

    /// Waits until the flusher has synced these ack logs (none: at once).
    pub(super) async fn sync_ack_logs(
        &self,
        syncs: impl IntoIterator<Item = FileSync>,
    ) -> Result<(), BrokerError> {
        let waits: Vec<_> = {
            let flusher = self.inner.flusher.lock();
            syncs
                .into_iter()
                .map(|s| flusher.request_file_sync(s))
                .collect()
        };
        for wait in waits {
            wait.await.map_err(|source| BrokerError::Storage {
                context: "syncing a consumer group's ack log".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Held while topics or groups are created or deleted.
    pub(super) fn admin_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.inner.admin.lock()
    }

    pub(super) fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub(super) fn groups_dir(&self) -> PathBuf {
        self.inner.dir.join(GROUPS_DIR)
    }

    pub(super) fn next_member_id(&self) -> MemberId {
        self.inner.next_member.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn check_open(&self) -> Result<(), BrokerError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.inner
            .topics
            .get(name)
            .map(|t| t.value().clone())
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    /// One partition's log: what replication drives directly (epochs, the
    /// high watermark, reads past it, truncation).
    pub fn partition_log(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Arc<PartitionLog>, BrokerError> {
        self.topic(topic)?.partition(partition).cloned()
    }
}

impl Inner {
    fn close(&self) -> Result<(), BrokerError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_error = None;
        for topic in self.topics.iter() {
            for (p, log) in topic.partitions.iter().enumerate() {
                if let Err(source) = log.close() {
                    tracing::error!(topic = %topic.name, partition = p, error = %source, "closing partition failed");
                    first_error.get_or_insert(BrokerError::Storage {
                        context: format!("closing {}/{p}", topic.name),
                        source,
                    });
                }
            }
        }
        self.flusher.lock().shutdown();
        if let Some(err) = first_error {
            // No marker: the next open rescans, as after a crash.
            self.release_lock();
            return Err(err);
        }
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        crate::storage::atomic_file::write_atomic(
            &marker,
            b"",
            crate::storage::atomic_file::Durability::Synced,
        )
        .map_err(|source| BrokerError::Storage {
            context: "writing shutdown marker".into(),
            source,
        })?;
        tracing::info!(dir = %self.dir.display(), "broker closed cleanly");
        self.release_lock();
        Ok(())
    }
}

impl Inner {
    fn release_lock(&self) {
        // Closing the file drops the flock.
        self.lock.lock().take();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // In a simulation a broker dropped unclosed was crashed: it leaves
        // its files as a killed process does, and its restart recovers.
        if crate::simulation::active() {
            return;
        }
        if let Err(err) = self.close() {
            tracing::error!(error = %err, "closing broker on drop failed");
        }
    }
}

fn lock_directory(dir: &Path) -> Result<File, BrokerError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BrokerError::Storage {
            context: "opening lock file".into(),
            source: StorageError::io(&path, e),
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| BrokerError::DirectoryLocked(dir.to_path_buf()))?;
    Ok(file)
}

/// Builds one batch from owned messages.
pub(crate) fn build_batch(messages: &[Message]) -> Result<Bytes, BrokerError> {
    let now_ms = crate::storage::wall_clock_ms();
    let size: usize = messages.iter().map(|m| m.value.len() + 16).sum();
    let mut builder = BatchBuilder::with_capacity(size + 64);
    let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
    for m in messages {
        headers.clear();
        headers.extend(m.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref())));
        builder.push(
            m.timestamp_ms.unwrap_or(now_ms),
            m.key.as_deref(),
            &m.value,
            &headers,
        )?;
    }
    Ok(builder.finish()?)
}
