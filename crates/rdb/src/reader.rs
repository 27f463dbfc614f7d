//! The byte source: counts the offset, keeps the running CRC64 of everything read, and can
//! capture the bytes of one value as they pass (the raw value for DUMP payloads).

use std::io::Read;

use crate::{RdbError, CRC64};

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
    offset: u64,
    crc: crc::Digest<'static, u64>,
    capture: Option<Vec<u8>>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            offset: 0,
            crc: CRC64.digest(),
            capture: None,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// CRC64 of everything read so far.
    pub fn crc(&self) -> u64 {
        self.crc.clone().finalize()
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> RdbError {
        RdbError::Corrupt {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Starts capturing the bytes read, seeded with `first`.
    pub fn start_capture(&mut self, first: &[u8]) {
        self.capture = Some(first.to_vec());
    }

    pub fn take_capture(&mut self) -> Vec<u8> {
        self.capture.take().unwrap_or_default()
    }

    fn record(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        self.crc.update(bytes);
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(bytes);
        }
    }

    /// Exactly `buf.len()` bytes, or `Truncated`.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(RdbError::Truncated {
                        offset: self.offset + got as u64,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RdbError::Io {
                        offset: self.offset + got as u64,
                        source: e,
                    })
                }
            }
        }
        self.record(buf);
        Ok(())
    }

    /// Bytes read without entering the CRC or the capture (the trailer itself).
    pub fn fill_unhashed(&mut self, buf: &mut [u8]) -> Result<usize, RdbError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RdbError::Io {
                        offset: self.offset,
                        source: e,
                    })
                }
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    pub fn u8(&mut self) -> Result<u8, RdbError> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

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
        let mut out = Vec::with_capacity(n.min(64 * 1024) as usize);
        let start = self.offset;
        let mut chunk = [0u8; 16 * 1024];
        while (out.len() as u64) < n {
            let want = ((n - out.len() as u64) as usize).min(chunk.len());
            match self.inner.read(&mut chunk[..want]) {
                Ok(0) => {
                    return Err(RdbError::Truncated {
                        offset: start + out.len() as u64,
                    })
                }
                Ok(k) => out.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RdbError::Io {
                        offset: start + out.len() as u64,
                        source: e,
                    })
                }
            }
        }
        self.record(&out);
        Ok(out)
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
        match self.length_or_special()? {
            Length::Len(n) => self.bytes(n),
            Length::Special(0) => Ok((self.u8()? as i8).to_string().into_bytes()),
            Length::Special(1) => Ok(i16::from_le_bytes(self.array()?).to_string().into_bytes()),
            Length::Special(2) => Ok(i32::from_le_bytes(self.array()?).to_string().into_bytes()),
            Length::Special(3) => {
                let clen = self.length()?;
                let len = self.length()?;
                if len > MAX_STRING {
                    return Err(self.corrupt(format!("LZF length {len} exceeds 4 GiB")));
                }
                let at = self.offset;
                let data = self.bytes(clen)?;
                crate::encodings::lzf_decompress(&data, len as usize).map_err(|reason| {
                    RdbError::Corrupt {
                        offset: at,
                        reason: format!("LZF: {reason}"),
                    }
                })
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
