//! Fuzz target: `CLUSTER NODES` parsing and the accessors on what it returns must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcops_formats::cluster_nodes;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(lines) = cluster_nodes::parse(text) {
            for l in &lines {
                let _ = (l.addr(), l.flags.render(), l.slot_set().len(), l.dialable());
            }
        }
    }
});
