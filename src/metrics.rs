//! Process-wide Prometheus metrics. Counters are updated on the hot path
//! (cheap atomics); gauges that describe state (partition offsets,
//! connections) are filled in when `/metrics` is scraped.

use std::sync::LazyLock;

use prometheus::{
    register_counter_vec_with_registry, register_histogram_vec_with_registry,
    register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_with_registry, CounterVec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
};

/// The registry `/metrics` renders.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Latency buckets from 50 us to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

macro_rules! metric {
    ($name:ident: $ty:ty = $make:expr) => {
        #[allow(missing_docs)]
        pub static $name: LazyLock<$ty> = LazyLock::new(|| match $make {
            Ok(metric) => metric,
            // Only a programming error (duplicate name, bad label) gets
            // here, and only at first use.
            Err(err) => panic!("metric {}: {err}", stringify!($name)),
        });
    };
}

metric!(MESSAGES_IN: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_messages_in_total", "Messages appended, by topic", &["topic"], REGISTRY));
metric!(BYTES_IN: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_bytes_in_total", "Batch bytes appended, by topic", &["topic"], REGISTRY));
metric!(MESSAGES_OUT: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_messages_out_total", "Messages returned by fetches (whole batches), by topic", &["topic"], REGISTRY));
metric!(BYTES_OUT: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_bytes_out_total", "Batch bytes returned by fetches, by topic", &["topic"], REGISTRY));
metric!(REQUEST_SECONDS: HistogramVec = register_histogram_vec_with_registry!(
    "spool_request_duration_seconds", "Time from request decoded to response queued, by kind",
    &["kind"], LATENCY_BUCKETS.to_vec(), REGISTRY));
metric!(REQUEST_ERRORS: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_request_errors_total", "Error responses, by error code", &["code"], REGISTRY));
metric!(FLUSH_SECONDS: Histogram = register_histogram_with_registry!(
    "spool_flush_duration_seconds", "Duration of one flush of a partition (fdatasync)",
    LATENCY_BUCKETS.to_vec(), REGISTRY));
metric!(CORRUPT_BATCHES: IntCounter = register_int_counter_with_registry!(
    "spool_corrupt_batches_total", "Damaged batches found by recovery (kept, never served)", REGISTRY));
metric!(CORRUPT_DEAD_LETTERS: IntCounter = register_int_counter_with_registry!(
    "spool_corrupt_dead_letters_total", "Messages of damaged batches that queue groups dead-lettered unread", REGISTRY));
metric!(CONNECTIONS: IntGauge = register_int_gauge_with_registry!(
    "spool_connections", "Client connections open", REGISTRY));
metric!(CONNECTIONS_TOTAL: IntCounter = register_int_counter_with_registry!(
    "spool_connections_accepted_total", "Client connections accepted", REGISTRY));
metric!(CONNECTIONS_REJECTED: IntCounter = register_int_counter_with_registry!(
    "spool_connections_rejected_total", "Connections refused at the connection limit", REGISTRY));
metric!(FRAME_MEMORY: IntGauge = register_int_gauge_with_registry!(
    "spool_frame_memory_bytes", "Bytes of the server-wide frame budget held by frames being received or handled", REGISTRY));
metric!(FRAME_BUDGET_WAITS: IntCounter = register_int_counter_with_registry!(
    "spool_frame_budget_waits_total", "Frames that waited for the server-wide frame budget before being read", REGISTRY));
metric!(PROTOCOL_ERRORS: IntCounter = register_int_counter_with_registry!(
    "spool_protocol_errors_total", "Connections closed for malformed input", REGISTRY));
metric!(NOT_LEADER: IntCounter = register_int_counter_with_registry!(
    "spool_not_leader_total", "Requests answered NotLeader (the client was sent elsewhere)", REGISTRY));
metric!(LEASE_EXPIRIES: IntCounter = register_int_counter_with_registry!(
    "spool_lease_expiries_total", "Lease expiries this broker committed as Raft leader", REGISTRY));
metric!(RAFT_TERM: IntGauge = register_int_gauge_with_registry!(
    "spool_raft_term", "Current Raft term of the control plane", REGISTRY));
metric!(RAFT_LEADER: IntGauge = register_int_gauge_with_registry!(
    "spool_raft_leader", "Node id of the control plane's Raft leader (0: none known)", REGISTRY));
metric!(RAFT_APPLIED: IntGauge = register_int_gauge_with_registry!(
    "spool_raft_applied_index", "Last Raft log index applied to the cluster state here", REGISTRY));
metric!(PLACEMENT_EPOCH: IntGauge = register_int_gauge_with_registry!(
    "spool_placement_epoch", "Placement epoch of the cluster state applied here", REGISTRY));
metric!(PARTITIONS_WITHOUT_LEADER: IntGauge = register_int_gauge_with_registry!(
    "spool_partitions_without_leader", "Partitions whose holder's lease has lapsed or that are mid-move, in this broker's applied cluster state", REGISTRY));
metric!(UNDER_REPLICATED: IntGauge = register_int_gauge_with_registry!(
    "spool_under_replicated_partitions", "Replicated partitions this broker leads whose in-sync set lacks a replica", REGISTRY));
metric!(REPLICATION_LAG: IntGauge = register_int_gauge_with_registry!(
    "spool_replication_lag_records_max", "Largest lag, in records, of any follower of a partition this broker leads", REGISTRY));
metric!(LEADING_REPLICATED: IntGauge = register_int_gauge_with_registry!(
    "spool_leading_replicated_partitions", "Replicated partitions this broker leads", REGISTRY));
metric!(LEADERSHIPS_TAKEN: IntCounter = register_int_counter_with_registry!(
    "spool_leaderships_taken_total", "Replicated partitions this broker started leading (each a new leader epoch: failovers and restarts)", REGISTRY));
metric!(REPLICA_TRUNCATIONS: IntCounter = register_int_counter_with_registry!(
    "spool_replica_truncations_total", "Times a follower cut its log where its history left its leader's (KIP-101)", REGISTRY));
metric!(HANDOFF_PAUSE_SECONDS: Histogram = register_histogram_with_registry!(
    "spool_handoff_pause_seconds", "Writes paused while a partition moved to this broker",
    LATENCY_BUCKETS.to_vec(), REGISTRY));
metric!(PLACEMENT_CHANGES: IntCounter = register_int_counter_with_registry!(
    "spool_placement_changes_total", "Placement epochs applied by this broker", REGISTRY));
metric!(TLS_HANDSHAKE_FAILURES: IntCounter = register_int_counter_with_registry!(
    "spool_tls_handshake_failures_total", "Client connections closed because their TLS handshake failed or timed out", REGISTRY));
metric!(AUTHENTICATION_FAILURES: IntCounter = register_int_counter_with_registry!(
    "spool_authentication_failures_total", "Failed authentications (wrong credentials or rate-limited addresses)", REGISTRY));
metric!(AUTHORIZATION_REFUSALS: IntCounter = register_int_counter_with_registry!(
    "spool_authorization_refusals_total", "Requests refused by the access rules", REGISTRY));
metric!(QUOTA_BYTES: IntCounterVec = register_int_counter_vec_with_registry!(
    "spool_quota_bytes_total", "Bytes counted against principals' quotas, by principal and direction (produce, fetch); with --auth only",
    &["principal", "direction"], REGISTRY));
metric!(QUOTA_THROTTLE_SECONDS: CounterVec = register_counter_vec_with_registry!(
    "spool_quota_throttle_seconds_total", "Time connections were paused to keep principals within their byte rates, by principal and direction",
    &["principal", "direction"], REGISTRY));
metric!(QUOTA_CONNECTIONS_REFUSED: IntCounter = register_int_counter_with_registry!(
    "spool_quota_connections_refused_total", "Authentications refused because the principal held as many connections as its quota allows", REGISTRY));
metric!(LOCK_GRANTS: IntCounter = register_int_counter_with_registry!(
    "spool_lock_grants_total", "Lock grants answered by this broker", REGISTRY));
metric!(LOCK_RELEASES: IntCounter = register_int_counter_with_registry!(
    "spool_lock_releases_total", "Locks released by their holders through this broker", REGISTRY));
metric!(LOCK_SESSION_EXPIRIES: IntCounter = register_int_counter_with_registry!(
    "spool_lock_session_expiries_total", "Lock sessions this broker expired (as Raft leader, or as a single node): their locks were released", REGISTRY));
metric!(LOCK_WAITERS: IntGauge = register_int_gauge_with_registry!(
    "spool_lock_waiters", "Acquires waiting in a lock's queue at this broker", REGISTRY));
metric!(FENCED_WRITES: IntCounter = register_int_counter_with_registry!(
    "spool_fenced_writes_total", "Fenced batches refused because a higher fencing token was accepted for their lock", REGISTRY));

/// Registers every metric now, so a scrape shows them all (at zero) before
/// their first event.
pub fn register_all() {
    LazyLock::force(&MESSAGES_IN);
    LazyLock::force(&BYTES_IN);
    LazyLock::force(&MESSAGES_OUT);
    LazyLock::force(&BYTES_OUT);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&REQUEST_ERRORS);
    LazyLock::force(&FLUSH_SECONDS);
    LazyLock::force(&CORRUPT_BATCHES);
    LazyLock::force(&CORRUPT_DEAD_LETTERS);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&CONNECTIONS_TOTAL);
    LazyLock::force(&CONNECTIONS_REJECTED);
    LazyLock::force(&PROTOCOL_ERRORS);
    LazyLock::force(&FRAME_MEMORY);
    LazyLock::force(&FRAME_BUDGET_WAITS);
    LazyLock::force(&NOT_LEADER);
    LazyLock::force(&LEASE_EXPIRIES);
    LazyLock::force(&PLACEMENT_CHANGES);
    LazyLock::force(&HANDOFF_PAUSE_SECONDS);
    LazyLock::force(&LEADERSHIPS_TAKEN);
    LazyLock::force(&UNDER_REPLICATED);
    LazyLock::force(&PARTITIONS_WITHOUT_LEADER);
    LazyLock::force(&REPLICATION_LAG);
    LazyLock::force(&LEADING_REPLICATED);
    LazyLock::force(&REPLICA_TRUNCATIONS);
    LazyLock::force(&RAFT_TERM);
    LazyLock::force(&RAFT_LEADER);
    LazyLock::force(&RAFT_APPLIED);
    LazyLock::force(&PLACEMENT_EPOCH);
    LazyLock::force(&TLS_HANDSHAKE_FAILURES);
    LazyLock::force(&AUTHENTICATION_FAILURES);
    LazyLock::force(&AUTHORIZATION_REFUSALS);
    LazyLock::force(&QUOTA_BYTES);
    LazyLock::force(&QUOTA_THROTTLE_SECONDS);
    LazyLock::force(&QUOTA_CONNECTIONS_REFUSED);
    LazyLock::force(&LOCK_GRANTS);
    LazyLock::force(&LOCK_RELEASES);
    LazyLock::force(&LOCK_SESSION_EXPIRIES);
    LazyLock::force(&LOCK_WAITERS);
    LazyLock::force(&FENCED_WRITES);
}
