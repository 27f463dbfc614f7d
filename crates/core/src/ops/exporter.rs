//! `exporter`: one Prometheus scrape of the whole cluster — every node read concurrently in
//! one pass — encoded as OpenMetrics text with redis_exporter-compatible names and labels
//! `node`, `role`, `shard`, plus cluster-level `rcops_*` series.
//!
//! All metric names live in the tables below.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rcops_formats::info::Info;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::fanout::Executor;
use crate::node::Addr;
use crate::topology::{discover, ClusterView, Detail};

type G = Gauge<f64, AtomicU64>;
type C = Counter<f64, AtomicU64>;

/// Gauges copied from one INFO field: (name, help, field).
const GAUGES: &[(&str, &str, &str)] = &[
    (
        "redis_uptime_in_seconds",
        "Seconds since the server started",
        "uptime_in_seconds",
    ),
    (
        "redis_memory_used_bytes",
        "Memory used by the dataset and server",
        "used_memory",
    ),
    (
        "redis_memory_used_peak_bytes",
        "Peak memory used",
        "used_memory_peak",
    ),
    (
        "redis_memory_used_rss_bytes",
        "Resident set size of the server",
        "used_memory_rss",
    ),
    (
        "redis_memory_max_bytes",
        "maxmemory setting (0: unlimited)",
        "maxmemory",
    ),
    (
        "redis_mem_fragmentation_ratio",
        "RSS over used memory",
        "mem_fragmentation_ratio",
    ),
    (
        "redis_connected_clients",
        "Client connections",
        "connected_clients",
    ),
    (
        "redis_blocked_clients",
        "Clients blocked on a blocking call",
        "blocked_clients",
    ),
    (
        "redis_instantaneous_ops_per_sec",
        "Commands per second, sampled by the server",
        "instantaneous_ops_per_sec",
    ),
    (
        "redis_connected_slaves",
        "Replicas connected to this node",
        "connected_slaves",
    ),
    (
        "redis_master_repl_offset",
        "Replication offset",
        "master_repl_offset",
    ),
    (
        "redis_aof_enabled",
        "AOF enabled (1) or not (0)",
        "aof_enabled",
    ),
    (
        "redis_loading_dump_file",
        "Loading a dataset (1) or not (0)",
        "loading",
    ),
    (
        "redis_rdb_changes_since_last_save",
        "Writes since the last RDB save",
        "rdb_changes_since_last_save",
    ),
];

/// Counters copied from one INFO field: (name without `_total`, help, field).
const COUNTERS: &[(&str, &str, &str)] = &[
    (
        "redis_commands_processed",
        "Commands processed",
        "total_commands_processed",
    ),
    (
        "redis_connections_received",
        "Connections accepted",
        "total_connections_received",
    ),
    (
        "redis_rejected_connections",
        "Connections rejected (maxclients)",
        "rejected_connections",
    ),
    (
        "redis_keyspace_hits",
        "Successful key lookups",
        "keyspace_hits",
    ),
    (
        "redis_keyspace_misses",
        "Failed key lookups",
        "keyspace_misses",
    ),
    (
        "redis_evicted_keys",
        "Keys evicted by maxmemory",
        "evicted_keys",
    ),
    ("redis_expired_keys", "Keys expired", "expired_keys"),
    (
        "redis_net_input_bytes",
        "Bytes read from the network",
        "total_net_input_bytes",
    ),
    (
        "redis_net_output_bytes",
        "Bytes written to the network",
        "total_net_output_bytes",
    ),
];

/// Per-node gauges from `CLUSTER INFO`: (name, help, field).
const CLUSTER_INFO_GAUGES: &[(&str, &str, &str)] = &[
    (
        "redis_cluster_slots_assigned",
        "Slots assigned, as this node sees it",
        "cluster_slots_assigned",
    ),
    (
        "redis_cluster_slots_ok",
        "Slots served, as this node sees it",
        "cluster_slots_ok",
    ),
    (
        "redis_cluster_slots_pfail",
        "Slots on suspected nodes",
        "cluster_slots_pfail",
    ),
    (
        "redis_cluster_slots_fail",
        "Slots on failed nodes",
        "cluster_slots_fail",
    ),
    (
        "redis_cluster_known_nodes",
        "Nodes this node knows",
        "cluster_known_nodes",
    ),
    (
        "redis_cluster_size",
        "Masters serving slots",
        "cluster_size",
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    role: String,
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    node: String,
    role: String,
    shard: String,
    db: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
    master: String,
}

/// What survives between scrapes.
#[derive(Debug, Default)]
pub struct ExporterState {
    scrape_errors: AtomicU64,
    scrapes: AtomicU64,
}

impl ExporterState {
    pub fn scrape_errors(&self) -> u64 {
        self.scrape_errors.load(Ordering::Relaxed)
    }
}

/// Families keyed by metric name, registered once filled.
#[derive(Default)]
struct Families {
    node_gauges: BTreeMap<&'static str, (&'static str, Family<NodeLabels, G>)>,
    node_counters: BTreeMap<&'static str, (&'static str, Family<NodeLabels, C>)>,
}

impl Families {
    fn gauge(&mut self, name: &'static str, help: &'static str, l: &NodeLabels, v: f64) {
        let (_, f) = self
            .node_gauges
            .entry(name)
            .or_insert_with(|| (help, Family::default()));
        f.get_or_create(l).set(v);
    }

    fn counter(&mut self, name: &'static str, help: &'static str, l: &NodeLabels, v: f64) {
        let (_, f) = self
            .node_counters
            .entry(name)
            .or_insert_with(|| (help, Family::default()));
        f.get_or_create(l).inc_by(v);
    }

    fn register(self, reg: &mut Registry) {
        for (name, (help, f)) in self.node_gauges {
            reg.register(name, help, f);
        }
        for (name, (help, f)) in self.node_counters {
            reg.register(name, help, f);
        }
    }
}

fn flag(info: &Info, field: &str, yes: &str) -> Option<f64> {
    info.get(field).map(|v| f64::from(u8::from(v == yes)))
}

/// `redis_db_keys` and `redis_db_keys_expiring`, labelled by database like redis_exporter.
#[derive(Default)]
struct DbFamilies {
    keys: Family<DbLabels, G>,
    expiring: Family<DbLabels, G>,
}

fn node_series(view: &ClusterView, fam: &mut Families, dbs: &DbFamilies) {
    for line in view.nodes.iter().filter(|l| l.dialable()) {
        let replica = line.master_id.is_some();
        let labels = NodeLabels {
            node: line.addr(),
            role: if replica { "replica" } else { "master" }.to_string(),
            shard: line.master_id.clone().unwrap_or_else(|| line.id.clone()),
        };
        let Some(snap) = view.snapshot(&line.id) else {
            fam.gauge(
                "redis_up",
                "Node answered this scrape (1) or not (0)",
                &labels,
                0.0,
            );
            continue;
        };
        fam.gauge(
            "redis_up",
            "Node answered this scrape (1) or not (0)",
            &labels,
            1.0,
        );
        let info = &snap.info;
        for (name, help, field) in GAUGES {
            if let Some(v) = info.f64(field) {
                fam.gauge(name, help, &labels, v);
            }
        }
        for (name, help, field) in COUNTERS {
            if let Some(v) = info.f64(field) {
                fam.counter(name, help, &labels, v);
            }
        }
        for (name, help, field) in CLUSTER_INFO_GAUGES {
            if let Some(v) = snap.cluster_info.f64(field) {
                fam.gauge(name, help, &labels, v);
            }
        }
        let computed = [
            (
                "redis_cluster_state",
                "cluster_state ok (1) or fail (0)",
                flag(&snap.cluster_info, "cluster_state", "ok"),
            ),
            (
                "redis_rdb_last_bgsave_status",
                "Last RDB save succeeded (1) or not (0)",
                flag(info, "rdb_last_bgsave_status", "ok"),
            ),
            (
                "redis_master_link_up",
                "Replica link to its master up (1) or down (0)",
                flag(info, "master_link_status", "up"),
            ),
            (
                "redis_latest_fork_seconds",
                "Duration of the last fork",
                info.f64("latest_fork_usec").map(|u| u / 1e6),
            ),
            (
                "rcops_replica_lag_bytes",
                "Replication offset gap behind the master",
                view.replica_lag_bytes(line).map(|b| b as f64),
            ),
        ];
        for (name, help, v) in computed {
            if let Some(v) = v {
                fam.gauge(name, help, &labels, v);
            }
        }
        for db in info.keyspace() {
            let l = DbLabels {
                node: labels.node.clone(),
                role: labels.role.clone(),
                shard: labels.shard.clone(),
                db: format!("db{}", db.db),
            };
            dbs.keys.get_or_create(&l).set(db.keys as f64);
            dbs.expiring.get_or_create(&l).set(db.expires as f64);
        }
    }
}

fn cluster_series(view: &ClusterView, reg: &mut Registry) {
    let gauge = |v: f64| {
        let g = G::default();
        g.set(v);
        g
    };
    let nodes = view.nodes.iter().filter(|l| l.dialable()).count();
    reg.register(
        "rcops_cluster_nodes",
        "Nodes in the cluster's reference view",
        gauge(nodes as f64),
    );
    reg.register(
        "rcops_cluster_nodes_unreachable",
        "Nodes that did not answer this scrape",
        gauge(view.failed.len() as f64),
    );
    reg.register(
        "rcops_cluster_masters",
        "Masters in the reference view",
        gauge(view.masters().count() as f64),
    );
    reg.register(
        "rcops_cluster_slots_covered",
        "Slots served by some master",
        gauge(view.covered().len() as f64),
    );
    reg.register(
        "rcops_cluster_config_views",
        "Distinct configurations the nodes report (1 when they agree)",
        gauge(view.signatures.len() as f64),
    );
    let replicas: Family<ShardLabels, G> = Family::default();
    for m in view.masters().filter(|m| m.slot_count() > 0) {
        let n = view.replicas_of(&m.id).filter(|r| !r.flags.fail).count();
        replicas
            .get_or_create(&ShardLabels {
                shard: m.id.clone(),
                master: m.addr(),
            })
            .set(n as f64);
    }
    reg.register(
        "rcops_shard_replicas",
        "Working replicas per shard",
        replicas,
    );
}

/// Scrapes every node of the cluster and returns OpenMetrics text. Never fails: nodes that
/// do not answer are `redis_up 0`, and a cluster that cannot be reached at all still yields
/// `redis_up 0` for each seed and a bumped `rcops_scrape_errors_total`.
pub async fn scrape(exec: &Executor, seeds: &[Addr], state: &ExporterState) -> String {
    let started = Instant::now();
    state.scrapes.fetch_add(1, Ordering::Relaxed);
    let mut reg = Registry::default();
    let mut fam = Families::default();
    let dbs = DbFamilies::default();
    match discover(exec, seeds, Detail::Full).await {
        Ok(view) => {
            state
                .scrape_errors
                .fetch_add(view.failed.len() as u64, Ordering::Relaxed);
            node_series(&view, &mut fam, &dbs);
            // Nodes that failed but are not in the reference view (e.g. a dead seed the
            // cluster still lists elsewhere) are covered by the view's lines above.
            cluster_series(&view, &mut reg);
        }
        Err(e) => {
            tracing::warn!(error = %e, "scrape failed");
            state.scrape_errors.fetch_add(1, Ordering::Relaxed);
            for s in seeds {
                let l = NodeLabels {
                    node: s.to_string(),
                    role: "unknown".into(),
                    shard: String::new(),
                };
                fam.gauge(
                    "redis_up",
                    "Node answered this scrape (1) or not (0)",
                    &l,
                    0.0,
                );
            }
        }
    }
    fam.register(&mut reg);
    reg.register("redis_db_keys", "Keys per database", dbs.keys);
    reg.register(
        "redis_db_keys_expiring",
        "Keys with an expiry per database",
        dbs.expiring,
    );
    let duration = G::default();
    duration.set(started.elapsed().as_secs_f64());
    reg.register_with_unit(
        "rcops_scrape_duration",
        "How long this scrape took",
        prometheus_client::registry::Unit::Seconds,
        duration,
    );
    let errors = C::default();
    errors.inc_by(state.scrape_errors() as f64);
    reg.register(
        "rcops_scrape_errors",
        "Nodes (or whole clusters) that failed a scrape",
        errors,
    );
    let scrapes = C::default();
    scrapes.inc_by(state.scrapes.load(Ordering::Relaxed) as f64);
    reg.register("rcops_scrapes", "Scrapes served", scrapes);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}
