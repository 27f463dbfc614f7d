//! Pure parsers for the text formats Redis Cluster speaks, and slot arithmetic.
//!
//! # Layout
//! - [`slot`]: CRC16 key hashing with hash tags, slot ranges and slot sets.
//! - [`cluster_nodes`]: the `CLUSTER NODES` line format (every flag, address form and
//!   migrating/importing entry).
//! - [`info`]: `INFO` and `CLUSTER INFO` (`key:value` sections, keyspace and replica lines).
//! - [`conf`]: redis.conf syntax, CONFIG value comparison (units, spellings), secrets and
//!   per-node parameter lists.
//! - [`resp`]: RESP2 command encoding and reply framing for the load generator.
//! - [`segment`]: the records of a replication-stream archive segment (commands and stamps).
//!
//! Nothing here does I/O: every function takes text or bytes and returns values or a
//! [`ParseError`] naming what was wrong. All parsers are total — no input makes them panic.

pub mod cluster_nodes;
pub mod conf;
pub mod info;
pub mod resp;
pub mod segment;
pub mod slot;

/// Redis-cli style rendering of a key: printable ASCII as is, other bytes `\xNN`.
pub fn show_key(k: &[u8]) -> String {
    let mut s = String::with_capacity(k.len() + 2);
    s.push('"');
    for &b in k {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// A key for a table or a line of output: as is when it is printable ASCII without quotes or
/// backslashes, else quoted and escaped like redis-cli ([`show_key`]), so binary bytes never
/// reach the terminal raw.
pub fn display_key(k: &[u8]) -> String {
    if k.iter()
        .all(|&b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        && !k.is_empty()
    {
        String::from_utf8_lossy(k).into_owned()
    } else {
        show_key(k)
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn binary_keys_are_escaped_like_redis_cli() {
        assert_eq!(display_key(b"user:1"), "user:1");
        assert_eq!(display_key(b"a\x00b\xff\n"), "\"a\\x00b\\xff\\n\"");
        assert_eq!(display_key(b"say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(display_key(b""), "\"\"");
    }
}

/// A parse failure, with enough context to point at the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {reason}: {text:?}")]
    Line {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("{reason}: {text:?}")]
    Value { reason: &'static str, text: String },
}

impl ParseError {
    pub(crate) fn value(reason: &'static str, text: &str) -> Self {
        ParseError::Value {
            reason,
            text: truncate(text),
        }
    }
}

/// Keeps error messages one line and short even for hostile input.
pub(crate) fn truncate(text: &str) -> String {
    const MAX: usize = 120;
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}
