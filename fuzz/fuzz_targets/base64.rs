//! `base64::decode` on any text, and `decode(encode(bytes)) == bytes`.
#![no_main]

use agentkernel::codec::base64::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = decode(text) {
            assert!(bytes.len() <= text.len());
        }
    }
    assert_eq!(decode(&encode(data)).as_deref(), Ok(data));
});
