//! The bench's payloads and their verification: every message carries its
//! send time, producer id, sequence number and a CRC of its filler, so the
//! consumers check each one (none missing, none twice, order per partition,
//! intact) and a run that does not verify fails whatever its speed.

use std::sync::atomic::Ordering;

use super::{Latencies, Mode, Shared};

/// Bytes of the header every payload starts with.
pub(super) const PAYLOAD_HEADER: usize = 24;
/// Verification state of one producer's sequence numbers, as a bitset.
type SeenSet = Vec<u64>;

/// What one consumer saw. Indexed by producer id (and partition), not
/// hashed: the check runs for every message, and two hash-map lookups per
/// message were a tenth of the consumer's CPU.
pub(super) struct Seen {
    /// Per producer, which sequence numbers arrived.
    per_producer: Vec<SeenSet>,
    duplicates: u64,
    corrupt: u64,
    out_of_order: u64,
    /// Stream mode: last sequence per partition and producer
    /// (`partition * producers + producer`).
    last: Vec<Option<u64>>,
}

impl Seen {
    /// Nothing seen yet from `producers` producers on `partitions`
    /// partitions; a message naming another producer counts as damaged, one
    /// on another partition as out of order.
    pub(super) fn new(producers: u32, partitions: u32) -> Seen {
        Seen {
            per_producer: vec![SeenSet::new(); producers as usize],
            duplicates: 0,
            corrupt: 0,
            out_of_order: 0,
            last: vec![None; producers as usize * partitions as usize],
        }
    }
}

/// `[send ns][producer][seq][crc of filler][filler]`; the filler depends on
/// the sequence number (byte `i` is `seq + i`, wrapping), so a message
/// swapped for another fails the check. The 256 possible fillers and their
/// CRCs are computed once, so neither generating nor checking a message
/// touches it byte by byte: the bench must not be what limits the broker.
pub(super) fn write_payload(
    b: &mut Vec<u8>,
    shared: &Shared,
    sent_ns: u64,
    producer: u32,
    seq: u64,
) {
    let k = (seq % 256) as usize;
    b.clear();
    b.extend_from_slice(&sent_ns.to_le_bytes());
    b.extend_from_slice(&producer.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&shared.filler_crcs[k].to_le_bytes());
    b.extend_from_slice(&shared.fillers[k]);
}

/// The filler of every `seq % 256` for messages of `size` bytes, and CRCs.
pub(super) fn fillers(size: usize) -> (Vec<Vec<u8>>, Vec<u32>) {
    let fillers: Vec<Vec<u8>> = (0..256usize)
        .map(|k| {
            (0..size - PAYLOAD_HEADER)
                .map(|i| (k as u8).wrapping_add(i as u8))
                .collect()
        })
        .collect();
    let crcs = fillers.iter().map(|f| crc32fast::hash(f)).collect();
    (fillers, crcs)
}

/// Checks the messages one receive brought, `(partition, value)` each:
/// they arrived together, so one clock read and one lock of the latency
/// histogram serve them all (per message, those were a quarter of a
/// consumer's CPU, taken from the broker on a shared machine), and
/// messages that share a send time (see `produce`) are one histogram entry.
pub(super) fn check_received<'a>(
    seen: &mut Seen,
    shared: &Shared,
    received: impl IntoIterator<Item = (u32, &'a [u8])>,
    ordered: bool,
) {
    let now = shared.now_ns();
    let mut sent = SendTimes::default();
    for (partition, value) in received {
        if let Some(sent_ns) = check(seen, shared, partition, value, ordered) {
            sent.push(sent_ns);
        }
    }
    // Before the count: whoever sees the last message counted sees its time.
    shared.last_arrival_ns.fetch_max(now, Ordering::Release);
    shared.consumed.fetch_add(sent.count(), Ordering::Release);
    sent.record(now, shared.warmup_ns, &mut shared.e2e_latency.lock());
}

/// Send times of a group of messages, as runs of equal times.
#[derive(Default)]
pub(super) struct SendTimes(Vec<(u64, u64)>);

impl SendTimes {
    pub(super) fn push(&mut self, sent_ns: u64) {
        match self.0.last_mut() {
            Some((ns, n)) if *ns == sent_ns => *n += 1,
            _ => self.0.push((sent_ns, 1)),
        }
    }

    /// Messages in the group.
    pub(super) fn count(&self) -> u64 {
        self.0.iter().map(|&(_, n)| n).sum()
    }

    /// Records each message's latency to `now`, but not those sent within
    /// the warm-up.
    pub(super) fn record(&self, now: u64, warmup_ns: u64, latencies: &mut Latencies) {
        for &(sent_ns, n) in self.0.iter().filter(|&&(s, _)| s >= warmup_ns) {
            latencies.record_n(now.saturating_sub(sent_ns).max(1_000), n);
        }
    }
}

/// Checks one message; its send time if it is intact and new.
fn check(
    seen: &mut Seen,
    shared: &Shared,
    partition: u32,
    value: &[u8],
    ordered: bool,
) -> Option<u64> {
    if value.len() < PAYLOAD_HEADER {
        seen.corrupt += 1;
        shared.damaged.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let u64_at = |p: usize| u64::from_le_bytes(value[p..p + 8].try_into().unwrap_or([0; 8]));
    let sent_ns = u64_at(0);
    let producer = u32::from_le_bytes(value[8..12].try_into().unwrap_or([0; 4]));
    let seq = u64_at(12);
    let crc = u32::from_le_bytes(value[20..24].try_into().unwrap_or([0; 4]));
    let k = (seq % 256) as usize;
    if crc != shared.filler_crcs[k] || value[PAYLOAD_HEADER..] != shared.fillers[k][..] {
        seen.corrupt += 1;
        shared.damaged.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Some(bits) = seen.per_producer.get_mut(producer as usize) else {
        seen.corrupt += 1;
        shared.damaged.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let (word, bit) = ((seq / 64) as usize, seq % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    if bits[word] & (1 << bit) != 0 {
        seen.duplicates += 1;
        return None;
    }
    bits[word] |= 1 << bit;
    if ordered {
        let producers = seen.per_producer.len();
        let slot = partition as usize * producers + producer as usize;
        match seen.last.get_mut(slot) {
            Some(last) => {
                if last.replace(seq).is_some_and(|last| last >= seq) {
                    seen.out_of_order += 1;
                }
            }
            // A partition the topic does not have: the broker sent it wrong.
            None => seen.out_of_order += 1,
        }
    }
    Some(sent_ns)
}

/// What the consumers saw, summed over all of them.
pub(super) struct Verification {
    /// Distinct (producer, seq) pairs that arrived intact.
    pub verified: u64,
    /// Arrivals of a pair already seen.
    pub duplicates: u64,
    corrupt: u64,
    out_of_order: u64,
}

/// Merges what every consumer saw; `produced_per_producer[p]`: how many
/// messages producer `p` produced.
pub(super) fn verify(seen: &[Seen], produced_per_producer: &[u64]) -> Verification {
    let mut verified = 0u64;
    let mut duplicates: u64 = seen.iter().map(|s| s.duplicates).sum();
    for (p, &n) in produced_per_producer.iter().enumerate() {
        let mut union: SeenSet = vec![0; (n as usize).div_ceil(64)];
        for s in seen {
            if let Some(bits) = s.per_producer.get(p) {
                for (i, word) in bits.iter().enumerate().take(union.len()) {
                    duplicates += u64::from((union[i] & word).count_ones());
                    union[i] |= word;
                }
            }
        }
        verified += union.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
    }
    Verification {
        verified,
        duplicates,
        corrupt: seen.iter().map(|s| s.corrupt).sum(),
        out_of_order: seen.iter().map(|s| s.out_of_order).sum(),
    }
}

impl Verification {
    /// Records every way the run failed to verify.
    pub(super) fn report_errors(
        &self,
        produced: u64,
        mode: Mode,
        consumer_failed: bool,
        shared: &Shared,
    ) {
        if self.verified != produced {
            let missing = produced.saturating_sub(self.verified);
            shared.error(if consumer_failed {
                // They may well be stored: a consumer stopped first.
                format!(
                    "{missing} of {produced} messages were not read ({} verified before a consumer stopped)",
                    self.verified
                )
            } else {
                format!("{missing} of {produced} messages never arrived")
            });
        }
        if self.corrupt > 0 {
            shared.error(format!("{} messages arrived damaged", self.corrupt));
        }
        if self.out_of_order > 0 {
            shared.error(format!(
                "{} messages arrived out of order within their partition",
                self.out_of_order
            ));
        }
        if self.duplicates > 0 && mode == Mode::Stream {
            shared.error(format!(
                "{} messages arrived more than once",
                self.duplicates
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let Ok(shared) = Shared::new(100, 0.0) else {
            panic!("histogram bounds")
        };
        shared
    }

    fn payload(shared: &Shared, sent_ns: u64, producer: u32, seq: u64) -> Vec<u8> {
        let mut b = Vec::new();
        write_payload(&mut b, shared, sent_ns, producer, seq);
        b
    }

    /// Producer `producer`'s messages `seqs`, checked as one receive on
    /// `partition`.
    fn receive(seen: &mut Seen, shared: &Shared, partition: u32, producer: u32, seqs: &[u64]) {
        let payloads: Vec<Vec<u8>> = seqs
            .iter()
            .map(|&seq| payload(shared, 5_000, producer, seq))
            .collect();
        check_received(
            seen,
            shared,
            payloads.iter().map(|p| (partition, &p[..])),
            true,
        );
    }

    #[test]
    fn every_message_once_in_order_verifies() {
        let shared = shared();
        let mut seen = Seen::new(2, 2);
        receive(&mut seen, &shared, 0, 0, &[0, 1, 2]);
        receive(&mut seen, &shared, 1, 1, &[0, 1]);
        receive(&mut seen, &shared, 0, 1, &[2]);
        let v = verify(&[seen], &[3, 3]);
        assert_eq!(
            (v.verified, v.duplicates, v.corrupt, v.out_of_order),
            (6, 0, 0, 0)
        );
        assert_eq!(shared.consumed.load(Ordering::Relaxed), 6);
        assert_eq!(shared.e2e_latency.lock().total.len(), 6);
    }

    #[test]
    fn a_lost_message_a_duplicate_and_a_reordering_are_each_caught() {
        let shared = shared();
        let mut seen = Seen::new(1, 1);
        receive(&mut seen, &shared, 0, 0, &[0, 2, 1, 2]);
        let v = verify(&[seen], &[4]);
        // 3 never arrived, 2 twice, 1 after 2.
        assert_eq!(v.verified, 3);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.out_of_order, 1);
    }

    #[test]
    fn damage_and_unknown_producers_or_partitions_are_caught_not_indexed() {
        let shared = shared();
        let mut seen = Seen::new(1, 1);
        let mut flipped = payload(&shared, 5_000, 0, 7);
        flipped[60] ^= 1;
        let stranger = payload(&shared, 5_000, u32::MAX, 0);
        let elsewhere = payload(&shared, 5_000, 0, 0);
        check_received(
            &mut seen,
            &shared,
            [(0, &flipped[..]), (0, &stranger[..]), (9, &elsewhere[..])],
            true,
        );
        assert_eq!(seen.corrupt, 2);
        assert_eq!(seen.out_of_order, 1);
        assert_eq!(shared.damaged.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn messages_sharing_a_send_time_count_each() {
        let mut times = SendTimes::default();
        for ns in [1_000_000, 1_000_000, 1_000_000, 3_000_000, 1_000_000] {
            times.push(ns);
        }
        assert_eq!(times.count(), 5);
        let Ok(mut latencies) = Latencies::new() else {
            panic!("histogram bounds")
        };
        // With a 2 ms warm-up only the one sent at 3 ms counts.
        times.record(5_000_000, 2_000_000, &mut latencies);
        assert_eq!(latencies.total.len(), 1);
        times.record(5_000_000, 0, &mut latencies);
        assert_eq!(latencies.total.len(), 6);
        assert_eq!(latencies.total.count_at(4_000_000), 4);
    }
}
