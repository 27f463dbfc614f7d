//! A connection for bulk traffic (the load generator, restores): commands are written as
//! pre-encoded RESP and replies framed without being decoded, over TCP or TLS alike.

use std::time::Duration;

use crate::node::{Addr, NodeError, RawStream};

/// How a bulk client talks to one node: pre-encoded RESP out, replies framed but not decoded
/// — the per-request cost redis-benchmark has.
pub struct Transport {
    stream: Box<dyn RawStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
    timeout: Duration,
    /// One timer for every round trip, moved later each time. A fresh tokio timer per round
    /// trip, registered while the runtime had none, made the runtime wake itself through its
    /// eventfd every time: a write and an extra `epoll_wait` inside each measured round trip.
    /// A Transport stays on the runtime it was opened on.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Transport {
    /// Connects (TLS when configured) and authenticates.
    pub async fn open(opts: &crate::node::ConnectOptions, addr: &Addr) -> Result<Self, NodeError> {
        let mut t = Transport {
            stream: opts.connect_raw(addr).await?,
            out: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
            timeout: opts.timeout,
            timer: Box::pin(tokio::time::sleep(opts.timeout)),
        };
        if let Some(pw) = &opts.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &opts.user {
                args.push(u.as_bytes());
            }
            args.push(pw.expose().as_bytes());
            let auth = t.raw(addr, 1, |out| {
                rcops_formats::resp::encode_command(&args, out)
            });
            if let Some(Some(err)) = auth.await?.pop() {
                return Err(NodeError::Auth {
                    addr: addr.clone(),
                    reason: err,
                });
            }
        }
        Ok(t)
    }

    /// The stream and the bytes read past the last reply, for a protocol that leaves RESP
    /// replies behind (the replication stream after `PSYNC`).
    pub fn into_parts(self) -> (Box<dyn RawStream>, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Sends `n` commands that `encode` writes into the output buffer; returns per command
    /// `Some(error text)` or `None`.
    pub async fn raw(
        &mut self,
        addr: &Addr,
        n: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Option<String>>, NodeError> {
        let timeout = self.timeout;
        self.raw_within(addr, n, timeout, encode).await
    }

    /// [`Self::raw`] with its own budget for the round trip (a big write takes longer).
    pub async fn raw_within(
        &mut self,
        addr: &Addr,
        n: usize,
        timeout: Duration,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Option<String>>, NodeError> {
        self.out.clear();
        encode(&mut self.out);
        self.round_trip(addr, n, timeout, None, error_of).await
    }

    /// Like [`Self::raw_within`], but returns every reply's whole RESP frame (`:1\r\n`),
    /// for the few callers that read values.
    pub async fn frames_within(
        &mut self,
        addr: &Addr,
        n: usize,
        timeout: Duration,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Vec<u8>>, NodeError> {
        self.out.clear();
        encode(&mut self.out);
        self.round_trip(addr, n, timeout, None, |buf, r| {
            buf[r.start..r.end].to_vec()
        })
        .await
    }

    /// Sends the output buffer `head`, then the first `len` bytes of `file`, then `tail`,
    /// and reads `n` replies within `timeout`: one command whose biggest argument (a value
    /// too big for memory) streams from disk in 1 MiB reads.
    #[allow(clippy::too_many_arguments)]
    pub async fn raw_with_file(
        &mut self,
        addr: &Addr,
        n: usize,
        timeout: Duration,
        head: impl FnOnce(&mut Vec<u8>),
        file: &std::fs::File,
        len: u64,
        tail: &[u8],
    ) -> Result<Vec<Option<String>>, NodeError> {
        self.out.clear();
        head(&mut self.out);
        self.round_trip(addr, n, timeout, Some((file, len, tail)), error_of)
            .await
    }

    /// Sends `n` commands and returns their replies, like [`Self::frames_within`], except
    /// that a top-level bulk string longer than `above` bytes goes to a file from `spill` as
    /// it arrives (a `DUMP` of a big value): memory stays at one read whatever its size.
    /// `idle` bounds each wait for bytes, not the whole round trip, since such a reply may
    /// take long to arrive but never stays silent that long.
    pub async fn frames_spilling(
        &mut self,
        addr: &Addr,
        n: usize,
        idle: Duration,
        above: u64,
        spill: &(dyn Fn() -> std::io::Result<std::fs::File> + Sync),
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Vec<Frame>, NodeError> {
        use rcops_formats::resp;
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Transport {
            stream,
            out,
            buf,
            timer,
            ..
        } = self;
        let io = |e: std::io::Error| NodeError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let malformed = |e: resp::Malformed| NodeError::Command {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let timed_out = || NodeError::Timeout {
            addr: addr.clone(),
            after: idle,
        };
        out.clear();
        encode(out);
        timer.as_mut().reset(tokio::time::Instant::now() + idle);
        tokio::select! {
            biased;
            r = async {
                stream.write_all(out).await?;
                stream.flush().await
            } => r.map_err(io)?,
            () = timer.as_mut() => return Err(timed_out()),
        }
        let mut frames = Vec::with_capacity(n);
        // Bytes of a spilled body still to come, and its file.
        let mut body: Option<(std::fs::File, u64, u64)> = None;
        loop {
            if let Some((file, _, left)) = &mut body {
                let take = (*left).min(buf.len() as u64) as usize;
                // Writes to a fresh temporary file land in the page cache: short enough
                // for the runtime thread.
                file.write_all(&buf[..take]).map_err(io)?;
                buf.drain(..take);
                *left -= take as u64;
                if *left == 0 && buf.len() >= 2 {
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed(resp::Malformed(0)));
                    }
                    buf.drain(..2);
                    let Some((file, len, _)) = body.take() else {
                        unreachable!("a body is open")
                    };
                    frames.push(Frame::Spilled(rcops_rdb::Spilled {
                        file: std::sync::Arc::new(file),
                        len,
                    }));
                    continue;
                }
            } else if frames.len() == n {
                return Ok(frames);
            } else if let Some((len, head)) = resp::bulk_header(buf).map_err(malformed)? {
                if len > 0 && len as u64 > above {
                    buf.drain(..head);
                    body = Some((spill().map_err(io)?, len as u64, len as u64));
                    continue;
                }
            }
            if body.is_none() {
                if let Some(r) = resp::scan_replies(buf, 1).map_err(malformed)?.first() {
                    frames.push(Frame::Whole(buf[..r.end].to_vec()));
                    buf.drain(..r.end);
                    continue;
                }
            }
            buf.reserve(1 << 20);
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            let got = tokio::select! {
                biased;
                r = stream.read_buf(buf) => r.map_err(io)?,
                () = timer.as_mut() => return Err(timed_out()),
            };
            if got == 0 {
                return Err(NodeError::Unreachable {
                    addr: addr.clone(),
                    reason: "connection closed by the server".into(),
                });
            }
        }
    }

    async fn round_trip<T>(
        &mut self,
        addr: &Addr,
        n: usize,
        timeout: Duration,
        file: Option<(&std::fs::File, u64, &[u8])>,
        reply: impl Fn(&[u8], &rcops_formats::resp::Reply) -> T,
    ) -> Result<Vec<T>, NodeError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Transport {
            stream,
            out,
            buf,
            timeout: _,
            timer,
        } = self;
        let io = |e: std::io::Error| NodeError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        // One budget for the whole round trip, writing and reading.
        timer.as_mut().reset(tokio::time::Instant::now() + timeout);
        let round_trip = async {
            stream.write_all(out).await.map_err(io)?;
            if let Some((file, len, tail)) = file {
                use std::os::unix::fs::FileExt;
                // Reads of a file just written come from the page cache: short enough to do
                // on the runtime thread.
                let mut chunk = vec![0u8; (1 << 20).min(len as usize)];
                let mut at = 0u64;
                while at < len {
                    let want = ((len - at) as usize).min(chunk.len());
                    let got = file.read_at(&mut chunk[..want], at).map_err(io)?;
                    if got == 0 {
                        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    stream.write_all(&chunk[..got]).await.map_err(io)?;
                    at += got as u64;
                }
                stream.write_all(tail).await.map_err(io)?;
            }
            // The flush matters on TLS: rustls may still hold records the socket did not take.
            stream.flush().await.map_err(io)?;
            loop {
                let replies =
                    rcops_formats::resp::scan_replies(buf, n).map_err(|e| NodeError::Command {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
                if replies.len() == n {
                    let out = replies.iter().map(|r| reply(buf, r)).collect();
                    let used = replies.last().map_or(0, |r| r.end);
                    buf.drain(..used);
                    return Ok(out);
                }
                if stream.read_buf(buf).await.map_err(io)? == 0 {
                    return Err(NodeError::Unreachable {
                        addr: addr.clone(),
                        reason: "connection closed by the server".into(),
                    });
                }
            }
        };
        tokio::select! {
            biased;
            r = round_trip => r,
            () = timer.as_mut() => Err(NodeError::Timeout {
                addr: addr.clone(),
                after: timeout,
            }),
        }
    }
}

/// One reply of [`Transport::frames_spilling`].
pub enum Frame {
    /// The whole RESP frame.
    Whole(Vec<u8>),
    /// The body of a bulk string too long for memory, in its file.
    Spilled(rcops_rdb::Spilled),
}

/// A reply's error text, `None` for success.
fn error_of(buf: &[u8], r: &rcops_formats::resp::Reply) -> Option<String> {
    r.error.then(|| rcops_formats::resp::error_text(buf, r))
}
