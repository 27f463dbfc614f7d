//! Just enough RESP2 for bulk traffic: encode a command, find where complete replies end in
//! a read buffer (and whether each is an error) without building values, and take commands
//! (arrays of bulk strings, as a replication stream carries them) off a buffer.

/// Appends `*N\r\n$len\r\narg\r\n…` for one command (no allocation beyond `out`).
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    // Hot in `bench`: sized once and digits written by hand, no `fmt` machinery.
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    push_header(out, b'*', args.len());
    for a in args {
        push_header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One argument as a RESP bulk string, `$<len>\r\n<arg>\r\n`: encoded once, a hot loop
/// sends it with a single copy.
pub fn bulk(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 16);
    push_header(&mut out, b'$', arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
    out
}

/// `<kind><n>\r\n`.
fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A reply that cannot be RESP2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed RESP reply at byte {0}")]
pub struct Malformed(pub usize);

/// Deepest array nesting accepted (replies to SET/GET have none).
const MAX_DEPTH: usize = 32;

/// Position of the `\r\n` ending the line that starts at `at`.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    let mut from = at;
    loop {
        let cr = from + buf.get(from..)?.iter().position(|&b| b == b'\r')?;
        match buf.get(cr + 1) {
            Some(b'\n') => return Some(cr),
            Some(_) => from = cr + 1,
            None => return None,
        }
    }
}

fn int(buf: &[u8], from: usize, to: usize) -> Result<i64, Malformed> {
    std::str::from_utf8(&buf[from..to])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed(from))
}

/// Length of the complete reply starting at `at`, or `None` if more bytes are needed.
fn reply_len(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Malformed> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(end) = line_end(buf, at + 1) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' => Ok(Some(end + 2 - at)),
        b'$' => {
            let n = int(buf, at + 1, end)?;
            if n < 0 {
                return Ok(Some(end + 2 - at));
            }
            let total = end + 2 + usize::try_from(n).map_err(|_| Malformed(at))? + 2;
            Ok((buf.len() >= total).then(|| total - at))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(Malformed(at));
            }
            let n = int(buf, at + 1, end)?;
            let mut pos = end + 2;
            for _ in 0..n.max(0) {
                match reply_len(buf, pos, depth + 1)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos - at))
        }
        _ => Err(Malformed(at)),
    }
}

/// Where one complete reply sits in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub start: usize,
    pub end: usize,
    /// An error reply (`-…`).
    pub error: bool,
}

/// Frames up to `max` complete replies from the start of `buf`; a partial reply at the end is
/// left for the next read.
pub fn scan_replies(buf: &[u8], max: usize) -> Result<Vec<Reply>, Malformed> {
    let mut pos = 0;
    let mut out = Vec::new();
    while out.len() < max {
        match reply_len(buf, pos, 0)? {
            Some(len) => {
                out.push(Reply {
                    start: pos,
                    end: pos + len,
                    error: buf[pos] == b'-',
                });
                pos += len;
            }
            None => break,
        }
    }
    Ok(out)
}

/// The text of an error reply (without `-` and the line end).
pub fn error_text(buf: &[u8], r: &Reply) -> String {
    let line = &buf[r.start..r.end];
    String::from_utf8_lossy(
        line.get(1..line.len().saturating_sub(2))
            .unwrap_or_default(),
    )
    .into_owned()
}

/// A bulk string's header at the start of `buf`: the body's length (`-1` for nil) and the
/// header's own length, `None` until the whole line is in or when `buf` holds another kind of
/// reply — for a reader that streams a long body instead of waiting for all of it.
pub fn bulk_header(buf: &[u8]) -> Result<Option<(i64, usize)>, Malformed> {
    if buf.first() != Some(&b'$') {
        return Ok(None);
    }
    let Some(end) = line_end(buf, 1) else {
        return Ok(None);
    };
    Ok(Some((int(buf, 1, end)?, end + 2)))
}

/// A top-level reply that is not an array, read from its whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    /// `None` for nil.
    Bulk(Option<&'a [u8]>),
}

/// Reads one framed reply (as [`scan_replies`] delimits it); `None` for an array or a frame
/// that is not well formed.
pub fn scalar(frame: &[u8]) -> Option<Scalar<'_>> {
    let end = line_end(frame, 1)?;
    let line = &frame[1..end];
    match frame.first()? {
        b'+' => Some(Scalar::Simple(line)),
        b'-' => Some(Scalar::Error(line)),
        b':' => int(frame, 1, end).ok().map(Scalar::Int),
        b'$' => {
            let n = int(frame, 1, end).ok()?;
            if n < 0 {
                return Some(Scalar::Bulk(None));
            }
            let from = end + 2;
            frame
                .get(from..from + usize::try_from(n).ok()?)
                .map(|b| Scalar::Bulk(Some(b)))
        }
        _ => None,
    }
}

/// A command's arguments and the bytes it took.
pub type Command = (Vec<Vec<u8>>, usize);

/// Takes the first command (an array of bulk strings) off the start of `buf`: its arguments
/// and how many bytes it used, or `None` until the whole command is in. Bare newlines before
/// it (keep-alives) count as used bytes with no arguments.
pub fn parse_command(buf: &[u8]) -> Result<Option<Command>, Malformed> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    if skip > 0 {
        return Ok(Some((Vec::new(), skip)));
    }
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return Err(Malformed(0));
    }
    let Some(end) = line_end(buf, 1) else {
        return Ok(None);
    };
    let n = usize::try_from(int(buf, 1, end)?).map_err(|_| Malformed(0))?;
    let mut pos = end + 2;
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(Malformed(pos));
        }
        let Some(e) = line_end(buf, pos + 1) else {
            return Ok(None);
        };
        let len = usize::try_from(int(buf, pos + 1, e)?).map_err(|_| Malformed(pos))?;
        let from = e + 2;
        let to = from.checked_add(len).ok_or(Malformed(pos))?;
        if buf.len() < to + 2 {
            return Ok(None);
        }
        if &buf[to..to + 2] != b"\r\n" {
            return Err(Malformed(to));
        }
        args.push(buf[from..to].to_vec());
        pos = to + 2;
    }
    Ok(Some((args, pos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scalars_and_bulk_headers() {
        assert_eq!(scalar(b"+string\r\n"), Some(Scalar::Simple(b"string")));
        assert_eq!(scalar(b"-ERR no\r\n"), Some(Scalar::Error(b"ERR no")));
        assert_eq!(scalar(b":-2\r\n"), Some(Scalar::Int(-2)));
        assert_eq!(scalar(b"$-1\r\n"), Some(Scalar::Bulk(None)));
        assert_eq!(
            scalar(b"$3\r\na\r\n\r\n"),
            Some(Scalar::Bulk(Some(b"a\r\n")))
        );
        assert_eq!(scalar(b"$5\r\nab\r\n"), None);
        assert_eq!(scalar(b"*0\r\n"), None);
        assert_eq!(bulk_header(b"$1048576\r\nxx"), Ok(Some((1_048_576, 10))));
        assert_eq!(bulk_header(b"$10"), Ok(None));
        assert_eq!(bulk_header(b":1\r\n"), Ok(None));
        assert_eq!(bulk_header(b"$x\r\n"), Err(Malformed(1)));
    }

    #[test]
    fn encodes_commands_as_redis_expects() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn scans_complete_replies_and_stops_at_partial_ones() {
        let buf =
            b"+OK\r\n$3\r\nabc\r\n$-1\r\n-ERR wrong\r\n:12\r\n*2\r\n$1\r\na\r\n:1\r\n$5\r\nhel";
        let replies = scan_replies(buf, 100).unwrap();
        let errs: Vec<bool> = replies.iter().map(|r| r.error).collect();
        assert_eq!(errs, vec![false, false, false, true, false, false]);
        assert_eq!(&buf[replies.last().unwrap().end..], b"$5\r\nhel");
        assert_eq!(error_text(buf, &replies[3]), "ERR wrong");
        let replies = scan_replies(buf, 2).unwrap();
        assert_eq!((replies[1].end, replies.len()), (14, 2));
    }

    #[test]
    fn rejects_garbage_with_its_offset() {
        assert_eq!(scan_replies(b"+OK\r\n?x\r\n", 10), Err(Malformed(5)));
        assert_eq!(scan_replies(b"$x\r\n", 10), Err(Malformed(1)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = scan_replies(&data, 1000);
        }

        #[test]
        fn encodes_any_lengths(args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..12)) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut out = Vec::new();
            encode_command(&refs, &mut out);
            let mut want = format!("*{}\r\n", args.len()).into_bytes();
            for a in &args {
                want.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                want.extend_from_slice(a);
                want.extend_from_slice(b"\r\n");
            }
            proptest::prop_assert_eq!(out, want);
        }
    }

    #[test]
    fn bulk_strings_compose_into_commands() {
        for arg in [&b""[..], b"k", b"a\r\nb\n", &[0u8; 300][..]] {
            let mut one = Vec::new();
            encode_command(&[arg], &mut one);
            assert_eq!([&b"*1\r\n"[..], &bulk(arg)].concat(), one);
        }
        let mut whole = Vec::new();
        encode_command(&[b"SET", b"key:1", b"xyz"], &mut whole);
        let mut parts = b"*3\r\n".to_vec();
        for a in [&b"SET"[..], b"key:1", b"xyz"] {
            parts.extend_from_slice(&bulk(a));
        }
        assert_eq!(parts, whole);
    }

    #[test]
    fn takes_whole_commands_and_waits_for_partial_ones() {
        let mut buf = Vec::new();
        encode_command(&[b"SET", b"k", b"v\r\n"], &mut buf);
        let one = buf.len();
        encode_command(&[b"PING"], &mut buf);
        let (args, used) = parse_command(&buf).unwrap().unwrap();
        assert_eq!(
            (args, used),
            (vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\n".to_vec()], one)
        );
        for cut in 0..one {
            assert_eq!(parse_command(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse_command(b"\n\n*1\r\n").unwrap(), Some((Vec::new(), 2)));
        assert_eq!(parse_command(b"+OK\r\n"), Err(Malformed(0)));
        assert_eq!(parse_command(b"*1\r\n$1\r\nab\r\n"), Err(Malformed(9)));
    }

    proptest::proptest! {
        #[test]
        fn parsed_commands_round_trip(args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), 1..8)) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut out = Vec::new();
            encode_command(&refs, &mut out);
            let got = parse_command(&out).unwrap().unwrap();
            proptest::prop_assert_eq!(got, (args.clone(), out.len()));
        }

        #[test]
        fn parsing_commands_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_command(&data);
        }
    }
}
