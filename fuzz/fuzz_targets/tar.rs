//! The engine's archives (`tar::read_first_entry`): the first entry of any bytes, with
//! its data bounded, and a written archive read back as written.
#![no_main]

use agentkernel::codec::tar::{read_first_entry, write_archive, FileEntry};
use libfuzzer_sys::fuzz_target;

const MAX_DATA: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let _ = read_first_entry(&mut reader, MAX_DATA);
    if data.len() > 2 {
        let (name, content) = data.split_at(1 + usize::from(data[0]) % (data.len() - 1));
        if let Ok(name) = std::str::from_utf8(name) {
            let entries = [FileEntry {
                name,
                data: content,
                mode: 0o644,
                mtime: 0,
                uid: 0,
                gid: 0,
            }];
            if let Ok(archive) = write_archive(&entries) {
                let entry = read_first_entry(&mut archive.as_slice(), MAX_DATA)
                    .expect("a written archive reads back");
                assert_eq!(entry.data, content);
            }
        }
    }
});
