//! Replica fetch: how a follower copies a partition from its leader. The
//! same stored batches as a fetch, byte for byte, plus what replication
//! needs beside them: the leader's epochs (where each leadership began),
//! its high watermark, and where the follower's history left the
//! leader's, if it did (KIP-101). Queue groups' delivery state travels
//! with the data: the follower says how far it has each group's ack
//! records, the leader sends the records after that (or its whole state).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_list, put_string, DecodeError, Reader, Wire};

/// A follower asks its leader for what follows its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The follower's broker id.
    pub replica: u64,
    /// The leader epoch the follower follows; the leader refuses another.
    pub leader_epoch: u64,
    /// The follower's log end: it holds every record below.
    pub offset: u64,
    /// The latest epoch in the follower's log (0: none), so the leader can
    /// say where that epoch ended in its own log.
    pub last_epoch: u64,
    /// Byte budget (at least one batch is returned).
    pub max_bytes: u32,
    /// How long to wait for data at the end of the leader's log.
    pub max_wait_ms: u32,
    /// How far the follower has each queue group's ack records.
    pub groups: Vec<WireGroupCursor>,
}

/// How far a follower has one queue group's ack records on the partition:
/// the leader's journal it copies and the next record it lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireGroupCursor {
    /// The group.
    pub group: String,
    /// The journal (one per leader's opening of the group; 0: none yet).
    pub journal: u64,
    /// The number of the first record the follower lacks.
    pub seq: u64,
}

/// One change of a queue group's state on a partition (the ack log's
/// records): `kind` 1 acked, 2 dead-lettered, 3 delivered `value` times,
/// 4 committed, 5 floor (everything below settled), 6 reset to `offset`,
/// 7 a run of `value` acks from `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireAckRecord {
    /// What happened.
    pub kind: u8,
    /// To which offset.
    pub offset: u64,
    /// The delivery count (kind 3), the run's length (kind 7), else 0.
    pub value: u32,
}

/// A queue group's whole state on a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireAckState {
    /// Every offset below is settled.
    pub floor: u64,
    /// Settled offsets at or above `floor`.
    pub settled: Vec<u64>,
    /// Delivery counts of unsettled offsets delivered more than once.
    pub counts: Vec<(u32, u64)>,
    /// Messages dead-lettered, ever.
    pub dead_letters: u64,
}

/// What the leader sends of one queue group: its whole state (when the
/// follower follows another journal or lacks records the leader no longer
/// keeps) and the records after it, up to record `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireGroupChanges {
    /// The group.
    pub group: String,
    /// The leader's journal.
    pub journal: u64,
    /// The number of the record after the last one sent.
    pub seq: u64,
    /// The leader's state to start from, replacing the follower's.
    pub state: Option<WireAckState>,
    /// Records to apply (after `state`, if any), the last numbered `seq - 1`.
    pub records: Vec<WireAckRecord>,
}

/// One leadership of a partition: its epoch and its first offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireEpoch {
    /// Leader epoch.
    pub epoch: u64,
    /// First offset written under it.
    pub start: u64,
}

/// What the leader answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchResponse {
    /// The leader's epoch.
    pub leader_epoch: u64,
    /// Every in-sync replica holds the records below this.
    pub high_watermark: u64,
    /// First offset of the leader's log.
    pub log_start: u64,
    /// The leader's log end.
    pub log_end: u64,
    /// Set when the follower's log left the leader's history: the largest
    /// epoch the leader has not above the follower's latest, and where it
    /// ends in the leader's log (epoch 0: none; `start` is then the
    /// leader's log start). The follower cuts its log to the smaller of
    /// that end and its own end of that epoch, and fetches again. No
    /// batches then.
    pub diverging: Option<WireEpoch>,
    /// The leader's epochs that begin at or after the requested offset,
    /// oldest first: the follower records each before appending its
    /// records.
    pub epochs: Vec<WireEpoch>,
    /// Queue groups whose state the follower lacks.
    pub groups: Vec<WireGroupChanges>,
    /// Whole batches from the requested offset, as stored.
    pub batches: Bytes,
}

impl Wire for ReplicaFetchRequest {
    const MIN_LEN: usize = 50;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_u64_le(self.replica);
        b.put_u64_le(self.leader_epoch);
        b.put_u64_le(self.offset);
        b.put_u64_le(self.last_epoch);
        b.put_u32_le(self.max_bytes);
        b.put_u32_le(self.max_wait_ms);
        put_list(b, &self.groups);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ReplicaFetchRequest {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            replica: r.u64("replica")?,
            leader_epoch: r.u64("leader_epoch")?,
            offset: r.u64("offset")?,
            last_epoch: r.u64("last_epoch")?,
            max_bytes: r.u32("max_bytes")?,
            max_wait_ms: r.u32("max_wait_ms")?,
            groups: r.list("group count")?,
        })
    }
}

impl Wire for WireGroupCursor {
    const MIN_LEN: usize = 18;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.journal);
        b.put_u64_le(self.seq);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireGroupCursor {
            group: r.string("group")?,
            journal: r.u64("journal")?,
            seq: r.u64("seq")?,
        })
    }
}

impl Wire for WireAckRecord {
    const MIN_LEN: usize = 13;

    fn put(&self, b: &mut BytesMut) {
        b.put_u8(self.kind);
        b.put_u64_le(self.offset);
        b.put_u32_le(self.value);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireAckRecord {
            kind: r.u8("ack record kind")?,
            offset: r.u64("ack record offset")?,
            value: r.u32("ack record value")?,
        })
    }
}

impl Wire for WireAckState {
    const MIN_LEN: usize = 24;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.floor);
        put_list(b, &self.settled);
        // Counts as (deliveries, offset) pairs: the codec's (u32, u64).
        put_list(b, &self.counts);
        b.put_u64_le(self.dead_letters);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireAckState {
            floor: r.u64("floor")?,
            settled: r.list("settled count")?,
            counts: r.list("count count")?,
            dead_letters: r.u64("dead_letters")?,
        })
    }
}

impl Wire for WireGroupChanges {
    const MIN_LEN: usize = 23;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.journal);
        b.put_u64_le(self.seq);
        match &self.state {
            Some(s) => {
                b.put_u8(1);
                s.put(b);
            }
            None => b.put_u8(0),
        }
        put_list(b, &self.records);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireGroupChanges {
            group: r.string("group")?,
            journal: r.u64("journal")?,
            seq: r.u64("seq")?,
            state: r.option("state present", WireAckState::get)?,
            records: r.list("record count")?,
        })
    }
}

impl Wire for WireEpoch {
    const MIN_LEN: usize = 16;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.epoch);
        b.put_u64_le(self.start);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireEpoch {
            epoch: r.u64("epoch")?,
            start: r.u64("epoch start")?,
        })
    }
}

impl Wire for ReplicaFetchResponse {
    const MIN_LEN: usize = 45;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.leader_epoch);
        b.put_u64_le(self.high_watermark);
        b.put_u64_le(self.log_start);
        b.put_u64_le(self.log_end);
        match &self.diverging {
            Some(e) => {
                b.put_u8(1);
                e.put(b);
            }
            None => b.put_u8(0),
        }
        put_list(b, &self.epochs);
        put_list(b, &self.groups);
        b.put_u32_le(self.batches.len() as u32);
    }

    /// A slice of a segment's map: written to the socket from there.
    fn tail(&self) -> Vec<Bytes> {
        vec![self.batches.clone()]
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ReplicaFetchResponse {
            leader_epoch: r.u64("leader_epoch")?,
            high_watermark: r.u64("high_watermark")?,
            log_start: r.u64("log_start")?,
            log_end: r.u64("log_end")?,
            diverging: r.option("diverging present", WireEpoch::get)?,
            epochs: r.list("epoch count")?,
            groups: r.list("group count")?,
            batches: r.bytes("batches")?,
        })
    }
}
