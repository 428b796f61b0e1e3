//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the bounded
//! random-input tests that run with the normal test suite, so both exercise
//! exactly the same code.

use crate::batch::Batch;

/// Runs the batch reader over `data`. Panics only if the reader breaks one
/// of its own promises (which is the bug a fuzzer is looking for).
pub fn exercise_batch_reader(data: &[u8]) {
    let Ok(batch) = Batch::validate(data) else {
        return;
    };
    let header = *batch.header();
    assert_eq!(batch.bytes().len(), header.batch_len as usize);
    let mut count = 0u32;
    let mut max_ts = i64::MIN;
    for record in batch.records() {
        assert_eq!(record.offset, header.base_offset.plus(u64::from(count)));
        max_ts = max_ts.max(record.timestamp_ms);
        let _ = record.headers().count();
        count += 1;
    }
    assert_eq!(
        count, header.record_count,
        "validated batch yielded the wrong number of records"
    );
    assert_eq!(max_ts, header.max_timestamp_ms);
}

/// Runs the frame decoder and the request/response body decoders over
/// `data` as if it arrived on a socket. Panics only if a decoder breaks its
/// promises: no panic, no frame over the limit, every decoded request
/// re-encodes to a body that decodes to the same request.
pub fn exercise_frame_decoder(data: &[u8]) {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use crate::frame::FrameCodec;
    use crate::requests::{ErrorResponse, Request, Response, Wire};

    const LIMIT: usize = 1 << 16;
    let mut codec = FrameCodec::new(LIMIT);
    // Feed in two pieces, as a socket might.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut fed_rest = false;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.body.len() + crate::frame::HEADER_LEN <= LIMIT);
                if let Ok(request) = Request::decode(frame.kind, frame.body.clone()) {
                    let again = request.to_frame(frame.correlation_id);
                    assert_eq!(
                        Request::decode(again.kind, again.full_body()).as_ref(),
                        Ok(&request)
                    );
                }
                if let Ok(Response::Deliver(delivered)) =
                    Response::decode(frame.kind, frame.body.clone())
                {
                    // A hostile broker's batches: walking them (CRCs
                    // checked or not) fails or stops, never panics.
                    for p in &delivered.partitions {
                        for check_crc in [true, false] {
                            let _ = p.for_each_message(check_crc, |_, _, _| {});
                        }
                    }
                }
                let _ = ErrorResponse::decode(frame.body);
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&data[split..]);
                fed_rest = true;
            }
            Ok(None) | Err(_) => return,
        }
    }
}
