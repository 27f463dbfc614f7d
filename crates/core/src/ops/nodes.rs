//! `nodes`: the topology as a tree — each master with its replicas, their flags, slots,
//! link state and replication offsets.

use rcops_formats::cluster_nodes::NodeLine;
use rcops_formats::slot::format_ranges;
use serde::Serialize;

use crate::topology::ClusterView;

/// One node in the tree.
#[derive(Debug, Clone, Serialize)]
pub struct NodeEntry {
    pub id: String,
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `master` or `replica`.
    pub role: &'static str,
    pub flags: String,
    pub slots: usize,
    /// Slot ranges in `CLUSTER NODES` notation, `-` when none.
    pub ranges: String,
    /// Cluster bus link as the reference view sees it: `connected` or `disconnected`.
    pub link: &'static str,
    /// Whether rcops could read the node itself.
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repl_offset: Option<u64>,
    /// Bytes behind the master (replicas only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// `master_link_status` (replicas only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_link: Option<String>,
}

/// A master and its replicas.
#[derive(Debug, Clone, Serialize)]
pub struct Shard {
    pub master: NodeEntry,
    pub replicas: Vec<NodeEntry>,
}

/// JSON: `{"shards": [{"master": NodeEntry, "replicas": [NodeEntry]}], "orphans": [NodeEntry]}`;
/// orphans are replicas whose master is not in the view.
#[derive(Debug, Clone, Serialize)]
pub struct NodesReport {
    pub shards: Vec<Shard>,
    pub orphans: Vec<NodeEntry>,
}

fn entry(view: &ClusterView, line: &NodeLine) -> NodeEntry {
    let snap = view.snapshot(&line.id);
    let replica = line.master_id.is_some();
    NodeEntry {
        id: line.id.clone(),
        addr: line.addr(),
        hostname: line.hostname.clone(),
        role: if replica { "replica" } else { "master" },
        flags: line.flags.render(),
        slots: line.slot_count(),
        ranges: format_ranges(&line.slots),
        link: if line.connected {
            "connected"
        } else {
            "disconnected"
        },
        reachable: snap.is_some(),
        error: view.error_for(line).map(ToString::to_string),
        repl_offset: snap.and_then(|s| {
            s.info
                .u64("slave_repl_offset")
                .filter(|_| replica)
                .or_else(|| s.info.u64("master_repl_offset"))
        }),
        lag_bytes: if replica {
            view.replica_lag_bytes(line)
        } else {
            None
        },
        master_link: snap
            .filter(|_| replica)
            .and_then(|s| s.info.get("master_link_status"))
            .map(str::to_string),
    }
}

/// Builds the tree from a view; masters sorted by first slot, then address.
pub fn nodes(view: &ClusterView) -> NodesReport {
    let masters = view.masters_by_slot();
    let shards = masters
        .iter()
        .map(|m| Shard {
            master: entry(view, m),
            replicas: view.replicas_of(&m.id).map(|r| entry(view, r)).collect(),
        })
        .collect();
    let orphans = view
        .nodes
        .iter()
        .filter(|l| {
            !(l.flags.master && l.master_id.is_none())
                && l.master_id
                    .as_deref()
                    .is_none_or(|m| view.node(m).is_none())
        })
        .map(|l| entry(view, l))
        .collect();
    NodesReport { shards, orphans }
}
