//! The fan-out executor: runs one async job per node with bounded concurrency, a per-node
//! timeout and a tracing span per node. A node that fails lands in [`FanOut::failed`]; it never
//! aborts the others. Connections are cached so successive fan-outs reuse them.

use futures::stream::{self, StreamExt};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument;

use crate::node::{Addr, ConnectOptions, NodeError};

/// Results of one fan-out: what each node answered, and which nodes failed and why.
#[derive(Debug)]
pub struct FanOut<T> {
    pub ok: BTreeMap<Addr, T>,
    pub failed: BTreeMap<Addr, NodeError>,
}

impl<T> Default for FanOut<T> {
    fn default() -> Self {
        FanOut {
            ok: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }
}

impl<T> FanOut<T> {
    /// The first failure, for callers that need every node to succeed.
    pub fn first_error(&self) -> Option<&NodeError> {
        self.failed.values().next()
    }
}

/// Talks to many nodes at once. Cheap to share by reference across an operation.
pub struct Executor {
    opts: ConnectOptions,
    concurrency: usize,
    conns: Mutex<HashMap<Addr, MultiplexedConnection>>,
}

impl Executor {
    pub fn new(opts: ConnectOptions, concurrency: usize) -> Self {
        Executor {
            opts,
            concurrency: concurrency.max(1),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    pub fn timeout(&self) -> Duration {
        self.opts.timeout
    }

    /// A connection to `addr`, reused when one is cached.
    pub async fn conn(&self, addr: &Addr) -> Result<MultiplexedConnection, NodeError> {
        if let Some(c) = self.cached(addr) {
            return Ok(c);
        }
        let conn = self.opts.connect(addr).await?;
        if let Ok(mut map) = self.conns.lock() {
            map.insert(addr.clone(), conn.clone());
        }
        Ok(conn)
    }

    fn cached(&self, addr: &Addr) -> Option<MultiplexedConnection> {
        self.conns.lock().ok()?.get(addr).cloned()
    }

    /// Drops a cached connection (after an error, or when a node was restarted).
    pub fn forget(&self, addr: &Addr) {
        if let Ok(mut map) = self.conns.lock() {
            map.remove(addr);
        }
    }

    /// Runs `job` on every node with the default per-node timeout.
    pub async fn run<T, F, Fut>(&self, addrs: impl IntoIterator<Item = Addr>, job: F) -> FanOut<T>
    where
        F: Fn(Addr, MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        self.run_with_timeout(addrs, self.opts.timeout, job).await
    }

    /// Runs `job` on every node, at most `concurrency` at a time, each bounded by `timeout`
    /// (connecting included).
    pub async fn run_with_timeout<T, F, Fut>(
        &self,
        addrs: impl IntoIterator<Item = Addr>,
        timeout: Duration,
        job: F,
    ) -> FanOut<T>
    where
        F: Fn(Addr, MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let mut seen = std::collections::HashSet::new();
        let addrs: Vec<Addr> = addrs
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        let job = &job;
        let results: Vec<(Addr, Result<T, NodeError>)> = stream::iter(addrs)
            .map(|addr| async move {
                let span = tracing::debug_span!("node", addr = %addr);
                let work = async {
                    let conn = self.conn(&addr).await?;
                    job(addr.clone(), conn).await
                };
                let result = match tokio::time::timeout(timeout, work).instrument(span).await {
                    // redis-rs reports its own per-reply timeout, which is the connection budget.
                    Ok(r) => r.map_err(|e| {
                        e.or_timeout(self.opts.timeout)
                            .for_user(self.opts.user.as_deref())
                    }),
                    Err(_) => Err(NodeError::Timeout {
                        addr: addr.clone(),
                        after: timeout,
                    }),
                };
                if let Err(e) = &result {
                    tracing::debug!(%addr, error = %e, "node failed");
                    if e.is_unreachable() {
                        self.forget(&addr);
                    }
                }
                (addr, result)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut out = FanOut::default();
        for (addr, r) in results {
            match r {
                Ok(v) => {
                    out.ok.insert(addr, v);
                }
                Err(e) => {
                    out.failed.insert(addr, e);
                }
            }
        }
        out
    }
}

/// Runs one command on a connection, naming the node in any error.
pub async fn query<T: redis::FromRedisValue>(
    addr: &Addr,
    conn: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<T, NodeError> {
    cmd.query_async(conn)
        .await
        .map_err(|e| NodeError::from_redis(addr, &e))
}
