//! rcops-core: rcops's capabilities — [`ops`], one module per capability (check, metrics,
//! config, backup, restore, migrate, verify, …), each a library function taking options and
//! a job context and returning a serialisable report — over the cluster access of
//! rcops-cluster (re-exported here). The CLI and the server call the same functions; the lab
//! (rcops-lab) is not linked by the server.

pub mod ops;

// Cluster access lives in rcops-cluster; its modules are re-exported so `rcops_core::node`
// and the like keep naming them.
pub use rcops_cluster::{fanout, job, node, repl, route, scan, topology, transport, writer};

pub use fanout::{Executor, FanOut};
pub use node::{Addr, ConnectOptions, NodeError, Secret, TlsOptions};
pub use topology::{
    discover, discover_light, discover_seeds, discover_with, ClusterView, Follow, NodeSnapshot,
};
