//! `metrics`: one snapshot of every node's operational numbers (the per-node rows of
//! [`super::info`]) plus cluster aggregates, and rates from counter deltas between two
//! snapshots for `--watch`.

use serde::Serialize;
use std::collections::BTreeMap;

use super::info::{summary, NodeInfo};
use crate::topology::ClusterView;

/// Cluster-wide sums. Keys count masters only (replicas hold copies); the hit rate is
/// weighted by traffic — total hits over total lookups — not an average of node rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterTotals {
    pub nodes: usize,
    pub up: usize,
    pub used_memory: u64,
    pub maxmemory: u64,
    pub ops_per_sec: u64,
    /// Commands per second from counter deltas (`--watch`), when a previous snapshot exists.
    pub ops_per_sec_measured: Option<f64>,
    pub total_commands: u64,
    pub keys: u64,
    pub expires: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate_pct: Option<f64>,
    pub evicted: u64,
    pub expired: u64,
    pub rejected_connections: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
    pub clients: u64,
}

/// One node's row plus its measured rate.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Commands per second from `total_commands_processed` deltas, when measured.
    pub ops_per_sec_measured: Option<f64>,
}

/// JSON: `{"at_unix_ms", "nodes": [NodeInfo fields + "ops_per_sec_measured"], "cluster": ClusterTotals}`.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsReport {
    pub at_unix_ms: u128,
    pub nodes: Vec<NodeMetrics>,
    pub cluster: ClusterTotals,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Builds the snapshot from a view discovered with full INFO.
pub fn metrics(view: &ClusterView) -> MetricsReport {
    let nodes: Vec<NodeMetrics> = summary(view, &[], false)
        .into_iter()
        .map(|info| NodeMetrics {
            info,
            ops_per_sec_measured: None,
        })
        .collect();
    let cluster = totals(&nodes);
    MetricsReport {
        at_unix_ms: now_ms(),
        nodes,
        cluster,
    }
}

/// Sums over the nodes that answered.
pub fn totals(nodes: &[NodeMetrics]) -> ClusterTotals {
    let mut t = ClusterTotals {
        nodes: nodes.len(),
        ..Default::default()
    };
    let mut measured: Option<f64> = None;
    for n in nodes.iter().filter(|n| n.info.error.is_none()) {
        let i = &n.info;
        t.up += 1;
        t.used_memory += i.used_memory.unwrap_or(0);
        t.maxmemory += i.maxmemory.unwrap_or(0);
        t.ops_per_sec += i.ops_per_sec.unwrap_or(0);
        t.total_commands += i.total_commands.unwrap_or(0);
        if i.role == "master" {
            t.keys += i.keys;
            t.expires += i.expires;
        }
        t.hits += i.hits.unwrap_or(0);
        t.misses += i.misses.unwrap_or(0);
        t.evicted += i.evicted.unwrap_or(0);
        t.expired += i.expired.unwrap_or(0);
        t.rejected_connections += i.rejected_connections.unwrap_or(0);
        t.net_input_bytes += i.net_input_bytes.unwrap_or(0);
        t.net_output_bytes += i.net_output_bytes.unwrap_or(0);
        t.clients += i.clients.unwrap_or(0);
        if let Some(r) = n.ops_per_sec_measured {
            *measured.get_or_insert(0.0) += r;
        }
    }
    let lookups = t.hits + t.misses;
    t.hit_rate_pct = (lookups > 0).then(|| super::pct(t.hits as f64, lookups as f64));
    t.ops_per_sec_measured = measured;
    t
}

/// Fills in measured rates from the counters of an earlier snapshot of the same nodes
/// (matched by node id; a restarted node, whose counter went down, gets no rate).
pub fn apply_deltas(prev: &MetricsReport, cur: &mut MetricsReport) {
    let dt = (cur.at_unix_ms.saturating_sub(prev.at_unix_ms)) as f64 / 1000.0;
    if dt <= 0.0 {
        return;
    }
    let before: BTreeMap<&str, u64> = prev
        .nodes
        .iter()
        .filter_map(|n| Some((n.info.id.as_str(), n.info.total_commands?)))
        .collect();
    for n in &mut cur.nodes {
        if let (Some(&b), Some(now)) = (before.get(n.info.id.as_str()), n.info.total_commands) {
            if now >= b {
                n.ops_per_sec_measured = Some(((now - b) as f64 / dt * 10.0).round() / 10.0);
            }
        }
    }
    cur.cluster = totals(&cur.nodes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcops_formats::info::Info;

    fn node(id: &str, role: &str, info: &str) -> NodeMetrics {
        NodeMetrics {
            info: NodeInfo::from_info(
                format!("10.0.0.1:{}", id.len()),
                id.to_string(),
                role,
                &Info::parse(info),
                None,
                false,
                None,
            ),
            ops_per_sec_measured: None,
        }
    }

    #[test]
    fn hit_rate_is_weighted_by_traffic_and_keys_count_masters_only() {
        // A busy node with a 90% hit rate and an idle one with 0%: the cluster rate is
        // 900/1001, not the 45% an average of rates would claim.
        let nodes = vec![
            node(
                "a",
                "master",
                "keyspace_hits:900\nkeyspace_misses:100\n# Keyspace\ndb0:keys=10,expires=1\n",
            ),
            node(
                "bb",
                "replica",
                "keyspace_hits:0\nkeyspace_misses:1\n# Keyspace\ndb0:keys=10,expires=1\n",
            ),
        ];
        let t = totals(&nodes);
        assert_eq!(t.hit_rate_pct, Some(89.9));
        assert_eq!((t.keys, t.expires, t.up), (10, 1, 2));
    }

    #[test]
    fn rates_come_from_counter_deltas_and_skip_restarted_nodes() {
        let prev = MetricsReport {
            at_unix_ms: 1_000,
            nodes: vec![
                node("a", "master", "total_commands_processed:1000\n"),
                node("bb", "master", "total_commands_processed:5000\n"),
            ],
            cluster: ClusterTotals::default(),
        };
        let mut cur = MetricsReport {
            at_unix_ms: 3_000,
            nodes: vec![
                node("a", "master", "total_commands_processed:3000\n"),
                node("bb", "master", "total_commands_processed:10\n"),
            ],
            cluster: ClusterTotals::default(),
        };
        apply_deltas(&prev, &mut cur);
        assert_eq!(cur.nodes[0].ops_per_sec_measured, Some(1000.0));
        assert_eq!(cur.nodes[1].ops_per_sec_measured, None);
        assert_eq!(cur.cluster.ops_per_sec_measured, Some(1000.0));
    }
}
