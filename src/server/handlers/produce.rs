//! Produce: validate and append a batch; acknowledge once durable.

use bytes::Bytes;
use spool_protocol::requests::{InitProducerResponse, ProduceResponse};
use spool_protocol::{ErrorResponse, PartitionId};

use crate::broker::{Broker, PendingAppend};
use crate::metrics;
use crate::server::errors::response_for;

/// Appends now (so a connection's produces keep their order); the returned
/// handle resolves to the acknowledgement.
pub fn start(
    broker: &Broker,
    topic: &str,
    partition: u32,
    batch: &Bytes,
) -> Result<PendingAppend, ErrorResponse> {
    let pending = broker
        .append_pending(topic, PartitionId(partition), batch)
        .map_err(|e| response_for(&e))?;
    let info = pending.info();
    metrics::MESSAGES_IN
        .with_label_values(&[topic])
        .inc_by(info.next_offset.0 - info.base_offset.0);
    metrics::BYTES_IN
        .with_label_values(&[topic])
        .inc_by(batch.len() as u64);
    Ok(pending)
}

/// Waits for durability and builds the response.
pub async fn finish(pending: PendingAppend) -> Result<ProduceResponse, ErrorResponse> {
    let info = pending.durable().await.map_err(|e| response_for(&e))?;
    Ok(ProduceResponse {
        base_offset: info.base_offset.0,
        next_offset: info.next_offset.0,
    })
}

/// A producer id, with `node` (a cluster broker's id; 0 for a single
/// server) in the bits above the broker's own ids, so that no two brokers
/// of a cluster hand out the same one. Writes a file now and then: run it
/// on a blocking thread.
pub fn init_producer(broker: &Broker, node: u64) -> Result<InitProducerResponse, ErrorResponse> {
    let local = broker.init_producer().map_err(|e| response_for(&e))?;
    Ok(InitProducerResponse {
        producer_id: (node << crate::broker::PRODUCER_ID_BITS) | local,
    })
}
