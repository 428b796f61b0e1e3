//! What each request kind needs of its principal: one exhaustive match, so
//! a new kind does not compile until it has a decision.

use spool_protocol::Request;

use super::{Operation, ResourceKind};

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: allowed before authentication (handshake, authenticate).
    Nothing,
    /// Only an authenticated principal (routing metadata, producer ids,
    /// the principal's own lock sessions).
    Authenticated,
    /// Each of these operations on these resources.
    All(Vec<(Operation, ResourceKind, String)>),
}

fn one(op: Operation, kind: ResourceKind, name: &str) -> Needs {
    Needs::All(vec![(op, kind, name.to_string())])
}

/// What `request` needs.
pub fn needs(request: &Request) -> Needs {
    use Operation::*;
    use ResourceKind::*;
    let cluster = |op| one(op, Cluster, "*");
    match request {
        Request::Handshake(_) | Request::Authenticate(_) => Needs::Nothing,
        Request::Metadata(_)
        | Request::InitProducer(_)
        | Request::OpenSession(_)
        | Request::KeepAlive(_)
        | Request::CloseSession(_) => Needs::Authenticated,
        Request::Produce(r) => one(Produce, Topic, &r.topic),
        Request::Fetch(r) => one(Consume, Topic, &r.topic),
        Request::OffsetForTimestamp(r) => one(Consume, Topic, &r.topic),
        Request::CreateTopic(r) => one(Create, Topic, &r.name),
        Request::DeleteTopic(r) => one(Delete, Topic, &r.name),
        Request::DescribeTopic(r) => one(Describe, Topic, &r.name),
        Request::ListTopics(_) | Request::ListGroups(_) | Request::ServerStatus(_) => {
            cluster(Describe)
        }
        Request::JoinGroup(r) => Needs::All(vec![
            (Consume, Group, r.group.clone()),
            (Consume, Topic, r.topic.clone()),
        ]),
        Request::LeaveGroup(r) => one(Consume, Group, &r.group),
        Request::GroupAssignment(r) => one(Consume, Group, &r.group),
        Request::Deliver(r) => one(Consume, Group, &r.group),
        Request::Ack(r) => one(Consume, Group, &r.group),
        Request::Nack(r) => one(Consume, Group, &r.group),
        Request::Touch(r) => one(Consume, Group, &r.group),
        Request::CommitOffset(r) => one(Consume, Group, &r.group),
        Request::CommittedOffsets(r) => one(Describe, Group, &r.group),
        Request::DescribeGroup(r) => one(Describe, Group, &r.group),
        Request::PendingMessages(r) => one(Describe, Group, &r.group),
        Request::FindCoordinator(r) => one(Describe, Group, &r.group),
        Request::ResetGroup(r) => one(Admin, Group, &r.group),
        Request::DeleteGroup(r) => one(Delete, Group, &r.group),
        Request::AcquireLock(r) => one(Operation::Lock, ResourceKind::Lock, &r.name),
        Request::ReleaseLock(r) => one(Operation::Lock, ResourceKind::Lock, &r.name),
        Request::ListLocks(_) => cluster(Describe),
        Request::RemoveBroker(_)
        | Request::AddVoter(_)
        | Request::ReplicaFetch(_)
        | Request::UpsertUser(_)
        | Request::DeleteUser(_)
        | Request::ListUsers(_)
        | Request::AddAcl(_)
        | Request::RemoveAcl(_)
        | Request::ListAcls(_)
        | Request::SetQuota(_)
        | Request::RemoveQuota(_)
        | Request::ListQuotas(_) => cluster(Admin),
    }
}
