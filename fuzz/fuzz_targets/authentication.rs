//! Feeds arbitrary bytes to the authentication step of a connection: the
//! AUTHENTICATE body a hostile client sends, and a stored password hash as
//! a damaged users file would hold it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spool::auth::fuzzing::exercise_authentication(data);
});
