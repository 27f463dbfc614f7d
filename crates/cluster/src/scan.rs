//! The scan stream: one node's keyspace read with `SCAN` in batches — `MATCH`, `TYPE`,
//! `COUNT`, a resumable cursor, and pacing to a rate in keys per second — on a replica
//! after `READONLY`. Which node of a shard is scanned is [`ClusterView::read_sources`]'s
//! rule, as everywhere else. bigkeys/memkeys and migration (cleanup after a resync) read
//! keys through it.
//!
//! [`ClusterView::read_sources`]: crate::topology::ClusterView::read_sources

use std::time::{Duration, Instant};

use crate::fanout::{query, Executor};
use crate::node::{Addr, NodeError};

/// What to scan for.
#[derive(Debug, Clone, Default)]
pub struct ScanSpec {
    /// Keys per `SCAN` call (a hint to the server).
    pub count: usize,
    pub pattern: Option<String>,
    /// Only keys of this type (`SCAN … TYPE`).
    pub kind: Option<String>,
    /// Keys per second at most (0: unlimited).
    pub rate: u64,
}

pub struct ScanStream {
    addr: Addr,
    conn: redis::aio::MultiplexedConnection,
    spec: ScanSpec,
    cursor: u64,
    done: bool,
    started: Instant,
    yielded: u64,
}

impl ScanStream {
    /// Starts at `cursor` (0 for the beginning, or one saved by [`ScanStream::cursor`]).
    pub async fn open(
        exec: &Executor,
        addr: &Addr,
        replica: bool,
        spec: ScanSpec,
        cursor: u64,
    ) -> Result<ScanStream, NodeError> {
        let mut conn = exec.conn(addr).await?;
        if replica {
            query::<()>(addr, &mut conn, &redis::cmd("READONLY")).await?;
        }
        Ok(ScanStream {
            addr: addr.clone(),
            conn,
            spec,
            cursor,
            done: false,
            started: Instant::now(),
            yielded: 0,
        })
    }

    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The connection the scan reads on (for the caller's per-key commands).
    pub fn conn(&mut self) -> &mut redis::aio::MultiplexedConnection {
        &mut self.conn
    }

    /// Where to resume: the cursor of the next call (0 once the scan is complete).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next batch of keys (possibly empty: SCAN may return none for a call), or `None`
    /// once the whole keyspace was read.
    pub async fn next(&mut self) -> Result<Option<Vec<Vec<u8>>>, NodeError> {
        if self.done {
            return Ok(None);
        }
        if self.spec.rate > 0 {
            // Paced to `rate` keys per second since the start of this scan.
            let due = Duration::from_secs_f64(self.yielded as f64 / self.spec.rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut scan = redis::cmd("SCAN");
        scan.arg(self.cursor)
            .arg("COUNT")
            .arg(self.spec.count.max(1));
        if let Some(p) = &self.spec.pattern {
            scan.arg("MATCH").arg(p);
        }
        if let Some(t) = &self.spec.kind {
            scan.arg("TYPE").arg(t);
        }
        let (next, keys): (u64, Vec<Vec<u8>>) = query(&self.addr, &mut self.conn, &scan).await?;
        self.cursor = next;
        self.done = next == 0;
        self.yielded += keys.len() as u64;
        Ok(Some(keys))
    }
}

/// The command that measures a value of `kind` (`TYPE`'s answer): elements, or bytes for a
/// string.
pub fn length_command(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "string" => "STRLEN",
        "list" => "LLEN",
        "hash" => "HLEN",
        "set" => "SCARD",
        "zset" => "ZCARD",
        "stream" => "XLEN",
        _ => return None,
    })
}
