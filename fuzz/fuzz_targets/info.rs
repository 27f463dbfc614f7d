//! Fuzz target: INFO parsing and its typed accessors must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcops_formats::info::Info;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let info = Info::parse(text);
        let _ = (info.keyspace(), info.replicas(), info.total_keys(), info.u64("used_memory"));
    }
});
