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
//!
//! Nothing here does I/O: every function takes text or bytes and returns values or a
//! [`ParseError`] naming what was wrong. All parsers are total — no input makes them panic.

pub mod cluster_nodes;
pub mod conf;
pub mod info;
pub mod resp;
pub mod slot;

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
