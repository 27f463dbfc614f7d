//! Commands that rebuild a value from its serialization (a DUMP payload's body: type byte,
//! then the value), in batches of bounded size: how a value too big for one `RESTORE` is
//! written in pieces (`APPEND`, `RPUSH`, `SADD`, `ZADD`, `HSET` with `HPEXPIREAT`, `XADD` with
//! `XSETID`, `XGROUP` and `XCLAIM` for consumer groups and their pending entries). The value
//! is read as it is walked: memory stays at a batch plus one packed node, whatever the size of
//! the value (a compressed string is decompressed as a stream).
//!
//! What commands cannot carry: a stream consumer's seen and active times (they become the
//! time of the rebuild).

use std::collections::HashMap;
use std::io::Read;

/// A stream entry id: (milliseconds, sequence).
type StreamId = (u64, u64);

use crate::encodings::{self, element_bytes, Element};
use crate::reader::{Length, Reader};
use crate::{RdbError, VALKEY_RDB_MIN};

/// One command: its name and arguments.
pub type Command = Vec<Vec<u8>>;

/// Largest piece of a string in one `APPEND`, and of one variadic command.
const COMMAND_BYTES: usize = 1 << 20;
/// Most elements in one variadic command.
const COMMAND_ELEMENTS: usize = 10_000;

/// Whether a value of this type can be rebuilt from commands (module values cannot, nor the
/// Valkey types rcops does not read).
pub fn rebuildable(type_byte: u8, version: u16) -> bool {
    let valkey = version >= VALKEY_RDB_MIN;
    match type_byte {
        0..=5 | 9..=21 => true,
        22 => true,
        23..=25 => !valkey,
        _ => false,
    }
}

/// Walks the value `open` reads and hands `emit` the commands that write it under `key`, in
/// batches of about `batch_bytes`; `emit` returns `false` to stop early. `version` is the RDB
/// version the value was written with (Valkey numbers some types differently). A stream is
/// read twice (`open` called again): first for the IDs its groups have pending. Returns
/// whether it ran to the end (not stopped) and how many elements (bytes for a string) it
/// wrote.
pub fn rebuild<R: Read>(
    open: impl Fn() -> R,
    version: u16,
    key: &[u8],
    batch_bytes: usize,
    emit: impl FnMut(Vec<Command>) -> bool,
) -> Result<(bool, u64), RdbError> {
    let mut out = Out {
        key: key.to_vec(),
        batch_bytes: batch_bytes.max(1),
        batch: Vec::new(),
        after: Vec::new(),
        bytes: 0,
        open: None,
        open_bytes: 0,
        elements: 0,
        emit,
    };
    let mut r = Reader::new(open());
    match value(&mut r, version, &open, &mut out) {
        Ok(()) => {}
        Err(Halt::Stopped) => return Ok((false, out.elements)),
        Err(Halt::Rdb(e)) => return Err(e),
    }
    match out.flush() {
        Ok(()) => Ok((true, out.elements)),
        Err(_) => Ok((false, out.elements)),
    }
}

enum Halt {
    Stopped,
    Rdb(RdbError),
}

impl From<RdbError> for Halt {
    fn from(e: RdbError) -> Self {
        Halt::Rdb(e)
    }
}

type Step = Result<(), Halt>;

struct Out<F> {
    key: Vec<u8>,
    batch_bytes: usize,
    batch: Vec<Command>,
    /// Commands that must follow the batch's others (field expiries after their `HSET`).
    after: Vec<Command>,
    bytes: usize,
    /// The variadic command last in `batch` that more elements may join, by name, and the
    /// bytes of its elements so far.
    open: Option<&'static [u8]>,
    open_bytes: usize,
    elements: u64,
    emit: F,
}

impl<F: FnMut(Vec<Command>) -> bool> Out<F> {
    /// Adds one element (`args`) to an open `name key …` command, or opens one.
    fn add(&mut self, name: &'static [u8], args: &[&[u8]]) -> Step {
        let size: usize = args.iter().map(|a| a.len() + 16).sum();
        let joins = self.open == Some(name)
            && self.open_bytes < COMMAND_BYTES
            && self
                .batch
                .last()
                .is_some_and(|c| c.len() < COMMAND_ELEMENTS);
        match self.batch.last_mut() {
            Some(c) if joins => {
                c.extend(args.iter().map(|a| a.to_vec()));
                self.open_bytes += size;
            }
            _ => {
                let mut c = vec![name.to_vec(), self.key.clone()];
                c.extend(args.iter().map(|a| a.to_vec()));
                self.batch.push(c);
                self.open = Some(name);
                self.open_bytes = size;
            }
        }
        self.elements += 1;
        self.grew(size)
    }

    /// Adds a command of its own: `name key args…`.
    fn single(&mut self, name: &[u8], args: &[&[u8]]) -> Step {
        let mut c = vec![name.to_vec(), self.key.clone()];
        c.extend(args.iter().map(|a| a.to_vec()));
        self.command(c)
    }

    /// Adds a whole command.
    fn command(&mut self, c: Command) -> Step {
        let size = c.iter().map(|a| a.len() + 16).sum();
        self.batch.push(c);
        self.open = None;
        self.grew(size)
    }

    fn grew(&mut self, size: usize) -> Step {
        self.bytes += size;
        if self.bytes >= self.batch_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Step {
        self.batch.append(&mut self.after);
        self.bytes = 0;
        self.open = None;
        if self.batch.is_empty() {
            return Ok(());
        }
        if (self.emit)(std::mem::take(&mut self.batch)) {
            Ok(())
        } else {
            Err(Halt::Stopped)
        }
    }

    /// `HSET` of a field, with its absolute expiry in ms set after the batch's `HSET`s.
    fn field(&mut self, f: &[u8], v: &[u8], expiry: Option<i64>) -> Step {
        if let Some(ms) = expiry {
            let ms = ms.to_string();
            let c = [
                b"HPEXPIREAT",
                &self.key[..],
                ms.as_bytes(),
                b"FIELDS",
                b"1",
                f,
            ];
            self.after.push(c.iter().map(|a| a.to_vec()).collect());
        }
        self.add(b"HSET", &[f, v])
    }
}

fn value<R: Read, F: FnMut(Vec<Command>) -> bool>(
    r: &mut Reader<R>,
    version: u16,
    open: &dyn Fn() -> R,
    out: &mut Out<F>,
) -> Step {
    let at = r.offset();
    let t = r.u8()?;
    let blob_err = |what: &str, reason: String| RdbError::Corrupt {
        offset: at,
        reason: format!("{what}: {reason}"),
    };
    let each_packed = |r: &mut Reader<R>, listpack: bool| -> Result<Vec<Vec<u8>>, RdbError> {
        let blob = r.string()?;
        let e = if listpack {
            encodings::listpack(&blob)
        } else {
            encodings::ziplist(&blob)
        };
        let e =
            e.map_err(|reason| blob_err(if listpack { "listpack" } else { "ziplist" }, reason))?;
        Ok(e.into_iter().map(element_bytes).collect())
    };
    let pairs = |v: Vec<Vec<u8>>, n: usize| -> Result<Vec<Vec<u8>>, RdbError> {
        if !v.len().is_multiple_of(n) {
            return Err(blob_err(
                "packed value",
                format!("{} elements in an encoding of {n}-tuples", v.len()),
            ));
        }
        Ok(v)
    };
    match t {
        0 => string(r, out)?,
        1 | 2 => {
            let name: &'static [u8] = if t == 1 { b"RPUSH" } else { b"SADD" };
            for _ in 0..r.count()? {
                out.add(name, &[&r.string()?])?;
            }
        }
        3 | 5 => {
            for _ in 0..r.count()? {
                let m = r.string()?;
                let s = if t == 5 {
                    f64::from_le_bytes(r.array()?)
                } else {
                    r.text_double()?
                };
                out.add(b"ZADD", &[score(s).as_bytes(), &m])?;
            }
        }
        4 => {
            for _ in 0..r.count()? {
                let (f, v) = (r.string()?, r.string()?);
                out.field(&f, &v, None)?;
            }
        }
        9 => {
            let blob = r.string()?;
            for (f, v) in encodings::zipmap(&blob).map_err(|e| blob_err("zipmap", e))? {
                out.field(&f, &v, None)?;
            }
        }
        10 => {
            for e in each_packed(r, false)? {
                out.add(b"RPUSH", &[&e])?;
            }
        }
        11 => {
            let blob = r.string()?;
            for i in encodings::intset(&blob).map_err(|e| blob_err("intset", e))? {
                out.add(b"SADD", &[i.to_string().as_bytes()])?;
            }
        }
        12 | 17 => {
            for p in pairs(each_packed(r, t == 17)?, 2)?.chunks_exact(2) {
                out.add(b"ZADD", &[&p[1], &p[0]])?;
            }
        }
        13 | 16 => {
            for p in pairs(each_packed(r, t == 16)?, 2)?.chunks_exact(2) {
                out.field(&p[0], &p[1], None)?;
            }
        }
        14 => {
            for _ in 0..r.count()? {
                for e in each_packed(r, false)? {
                    out.add(b"RPUSH", &[&e])?;
                }
            }
        }
        18 => {
            for _ in 0..r.count()? {
                match r.length()? {
                    1 => out.add(b"RPUSH", &[&r.string()?])?,
                    2 => {
                        for e in each_packed(r, true)? {
                            out.add(b"RPUSH", &[&e])?;
                        }
                    }
                    c => return Err(r.corrupt(format!("quicklist container {c}")).into()),
                }
            }
        }
        20 => {
            for e in each_packed(r, true)? {
                out.add(b"SADD", &[&e])?;
            }
        }
        15 | 19 | 21 => {
            let mut first = Reader::new(open());
            first.u8()?;
            let pending = pending_ids(&mut first, t)?;
            stream(r, t, &pending, out)?
        }
        22 if version >= VALKEY_RDB_MIN => {
            for _ in 0..r.count()? {
                let (f, v) = (r.string()?, r.string()?);
                let exp = i64::from_le_bytes(r.array()?);
                out.field(&f, &v, (exp != -1).then_some(exp))?;
            }
        }
        22 | 24 if version < VALKEY_RDB_MIN => {
            let min = if t == 24 {
                i64::from_le_bytes(r.array()?)
            } else {
                0
            };
            for _ in 0..r.count()? {
                let ttl = r.length()?;
                let (f, v) = (r.string()?, r.string()?);
                let exp = match (ttl, t) {
                    (0, _) => None,
                    (x, 24) => Some(x as i64 + min - 1),
                    (x, _) => Some(x as i64),
                };
                out.field(&f, &v, exp)?;
            }
        }
        23 | 25 if version < VALKEY_RDB_MIN => {
            if t == 25 {
                let _min: [u8; 8] = r.array()?;
            }
            for x in pairs(each_packed(r, true)?, 3)?.chunks_exact(3) {
                let exp = Element::Bytes(&x[2]).as_i64().filter(|&x| x > 0);
                out.field(&x[0], &x[1], exp)?;
            }
        }
        _ => {
            return Err(RdbError::Unsupported {
                offset: at,
                what: format!("rebuilding value type {t} from commands"),
            }
            .into())
        }
    }
    Ok(())
}

/// A score as Redis parses it back exactly (Rust's shortest round-trip form; `inf`, `-inf`).
fn score(s: f64) -> String {
    if s.is_infinite() {
        if s > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        s.to_string()
    }
}

/// A string in `APPEND`s of at most [`COMMAND_BYTES`]; an LZF-compressed one decompressed
/// as it is read.
fn string<R: Read, F: FnMut(Vec<Command>) -> bool>(r: &mut Reader<R>, out: &mut Out<F>) -> Step {
    let append = |out: &mut Out<F>, b: &[u8]| {
        out.elements += b.len() as u64;
        out.single(b"APPEND", &[b])
    };
    match r.length_or_special()? {
        Length::Len(mut left) => {
            if left == 0 {
                append(out, b"")?;
            }
            while left > 0 {
                let k = left.min(COMMAND_BYTES as u64);
                append(out, &r.bytes(k)?)?;
                left -= k;
            }
        }
        Length::Special(3) => {
            let clen = r.length()?;
            let len = r.length()?;
            let at = r.offset();
            lzf_stream(r, clen, len, at, |b| append(out, b))?;
        }
        Length::Special(k @ 0..=2) => {
            let i = match k {
                0 => i64::from(r.u8()? as i8),
                1 => i64::from(i16::from_le_bytes(r.array()?)),
                _ => i64::from(i32::from_le_bytes(r.array()?)),
            };
            append(out, i.to_string().as_bytes())?;
        }
        Length::Special(k) => return Err(r.corrupt(format!("unknown string encoding {k}")).into()),
    }
    Ok(())
}

/// Farthest back an LZF reference reaches.
const LZF_WINDOW: usize = 8192;

/// LZF decompression of `clen` input bytes into `len`, handed out in pieces of at least
/// [`COMMAND_BYTES`] (the last may be shorter), keeping only the window references need.
fn lzf_stream<R: Read>(
    r: &mut Reader<R>,
    clen: u64,
    len: u64,
    at: u64,
    mut piece: impl FnMut(&[u8]) -> Step,
) -> Step {
    let bad = |reason: &str| {
        Halt::Rdb(RdbError::Corrupt {
            offset: at,
            reason: format!("LZF: {reason}"),
        })
    };
    let mut buf: Vec<u8> = Vec::with_capacity(LZF_WINDOW + COMMAND_BYTES + 300);
    // `buf[sent..]` is not handed out yet; `buf[..sent]` is only kept as the window.
    let (mut sent, mut total, mut read) = (0usize, 0u64, 0u64);
    while read < clen {
        let ctrl = usize::from(r.u8()?);
        read += 1;
        if ctrl < 32 {
            let n = ctrl + 1;
            read += n as u64;
            if read > clen {
                return Err(bad("literal runs past the input"));
            }
            buf.extend_from_slice(&r.bytes(n as u64)?);
            total += n as u64;
        } else {
            let mut n = ctrl >> 5;
            if n == 7 {
                n += usize::from(r.u8()?);
                read += 1;
            }
            n += 2;
            let back = ((ctrl & 0x1f) << 8) + usize::from(r.u8()?) + 1;
            read += 1;
            if read > clen {
                return Err(bad("truncated back reference"));
            }
            if back > buf.len() {
                return Err(bad("back reference before the start"));
            }
            let start = buf.len() - back;
            for i in 0..n {
                buf.push(buf[start + i]);
            }
            total += n as u64;
        }
        if total > len {
            return Err(bad("output longer than declared"));
        }
        if buf.len() - sent >= COMMAND_BYTES {
            piece(&buf[sent..])?;
            let drop = buf.len().saturating_sub(LZF_WINDOW);
            buf.drain(..drop);
            sent = buf.len();
        }
    }
    if total != len {
        return Err(bad(&format!(
            "decompressed to {total} bytes, expected {len}"
        )));
    }
    if buf.len() > sent || total == 0 {
        piece(&buf[sent..])?;
    }
    Ok(())
}

fn id(ms: u64, seq: u64) -> Vec<u8> {
    format!("{ms}-{seq}").into_bytes()
}

/// The IDs some group of a stream has pending, sorted, from a first walk of the value.
fn pending_ids<R: Read>(r: &mut Reader<R>, t: u8) -> Result<Vec<(u64, u64)>, RdbError> {
    for _ in 0..r.count()? {
        r.skip_string()?;
        r.skip_string()?;
    }
    r.length()?;
    r.length()?;
    r.length()?;
    if t >= 19 {
        for _ in 0..5 {
            r.length()?;
        }
    }
    let mut ids = Vec::new();
    for _ in 0..r.count()? {
        r.skip_string()?;
        r.length()?;
        r.length()?;
        if t >= 19 {
            r.length()?;
        }
        for _ in 0..r.count()? {
            ids.push(id_parts(&r.array()?));
            r.skip(8)?;
            r.length()?;
        }
        for _ in 0..r.count()? {
            r.skip_string()?;
            r.skip(if t >= 21 { 16 } else { 8 })?;
            let n = r.count()?;
            r.skip(16 * n)?;
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// A stream: its entries (`XADD` with their IDs), its last ID and counters (`XSETID`), its
/// groups (`XGROUP CREATE … ENTRIESREAD`), their consumers and pending entries with delivery
/// time and count (`XGROUP CREATECONSUMER`, `XCLAIM … FORCE JUSTID`). `XCLAIM` only takes an
/// ID the stream holds, so a pending entry whose message was deleted gets a placeholder
/// message in its place (`XADD` in ID order), claimed, then deleted (`XDEL`); a last `XSETID`
/// puts back the counters the deletions moved.
fn stream<R: Read, F: FnMut(Vec<Command>) -> bool>(
    r: &mut Reader<R>,
    t: u8,
    pending: &[(u64, u64)],
    out: &mut Out<F>,
) -> Step {
    let mut entries = 0u64;
    // Pending IDs not yet passed, and the placeholders written.
    let mut next_pending = pending.iter().copied().peekable();
    let mut placeholders: Vec<Vec<u8>> = Vec::new();
    let mut placeholder = |out: &mut Out<F>, upto: Option<(u64, u64)>| -> Step {
        while let Some(&p) = next_pending.peek() {
            if upto.is_some_and(|u| p > u) {
                break;
            }
            next_pending.next();
            if Some(p) != upto {
                let pid = id(p.0, p.1);
                out.single(b"XADD", &[&pid, b"rcops", b"placeholder"])?;
                placeholders.push(pid);
            }
        }
        Ok(())
    };
    for _ in 0..r.count()? {
        let master: [u8; 16] = r.string()?[..]
            .try_into()
            .map_err(|_| r.corrupt("stream node key is not a 128-bit ID"))?;
        let (base_ms, base_seq) = id_parts(&master);
        let at = r.offset();
        let blob = r.string()?;
        let lp = encodings::listpack(&blob).map_err(|reason| RdbError::Corrupt {
            offset: at,
            reason: format!("stream listpack: {reason}"),
        })?;
        // (entry id, its XADD arguments)
        let mut cmds: Vec<(StreamId, Vec<Vec<u8>>)> = Vec::new();
        crate::parser::stream_node_entries(&lp, base_ms, base_seq, |ms, seq, fields| {
            let mut c = vec![id(ms, seq)];
            for (f, v) in fields {
                c.push(element_bytes(*f));
                c.push(element_bytes(*v));
            }
            cmds.push(((ms, seq), c));
        })
        .map_err(|reason| RdbError::Corrupt {
            offset: at,
            reason: format!("stream listpack: {reason}"),
        })?;
        for (at, c) in cmds {
            placeholder(out, Some(at))?;
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            out.single(b"XADD", &args)?;
            out.elements += 1;
            entries += 1;
        }
    }
    let _length = r.length()?;
    let last = id(r.length()?, r.length()?);
    placeholder(out, None)?;
    if entries == 0 && placeholders.is_empty() {
        // XSETID needs the key: an entry trimmed away at once leaves an empty stream.
        out.single(b"XADD", &[b"MAXLEN", b"0", b"0-1", b"f", b"v"])?;
    }
    let setid = if t >= 19 {
        let _first = (r.length()?, r.length()?);
        let max_deleted = id(r.length()?, r.length()?);
        let added = r.length()?.to_string();
        args(&[
            b"XSETID",
            &out.key,
            &last,
            b"ENTRIESADDED",
            added.as_bytes(),
            b"MAXDELETEDID",
            &max_deleted,
        ])
    } else {
        args(&[b"XSETID", &out.key, &last])
    };
    out.command(setid.clone())?;
    let key = out.key.clone();
    for _ in 0..r.count()? {
        let group = r.string()?;
        let last = id(r.length()?, r.length()?);
        let mut create = args(&[b"XGROUP", b"CREATE", &key, &group, &last]);
        if t >= 19 {
            // Unknown entries-read is -1, saved as an unsigned length.
            let read = (r.length()? as i64).to_string();
            create.extend(args(&[b"ENTRIESREAD", read.as_bytes()]));
        }
        out.command(create)?;
        let mut pel: HashMap<[u8; 16], (u64, u64)> = HashMap::new();
        for _ in 0..r.count()? {
            let raw: [u8; 16] = r.array()?;
            let time = u64::from_le_bytes(r.array()?);
            pel.insert(raw, (time, r.length()?));
        }
        for _ in 0..r.count()? {
            let consumer = r.string()?;
            r.skip(if t >= 21 { 16 } else { 8 })?; // seen (and active) time
            out.command(args(&[
                b"XGROUP",
                b"CREATECONSUMER",
                &key,
                &group,
                &consumer,
            ]))?;
            for _ in 0..r.count()? {
                let raw: [u8; 16] = r.array()?;
                let (time, count) = pel.get(&raw).copied().unwrap_or((0, 1));
                let (ms, seq) = id_parts(&raw);
                let (time, count) = (time.to_string(), count.to_string());
                out.command(args(&[
                    b"XCLAIM",
                    &key,
                    &group,
                    &consumer,
                    b"0",
                    &id(ms, seq),
                    b"TIME",
                    time.as_bytes(),
                    b"RETRYCOUNT",
                    count.as_bytes(),
                    b"FORCE",
                    b"JUSTID",
                ]))?;
            }
        }
    }
    if !placeholders.is_empty() {
        for ids in placeholders.chunks(COMMAND_ELEMENTS) {
            let mut del = args(&[b"XDEL", &out.key]);
            del.extend(ids.iter().cloned());
            out.command(del)?;
        }
        out.command(setid)?;
    }
    Ok(())
}

fn args(parts: &[&[u8]]) -> Command {
    parts.iter().map(|a| a.to_vec()).collect()
}

/// A 128-bit stream ID (milliseconds and sequence, big-endian).
fn id_parts(raw: &[u8; 16]) -> (u64, u64) {
    let mut ms = [0u8; 8];
    let mut seq = [0u8; 8];
    ms.copy_from_slice(&raw[..8]);
    seq.copy_from_slice(&raw[8..]);
    (u64::from_be_bytes(ms), u64::from_be_bytes(seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Item, Parser, Value};
    use std::collections::{BTreeMap, BTreeSet};

    const REDIS: &[u8] = include_bytes!("../testdata/redis-7.0.15-all-types.rdb");
    const VALKEY: &[u8] = include_bytes!("../testdata/valkey-9.1.2-all-types.rdb");

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// What a server would hold after the commands, in the parser's terms.
    fn apply(cmds: &[Command]) -> Value {
        let (mut s, mut list) = (Vec::new(), crate::Strings::default());
        let mut set = BTreeSet::new();
        let mut zset = BTreeMap::new();
        let mut hash: BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)> = BTreeMap::new();
        let mut stream = crate::StreamValue::default();
        let mut kind = "";
        for c in cmds {
            let name = text(&c[0]);
            let rest = &c[2..];
            match name.as_str() {
                "APPEND" => {
                    kind = "string";
                    s.extend_from_slice(&rest[0]);
                }
                "RPUSH" => {
                    kind = "list";
                    rest.iter().for_each(|e| list.push(e));
                }
                "SADD" => {
                    kind = "set";
                    set.extend(rest.iter().cloned());
                }
                "ZADD" => {
                    kind = "zset";
                    for p in rest.chunks(2) {
                        let score: f64 = text(&p[0]).parse().unwrap();
                        zset.insert(p[1].clone(), score);
                    }
                }
                "HSET" => {
                    kind = "hash";
                    for p in rest.chunks(2) {
                        hash.insert(p[0].clone(), (p[1].clone(), None));
                    }
                }
                "HPEXPIREAT" => {
                    let ms = text(&rest[0]).parse().unwrap();
                    hash.get_mut(&rest[3]).unwrap().1 = Some(ms);
                }
                "XADD" => {
                    kind = "stream";
                    if rest[0] != b"MAXLEN" {
                        let fields = rest[1..]
                            .chunks(2)
                            .map(|p| (text(&p[0]), text(&p[1])))
                            .collect();
                        stream.entries.push((text(&rest[0]), fields));
                    }
                }
                "XSETID" => {
                    stream.last_id = text(&rest[0]);
                    stream.length = stream.entries.len() as u64;
                }
                "XGROUP" if c[1] == b"CREATE" => {
                    stream.groups.push(crate::parser::StreamGroup {
                        name: text(&c[3]),
                        last_id: text(&c[4]),
                        ..Default::default()
                    });
                }
                "XGROUP" => {
                    let g = stream.groups.last_mut().unwrap();
                    g.consumers.push(text(&c[4]));
                }
                "XCLAIM" => stream.groups.last_mut().unwrap().pending += 1,
                "XDEL" => stream
                    .entries
                    .retain(|(id, _)| !rest.iter().any(|d| text(d) == *id)),
                other => panic!("unexpected command {other}"),
            }
        }
        match kind {
            "string" => Value::String(s),
            "list" => Value::List(list),
            "set" => Value::Set(set.iter().collect()),
            "zset" => Value::Zset(zset.iter().map(|(m, s)| (m, *s)).collect()),
            "hash" => Value::Hash(hash.iter().map(|(f, (v, e))| (f, v, *e)).collect()),
            _ => Value::Stream(stream),
        }
    }

    /// A value with its collections in a canonical order (sets and hashes are unordered).
    fn canonical(v: Value) -> Value {
        match v {
            Value::Set(s) => {
                let all: BTreeSet<Vec<u8>> = s.iter().map(<[u8]>::to_vec).collect();
                Value::Set(all.iter().collect())
            }
            Value::Zset(z) => {
                let all: BTreeMap<Vec<u8>, f64> = z.iter().map(|(m, s)| (m.to_vec(), s)).collect();
                Value::Zset(all.iter().map(|(m, s)| (m, *s)).collect())
            }
            Value::Hash(h) => {
                let all: BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)> = h
                    .iter()
                    .map(|(f, v, e)| (f.to_vec(), (v.to_vec(), e)))
                    .collect();
                Value::Hash(all.iter().map(|(f, (v, e))| (f, v, *e)).collect())
            }
            Value::Stream(mut s) => {
                for g in &mut s.groups {
                    g.consumers.sort();
                }
                s.groups.sort_by(|a, b| a.name.cmp(&b.name));
                Value::Stream(s)
            }
            v => v,
        }
    }

    #[test]
    fn commands_rebuild_every_type_of_both_fixture_files_in_small_batches() {
        for file in [REDIS, VALKEY] {
            let version = Parser::new(file).unwrap().version();
            let mut seen = BTreeSet::new();
            for item in Parser::new(file).unwrap() {
                let Item::Entry(e) = item.unwrap() else {
                    continue;
                };
                if !rebuildable(e.type_byte, version) {
                    assert!(rebuild(|| &e.raw[..], version, b"k", 64, |_| true).is_err());
                    continue;
                }
                let mut cmds = Vec::new();
                let mut batches = 0;
                let (done, _) = rebuild(
                    || &e.raw[..],
                    version,
                    b"k",
                    64,
                    |b| {
                        assert!(b.iter().all(|c| c[1] == b"k" || c[0] == b"XGROUP"));
                        batches += 1;
                        cmds.extend(b);
                        true
                    },
                )
                .unwrap();
                assert!(done);
                let want = canonical(e.value.clone());
                let got = canonical(apply(&cmds));
                if let (Value::Stream(g), Value::Stream(w)) = (&got, &want) {
                    assert_eq!(g.entries, w.entries, "key {:?}", text(&e.key));
                    assert_eq!(g.last_id, w.last_id);
                    let names = |s: &crate::StreamValue| {
                        s.groups
                            .iter()
                            .map(|g| (g.name.clone(), g.last_id.clone(), g.consumers.clone()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(names(g), names(w));
                } else {
                    assert_eq!(got, want, "key {:?} type {}", text(&e.key), e.type_byte);
                }
                if e.raw.len() > 200 {
                    assert!(batches > 1, "key {:?}: one batch", text(&e.key));
                }
                seen.insert(e.type_byte);
            }
            assert!(seen.len() >= 6, "{seen:?}");
        }
    }

    #[test]
    fn stopping_ends_the_walk_and_says_so() {
        let e = Parser::new(REDIS)
            .unwrap()
            .filter_map(|i| match i.unwrap() {
                Item::Entry(e) if e.raw.len() > 500 => Some(e),
                _ => None,
            })
            .next()
            .unwrap();
        let mut calls = 0;
        let (done, _) = rebuild(
            || &e.raw[..],
            10,
            b"k",
            16,
            |_| {
                calls += 1;
                calls < 2
            },
        )
        .unwrap();
        assert!(!done);
        assert_eq!(calls, 2);
    }

    #[test]
    fn truncated_values_are_errors_not_panics() {
        for file in [REDIS, VALKEY] {
            let version = Parser::new(file).unwrap().version();
            for item in Parser::new(file).unwrap() {
                let Item::Entry(e) = item.unwrap() else {
                    continue;
                };
                for cut in [1, e.raw.len() / 2, e.raw.len().saturating_sub(1)] {
                    if cut < e.raw.len() {
                        let _ = rebuild(|| &e.raw[..cut], version, b"k", 64, |_| true);
                    }
                }
            }
        }
    }

    #[test]
    fn lzf_streams_a_long_run_in_pieces_like_the_whole_decompression() {
        let mut data = vec![0x00, b'a', 0x01, b'b', b'c'];
        for _ in 0..20_000 {
            data.extend_from_slice(&[0xE0, 0xFF, 0x02]); // 264 bytes from 3 back
        }
        let len = 3 + 264 * 20_000;
        let whole = encodings::lzf_decompress(&data, len).unwrap();
        // A string value: type 0, LZF marker, compressed and plain lengths (32-bit), data.
        let mut raw = vec![0u8, 0xC3, 0x80];
        raw.extend_from_slice(&(data.len() as u32).to_be_bytes());
        raw.push(0x80);
        raw.extend_from_slice(&(len as u32).to_be_bytes());
        raw.extend_from_slice(&data);
        let mut got = Vec::new();
        let mut pieces = 0;
        let (done, n) = rebuild(
            || &raw[..],
            10,
            b"k",
            1,
            |b| {
                for c in b {
                    assert_eq!(c[0], b"APPEND");
                    assert!(c[2].len() <= COMMAND_BYTES + 300);
                    got.extend_from_slice(&c[2]);
                    pieces += 1;
                }
                true
            },
        )
        .unwrap();
        assert!(done);
        assert_eq!(n, len as u64);
        assert!(pieces >= 5, "{pieces}");
        assert!(got == whole);
        // Declared longer than it decompresses to, or a reference before the start: errors.
        raw[8] ^= 1;
        assert!(rebuild(|| &raw[..], 10, b"k", 1, |_| true).is_err());
        let bad = [0u8, 0xC3, 2, 4, 0x20, 0x05];
        assert!(rebuild(|| &bad[..], 10, b"k", 1, |_| true).is_err());
    }

    #[test]
    fn scores_parse_back_exactly() {
        for s in [0.1, -2.5e-300, 1e300, 3.0, f64::MAX, f64::MIN_POSITIVE] {
            assert_eq!(score(s).parse::<f64>().unwrap(), s);
        }
        assert_eq!(score(f64::INFINITY), "inf");
        assert_eq!(score(f64::NEG_INFINITY), "-inf");
    }
}
