//! Fetch: stored batches from an offset, long-polling at the end of the log.

use std::time::Duration;

use spool_protocol::batch::BatchHeader;
use spool_protocol::requests::{
    FetchRequest, FetchResponse, OffsetForTimestampRequest, OffsetForTimestampResponse,
};
use spool_protocol::{ErrorResponse, Offset, PartitionId};

use crate::broker::Broker;
use crate::metrics;
use crate::server::errors::response_for;

/// Longest a fetch may wait for data, whatever the client asks.
pub const MAX_WAIT_CAP_MS: u32 = 30_000;

/// Reads (and, at the end of the log, waits up to `max_wait_ms`: the
/// request's, or 0 at shutdown).
pub async fn handle(
    broker: &Broker,
    request: &FetchRequest,
    max_wait_ms: u32,
) -> Result<FetchResponse, ErrorResponse> {
    let topic = request.topic.as_str();
    let max_wait = Duration::from_millis(u64::from(max_wait_ms.min(MAX_WAIT_CAP_MS)));
    let fetched = broker
        .read_wait(
            topic,
            PartitionId(request.partition),
            Offset(request.offset),
            u64::from(request.max_bytes.max(1)),
            max_wait,
        )
        .await
        .map_err(|e| response_for(&e))?;
    if !fetched.batches.is_empty() {
        metrics::MESSAGES_OUT
            .with_label_values(&[topic])
            .inc_by(count_records(&fetched.batches));
        metrics::BYTES_OUT
            .with_label_values(&[topic])
            .inc_by(fetched.batches.len() as u64);
    }
    Ok(FetchResponse {
        log_start: fetched.log_start.0,
        log_end: fetched.log_end.0,
        next_offset: fetched.next_offset.0,
        batches: fetched.batches,
    })
}

/// The first offset at or after a timestamp.
pub fn offset_for_timestamp(
    broker: &Broker,
    request: &OffsetForTimestampRequest,
) -> Result<OffsetForTimestampResponse, ErrorResponse> {
    broker
        .offset_for_timestamp(
            &request.topic,
            PartitionId(request.partition),
            request.timestamp_ms,
        )
        .map(|o| OffsetForTimestampResponse { offset: o.0 })
        .map_err(|e| response_for(&e))
}

/// Records in back-to-back batches, from their headers alone.
fn count_records(mut batches: &[u8]) -> u64 {
    let mut count = 0;
    while let Ok(header) = BatchHeader::parse(batches) {
        count += u64::from(header.record_count);
        let len = header.batch_len as usize;
        if len > batches.len() {
            break;
        }
        batches = &batches[len..];
    }
    count
}
