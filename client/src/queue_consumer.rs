//! Queue-mode consumption: the broker hands messages out to the group's
//! members; each is acked, nacked (redelivered, optionally after a delay) or
//! touched (deadline extended) by the member that got it.

use std::collections::VecDeque;
use std::time::Duration;

use spool_protocol::requests::{
    AckRequest, DeliverRequest, JoinGroupRequest, NackRequest, SettleResponse, TouchRequest,
    WireDelivery,
};
use spool_protocol::{Call, ErrorCode, WireGroupMode};

use super::{Client, ClientError};

/// Queue consumer settings. The group settings apply when the first member
/// creates the group; later members get the group's.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Time to ack a delivery before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a message goes to `<group>.dlq`.
    pub max_deliveries: u32,
    /// Unacked messages this consumer may hold.
    pub max_in_flight: u32,
    /// Messages asked for per request.
    pub prefetch: u32,
    /// How long one request waits for messages: `receive` asks again
    /// until one arrives, `receive_batch` returns an empty batch.
    pub max_wait: Duration,
    /// Ack every message as it is received (fire and forget).
    pub auto_ack: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            max_in_flight: 1000,
            prefetch: 256,
            max_wait: Duration::from_millis(500),
            auto_ack: false,
        }
    }
}

/// A message handed to this consumer: `deliveries` above 1 means a
/// redelivery. The wire form as it arrives (keys and values are slices of
/// the received frame, no copy).
pub type QueuedMessage = WireDelivery;

/// What an ack, nack or touch did. An answer with a code this client does
/// not know fails to decode (a protocol error) instead of being guessed.
pub use spool_protocol::WireSettle as Settled;

/// A member of a queue-mode group. Dropping it leaves the group, which makes
/// its unacked messages deliverable to the others at once (so does losing
/// its connection).
pub struct QueueConsumer {
    client: Client,
    group: String,
    topic: String,
    options: QueueOptions,
    member: u64,
    buffer: VecDeque<QueuedMessage>,
}

impl QueueConsumer {
    /// Joins `group` (created on `topic` if new).
    pub async fn join(
        client: Client,
        group: &str,
        topic: &str,
        options: QueueOptions,
    ) -> Result<QueueConsumer, ClientError> {
        let mut consumer = QueueConsumer {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            options,
            member: 0,
            buffer: VecDeque::new(),
        };
        consumer.rejoin().await?;
        Ok(consumer)
    }

    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let request = JoinGroupRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            mode: WireGroupMode::Queue,
            ack_wait_ms: self.options.ack_wait.as_millis().max(1) as u64,
            max_deliveries: self.options.max_deliveries,
            max_in_flight: self.options.max_in_flight,
        };
        self.member = self.client.call(&request).await?.member;
        Ok(())
    }

    /// The next message: waits as long as it takes (an idle queue is not
    /// the end of it). After a broker restart or a lost connection it joins
    /// again by itself; an error it cannot get past is returned. For a
    /// bounded wait, [`QueueConsumer::receive_timeout`].
    pub async fn receive(&mut self) -> Result<QueuedMessage, ClientError> {
        loop {
            if let Some(m) = self.receive_timeout(self.options.max_wait).await? {
                return Ok(m);
            }
        }
    }

    /// The next message, or `Ok(None)` if none arrived within `wait`.
    pub async fn receive_timeout(
        &mut self,
        wait: Duration,
    ) -> Result<Option<QueuedMessage>, ClientError> {
        if let Some(m) = self.buffer.pop_front() {
            return Ok(Some(m));
        }
        let request = self.deliver_request(wait);
        let mut response = self.client.call(&request).await;
        if matches!(&response, Err(e) if e.code() == Some(ErrorCode::UnknownMember) || matches!(e, ClientError::Disconnected(_)))
        {
            self.rejoin().await?;
            response = self.client.call(&self.deliver_request(wait)).await;
        }
        let messages = response?.messages;
        if self.options.auto_ack && !messages.is_empty() {
            let items: Vec<(u32, u64)> = messages.iter().map(|m| (m.partition, m.offset)).collect();
            self.settle(AckRequest {
                group: self.group.clone(),
                member: self.member,
                items,
            })
            .await?;
        }
        self.buffer.extend(messages);
        Ok(self.buffer.pop_front())
    }

    fn deliver_request(&self, wait: Duration) -> DeliverRequest {
        DeliverRequest {
            group: self.group.clone(),
            member: self.member,
            max_messages: self.options.prefetch.max(1),
            max_wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
        }
    }

    /// Everything one delivery brings (up to `prefetch` messages), or an
    /// empty vector if nothing arrived within `max_wait`. Pair it with
    /// [`QueueConsumer::ack_many`] for high throughput: one request to get a
    /// batch, one to ack every message in it.
    pub async fn receive_batch(&mut self) -> Result<Vec<QueuedMessage>, ClientError> {
        if self.buffer.is_empty() {
            if let Some(first) = self.receive_timeout(self.options.max_wait).await? {
                self.buffer.push_front(first);
            }
        }
        Ok(self.buffer.drain(..).collect())
    }

    /// Acks a message: it will not be delivered again. Durable on return.
    pub async fn ack(&self, message: &QueuedMessage) -> Result<Settled, ClientError> {
        Ok(self.ack_many(std::slice::from_ref(message)).await?[0])
    }

    /// Acks several messages in one request.
    pub async fn ack_many(&self, messages: &[QueuedMessage]) -> Result<Vec<Settled>, ClientError> {
        self.settle(AckRequest {
            group: self.group.clone(),
            member: self.member,
            items: messages.iter().map(|m| (m.partition, m.offset)).collect(),
        })
        .await
    }

    /// Sends acks for `messages` and returns at once; the returned future
    /// resolves to their results. The request leaves before this returns, so
    /// a consumer can ask for its next batch while the acks are in flight
    /// (acks and deliveries share one pipelined connection).
    pub async fn send_acks(
        &self,
        messages: &[QueuedMessage],
    ) -> Result<
        impl std::future::Future<Output = Result<Vec<Settled>, ClientError>> + Send + 'static,
        ClientError,
    > {
        let expected = messages.len();
        let request = AckRequest {
            group: self.group.clone(),
            member: self.member,
            items: messages.iter().map(|m| (m.partition, m.offset)).collect(),
        };
        let response = self.client.connection().await?.start(&request).await?;
        Ok(async move { settled_from(response.await?, expected) })
    }

    /// Hands a message back for redelivery after `delay`.
    pub async fn nack(
        &self,
        message: &QueuedMessage,
        delay: Duration,
    ) -> Result<Settled, ClientError> {
        let results = self
            .settle(NackRequest {
                group: self.group.clone(),
                member: self.member,
                delay_ms: delay.as_millis().min(u128::from(u32::MAX)) as u32,
                items: vec![(message.partition, message.offset)],
            })
            .await?;
        Ok(results[0])
    }

    /// Extends a message's ack deadline by the group's ack wait (work in
    /// progress).
    pub async fn touch(&self, message: &QueuedMessage) -> Result<Settled, ClientError> {
        let results = self
            .settle(TouchRequest {
                group: self.group.clone(),
                member: self.member,
                items: vec![(message.partition, message.offset)],
            })
            .await?;
        Ok(results[0])
    }

    async fn settle<C: Settle>(&self, request: C) -> Result<Vec<Settled>, ClientError> {
        let expected = request.items().len();
        settled_from(self.client.call(&request).await?, expected)
    }

    /// This consumer's member id.
    pub fn member(&self) -> u64 {
        self.member
    }
}

/// The requests that settle deliveries: one result per item comes back.
trait Settle: Call<Reply = SettleResponse> {
    fn items(&self) -> &[(u32, u64)];
}

impl Settle for AckRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

impl Settle for NackRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

impl Settle for TouchRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

fn settled_from(response: SettleResponse, expected: usize) -> Result<Vec<Settled>, ClientError> {
    let codes = response.results;
    if codes.len() != expected {
        return Err(ClientError::Protocol(format!(
            "{} results for {expected} items",
            codes.len()
        )));
    }
    Ok(codes)
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        self.client.leave_in_background(&self.group, self.member);
    }
}
