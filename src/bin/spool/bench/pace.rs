//! What every producer of the bench shares, over a connection or in
//! process: when it sends (its share of the messages, `--duration-secs`,
//! `--rate`, the clock reads) and how its acknowledgements are timed.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::payload::SendTimes;
use super::{BenchArgs, Shared};

/// Flat-out producers read the clock once per this many sends (see
/// [`Pace::next`]).
const STAMP_EVERY: u64 = 16;

/// When producer `id` sends its next message, and when it is done.
pub(super) struct Pace {
    /// Messages to send, without `--duration-secs`.
    share: u64,
    /// In the bench clock's nanoseconds, so the send time read for each
    /// message also serves the deadline check (clock reads are not free).
    deadline_ns: Option<u64>,
    /// Between two sends, at a `--rate`.
    interval: Option<Duration>,
    started: tokio::time::Instant,
    sent_ns: u64,
}

impl Pace {
    pub(super) fn new(id: u32, args: &BenchArgs, shared: &Shared) -> Pace {
        let producers = u64::from(args.producers);
        Pace {
            share: args.messages / producers + u64::from(u64::from(id) < args.messages % producers),
            deadline_ns: args
                .duration_secs
                .map(|s| shared.now_ns() + Duration::from_secs_f64(s).as_nanos() as u64),
            interval: args
                .rate
                .map(|r| Duration::from_secs_f64(f64::from(args.producers) / r.max(1) as f64)),
            started: tokio::time::Instant::now(),
            sent_ns: 0,
        }
    }

    /// At a fixed rate the producer idles before each message: it should
    /// hand over what it holds first, so that is timed when it is done.
    pub(super) fn idles(&self) -> bool {
        self.interval.is_some()
    }

    /// Waits until message `seq` is due; its send time, or `None` once the
    /// producer has sent its share or its time is up.
    ///
    /// Flat out, one clock read serves `STAMP_EVERY` sends: a read costs as
    /// much as a quarter of a send, and a message stamped a few sends early
    /// (a few microseconds) changes nothing in latencies that queueing
    /// makes milliseconds. At a fixed rate every message is stamped when it
    /// is sent.
    pub(super) async fn next(&mut self, seq: u64, shared: &Shared) -> Option<u64> {
        if self.deadline_ns.is_none() && seq >= self.share {
            return None;
        }
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(self.started + interval * seq as u32).await;
        }
        if self.interval.is_some() || seq % STAMP_EVERY == 0 {
            self.sent_ns = shared.now_ns();
            if self.deadline_ns.is_some_and(|d| self.sent_ns >= d) {
                return None;
            }
        }
        Some(self.sent_ns)
    }
}

/// A task that awaits acknowledgements as they resolve, so each latency is
/// the message's own and not the head of a queue's: the producer hands it
/// one future per group of messages that resolve together (a batch), with
/// their send times. It ends once the sender is dropped and every future
/// has resolved.
pub(super) fn spawn_ack_collector<F, T, E>(
    shared: &Arc<Shared>,
) -> (UnboundedSender<(F, SendTimes)>, JoinHandle<()>)
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Display + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(F, SendTimes)>();
    let shared = shared.clone();
    let task = tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                item = rx.recv(), if open => match item {
                    Some((ack, sent)) => pending.push(async move { (sent, ack.await) }),
                    None => open = false,
                },
                Some((sent, result)) = pending.next(), if !pending.is_empty() => {
                    let sent: SendTimes = sent;
                    match result {
                        Ok(_) => {
                            shared.acked.fetch_add(sent.count(), Ordering::Relaxed);
                            let now = shared.now_ns();
                            sent.record(now, shared.warmup_ns, &mut shared.ack_latency.lock());
                        }
                        Err(e) => shared.error(format!("a produce failed: {e}")),
                    }
                }
                else => break,
            }
        }
    });
    (tx, task)
}
