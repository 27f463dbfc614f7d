//! rcops-core: the library behind the `rcops` binary and its server.
//!
//! # Layout
//! - [`node`]: addresses, credentials, TLS, connecting, and [`node::NodeError`].
//! - [`fanout`]: the executor that runs one job per node concurrently with timeouts.
//! - [`transport`]: the raw bulk connection (pre-encoded RESP out, framed replies in).
//! - [`writer`]: the slot writer, the one place that writes into a cluster.
//! - [`route`]: commands of a stream or an AOF turned into slot writes.
//! - [`scan`]: the scan stream (one node's keys by `SCAN`, paced, resumable).
//! - [`repl`]: the replication client (`PSYNC`, snapshot, command stream, ACKs).
//! - [`topology`]: discovery and the [`topology::ClusterView`] model.
//! - [`job`]: the job contract (cancellation, progress, outcome, checkpoint files).
//! - [`ops`]: one module per capability (`check`, `nodes`, `slots`, `info`), each a plain
//!   async function over an executor and a view, returning a serialisable report.
//! - [`lab`]: starts and stops local clusters of real `redis-server` processes.

pub mod fanout;
pub mod job;
pub mod lab;
pub mod node;
pub mod ops;
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
