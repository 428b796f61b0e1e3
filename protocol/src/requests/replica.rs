//! Replica fetch: how a follower copies a partition from its leader. The
//! same stored batches as a fetch, byte for byte, plus what replication
//! needs beside them: the leader's epochs (where each leadership began),
//! its high watermark, and where the follower's history left the
//! leader's, if it did (KIP-101).

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
    /// Whole batches from the requested offset, as stored.
    pub batches: Bytes,
}

impl Wire for ReplicaFetchRequest {
    const MIN_LEN: usize = 46;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_u64_le(self.replica);
        b.put_u64_le(self.leader_epoch);
        b.put_u64_le(self.offset);
        b.put_u64_le(self.last_epoch);
        b.put_u32_le(self.max_bytes);
        b.put_u32_le(self.max_wait_ms);
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
    const MIN_LEN: usize = 41;

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
        b.put_u32_le(self.batches.len() as u32);
    }

    /// A slice of a segment's map: written to the socket from there.
    fn tail(&self) -> Bytes {
        self.batches.clone()
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ReplicaFetchResponse {
            leader_epoch: r.u64("leader_epoch")?,
            high_watermark: r.u64("high_watermark")?,
            log_start: r.u64("log_start")?,
            log_end: r.u64("log_end")?,
            diverging: r.option("diverging present", WireEpoch::get)?,
            epochs: r.list("epoch count")?,
            batches: r.bytes("batches")?,
        })
    }
}
