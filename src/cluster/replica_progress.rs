//! A partition leader's view of its followers: how far each has fetched,
//! which are in sync, and the high watermark that follows from that.
//! Pure bookkeeping, driven by the leader's fetch handler and its clock;
//! the in-sync set itself is committed through the control plane, so a
//! new leader is only ever chosen from replicas that hold every
//! acknowledged record.
//!
//! In sync means *caught up recently*, not *few records behind* (Kafka's
//! `replica.lag.time.max.ms`, after a count-based rule proved unusable
//! under bursts): a follower stays in the set while one of its fetches
//! reached the leader's end within `max_lag`. It leaves when it has not;
//! it returns once it has fetched up to the high watermark again.
//!
//! The high watermark is the smallest position among the in-sync replicas
//! (the leader's own position is its log end). It never goes back while
//! one leader leads: a replica leaving the set can only raise the minimum.

use std::collections::{BTreeMap, BTreeSet};

use spool_protocol::Offset;

use super::placement::NodeId;

/// One follower as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Follower {
    /// It holds every record below this (the offset it fetched from).
    position: Offset,
    /// When (leader's clock, ms) it was last caught up (see
    /// `record_fetch`).
    caught_up_at_ms: u64,
    /// The leader's end when this follower last fetched, and when.
    previous_fetch: Option<(Offset, u64)>,
}

/// The leader's bookkeeping for one partition.
#[derive(Clone, Debug)]
pub struct ReplicaProgress {
    leader: NodeId,
    max_lag_ms: u64,
    followers: BTreeMap<NodeId, Follower>,
    in_sync: BTreeSet<NodeId>,
    high_watermark: Offset,
}

impl ReplicaProgress {
    /// The view of a leader that just took over at `now_ms`: `replicas`
    /// (the leader among them), of which `in_sync` were committed as in
    /// sync, and a high watermark of `high_watermark` (what the leader
    /// knows to be on every in-sync replica). Every follower counts as just
    /// caught up: it gets a full `max_lag_ms` to fetch from its new leader.
    pub fn new(
        leader: NodeId,
        replicas: &[NodeId],
        in_sync: &[NodeId],
        high_watermark: Offset,
        now_ms: u64,
        max_lag_ms: u64,
    ) -> ReplicaProgress {
        let followers = replicas
            .iter()
            .filter(|&&r| r != leader)
            .map(|&r| {
                (
                    r,
                    Follower {
                        position: Offset(0),
                        caught_up_at_ms: now_ms,
                        previous_fetch: None,
                    },
                )
            })
            .collect();
        let mut in_sync: BTreeSet<NodeId> = in_sync.iter().copied().collect();
        in_sync.insert(leader);
        ReplicaProgress {
            leader,
            max_lag_ms,
            followers,
            in_sync,
            high_watermark,
        }
    }

    /// A follower fetched from `position` (so it holds every record below)
    /// at `now_ms`, when the leader's log ended at `leader_end`. Unknown
    /// replicas are ignored (a stale fetcher after a reassignment).
    ///
    /// Caught up means: at the leader's end now, or at least where the
    /// leader's end was at its previous fetch, which makes it caught up as
    /// of that fetch (Kafka's rule). Under a steady stream of writes a
    /// follower is never exactly at the end, yet one that fetches back to
    /// back has everything that existed one fetch ago.
    pub fn record_fetch(
        &mut self,
        follower: NodeId,
        position: Offset,
        leader_end: Offset,
        now_ms: u64,
    ) {
        let Some(f) = self.followers.get_mut(&follower) else {
            return;
        };
        f.position = position.min(leader_end);
        if position >= leader_end {
            f.caught_up_at_ms = now_ms;
        } else if let Some((end_then, at)) = f.previous_fetch {
            if position >= end_then {
                f.caught_up_at_ms = f.caught_up_at_ms.max(at);
            }
        }
        f.previous_fetch = Some((leader_end, now_ms));
        self.advance(leader_end);
    }

    /// The in-sync replicas, the leader included.
    pub fn in_sync(&self) -> &BTreeSet<NodeId> {
        &self.in_sync
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// Replicas, the leader included.
    pub fn replica_count(&self) -> usize {
        self.followers.len() + 1
    }

    /// The largest number of records any follower is behind `leader_end`.
    pub fn max_lag(&self, leader_end: Offset) -> u64 {
        self.followers
            .values()
            .map(|f| leader_end.0.saturating_sub(f.position.0))
            .max()
            .unwrap_or(0)
    }

    /// Where `follower` is, if it is a follower.
    pub fn position(&self, follower: NodeId) -> Option<Offset> {
        self.followers.get(&follower).map(|f| f.position)
    }

    /// The in-sync set this leader should propose now, if it differs from
    /// the committed one: followers that have not caught up within
    /// `max_lag_ms` leave; followers outside it that have fetched from this
    /// leader and hold everything up to the high watermark return. (Only
    /// a fetch says where a follower is: one that never fetched, a dead
    /// one, would otherwise pass for caught up on an empty partition and
    /// hold the high watermark at 0 while its return was proposed.)
    pub fn proposed_in_sync(&self, now_ms: u64) -> Option<BTreeSet<NodeId>> {
        let mut proposed = BTreeSet::from([self.leader]);
        for (&id, f) in &self.followers {
            let lagging = now_ms.saturating_sub(f.caught_up_at_ms) > self.max_lag_ms;
            let member = self.in_sync.contains(&id);
            let keep = member && !lagging;
            let rejoin = !member
                && f.previous_fetch.is_some()
                && f.position >= self.high_watermark
                && !lagging;
            if keep || rejoin {
                proposed.insert(id);
            }
        }
        (proposed != self.in_sync).then_some(proposed)
    }

    /// The partition's copies changed (reassignment): a new follower starts
    /// at offset 0, outside the in-sync set, and joins it once it has
    /// caught up; a dropped one is forgotten.
    pub fn set_replicas(&mut self, replicas: &[NodeId], now_ms: u64) {
        self.followers
            .retain(|id, _| replicas.contains(id) && *id != self.leader);
        for &r in replicas {
            if r != self.leader {
                self.followers.entry(r).or_insert(Follower {
                    position: Offset(0),
                    caught_up_at_ms: now_ms,
                    previous_fetch: None,
                });
            }
        }
    }

    /// Adopts the in-sync set the control plane committed; the high
    /// watermark moves up if a laggard left.
    pub fn set_in_sync(&mut self, in_sync: &BTreeSet<NodeId>, leader_end: Offset) {
        self.in_sync = in_sync.clone();
        self.in_sync.insert(self.leader);
        self.advance(leader_end);
    }

    /// Raises the high watermark to the smallest in-sync position.
    fn advance(&mut self, leader_end: Offset) {
        let lowest = self
            .in_sync
            .iter()
            .map(|id| match self.followers.get(id) {
                Some(f) => f.position,
                None => leader_end,
            })
            .min()
            .unwrap_or(leader_end);
        self.high_watermark = self.high_watermark.max(lowest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: NodeId = NodeId(1);
    const A: NodeId = NodeId(2);
    const B: NodeId = NodeId(3);

    fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
        set.iter().map(|n| n.0).collect()
    }

    /// A leader that took over an empty partition after a follower died
    /// (out of the committed in-sync set with its lease): the dead one
    /// never fetches, so it is never proposed back, and the high watermark
    /// follows the live follower alone.
    #[test]
    fn a_follower_that_never_fetched_is_not_proposed_back_on_an_empty_partition() {
        let mut p = ReplicaProgress::new(L, &[L, A, B], &[L, B], Offset(0), 0, 1000);
        p.record_fetch(B, Offset(0), Offset(0), 10);
        assert_eq!(p.proposed_in_sync(20), None, "A has not fetched");
        p.record_fetch(B, Offset(5), Offset(5), 30);
        assert_eq!(p.high_watermark(), Offset(5));
        assert_eq!(p.proposed_in_sync(40), None);
        // Back from the dead: its first fetch puts it at the high
        // watermark, and it may rejoin.
        p.record_fetch(A, Offset(5), Offset(5), 50);
        assert_eq!(p.proposed_in_sync(60).map(|s| ids(&s)), Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_high_watermark_is_the_slowest_in_sync_position_and_never_falls() {
        let mut p = ReplicaProgress::new(L, &[L, A, B], &[L, A, B], Offset(0), 0, 1000);
        p.record_fetch(A, Offset(10), Offset(10), 5);
        assert_eq!(p.high_watermark(), Offset(0), "B has nothing yet");
        p.record_fetch(B, Offset(7), Offset(10), 6);
        assert_eq!(p.high_watermark(), Offset(7));
        p.record_fetch(B, Offset(10), Offset(12), 7);
        assert_eq!(p.high_watermark(), Offset(10));
        // A fetch from an older position (a restarted fetcher) lowers that
        // follower's position, never the high watermark.
        p.record_fetch(A, Offset(4), Offset(12), 8);
        assert_eq!(p.high_watermark(), Offset(10));
    }

    #[test]
    fn a_follower_that_stops_catching_up_leaves_and_returns_when_caught_up() {
        let mut p = ReplicaProgress::new(L, &[L, A, B], &[L, A, B], Offset(0), 0, 1000);
        let mut end = Offset(0);
        for t in (0..3000).step_by(100) {
            end = Offset(end.0 + 5);
            // A keeps up; B stopped at time 0 (paused).
            p.record_fetch(A, end, end, t);
            if let Some(proposed) = p.proposed_in_sync(t) {
                assert!(t > 1000, "B proposed out too early, at {t} ms");
                assert_eq!(ids(&proposed), vec![1, 2]);
                p.set_in_sync(&proposed, end);
                break;
            }
        }
        assert_eq!(ids(p.in_sync()), vec![1, 2]);
        // With B out, the high watermark follows A alone.
        assert_eq!(p.high_watermark(), end);
        // B comes back behind: not in sync until it reaches the watermark.
        let now = 3500;
        p.record_fetch(A, end, end, now);
        p.record_fetch(B, Offset(3), end, now);
        assert_eq!(p.proposed_in_sync(now), None);
        p.record_fetch(B, end, end, now + 10);
        let proposed = p.proposed_in_sync(now + 10).expect("B rejoins");
        assert_eq!(ids(&proposed), vec![1, 2, 3]);
    }

    #[test]
    fn a_follower_fetching_back_to_back_under_steady_writes_stays_in_sync() {
        let mut p = ReplicaProgress::new(L, &[L, A], &[L, A], Offset(0), 0, 1000);
        // Every fetch reaches where the leader ended at the previous one,
        // never the leader's end now (100 records land between fetches).
        let mut end = 100;
        for t in (0..5000).step_by(10) {
            p.record_fetch(A, Offset(end - 100), Offset(end), t);
            end += 100;
            assert_eq!(p.proposed_in_sync(t), None, "A dropped at {t} ms");
        }
        // One that falls further behind each time does leave.
        let mut q = ReplicaProgress::new(L, &[L, A], &[L, A], Offset(0), 0, 1000);
        let (mut end, mut pos) = (100u64, 0u64);
        let mut left = None;
        for t in (0..5000).step_by(10) {
            q.record_fetch(A, Offset(pos), Offset(end), t);
            pos += 50;
            end += 100;
            if q.proposed_in_sync(t).is_some() {
                left = Some(t);
                break;
            }
        }
        assert!(left.is_some_and(|t| t > 1000), "left at {left:?}");
    }

    #[test]
    fn a_new_leader_gives_every_follower_a_full_lag_window() {
        let p = ReplicaProgress::new(L, &[L, A], &[L, A], Offset(50), 10_000, 1000);
        assert_eq!(p.proposed_in_sync(10_900), None);
        let out = p.proposed_in_sync(11_001).expect("A never fetched");
        assert_eq!(ids(&out), vec![1]);
        assert_eq!(p.high_watermark(), Offset(50));
    }
}
