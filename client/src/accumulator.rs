//! The producer's accumulator: one open batch per partition, the batches
//! ready for the wire in the order they must be sent, and which batch the
//! sender takes next. Plain state under the producer's lock; nothing here
//! waits or does I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use spool_protocol::{BatchBuilder, BatchError};
use tokio::time::Instant;

use super::delivery::{BatchOutcome, Completer};

/// Where [`Accumulator::append`] put a record.
pub(super) struct Appended {
    pub(super) outcome: Arc<BatchOutcome>,
    pub(super) partition: u32,
    pub(super) index: u32,
    /// A batch was opened or sealed: the sender has something new.
    pub(super) wake_sender: bool,
}

/// A batch being filled.
struct Open {
    id: u64,
    builder: BatchBuilder,
    outcome: Completer,
    deadline: Instant,
    /// Bytes of the producer's buffer its records hold.
    held_bytes: usize,
}

/// A batch ready for the wire, in the order batches became ready.
pub(super) struct Ready {
    pub(super) topic: Arc<str>,
    pub(super) partition: u32,
    pub(super) builder: BatchBuilder,
    pub(super) outcome: Completer,
    /// Bytes of the producer's buffer its records hold until it settles.
    pub(super) held_bytes: usize,
}

struct TopicBatches {
    name: Arc<str>,
    sticky: u32,
    /// The open batch of each partition.
    open: Vec<Option<Open>>,
}

#[derive(Default)]
pub(super) struct Accumulator {
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
    pub(super) closed: bool,
}

impl Accumulator {
    pub(super) fn topic_index(&self, topic: &str) -> Option<usize> {
        // Most producers write one topic: compare before hashing.
        match self.topics.last() {
            Some(t) if &*t.name == topic => Some(self.topics.len() - 1),
            _ => self.by_name.get(topic).copied(),
        }
    }

    /// Registers a topic of `partitions` partitions; returns its index.
    pub(super) fn add_topic(&mut self, topic: &str, partitions: usize) -> usize {
        if let Some(t) = self.topic_index(topic) {
            return t;
        }
        let name: Arc<str> = Arc::from(topic);
        self.topics.push(TopicBatches {
            name: name.clone(),
            sticky: 0,
            open: (0..partitions).map(|_| None).collect(),
        });
        let t = self.topics.len() - 1;
        self.by_name.insert(name, t);
        t
    }

    /// Partitions of topic `t`.
    pub(super) fn partitions(&self, t: usize) -> usize {
        self.topics[t].open.len()
    }

    /// Adds a record to its partition's open batch of topic `t` (opening
    /// one due at `deadline()` if none is open: the clock is read only
    /// then, not once per record), sealing the batch first if
    /// the record would overflow `batch_bytes`, and after if it is full.
    /// The partition is `partition` if given (the caller checked it),
    /// else the key's, else the sticky one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        &mut self,
        t: usize,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        batch_bytes: usize,
        deadline: impl FnOnce() -> Instant,
        held_bytes: usize,
    ) -> Result<Appended, BatchError> {
        let topic = &self.topics[t];
        let pinned = partition.is_some() || key.is_some();
        let mut partition = match (partition, key) {
            (Some(p), _) => p,
            (None, Some(key)) => spool_protocol::partition_for_key(key, topic.open.len() as u32).0,
            (None, None) => topic.sticky,
        };
        let record_len = BatchBuilder::encoded_record_len(0, 0, key, value, &[]);
        let mut wake = false;
        while self.topics[t].open[partition as usize]
            .as_ref()
            .is_some_and(|o| o.builder.len_bytes() + record_len > batch_bytes)
        {
            self.seal(t, partition);
            wake = true;
            if pinned {
                break;
            }
            // Sealing moved the sticky partition on: an unkeyed record
            // starts the next partition's batch, not a second one here.
            partition = self.topics[t].sticky;
        }
        let id = self.next_batch_id;
        let topic = &mut self.topics[t];
        let open = match &mut topic.open[partition as usize] {
            Some(open) => open,
            slot @ None => {
                wake = true;
                slot.insert(Open {
                    id,
                    builder: BatchBuilder::with_capacity(batch_bytes.min(1 << 20) + 64),
                    outcome: Completer(BatchOutcome::new()),
                    deadline: deadline(),
                    held_bytes: 0,
                })
            }
        };
        let index = open.builder.record_count();
        let is_new = index == 0;
        if let Err(err) = open.builder.push(timestamp_ms, key, value, &[]) {
            // Only a record too large for any batch gets here (a full
            // batch was sealed above); drop the batch it would have opened.
            if is_new {
                topic.open[partition as usize] = None;
            }
            return Err(err);
        }
        open.held_bytes += held_bytes;
        let outcome = open.outcome.0.clone();
        let full = open.builder.len_bytes() >= batch_bytes;
        if is_new {
            self.next_batch_id += 1;
            self.opened.push_back((t, partition, id));
        }
        if full {
            self.seal(t, partition);
            wake = true;
        }
        Ok(Appended {
            outcome,
            partition,
            index,
            wake_sender: wake,
        })
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
            outcome: open.outcome,
            held_bytes: open.held_bytes,
        });
    }

    /// Seals every open batch and returns the outcomes of all batches not
    /// yet settled: what a flush waits for.
    pub(super) fn unsettled(&mut self) -> Vec<Arc<BatchOutcome>> {
        self.seal_all();
        self.ready
            .iter()
            .map(|r| r.outcome.0.clone())
            .chain(self.in_flight.iter().cloned())
            .collect()
    }

    /// Seals every open batch (flush, close).
    pub(super) fn seal_all(&mut self) {
        while let Some((t, partition, _)) = self.opened.pop_front() {
            self.seal(t, partition);
        }
    }

    /// The next batch to send: ready ones first (they are older than any
    /// open batch of their partition), then open ones that are due. Returns
    /// the deadline of the first open batch not yet due otherwise.
    pub(super) fn next_batch(
        &mut self,
        now: Instant,
        hurry: bool,
    ) -> (Option<Ready>, Option<Instant>) {
        loop {
            if let Some(ready) = self.ready.pop_front() {
                // Taken means on its way to the wire: tracked for `flush`
                // until it settles.
                self.in_flight.retain(|o| !o.is_done());
                self.in_flight.push(ready.outcome.0.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn acc(partitions: usize) -> (Accumulator, usize) {
        let mut acc = Accumulator::default();
        let t = acc.add_topic("t", partitions);
        (acc, t)
    }

    #[test]
    fn batches_leave_in_the_order_they_filled_and_sticky_moves_on() {
        let (mut acc, t) = acc(3);
        let later = Instant::now() + Duration::from_secs(60);
        // 100-byte values (106 bytes encoded) in 1,012-byte batches (a
        // 52-byte header): a batch fills after 9.
        let mut placed = Vec::new();
        for i in 0..30u32 {
            let a = acc
                .append(t, None, None, &[i as u8; 100], 0, 1_012, || later, 0)
                .unwrap();
            placed.push((a.partition, a.index));
        }
        // Unkeyed records fill partition 0, then 1, then 2, then 0 again.
        let partitions: Vec<u32> = placed.iter().map(|p| p.0).collect();
        assert_eq!(&partitions[..9], &[0; 9]);
        assert_eq!(&partitions[9..18], &[1; 9]);
        assert_eq!(&partitions[18..27], &[2; 9]);
        assert_eq!(&partitions[27..], &[0; 3]);
        assert_eq!(placed[9].1, 0, "a new batch numbers its records from 0");
        // Full batches come out in order; the open one is not due yet.
        let now = Instant::now();
        let mut taken = Vec::new();
        for expected in [0, 1, 2] {
            let (next, _) = acc.next_batch(now, false);
            let next = next.expect("a full batch");
            assert_eq!((next.partition, next.builder.record_count()), (expected, 9));
            taken.push(next);
        }
        let (next, deadline) = acc.next_batch(now, false);
        assert!(next.is_none());
        assert_eq!(deadline, Some(later));
        // Hurrying (zero linger, or a full queue) takes it anyway.
        let (next, _) = acc.next_batch(now, true);
        let next = next.expect("the open batch");
        assert_eq!((next.partition, next.builder.record_count()), (0, 3));
        taken.push(next);
        assert!(acc.next_batch(now, true).0.is_none());
        // Four batches on their way, none settled: a flush waits for all.
        assert_eq!(acc.unsettled().len(), 4);
        // A batch dropped unsent settles (with an error), so nobody waits
        // for it forever.
        let outcome = taken.pop().map(|r| r.outcome.0.clone());
        assert!(outcome.is_some_and(|o| o.is_done()));
    }

    #[test]
    fn a_keyed_record_goes_to_its_hash_and_an_oversized_one_opens_nothing() {
        let (mut acc, t) = acc(4);
        let later = Instant::now() + Duration::from_secs(60);
        let a = acc
            .append(t, None, Some(b"user-1"), b"v", 0, 1_000, || later, 0)
            .unwrap();
        assert_eq!(
            a.partition,
            spool_protocol::partition_for_key(b"user-1", 4).0
        );
        assert!(a.wake_sender, "opening a batch wakes the sender");
        let b = acc
            .append(t, None, Some(b"user-1"), b"w", 0, 1_000, || later, 0)
            .unwrap();
        assert!(!b.wake_sender, "adding to an open batch does not");
        assert!(Arc::ptr_eq(&a.outcome, &b.outcome));
        assert_eq!(b.index, 1);
        let huge = vec![0u8; spool_protocol::batch::MAX_BATCH_LEN];
        assert!(acc
            .append(t, None, Some(b"other"), &huge, 0, 1_000, || later, 0)
            .is_err());
        // Only the user-1 batch exists.
        let (next, _) = acc.next_batch(Instant::now(), true);
        assert_eq!(next.map(|n| n.builder.record_count()), Some(2));
        assert!(acc.next_batch(Instant::now(), true).0.is_none());
    }
}
