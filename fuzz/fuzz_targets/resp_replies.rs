#![no_main]
//! Reply framing on arbitrary bytes (what a half-dead or hostile node may send): every framed
//! reply lies inside the buffer, in order, and error text never panics.

use libfuzzer_sys::fuzz_target;
use rcops_formats::resp::{error_text, scan_replies};

fuzz_target!(|data: &[u8]| {
    if let Ok(replies) = scan_replies(data, 1000) {
        let mut pos = 0;
        for r in &replies {
            assert!(r.start == pos && r.start < r.end && r.end <= data.len());
            pos = r.end;
            if r.error {
                let _ = error_text(data, r);
            }
        }
    }
});
