//! The stub's record stream (`stub::read_record`), both directions' payloads (the spec
//! the stub reads, the exit the server reads) and records read back as encoded.
#![no_main]

use agentkernel::stub::{encode_record, read_record, StubExit, StubSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    while let Ok(Some((_kind, payload))) = read_record(&mut reader) {
        let _ = serde_json::from_slice::<StubSpec>(&payload);
        let _ = serde_json::from_slice::<StubExit>(&payload);
    }
    if let Some((&kind, payload)) = data.split_first() {
        let record = encode_record(kind, payload);
        let read = read_record(&mut record.as_slice()).expect("an encoded record reads back");
        assert_eq!(read, Some((kind, payload.to_vec())));
    }
});
