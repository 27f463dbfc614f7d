//! The byte source: counts the offset, keeps the running CRC64 of everything read, and can
//! capture the bytes of one value as they pass (the raw value for DUMP payloads).

use std::io::Read;

use crate::RdbError;

/// Largest single string accepted (redis' own `proto-max-bulk-len` ceiling).
pub const MAX_STRING: u64 = 4 << 30;

/// A length, or one of the special string encodings (`11xxxxxx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Len(u64),
    /// 0 int8, 1 int16, 2 int32, 3 LZF.
    Special(u8),
}

pub struct Reader<R: Read> {
    inner: R,
    /// Our own buffer: most reads are a byte or a short string, and going to `inner` (often a
    /// `dyn Read` over a zstd decoder) for each would dominate the parse.
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    /// `buf[..hashed]` is already in the CRC (and the capture). Consumed bytes are hashed in
    /// bulk when the buffer is refilled or the CRC/capture is asked for: one CRC call per
    /// buffer instead of one per length byte.
    hashed: usize,
    crc: crc_fast::Digest,
    capture: Option<Capture>,
    /// Captures that grow past this many bytes move to a file from `spill`.
    spill: Option<(usize, SpillFile)>,
}

/// Opens an anonymous file for a captured value too big to keep in memory (see
/// [`crate::Parser::spill_raw_above`]); the reader only writes to what it is given.
pub type SpillFile = std::sync::Arc<dyn Fn() -> std::io::Result<std::fs::File> + Send + Sync>;

/// A value's raw bytes written to a file instead of memory: the whole capture, from offset 0.
#[derive(Debug, Clone)]
pub struct Spilled {
    pub file: std::sync::Arc<std::fs::File>,
    pub len: u64,
}

impl PartialEq for Spilled {
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len && std::sync::Arc::ptr_eq(&self.file, &o.file)
    }
}

impl Spilled {
    /// A reader over the bytes from the start (positioned reads: several may share a file).
    pub fn reader(&self) -> SpilledReader {
        SpilledReader {
            file: self.file.clone(),
            at: 0,
            len: self.len,
        }
    }
}

/// See [`Spilled::reader`].
pub struct SpilledReader {
    file: std::sync::Arc<std::fs::File>,
    at: u64,
    len: u64,
}

impl Read for SpilledReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = usize::try_from(self.len - self.at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

enum Capture {
    Mem(Vec<u8>),
    File {
        out: std::io::BufWriter<std::fs::File>,
        len: u64,
    },
    /// The spill file could not be opened or written.
    Failed(std::io::Error),
}

/// What a capture holds at its end.
pub enum Captured {
    Mem(Vec<u8>),
    File(Spilled),
}

impl Reader<&'static [u8]> {
    /// A reader over a copy of `bytes` (its whole buffer, nothing more to read), whose first
    /// byte is at file offset `base`: how a value kept as raw bytes is decoded later.
    pub fn over_bytes(bytes: &[u8], base: u64) -> Self {
        let mut r = Self::with_buffer(&[], bytes.into(), bytes.len());
        r.base = base;
        r
    }
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_buffer(inner, vec![0u8; 64 * 1024].into_boxed_slice(), 0)
    }

    fn with_buffer(inner: R, buf: Box<[u8]>, end: usize) -> Self {
        Reader {
            inner,
            buf,
            pos: 0,
            end,
            base: 0,
            hashed: 0,
            crc: crate::crc64_digest(),
            capture: None,
            spill: None,
        }
    }

    /// Captures beyond `limit` bytes go to a file opened by `open`.
    pub fn spill_above(&mut self, limit: usize, open: SpillFile) {
        self.spill = Some((limit, open));
    }

    #[inline]
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Adds the consumed, not yet hashed bytes to the CRC and the capture.
    fn flush(&mut self) {
        let s = &self.buf[self.hashed..self.pos];
        self.crc.update(s);
        match &mut self.capture {
            None | Some(Capture::Failed(_)) => {}
            Some(Capture::Mem(c)) => match &self.spill {
                Some((limit, open)) if c.len() + s.len() > *limit => {
                    // Too big for memory: what was captured so far, and all that follows, go
                    // to a file.
                    use std::io::Write;
                    let moved = open().and_then(|f| {
                        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
                        out.write_all(c)?;
                        out.write_all(s)?;
                        Ok(out)
                    });
                    let len = (c.len() + s.len()) as u64;
                    self.capture = Some(match moved {
                        Ok(out) => Capture::File { out, len },
                        Err(e) => Capture::Failed(e),
                    });
                }
                _ => c.extend_from_slice(s),
            },
            Some(Capture::File { out, len }) => {
                use std::io::Write;
                *len += s.len() as u64;
                if let Err(e) = out.write_all(s) {
                    self.capture = Some(Capture::Failed(e));
                }
            }
        }
        self.hashed = self.pos;
    }

    /// Refills the (fully consumed) buffer; `false` at the end of the input.
    fn refill(&mut self) -> Result<bool, RdbError> {
        debug_assert_eq!(self.pos, self.end);
        self.flush();
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => {
                    self.base += self.end as u64;
                    self.pos = 0;
                    self.hashed = 0;
                    self.end = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RdbError::Io {
                        offset: self.offset(),
                        source: e,
                    })
                }
            }
        }
    }

    /// The next buffered bytes (at least one), refilling when empty; `Truncated` at the end.
    #[inline]
    fn available(&mut self) -> Result<&[u8], RdbError> {
        if self.pos == self.end && !self.refill()? {
            return Err(RdbError::Truncated {
                offset: self.offset(),
            });
        }
        Ok(&self.buf[self.pos..self.end])
    }

    /// CRC64 of everything read so far.
    pub fn crc(&mut self) -> u64 {
        self.flush();
        self.crc.finalize()
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> RdbError {
        RdbError::Corrupt {
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    /// Starts capturing the bytes read, seeded with `first`.
    pub fn start_capture(&mut self, first: &[u8]) {
        self.flush();
        self.capture = Some(Capture::Mem(first.to_vec()));
    }

    /// The captured bytes, when they stayed in memory (without [`Self::spill_above`] they do).
    pub fn take_capture(&mut self) -> Vec<u8> {
        match self.take_captured() {
            Ok(Captured::Mem(v)) => v,
            _ => Vec::new(),
        }
    }

    /// The captured bytes, in memory or in their spill file (flushed, whole).
    pub fn take_captured(&mut self) -> Result<Captured, RdbError> {
        self.flush();
        let at = self.offset();
        let io = |source| RdbError::Io { offset: at, source };
        match self.capture.take() {
            None => Ok(Captured::Mem(Vec::new())),
            Some(Capture::Mem(v)) => Ok(Captured::Mem(v)),
            Some(Capture::Failed(e)) => Err(io(e)),
            Some(Capture::File { out, len }) => {
                let file = out.into_inner().map_err(|e| io(e.into_error()))?;
                Ok(Captured::File(Spilled {
                    file: std::sync::Arc::new(file),
                    len,
                }))
            }
        }
    }

    /// The bytes read ahead but not consumed, and the underlying reader: what follows an RDB
    /// preamble in an AOF.
    pub fn into_rest(self) -> (Vec<u8>, R) {
        (self.buf[self.pos..self.end].to_vec(), self.inner)
    }

    /// Exactly `buf.len()` bytes, or `Truncated`.
    #[inline]
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        // Fast path: the bytes are already buffered.
        if self.end - self.pos >= buf.len() {
            buf.copy_from_slice(&self.buf[self.pos..self.pos + buf.len()]);
            self.pos += buf.len();
            return Ok(());
        }
        let mut got = 0;
        while got < buf.len() {
            let a = self.available()?;
            let k = a.len().min(buf.len() - got);
            buf[got..got + k].copy_from_slice(&a[..k]);
            self.pos += k;
            got += k;
        }
        Ok(())
    }

    /// Up to `buf.len()` bytes that do not enter the CRC or the capture (the trailer itself);
    /// fewer only at the end of the input.
    pub fn fill_unhashed(&mut self, buf: &mut [u8]) -> Result<usize, RdbError> {
        self.flush();
        let mut got = 0;
        while got < buf.len() {
            if self.pos == self.end && !self.refill()? {
                break;
            }
            let k = (self.end - self.pos).min(buf.len() - got);
            buf[got..got + k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
            self.pos += k;
            self.hashed = self.pos;
            got += k;
        }
        Ok(got)
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, RdbError> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            self.pos += 1;
            return Ok(b);
        }
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    /// `n` bytes into a vector that grows only as bytes arrive: a corrupt length cannot make
    /// it allocate more than the input holds.
    pub fn bytes(&mut self, n: u64) -> Result<Vec<u8>, RdbError> {
        if n > MAX_STRING {
            return Err(self.corrupt(format!("string length {n} exceeds 4 GiB")));
        }
        let n = n as usize;
        if self.end - self.pos >= n {
            let v = self.buf[self.pos..self.pos + n].to_vec();
            self.pos += n;
            return Ok(v);
        }
        // Up to 1 MiB is reserved at once; beyond that the vector grows with the bytes.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        while out.len() < n {
            let a = self.available()?;
            let k = a.len().min(n - out.len());
            out.extend_from_slice(&a[..k]);
            self.pos += k;
        }
        Ok(out)
    }

    /// [`Self::bytes`], appended to `out`.
    fn bytes_into(&mut self, n: u64, out: &mut Vec<u8>) -> Result<(), RdbError> {
        if n > MAX_STRING {
            return Err(self.corrupt(format!("string length {n} exceeds 4 GiB")));
        }
        let n = n as usize;
        if self.end - self.pos >= n {
            out.extend_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(());
        }
        out.reserve(n.min(1 << 20));
        let mut left = n;
        while left > 0 {
            let a = self.available()?;
            let k = a.len().min(left);
            out.extend_from_slice(&a[..k]);
            self.pos += k;
            left -= k;
        }
        Ok(())
    }

    /// [`Self::string`], appended to `out` (a collection's elements share one buffer).
    pub fn string_into(&mut self, out: &mut Vec<u8>) -> Result<(), RdbError> {
        let int = |out: &mut Vec<u8>, i: i64| {
            out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        };
        match self.length_or_special()? {
            Length::Len(n) => return self.bytes_into(n, out),
            Length::Special(0) => int(out, i64::from(self.u8()? as i8)),
            Length::Special(1) => int(out, i64::from(i16::from_le_bytes(self.array()?))),
            Length::Special(2) => int(out, i64::from(i32::from_le_bytes(self.array()?))),
            Length::Special(3) => {
                let clen = self.length()?;
                let len = self.length()?;
                if len > MAX_STRING {
                    return Err(self.corrupt(format!("LZF length {len} exceeds 4 GiB")));
                }
                let at = self.offset();
                let data = self.bytes(clen)?;
                let plain =
                    crate::encodings::lzf_decompress(&data, len as usize).map_err(|reason| {
                        RdbError::Corrupt {
                            offset: at,
                            reason: format!("LZF: {reason}"),
                        }
                    })?;
                if out.is_empty() {
                    *out = plain;
                } else {
                    out.extend_from_slice(&plain);
                }
            }
            Length::Special(k) => return Err(self.corrupt(format!("unknown string encoding {k}"))),
        }
        Ok(())
    }

    /// RDB length encoding: `00` 6 bits, `01` 14 bits, `0x80` 32-bit BE, `0x81` 64-bit BE,
    /// `11` a special string encoding.
    pub fn length_or_special(&mut self) -> Result<Length, RdbError> {
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => Length::Len(u64::from(b & 0x3f)),
            1 => Length::Len((u64::from(b & 0x3f) << 8) | u64::from(self.u8()?)),
            2 => match b {
                0x80 => Length::Len(u64::from(u32::from_be_bytes(self.array()?))),
                0x81 => Length::Len(u64::from_be_bytes(self.array()?)),
                _ => return Err(self.corrupt(format!("unknown length encoding 0x{b:02x}"))),
            },
            _ => Length::Special(b & 0x3f),
        })
    }

    pub fn length(&mut self) -> Result<u64, RdbError> {
        match self.length_or_special()? {
            Length::Len(n) => Ok(n),
            Length::Special(k) => Err(self.corrupt(format!("expected a length, got encoding {k}"))),
        }
    }

    /// A count of items: like `length`, but also bounded so a corrupt count fails on the
    /// missing bytes rather than on a huge loop before them.
    pub fn count(&mut self) -> Result<u64, RdbError> {
        let n = self.length()?;
        if n > MAX_STRING {
            return Err(self.corrupt(format!("count {n} is implausible")));
        }
        Ok(n)
    }

    /// A string: raw, an integer written as text, or LZF-compressed.
    pub fn string(&mut self) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::new();
        self.string_into(&mut out)?;
        Ok(out)
    }

    /// Consumes `n` bytes without keeping them (they still count for the CRC and capture),
    /// straight from the internal buffer.
    #[inline]
    pub fn skip(&mut self, mut n: u64) -> Result<(), RdbError> {
        while n > 0 {
            let k = (self.available()?.len() as u64).min(n);
            self.pos += k as usize;
            n -= k;
        }
        Ok(())
    }

    /// Consumes a string in any encoding without decoding it (LZF stays compressed).
    pub fn skip_string(&mut self) -> Result<(), RdbError> {
        match self.length_or_special()? {
            Length::Len(n) => self.skip(n),
            Length::Special(0) => self.skip(1),
            Length::Special(1) => self.skip(2),
            Length::Special(2) => self.skip(4),
            Length::Special(3) => {
                let clen = self.length()?;
                let _len = self.length()?;
                self.skip(clen)
            }
            Length::Special(k) => Err(self.corrupt(format!("unknown string encoding {k}"))),
        }
    }

    /// A double written as text with a one-byte length (253 NaN, 254 +inf, 255 -inf).
    pub fn text_double(&mut self) -> Result<f64, RdbError> {
        let n = self.u8()?;
        Ok(match n {
            253 => f64::NAN,
            254 => f64::INFINITY,
            255 => f64::NEG_INFINITY,
            _ => {
                let b = self.bytes(u64::from(n))?;
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.corrupt("unparsable double"))?
            }
        })
    }
}
