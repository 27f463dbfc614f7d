//! One source shard's replication link, kept across failovers: the stream is opened from
//! the shard's best node (an in-sync replica unless masters were asked for), and after a
//! break from the node serving the shard's slots now (rediscovered), continuing with `PSYNC
//! <replid> <offset+1>`. The retry rule (a second between tries, at most [`RECONNECTS`] in a
//! row) and the silence rule ([`silence_limit`]) live here. Migration's sync and `backup
//! follow` both read their shards through it.

use std::time::Duration;

use crate::fanout::Executor;
use crate::job::JobCtx;
use crate::node::{Addr, NodeError};
use crate::ops::backup::Source;
use crate::repl::{Psync, ReplStream, Start};
use crate::topology::Detail;

/// Failed opens in a row before a shard gives up (one a second: a minute for a failover).
pub const RECONNECTS: u32 = 60;

/// How long a link may stay silent before it counts as dead: a master PINGs its replicas
/// every 10 s (`repl-ping-replica-period`), so silence beyond `idle` (30 s at least) means
/// a dead link even when TCP never said so.
pub fn silence_limit(idle: Duration) -> Duration {
    idle.max(Duration::from_secs(30))
}

pub struct ShardLink<'a> {
    exec: &'a Executor,
    seeds: &'a [Addr],
    src: &'a Source,
    from_replicas: bool,
    candidates: Vec<(Addr, &'static str)>,
    failures: u32,
    explain: fn(&NodeError) -> String,
    /// The node the stream comes from (empty before the first open), and its role.
    pub node: String,
    pub role: String,
}

/// Why [`ShardLink::open`] returned no stream.
#[derive(Debug)]
pub enum Closed {
    Cancelled,
    /// No node answered, for the last reason given.
    Failed(String),
}

impl<'a> ShardLink<'a> {
    pub fn new(
        exec: &'a Executor,
        seeds: &'a [Addr],
        src: &'a Source,
        from_replicas: bool,
    ) -> Self {
        ShardLink {
            exec,
            seeds,
            src,
            from_replicas,
            candidates: src.candidates.clone(),
            failures: 0,
            explain: |e| e.to_string(),
            node: String::new(),
            role: String::new(),
        }
    }

    /// How a failed open is told (migration points a refused PSYNC to its scan method).
    pub fn explain_with(mut self, explain: fn(&NodeError) -> String) -> Self {
        self.explain = explain;
        self
    }

    /// Opens the stream from the first node that answers. Before any stream was read a
    /// failure is the answer; later one is a failover: a second's wait, the shard's nodes
    /// rediscovered, and again, [`RECONNECTS`] times at most. `label` names the shard in
    /// progress messages.
    pub async fn open(
        &mut self,
        ctx: &JobCtx,
        label: &str,
        psync: &Psync,
    ) -> Result<(ReplStream, Start), Closed> {
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(Closed::Cancelled);
            }
            let mut last = self
                .src
                .why_none
                .clone()
                .unwrap_or_else(|| "no usable source node".into());
            for (addr, role) in &self.candidates {
                match ReplStream::open(self.exec.options(), addr, psync).await {
                    Ok(s) => {
                        self.node = addr.to_string();
                        self.role = role.to_string();
                        return Ok(s);
                    }
                    Err(e) => last = (self.explain)(&e),
                }
            }
            if self.node.is_empty() || !self.retry() {
                return Err(Closed::Failed(last));
            }
            ctx.progress.message(&format!("{label}: {last}; retrying"));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = ctx.cancel.cancelled() => return Err(Closed::Cancelled),
            }
            self.rediscover().await;
        }
    }

    /// Counts a failure of the open stream; whether another try is allowed.
    pub fn retry(&mut self) -> bool {
        self.failures += 1;
        self.failures <= RECONNECTS
    }

    /// After a stream that worked broke: the next open starts a fresh count and tries the
    /// shard's nodes as they are now.
    pub async fn broke(&mut self) {
        self.failures = 1;
        self.rediscover().await;
    }

    /// The shard's nodes now (after a failover): the node owning its first slot and that
    /// node's replicas, by the same source rule as the first time.
    async fn rediscover(&mut self) {
        let Ok(view) =
            crate::topology::discover_endpoint(self.exec, self.seeds, Detail::Health).await
        else {
            return;
        };
        let Some(first) = self.src.slots.ranges().first().map(|r| r.start) else {
            return;
        };
        let (sources, _) = crate::ops::backup::sources(&view, self.from_replicas);
        if let Some(c) = sources
            .into_iter()
            .find(|s| s.slots.contains(first))
            .map(|s| s.candidates)
            .filter(|c| !c.is_empty())
        {
            self.candidates = c;
        }
    }
}

/// A node's `master_repl_offset` (a replica's is where it is in its master's stream).
pub async fn source_offset(exec: &Executor, addr: &Addr) -> Result<u64, String> {
    let mut conn = exec.conn(addr).await.map_err(|e| e.to_string())?;
    let text: String = crate::fanout::query(addr, &mut conn, redis::cmd("INFO").arg("replication"))
        .await
        .map_err(|e| e.to_string())?;
    rcops_formats::info::Info::parse(&text)
        .get("master_repl_offset")
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| format!("{addr}: INFO replication has no master_repl_offset"))
}
