//! Metadata: the brokers of the cluster and who leads each partition, so a
//! client sends each request to the right broker. A single-node server
//! answers with itself as the only broker and the leader of everything.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_list, put_option_u64, put_string, DecodeError, Reader, Wire};

/// Ask for the cluster's brokers and partition leaders (an empty body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataRequest;

/// One broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireBroker {
    /// Its node id (0 for a single-node server).
    pub id: u64,
    /// Where clients reach it.
    pub addr: String,
    /// False once its lease has lapsed.
    pub alive: bool,
    /// How long ago the control plane's leader last heard its heartbeat;
    /// only the leader knows, so only its answer has it.
    pub lease_age_ms: Option<u64>,
    /// True if it votes in the control plane's Raft group.
    pub voter: bool,
}

/// One partition's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WirePartitionLeader {
    /// Partition.
    pub partition: u32,
    /// The broker that serves it now; none while it is unavailable.
    pub leader: Option<u64>,
    /// Bumped by every change of leader.
    pub leader_epoch: u64,
    /// Every copy, in placement order (the leader among them).
    pub replicas: Vec<WireReplica>,
}

/// One copy of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireReplica {
    /// The broker holding it.
    pub broker: u64,
    /// True if it holds every acknowledged record (a leader may be chosen
    /// from it).
    pub in_sync: bool,
    /// How many records it is behind the leader's end; only the leader
    /// knows, so only the leader's answer has it.
    pub lag: Option<u64>,
}

impl Wire for WireReplica {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.broker);
        b.put_u8(u8::from(self.in_sync));
        put_option_u64(b, self.lag);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireReplica {
            broker: r.u64("replica broker")?,
            in_sync: match r.u8("in_sync")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue("in_sync")),
            },
            lag: r.option_u64("lag")?,
        })
    }
}

/// One topic's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireTopicLeaders {
    /// Name.
    pub name: String,
    /// Every partition.
    pub partitions: Vec<WirePartitionLeader>,
}

/// The cluster as the answering broker knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataResponse {
    /// Placement epoch the answer was computed at; a newer one supersedes.
    pub epoch: u64,
    /// The Raft leader of the control plane, if known.
    pub controller: Option<u64>,
    /// The Raft term the answering broker is in.
    pub term: u64,
    /// Every broker.
    pub brokers: Vec<WireBroker>,
    /// Every topic.
    pub topics: Vec<WireTopicLeaders>,
}

impl Wire for MetadataRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(MetadataRequest)
    }
}

impl Wire for WireBroker {
    const MIN_LEN: usize = 13;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.id);
        put_string(b, &self.addr);
        b.put_u8(u8::from(self.alive));
        put_option_u64(b, self.lease_age_ms);
        b.put_u8(u8::from(self.voter));
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireBroker {
            id: r.u64("broker id")?,
            addr: r.string("broker addr")?,
            alive: match r.u8("alive")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue("alive")),
            },
            lease_age_ms: r.option_u64("lease_age_ms")?,
            voter: match r.u8("voter")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue("voter")),
            },
        })
    }
}

impl Wire for WirePartitionLeader {
    const MIN_LEN: usize = 17;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partition);
        put_option_u64(b, self.leader);
        b.put_u64_le(self.leader_epoch);
        put_list(b, &self.replicas);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WirePartitionLeader {
            partition: r.u32("partition")?,
            leader: r.option_u64("leader")?,
            leader_epoch: r.u64("leader_epoch")?,
            replicas: r.list("replica count")?,
        })
    }
}

impl Wire for WireTopicLeaders {
    const MIN_LEN: usize = 6;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        put_list(b, &self.partitions);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireTopicLeaders {
            name: r.string("name")?,
            partitions: r.list("partition count")?,
        })
    }
}

impl Wire for MetadataResponse {
    const MIN_LEN: usize = 25;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.epoch);
        put_option_u64(b, self.controller);
        b.put_u64_le(self.term);
        put_list(b, &self.brokers);
        put_list(b, &self.topics);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(MetadataResponse {
            epoch: r.u64("epoch")?,
            controller: r.option_u64("controller")?,
            term: r.u64("term")?,
            brokers: r.list("broker count")?,
            topics: r.list("topic count")?,
        })
    }
}

/// Remove a broker from the cluster: drain it (its partitions move to the
/// others, each copied first), then remove it; with `force`, remove it at
/// once and give up the data it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoveBrokerRequest {
    /// The broker's id.
    pub id: u64,
    /// Remove it now, giving up its partitions' data.
    pub force: bool,
}

impl Wire for RemoveBrokerRequest {
    const MIN_LEN: usize = 9;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.id);
        b.put_u8(u8::from(self.force));
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RemoveBrokerRequest {
            id: r.u64("broker id")?,
            force: match r.u8("force")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue("force")),
            },
        })
    }
}

/// Make a member broker a voter of the control plane (its Raft group),
/// e.g. to grow the voters from 3 to 5. Answered once it votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddVoterRequest {
    /// The broker's id.
    pub id: u64,
}

impl Wire for AddVoterRequest {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.id);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AddVoterRequest {
            id: r.u64("broker id")?,
        })
    }
}

/// Which broker coordinates a consumer group: the one its join, assignment
/// and offset requests go to. A single-node server names itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindCoordinatorRequest {
    /// The group.
    pub group: String,
}

/// A group's coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorResponse {
    /// Its node id (0 for a single-node server).
    pub id: u64,
    /// Where clients reach it.
    pub addr: String,
}

impl Wire for FindCoordinatorRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(FindCoordinatorRequest {
            group: r.string("group")?,
        })
    }
}

impl Wire for CoordinatorResponse {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.id);
        put_string(b, &self.addr);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CoordinatorResponse {
            id: r.u64("coordinator id")?,
            addr: r.string("coordinator addr")?,
        })
    }
}

/// Ask a server about itself (an empty body): `spool status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerStatusRequest;

/// What a server says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatusResponse {
    /// The server's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Its node id in a cluster; 0 for a single-node server.
    pub node: u64,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its data directory, as it was given.
    pub data_dir: String,
    /// The address clients reach it at.
    pub listen: String,
    /// Bytes of segment files its partitions hold.
    pub stored_bytes: u64,
    /// Free bytes on the data directory's file system (for unprivileged
    /// users).
    pub disk_free_bytes: u64,
    /// Size of that file system.
    pub disk_total_bytes: u64,
}

impl Wire for ServerStatusRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ServerStatusRequest)
    }
}

impl Wire for ServerStatusResponse {
    const MIN_LEN: usize = 2 + 8 + 8 + 2 + 2 + 8 + 8 + 8;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.version);
        b.put_u64_le(self.node);
        b.put_u64_le(self.uptime_ms);
        put_string(b, &self.data_dir);
        put_string(b, &self.listen);
        b.put_u64_le(self.stored_bytes);
        b.put_u64_le(self.disk_free_bytes);
        b.put_u64_le(self.disk_total_bytes);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ServerStatusResponse {
            version: r.string("version")?,
            node: r.u64("node")?,
            uptime_ms: r.u64("uptime_ms")?,
            data_dir: r.string("data_dir")?,
            listen: r.string("listen")?,
            stored_bytes: r.u64("stored_bytes")?,
            disk_free_bytes: r.u64("disk_free_bytes")?,
            disk_total_bytes: r.u64("disk_total_bytes")?,
        })
    }
}
