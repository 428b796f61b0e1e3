//! What a producer hands back per message: a [`DeliveryFuture`] that shares
//! its batch's outcome (one `Arc` per batch, not a channel per message) and
//! resolves to the message's [`Delivery`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::task::{Context, Poll, Waker};

use super::ClientError;

/// Where a message was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// The outcome of one batch, shared by the futures of its messages.
pub(super) struct BatchOutcome {
    /// The base offset the broker gave the batch, or why it failed.
    result: OnceLock<Result<u64, ClientError>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    pub(super) fn new() -> Arc<BatchOutcome> {
        Arc::new(BatchOutcome {
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn is_done(&self) -> bool {
        self.result.get().is_some()
    }

    fn complete(&self, result: Result<u64, ClientError>) {
        if self.result.set(result).is_err() {
            return;
        }
        // Set before the wakers are taken: a poll that registers after this
        // lock sees the result under the same lock.
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the batch has an outcome, whatever it is.
    pub(super) async fn settled(self: Arc<Self>) {
        DeliveryFuture::new(self, 0, 0).await.ok();
    }
}

/// Resolves a batch's outcome exactly once: with the broker's answer, or,
/// if the batch is dropped unsent (the producer's tasks stopped), with an
/// error, so no [`DeliveryFuture`] waits forever.
pub(super) struct Completer(pub(super) Arc<BatchOutcome>);

impl Completer {
    pub(super) fn complete(self, result: Result<u64, ClientError>) {
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
    /// The future of message `index` of the batch whose outcome is
    /// `outcome`, sent to `partition`.
    pub(super) fn new(outcome: Arc<BatchOutcome>, partition: u32, index: u32) -> DeliveryFuture {
        DeliveryFuture {
            outcome,
            partition,
            index,
            waker_slot: None,
        }
    }

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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin; borrowing them apart saves an `Arc` clone
        // per poll.
        let this = self.get_mut();
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.resolve(result));
        }
        let mut wakers = this.outcome.wakers.lock();
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.resolve(result));
        }
        match this.waker_slot {
            Some(i) if i < wakers.len() => {
                if !wakers[i].will_wake(cx.waker()) {
                    wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                this.waker_slot = Some(wakers.len());
                wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}
