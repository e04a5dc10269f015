//! The engine's multiplexed stdout/stderr frames (`docker::stream`): every input ends
//! in frames, a clean end, or an error, never a panic or an allocation past the limit.
#![no_main]

use agentkernel::engine::frames::FrameReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frames = FrameReader::new(data);
    let mut payload = Vec::new();
    let mut total = 0;
    while let Ok(Some(_kind)) = frames.next_frame(&mut payload) {
        total += payload.len() + 8;
        assert!(total <= data.len());
    }
});
