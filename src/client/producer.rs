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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use spool_protocol::{BatchBuilder, Request, Response};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::{expect, Client, ClientError};

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

/// Where a message was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// The outcome of one batch, shared by the futures of its messages.
struct BatchOutcome {
    /// The base offset the broker gave the batch, or why it failed.
    result: OnceLock<Result<u64, ClientError>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    fn new() -> Arc<BatchOutcome> {
        Arc::new(BatchOutcome {
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    fn is_done(&self) -> bool {
        self.result.get().is_some()
    }

    fn complete(&self, result: Result<u64, ClientError>) {
        if self.result.set(result).is_err() {
            return;
        }
        // Set before the wakers are taken: a poll that registers after this
        // lock sees the result under the same lock.
        let wakers = match self.wakers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the batch has an outcome, whatever it is.
    async fn settled(self: Arc<Self>) {
        DeliveryFuture {
            outcome: self,
            partition: 0,
            index: 0,
            waker_slot: None,
        }
        .await
        .ok();
    }
}

/// Resolves a batch's outcome exactly once: with the broker's answer, or,
/// if the batch is dropped unsent (the producer's tasks stopped), with an
/// error, so no [`DeliveryFuture`] waits forever.
struct Completer(Arc<BatchOutcome>);

impl Completer {
    fn complete(self, result: Result<u64, ClientError>) {
        self.0.complete(result);
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        self.0
            .complete(Err(ClientError::Disconnected("producer stopped".into())));
    }
}

/// The future of one message's delivery: a share of its batch's outcome
/// and the message's place in the batch.
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    partition: u32,
    index: u32,
    /// Where this future's waker sits in the outcome's list.
    waker_slot: Option<usize>,
}

impl DeliveryFuture {
    /// True if both messages are in the same batch: their futures resolve
    /// at the same moment, with the same outcome. Lets a caller that tracks
    /// many messages wait once per batch.
    pub fn shares_batch_with(&self, other: &DeliveryFuture) -> bool {
        Arc::ptr_eq(&self.outcome, &other.outcome)
    }

    fn resolve(&self, result: &Result<u64, ClientError>) -> Result<Delivery, ClientError> {
        match result {
            Ok(base) => Ok(Delivery {
                partition: self.partition,
                offset: base + u64::from(self.index),
            }),
            Err(err) => Err(err.clone()),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.outcome.result.get() {
            return Poll::Ready(self.resolve(result));
        }
        let outcome = self.outcome.clone();
        let mut wakers = match outcome.wakers.lock() {
            Ok(w) => w,
            Err(_) => {
                return Poll::Ready(Err(ClientError::Disconnected(
                    "producer state poisoned".into(),
                )))
            }
        };
        if let Some(result) = outcome.result.get() {
            return Poll::Ready(self.resolve(result));
        }
        match self.waker_slot {
            Some(i) if i < wakers.len() => {
                if !wakers[i].will_wake(cx.waker()) {
                    wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                self.waker_slot = Some(wakers.len());
                wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

/// A batch being filled.
struct Open {
    id: u64,
    builder: BatchBuilder,
    messages: u32,
    outcome: Completer,
    deadline: Instant,
}

/// A batch ready for the wire, in the order batches became ready.
struct Ready {
    topic: Arc<str>,
    partition: u32,
    builder: BatchBuilder,
    messages: u32,
    outcome: Completer,
}

struct TopicBatches {
    name: Arc<str>,
    sticky: u32,
    /// The open batch of each partition.
    open: Vec<Option<Open>>,
}

#[derive(Default)]
struct Accumulator {
    topics: Vec<TopicBatches>,
    by_name: HashMap<Arc<str>, usize>,
    /// Batches in the order they must be sent.
    ready: VecDeque<Ready>,
    /// Open batches in the order they were opened (so by deadline):
    /// (topic, partition, batch id); entries of batches that left are
    /// skipped.
    opened: VecDeque<(usize, u32, u64)>,
    next_batch_id: u64,
    /// Outcomes of batches on the wire, for `flush`.
    in_flight: Vec<Arc<BatchOutcome>>,
    closed: bool,
}

impl Accumulator {
    fn topic_index(&self, topic: &str) -> Option<usize> {
        // Most producers write one topic: compare before hashing.
        match self.topics.last() {
            Some(t) if &*t.name == topic => Some(self.topics.len() - 1),
            _ => self.by_name.get(topic).copied(),
        }
    }

    /// Moves partition `partition`'s open batch of topic `t` to the ready
    /// queue, moving the topic's sticky partition on if it was that one.
    fn seal(&mut self, t: usize, partition: u32) {
        let topic = &mut self.topics[t];
        let Some(open) = topic.open[partition as usize].take() else {
            return;
        };
        if topic.sticky == partition {
            topic.sticky = (topic.sticky + 1) % topic.open.len() as u32;
        }
        self.ready.push_back(Ready {
            topic: topic.name.clone(),
            partition,
            builder: open.builder,
            messages: open.messages,
            outcome: open.outcome,
        });
    }

    /// Seals every open batch (flush, close).
    fn seal_all(&mut self) {
        while let Some((t, partition, _)) = self.opened.pop_front() {
            self.seal(t, partition);
        }
    }

    /// The next batch to send: ready ones first (they are older than any
    /// open batch of their partition), then open ones that are due. Returns
    /// the deadline of the first open batch not yet due otherwise.
    fn next_batch(&mut self, now: Instant, hurry: bool) -> (Option<Ready>, Option<Instant>) {
        loop {
            if let Some(ready) = self.ready.pop_front() {
                return (Some(ready), None);
            }
            let Some(&(t, partition, id)) = self.opened.front() else {
                return (None, None);
            };
            let current = self.topics[t].open[partition as usize]
                .as_ref()
                .filter(|o| o.id == id)
                .map(|o| o.deadline);
            match current {
                // That batch already left (it filled up).
                None => {
                    self.opened.pop_front();
                }
                Some(deadline) if hurry || deadline <= now => {
                    self.opened.pop_front();
                    self.seal(t, partition);
                }
                Some(deadline) => return (None, Some(deadline)),
            }
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
    fn lock(&self) -> Result<MutexGuard<'_, Accumulator>, ClientError> {
        self.acc
            .lock()
            .map_err(|_| ClientError::Disconnected("producer state poisoned".into()))
    }
}

/// Closes the producer when the last clone of it is dropped: open batches
/// are sent, then the sender task ends.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        if let Ok(mut acc) = self.0.acc.lock() {
            acc.closed = true;
            acc.seal_all();
        }
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
        let known = shared.lock()?.topic_index(topic);
        let t = match known {
            Some(t) => t,
            None => self.add_topic(topic).await?,
        };
        let batch_bytes = shared.config.batch_bytes;
        let mut acc = shared.lock()?;
        if acc.closed {
            return Err(ClientError::Disconnected("producer stopped".into()));
        }
        let topic = &mut acc.topics[t];
        let partition = match key {
            Some(key) => crc32fast::hash(key) % topic.open.len() as u32,
            None => topic.sticky,
        };
        let record_len = BatchBuilder::encoded_record_len(0, 0, key, value, &[]);
        let mut wake = false;
        if topic.open[partition as usize]
            .as_ref()
            .is_some_and(|o| o.builder.len_bytes() + record_len > batch_bytes)
        {
            acc.seal(t, partition);
            wake = true;
        }
        let id = acc.next_batch_id;
        let topic = &mut acc.topics[t];
        let open = match &mut topic.open[partition as usize] {
            Some(open) => open,
            slot @ None => {
                wake = true;
                slot.insert(Open {
                    id,
                    builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20) + 64),
                    messages: 0,
                    outcome: Completer(BatchOutcome::new()),
                    deadline: Instant::now() + shared.config.linger,
                })
            }
        };
        let pushed = open.builder.push(timestamp_ms, key, value, &[]);
        let (index, outcome, is_new, full) = (
            open.messages,
            open.outcome.0.clone(),
            open.messages == 0,
            open.builder.len_bytes() >= batch_bytes,
        );
        if let Err(err) = pushed {
            // Only a record too large for any batch gets here (a full
            // batch was sealed above); drop the batch it would have opened.
            if is_new {
                topic.open[partition as usize] = None;
            }
            return Err(ClientError::Invalid(format!(
                "message does not fit a batch: {err}"
            )));
        }
        open.messages += 1;
        if is_new {
            acc.next_batch_id += 1;
            acc.opened.push_back((t, partition, id));
        }
        if full {
            acc.seal(t, partition);
            wake = true;
        }
        drop(acc);
        if wake {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture {
            outcome,
            partition,
            index,
            waker_slot: None,
        })
    }

    /// Looks up a topic's partitions (outside the lock) and registers it.
    async fn add_topic(&self, topic: &str) -> Result<usize, ClientError> {
        let shared = &self.handle.0;
        let described = shared.client.describe_topic(topic).await?;
        let partitions = described.partitions.len();
        if partitions == 0 {
            return Err(ClientError::Invalid(format!(
                "topic {topic} has no partitions"
            )));
        }
        let mut acc = shared.lock()?;
        if let Some(t) = acc.topic_index(topic) {
            return Ok(t);
        }
        let name: Arc<str> = Arc::from(topic);
        acc.topics.push(TopicBatches {
            name: name.clone(),
            sticky: 0,
            open: (0..partitions).map(|_| None).collect(),
        });
        let t = acc.topics.len() - 1;
        acc.by_name.insert(name, t);
        Ok(t)
    }

    /// Sends every open batch now and waits until all messages sent before
    /// this call are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = &self.handle.0;
        let waiting: Vec<Arc<BatchOutcome>> = {
            let mut acc = shared.lock()?;
            acc.seal_all();
            acc.ready
                .iter()
                .map(|r| r.outcome.0.clone())
                .chain(acc.in_flight.iter().cloned())
                .collect()
        };
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
        let (next, deadline, closed) = match shared.lock() {
            Ok(mut acc) => {
                let (next, deadline) = acc.next_batch(Instant::now(), hurry);
                if let Some(batch) = &next {
                    acc.in_flight.retain(|o| !o.is_done());
                    acc.in_flight.push(batch.outcome.0.clone());
                }
                (next, deadline, acc.closed)
            }
            Err(_) => return,
        };
        match next {
            Some(batch) => {
                shared.queue_space.add_permits(batch.messages as usize);
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
    let request = Request::Produce {
        topic: topic.to_string(),
        partition,
        batch: bytes,
    };
    let client = shared.client.clone();
    let first = match client.connection().await {
        Ok(conn) => conn.start(&request),
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
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
            result = client.call(&request).await;
        }
        let result = result.and_then(|r| {
            expect(r, |r| match r {
                Response::Produce { base_offset, .. } => Ok(base_offset),
                other => Err(other),
            })
        });
        outcome.complete(result);
        drop(permit);
    });
}
