#![no_main]
//! Feeds arbitrary bytes to the envelope decoder: it must return an error or a message that
//! survives a second round trip unchanged, and never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = nebula_protocol::decode(bytes) {
        let again = nebula_protocol::decode(&nebula_protocol::encode(&message));
        assert_eq!(again, Ok(message));
    }
});
