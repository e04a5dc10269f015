//! The HTTP request edge: `parse_head` on any bytes (it never panics, never takes more
//! than it was given, and holds its bounds), and the chunked decoder fed in two pieces
//! (it never returns more than its limit, and the split does not change the result).
#![no_main]

use agentkernel::server::http::{parse_head, Chunked, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(Some((head, length))) = parse_head(data, &limits) {
        assert!(length <= data.len());
        assert!(length <= limits.max_head);
        assert!(head.headers.len() <= limits.max_headers);
        assert!(head.target.starts_with('/'));
    }
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let limit = 4096;
    let mut whole = Chunked::new(limit);
    let whole_result = whole.feed(data);
    let mut parts = Chunked::new(limit);
    let first = parts.feed(&data[..split]);
    let parts_result = match first {
        Ok(used) if used == split && !parts.is_done() => {
            parts.feed(&data[split..]).map(|more| used + more)
        }
        other => other,
    };
    assert!(whole.body.len() as u64 <= limit);
    if let (Ok(a), Ok(b)) = (&whole_result, &parts_result) {
        if whole.is_done() {
            assert_eq!(a, b);
            assert_eq!(whole.body, parts.body);
        }
    }
});
