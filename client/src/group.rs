//! Stream-mode consumer groups: the topic's partitions are shared among the
//! members; each reads its partitions from the group's committed offsets and
//! commits as it goes. When membership changes, the broker bumps the
//! generation and every member picks up its new partitions, resuming from
//! the committed offsets (what was read but not committed is read again:
//! at least once).

use std::time::{Duration, Instant};

use spool_protocol::{Request, Response, WireGroupMode};

use super::consumer::{ConsumedMessage, Consumer, ConsumerConfig, StartAt};
use super::{expect, Client, ClientError};

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
        let request = Request::JoinGroup {
            group: group.to_string(),
            topic: topic.to_string(),
            mode: WireGroupMode::Stream,
            ack_wait_ms: 0,
            max_deliveries: 0,
            max_in_flight: 0,
        };
        let (member, generation, partitions) = expect(client.call(&request).await?, |r| match r {
            Response::JoinGroup {
                member,
                generation,
                partitions,
            } => Ok((member, generation, partitions)),
            other => Err(other),
        })?;
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
        let request = Request::CommitOffset {
            group: self.group.clone(),
            partition: message.partition,
            offset: message.offset + 1,
        };
        expect(self.client.call(&request).await?, |r| match r {
            Response::CommitOffset => Ok(()),
            other => Err(other),
        })
    }

    async fn refresh(&mut self) -> Result<(), ClientError> {
        self.checked = Instant::now();
        let request = Request::GroupAssignment {
            group: self.group.clone(),
            member: self.member,
        };
        let (generation, partitions) = expect(self.client.call(&request).await?, |r| match r {
            Response::GroupAssignment {
                generation,
                partitions,
            } => Ok((generation, partitions)),
            other => Err(other),
        })?;
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
    let committed = expect(
        client
            .call(&Request::CommittedOffsets {
                group: group.to_string(),
            })
            .await?,
        |r| match r {
            Response::CommittedOffsets(c) => Ok(c),
            other => Err(other),
        },
    )?;
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
