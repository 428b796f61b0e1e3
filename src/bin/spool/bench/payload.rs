//! The bench's payloads and their verification: every message carries its
//! send time, producer id, sequence number and a CRC of its filler, so the
//! consumers check each one (none missing, none twice, order per partition,
//! intact) and a run that does not verify fails whatever its speed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Mode, Shared};

/// Bytes of the header every payload starts with.
pub(super) const PAYLOAD_HEADER: usize = 24;
/// Verification state of one producer's sequence numbers, as a bitset.
type SeenSet = Vec<u64>;

/// What one consumer saw.
#[derive(Default)]
pub(super) struct Seen {
    /// Per producer, which sequence numbers arrived.
    per_producer: HashMap<u32, SeenSet>,
    duplicates: u64,
    corrupt: u64,
    out_of_order: u64,
    /// Stream mode: last sequence per (partition, producer).
    last: HashMap<(u32, u32), u64>,
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
/// consumer's CPU, taken from the broker on a shared machine).
pub(super) fn check_received<'a>(
    seen: &mut Seen,
    shared: &Shared,
    received: impl IntoIterator<Item = (u32, &'a [u8])>,
    ordered: bool,
) {
    let now = shared.now_ns();
    let mut sent = Vec::new();
    for (partition, value) in received {
        if let Some(sent_ns) = check(seen, shared, partition, value, ordered) {
            sent.push(sent_ns);
        }
    }
    // Before the count: whoever sees the last message counted sees its time.
    shared.last_arrival_ns.fetch_max(now, Ordering::Release);
    shared
        .consumed
        .fetch_add(sent.len() as u64, Ordering::Release);
    let mut e2e = shared.e2e_latency.lock();
    for sent_ns in sent.into_iter().filter(|&s| s >= shared.warmup_ns) {
        e2e.record(now.saturating_sub(sent_ns).max(1_000));
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
    let bits = seen.per_producer.entry(producer).or_default();
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
        if let Some(last) = seen.last.insert((partition, producer), seq) {
            if last >= seq {
                seen.out_of_order += 1;
            }
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

/// Merges what every consumer saw.
pub(super) fn verify(seen: &[Seen], produced_per_producer: &HashMap<u32, u64>) -> Verification {
    let mut verified = 0u64;
    let mut duplicates: u64 = seen.iter().map(|s| s.duplicates).sum();
    for (&p, &n) in produced_per_producer {
        let mut union: SeenSet = vec![0; (n as usize).div_ceil(64)];
        for s in seen {
            if let Some(bits) = s.per_producer.get(&p) {
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
