//! `info`: a per-node health summary from `INFO` — version, memory, clients, traffic,
//! keyspace, replication and persistence — or one raw INFO section from every node.

use rcops_formats::info::Info;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::fanout::{query, Executor};
use crate::node::Addr;
use crate::topology::{line_addr, ClusterView};

/// One node's summary. Fields are `null` when the server does not report them.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub addr: String,
    pub id: String,
    pub role: String,
    pub version: Option<String>,
    pub uptime_s: Option<u64>,
    pub used_memory: Option<u64>,
    pub used_memory_peak: Option<u64>,
    pub maxmemory: Option<u64>,
    pub fragmentation: Option<f64>,
    pub clients: Option<u64>,
    pub blocked_clients: Option<u64>,
    pub ops_per_sec: Option<u64>,
    pub total_commands: Option<u64>,
    pub hits: Option<u64>,
    pub misses: Option<u64>,
    /// hits / (hits + misses), percent; null before any lookup.
    pub hit_rate_pct: Option<f64>,
    pub keys: u64,
    pub expires: u64,
    pub evicted: Option<u64>,
    pub expired: Option<u64>,
    pub repl_offset: Option<u64>,
    /// Replicas: bytes behind the master.
    pub lag_bytes: Option<u64>,
    pub master_link: Option<String>,
    pub rdb_last_bgsave: Option<String>,
    pub rdb_changes_since_save: Option<u64>,
    pub rdb_last_save_time: Option<u64>,
    pub aof_enabled: Option<bool>,
    pub aof_last_write: Option<String>,
    pub loading: bool,
    pub rejected_connections: Option<u64>,
    pub net_input_bytes: Option<u64>,
    pub net_output_bytes: Option<u64>,
    /// Duration of the last fork (BGSAVE/AOF rewrite), microseconds.
    pub latest_fork_usec: Option<u64>,
    /// Set when the node could not be read; every other field is then empty.
    pub error: Option<String>,
    /// Every parsed INFO field, when asked for (`--raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Info>,
}

impl NodeInfo {
    fn unreachable(addr: String, id: String, role: &str, error: String) -> NodeInfo {
        NodeInfo::from_info(addr, id, role, &Info::default(), None, false, Some(error))
    }

    pub(crate) fn from_info(
        addr: String,
        id: String,
        role: &str,
        i: &Info,
        lag_bytes: Option<u64>,
        raw: bool,
        error: Option<String>,
    ) -> NodeInfo {
        let hits = i.u64("keyspace_hits");
        let misses = i.u64("keyspace_misses");
        let hit_rate_pct = match (hits, misses) {
            (Some(h), Some(m)) if h + m > 0 => Some(super::pct(h as f64, (h + m) as f64)),
            _ => None,
        };
        let replica = i.get("role") == Some("slave");
        NodeInfo {
            addr,
            id,
            role: role.to_string(),
            // Valkey also reports a `redis_version` (the protocol level it mimics); its own wins.
            version: i
                .get("valkey_version")
                .or_else(|| i.get("redis_version"))
                .map(str::to_string),
            uptime_s: i.u64("uptime_in_seconds"),
            used_memory: i.u64("used_memory"),
            used_memory_peak: i.u64("used_memory_peak"),
            maxmemory: i.u64("maxmemory"),
            fragmentation: i.f64("mem_fragmentation_ratio"),
            clients: i.u64("connected_clients"),
            blocked_clients: i.u64("blocked_clients"),
            ops_per_sec: i.u64("instantaneous_ops_per_sec"),
            total_commands: i.u64("total_commands_processed"),
            hits,
            misses,
            hit_rate_pct,
            keys: i.total_keys(),
            expires: i.total_expires(),
            evicted: i.u64("evicted_keys"),
            expired: i.u64("expired_keys"),
            repl_offset: if replica {
                i.u64("slave_repl_offset")
            } else {
                i.u64("master_repl_offset")
            },
            lag_bytes,
            master_link: i.get("master_link_status").map(str::to_string),
            rdb_last_bgsave: i.get("rdb_last_bgsave_status").map(str::to_string),
            rdb_changes_since_save: i.u64("rdb_changes_since_last_save"),
            rdb_last_save_time: i.u64("rdb_last_save_time"),
            aof_enabled: i.u64("aof_enabled").map(|v| v == 1),
            aof_last_write: i.get("aof_last_write_status").map(str::to_string),
            loading: i.u64("loading") == Some(1),
            rejected_connections: i.u64("rejected_connections"),
            net_input_bytes: i.u64("total_net_input_bytes"),
            net_output_bytes: i.u64("total_net_output_bytes"),
            latest_fork_usec: i.u64("latest_fork_usec"),
            error,
            raw: raw.then(|| i.clone()),
        }
    }
}

/// Summaries for every node of the view (or those matching `filter`), from the snapshots
/// discovery already fetched: no extra round trip.
pub fn summary(view: &ClusterView, filter: &[String], raw: bool) -> Vec<NodeInfo> {
    let mut out: Vec<NodeInfo> = view
        .select(filter)
        .map(|l| {
            let role = if l.master_id.is_some() {
                "replica"
            } else {
                "master"
            };
            match view.snapshot(&l.id) {
                Some(s) => NodeInfo::from_info(
                    l.addr(),
                    l.id.clone(),
                    role,
                    &s.info,
                    view.replica_lag_bytes(l),
                    raw,
                    None,
                ),
                None => NodeInfo::unreachable(
                    l.addr(),
                    l.id.clone(),
                    role,
                    view.error_for(l)
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "not read".to_string()),
                ),
            }
        })
        .collect();
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out
}

/// One raw INFO section from the selected nodes: node → field → value; failures as errors.
#[derive(Debug, Serialize)]
pub struct SectionReport {
    pub section: String,
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    pub errors: BTreeMap<String, String>,
}

/// Fetches `INFO <section>` (e.g. `commandstats`, `all`) from the selected nodes concurrently.
pub async fn section(
    exec: &Executor,
    view: &ClusterView,
    filter: &[String],
    section: &str,
) -> SectionReport {
    let addrs: Vec<Addr> = view
        .select(filter)
        .filter(|l| l.dialable())
        .filter_map(line_addr)
        .collect();
    let name = section.to_string();
    let result = exec
        .run(addrs, |addr, mut conn| {
            let name = name.clone();
            async move {
                let text: String = query(&addr, &mut conn, redis::cmd("INFO").arg(&name)).await?;
                Ok(Info::parse(&text))
            }
        })
        .await;
    SectionReport {
        section: section.to_string(),
        nodes: result
            .ok
            .into_iter()
            .map(|(a, info)| {
                let fields = info.sections.into_values().flatten().collect();
                (a.to_string(), fields)
            })
            .collect(),
        errors: result
            .failed
            .into_iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect(),
    }
}
