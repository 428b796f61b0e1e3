//! The batching producer.
//!
//! [`Producer::send`] hands a message to a background task that keeps one
//! open batch per partition and sends it when it reaches `batch_bytes` or
//! has waited `linger`. Up to `max_in_flight` batches are on the wire at
//! once; each message's future resolves to its partition and offset, or to
//! the error that stopped its batch.
//!
//! Partitioning: a keyed message goes to `crc32(key) % partitions` (the same
//! function as the broker's, so embedded and remote producers agree); an
//! unkeyed one to the topic's current "sticky" partition, which moves round
//! robin each time one of its batches is sent, so unkeyed traffic fills
//! whole batches and still spreads evenly.
//!
//! Ordering: batches to one partition are sent in order on one connection
//! and the server applies them in arrival order. A batch retried after a
//! retriable error may land after batches sent later (as in Kafka without
//! idempotence); use `max_in_flight = 1` where that matters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::{BatchBuilder, Request, Response};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::{expect, Client, ClientError};

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// A batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// ...or once its first message has waited this long. Zero: send as
    /// soon as the producer has nothing else queued.
    pub linger: Duration,
    /// Batches on the wire at once (backpressure beyond that).
    pub max_in_flight: usize,
    /// Attempts for a batch that fails with a retriable error.
    pub retries: u32,
    /// Messages queued in the producer before `send` waits.
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

/// The future of one message's delivery (no allocation beyond its channel).
pub struct DeliveryFuture(oneshot::Receiver<Result<Delivery, ClientError>>);

impl std::future::Future for DeliveryFuture {
    type Output = Result<Delivery, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(result) => result,
            Err(_) => Err(ClientError::Disconnected("producer stopped".into())),
        })
    }
}

enum Command {
    Send {
        topic: Arc<str>,
        key: Option<Bytes>,
        value: Bytes,
        timestamp_ms: i64,
        done: oneshot::Sender<Result<Delivery, ClientError>>,
    },
    Flush(oneshot::Sender<()>),
}

/// A batching producer. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
    /// The last topic sent to, shared so that sending to the same topic
    /// again allocates nothing.
    last_topic: Arc<std::sync::Mutex<Option<Arc<str>>>>,
}

struct Open {
    builder: BatchBuilder,
    waiters: Vec<oneshot::Sender<Result<Delivery, ClientError>>>,
    deadline: Instant,
}

struct TopicState {
    partitions: u32,
    sticky: u32,
}

impl Producer {
    /// Starts the producer's background task.
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let (tx, rx) = mpsc::channel(config.queue_messages.max(1));
        tokio::spawn(run(client, config, rx));
        Producer {
            tx,
            last_topic: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Queues a message; the returned future resolves once it is stored.
    /// Waits only if the producer's queue is full.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<DeliveryFuture, ClientError> {
        let (done, wait) = oneshot::channel();
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let topic = self.topic_handle(topic);
        self.tx
            .send(Command::Send {
                topic,
                key,
                value,
                timestamp_ms,
                done,
            })
            .await
            .map_err(|_| ClientError::Disconnected("producer stopped".into()))?;
        Ok(DeliveryFuture(wait))
    }

    fn topic_handle(&self, topic: &str) -> Arc<str> {
        let Ok(mut last) = self.last_topic.lock() else {
            return Arc::from(topic);
        };
        match last.as_ref() {
            Some(t) if &**t == topic => t.clone(),
            _ => {
                let t: Arc<str> = Arc::from(topic);
                *last = Some(t.clone());
                t
            }
        }
    }

    /// Sends every open batch now and waits until all messages sent before
    /// this call are acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .await
            .map_err(|_| ClientError::Disconnected("producer stopped".into()))?;
        wait.await
            .map_err(|_| ClientError::Disconnected("producer stopped".into()))
    }
}

async fn run(client: Client, config: ProducerConfig, mut rx: mpsc::Receiver<Command>) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut topics: HashMap<Arc<str>, TopicState> = HashMap::new();
    let mut open: HashMap<(Arc<str>, u32), Open> = HashMap::new();
    loop {
        let next_deadline = open.values().map(|o| o.deadline).min();
        let command = tokio::select! {
            command = rx.recv() => match command {
                Some(c) => c,
                None => break,
            },
            _ = sleep_until(next_deadline) => {
                let now = Instant::now();
                let due: Vec<_> = open.iter().filter(|(_, o)| o.deadline <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    if let Some(batch) = open.remove(&key) {
                        dispatch(&client, &config, &in_flight, &mut topics, key, batch).await;
                    }
                }
                continue;
            }
        };
        match command {
            Command::Send {
                topic,
                key,
                value,
                timestamp_ms,
                done,
            } => {
                let state = match topic_state(&client, &mut topics, &topic).await {
                    Ok(state) => state,
                    Err(err) => {
                        let _ = done.send(Err(err));
                        continue;
                    }
                };
                let partition = match &key {
                    Some(key) => crc32fast::hash(key) % state.partitions,
                    None => state.sticky,
                };
                let slot = (topic, partition);
                let record_len =
                    BatchBuilder::encoded_record_len(0, 0, key.as_deref(), &value, &[]);
                let full = open.get(&slot).is_some_and(|o| {
                    !o.builder.is_empty() && o.builder.len_bytes() + record_len > config.batch_bytes
                });
                if full {
                    if let Some(batch) = open.remove(&slot) {
                        dispatch(
                            &client,
                            &config,
                            &in_flight,
                            &mut topics,
                            slot.clone(),
                            batch,
                        )
                        .await;
                    }
                }
                let entry = open.entry(slot.clone()).or_insert_with(|| Open {
                    builder: BatchBuilder::with_capacity(config.batch_bytes.min(1 << 20) + 64),
                    waiters: Vec::new(),
                    deadline: Instant::now() + config.linger,
                });
                match entry
                    .builder
                    .push(timestamp_ms, key.as_deref(), &value, &[])
                {
                    Ok(()) => entry.waiters.push(done),
                    Err(err) => {
                        let _ = done.send(Err(ClientError::Invalid(format!(
                            "message does not fit a batch: {err}"
                        ))));
                    }
                }
                if entry.builder.len_bytes() >= config.batch_bytes {
                    if let Some(batch) = open.remove(&slot) {
                        dispatch(&client, &config, &in_flight, &mut topics, slot, batch).await;
                    }
                }
                // No linger: send as soon as nothing more is waiting. Under
                // load messages keep arriving while batches are sent, so
                // batches still fill; when idle, one message goes at once
                // (a zero-length timer would wait for tokio's 1 ms tick).
                if config.linger.is_zero() && rx.is_empty() {
                    for (key, batch) in std::mem::take(&mut open) {
                        dispatch(&client, &config, &in_flight, &mut topics, key, batch).await;
                    }
                }
            }
            Command::Flush(done) => {
                for (key, batch) in std::mem::take(&mut open) {
                    dispatch(&client, &config, &in_flight, &mut topics, key, batch).await;
                }
                // Every permit back means every batch sent so far is settled.
                let all = in_flight.clone();
                let n = config.max_in_flight.max(1) as u32;
                tokio::spawn(async move {
                    if let Ok(permits) = all.acquire_many(n).await {
                        drop(permits);
                    }
                    let _ = done.send(());
                });
            }
        }
    }
    for (key, batch) in std::mem::take(&mut open) {
        dispatch(&client, &config, &in_flight, &mut topics, key, batch).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn topic_state<'a>(
    client: &Client,
    topics: &'a mut HashMap<Arc<str>, TopicState>,
    topic: &Arc<str>,
) -> Result<&'a mut TopicState, ClientError> {
    if !topics.contains_key(topic) {
        let described = client.describe_topic(topic).await?;
        let partitions = described.partitions.len() as u32;
        if partitions == 0 {
            return Err(ClientError::Invalid(format!(
                "topic {topic} has no partitions"
            )));
        }
        topics.insert(
            topic.clone(),
            TopicState {
                partitions,
                sticky: 0,
            },
        );
    }
    topics
        .get_mut(topic)
        .ok_or_else(|| ClientError::Invalid(format!("topic {topic} vanished")))
}

/// Sends one batch: queued on the connection now (keeping per-partition
/// order), its result awaited in a task of its own.
async fn dispatch(
    client: &Client,
    config: &ProducerConfig,
    in_flight: &Arc<Semaphore>,
    topics: &mut HashMap<Arc<str>, TopicState>,
    (topic, partition): (Arc<str>, u32),
    batch: Open,
) {
    if let Some(state) = topics.get_mut(&topic) {
        if state.sticky == partition {
            state.sticky = (state.sticky + 1) % state.partitions;
        }
    }
    let fail_all = |waiters: Vec<oneshot::Sender<Result<Delivery, ClientError>>>,
                    err: ClientError| {
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
    };
    let bytes = match batch.builder.finish() {
        Ok(bytes) => bytes,
        Err(err) => return fail_all(batch.waiters, ClientError::Invalid(err.to_string())),
    };
    let Ok(permit) = in_flight.clone().acquire_owned().await else {
        return fail_all(
            batch.waiters,
            ClientError::Disconnected("producer stopped".into()),
        );
    };
    let request = Request::Produce {
        topic: topic.to_string(),
        partition,
        batch: bytes,
    };
    let first = match client.connection().await {
        Ok(conn) => conn.start(&request),
        Err(err) => Err(err),
    };
    let client = client.clone();
    let retries = config.retries;
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
        match result {
            Ok(base) => {
                for (i, w) in batch.waiters.into_iter().enumerate() {
                    let _ = w.send(Ok(Delivery {
                        partition,
                        offset: base + i as u64,
                    }));
                }
            }
            Err(err) => fail_all(batch.waiters, err),
        }
        drop(permit);
    });
}
