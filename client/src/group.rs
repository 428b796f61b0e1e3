//! Stream-mode consumer groups: the topic's partitions are shared among the
//! members; each reads its partitions from the group's committed offsets and
//! commits as it goes. When membership changes, the broker bumps the
//! generation and every member picks up its new partitions, resuming from
//! the committed offsets (what was read but not committed is read again:
//! at least once).

use std::time::{Duration, Instant};

use spool_protocol::requests::{
    CommitOffsetRequest, CommittedOffsetsRequest, GroupAssignmentRequest, JoinGroupRequest,
};
use spool_protocol::WireGroupMode;

use super::consumer::{ConsumedMessage, Consumer, ConsumerConfig, StartAt};
use super::{Client, ClientError};

/// How often a member checks whether the group was rebalanced.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);

/// A member of a stream-mode group.
pub struct GroupConsumer {
    client: Client,
    group: String,
    topic: String,
    start: StartAt,
    config: ConsumerConfig,
    member: u64,
    generation: u32,
    partitions: Vec<u32>,
    inner: Consumer,
    checked: Instant,
}

impl GroupConsumer {
    /// Joins `group` on `topic`. Partitions the group never committed start
    /// at `start`.
    pub async fn join(
        client: Client,
        group: &str,
        topic: &str,
        start: StartAt,
        config: ConsumerConfig,
    ) -> Result<GroupConsumer, ClientError> {
        let request = JoinGroupRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            mode: WireGroupMode::Stream,
            ack_wait_ms: 0,
            max_deliveries: 0,
            max_in_flight: 0,
        };
        let joined = client.call(&request).await?;
        let (member, generation, partitions) =
            (joined.member, joined.generation, joined.partitions);
        let inner = start_consumer(&client, group, topic, &partitions, start, &config).await?;
        Ok(GroupConsumer {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            start,
            config,
            member,
            generation,
            partitions,
            inner,
            checked: Instant::now(),
        })
    }

    /// The partitions this member reads now.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// The next message of this member's partitions, or `None` if none
    /// arrived within `wait`. Rebalances are picked up on the way.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Option<Result<ConsumedMessage, ClientError>> {
        if self.checked.elapsed() >= ASSIGNMENT_CHECK {
            if let Err(e) = self.refresh().await {
                return Some(Err(e));
            }
        }
        self.inner.next_within(wait.min(ASSIGNMENT_CHECK)).await
    }

    /// Commits `message` as consumed: the group resumes after it.
    pub async fn commit(&self, message: &ConsumedMessage) -> Result<(), ClientError> {
        let request = CommitOffsetRequest {
            group: self.group.clone(),
            partition: message.partition,
            offset: message.offset + 1,
        };
        self.client.call(&request).await
    }

    async fn refresh(&mut self) -> Result<(), ClientError> {
        self.checked = Instant::now();
        let request = GroupAssignmentRequest {
            group: self.group.clone(),
            member: self.member,
        };
        let assigned = self.client.call(&request).await?;
        let (generation, partitions) = (assigned.generation, assigned.partitions);
        if generation != self.generation {
            tracing::debug!(group = %self.group, generation, ?partitions, "rebalanced");
            self.inner = start_consumer(
                &self.client,
                &self.group,
                &self.topic,
                &partitions,
                self.start,
                &self.config,
            )
            .await?;
            self.generation = generation;
            self.partitions = partitions;
        }
        Ok(())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.client.leave_in_background(&self.group, self.member);
    }
}

async fn start_consumer(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[u32],
    start: StartAt,
    config: &ConsumerConfig,
) -> Result<Consumer, ClientError> {
    let committed = client
        .call(&CommittedOffsetsRequest {
            group: group.to_string(),
        })
        .await?
        .offsets;
    let described = client.describe_topic(topic).await?;
    let mut positions = Vec::new();
    for &p in partitions {
        let Some(info) = described.partitions.iter().find(|d| d.partition == p) else {
            continue;
        };
        let committed = committed
            .iter()
            .find(|(cp, _)| *cp == p)
            .and_then(|(_, c)| *c);
        let offset = match committed {
            Some(c) => c,
            None => {
                start
                    .resolve(client, topic, p, info.start, info.end)
                    .await?
            }
        };
        positions.push((p, offset));
    }
    Ok(Consumer::from_positions(
        client.clone(),
        topic,
        positions,
        config.clone(),
    ))
}
