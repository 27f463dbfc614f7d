//! One [`Entry`] as a line of JSON, written straight into a byte buffer: the same bytes
//! `serde_json` writes for the `Serialize` derive, without serde's per-field machinery and
//! its separate UTF-8 pass, which were a third of `rdb dump`'s time. Streams, module values
//! and undecoded values (rare, and not worth a second encoder) go through serde_json itself.

use std::io::Write;

use crate::parser::{Entry, Value};

/// `"` + 6-byte escapes: what serde_json writes for each byte below 0x80 (0 = as is).
const fn escapes() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
}
const ESCAPE: [u8; 128] = escapes();
const HEX: &[u8; 16] = b"0123456789abcdef";

fn escape(out: &mut Vec<u8>, b: u8) {
    match ESCAPE[b as usize] {
        b'u' => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]),
        c => out.extend_from_slice(&[b'\\', c]),
    }
}

/// Valid UTF-8 as a JSON string body: runs without escapes copied whole.
fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b < 0x80 && ESCAPE[b as usize] != 0 {
            out.extend_from_slice(&s[start..i]);
            escape(out, b);
            start = i + 1;
        }
    }
    out.extend_from_slice(&s[start..]);
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any byte of `w` is below `n` (`n` ≤ 0x80): exact as a yes/no.
const fn any_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS != 0
}

/// Whether 8 bytes need neither escaping nor UTF-8 checks: ASCII, no control, `"` or `\`.
fn plain8(w: u64) -> bool {
    w & HIGHS == 0
        && !any_below(w, 0x20)
        && !any_below(w ^ (ONES * b'"' as u64), 1)
        && !any_below(w ^ (ONES * b'\\' as u64), 1)
}

/// Bytes as a JSON string: valid UTF-8 as is, each invalid sequence as U+FFFD (what
/// `String::from_utf8_lossy` does).
pub fn string(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    // Most values are ASCII: step over plain runs 8 bytes at a time, escape in place, and
    // copy whole; UTF-8 is checked only from the first non-ASCII byte on.
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        if let Some(w) = b.get(i..i + 8) {
            if plain8(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]))) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        if c >= 0x80 {
            out.extend_from_slice(&b[start..i]);
            for chunk in b[i..].utf8_chunks() {
                escaped(out, chunk.valid().as_bytes());
                if !chunk.invalid().is_empty() {
                    out.extend_from_slice("\u{FFFD}".as_bytes());
                }
            }
            out.push(b'"');
            return;
        }
        if ESCAPE[c as usize] != 0 {
            out.extend_from_slice(&b[start..i]);
            escape(out, c);
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// A zset score as serde's `collect_str` writes it (Display: `1.5`, `3`, `inf`, never an
/// exponent); integers without going through `fmt`.
fn score(out: &mut Vec<u8>, x: f64) {
    out.push(b'"');
    if x.fract() == 0.0 && x.abs() < 9.0e15 && !(x == 0.0 && x.is_sign_negative()) {
        int(out, x as i64);
    } else {
        // Not ryu: where two shortest forms are equally close it can pick the other one
        // (92442471346157.62 for Display's …63), and the dump must not change.
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{x}");
    }
    out.push(b'"');
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn number(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// `[a,b,…]`, each item written by `each`.
fn array<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, each: impl Fn(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (i, x) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, x);
    }
    out.push(b']');
}

/// Writes a value's body into the line.
type Body<'a> = &'a dyn Fn(&mut Vec<u8>);

fn value(out: &mut Vec<u8>, v: &Value) {
    let (tag, body): (&[u8], Body) = match v {
        Value::String(s) => (b"string", &|o| string(o, s)),
        Value::List(items) => (b"list", &|o| array(o, items.iter(), string)),
        Value::Set(items) => (b"set", &|o| array(o, items.iter(), string)),
        Value::Zset(members) => (b"zset", &|o| {
            array(o, members.iter(), |o, (m, sc)| {
                o.push(b'[');
                string(o, m);
                o.push(b',');
                score(o, sc);
                o.push(b']');
            })
        }),
        Value::Hash(fields) => (b"hash", &|o| {
            array(o, fields.iter(), |o, (f, x, expiry)| {
                o.push(b'[');
                string(o, f);
                o.push(b',');
                string(o, x);
                o.push(b',');
                number(o, expiry);
                o.push(b']');
            })
        }),
        _ => {
            // serde_json only fails on a writer error or a map with non-string keys.
            let _ = serde_json::to_writer(&mut *out, v);
            return;
        }
    };
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(tag);
    out.extend_from_slice(b"\",\"value\":");
    body(out);
    out.push(b'}');
}

/// Appends `e` as one JSON object and a newline.
pub fn entry_line(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(b"{\"db\":");
    int(out, e.db);
    out.extend_from_slice(b",\"key\":");
    string(out, &e.key);
    out.extend_from_slice(b",\"expire_ms\":");
    number(out, e.expire_ms);
    out.extend_from_slice(b",\"idle\":");
    number(out, e.idle);
    out.extend_from_slice(b",\"freq\":");
    number(out, e.freq);
    out.extend_from_slice(b",\"type_byte\":");
    int(out, e.type_byte);
    out.extend_from_slice(b",\"value\":");
    value(out, &e.value);
    out.extend_from_slice(b",\"offset\":");
    int(out, e.offset);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{StreamGroup, StreamValue};
    use crate::strings::{Fields, Members, Strings};

    fn serde_line(e: &Entry) -> String {
        serde_json::to_string(e).expect("serializable") + "\n"
    }

    fn ours(e: &Entry) -> String {
        let mut out = Vec::new();
        entry_line(&mut out, e);
        String::from_utf8(out).expect("valid UTF-8")
    }

    fn entry(key: &[u8], value: Value) -> Entry {
        Entry {
            db: 3,
            key: key.to_vec(),
            expire_ms: Some(1_700_000_000_123),
            idle: None,
            freq: Some(7),
            type_byte: 4,
            value,
            raw: Vec::new(),
            raw_len: 0,
            spilled: None,
            offset: 99,
            value_offset: 120,
        }
    }

    #[test]
    fn same_bytes_as_serde_for_every_value_kind() {
        // Every escape class, multi-byte UTF-8, invalid sequences, empty strings.
        let tricky: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain".to_vec(),
            b"q\"b\\s/\x08\x0c\n\r\t\x00\x01\x1f\x7f end".to_vec(),
            "ünï \u{1F600} 中".as_bytes().to_vec(),
            b"bad \xff\xfe mid \xc3 end \xe2\x82".to_vec(),
        ];
        let values = vec![
            Value::String(tricky[2].clone()),
            Value::String(tricky[4].clone()),
            Value::List(tricky.iter().collect()),
            Value::Set(Strings::default()),
            Value::Zset(Members::from_iter(vec![
                (tricky[3].clone(), 1.5),
                (tricky[4].clone(), -0.0),
                (b"i".to_vec(), f64::INFINITY),
                (b"n".to_vec(), f64::NEG_INFINITY),
                (b"big".to_vec(), 1e300),
                (b"tiny".to_vec(), 3.0e-12),
                (b"int".to_vec(), 42.0),
            ])),
            Value::Hash(Fields::from_iter(vec![
                (tricky[0].clone(), tricky[2].clone(), None),
                (tricky[4].clone(), tricky[3].clone(), Some(-1)),
                (b"f".to_vec(), b"v".to_vec(), Some(1_800_000_000_000)),
            ])),
            Value::Stream(StreamValue {
                entries: vec![("1-1".into(), vec![("f\n".into(), "v\"".into())])],
                length: 1,
                last_id: "1-1".into(),
                groups: vec![StreamGroup {
                    name: "g".into(),
                    last_id: "0-0".into(),
                    pending: 2,
                    consumers: vec!["c".into()],
                }],
            }),
            Value::Module { module_id: 12345 },
            Value::NotDecoded,
        ];
        for v in values {
            for key in &tricky {
                let mut e = entry(key, v.clone());
                assert_eq!(ours(&e), serde_line(&e));
                (e.expire_ms, e.idle, e.freq) = (None, Some(u64::MAX), None);
                assert_eq!(ours(&e), serde_line(&e));
            }
        }
    }

    #[test]
    fn scores_match_display() {
        let mut xs = vec![
            0.0,
            -0.0,
            1.0,
            -3.0,
            1.5,
            0.1,
            1e-5,
            9.99e-6,
            1e15,
            9e15,
            1e16,
            123456.789,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
            f64::MAX,
            1.0 / 3.0,
        ];
        // A cheap deterministic spread of magnitudes and digits.
        let mut x = 0.7_f64;
        for i in 0..20_000 {
            x = (x * 7919.0 + 0.123).fract();
            xs.push(x * 10f64.powi(i % 40 - 20) * if i % 2 == 0 { 1.0 } else { -1.0 });
            xs.push((x * 1e6).round() / 64.0);
        }
        for x in xs {
            let mut out = Vec::new();
            score(&mut out, x);
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                format!("\"{x}\""),
                "{x:e}"
            );
        }
    }

    #[test]
    fn strings_match_serde_at_every_position_around_the_8_byte_steps() {
        let specials: [&[u8]; 8] = [
            b"\0",
            b"\x1f",
            b"\"",
            b"\\",
            b"\x7f",
            b" ",
            "é".as_bytes(),
            b"\xff",
        ];
        for len in 0..26 {
            for at in 0..len {
                for c in specials {
                    let mut b = vec![b'a'; len];
                    b.splice(at..at + 1, c.iter().copied());
                    let mut out = Vec::new();
                    string(&mut out, &b);
                    let want = serde_json::to_string(&String::from_utf8_lossy(&b)).expect("json");
                    assert_eq!(String::from_utf8(out).expect("utf8"), want, "{b:?}");
                }
            }
        }
    }

    #[test]
    fn same_bytes_as_serde_for_real_files() {
        for file in [
            &include_bytes!("../testdata/redis-7.0.15-all-types.rdb")[..],
            &include_bytes!("../testdata/valkey-9.1.2-all-types.rdb")[..],
        ] {
            let mut n = 0;
            for item in crate::Parser::new(file).expect("header") {
                if let crate::Item::Entry(e) = item.expect("item") {
                    assert_eq!(ours(&e), serde_line(&e), "key {:?}", e.key);
                    n += 1;
                }
            }
            assert!(n >= 5, "{n} entries");
        }
    }
}
