//! The engine's HTTP responses (`docker::http`): a response head, then its body by the
//! framing the head implies (Content-Length, chunked, until EOF), under a bound; and the
//! JSON of a container inspection. Nothing may panic or allocate past the bound.
#![no_main]

use std::io::{BufReader, Read};

use agentkernel::engine::http::{body_framing, read_body, read_head, ChunkedReader};
use agentkernel::engine::ContainerInspect;
use libfuzzer_sys::fuzz_target;

const MAX_BODY: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let method = if selector & 1 == 0 { "GET" } else { "HEAD" };
    // A small buffer makes the reads split lines and chunks at every place.
    let mut reader = BufReader::with_capacity(1 + usize::from(selector >> 4), input);
    if let Ok(head) = read_head(&mut reader) {
        let _ = head.header("content-type");
        if let Ok(framing) = body_framing(method, &head) {
            if let Ok(body) = read_body(&mut reader, framing, MAX_BODY) {
                assert!(body.len() as u64 <= MAX_BODY);
                let _ = serde_json::from_slice::<ContainerInspect>(&body);
            }
        }
    }
    // The chunked decoder alone, as the event streams use it: endless, so bounded here.
    let mut decoded = Vec::new();
    let _ = ChunkedReader::new(input)
        .take(MAX_BODY + 1)
        .read_to_end(&mut decoded);
});
