//! Where each partition lives: rendezvous (highest-random-weight) hashing
//! over the cluster's members.
//!
//! Every member gets a pseudo-random score for every (topic, partition);
//! the replicas are the members with the highest scores, best first. It is
//! a pure function of the committed member set, so every broker computes
//! the same list without talking to anyone.
//!
//! Why rendezvous rather than a ring with virtual nodes: it moves the
//! minimum possible (adding a member takes over exactly the partitions for
//! which it now scores highest, about 1/(N+1) of them, and nothing moves
//! between the old members; removing one moves only what it led), needs no
//! tuning of a virtual-node count, and at 1,000 partitions no member leads
//! more than 1.16x its fair share for N ≤ 10 (the table in
//! `docs/cluster.md`, printed by this module's tests). The cost is O(N) per
//! lookup: N hashes and a sort of N scores.

use serde::{Deserialize, Serialize};
use spool_protocol::PartitionId;

/// A broker's identity in the cluster: chosen by the operator
/// (`--node-id`), never reused for another broker's data.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The ordered replica list of `(topic, partition)` over `members`: at most
/// `count` distinct members, the preferred leader first. The order of
/// `members` does not matter; duplicates count once.
pub fn replicas(
    topic: &str,
    partition: PartitionId,
    members: &[NodeId],
    count: usize,
) -> Vec<NodeId> {
    let key = partition_key(topic, partition);
    let mut scored: Vec<(u64, NodeId)> = members.iter().map(|&m| (score(key, m), m)).collect();
    // Highest score first; a tie (astronomically rare) goes to the lower id
    // so that the order is still total and the same everywhere.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.dedup_by_key(|(_, m)| *m);
    scored.into_iter().take(count).map(|(_, m)| m).collect()
}

/// The preferred leader of `(topic, partition)`: the first replica.
pub fn preferred_leader(topic: &str, partition: PartitionId, members: &[NodeId]) -> Option<NodeId> {
    replicas(topic, partition, members, 1).first().copied()
}

/// A stable 64-bit key per partition. CRC-32 of the name is stable across
/// Rust versions and platforms (a std hasher is not promised to be), and the
/// mixing in `score` spreads its 32 bits over all 64.
fn partition_key(topic: &str, partition: PartitionId) -> u64 {
    (u64::from(crc32fast::hash(topic.as_bytes())) << 32) | u64::from(partition.0)
}

/// The weight of `member` for `key`: SplitMix64's finalizer over both, so
/// that scores of different members for one key, and of one member for
/// different keys, are independent enough for the balance the tests show.
fn score(key: u64, member: NodeId) -> u64 {
    mix(key ^ mix(member.0.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const PARTITIONS: u32 = 1_000;

    fn members(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    /// Leaders of `PARTITIONS` partitions spread over 10 topics.
    fn leaders(members: &[NodeId]) -> Vec<NodeId> {
        (0..PARTITIONS)
            .map(|i| {
                let topic = format!("topic-{}", i % 10);
                preferred_leader(&topic, PartitionId(i / 10), members).expect("members")
            })
            .collect()
    }

    fn moved(before: &[NodeId], after: &[NodeId]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    /// The table in docs/cluster.md: for N from 3 to 10 members, the share
    /// of 1,000 partitions whose leader moves when one member is added or
    /// removed, against the ideal 1/(N+1) and 1/N, and the balance.
    #[test]
    fn movement_and_balance_table() {
        println!("| N | add one: moved | ideal 1/(N+1) | remove one: moved | ideal 1/N | most loaded / mean |");
        println!("|---|---:|---:|---:|---:|---:|");
        for n in 3..=10u64 {
            let now = leaders(&members(n));
            let added = leaders(&members(n + 1));
            // Remove a member from the middle, not just the newest.
            let without: Vec<NodeId> = members(n).into_iter().filter(|m| m.0 != 2).collect();
            let removed = leaders(&without);
            let (add, remove) = (moved(&now, &added), moved(&now, &removed));
            let ideal_add = f64::from(PARTITIONS) / (n + 1) as f64;
            let ideal_remove = f64::from(PARTITIONS) / n as f64;
            let mut load: HashMap<NodeId, usize> = HashMap::new();
            for l in &now {
                *load.entry(*l).or_default() += 1;
            }
            let max = *load.values().max().expect("loads") as f64;
            let skew = max / ideal_remove;
            println!(
                "| {n} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {skew:.2} |",
                add as f64 / 10.0,
                ideal_add / 10.0,
                remove as f64 / 10.0,
                ideal_remove / 10.0
            );
            // The bound: at most 1/N + 5% of all partitions move.
            let bound = f64::from(PARTITIONS) * (1.0 / n as f64 + 0.05);
            assert!((add as f64) <= bound, "adding to {n} moved {add}");
            assert!((remove as f64) <= bound, "removing from {n} moved {remove}");
            // Minimal movement: only partitions gained by the new member, or
            // lost by the removed one, move at all.
            for (a, b) in now.iter().zip(&added) {
                assert!(a == b || b.0 == n + 1, "moved between old members");
            }
            for (a, b) in now.iter().zip(&removed) {
                assert!(a == b || a.0 == 2, "a survivor's partition moved");
            }
            // Balance: no member leads more than 1.35x its fair share
            // (binomial spread at 1,000 partitions; measured at most 1.16x).
            assert!(skew <= 1.35, "member leads {max} of {PARTITIONS} at N={n}");
            assert_eq!(load.len(), n as usize, "a member leads nothing");
        }
    }

    proptest! {
        /// Same answer whatever the members' order, duplicates ignored; the
        /// list is distinct members, as many as asked for (or as exist).
        #[test]
        fn deterministic_and_distinct(
            topic in "[a-z0-9.-]{1,20}",
            partition in 0u32..10_000,
            mut ids in proptest::collection::vec(0u64..50, 1..12),
            count in 1usize..6,
        ) {
            let members: Vec<NodeId> = ids.iter().copied().map(NodeId).collect();
            let first = replicas(&topic, PartitionId(partition), &members, count);
            ids.reverse();
            ids.extend_from_slice(&ids.clone());
            let shuffled: Vec<NodeId> = ids.iter().copied().map(NodeId).collect();
            prop_assert_eq!(&first, &replicas(&topic, PartitionId(partition), &shuffled, count));
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(first.len(), count.min(distinct.len()));
            let mut seen = first.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), first.len());
        }

        /// Removing a member that is not among a partition's replicas leaves
        /// that list unchanged; removing one that is shifts the rest up in
        /// order (the survivors keep their relative order).
        #[test]
        fn removal_is_minimal(
            topic in "[a-z]{1,8}",
            partition in 0u32..1000,
            n in 2u64..12,
            victim in 1u64..12,
        ) {
            let all = members(n);
            let before = replicas(&topic, PartitionId(partition), &all, 3);
            let rest: Vec<NodeId> = all.iter().copied().filter(|m| m.0 != victim).collect();
            let after = replicas(&topic, PartitionId(partition), &rest, 3);
            let kept: Vec<NodeId> = before.iter().copied().filter(|m| m.0 != victim).collect();
            prop_assert_eq!(&after[..kept.len()], &kept[..]);
        }
    }
}
