//! Feeds arbitrary bytes to the frame codec and the request/response
//! decoders, as a hostile peer would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spool_protocol::fuzzing::exercise_frame_decoder(data);
});
