//! Feeds arbitrary bytes to the batch reader: validation must never panic,
//! and a batch it accepts must iterate exactly `record_count` records whose
//! headers all parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_protocol::batch::Batches;

fuzz_target!(|data: &[u8]| {
    spool_protocol::fuzzing::exercise_batch_reader(data);
    for batch in Batches::new(data).flatten() {
        let _ = batch.records().count();
    }
});
