#![no_main]
//! The RDB reader on arbitrary bytes: errors are fine, panics and runaway allocations are not.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = rcops_rdb::Parser::new(data) {
        for item in p.take(100_000) {
            if item.is_err() {
                break;
            }
        }
    }
});
