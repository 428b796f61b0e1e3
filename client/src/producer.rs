//! The batching producer.
//!
//! [`Producer::send`] appends the message to its partition's open batch
//! right away, in the caller's task (an accumulator, as in Kafka's
//! producer): no channel hop and no allocation per message. A sender task
//! takes batches out and puts them on the wire: a batch goes once it holds
//! `batch_bytes`, once its first message has waited `linger`, or, with zero
//! linger, as soon as the sender has a free in-flight slot. Under load the
//! slots are busy, so batches fill while earlier ones are on the wire; when
//! idle, a lone message leaves at once.
//!
//! Each message's [`DeliveryFuture`] shares its batch's outcome (one `Arc`
//! per batch) and resolves to its partition and offset, or to the error
//! that stopped the batch.
//!
//! Partitioning: a keyed message goes to `crc32(key) % partitions` (the same
//! function as the broker's, so embedded and remote producers agree); an
//! unkeyed one to the topic's current "sticky" partition, which moves round
//! robin each time one of its batches leaves, so unkeyed traffic fills
//! whole batches and still spreads evenly.
//!
//! Idempotence (on by default, as in Kafka since 3.0): the producer gets an
//! id from the broker and numbers its records per partition; each batch
//! carries its first number. The broker stores a batch once however often
//! it is retried (a retry after a lost answer gets the original offsets)
//! and refuses a batch whose predecessor has not arrived, so retries never
//! reorder a partition. At most [`IDEMPOTENCE_WINDOW`] batches per
//! partition are in flight, the number the broker remembers. A batch that
//! fails for good (a non-retriable error, or retries for longer than
//! `delivery_timeout`) makes the producer start over with a new id, since
//! the broker would refuse everything after the gap it leaves.
//!
//! Ordering: batches to one partition are sent in order on one connection
//! and the server applies them in arrival order; with idempotence, retries
//! keep that order. Without it, a batch retried after a retriable error may
//! land after batches sent later.
//!
//! [`IDEMPOTENCE_WINDOW`]: spool_protocol::batch::IDEMPOTENCE_WINDOW

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use spool_protocol::batch::{IDEMPOTENCE_WINDOW, NO_PRODUCER};
use spool_protocol::requests::{Acks, InitProducerRequest, ProduceRequest};
use spool_protocol::{BatchBuilder, ErrorCode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::accumulator::{Accumulator, Ready};
pub use super::delivery::{Delivery, DeliveryFuture};
use super::{Client, ClientError};

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// ...or once its first message has waited this long. Zero: send as
    /// soon as a slot for a batch in flight is free.
    pub linger: Duration,
    /// Batches on the wire at once (backpressure beyond that).
    pub max_in_flight: usize,
    /// Attempts for a batch that fails with a retriable error (waiting
    /// for an earlier batch of the partition does not count).
    pub retries: u32,
    /// Longest a batch is retried before it fails.
    pub delivery_timeout: Duration,
    /// Bytes of messages (as encoded in their batches) the producer holds
    /// from `send` until their batch is acknowledged or fails, unsent and
    /// in flight alike, as Kafka's `buffer.memory`. Beyond it `send`
    /// waits, so a producer that outruns the broker holds bounded memory
    /// and its messages wait a bounded time (about this many bytes over
    /// the broker's rate). A message larger than the whole buffer waits
    /// for an empty one.
    pub buffer_bytes: usize,
    /// Store each batch once, however often it is retried, and never
    /// reorder a partition by a retry (see the module docs).
    pub idempotent: bool,
    /// In a cluster, when a batch counts as stored: on every in-sync
    /// replica (`All`, the default) or on the leader alone (`Leader`:
    /// faster, lost if the leader dies before its followers copy it).
    pub acks: Acks,
    /// Where message timestamps come from: milliseconds since the Unix
    /// epoch, by the system's clock unless a simulation gives its own
    /// (whose runs must not depend on the real time).
    pub clock: fn() -> i64,
}

/// Milliseconds since the Unix epoch by the system's clock (0 before 1970).
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            linger: Duration::ZERO,
            max_in_flight: 64,
            retries: 10,
            delivery_timeout: Duration::from_secs(30),
            // Measured with `spool bench --buffer-bytes` (1 producer, 100 B
            // and 1 KiB, flat out, loopback): 2-4 MiB keep the full rate
            // (4.3-4.8 M and 1.1 M msg/s); each doubling past 4 MiB only
            // doubles the acknowledgement latency (100 B ack p99: 30 ms at
            // 4 MiB, 116 ms at 8, 582 ms at 32).
            buffer_bytes: 4 * 1024 * 1024,
            idempotent: true,
            acks: Acks::All,
            clock: system_clock_ms,
        }
    }
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    acc: Mutex<Accumulator>,
    /// Wakes the sender: a batch was opened or filled, or the producer
    /// closed.
    wake: Notify,
    /// One permit per byte of `buffer_bytes` not held by a message.
    buffer_space: Semaphore,
    /// `buffer_bytes` as permits (at most what a semaphore holds).
    buffer_permits: usize,
    /// The idempotent producer's id: 0 until the broker gave one (or with
    /// idempotence off), and again after a batch failed for good.
    producer_id: AtomicU64,
    /// Per partition: the next sequence number under `producer_id`, and
    /// the window of batches in flight.
    sequences: Mutex<HashMap<(Arc<str>, u32), Sequence>>,
}

struct Sequence {
    next: u32,
    window: Arc<Semaphore>,
    /// Settles when the partition's latest batch has given back its place
    /// in the window. Places are given back in sequence order, so a batch
    /// still being retried keeps every later one within the window the
    /// broker remembers.
    last_done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        self.acc.lock()
    }
}

/// Closes the producer when the last clone of it is dropped: open batches
/// are sent, then the sender task ends.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        let mut acc = self.0.acc.lock();
        acc.closed = true;
        acc.seal_all();
        drop(acc);
        self.0.wake.notify_one();
    }
}

/// A batching producer. Cheap to clone; dropping the last clone sends
/// what is still open.
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

impl Producer {
    /// Starts the producer's sender task.
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let buffer_permits = config.buffer_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            client,
            buffer_space: Semaphore::new(buffer_permits),
            buffer_permits,
            config,
            acc: Mutex::new(Accumulator::default()),
            wake: Notify::new(),
            producer_id: AtomicU64::new(NO_PRODUCER),
            sequences: Mutex::default(),
        });
        tokio::spawn(run_sender(shared.clone()));
        Producer {
            handle: Arc::new(Handle(shared)),
        }
    }

    /// Adds a message to its partition's batch; the returned future
    /// resolves once it is stored. Waits only if the producer's buffer
    /// (`buffer_bytes`) is full (or, the first time a topic is used, to
    /// look up its partitions). Fails at once if the topic does
    /// not exist or the message cannot fit in a batch.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<DeliveryFuture, ClientError> {
        self.enqueue(topic, None, key, value.as_ref()).await
    }

    /// As [`Producer::send`], to partition `partition` of the topic
    /// whatever the key (`Invalid` if the topic has no such partition).
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<DeliveryFuture, ClientError> {
        self.enqueue(topic, Some(partition), key, value.as_ref())
            .await
    }

    /// Takes the message's bytes of the buffer, then appends.
    async fn enqueue(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.handle.0;
        let held = BatchBuilder::encoded_record_len(0, 0, key, value, &[])
            .min(shared.buffer_permits)
            .min(u32::MAX as usize);
        match shared.buffer_space.try_acquire_many(held as u32) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => {
                // The sender sends open batches early while the buffer is
                // nearly full (see `run_sender`): wake it, or a long linger
                // would hold the space this send waits for.
                shared.wake.notify_one();
                shared
                    .buffer_space
                    .acquire_many(held as u32)
                    .await
                    .map_err(|_| ClientError::Disconnected("producer stopped".into()))?
                    .forget()
            }
            Err(TryAcquireError::Closed) => {
                return Err(ClientError::Disconnected("producer stopped".into()))
            }
        }
        let appended = self.append(topic, partition, key, value, held).await;
        if appended.is_err() {
            shared.buffer_space.add_permits(held);
        }
        appended
    }

    async fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        held: usize,
    ) -> Result<DeliveryFuture, ClientError> {
        let timestamp_ms = (self.handle.0.config.clock)();
        loop {
            if let Some(delivery) =
                self.append_known(topic, partition, key, value, held, timestamp_ms)?
            {
                return Ok(delivery);
            }
            self.add_topic(topic).await?;
        }
    }

    /// Appends to a topic this producer has registered (`None` if it has
    /// not): one lock per send, since the sender task takes the same lock
    /// and each one is a cache line crossing cores.
    fn append_known(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        held: usize,
        timestamp_ms: i64,
    ) -> Result<Option<DeliveryFuture>, ClientError> {
        let shared = &self.handle.0;
        let mut acc = shared.lock();
        let Some(t) = acc.topic_index(topic) else {
            return Ok(None);
        };
        if let Some(p) = partition {
            let partitions = acc.partitions(t);
            if p as usize >= partitions {
                return Err(ClientError::Invalid(format!(
                    "topic {topic} has no partition {p} (it has {partitions})"
                )));
            }
        }
        let appended = acc
            .append(
                t,
                partition,
                key,
                value,
                timestamp_ms,
                shared.config.batch_bytes,
                || Instant::now() + shared.config.linger,
                held,
            )
            .map_err(|err| ClientError::Invalid(format!("message does not fit a batch: {err}")))?;
        drop(acc);
        if appended.wake_sender {
            shared.wake.notify_one();
        }
        Ok(Some(DeliveryFuture::new(
            appended.outcome,
            appended.partition,
            appended.index,
        )))
    }

    /// Looks up a topic's partitions (outside the lock) and registers it.
    async fn add_topic(&self, topic: &str) -> Result<usize, ClientError> {
        let shared = &self.handle.0;
        shared.client.learn_routes().await;
        if shared.config.idempotent {
            ensure_producer_id(shared).await?;
        }
        let described = shared.client.describe_topic(topic).await?;
        let partitions = described.partitions.len();
        if partitions == 0 {
            return Err(ClientError::Invalid(format!(
                "topic {topic} has no partitions"
            )));
        }
        Ok(shared.lock().add_topic(topic, partitions))
    }

    /// Sends every open batch now and waits until all messages sent before
    /// this call are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = &self.handle.0;
        let waiting = shared.lock().unsettled();
        shared.wake.notify_one();
        for outcome in waiting {
            outcome.settled().await;
        }
        Ok(())
    }
}

/// A settling batch's share of the producer's buffer, given back on drop.
struct BufferHold {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for BufferHold {
    fn drop(&mut self) {
        self.shared.buffer_space.add_permits(self.bytes);
    }
}

/// Takes batches out of the accumulator and puts them on the wire, one
/// in-flight slot each.
async fn run_sender(shared: Arc<Shared>) {
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight.max(1)));
    let linger_zero = shared.config.linger.is_zero();
    loop {
        // A slot first: batches stay open (and keep filling) while every
        // slot is busy.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A nearly full buffer makes every open batch due, as in Kafka:
        // senders are waiting for the space those batches hold, which only
        // their acknowledgement gives back.
        let hurry = linger_zero
            || shared.buffer_space.available_permits()
                < shared.config.batch_bytes.min(shared.buffer_permits / 2);
        let (next, deadline, closed) = {
            let mut acc = shared.lock();
            let (next, deadline) = acc.next_batch(Instant::now(), hurry);
            (next, deadline, acc.closed)
        };
        match next {
            Some(batch) => dispatch(&shared, batch, permit).await,
            None if closed => return,
            None => {
                drop(permit);
                match deadline {
                    Some(deadline) => {
                        tokio::select! {
                            _ = shared.wake.notified() => {}
                            _ = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                    None => shared.wake.notified().await,
                }
            }
        }
    }
}

/// Gets a producer id from the broker if the producer has none (at the
/// start, or after a batch failed for good), starting every partition's
/// sequence over.
async fn ensure_producer_id(shared: &Shared) -> Result<u64, ClientError> {
    let known = shared.producer_id.load(Ordering::Acquire);
    if known != NO_PRODUCER {
        return Ok(known);
    }
    let id = shared.client.call(&InitProducerRequest).await?.producer_id;
    if id == NO_PRODUCER {
        return Err(ClientError::Protocol(
            "the broker gave producer id 0".into(),
        ));
    }
    shared.sequences.lock().clear();
    shared.producer_id.store(id, Ordering::Release);
    tracing::debug!(producer_id = id, "idempotent producer id");
    Ok(id)
}

/// Sends one batch: queued on the connection now (keeping per-partition
/// order), its answer awaited (and the batch retried) in a task of its own.
async fn dispatch(shared: &Arc<Shared>, batch: Ready, permit: OwnedSemaphorePermit) {
    let Ready {
        topic,
        partition,
        builder,
        outcome,
        held_bytes,
    } = batch;
    // Gives the batch's bytes of the buffer back once it settles, however
    // this function or its task ends.
    let held = BufferHold {
        shared: shared.clone(),
        bytes: held_bytes,
    };
    // Idempotent: number the batch and take a place in its partition's
    // window (waiting, in order, if the window is full).
    let (producer_id, window) = if shared.config.idempotent {
        let id = match ensure_producer_id(shared).await {
            Ok(id) => id,
            Err(err) => return outcome.complete(Err(err)),
        };
        let (done, done_rx) = tokio::sync::oneshot::channel();
        let (sequence, window, previous) = {
            let mut sequences = shared.sequences.lock();
            let s = sequences
                .entry((topic.clone(), partition))
                .or_insert_with(|| Sequence {
                    next: 0,
                    window: Arc::new(Semaphore::new(IDEMPOTENCE_WINDOW)),
                    last_done: None,
                });
            let sequence = s.next;
            s.next = s.next.wrapping_add(builder.record_count());
            let previous = s.last_done.replace(done_rx);
            (sequence, s.window.clone(), previous)
        };
        let Ok(place) = window.acquire_owned().await else {
            return outcome.complete(Err(ClientError::Disconnected("producer stopped".into())));
        };
        ((id, sequence), Some((place, previous, done)))
    } else {
        ((NO_PRODUCER, 0), None)
    };
    let bytes = match builder.finish_from(producer_id.0, producer_id.1) {
        Ok(bytes) => bytes,
        Err(err) => return outcome.complete(Err(ClientError::Invalid(err.to_string()))),
    };
    let producer_id = producer_id.0;
    let request = ProduceRequest {
        topic: topic.to_string(),
        partition,
        acks: shared.config.acks,
        batch: bytes,
    };
    let client = shared.client.clone();
    let first = match client.partition_connection(&topic, partition).await {
        Ok(conn) => conn.start(&request).await,
        Err(err) => Err(err),
    };
    let shared = shared.clone();
    let mut window = window;
    tokio::spawn(async move {
        let started = Instant::now();
        let (retries, timeout) = (shared.config.retries, shared.config.delivery_timeout);
        let mut result = match first {
            Ok(response) => response.await,
            Err(err) => Err(err),
        };
        let mut attempt = 0u32;
        let mut waits = 0u32;
        while let Err(err) = &result {
            // Refused until an earlier batch lands: not a failure of this
            // one, so it costs no attempt, only time.
            let waiting = err.code() == Some(ErrorCode::OutOfOrderSequence);
            let restarted = producer_id != NO_PRODUCER
                && shared.producer_id.load(Ordering::Acquire) != producer_id;
            if !err.is_retriable()
                || started.elapsed() >= timeout
                || (!waiting && attempt >= retries)
                || (waiting && restarted)
            {
                break;
            }
            if waiting {
                waits += 1;
                let pause = Duration::from_millis(5 << waits.min(6));
                // Retry as soon as the batch before this one settles, not
                // after a blind back-off: with a window of batches in
                // flight, back-offs chained batch after batch would keep
                // every later batch arriving early, and refused, forever.
                match window.as_mut().and_then(|w| w.1.as_mut()) {
                    Some(previous) => {
                        if tokio::time::timeout(pause, previous).await.is_ok() {
                            if let Some(w) = window.as_mut() {
                                w.1 = None;
                            }
                        }
                    }
                    None => tokio::time::sleep(pause).await,
                }
            } else {
                attempt += 1;
                client.note_error(err).await;
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
            }
            result = client.call_partition(&topic, partition, &request).await;
        }
        if result.is_err() && producer_id != NO_PRODUCER {
            // The broker will refuse every later batch of this partition
            // under this id (they would follow a gap): start over.
            let _ = shared.producer_id.compare_exchange(
                producer_id,
                NO_PRODUCER,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        let result = result.map(|stored| stored.base_offset);
        outcome.complete(result);
        drop(held);
        drop(permit);
        if let Some((place, previous, done)) = window {
            if let Some(previous) = previous {
                // Settled or dropped: either way it no longer holds a place.
                let _ = previous.await;
            }
            drop(place);
            let _ = done.send(());
        }
    });
}
