//! Lease timing: when to expire a lease, and when to renew a returning
//! holder's. One set of rules for brokers' leases and client sessions, in a
//! cluster and on a single broker.
//!
//! In a cluster only the Raft leader keeps these deadlines, on its own
//! monotonic clock; they are never replicated (a follower's clock says
//! nothing about when the leader heard a heartbeat). What the leader
//! decides is committed as `ExpireLease` / `RenewLease` and applied by
//! every broker alike. A single broker (or an embedded one) decides for its
//! own lock sessions the same way, with itself as the leader. Rules, as in
//! `docs/cluster.md`:
//!
//! - A heartbeat pushes the holder's deadline to *now + TTL*.
//! - A lease whose deadline passed is expired by committing `ExpireLease`
//!   with the generation the leader timed out.
//! - A new leader (or a holder the leader has not timed yet) starts at
//!   *now + TTL*: leadership changing hands never expels a healthy holder,
//!   because each holder gets a whole TTL to reach the new leader.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

// tokio's clock: the real monotonic clock in a broker, the simulation's in
// one (`crate::simulation`).
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// A lease as committed: alive or expired, and which grant it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Time to live of each grant, in milliseconds.
    pub ttl_ms: u64,
    /// False once the deciding node committed its expiry.
    pub alive: bool,
    /// Bumped by every renewal after an expiry, so an expiry decided about
    /// an older grant cannot kill a newer one.
    pub generation: u64,
}

/// An expiry the deciding node should commit: the holder and the
/// generation of the lease it timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired<H> {
    /// Whose lease.
    pub holder: H,
    /// Which grant of it.
    pub generation: u64,
}

/// The deciding node's deadlines for every lease in the committed table.
#[derive(Debug)]
pub struct LeaseTracker<H> {
    deadlines: HashMap<H, Instant>,
    /// Expiries proposed and not yet seen applied, so a slow commit is not
    /// proposed again every tick.
    proposed: HashMap<H, u64>,
}

impl<H> Default for LeaseTracker<H> {
    fn default() -> Self {
        LeaseTracker {
            deadlines: HashMap::new(),
            proposed: HashMap::new(),
        }
    }
}

impl<H: Copy + Eq + Hash + Ord> LeaseTracker<H> {
    /// This node has just become leader: each lease runs a TTL from the
    /// last heartbeat this node heard of it (`heard`: brokers heartbeat
    /// every voter), or a whole TTL from now if it heard none. A broker
    /// that died with the old leader is thus expired a TTL after its
    /// death, not a TTL after the election.
    pub fn on_leadership(
        &mut self,
        now: Instant,
        leases: &BTreeMap<H, Lease>,
        heard: &HashMap<H, Instant>,
    ) {
        self.deadlines = leases
            .iter()
            .map(|(holder, lease)| {
                let ttl = Duration::from_millis(lease.ttl_ms);
                let from = heard.get(holder).copied().unwrap_or(now);
                (*holder, from + ttl)
            })
            .collect();
        self.proposed.clear();
    }

    /// A heartbeat from `holder` arrived at `now`. Returns true if the
    /// committed table has its lease expired: a renewal is to be committed.
    /// None if the table has no lease for it.
    pub fn heartbeat(
        &mut self,
        holder: H,
        now: Instant,
        leases: &BTreeMap<H, Lease>,
    ) -> Option<bool> {
        let lease = leases.get(&holder)?;
        self.deadlines
            .insert(holder, now + Duration::from_millis(lease.ttl_ms));
        Some(!lease.alive)
    }

    /// How long ago `holder`'s last heartbeat arrived, as this leader timed
    /// it (a lease it started afresh on taking over counts from then).
    pub fn age(&self, holder: H, now: Instant, leases: &BTreeMap<H, Lease>) -> Option<Duration> {
        let ttl = Duration::from_millis(leases.get(&holder)?.ttl_ms);
        let deadline = *self.deadlines.get(&holder)?;
        Some(now.saturating_duration_since(deadline.checked_sub(ttl)?))
    }

    /// The expiries to commit at `now`: every alive lease whose deadline has
    /// passed. A lease the tracker has not seen before (added since it
    /// became leader) starts its TTL now instead.
    pub fn due(&mut self, now: Instant, leases: &BTreeMap<H, Lease>) -> Vec<Expired<H>> {
        self.deadlines
            .retain(|holder, _| leases.contains_key(holder));
        self.proposed.retain(|holder, generation| {
            leases
                .get(holder)
                .is_some_and(|l| l.alive && l.generation == *generation)
        });
        let mut due = Vec::new();
        for (holder, lease) in leases {
            let deadline = *self
                .deadlines
                .entry(*holder)
                .or_insert_with(|| now + Duration::from_millis(lease.ttl_ms));
            if lease.alive && now >= deadline && !self.proposed.contains_key(holder) {
                self.proposed.insert(*holder, lease.generation);
                due.push(Expired {
                    holder: *holder,
                    generation: lease.generation,
                });
            }
        }
        due
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::cluster::state::{ClusterState, Command, LeaseHolder, Member, Outcome};
    use crate::cluster::NodeId;

    fn expiries(due: Vec<Expired<LeaseHolder>>) -> Vec<Command> {
        due.into_iter()
            .map(|e| Command::ExpireLease {
                holder: e.holder,
                generation: e.generation,
            })
            .collect()
    }

    const TTL: Duration = Duration::from_millis(1500);

    fn cluster() -> ClusterState {
        let mut s = ClusterState::new(TTL.as_millis() as u64);
        for id in 1..=3 {
            s.apply(&Command::AddMember(Member {
                id: NodeId(id),
                client_addr: String::new(),
                peer_addr: String::new(),
            }));
        }
        s
    }

    fn broker(id: u64) -> LeaseHolder {
        LeaseHolder::Broker(NodeId(id))
    }

    #[test]
    fn a_silent_holder_is_expired_after_one_ttl_and_only_once() {
        let mut state = cluster();
        let mut t = LeaseTracker::default();
        let start = Instant::now();
        t.on_leadership(start, &state.leases, &HashMap::new());
        let beat = Duration::from_millis(300);
        let mut now = start;
        let mut expired = Vec::new();
        while now < start + Duration::from_secs(3) {
            now += Duration::from_millis(100);
            // Brokers 1 and 2 heartbeat every 300 ms; broker 3 is silent.
            if (now - start).as_millis() % beat.as_millis() == 0 {
                for id in [1, 2] {
                    assert_eq!(t.heartbeat(broker(id), now, &state.leases), Some(false));
                }
            }
            for command in expiries(t.due(now, &state.leases)) {
                expired.push((now - start, command.clone()));
                assert_eq!(state.apply(&command), Outcome::Applied);
            }
        }
        assert_eq!(expired.len(), 1, "{expired:?}");
        let (at, command) = &expired[0];
        assert_eq!(
            *command,
            Command::ExpireLease {
                holder: broker(3),
                generation: 0
            }
        );
        assert!(
            *at >= TTL && *at < TTL + Duration::from_millis(200),
            "{at:?}"
        );
        assert!(state.is_alive(NodeId(1)) && state.is_alive(NodeId(2)));
    }

    #[test]
    fn a_new_leader_times_each_lease_from_the_last_heartbeat_it_heard() {
        let state = cluster();
        let mut t = LeaseTracker::default();
        let start = Instant::now();
        // Broker 3 was last heard 1.2 s before the takeover (it died with
        // the old leader); broker 1 just now; broker 2 never.
        let heard = HashMap::from([
            (broker(1), start),
            (broker(3), start - Duration::from_millis(1200)),
        ]);
        t.on_leadership(start, &state.leases, &heard);
        let due = |t: &mut LeaseTracker<LeaseHolder>, ms: u64| -> Vec<LeaseHolder> {
            expiries(t.due(start + Duration::from_millis(ms), &state.leases))
                .into_iter()
                .filter_map(|c| match c {
                    Command::ExpireLease { holder, .. } => Some(holder),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(due(&mut t, 200), vec![]);
        assert_eq!(due(&mut t, 400), vec![broker(3)]);
        // Broker 1 and 2 get their whole TTL (2 from the takeover).
        assert_eq!(due(&mut t, TTL.as_millis() as u64 - 100), vec![]);
    }

    #[test]
    fn age_counts_from_the_last_heartbeat_or_the_takeover() {
        let state = cluster();
        let mut t = LeaseTracker::default();
        let start = Instant::now();
        t.on_leadership(start, &state.leases, &HashMap::new());
        t.heartbeat(broker(1), start + Duration::from_millis(300), &state.leases);
        let now = start + Duration::from_millis(500);
        assert_eq!(
            t.age(broker(1), now, &state.leases),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            t.age(broker(2), now, &state.leases),
            Some(Duration::from_millis(500))
        );
        assert_eq!(t.age(LeaseHolder::Session(7), now, &state.leases), None);
    }

    #[test]
    fn a_new_leader_gives_everyone_a_fresh_ttl() {
        let state = cluster();
        let mut t = LeaseTracker::default();
        let start = Instant::now();
        // The old leader last heard broker 2 long ago; the new leader does
        // not know that and must not act on it.
        t.on_leadership(start, &state.leases, &HashMap::new());
        assert!(t
            .due(start + TTL - Duration::from_millis(1), &state.leases)
            .is_empty());
        assert_eq!(expiries(t.due(start + TTL, &state.leases)).len(), 3);
    }

    #[test]
    fn an_expiry_not_yet_committed_is_not_proposed_again_and_a_renewal_wins() {
        let mut state = cluster();
        let mut t = LeaseTracker::default();
        let start = Instant::now();
        t.on_leadership(start, &state.leases, &HashMap::new());
        let later = start + TTL + Duration::from_millis(10);
        let first = expiries(t.due(later, &state.leases));
        assert_eq!(first.len(), 3);
        assert!(expiries(t.due(later + Duration::from_millis(100), &state.leases)).is_empty());
        for c in &first {
            state.apply(c);
        }
        // Broker 3 comes back: its heartbeat asks for a renewal, and the
        // renewed lease (generation 1) is timed afresh.
        let back = later + Duration::from_millis(500);
        assert_eq!(t.heartbeat(broker(3), back, &state.leases), Some(true));
        let renew = Command::RenewLease(broker(3));
        assert_eq!(state.apply(&renew), Outcome::Applied);
        assert!(t
            .due(back + TTL - Duration::from_millis(1), &state.leases)
            .is_empty());
        assert_eq!(
            expiries(t.due(back + TTL, &state.leases)),
            vec![Command::ExpireLease {
                holder: broker(3),
                generation: 1
            }]
        );
    }
}
