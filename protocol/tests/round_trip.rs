//! Every request and response kind, with arbitrary field values, decodes to
//! exactly what was encoded, and every truncation of its body is refused
//! (never decoded into something else, never a panic).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use spool_protocol::requests::*;
use spool_protocol::{Request, Response};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._é-]{0,24}"
}

fn cursors() -> impl Strategy<Value = Vec<WireGroupCursor>> {
    vec((name(), any::<u64>(), any::<u64>()), 0..3).prop_map(|c| {
        c.into_iter()
            .map(|(group, journal, seq)| WireGroupCursor {
                group,
                journal,
                seq,
            })
            .collect()
    })
}

fn group_changes() -> impl Strategy<Value = Vec<WireGroupChanges>> {
    let state = (
        any::<u64>(),
        vec(any::<u64>(), 0..4),
        vec((any::<u32>(), any::<u64>()), 0..4),
        any::<u64>(),
    )
        .prop_map(|(floor, settled, counts, dead_letters)| WireAckState {
            floor,
            settled,
            counts,
            dead_letters,
        });
    let records = vec((any::<u8>(), any::<u64>(), any::<u32>()), 0..4).prop_map(|r| {
        r.into_iter()
            .map(|(kind, offset, value)| WireAckRecord {
                kind,
                offset,
                value,
            })
            .collect::<Vec<_>>()
    });
    vec(
        (
            name(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(state),
            records,
        ),
        0..3,
    )
    .prop_map(|g| {
        g.into_iter()
            .map(|(group, journal, seq, state, records)| WireGroupChanges {
                group,
                journal,
                seq,
                state,
                records,
            })
            .collect()
    })
}

fn blob() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn sync() -> impl Strategy<Value = WireSync> {
    prop_oneof![
        Just(WireSync::Always),
        Just(WireSync::Never),
        (1u64..).prop_map(WireSync::Interval),
    ]
}

fn mode() -> impl Strategy<Value = WireGroupMode> {
    prop_oneof![Just(WireGroupMode::Stream), Just(WireGroupMode::Queue)]
}

fn items() -> impl Strategy<Value = Vec<(u32, u64)>> {
    vec((any::<u32>(), any::<u64>()), 0..8)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u64>(), name()).prop_map(|(a, b, f, c)| {
            Request::Handshake(HandshakeRequest {
                min_version: a,
                max_version: b,
                features: f,
                client_id: c,
            })
        }),
        (name(), any::<u32>(), any::<bool>(), blob()).prop_map(
            |(topic, partition, leader_only, batch)| Request::Produce(ProduceRequest {
                topic,
                partition,
                acks: if leader_only { Acks::Leader } else { Acks::All },
                batch
            })
        ),
        (
            name(),
            any::<u32>(),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            any::<u32>(),
            any::<u32>(),
            cursors()
        )
            .prop_map(
                |(
                    topic,
                    partition,
                    (replica, leader_epoch, offset, last_epoch),
                    max_bytes,
                    max_wait_ms,
                    groups,
                )| {
                    Request::ReplicaFetch(ReplicaFetchRequest {
                        topic,
                        partition,
                        replica,
                        leader_epoch,
                        offset,
                        last_epoch,
                        max_bytes,
                        max_wait_ms,
                        groups,
                    })
                }
            ),
        (
            name(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(topic, partition, offset, max_bytes, max_wait_ms)| {
                Request::Fetch(FetchRequest {
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    max_wait_ms,
                })
            }),
        (
            name(),
            any::<u32>(),
            proptest::option::of(sync()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(1..16u32)
        )
            .prop_map(|(name, partitions, sync, seg, ms, bytes, replication)| {
                Request::CreateTopic(CreateTopicRequest {
                    name,
                    partitions,
                    settings: TopicSettings {
                        sync,
                        segment_size_bytes: seg,
                        retention_ms: ms,
                        retention_bytes: bytes,
                        replication,
                    },
                })
            }),
        name().prop_map(|name| Request::DeleteTopic(DeleteTopicRequest { name })),
        Just(Request::ListTopics(ListTopicsRequest)),
        name().prop_map(|name| Request::DescribeTopic(DescribeTopicRequest { name })),
        (
            name(),
            name(),
            mode(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(group, topic, mode, ack_wait_ms, max_deliveries, max_in_flight)| {
                    Request::JoinGroup(JoinGroupRequest {
                        group,
                        topic,
                        mode,
                        ack_wait_ms,
                        max_deliveries,
                        max_in_flight,
                    })
                }
            ),
        (name(), any::<u64>())
            .prop_map(|(group, member)| Request::LeaveGroup(LeaveGroupRequest { group, member })),
        (name(), any::<u64>()).prop_map(|(group, member)| Request::GroupAssignment(
            GroupAssignmentRequest { group, member }
        )),
        (name(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(group, member, max_messages, max_wait_ms)| Request::Deliver(DeliverRequest {
                group,
                member,
                max_messages,
                max_wait_ms
            })
        ),
        (name(), any::<u64>(), items()).prop_map(|(group, member, items)| Request::Ack(
            AckRequest {
                group,
                member,
                items
            }
        )),
        (name(), any::<u64>(), any::<u32>(), items()).prop_map(
            |(group, member, delay_ms, items)| Request::Nack(NackRequest {
                group,
                member,
                delay_ms,
                items
            })
        ),
        (name(), any::<u64>(), items()).prop_map(|(group, member, items)| Request::Touch(
            TouchRequest {
                group,
                member,
                items
            }
        )),
        (name(), any::<u32>(), any::<u64>()).prop_map(|(group, partition, offset)| {
            Request::CommitOffset(CommitOffsetRequest {
                group,
                partition,
                offset,
            })
        }),
        name().prop_map(|group| Request::CommittedOffsets(CommittedOffsetsRequest { group })),
        Just(Request::ListGroups(ListGroupsRequest)),
        name().prop_map(|group| Request::DescribeGroup(DescribeGroupRequest { group })),
        (
            name(),
            prop_oneof![
                Just(WireResetTarget::Earliest),
                Just(WireResetTarget::Latest),
                any::<u64>().prop_map(WireResetTarget::Offset)
            ],
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(group, to, partition)| Request::ResetGroup(ResetGroupRequest {
                    group,
                    to,
                    partition
                })
            ),
        (name(), any::<u32>(), any::<i64>()).prop_map(|(topic, partition, timestamp_ms)| {
            Request::OffsetForTimestamp(OffsetForTimestampRequest {
                topic,
                partition,
                timestamp_ms,
            })
        }),
        Just(Request::Metadata(MetadataRequest)),
        (any::<u64>(), any::<bool>())
            .prop_map(|(id, force)| Request::RemoveBroker(RemoveBrokerRequest { id, force })),
        name().prop_map(|group| Request::FindCoordinator(FindCoordinatorRequest { group })),
        any::<u64>().prop_map(|id| Request::AddVoter(AddVoterRequest { id })),
        Just(Request::InitProducer(InitProducerRequest)),
        Just(Request::ServerStatus(ServerStatusRequest)),
        name().prop_map(|group| Request::DeleteGroup(DeleteGroupRequest { group })),
        (name(), proptest::option::of(any::<u64>()), any::<u32>()).prop_map(
            |(group, partition, max)| Request::PendingMessages(PendingMessagesRequest {
                group,
                partition,
                max
            })
        ),
        any::<u32>().prop_map(|ttl_ms| Request::OpenSession(OpenSessionRequest { ttl_ms })),
        any::<u64>().prop_map(|session| Request::KeepAlive(KeepAliveRequest { session })),
        any::<u64>().prop_map(|session| Request::CloseSession(CloseSessionRequest { session })),
        (name(), any::<u64>(), any::<u32>()).prop_map(|(name, session, wait_ms)| {
            Request::AcquireLock(AcquireLockRequest {
                name,
                session,
                wait_ms,
            })
        }),
        (name(), any::<u64>())
            .prop_map(|(name, session)| Request::ReleaseLock(ReleaseLockRequest { name, session })),
        name().prop_map(|prefix| Request::ListLocks(ListLocksRequest { prefix })),
        (name(), name(), name()).prop_map(|(mechanism, user, password)| {
            Request::Authenticate(AuthenticateRequest {
                mechanism,
                user,
                password,
            })
        }),
        (name(), name())
            .prop_map(|(name, password)| Request::UpsertUser(UpsertUserRequest { name, password })),
        name().prop_map(|name| Request::DeleteUser(DeleteUserRequest { name })),
        Just(Request::ListUsers(ListUsersRequest)),
        acl().prop_map(|acl| Request::AddAcl(AddAclRequest { acl })),
        acl().prop_map(|acl| Request::RemoveAcl(RemoveAclRequest { acl })),
        Just(Request::ListAcls(ListAclsRequest)),
        quota().prop_map(|quota| Request::SetQuota(SetQuotaRequest { quota })),
        name().prop_map(|principal| Request::RemoveQuota(RemoveQuotaRequest { principal })),
        Just(Request::ListQuotas(ListQuotasRequest)),
    ]
}

fn quota() -> impl Strategy<Value = WireQuota> {
    (name(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
        |(principal, produce_bytes_per_sec, fetch_bytes_per_sec, max_connections)| WireQuota {
            principal,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
            max_connections,
        },
    )
}

fn acl() -> impl Strategy<Value = WireAcl> {
    (name(), 1u8..=4, name(), vec(name(), 0..3)).prop_map(
        |(principal, resource_kind, pattern, operations)| WireAcl {
            principal,
            resource_kind,
            pattern,
            operations,
        },
    )
}

fn lock() -> impl Strategy<Value = WireLock> {
    (
        name(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        vec(any::<u64>(), 0..4),
    )
        .prop_map(|(name, holder, token, expires_in_ms, waiters)| WireLock {
            name,
            holder,
            token,
            expires_in_ms,
            waiters,
        })
}

fn metadata() -> impl Strategy<Value = MetadataResponse> {
    (
        any::<u64>(),
        (proptest::option::of(any::<u64>()), any::<u64>()),
        vec(
            (
                any::<u64>(),
                name(),
                any::<(bool, bool)>(),
                proptest::option::of(any::<u64>()),
            ),
            0..4,
        ),
        vec(
            (
                name(),
                vec((any::<u32>(), proptest::option::of(any::<u64>())), 0..4),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(epoch, (controller, term), brokers, topics)| MetadataResponse {
                epoch,
                controller,
                term,
                brokers: brokers
                    .into_iter()
                    .map(|(id, addr, (alive, voter), lease_age_ms)| WireBroker {
                        id,
                        addr,
                        alive,
                        lease_age_ms,
                        voter,
                    })
                    .collect(),
                topics: topics
                    .into_iter()
                    .map(|(name, parts)| WireTopicLeaders {
                        name,
                        partitions: parts
                            .into_iter()
                            .map(|(partition, leader)| WirePartitionLeader {
                                partition,
                                leader,
                                leader_epoch: leader.unwrap_or(0) / 3,
                                replicas: vec![WireReplica {
                                    broker: leader.unwrap_or(1),
                                    in_sync: leader.is_some(),
                                    lag: leader.map(|l| l % 7),
                                }],
                            })
                            .collect(),
                    })
                    .collect(),
            },
        )
}

fn topic() -> impl Strategy<Value = WireTopic> {
    (
        name(),
        sync(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..4),
    )
        .prop_map(|(name, sync, seg, ms, bytes, parts)| WireTopic {
            name,
            sync,
            segment_size_bytes: seg,
            retention_ms: ms,
            retention_bytes: bytes,
            partitions: parts
                .into_iter()
                .map(|(partition, start, end)| WirePartition {
                    partition,
                    start,
                    end,
                })
                .collect(),
        })
}

fn group() -> impl Strategy<Value = WireGroup> {
    (
        (name(), name(), mode()),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        ),
        vec(
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
            ),
            0..4,
        ),
    )
        .prop_map(
            |((name, topic, mode), (ack, maxd, maxf, members, redeliveries), parts)| WireGroup {
                name,
                topic,
                mode,
                ack_wait_ms: ack,
                max_deliveries: maxd,
                max_in_flight: maxf,
                members,
                redeliveries,
                partitions: parts
                    .into_iter()
                    .map(
                        |(partition, position, end, in_flight, pending, dead_letters)| {
                            WireGroupPartition {
                                partition,
                                position,
                                end,
                                in_flight,
                                pending,
                                dead_letters,
                            }
                        },
                    )
                    .collect(),
            },
        )
}

fn delivered_partition() -> impl Strategy<Value = WireDeliveredPartition> {
    (
        any::<u32>(),
        vec(
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(first, count, deliveries)| {
                WireAcquired {
                    first,
                    count,
                    deliveries,
                }
            }),
            0..3,
        ),
        // A decoded answer holds each partition's batches as one part.
        proptest::option::of(blob().prop_filter("non-empty", |b| !b.is_empty())),
    )
        .prop_map(|(partition, acquired, batches)| WireDeliveredPartition {
            partition,
            acquired,
            batches: batches.into_iter().collect(),
        })
}

fn settle() -> impl Strategy<Value = WireSettle> {
    prop_oneof![
        Just(WireSettle::Ok),
        Just(WireSettle::AlreadySettled),
        Just(WireSettle::NotInFlight)
    ]
}

/// A response with the request kind it answers.
fn response() -> impl Strategy<Value = (u16, Response)> {
    prop_oneof![
        (any::<u16>(), any::<u64>(), any::<u32>(), name()).prop_map(|(v, f, m, s)| (
            kind::HANDSHAKE,
            Response::Handshake(HandshakeResponse {
                version: v,
                features: f,
                max_frame_bytes: m,
                server_id: s
            })
        )),
        (any::<u64>(), any::<u64>()).prop_map(|(b, n)| (
            kind::PRODUCE,
            Response::Produce(ProduceResponse {
                base_offset: b,
                next_offset: n
            })
        )),
        (any::<u64>(), any::<u64>(), any::<u64>(), blob()).prop_map(|(s, e, n, b)| (
            kind::FETCH,
            Response::Fetch(FetchResponse {
                log_start: s,
                log_end: e,
                next_offset: n,
                batches: b
            })
        )),
        (
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of((any::<u64>(), any::<u64>())),
            vec((any::<u64>(), any::<u64>()), 0..4),
            group_changes(),
            blob()
        )
            .prop_map(|((epoch, hwm, s, e), diverging, epochs, groups, b)| (
                kind::REPLICA_FETCH,
                Response::ReplicaFetch(ReplicaFetchResponse {
                    leader_epoch: epoch,
                    high_watermark: hwm,
                    log_start: s,
                    log_end: e,
                    diverging: diverging.map(|(epoch, start)| WireEpoch { epoch, start }),
                    epochs: epochs
                        .into_iter()
                        .map(|(epoch, start)| WireEpoch { epoch, start })
                        .collect(),
                    groups,
                    batches: b
                })
            )),
        Just((kind::CREATE_TOPIC, Response::Done)),
        Just((kind::DELETE_TOPIC, Response::Done)),
        vec(topic(), 0..3).prop_map(|t| (
            kind::LIST_TOPICS,
            Response::ListTopics(ListTopicsResponse { topics: t })
        )),
        topic().prop_map(|t| (kind::DESCRIBE_TOPIC, Response::DescribeTopic(t))),
        (any::<u64>(), any::<u32>(), vec(any::<u32>(), 0..6)).prop_map(|(m, g, p)| (
            kind::JOIN_GROUP,
            Response::JoinGroup(JoinGroupResponse {
                member: m,
                generation: g,
                partitions: p
            })
        )),
        Just((kind::LEAVE_GROUP, Response::Done)),
        (any::<u32>(), vec(any::<u32>(), 0..6)).prop_map(|(g, p)| (
            kind::GROUP_ASSIGNMENT,
            Response::GroupAssignment(GroupAssignmentResponse {
                generation: g,
                partitions: p
            })
        )),
        vec(delivered_partition(), 0..3).prop_map(|p| (
            kind::DELIVER,
            Response::Deliver(DeliverResponse { partitions: p })
        )),
        (
            prop_oneof![Just(kind::ACK), Just(kind::NACK), Just(kind::TOUCH)],
            vec(settle(), 0..6)
        )
            .prop_map(|(k, s)| (k, Response::Settle(SettleResponse { results: s }))),
        Just((kind::COMMIT_OFFSET, Response::Done)),
        vec((any::<u32>(), proptest::option::of(any::<u64>())), 0..4).prop_map(|c| (
            kind::COMMITTED_OFFSETS,
            Response::CommittedOffsets(CommittedOffsetsResponse { offsets: c })
        )),
        vec(group(), 0..3).prop_map(|g| (
            kind::LIST_GROUPS,
            Response::ListGroups(ListGroupsResponse { groups: g })
        )),
        group().prop_map(|g| (kind::DESCRIBE_GROUP, Response::DescribeGroup(g))),
        Just((kind::RESET_GROUP, Response::Done)),
        any::<u64>().prop_map(|o| (
            kind::OFFSET_FOR_TIMESTAMP,
            Response::OffsetForTimestamp(OffsetForTimestampResponse { offset: o })
        )),
        metadata().prop_map(|m| (kind::METADATA, Response::Metadata(m))),
        Just((kind::REMOVE_BROKER, Response::Done)),
        (any::<u64>(), name()).prop_map(|(id, addr)| (
            kind::FIND_COORDINATOR,
            Response::FindCoordinator(CoordinatorResponse { id, addr })
        )),
        Just((kind::ADD_VOTER, Response::Done)),
        any::<u64>().prop_map(|producer_id| (
            kind::INIT_PRODUCER,
            Response::InitProducer(InitProducerResponse { producer_id })
        )),
        Just((kind::DELETE_GROUP, Response::Done)),
        vec(
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>()
            ),
            0..5
        )
        .prop_map(|m| (
            kind::PENDING_MESSAGES,
            Response::PendingMessages(PendingMessagesResponse {
                messages: m
                    .into_iter()
                    .map(
                        |(partition, offset, deliveries, member, due_in_ms)| WirePending {
                            partition,
                            offset,
                            deliveries,
                            member,
                            due_in_ms
                        }
                    )
                    .collect()
            })
        )),
        (name(), any::<[u64; 5]>(), name(), name()).prop_map(|(version, n, data_dir, listen)| (
            kind::SERVER_STATUS,
            Response::ServerStatus(ServerStatusResponse {
                version,
                node: n[0],
                uptime_ms: n[1],
                data_dir,
                listen,
                stored_bytes: n[2],
                disk_free_bytes: n[3],
                disk_total_bytes: n[4],
            })
        )),
        (any::<u64>(), any::<u32>()).prop_map(|(session, ttl_ms)| (
            kind::OPEN_SESSION,
            Response::OpenSession(OpenSessionResponse { session, ttl_ms })
        )),
        Just((kind::KEEP_ALIVE, Response::Done)),
        Just((kind::CLOSE_SESSION, Response::Done)),
        proptest::option::of(any::<u64>()).prop_map(|token| (
            kind::ACQUIRE_LOCK,
            Response::AcquireLock(AcquireLockResponse { token })
        )),
        Just((kind::RELEASE_LOCK, Response::Done)),
        (any::<u64>(), vec(lock(), 0..4)).prop_map(|(last_token, locks)| (
            kind::LIST_LOCKS,
            Response::ListLocks(ListLocksResponse { last_token, locks })
        )),
        name().prop_map(|principal| (
            kind::AUTHENTICATE,
            Response::Authenticate(AuthenticateResponse { principal })
        )),
        Just((kind::UPSERT_USER, Response::Done)),
        Just((kind::DELETE_USER, Response::Done)),
        vec(name(), 0..4).prop_map(|names| (
            kind::LIST_USERS,
            Response::ListUsers(ListUsersResponse { names })
        )),
        Just((kind::ADD_ACL, Response::Done)),
        Just((kind::REMOVE_ACL, Response::Done)),
        Just((kind::SET_QUOTA, Response::Done)),
        Just((kind::REMOVE_QUOTA, Response::Done)),
        vec(acl(), 0..3).prop_map(|acls| (
            kind::LIST_ACLS,
            Response::ListAcls(ListAclsResponse { acls })
        )),
        vec(quota(), 0..3).prop_map(|quotas| (
            kind::LIST_QUOTAS,
            Response::ListQuotas(ListQuotasResponse { quotas })
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_request_round_trips_and_every_truncation_is_refused(req in request()) {
        let frame = req.to_frame(7);
        prop_assert_eq!(frame.kind, req.kind());
        let body = frame.full_body();
        prop_assert_eq!(Request::decode(frame.kind, body.clone()), Ok(req.clone()));
        for cut in 0..body.len() {
            prop_assert!(Request::decode(frame.kind, body.slice(..cut)).is_err(), "{:?} cut at {}", req, cut);
        }
        let mut longer = body.to_vec();
        longer.push(0);
        prop_assert!(Request::decode(frame.kind, Bytes::from(longer)).is_err(), "trailing byte accepted");
    }

    #[test]
    fn every_response_round_trips_and_every_truncation_is_refused((k, resp) in response()) {
        let frame = resp.to_frame(k, 9);
        prop_assert!(frame.is_response() && !frame.is_error());
        let body = frame.full_body();
        prop_assert_eq!(Response::decode(k, body.clone()), Ok(resp.clone()));
        for cut in 0..body.len() {
            prop_assert!(Response::decode(k, body.slice(..cut)).is_err(), "{:?} cut at {}", resp, cut);
        }
        let mut longer = body.to_vec();
        longer.push(0);
        prop_assert!(Response::decode(k, Bytes::from(longer)).is_err(), "trailing byte accepted");
    }
}

/// The strategies above cover every kind: a kind added to the protocol
/// without a strategy fails here.
#[test]
fn the_strategies_cover_every_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut requests, mut responses) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for _ in 0..5000 {
        requests.insert(request().new_tree(&mut runner).unwrap().current().kind());
        responses.insert(response().new_tree(&mut runner).unwrap().current().0);
    }
    let all: std::collections::BTreeSet<u16> = (0..=u16::from(u8::MAX))
        .filter(|k| {
            Request::decode(*k, Bytes::new()).err()
                != Some(spool_protocol::DecodeError::UnknownKind(*k))
        })
        .collect();
    assert_eq!(requests, all, "request kinds without a strategy");
    assert_eq!(responses, all, "response kinds without a strategy");
}
