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
