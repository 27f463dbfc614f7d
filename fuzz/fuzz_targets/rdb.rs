#![no_main]
//! The RDB reader on arbitrary bytes: errors are fine, panics and runaway allocations are not.
//! The first byte picks the mode — values decoded or only walked, raw bytes kept or not — and
//! how many bytes each `read` returns, so the buffer refills and the checksum's per-buffer
//! bookkeeping are exercised at every boundary, not only with the whole input at once.

use libfuzzer_sys::fuzz_target;
use std::io::Read;

/// A reader that hands out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // 1, 8, 15, … 442 bytes per read; every fourth value of `mode >> 2` reads whole.
    let step = match mode >> 2 {
        m if m % 4 == 3 => usize::MAX,
        m => 1 + m as usize * 7,
    };
    let reader = Trickle { data: rest, step };
    if let Ok(p) = rcops_rdb::Parser::new(reader) {
        let p = p.decode_values(mode & 1 == 0).keep_raw(mode & 2 == 0);
        for item in p.take(100_000) {
            if item.is_err() {
                break;
            }
        }
    }
});
