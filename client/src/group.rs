//! Stream-mode consumer groups: the topic's partitions are shared among the
//! members; each reads its partitions from the group's committed offsets and
//! commits as it goes. When membership changes, the broker bumps the
//! generation and every member picks up its new partitions, resuming from
//! the committed offsets (what was read but not committed is read again:
//! at least once).
//!
//! In a cluster every group request goes to the group's coordinator. When
//! the coordinator changes (its broker's lease lapsed, or the membership
//! changed) the new one does not know this member: it joins again there,
//! resuming from the offsets committed through the cluster, without the
//! application seeing anything but a rebalance.

use std::time::Duration;
use tokio::time::Instant;

use spool_protocol::requests::{
    CommitOffsetRequest, CommittedOffsetsRequest, GroupAssignmentRequest, JoinGroupRequest,
    LeaveGroupRequest,
};
use spool_protocol::{ErrorCode, WireGroupMode};

use super::consumer::{ConsumedMessage, Consumer, ConsumerConfig, StartAt};
use super::{Client, ClientError};

/// How often a member checks whether the group was rebalanced.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(1);
/// Earlier identities remembered for cleaning up (one per coordinator
/// change; a handful covers any realistic flapping).
const MAX_STALE: usize = 8;

/// A member of a stream-mode group.
pub struct GroupConsumer {
    client: Client,
    group: String,
    topic: String,
    start: StartAt,
    config: ConsumerConfig,
    member: u64,
    /// The coordinator `member` joined (clusters only).
    joined_at: Option<String>,
    /// Earlier identities of this member, by the coordinator they joined:
    /// left when this member joins that coordinator again, so that a
    /// coordinator that was away and came back (a paused broker) does not
    /// keep assigning partitions to a member nobody reads for.
    stale: Vec<(String, u64)>,
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
        let (member, generation, partitions) = join_as_new(&client, group, topic).await?;
        let joined_at = client.coordinator_of(group);
        let inner = start_consumer(&client, group, topic, &partitions, start, &config).await?;
        Ok(GroupConsumer {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            start,
            config,
            member,
            joined_at,
            stale: Vec::new(),
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
                if !e.is_retriable() {
                    return Some(Err(e));
                }
                // A coordinator that cannot be reached now: keep reading
                // the partitions we have, and ask again at the next check.
                tracing::debug!(group = %self.group, error = %e, "group check failed; will retry");
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
        self.client.call_group(&self.group, &request).await
    }

    async fn refresh(&mut self) -> Result<(), ClientError> {
        self.checked = Instant::now();
        let request = GroupAssignmentRequest {
            group: self.group.clone(),
            member: self.member,
        };
        let (generation, partitions, rejoined) = match self
            .client
            .call_group(&self.group, &request)
            .await
        {
            Ok(assigned) => (assigned.generation, assigned.partitions, false),
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                // A new coordinator, which has not seen this member.
                if let Some(at) = self.joined_at.take() {
                    self.stale.push((at, self.member));
                    if self.stale.len() > MAX_STALE {
                        self.stale.remove(0);
                    }
                }
                let (member, generation, partitions) =
                    join_as_new(&self.client, &self.group, &self.topic).await?;
                tracing::debug!(group = %self.group, member, "joined the group's new coordinator");
                self.member = member;
                self.joined_at = self.client.coordinator_of(&self.group);
                self.leave_stale().await;
                (generation, partitions, true)
            }
            Err(e) => return Err(e),
        };
        // Generations are the coordinator's: a new one's may match by chance.
        if rejoined || generation != self.generation {
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

impl GroupConsumer {
    /// Leaves, at the coordinator this member just joined, the identities
    /// it had there before.
    async fn leave_stale(&mut self) {
        let Some(here) = self.joined_at.clone() else {
            return;
        };
        let (old, keep): (Vec<_>, Vec<_>) = self.stale.drain(..).partition(|(at, _)| *at == here);
        self.stale = keep;
        for (_, member) in old {
            let request = LeaveGroupRequest {
                group: self.group.clone(),
                member,
            };
            if let Err(e) = self.client.call_group(&self.group, &request).await {
                tracing::debug!(group = %self.group, member, error = %e, "leaving a stale identity");
            }
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.client.leave_in_background(&self.group, self.member);
    }
}

/// Joins `group` as a new member: `(member, generation, partitions)`.
async fn join_as_new(
    client: &Client,
    group: &str,
    topic: &str,
) -> Result<(u64, u32, Vec<u32>), ClientError> {
    let request = JoinGroupRequest {
        group: group.to_string(),
        topic: topic.to_string(),
        mode: WireGroupMode::Stream,
        ack_wait_ms: 0,
        max_deliveries: 0,
        max_in_flight: 0,
    };
    let joined = client.call_group(group, &request).await?;
    Ok((joined.member, joined.generation, joined.partitions))
}

async fn start_consumer(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[u32],
    start: StartAt,
    config: &ConsumerConfig,
) -> Result<Consumer, ClientError> {
    let request = CommittedOffsetsRequest {
        group: group.to_string(),
    };
    let committed = client.call_group(group, &request).await?.offsets;
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
