//! Queue-mode delivery state of one partition for one consumer group: a
//! pure state machine (no I/O, time passed in), so that it can be tested
//! against a reference model and replayed from the ack log.
//!
//! Offsets move through: *new* (at or past `next_new`, never delivered),
//! *in flight* (delivered to a member, with a deadline), *pending* (waiting
//! for redelivery after a nack, a missed deadline, or its member leaving;
//! possibly not before some time), and *settled* (acked, or moved to the
//! dead-letter topic). Settled offsets below the low-water mark are
//! forgotten; above it they are kept in a sparse set.
//!
//! After a restart (see [`QueueState::restore`]) everything unsettled is
//! deliverable at once: in-flight deliveries of the crashed process are
//! redelivered (at least once), and nack delays, being timers rather than
//! state, start over at zero.
//!
//! Ordering: first deliveries go out in offset order. A redelivery goes out
//! ahead of new offsets, lowest offset first, so a nacked or expired message
//! can overtake later ones that were already delivered: consumers that need
//! strict order should process one message at a time (max in flight 1).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Identifies a group member.
pub type MemberId = u64;

/// One delivery handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message's offset.
    pub offset: u64,
    /// How many times it has been delivered, this time included.
    pub deliveries: u32,
}

/// What happened to an ack, nack or touch of one offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SettleResult {
    /// Done.
    Ok = 0,
    /// The offset was already settled (acked, or dead-lettered).
    AlreadySettled = 1,
    /// The offset is not in flight (never delivered, or given to someone
    /// else after its deadline).
    NotInFlight = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    member: MemberId,
    deadline_ms: u64,
    deliveries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    not_before_ms: u64,
    deliveries: u32,
}

/// Hashes offsets (dense, sequential integers) with one multiplication:
/// SipHash's DoS resistance buys nothing here and costs most of an ack.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type OffsetMap<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// The state. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct QueueState {
    lwm: u64,
    settled: BTreeSet<u64>,
    next_new: u64,
    in_flight: OffsetMap<InFlight>,
    pending: BTreeMap<u64, Pending>,
    /// (deadline, offset) of deliveries, earliest first. An entry whose
    /// offset is no longer in flight with that deadline is stale and skipped;
    /// the heap is rebuilt when stale entries pile up.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// In-flight count per member, so the max-in-flight check is O(1).
    per_member: OffsetMap<usize>,
    /// Offsets from here on were never delivered, settled or pending, so
    /// handing them out needs no lookups (only a restore puts state above
    /// `next_new`).
    clean_from: u64,
}

impl QueueState {
    /// State with everything below `lwm` settled and `settled` above it;
    /// `counts` are delivery counts remembered from before a restart. All
    /// unsettled offsets from `lwm` on will be delivered (again).
    pub fn restore(
        lwm: u64,
        settled: impl IntoIterator<Item = u64>,
        counts: &HashMap<u64, u32>,
    ) -> QueueState {
        let mut state = QueueState {
            lwm,
            next_new: lwm,
            ..QueueState::default()
        };
        state
            .settled
            .extend(settled.into_iter().filter(|&o| o >= lwm));
        for (&offset, &deliveries) in counts {
            if offset >= lwm && !state.settled.contains(&offset) && deliveries > 0 {
                state.pending.insert(
                    offset,
                    Pending {
                        not_before_ms: 0,
                        deliveries,
                    },
                );
            }
        }
        let highest = state
            .settled
            .last()
            .into_iter()
            .chain(state.pending.keys().last())
            .max()
            .copied();
        state.clean_from = highest.map_or(lwm, |h| h + 1).max(lwm);
        state.advance_lwm();
        state
    }

    /// Every offset below this is settled.
    pub fn low_water_mark(&self) -> u64 {
        self.lwm
    }

    /// Settled offsets at or above the low-water mark.
    pub fn settled_above_lwm(&self) -> impl Iterator<Item = u64> + '_ {
        self.settled.iter().copied()
    }

    /// Delivery counts of offsets that are pending or in flight.
    pub fn delivery_counts(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.pending
            .iter()
            .map(|(&o, p)| (o, p.deliveries))
            .chain(self.in_flight.iter().map(|(&o, f)| (o, f.deliveries)))
    }

    /// Messages delivered and not yet settled.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages of `member` in flight.
    pub fn in_flight_of(&self, member: MemberId) -> usize {
        self.per_member.get(&member).copied().unwrap_or(0)
    }

    /// Messages waiting for redelivery.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Every unsettled message that was delivered: in flight (`Some`
    /// member, and its ack deadline) or waiting out a nack delay or its
    /// redelivery (`None`, and when it may go again), with its delivery
    /// count, by offset.
    pub fn unsettled(&self) -> Vec<(u64, Option<MemberId>, u32, u64)> {
        let mut all: Vec<_> = self
            .in_flight
            .iter()
            .map(|(&o, f)| (o, Some(f.member), f.deliveries, f.deadline_ms))
            .chain(
                self.pending
                    .iter()
                    .map(|(&o, p)| (o, None, p.deliveries, p.not_before_ms)),
            )
            .collect();
        all.sort_unstable_by_key(|u| u.0);
        all
    }

    fn fly(&mut self, offset: u64, flight: InFlight) {
        *self.per_member.entry(flight.member).or_insert(0) += 1;
        self.deadlines.push(Reverse((flight.deadline_ms, offset)));
        if let Some(old) = self.in_flight.insert(offset, flight) {
            self.unfly_member(old.member);
        }
    }

    fn land(&mut self, offset: u64) -> Option<InFlight> {
        let flight = self.in_flight.remove(&offset)?;
        self.unfly_member(flight.member);
        if self.deadlines.len() > 2 * self.in_flight.len() + 1024 {
            self.deadlines = self
                .in_flight
                .iter()
                .map(|(&o, f)| Reverse((f.deadline_ms, o)))
                .collect();
        }
        Some(flight)
    }

    fn unfly_member(&mut self, member: MemberId) {
        if let Some(n) = self.per_member.get_mut(&member) {
            *n -= 1;
            if *n == 0 {
                self.per_member.remove(&member);
            }
        }
    }

    /// Moves deliveries whose deadline passed to pending. Returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(&Reverse((deadline, offset))) = self.deadlines.peek() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop();
            let live = self
                .in_flight
                .get(&offset)
                .is_some_and(|f| f.deadline_ms == deadline);
            if !live {
                continue; // settled, nacked or touched since
            }
            if let Some(f) = self.land(offset) {
                self.pending.insert(
                    offset,
                    Pending {
                        not_before_ms: now_ms,
                        deliveries: f.deliveries,
                    },
                );
                expired += 1;
            }
        }
        expired
    }

    /// The earliest time something in flight may expire or something
    /// pending becomes deliverable (a hint: waking early is harmless).
    pub fn next_event_ms(&self) -> Option<u64> {
        let deadline = self.deadlines.peek().map(|Reverse((d, _))| *d);
        let pending = self.pending.values().map(|p| p.not_before_ms).min();
        deadline.into_iter().chain(pending).min()
    }

    /// Offsets ready for redelivery that have already been delivered
    /// `max_deliveries` times: the caller dead-letters them, then calls
    /// [`QueueState::settle`].
    pub fn exhausted(&self, now_ms: u64, max_deliveries: u32) -> Vec<Delivery> {
        self.pending
            .iter()
            .filter(|(_, p)| p.not_before_ms <= now_ms && p.deliveries >= max_deliveries)
            .map(|(&offset, p)| Delivery {
                offset,
                deliveries: p.deliveries,
            })
            .collect()
    }

    /// Hands out up to `max` messages to `member`: due redeliveries first
    /// (lowest offset first), then new offsets below `log_end`. Exhausted
    /// offsets (see [`QueueState::exhausted`]) are skipped.
    pub fn take(
        &mut self,
        member: MemberId,
        now_ms: u64,
        ack_wait_ms: u64,
        max: usize,
        max_deliveries: u32,
        log_end: u64,
    ) -> Vec<Delivery> {
        let mut out = Vec::new();
        let deadline_ms = now_ms + ack_wait_ms;
        if !self.pending.is_empty() {
            let due: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.not_before_ms <= now_ms && p.deliveries < max_deliveries)
                .map(|(&o, _)| o)
                .take(max)
                .collect();
            for offset in due {
                if let Some(p) = self.pending.remove(&offset) {
                    let deliveries = p.deliveries + 1;
                    self.fly(
                        offset,
                        InFlight {
                            member,
                            deadline_ms,
                            deliveries,
                        },
                    );
                    out.push(Delivery { offset, deliveries });
                }
            }
        }
        while out.len() < max && self.next_new < log_end {
            let offset = self.next_new;
            self.next_new += 1;
            let known = offset < self.clean_from
                && (self.settled.contains(&offset)
                    || self.pending.contains_key(&offset)
                    || self.in_flight.contains_key(&offset));
            if known {
                continue;
            }
            self.fly(
                offset,
                InFlight {
                    member,
                    deadline_ms,
                    deliveries: 1,
                },
            );
            out.push(Delivery {
                offset,
                deliveries: 1,
            });
        }
        out
    }

    /// Settles an offset (ack, or dead-lettered). Idempotent.
    pub fn settle(&mut self, offset: u64) -> SettleResult {
        if offset < self.lwm || self.settled.contains(&offset) {
            return SettleResult::AlreadySettled;
        }
        let was_out = self.land(offset).is_some() | self.pending.remove(&offset).is_some();
        if !was_out && offset >= self.next_new {
            return SettleResult::NotInFlight;
        }
        if offset == self.lwm {
            // The common case, acks in order: no set to touch.
            self.lwm += 1;
        } else {
            self.settled.insert(offset);
        }
        self.advance_lwm();
        SettleResult::Ok
    }

    /// Acks an offset delivered to `member`. An ack from a member whose
    /// delivery expired (and may be with someone else now) still settles the
    /// message: the work was done, and doing it again helps nobody.
    pub fn ack(&mut self, _member: MemberId, offset: u64) -> SettleResult {
        self.settle(offset)
    }

    /// Returns an in-flight offset of `member` for redelivery after
    /// `delay_ms`.
    pub fn nack(
        &mut self,
        member: MemberId,
        offset: u64,
        now_ms: u64,
        delay_ms: u64,
    ) -> SettleResult {
        if offset < self.lwm || self.settled.contains(&offset) {
            return SettleResult::AlreadySettled;
        }
        match self.in_flight.get(&offset) {
            Some(f) if f.member == member => {
                let deliveries = f.deliveries;
                self.land(offset);
                self.pending.insert(
                    offset,
                    Pending {
                        not_before_ms: now_ms + delay_ms,
                        deliveries,
                    },
                );
                SettleResult::Ok
            }
            _ => SettleResult::NotInFlight,
        }
    }

    /// Takes back a delivery [`QueueState::take`] just made to `member`
    /// that never went out (its answer had no room left): deliverable again
    /// at once, with the delivery count it had before.
    pub fn untake(&mut self, member: MemberId, offset: u64, now_ms: u64) {
        if self
            .in_flight
            .get(&offset)
            .is_none_or(|f| f.member != member)
        {
            return;
        }
        if let Some(f) = self.land(offset) {
            self.pending.insert(
                offset,
                Pending {
                    not_before_ms: now_ms,
                    deliveries: f.deliveries.saturating_sub(1),
                },
            );
        }
    }

    /// Extends the deadline of an in-flight offset of `member`.
    pub fn touch(
        &mut self,
        member: MemberId,
        offset: u64,
        now_ms: u64,
        ack_wait_ms: u64,
    ) -> SettleResult {
        if offset < self.lwm || self.settled.contains(&offset) {
            return SettleResult::AlreadySettled;
        }
        match self.in_flight.get_mut(&offset) {
            Some(f) if f.member == member => {
                f.deadline_ms = now_ms + ack_wait_ms;
                let deadline = f.deadline_ms;
                // The old heap entry goes stale; this one is live.
                self.deadlines.push(Reverse((deadline, offset)));
                SettleResult::Ok
            }
            _ => SettleResult::NotInFlight,
        }
    }

    /// Makes everything `member` holds deliverable again at once (it left or
    /// disconnected). Returns how many.
    pub fn release_member(&mut self, member: MemberId, now_ms: u64) -> usize {
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == member)
            .map(|(&o, _)| o)
            .collect();
        for offset in &held {
            if let Some(f) = self.land(*offset) {
                self.pending.insert(
                    *offset,
                    Pending {
                        not_before_ms: now_ms,
                        deliveries: f.deliveries,
                    },
                );
            }
        }
        held.len()
    }

    /// Settles everything below `offset` (retention removed those messages
    /// before the group consumed them). Returns true if anything changed.
    pub fn drop_below(&mut self, offset: u64) -> bool {
        if offset <= self.lwm {
            return false;
        }
        let gone: Vec<u64> = self
            .in_flight
            .keys()
            .copied()
            .filter(|&o| o < offset)
            .collect();
        for o in gone {
            self.land(o);
        }
        self.pending = self.pending.split_off(&offset);
        self.settled = self.settled.split_off(&offset);
        self.lwm = offset;
        self.advance_lwm();
        true
    }

    /// Forgets everything and restarts at `offset` (group reset).
    pub fn reset(&mut self, offset: u64) {
        *self = QueueState {
            lwm: offset,
            next_new: offset,
            clean_from: offset,
            ..QueueState::default()
        };
    }

    fn advance_lwm(&mut self) {
        while self.settled.first() == Some(&self.lwm) {
            self.settled.pop_first();
            self.lwm += 1;
        }
        self.next_new = self.next_new.max(self.lwm);
        // Everything below the low-water mark is settled: the mark never
        // passes a message still out or waiting. Pending is ordered, so its
        // check is O(1); in-flight is checked only in small states.
        debug_assert!(
            self.pending.keys().next().is_none_or(|&o| o >= self.lwm),
            "the low-water mark passed a pending message"
        );
        debug_assert!(
            self.in_flight.len() > 64 || self.in_flight.keys().all(|&o| o >= self.lwm),
            "the low-water mark passed a message in flight"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WAIT: u64 = 1000;
    const MAX: u32 = 3;

    #[test]
    fn deliver_ack_nack_expire_and_dead_letter() {
        let mut q = QueueState::default();
        let d = q.take(1, 0, WAIT, 10, MAX, 3);
        assert_eq!(d.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(q.ack(1, 1), SettleResult::Ok);
        assert_eq!(q.ack(1, 1), SettleResult::AlreadySettled);
        assert_eq!(q.low_water_mark(), 0);
        assert_eq!(q.ack(1, 0), SettleResult::Ok);
        assert_eq!(q.low_water_mark(), 2);
        // Nack with a delay: not redelivered before it.
        assert_eq!(q.nack(1, 2, 0, 500), SettleResult::Ok);
        assert!(q.take(2, 499, WAIT, 10, MAX, 3).is_empty());
        assert_eq!(
            q.take(2, 500, WAIT, 10, MAX, 3),
            [Delivery {
                offset: 2,
                deliveries: 2
            }]
        );
        // Someone else's nack does nothing.
        assert_eq!(q.nack(1, 2, 500, 0), SettleResult::NotInFlight);
        // Deadline passes: redelivered with the count going up, then exhausted.
        q.expire(1500);
        assert_eq!(
            q.take(3, 1500, WAIT, 10, MAX, 3),
            [Delivery {
                offset: 2,
                deliveries: 3
            }]
        );
        q.expire(2500);
        assert!(q.take(3, 2500, WAIT, 10, MAX, 3).is_empty());
        assert_eq!(
            q.exhausted(2500, MAX),
            [Delivery {
                offset: 2,
                deliveries: 3
            }]
        );
        assert_eq!(q.settle(2), SettleResult::Ok);
        assert_eq!(q.low_water_mark(), 3);
    }

    #[test]
    fn touch_extends_and_release_frees_at_once() {
        let mut q = QueueState::default();
        q.take(1, 0, WAIT, 2, MAX, 2);
        assert_eq!(q.touch(1, 0, 900, WAIT), SettleResult::Ok);
        q.expire(1000);
        // Offset 1 expired, offset 0 was touched.
        assert_eq!(
            q.take(2, 1000, WAIT, 5, MAX, 2),
            [Delivery {
                offset: 1,
                deliveries: 2
            }]
        );
        assert_eq!(q.release_member(1, 1001), 1);
        assert_eq!(
            q.take(2, 1001, WAIT, 5, MAX, 2),
            [Delivery {
                offset: 0,
                deliveries: 2
            }]
        );
    }

    #[test]
    fn an_untaken_delivery_comes_back_with_its_count_unchanged() {
        let mut q = QueueState::default();
        let first = q.take(1, 0, WAIT, 3, MAX, 3);
        assert_eq!(first.len(), 3);
        // Offsets 1 and 2 never went out.
        q.untake(1, 1, 0);
        q.untake(1, 2, 0);
        // Not another member's, and not twice.
        q.untake(2, 0, 0);
        q.untake(1, 2, 0);
        assert_eq!(q.in_flight_of(1), 1);
        let again = q.take(2, 0, WAIT, 5, MAX, 3);
        let delivered = |offset| Delivery {
            offset,
            deliveries: 1,
        };
        assert_eq!(again, [delivered(1), delivered(2)]);
        // A redelivery taken back keeps its count too.
        q.expire(WAIT + 1);
        let redelivered = q.take(3, WAIT + 1, WAIT, 1, MAX, 3);
        assert_eq!(redelivered[0].deliveries, 2);
        q.untake(3, redelivered[0].offset, WAIT + 1);
        assert_eq!(q.take(3, WAIT + 1, WAIT, 1, MAX, 3), redelivered);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Take {
            member: u64,
            max: usize,
        },
        Ack {
            member: u64,
            pick: usize,
        },
        Nack {
            member: u64,
            pick: usize,
            delay: u64,
        },
        Advance(u64),
        Leave(u64),
        Produce(u64),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..4, 1usize..5).prop_map(|(member, max)| Op::Take { member, max }),
            4 => (1u64..4, any::<usize>()).prop_map(|(member, pick)| Op::Ack { member, pick }),
            2 => (1u64..4, any::<usize>(), 0u64..1500).prop_map(|(member, pick, delay)| Op::Nack { member, pick, delay }),
            2 => (1u64..2000).prop_map(Op::Advance),
            1 => (1u64..4).prop_map(Op::Leave),
            2 => (1u64..5).prop_map(Op::Produce),
            1 => Just(Op::Restart),
        ]
    }

    /// The reference: per offset, who holds it (if anyone), until when, how
    /// often it went out, and whether it is done. Plainly, with no indexes.
    #[derive(Clone, Debug, Default)]
    struct Model {
        end: u64,
        done: BTreeSet<u64>,
        held: BTreeMap<u64, (u64, u64)>, // offset -> (member, deadline)
        ready_at: BTreeMap<u64, u64>,    // redelivery not before
        count: BTreeMap<u64, u32>,
    }

    proptest! {
        #[test]
        fn matches_a_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut q = QueueState::default();
            let mut m = Model::default();
            let mut now = 0u64;
            let mut dead = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Produce(n) => m.end += n,
                    Op::Advance(ms) => now += ms,
                    Op::Take { member, max } => {
                        q.expire(now);
                        for d in q.exhausted(now, MAX) {
                            prop_assert_eq!(q.settle(d.offset), SettleResult::Ok);
                            dead.insert(d.offset);
                        }
                        let got = q.take(member, now, WAIT, max, MAX, m.end);
                        // Model: expire, dead-letter, then redeliveries, then new.
                        let expired: Vec<u64> = m.held.iter().filter(|(_, (_, dl))| *dl <= now).map(|(&o, _)| o).collect();
                        for o in expired { m.held.remove(&o); m.ready_at.insert(o, now); }
                        let exhausted: Vec<u64> = m.ready_at.iter().filter(|(o, t)| **t <= now && m.count[*o] >= MAX).map(|(&o, _)| o).collect();
                        for o in exhausted { m.ready_at.remove(&o); m.done.insert(o); }
                        let mut want = Vec::new();
                        let due: Vec<u64> = m.ready_at.iter().filter(|(_, t)| **t <= now).map(|(&o, _)| o).take(max).collect();
                        for o in due { m.ready_at.remove(&o); want.push(o); }
                        for o in 0..m.end {
                            if want.len() >= max { break; }
                            if !m.done.contains(&o) && !m.held.contains_key(&o) && !m.ready_at.contains_key(&o) && !m.count.contains_key(&o) {
                                want.push(o);
                            }
                        }
                        for &o in &want {
                            m.held.insert(o, (member, now + WAIT));
                            *m.count.entry(o).or_insert(0) += 1;
                        }
                        let got_offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
                        prop_assert_eq!(&got_offsets, &want);
                        for d in got { prop_assert_eq!(d.deliveries, m.count[&d.offset]); }
                    }
                    Op::Ack { member, pick } => {
                        let candidates: Vec<u64> = m.held.iter().filter(|(_, (mb, _))| *mb == member).map(|(&o, _)| o).collect();
                        if candidates.is_empty() { continue; }
                        let o = candidates[pick % candidates.len()];
                        prop_assert_eq!(q.ack(member, o), SettleResult::Ok);
                        m.held.remove(&o);
                        m.done.insert(o);
                    }
                    Op::Nack { member, pick, delay } => {
                        let candidates: Vec<u64> = m.held.iter().filter(|(_, (mb, dl))| *mb == member && *dl > now).map(|(&o, _)| o).collect();
                        if candidates.is_empty() { continue; }
                        let o = candidates[pick % candidates.len()];
                        prop_assert_eq!(q.nack(member, o, now, delay), SettleResult::Ok);
                        m.held.remove(&o);
                        m.ready_at.insert(o, now + delay);
                    }
                    Op::Leave(member) => {
                        q.release_member(member, now);
                        let held: Vec<u64> = m.held.iter().filter(|(_, (mb, _))| *mb == member).map(|(&o, _)| o).collect();
                        for o in held { m.held.remove(&o); m.ready_at.insert(o, now); }
                    }
                    Op::Restart => {
                        // Only what the ack log keeps survives: settled offsets
                        // and delivery counts. In-flight work is deliverable
                        // again at once, and so is nacked work (delays are
                        // timers, not state: documented).
                        let counts: HashMap<u64, u32> = q.delivery_counts().collect();
                        let settled: Vec<u64> = q.settled_above_lwm().collect();
                        q = QueueState::restore(q.low_water_mark(), settled, &counts);
                        let held: Vec<u64> = m.held.keys().copied().collect();
                        for o in held { m.held.remove(&o); m.ready_at.insert(o, 0); }
                        for t in m.ready_at.values_mut() { *t = 0; }
                    }
                }
                // Invariants: the low-water mark is exactly the first unsettled offset.
                let first_open = (0..).find(|o| !m.done.contains(o)).unwrap_or(0);
                prop_assert_eq!(q.low_water_mark(), first_open);
                prop_assert_eq!(q.in_flight_count(), m.held.len());
            }
            // Nothing is both dead-lettered and acked twice, and nothing settled is out.
            for o in &dead { prop_assert!(m.done.contains(o)); }
        }
    }
}
