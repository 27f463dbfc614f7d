#![no_main]
//! redis.conf / desired-state parsing on arbitrary text (`config apply FILE` reads user files),
//! and quoting: what `write_conf` writes parses back to the same values.

use libfuzzer_sys::fuzz_target;
use rcops_formats::conf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = conf::parse_conf(text);
    for line in text.lines() {
        let _ = conf::split_args(line);
    }
    let quoted = conf::quote(text);
    assert_eq!(conf::split_args(&quoted).ok(), Some(vec![text.to_string()]), "{quoted:?}");
});
