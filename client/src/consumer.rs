//! The prefetching consumer.
//!
//! One fetch loop per partition runs ahead of the application, long-polling
//! at the end of the log, and hands whole fetched chunks to [`Consumer::next`]
//! through a bounded queue (the prefetch depth), so a slow application
//! stops fetching instead of buffering without limit. Messages of one
//! partition come out in offset order; partitions interleave.
//! Message keys and values are zero-copy slices of the fetched bytes.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::batch::Batches;
use spool_protocol::requests::{FetchRequest, OffsetForTimestampRequest};
use spool_protocol::RecordParts;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Client, ClientError};

/// Where a consumer starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The first offset still stored.
    Earliest,
    /// The end: only messages produced from now on.
    Latest,
    /// This offset in every partition, clamped to each partition's range
    /// (below its start: the start; past its end: the end), so one offset
    /// means the same on a topic whose partitions differ in length.
    Offset(u64),
    /// In each partition, the first message at or after this time
    /// (milliseconds since the Unix epoch).
    Timestamp(i64),
}

impl StartAt {
    /// Resolves to an offset in one partition whose offsets are
    /// `start..end`.
    pub async fn resolve(
        self,
        client: &Client,
        topic: &str,
        partition: u32,
        start: u64,
        end: u64,
    ) -> Result<u64, ClientError> {
        Ok(match self {
            StartAt::Earliest => start,
            StartAt::Latest => end,
            StartAt::Offset(o) => o.clamp(start, end.max(start)),
            StartAt::Timestamp(timestamp_ms) => {
                let request = OffsetForTimestampRequest {
                    topic: topic.to_string(),
                    partition,
                    timestamp_ms,
                };
                client
                    .call_partition(topic, partition, &request)
                    .await?
                    .offset
            }
        })
    }
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Byte budget of one fetch.
    pub fetch_max_bytes: u32,
    /// How long a fetch waits at the end of the log.
    pub fetch_max_wait: Duration,
    /// Fetched chunks buffered ahead of the application, per consumer.
    pub prefetch_chunks: usize,
    /// Only these partitions (`None`: all).
    pub partitions: Option<Vec<u32>>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            prefetch_chunks: 16,
            partitions: None,
        }
    }
}

/// A consumed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Its headers.
    pub headers: Vec<(Bytes, Bytes)>,
}

type Chunk = Result<Vec<ConsumedMessage>, ClientError>;

/// Consumes one topic. Dropping it stops its fetch loops.
pub struct Consumer {
    rx: mpsc::Receiver<Chunk>,
    ready: VecDeque<ConsumedMessage>,
    _fetchers: JoinSet<()>,
}

impl Consumer {
    /// Starts fetching `topic` from `start` in every (or the configured)
    /// partition.
    pub async fn new(
        client: Client,
        topic: &str,
        start: StartAt,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        client.learn_routes().await;
        let described = client.describe_topic(topic).await?;
        let mut positions = Vec::new();
        for p in &described.partitions {
            if config
                .partitions
                .as_ref()
                .is_some_and(|only| !only.contains(&p.partition))
            {
                continue;
            }
            positions.push((
                p.partition,
                start
                    .resolve(&client, topic, p.partition, p.start, p.end)
                    .await?,
            ));
        }
        Ok(Consumer::from_positions(client, topic, positions, config))
    }

    /// Starts fetching each listed `(partition, offset)`.
    pub fn from_positions(
        client: Client,
        topic: &str,
        positions: Vec<(u32, u64)>,
        config: ConsumerConfig,
    ) -> Consumer {
        let (tx, rx) = mpsc::channel(config.prefetch_chunks.max(1));
        let mut fetchers = JoinSet::new();
        for (partition, offset) in positions {
            fetchers.spawn(fetch_loop(
                client.clone(),
                topic.to_string(),
                partition,
                offset,
                config.clone(),
                tx.clone(),
            ));
        }
        Consumer {
            rx,
            ready: VecDeque::new(),
            _fetchers: fetchers,
        }
    }

    /// The next message if one arrives within `wait`; `None` if not (or if
    /// every fetch loop has stopped).
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Option<Result<ConsumedMessage, ClientError>> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    /// Every message received and not yet taken, at least one (waiting
    /// for it as [`Consumer::next`] does): a fetch's worth at a time, for
    /// consumers that handle messages in bulk. `None` only if every fetch
    /// loop has stopped.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<ConsumedMessage>, ClientError>> {
        if !self.ready.is_empty() {
            return Some(Ok(self.ready.drain(..).collect()));
        }
        self.rx.recv().await
    }

    /// The next message; `None` only if every fetch loop has stopped.
    pub async fn next(&mut self) -> Option<Result<ConsumedMessage, ClientError>> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(Ok(message));
            }
            match self.rx.recv().await? {
                Ok(chunk) => self.ready.extend(chunk),
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

async fn fetch_loop(
    client: Client,
    topic: String,
    partition: u32,
    mut offset: u64,
    config: ConsumerConfig,
    tx: mpsc::Sender<Chunk>,
) {
    let mut failures = 0u32;
    loop {
        let request = FetchRequest {
            topic: topic.clone(),
            partition,
            offset,
            max_bytes: config.fetch_max_bytes,
            max_wait_ms: config.fetch_max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let response = client
            .call_partition(&topic, partition, &request)
            .await
            .map(|r| (r.next_offset, r.batches));
        let (next_offset, batches) = match response {
            Ok(ok) => {
                failures = 0;
                ok
            }
            Err(err) if err.is_retriable() && failures < 5 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100 << failures)).await;
                continue;
            }
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        if batches.is_empty() {
            continue;
        }
        let chunk = decode(partition, offset, &batches);
        let stop = chunk.is_err();
        if tx.send(chunk).await.is_err() || stop {
            return;
        }
        offset = next_offset;
    }
}

/// Messages at or after `from` in back-to-back batches, as slices of `bytes`.
/// Each batch's CRC is checked (the broker checked the rest when it stored
/// it), and a batch whose records do not all parse is refused.
fn decode(partition: u32, from: u64, bytes: &Bytes) -> Chunk {
    let mut out = Vec::new();
    for batch in Batches::from_broker(bytes) {
        let batch =
            batch.map_err(|e| ClientError::Protocol(format!("bad batch from server: {e}")))?;
        // Grown a batch at a time, not a message at a time: a fetch holds
        // thousands, and each doubling copied them all into fresh pages.
        // The count is the server's word: no more than the batch's bytes
        // could hold (a record takes at least six: five varints and its
        // length).
        let count = batch.header().record_count as usize;
        out.reserve(count.min(batch.bytes().len() / 6));
        let mut parsed = 0u32;
        for r in batch.records() {
            parsed += 1;
            if r.offset.0 < from {
                continue;
            }
            let RecordParts {
                key,
                value,
                headers,
            } = r.parts_in(bytes);
            out.push(ConsumedMessage {
                partition,
                offset: r.offset.0,
                timestamp_ms: r.timestamp_ms,
                key,
                value,
                headers,
            });
        }
        if parsed != batch.header().record_count {
            return Err(ClientError::Protocol(format!(
                "bad batch from server: {parsed} of its {} records parse",
                batch.header().record_count
            )));
        }
    }
    Ok(out)
}
