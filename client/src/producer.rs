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
//! Ordering: batches to one partition are sent in order on one connection
//! and the server applies them in arrival order. A batch retried after a
//! retriable error may land after batches sent later (as in Kafka without
//! idempotence); use `max_in_flight = 1` where that matters.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use spool_protocol::requests::ProduceRequest;
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
    /// Attempts for a batch that fails with a retriable error.
    pub retries: u32,
    /// Messages held in unsent batches before `send` waits.
    pub queue_messages: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            linger: Duration::ZERO,
            max_in_flight: 64,
            retries: 3,
            queue_messages: 64 * 1024,
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
    /// One permit per message the unsent batches may still take.
    queue_space: Semaphore,
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
        let shared = Arc::new(Shared {
            client,
            queue_space: Semaphore::new(config.queue_messages.clamp(1, Semaphore::MAX_PERMITS)),
            config,
            acc: Mutex::new(Accumulator::default()),
            wake: Notify::new(),
        });
        tokio::spawn(run_sender(shared.clone()));
        Producer {
            handle: Arc::new(Handle(shared)),
        }
    }

    /// Adds a message to its partition's batch; the returned future
    /// resolves once it is stored. Waits only if the producer already
    /// holds `queue_messages` unsent messages (or, the first time a topic
    /// is used, to look up its partitions). Fails at once if the topic does
    /// not exist or the message cannot fit in a batch.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.handle.0;
        match shared.queue_space.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => {
                // The sender sends open batches early while the queue is
                // full (see `run_sender`): wake it, or a long linger would
                // hold the space this send waits for.
                shared.wake.notify_one();
                shared
                    .queue_space
                    .acquire()
                    .await
                    .map_err(|_| ClientError::Disconnected("producer stopped".into()))?
                    .forget()
            }
            Err(TryAcquireError::Closed) => {
                return Err(ClientError::Disconnected("producer stopped".into()))
            }
        }
        let appended = self.append(topic, key, value.as_ref()).await;
        if appended.is_err() {
            shared.queue_space.add_permits(1);
        }
        appended
    }

    async fn append(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.handle.0;
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let known = shared.lock().topic_index(topic);
        let t = match known {
            Some(t) => t,
            None => self.add_topic(topic).await?,
        };
        let batch_bytes = shared.config.batch_bytes;
        let mut acc = shared.lock();
        let appended = acc
            .append(
                t,
                key,
                value,
                timestamp_ms,
                batch_bytes,
                Instant::now() + shared.config.linger,
            )
            .map_err(|err| ClientError::Invalid(format!("message does not fit a batch: {err}")))?;
        drop(acc);
        if appended.wake_sender {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture::new(
            appended.outcome,
            appended.partition,
            appended.index,
        ))
    }

    /// Looks up a topic's partitions (outside the lock) and registers it.
    async fn add_topic(&self, topic: &str) -> Result<usize, ClientError> {
        let shared = &self.handle.0;
        shared.client.learn_routes().await;
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
        // A full queue makes every open batch due, as in Kafka: senders
        // are waiting for the space those batches hold.
        let hurry = linger_zero || shared.queue_space.available_permits() == 0;
        let (next, deadline, closed) = {
            let mut acc = shared.lock();
            let (next, deadline) = acc.next_batch(Instant::now(), hurry);
            (next, deadline, acc.closed)
        };
        match next {
            Some(batch) => {
                shared
                    .queue_space
                    .add_permits(batch.builder.record_count() as usize);
                dispatch(&shared, batch, permit).await;
            }
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

/// Sends one batch: queued on the connection now (keeping per-partition
/// order), its answer awaited (and the batch retried) in a task of its own.
async fn dispatch(shared: &Shared, batch: Ready, permit: OwnedSemaphorePermit) {
    let Ready {
        topic,
        partition,
        builder,
        outcome,
        ..
    } = batch;
    let bytes = match builder.finish() {
        Ok(bytes) => bytes,
        Err(err) => return outcome.complete(Err(ClientError::Invalid(err.to_string()))),
    };
    let request = ProduceRequest {
        topic: topic.to_string(),
        partition,
        batch: bytes,
    };
    let client = shared.client.clone();
    let first = match client.partition_connection(&topic, partition).await {
        Ok(conn) => conn.start(&request).await,
        Err(err) => Err(err),
    };
    let retries = shared.config.retries;
    tokio::spawn(async move {
        let mut result = match first {
            Ok(response) => response.await,
            Err(err) => Err(err),
        };
        let mut attempt = 0;
        while let Err(err) = &result {
            if !err.is_retriable() || attempt >= retries {
                break;
            }
            attempt += 1;
            client.note_error(err).await;
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
            result = client.call_partition(&topic, partition, &request).await;
        }
        let result = result.map(|stored| stored.base_offset);
        outcome.complete(result);
        drop(permit);
    });
}
