//! The replication client: one node's replication stream, read as a replica reads it.
//! `PSYNC` with `capa eof psync2`; after `+FULLRESYNC` the RDB snapshot (sent with a length,
//! `$<len>`, or diskless, `$EOF:<mark>`) handed over in chunks; then the command stream,
//! each command with the offset just after it. `REPLCONF ACK` goes out at least every second
//! and at once on `REPLCONF GETACK`; a reconnect continues with `PSYNC <replid> <offset+1>`
//! (`+CONTINUE`, also from a promoted replica, through its `replid2`). Backup's snapshot
//! and migration's sync both read through it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::{Addr, ConnectOptions, NodeError, RawStream};
use crate::transport::Transport;

/// How the server answered `PSYNC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A full resync: the snapshot follows (read it with [`ReplStream::rdb`]), then the
    /// commands after `offset`.
    Full { replid: String, offset: u64 },
    /// The stream continues right after the offset asked for, under `replid` (a promoted
    /// replica announces its new one).
    Continue { replid: String, offset: u64 },
}

/// What to ask for.
#[derive(Debug, Clone, Default)]
pub struct Psync {
    /// Continue after this (replid, offset) — the offset of the last byte already taken;
    /// `None` asks for a full resync.
    pub from: Option<(String, u64)>,
    /// Only the snapshot, no command stream after it (Redis 7+; older servers ignore it).
    pub rdb_only: bool,
}

/// A failure of the stream, told apart from one of the caller's sink.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplError {
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The caller's sink refused a chunk (its own error text).
    #[error("{0}")]
    Sink(String),
}

/// One command of the stream and the stream offset just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommand {
    pub args: Vec<Vec<u8>>,
    pub end: u64,
}

/// Bytes of room made before each read.
const READ_CHUNK: usize = 256 * 1024;

/// How often the replica reports its offset.
const ACK_EVERY: Duration = Duration::from_secs(1);

/// An open replication link.
pub struct ReplStream {
    addr: Addr,
    s: Box<dyn RawStream>,
    buf: Vec<u8>,
    replid: String,
    /// The offset of the last byte taken off the stream (a replica's `master_repl_offset`).
    offset: u64,
    /// What the caller has applied: the offset `REPLCONF ACK` reports.
    applied: u64,
    acked: Instant,
    /// Whether a byte of the command stream has come yet.
    flowing: bool,
}

impl ReplStream {
    /// Connects, authenticates and asks for the stream. The handshake's replies must each
    /// come within the connection timeout; a server waiting to start a snapshot sends
    /// newlines meanwhile, which are skipped.
    pub async fn open(
        opts: &ConnectOptions,
        addr: &Addr,
        psync: &Psync,
    ) -> Result<(ReplStream, Start), NodeError> {
        let mut t = Transport::open(opts, addr).await?;
        let refused = |what: &str, reply: &[u8]| {
            let text = String::from_utf8_lossy(reply).trim().to_string();
            let text = text.strip_prefix('-').unwrap_or(&text).to_string();
            if text.starts_with("NOPERM") {
                return NodeError::NoPerm {
                    addr: addr.clone(),
                    user: opts.user.clone(),
                    command: what.to_string(),
                };
            }
            NodeError::Command {
                addr: addr.clone(),
                reason: format!("{what} refused: {text}"),
            }
        };
        let capa = t
            .frames_within(addr, 1, opts.timeout, |out| {
                rcops_formats::resp::encode_command(
                    &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
                    out,
                )
            })
            .await?;
        if let Some(e) = capa.first().filter(|f| f.starts_with(b"-")) {
            return Err(refused("REPLCONF", e));
        }
        // Options a server may refuse without harm, each reply read so the next stay in step:
        // - version: Valkey picks the RDB version of a diskless sync from the replica's
        //   announced version and, without one, falls back to RDB 11 — which cannot hold a
        //   hash with field expirations, so the sync fails. 9.1 asks for RDB 80, the newest
        //   format rcops reads; Redis does not know the option.
        // - rdb-only: Redis 7+.
        let mut options: Vec<(&[u8], &[u8])> = vec![(b"version", b"9.1.0")];
        if psync.rdb_only {
            options.push((b"rdb-only", b"1"));
        }
        for (option, value) in options {
            t.frames_within(addr, 1, opts.timeout, |out| {
                rcops_formats::resp::encode_command(&[b"REPLCONF", option, value], out)
            })
            .await?;
        }
        let (s, buf) = t.into_parts();
        let mut r = ReplStream {
            addr: addr.clone(),
            s,
            buf,
            replid: String::new(),
            offset: 0,
            applied: 0,
            acked: Instant::now(),
            flowing: false,
        };
        let (id, from) = match &psync.from {
            Some((id, off)) => (id.clone(), (off + 1).to_string()),
            None => ("?".to_string(), "-1".to_string()),
        };
        let mut send = Vec::new();
        rcops_formats::resp::encode_command(&[b"PSYNC", id.as_bytes(), from.as_bytes()], &mut send);
        r.write(&send).await?;
        let line = loop {
            let l = r.line(opts.timeout).await?;
            if !l.is_empty() {
                break l;
            }
        };
        let mut f = line.split_whitespace();
        let sync = match f.next().unwrap_or_default() {
            "+FULLRESYNC" => {
                let replid = f.next().unwrap_or_default().to_string();
                let offset = f.next().and_then(|o| o.parse().ok()).ok_or_else(|| {
                    refused("PSYNC", format!("unexpected reply {line:?}").as_bytes())
                })?;
                Start::Full { replid, offset }
            }
            "+CONTINUE" => {
                let (old, off) = psync.from.clone().unwrap_or_default();
                Start::Continue {
                    replid: f.next().map_or(old, str::to_string),
                    offset: off,
                }
            }
            _ => return Err(refused("PSYNC", line.as_bytes())),
        };
        let (Start::Full { replid, offset } | Start::Continue { replid, offset }) = &sync;
        r.replid = replid.clone();
        r.offset = *offset;
        r.applied = *offset;
        Ok((r, sync))
    }

    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The replication id the stream's offsets belong to.
    pub fn replid(&self) -> &str {
        &self.replid
    }

    /// The offset of the last byte taken off the stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Tells the stream what the caller has applied, for the next `REPLCONF ACK`.
    pub fn applied(&mut self, offset: u64) {
        self.applied = offset;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), NodeError> {
        let io = |e: std::io::Error| NodeError::Unreachable {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        self.s.write_all(bytes).await.map_err(io)?;
        // The flush matters on TLS: rustls may still hold records the socket did not take.
        self.s.flush().await.map_err(io)
    }

    /// Reads more bytes into the buffer within `idle`; an error when none come.
    async fn fill(&mut self, idle: Duration) -> Result<(), NodeError> {
        self.buf.reserve(READ_CHUNK);
        let addr = &self.addr;
        match tokio::time::timeout(idle, self.s.read_buf(&mut self.buf)).await {
            Err(_) => Err(NodeError::Timeout {
                addr: addr.clone(),
                after: idle,
            }),
            Ok(Err(e)) => Err(NodeError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            }),
            Ok(Ok(0)) => Err(NodeError::Unreachable {
                addr: addr.clone(),
                reason: "connection closed by the server".into(),
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// One line (up to `\n`, trimmed) of the handshake.
    async fn line(&mut self, idle: Duration) -> Result<String, NodeError> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            self.fill(idle).await?;
        }
    }

    /// After [`Start::Full`]: hands the snapshot to `sink` in chunks as it arrives (the
    /// server's newlines while it builds the snapshot skipped), acknowledges it, and returns
    /// its size. Each
    /// read may wait `idle` (forking and generating a big snapshot is silent but for the
    /// newlines).
    pub async fn rdb(
        &mut self,
        idle: Duration,
        mut sink: impl AsyncFnMut(Vec<u8>) -> Result<(), String>,
    ) -> Result<u64, ReplError> {
        let header = loop {
            let l = self.line(idle).await?;
            if !l.is_empty() {
                break l;
            }
        };
        let bad = |why: String| {
            ReplError::Node(NodeError::Command {
                addr: self.addr.clone(),
                reason: why,
            })
        };
        let mut total = 0u64;
        const CHUNK: usize = 256 * 1024;
        if let Some(mark) = header.strip_prefix("$EOF:") {
            // Diskless: the payload ends with the 40-byte mark.
            let mark = mark.as_bytes().to_vec();
            if mark.len() != 40 {
                return Err(bad(format!("bad EOF mark in {header:?}")));
            }
            // Searched from where the last read could have begun the mark; bytes after it
            // are the start of the command stream.
            let mut from = 0usize;
            loop {
                let window = &self.buf[from..];
                if let Some(p) = window.windows(40).position(|w| w == mark.as_slice()) {
                    let at = from + p;
                    let rest = self.buf.split_off(at + 40);
                    let mut payload = std::mem::replace(&mut self.buf, rest);
                    payload.truncate(at);
                    total += payload.len() as u64;
                    if !payload.is_empty() {
                        sink(payload).await.map_err(ReplError::Sink)?;
                    }
                    // A diskless master starts the command stream only after the first ACK;
                    // after an rdb-only sync it may have closed the link already.
                    let _ = self.ack().await;
                    return Ok(total);
                }
                if self.buf.len() > 40 + CHUNK {
                    let keep = self.buf.split_off(self.buf.len() - 40);
                    let chunk = std::mem::replace(&mut self.buf, keep);
                    total += chunk.len() as u64;
                    sink(chunk).await.map_err(ReplError::Sink)?;
                }
                from = self.buf.len().saturating_sub(40);
                self.buf.reserve(CHUNK);
                self.fill(idle).await?;
            }
        }
        let len: u64 = header
            .strip_prefix('$')
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| bad(format!("unexpected payload header {header:?}")))?;
        while total < len {
            if self.buf.is_empty() {
                self.buf.reserve(CHUNK);
                self.fill(idle).await.map_err(|e| match e {
                    NodeError::Unreachable { addr, .. } => NodeError::Unreachable {
                        addr,
                        reason: format!(
                            "connection closed with {} bytes of the RDB missing",
                            len - total
                        ),
                    },
                    e => e,
                })?;
            }
            let take = (self.buf.len() as u64).min(len - total) as usize;
            let rest = self.buf.split_off(take);
            let chunk = std::mem::replace(&mut self.buf, rest);
            total += chunk.len() as u64;
            sink(chunk).await.map_err(ReplError::Sink)?;
        }
        let _ = self.ack().await;
        Ok(total)
    }

    /// The commands that arrive within `wait` (all those already buffered, without waiting,
    /// when there are some), at most `max`. Empty when none came: the link is idle, not
    /// broken (a master PINGs its replicas every 10 s by default). `REPLCONF GETACK` is
    /// answered here and returned like every other command, so offsets stay contiguous.
    pub async fn commands(
        &mut self,
        wait: Duration,
        max: usize,
    ) -> Result<Vec<StreamCommand>, NodeError> {
        let mut out = Vec::new();
        loop {
            let mut used = 0;
            let mut getack = false;
            while out.len() < max.max(1) {
                let parsed =
                    rcops_formats::resp::parse_command(&self.buf[used..]).map_err(|e| {
                        NodeError::Command {
                            addr: self.addr.clone(),
                            reason: format!("replication stream at offset {}: {e}", self.offset),
                        }
                    })?;
                let Some((args, n)) = parsed else { break };
                used += n;
                self.offset += n as u64;
                if args.is_empty() {
                    continue; // a bare newline
                }
                getack |= args.len() >= 2
                    && args[0].eq_ignore_ascii_case(b"REPLCONF")
                    && args[1].eq_ignore_ascii_case(b"GETACK");
                out.push(StreamCommand {
                    args,
                    end: self.offset,
                });
            }
            self.buf.drain(..used);
            self.flowing |= used > 0;
            // After a diskless snapshot a master starts the stream on an ACK that comes after
            // it noticed its child finished (up to 100 ms later, at its `hz`); an ACK before
            // that is ignored. Until the stream flows it is asked for more often.
            let every = if self.flowing {
                ACK_EVERY
            } else {
                Duration::from_millis(100)
            };
            if getack || self.acked.elapsed() >= every {
                self.ack().await?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Room for a whole socket buffer: `read_buf` reads only into spare capacity (a
            // full Vec gets 64 bytes, about one command per read).
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout(wait, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(out),
                Ok(Err(e)) => {
                    return Err(NodeError::Unreachable {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    })
                }
                Ok(Ok(0)) => {
                    return Err(NodeError::Unreachable {
                        addr: self.addr.clone(),
                        reason: "connection closed by the server".into(),
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// `REPLCONF ACK <applied>` now.
    pub async fn ack(&mut self) -> Result<(), NodeError> {
        let off = self.applied.to_string();
        let mut send = Vec::new();
        rcops_formats::resp::encode_command(&[b"REPLCONF", b"ACK", off.as_bytes()], &mut send);
        self.acked = Instant::now();
        self.write(&send).await
    }
}

/// A `Read` over chunks that a network task sends, for a parser on a blocking thread; every
/// byte is also copied into `out` (the backup's file; `std::io::sink()` for none), so the
/// parser and the file see the same stream.
pub struct ChunkReader<W: Write> {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    pub out: W,
    /// Bytes received.
    pub raw: u64,
    /// A failed write to `out` (full disk, …), told apart from a bad stream.
    pub write_error: Option<String>,
}

impl<W: Write> ChunkReader<W> {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>, out: W) -> Self {
        ChunkReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            out,
            raw: 0,
            write_error: None,
        }
    }
}

impl<W: Write> Read for ChunkReader<W> {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    if let Err(e) = self.out.write_all(&chunk) {
                        self.write_error = Some(e.to_string());
                        return Err(e);
                    }
                    self.raw += chunk.len() as u64;
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = dst.len().min(self.buf.len() - self.pos);
        dst[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
