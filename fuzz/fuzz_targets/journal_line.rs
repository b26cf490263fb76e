//! The journal line reader on arbitrary bytes: `report` reads journals
//! that crashes, full disks and hostile processes (comm, cmdline) shaped.
//! It must never panic, and must account for every line it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portwatch_core::{output::json, report::read};

fuzz_target!(|data: &[u8]| {
    let mut stats = read::ReadStats::default();
    let mut parsed = 0u64;
    read::scan(&mut std::io::Cursor::new(data), &mut stats, |_| parsed += 1).unwrap();
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(parsed + stats.corrupt + stats.truncated + stats.notices + stats.too_long <= stats.lines);
    // And the line parser alone, on the input as one line.
    let _ = json::parse_line(data);
});
