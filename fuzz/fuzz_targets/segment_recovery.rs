//! Opens a partition directory made of fuzzed segment and index files:
//! recovery must never panic, never serve a batch that fails its checks,
//! and leave a log that takes an append at its end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spool::storage::fuzzing::exercise_recovery(data);
});
