//! Compact encodings found inside RDB strings: LZF, ziplist, listpack, intset, zipmap. Each
//! decoder takes the whole blob and returns its elements or a reason (the caller adds the
//! offset). Every index is checked: hostile blobs give errors, not panics.

/// One element of a ziplist or listpack.
pub fn element_bytes(e: Element) -> Vec<u8> {
    match e {
        Element::Bytes(b) => b.to_vec(),
        Element::Int(i) => int_bytes(i),
    }
}

/// Appends an element to a collection's strings (integers as their decimal text).
pub fn push_element(out: &mut crate::strings::Strings, e: &Element) {
    match e {
        Element::Bytes(b) => out.push(b),
        Element::Int(i) => out.push_int(*i),
    }
}

/// An integer's decimal text, as Redis returns it (`itoa`: no `fmt` machinery per element).
pub fn int_bytes(i: impl itoa::Integer) -> Vec<u8> {
    itoa::Buffer::new().format(i).as_bytes().to_vec()
}

/// Borrowed from the blob it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

impl Element<'_> {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Element::Int(i) => Some(*i),
            Element::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Element::Int(i) => Some(*i as f64),
            Element::Bytes(b) => {
                let s = std::str::from_utf8(b).ok()?;
                match s {
                    "inf" | "+inf" => Some(f64::INFINITY),
                    "-inf" => Some(f64::NEG_INFINITY),
                    _ => s.parse().ok(),
                }
            }
        }
    }
}

fn get(b: &[u8], at: usize, n: usize) -> Result<&[u8], String> {
    b.get(at..at.checked_add(n).ok_or("length overflow")?)
        .ok_or_else(|| format!("element at {at} runs past the end ({n} bytes wanted)"))
}

/// LZF decompression (liblzf's format, as redis writes it) into exactly `out_len` bytes.
pub fn lzf_decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len.min(input.len().saturating_mul(8)).max(16));
    let mut i = 0;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            let n = ctrl + 1;
            let lit = input.get(i..i + n).ok_or("literal runs past the input")?;
            if out.len() + n > out_len {
                return Err("output longer than declared".into());
            }
            out.extend_from_slice(lit);
            i += n;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*input.get(i).ok_or("truncated back reference")?);
                i += 1;
            }
            len += 2;
            let low = usize::from(*input.get(i).ok_or("truncated back reference")?);
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + low + 1;
            if back > out.len() {
                return Err("back reference before the start".into());
            }
            if out.len() + len > out_len {
                return Err("output longer than declared".into());
            }
            let start = out.len() - back;
            // A reference that overlaps its own output repeats the `back` bytes before it:
            // copy what exists, which doubles each round.
            let mut left = len;
            while left > 0 {
                let n = left.min(out.len() - start);
                out.extend_from_within(start..start + n);
                left -= n;
            }
        }
    }
    if out.len() != out_len {
        return Err(format!(
            "decompressed to {} bytes, expected {out_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Ziplist: `zlbytes zltail zllen entries… 0xff`.
pub fn ziplist(b: &[u8]) -> Result<Vec<Element<'_>>, String> {
    if b.len() < 11 {
        return Err("ziplist shorter than its header".into());
    }
    let mut i = 10;
    // The header's count (65535: unknown) sizes the vector; each entry takes ≥ 2 bytes.
    let count = usize::from(u16::from_le_bytes([b[8], b[9]]));
    let mut out = Vec::with_capacity(count.min(b.len() / 2));
    loop {
        let first = *b.get(i).ok_or("ziplist without end marker")?;
        if first == 0xff {
            return Ok(out);
        }
        // prevlen: 1 byte, or 0xfe + 4 bytes.
        i += if first == 0xfe { 5 } else { 1 };
        let enc = *b.get(i).ok_or("ziplist entry without encoding")?;
        let e = match enc >> 6 {
            0 => {
                let n = usize::from(enc & 0x3f);
                i += 1;
                let s = get(b, i, n)?;
                i += n;
                Element::Bytes(s)
            }
            1 => {
                let n = (usize::from(enc & 0x3f) << 8)
                    | usize::from(*get(b, i + 1, 1)?.first().unwrap_or(&0));
                i += 2;
                let s = get(b, i, n)?;
                i += n;
                Element::Bytes(s)
            }
            2 => {
                let l = get(b, i + 1, 4)?;
                let n = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                i += 5;
                let s = get(b, i, n)?;
                i += n;
                Element::Bytes(s)
            }
            _ => {
                i += 1;
                let (v, n) = match enc {
                    0xc0 => {
                        let d = get(b, i, 2)?;
                        (i64::from(i16::from_le_bytes([d[0], d[1]])), 2)
                    }
                    0xd0 => {
                        let d = get(b, i, 4)?;
                        (i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]])), 4)
                    }
                    0xe0 => {
                        let d = get(b, i, 8)?;
                        let mut a = [0u8; 8];
                        a.copy_from_slice(d);
                        (i64::from_le_bytes(a), 8)
                    }
                    0xf0 => {
                        let d = get(b, i, 3)?;
                        (i64::from(i32::from_le_bytes([0, d[0], d[1], d[2]]) >> 8), 3)
                    }
                    0xfe => (i64::from(get(b, i, 1)?[0] as i8), 1),
                    0xf1..=0xfd => (i64::from(enc & 0x0f) - 1, 0),
                    _ => return Err(format!("unknown ziplist encoding 0x{enc:02x}")),
                };
                i += n;
                Element::Int(v)
            }
        };
        out.push(e);
    }
}

/// Listpack: `total-bytes(4) count(2) entries… 0xff`, each entry followed by its back-length.
pub fn listpack(b: &[u8]) -> Result<Vec<Element<'_>>, String> {
    if b.len() < 7 {
        return Err("listpack shorter than its header".into());
    }
    let mut i = 6;
    // The header's count (65535: unknown) sizes the vector; each entry takes ≥ 2 bytes.
    let count = usize::from(u16::from_le_bytes([b[4], b[5]]));
    let mut out = Vec::with_capacity(count.min(b.len() / 2));
    loop {
        let enc = *b.get(i).ok_or("listpack without end marker")?;
        if enc == 0xff {
            return Ok(out);
        }
        let start = i;
        let int = |d: &[u8]| -> i64 {
            let mut a = [0u8; 8];
            a[..d.len()].copy_from_slice(d);
            let v = i64::from_le_bytes(a);
            let bits = d.len() * 8;
            (v << (64 - bits)) >> (64 - bits)
        };
        let e = if enc & 0x80 == 0 {
            i += 1;
            Element::Int(i64::from(enc & 0x7f))
        } else if enc & 0xc0 == 0x80 {
            let n = usize::from(enc & 0x3f);
            let s = get(b, i + 1, n)?;
            i += 1 + n;
            Element::Bytes(s)
        } else if enc & 0xe0 == 0xc0 {
            let lo = get(b, i + 1, 1)?[0];
            let v = (i64::from(enc & 0x1f) << 8) | i64::from(lo);
            i += 2;
            Element::Int(if v >= 1 << 12 { v - (1 << 13) } else { v })
        } else if enc & 0xf0 == 0xe0 {
            let lo = get(b, i + 1, 1)?[0];
            let n = (usize::from(enc & 0x0f) << 8) | usize::from(lo);
            let s = get(b, i + 2, n)?;
            i += 2 + n;
            Element::Bytes(s)
        } else {
            match enc {
                0xf0 => {
                    let l = get(b, i + 1, 4)?;
                    let n = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                    let s = get(b, i + 5, n)?;
                    i += 5 + n;
                    Element::Bytes(s)
                }
                0xf1..=0xf4 => {
                    let n = [2, 3, 4, 8][usize::from(enc - 0xf1)];
                    let v = int(get(b, i + 1, n)?);
                    i += 1 + n;
                    Element::Int(v)
                }
                _ => return Err(format!("unknown listpack encoding 0x{enc:02x} at {i}")),
            }
        };
        // Skip the back-length: 1–5 bytes for the entry's size so far.
        let size = i - start;
        i += match size {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            2_097_152..=268_435_455 => 4,
            _ => 5,
        };
        out.push(e);
    }
}

/// Intset: `encoding(4) length(4) integers…` (little-endian, 2/4/8 bytes each).
pub fn intset(b: &[u8]) -> Result<Vec<i64>, String> {
    let h = get(b, 0, 8)?;
    let width = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if ![2, 4, 8].contains(&width) {
        return Err(format!("intset with element width {width}"));
    }
    let body = get(
        b,
        8,
        len.checked_mul(width).ok_or("intset length overflow")?,
    )?;
    Ok(body
        .chunks(width)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..width].copy_from_slice(c);
            let v = i64::from_le_bytes(a);
            let bits = width * 8;
            (v << (64 - bits)) >> (64 - bits)
        })
        .collect())
}

/// Zipmap (hashes before Redis 2.6): `zmlen (len key len free value)… 0xff`.
/// Field/value pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub fn zipmap(b: &[u8]) -> Result<Pairs, String> {
    let mut i = 1;
    let mut out = Vec::new();
    let len_at = |i: &mut usize| -> Result<Option<usize>, String> {
        let f = *b.get(*i).ok_or("zipmap without end marker")?;
        match f {
            0xff => Ok(None),
            0xfe => {
                let l = get(b, *i + 1, 4)?;
                *i += 5;
                Ok(Some(u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize))
            }
            n => {
                *i += 1;
                Ok(Some(usize::from(n)))
            }
        }
    };
    loop {
        let Some(klen) = len_at(&mut i)? else {
            return Ok(out);
        };
        let key = get(b, i, klen)?;
        i += klen;
        let vlen = len_at(&mut i)?.ok_or("zipmap key without value")?;
        let free = usize::from(*b.get(i).ok_or("zipmap truncated")?);
        i += 1;
        let val = get(b, i, vlen)?;
        i += vlen + free;
        out.push((key.to_vec(), val.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lzf_literals_and_back_references() {
        // "aaaaaaaaaa": literal 'a', then a back reference of length 9 at distance 1.
        let data = [0x00, b'a', 0xe0, 0x00, 0x00];
        assert_eq!(lzf_decompress(&data, 10).unwrap(), b"aaaaaaaaaa");
        assert!(lzf_decompress(&data, 5).is_err());
        assert!(lzf_decompress(&[0x20, 0x05], 4).is_err());
        assert!(lzf_decompress(&[0x05, b'a'], 6).is_err());
        // "abcabcabcX": literal "abc", a back reference of length 6 at distance 3 (it
        // overlaps its own output), literal "X"; and one that does not overlap.
        let data = [0x02, b'a', b'b', b'c', 0x80, 0x02, 0x00, b'X'];
        assert_eq!(lzf_decompress(&data, 10).unwrap(), b"abcabcabcX");
        let data = [0x03, b'w', b'x', b'y', b'z', 0x40, 0x03];
        assert_eq!(lzf_decompress(&data, 8).unwrap(), b"wxyzwxyz");
    }

    #[test]
    fn listpack_elements() {
        // 3 elements: 7-bit int 5, 6-bit string "ab", 13-bit int -1; back-lengths after each.
        let mut lp = vec![0, 0, 0, 0, 3, 0];
        lp.extend_from_slice(&[0x05, 0x01]);
        lp.extend_from_slice(&[0x82, b'a', b'b', 0x03]);
        lp.extend_from_slice(&[0xdf, 0xff, 0x02]);
        lp.push(0xff);
        assert_eq!(
            listpack(&lp).unwrap(),
            vec![Element::Int(5), Element::Bytes(b"ab"), Element::Int(-1)]
        );
        lp.truncate(9);
        assert!(listpack(&lp).is_err());
    }

    #[test]
    fn ziplist_elements() {
        let mut zl = vec![0u8; 10];
        zl.extend_from_slice(&[0x00, 0x02, b'h', b'i']); // prevlen 0, 2-byte string
        zl.extend_from_slice(&[0x04, 0xf3]); // immediate 2
        zl.extend_from_slice(&[0x02, 0xfe, 0x9c]); // int8 -100
        zl.push(0xff);
        assert_eq!(
            ziplist(&zl).unwrap(),
            vec![Element::Bytes(b"hi"), Element::Int(2), Element::Int(-100)]
        );
        assert!(ziplist(&zl[..12]).is_err());
    }

    #[test]
    fn intset_widths() {
        let mut b = vec![2, 0, 0, 0, 2, 0, 0, 0];
        b.extend_from_slice(&(-3i16).to_le_bytes());
        b.extend_from_slice(&7i16.to_le_bytes());
        assert_eq!(intset(&b).unwrap(), vec![-3, 7]);
        assert!(intset(&b[..9]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), n in 0usize..2000) {
            let _ = lzf_decompress(&data, n);
            let _ = ziplist(&data);
            let _ = listpack(&data);
            let _ = intset(&data);
            let _ = zipmap(&data);
        }
    }
}
