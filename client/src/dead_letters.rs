//! Dead letters: the messages a queue group gave up on (too many
//! deliveries, or an unreadable batch), which the broker copies to the
//! topic `<group>.dlq` with their provenance in `spool.dlq.*` headers.
//!
//! Replaying moves them back for delivery: each is produced again, with its
//! key, value and every header, to the topic it came from (the same
//! partition) or to another topic, with `spool.dlq.replays` counting how
//! often it was replayed. How far replay got is the committed offset of the
//! stream group `<group>.dlq.replay` on the dead-letter topic, so a replay
//! resumes where the last one stopped and [`Client::dead_letters`] lists
//! only those not replayed yet. A replay cut short between producing a
//! message and committing it produces that message again next time (at
//! least once).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::requests::{CommittedOffsetsRequest, ProduceRequest};
use spool_protocol::BatchBuilder;

use crate::{
    Client, ClientError, ConsumedMessage, Consumer, ConsumerConfig, GroupConsumer, StartAt,
};

/// How often a dead letter was replayed.
pub const REPLAYS_HEADER: &str = "spool.dlq.replays";

/// The dead-letter topic of `group`.
pub fn dead_letter_topic(group: &str) -> String {
    format!("{group}.dlq")
}

/// The stream group whose committed offset is how far replay got.
pub fn replay_group(group: &str) -> String {
    format!("{group}.dlq.replay")
}

/// One dead letter, with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its offset in the dead-letter topic.
    pub offset: u64,
    /// The topic it was consumed from.
    pub topic: String,
    /// Its partition there.
    pub partition: u32,
    /// Its offset there.
    pub original_offset: u64,
    /// How often it was delivered before the group gave up.
    pub deliveries: u32,
    /// Why (`max_deliveries_exceeded`, or `corrupt_batch: ...`).
    pub reason: String,
    /// How often it was replayed before.
    pub replays: u32,
    /// When it was first produced (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Every header, the provenance ones included.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl DeadLetter {
    fn from_message(m: ConsumedMessage) -> DeadLetter {
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(k, _)| k.as_ref() == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        };
        let number = |name: &str| header(name).and_then(|v| v.parse().ok());
        DeadLetter {
            offset: m.offset,
            topic: header("spool.dlq.topic").unwrap_or_default(),
            partition: number("spool.dlq.partition").unwrap_or(0),
            original_offset: number("spool.dlq.offset").unwrap_or(0) as u64,
            deliveries: number("spool.dlq.deliveries").unwrap_or(0),
            reason: header("spool.dlq.reason").unwrap_or_default(),
            replays: number(REPLAYS_HEADER).unwrap_or(0),
            timestamp_ms: m.timestamp_ms,
            key: m.key,
            value: m.value,
            headers: m.headers,
        }
    }
}

/// What to replay, and where to.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// At most this many (default: every dead letter there is now).
    pub count: Option<u64>,
    /// Another topic to produce them to (default: each one's own topic and
    /// partition); a keyed one goes to its key's partition there.
    pub to: Option<String>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters produced again.
    pub replayed: u64,
    /// How many went to each topic.
    pub by_topic: BTreeMap<String, u64>,
}

/// How long a read waits for more before taking what it has as the end.
const READ_WAIT: Duration = Duration::from_secs(5);

impl Client {
    /// Up to `max` dead letters of `group` not replayed yet, oldest first.
    pub async fn dead_letters(
        &self,
        group: &str,
        max: usize,
    ) -> Result<Vec<DeadLetter>, ClientError> {
        let topic = dead_letter_topic(group);
        let (from, end) = self.replay_range(group, &topic).await?;
        let mut out = Vec::new();
        if from >= end || max == 0 {
            return Ok(out);
        }
        let mut consumer = Consumer::from_positions(
            self.clone(),
            &topic,
            vec![(0, from)],
            ConsumerConfig::default(),
        );
        while out.len() < max {
            match consumer.next_within(READ_WAIT).await {
                Some(Ok(m)) if m.offset < end => {
                    let last = m.offset + 1 >= end;
                    out.push(DeadLetter::from_message(m));
                    if last {
                        break;
                    }
                }
                Some(Ok(_)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Replays `group`'s dead letters not replayed yet (see the module's
    /// documentation), up to the dead-letter topic's end as it is now.
    pub async fn replay_dead_letters(
        &self,
        group: &str,
        options: ReplayOptions,
    ) -> Result<ReplayReport, ClientError> {
        let topic = dead_letter_topic(group);
        let (from, end) = self.replay_range(group, &topic).await?;
        let mut report = ReplayReport::default();
        let wanted = options
            .count
            .unwrap_or(u64::MAX)
            .min(end.saturating_sub(from));
        if wanted == 0 {
            return Ok(report);
        }
        let mut cursor = GroupConsumer::join(
            self.clone(),
            &replay_group(group),
            &topic,
            StartAt::Earliest,
            ConsumerConfig::default(),
        )
        .await?;
        let target_partitions = match &options.to {
            Some(to) => Some(self.describe_topic(to).await?.partitions.len() as u32),
            None => None,
        };
        while report.replayed < wanted {
            let message = match cursor.next_within(READ_WAIT).await {
                Some(Ok(m)) if m.offset < end => m,
                Some(Ok(_)) | None => break,
                Some(Err(e)) => return Err(e),
            };
            let letter = DeadLetter::from_message(message.clone());
            let (to, partition) = match (&options.to, target_partitions) {
                (Some(to), Some(n)) => {
                    let p = match &letter.key {
                        Some(key) => spool_protocol::partition_for_key(key, n).0,
                        None => (letter.offset % u64::from(n.max(1))) as u32,
                    };
                    (to.clone(), p)
                }
                _ => (letter.topic.clone(), letter.partition),
            };
            if to.is_empty() {
                return Err(ClientError::Invalid(format!(
                    "dead letter {} names no topic to replay to (use a target topic)",
                    letter.offset
                )));
            }
            let replays = (letter.replays + 1).to_string();
            let mut headers: Vec<(&[u8], &[u8])> = letter
                .headers
                .iter()
                .filter(|(k, _)| k.as_ref() != REPLAYS_HEADER.as_bytes())
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .collect();
            headers.push((REPLAYS_HEADER.as_bytes(), replays.as_bytes()));
            let mut batch = BatchBuilder::new();
            batch
                .push(
                    letter.timestamp_ms,
                    letter.key.as_deref(),
                    &letter.value,
                    &headers,
                )
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            let request = ProduceRequest {
                topic: to.clone(),
                partition,
                acks: spool_protocol::requests::Acks::All,
                batch: batch
                    .finish()
                    .map_err(|e| ClientError::Invalid(e.to_string()))?,
            };
            self.call_partition(&to, partition, &request).await?;
            cursor.commit(&message).await?;
            report.replayed += 1;
            *report.by_topic.entry(to).or_default() += 1;
            if message.offset + 1 >= end {
                break;
            }
        }
        Ok(report)
    }

    /// Where replay of `group` stands in `topic` (its committed offset, or
    /// the topic's start), and the topic's end now.
    async fn replay_range(&self, group: &str, topic: &str) -> Result<(u64, u64), ClientError> {
        let described = self.describe_topic(topic).await?;
        let Some(p) = described.partitions.first() else {
            return Ok((0, 0));
        };
        let request = CommittedOffsetsRequest {
            group: replay_group(group),
        };
        let committed = match self.call_group(&replay_group(group), &request).await {
            Ok(r) => r
                .offsets
                .iter()
                .find(|(p, _)| *p == 0)
                .and_then(|(_, o)| *o),
            // No replay yet: the group does not exist.
            Err(e) if e.code() == Some(spool_protocol::ErrorCode::GroupNotFound) => None,
            Err(e) => return Err(e),
        };
        Ok((committed.unwrap_or(p.start).max(p.start), p.end))
    }
}
