//! The records inside an archive segment of a replication stream (what `backup follow`
//! writes and a point-in-time restore reads), after decompression. Pure framing, no I/O.
//!
//! A segment is a run of records, each a tag byte and a body:
//! - `C` a command: the stream offset just after it (u64, little-endian), then the command as
//!   a RESP array of bulk strings, exactly as a replica receives it;
//! - `T` a stamp: a stream offset and a Unix time in ms (u64 each, little-endian) — every
//!   command ending at or before that offset had arrived by then. The stream itself carries
//!   no times; the archiver stamps it as it arrives.

use crate::resp::{encode_command, parse_command, Malformed};

const COMMAND: u8 = b'C';
const STAMP: u8 = b'T';

/// One record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Command { end: u64, args: Vec<Vec<u8>> },
    Stamp { offset: u64, unix_ms: u64 },
}

/// Appends a command record.
pub fn push_command(out: &mut Vec<u8>, end: u64, args: &[Vec<u8>]) {
    out.push(COMMAND);
    out.extend_from_slice(&end.to_le_bytes());
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    encode_command(&args, out);
}

/// Appends a stamp record.
pub fn push_stamp(out: &mut Vec<u8>, offset: u64, unix_ms: u64) {
    out.push(STAMP);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// The first record of `buf` and the bytes it took; `None` until it is complete (a segment
/// cut short ends in an incomplete record); an error for bytes that are not a record.
pub fn next_record(buf: &[u8]) -> Result<Option<(Record, usize)>, Malformed> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    match tag {
        STAMP => Ok(u64_at(buf, 1)
            .zip(u64_at(buf, 9))
            .map(|(offset, unix_ms)| (Record::Stamp { offset, unix_ms }, 17))),
        COMMAND => {
            let Some(end) = u64_at(buf, 1) else {
                return Ok(None);
            };
            match parse_command(&buf[9..]).map_err(|Malformed(at)| Malformed(at + 9))? {
                Some((args, _)) if args.is_empty() => Err(Malformed(9)),
                Some((args, n)) => Ok(Some((Record::Command { end, args }, 9 + n))),
                None => Ok(None),
            }
        }
        _ => Err(Malformed(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut buf: &[u8]) -> Result<Vec<Record>, Malformed> {
        let mut out = Vec::new();
        while let Some((r, n)) = next_record(buf)? {
            out.push(r);
            buf = &buf[n..];
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_and_a_cut_record_waits() {
        let mut buf = Vec::new();
        let set = vec![b"SET".to_vec(), b"k".to_vec(), b"\r\n\0".to_vec()];
        push_command(&mut buf, 120, &set);
        push_stamp(&mut buf, 120, 1_764_000_000_123);
        push_command(&mut buf, 150, &[b"PING".to_vec()]);
        let want = vec![
            Record::Command {
                end: 120,
                args: set,
            },
            Record::Stamp {
                offset: 120,
                unix_ms: 1_764_000_000_123,
            },
            Record::Command {
                end: 150,
                args: vec![b"PING".to_vec()],
            },
        ];
        assert_eq!(all(&buf).unwrap(), want);
        for cut in 0..buf.len() {
            let got = all(&buf[..cut]).unwrap();
            assert!(got.len() < 3 && want.starts_with(&got), "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_are_not_records_are_errors() {
        assert_eq!(next_record(b"X"), Err(Malformed(0)));
        let mut buf = vec![b'C'];
        buf.extend_from_slice(&7u64.to_le_bytes());
        buf.extend_from_slice(b"+OK\r\n");
        assert_eq!(next_record(&buf), Err(Malformed(9)));
        let mut buf = vec![b'C'];
        buf.extend_from_slice(&7u64.to_le_bytes());
        buf.extend_from_slice(b"\n");
        assert_eq!(next_record(&buf), Err(Malformed(9)));
    }
}
