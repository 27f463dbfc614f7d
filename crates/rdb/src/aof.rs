//! Append-only files: a stream of RESP commands, optionally after an RDB preamble, with
//! Redis 7 `#TS:<unix>` annotations; and the multi-part directory's manifest. No I/O beyond
//! a `Read`.

use std::io::{BufRead, Read};

use crate::RdbError;

/// What an AOF yields.
#[derive(Debug, Clone, PartialEq)]
pub enum AofItem {
    /// A command and its arguments.
    Command(Vec<Vec<u8>>),
    /// `#TS:<unix seconds>`: commands after it were written at or after that time.
    Timestamp(u64),
}

/// Reads commands from a buffered reader positioned after any RDB preamble.
pub struct AofReader<R: BufRead> {
    r: R,
    offset: u64,
}

impl<R: BufRead> AofReader<R> {
    pub fn new(r: R, offset: u64) -> Self {
        AofReader { r, offset }
    }

    fn corrupt(&self, reason: impl Into<String>) -> RdbError {
        RdbError::Corrupt {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn line(&mut self) -> Result<Option<Vec<u8>>, RdbError> {
        let mut line = Vec::new();
        let n = self
            .r
            .read_until(b'\n', &mut line)
            .map_err(|source| RdbError::Io {
                offset: self.offset,
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n as u64;
        if !line.ends_with(b"\r\n") {
            return Err(RdbError::Truncated {
                offset: self.offset,
            });
        }
        line.truncate(line.len() - 2);
        Ok(Some(line))
    }

    fn number(&self, b: &[u8]) -> Result<u64, RdbError> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.corrupt(format!("bad number {:?}", String::from_utf8_lossy(b))))
    }

    /// The next item, or `None` at a clean end of file.
    pub fn next_item(&mut self) -> Result<Option<AofItem>, RdbError> {
        loop {
            let Some(line) = self.line()? else {
                return Ok(None);
            };
            if line.is_empty() {
                continue;
            }
            if let Some(ts) = line.strip_prefix(b"#TS:") {
                return Ok(Some(AofItem::Timestamp(self.number(ts)?)));
            }
            if line.starts_with(b"#") {
                continue; // other annotations
            }
            let Some(n) = line.strip_prefix(b"*") else {
                return Err(self.corrupt("expected a command ('*')"));
            };
            let n = self.number(n)?;
            if n > 1 << 20 {
                return Err(self.corrupt(format!("command with {n} arguments")));
            }
            let mut args = Vec::new();
            for _ in 0..n {
                let head = self.line()?.ok_or(RdbError::Truncated {
                    offset: self.offset,
                })?;
                let Some(len) = head.strip_prefix(b"$") else {
                    return Err(self.corrupt("expected an argument ('$')"));
                };
                let len = self.number(len)?;
                if len > crate::reader::MAX_STRING {
                    return Err(self.corrupt(format!("argument of {len} bytes")));
                }
                let mut arg = Vec::new();
                (&mut self.r)
                    .take(len + 2)
                    .read_to_end(&mut arg)
                    .map_err(|source| RdbError::Io {
                        offset: self.offset,
                        source,
                    })?;
                if arg.len() as u64 != len + 2 {
                    return Err(RdbError::Truncated {
                        offset: self.offset + arg.len() as u64,
                    });
                }
                self.offset += len + 2;
                arg.truncate(len as usize);
                args.push(arg);
            }
            return Ok(Some(AofItem::Command(args)));
        }
    }
}

/// One file of a multi-part AOF, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AofPart {
    pub file: String,
    pub seq: u64,
    /// `b` base, `i` incremental, `h` history (not replayed).
    pub kind: char,
}

/// Parses `appendonly.aof.manifest`: lines of `file NAME seq N type b|i|h`. Returns the base
/// first, then incremental files in sequence order; history files are dropped.
pub fn parse_manifest(text: &str) -> Result<Vec<AofPart>, String> {
    let mut parts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let mut file = None;
        let mut seq = None;
        let mut kind = None;
        for kv in f.chunks(2) {
            match kv {
                ["file", v] => file = Some(v.to_string()),
                ["seq", v] => seq = v.parse().ok(),
                ["type", v] => kind = v.chars().next(),
                _ => {}
            }
        }
        match (file, seq, kind) {
            (Some(file), Some(seq), Some(kind)) => parts.push(AofPart { file, seq, kind }),
            _ => return Err(format!("manifest line {}: {line:?}", i + 1)),
        }
    }
    parts.retain(|p| p.kind != 'h');
    parts.sort_by_key(|p| (p.kind != 'b', p.seq));
    if parts.iter().filter(|p| p.kind == 'b').count() > 1 {
        return Err("manifest lists more than one base file".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_and_timestamps() {
        let text =
            b"#TS:1700000000\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv\n\r\n*1\r\n$5\r\nMULTI\r\n";
        let mut r = AofReader::new(&text[..], 0);
        assert_eq!(
            r.next_item().unwrap(),
            Some(AofItem::Timestamp(1_700_000_000))
        );
        assert_eq!(
            r.next_item().unwrap(),
            Some(AofItem::Command(vec![
                b"SET".to_vec(),
                b"k".to_vec(),
                b"v\n".to_vec()
            ]))
        );
        assert_eq!(
            r.next_item().unwrap(),
            Some(AofItem::Command(vec![b"MULTI".to_vec()]))
        );
        assert_eq!(r.next_item().unwrap(), None);
    }

    #[test]
    fn truncated_and_garbage_input_are_errors_with_offsets() {
        let text = b"*2\r\n$3\r\nGET\r\n$10\r\nshort\r\n";
        let mut r = AofReader::new(&text[..], 100);
        let e = r.next_item().unwrap_err();
        assert!(e.offset().unwrap() > 100);
        let mut r = AofReader::new(&b"hello\r\n"[..], 0);
        assert!(r.next_item().is_err());
    }

    #[test]
    fn manifest_orders_base_then_increments() {
        let m = "file appendonly.aof.2.incr.aof seq 2 type i\nfile appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\nfile old.aof seq 1 type h\n";
        let p = parse_manifest(m).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "appendonly.aof.1.base.rdb",
                "appendonly.aof.1.incr.aof",
                "appendonly.aof.2.incr.aof"
            ]
        );
        assert!(parse_manifest("file x\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut r = AofReader::new(&data[..], 0);
            for _ in 0..50 {
                match r.next_item() { Ok(Some(_)) => {}, _ => break }
            }
        }
    }
}
