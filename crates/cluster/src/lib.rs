//! rcops-cluster: access to a Redis Cluster (or a standalone server seen as a one-shard
//! cluster) — everything rcops's capabilities are built on, with no capability in it.
//!
//! # Layout
//! - [`node`]: addresses, credentials, TLS, connecting, and [`node::NodeError`].
//! - [`fanout`]: the executor that runs one job per node concurrently with timeouts.
//! - [`transport`]: the raw bulk connection (pre-encoded RESP out, framed replies in).
//! - [`topology`]: discovery and the [`topology::ClusterView`] model.
//! - [`writer`]: the slot writer, the one place that writes into a cluster.
//! - [`route`]: commands of a stream or an AOF turned into slot writes.
//! - [`scan`]: the scan stream (one node's keys by `SCAN`, paced, resumable).
//! - [`repl`]: the replication client (`PSYNC`, snapshot, command stream, ACKs).
//! - [`job`]: the job contract (cancellation, progress, outcome, error classes, checkpoint
//!   files).

pub mod fanout;
pub mod job;
pub mod node;
pub mod repl;
pub mod route;
pub mod scan;
pub mod topology;
pub mod transport;
pub mod writer;

pub use fanout::{Executor, FanOut};
pub use node::{Addr, ConnectOptions, NodeError, Secret, TlsOptions};
pub use topology::{
    discover, discover_light, discover_seeds, discover_with, ClusterView, Follow, NodeSnapshot,
};
