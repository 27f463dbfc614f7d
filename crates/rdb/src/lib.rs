//! rcops-rdb: a streaming reader for Redis RDB files (versions 9–12, Redis 5.0 to 7.4) and
//! what Valkey writes, with no I/O beyond a [`std::io::Read`].
//!
//! [`Parser`] yields one [`Item`] at a time — aux fields, database selectors, and keys with
//! their expiry, decoded value and the raw serialized value bytes (type byte + encoding), which
//! is exactly the body of a `DUMP` payload ([`dump_payload`]). The CRC64 trailer is verified.
//! Corrupt or truncated input is an [`RdbError`] naming the byte offset; no length read from
//! the input is trusted for an allocation beyond the bytes actually present.
//!
//! # Layout
//! - [`reader`]: byte source with offset, running CRC64, raw-byte capture, length encodings.
//! - [`encodings`]: ziplist, listpack, intset, zipmap and LZF decoding.
//! - [`parser`]: opcodes and value types.
//! - [`rebuild`]: the commands that write a value piece by piece (big keys).
//! - [`aof`]: append-only files (RESP commands, `#TS:` annotations, multi-part manifests).

pub mod aof;
pub mod encodings;
pub mod json;
pub mod parser;
pub mod reader;
pub mod rebuild;
pub mod strings;

pub use parser::{decode_raw, Entry, Item, Parser, StreamValue, Value};
pub use reader::{SpillFile, Spilled};
pub use strings::{Fields, Members, Strings};

/// The CRC-64 redis uses (`CRC-64/REDIS`: Jones polynomial, reflected) for DUMP payloads and
/// the RDB trailer. It runs over every byte of every file and every restored value, so it is
/// crc-fast's carry-less-multiply (PCLMULQDQ) version, ~6× the slice-by-16 table here.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Redis, data)
}

/// A running [`crc64`].
pub fn crc64_digest() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Redis)
}

/// A failure reading an RDB, with the byte offset where it was noticed.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    #[error("byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("byte {offset}: file ends early (truncated?)")]
    Truncated { offset: u64 },
    #[error("byte {offset}: {what} is not supported")]
    Unsupported { offset: u64, what: String },
    #[error("checksum mismatch: file says {expected:016x}, content hashes to {actual:016x}")]
    Checksum { expected: u64, actual: u64 },
    #[error("read error at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

impl RdbError {
    pub fn offset(&self) -> Option<u64> {
        match self {
            RdbError::Corrupt { offset, .. }
            | RdbError::Truncated { offset }
            | RdbError::Unsupported { offset, .. }
            | RdbError::Io { offset, .. } => Some(*offset),
            RdbError::Checksum { .. } => None,
        }
    }
}

/// Value type names as `TYPE` reports them.
pub fn type_name(type_byte: u8) -> &'static str {
    match type_byte {
        0 => "string",
        1 | 10 | 14 | 18 => "list",
        2 | 11 | 20 => "set",
        3 | 5 | 12 | 17 => "zset",
        4 | 9 | 13 | 16 | 22..=25 => "hash",
        15 | 19 | 21 | 26..=28 => "stream",
        6 | 7 => "module",
        _ => "unknown",
    }
}

/// The first RDB version of Valkey's own line (Valkey 9; 12–79 are Redis's): from here on,
/// type numbers from 22 up mean Valkey's types, not Redis 7.4's.
pub const VALKEY_RDB_MIN: u16 = 80;

/// The oldest RDB version that knows a value type: a DUMP payload of that type can be
/// stamped with any version from there on.
pub fn min_version_for_type(type_byte: u8, file_version: u16) -> u16 {
    match type_byte {
        // Valkey's own types: 22 is its hash with field expirations (RDB 80).
        22.. if file_version >= VALKEY_RDB_MIN => VALKEY_RDB_MIN + u16::from(type_byte - 22),
        0..=5 | 9..=14 => 7,
        7 => 8,
        15 => 9,
        16..=19 => 10,
        20 | 21 => 11,
        _ => 12,
    }
}

/// Turns a raw value into its DUMP payload in place (no copy of the value).
pub fn into_dump_payload(mut raw: Vec<u8>, rdb_version: u16) -> Vec<u8> {
    raw.extend_from_slice(&rdb_version.to_le_bytes());
    let crc = crc64(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    raw
}

/// The RDB version a `DUMP` payload was written with (from its trailer), `None` for bytes too
/// short to be one.
pub fn dump_payload_version(payload: &[u8]) -> Option<u16> {
    let at = payload.len().checked_sub(10)?;
    Some(u16::from_le_bytes([payload[at], payload[at + 1]]))
}

/// A `DUMP`/`RESTORE` payload: the serialized value, the RDB version (2 bytes LE) and the
/// CRC64 of both (8 bytes LE).
pub fn dump_payload(raw: &[u8], rdb_version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 10);
    out.extend_from_slice(raw);
    out.extend_from_slice(&rdb_version.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Rewrites a stream of RDB type 21 (Redis 7.2+/Valkey: consumers carry an active time) as
/// type 19 (Redis 7.0), dropping only each consumer's active-time field, so a stream from a
/// newer server restores into a 7.0 target.
pub fn stream_v3_to_v2(raw: &[u8]) -> Result<Vec<u8>, RdbError> {
    if raw.first() != Some(&21) {
        return Err(RdbError::Unsupported {
            offset: 0,
            what: "downgrading anything but a type-21 stream".into(),
        });
    }
    let mut r = reader::Reader::new(&raw[1..]);
    r.start_capture(&[19]);
    for _ in 0..r.count()? {
        r.skip_string()?;
        r.skip_string()?;
    }
    // length, last id (2), first id (2), max deleted id (2), entries added.
    for _ in 0..8 {
        r.length()?;
    }
    for _ in 0..r.count()? {
        r.skip_string()?;
        r.length()?;
        r.length()?;
        r.length()?; // entries read
        for _ in 0..r.count()? {
            r.skip(16 + 8)?;
            r.length()?;
        }
        for _ in 0..r.count()? {
            r.skip_string()?;
            r.skip(8)?; // seen time
            let kept = r.take_capture();
            r.skip(8)?; // active time: not in type 19
            r.start_capture(&kept);
            for _ in 0..r.count()? {
                r.skip(16)?;
            }
        }
    }
    Ok(r.take_capture())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_crc64() {
        // The check value of CRC-64/REDIS, as redis' own crc64 test asserts.
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn dump_payload_matches_redis() {
        // `DUMP` of the string "hello" on Redis 7.0.15 (RDB version 10).
        let want = [
            0, 5, 104, 101, 108, 108, 111, 10, 0, 99, 114, 223, 118, 101, 52, 32, 10,
        ];
        assert_eq!(dump_payload(b"\x00\x05hello", 10), want);
    }
}
