//! The tuning advisor: a table of rules over each node's INFO and CONFIG. Each rule is a
//! plain function from [`NodeFacts`] to an optional [`Hit`] — evidence (the numbers) and,
//! where one exists, the recommended `CONFIG SET` — so rules are tested one by one without a
//! server, and `advise --apply` turns hits into one ordinary config plan.

use rcops_formats::conf::{self, Params};
use rcops_formats::info::Info;
use serde::Serialize;
use std::collections::BTreeMap;

use super::Target;
use crate::ops::check::Severity;

/// What the rules know about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub addr: String,
    pub master: bool,
    pub info: Info,
    pub config: Params,
    /// Nodes of this cluster on the same host (they share its RAM).
    pub nodes_on_host: usize,
    /// For a replica: replication offset gap behind its master.
    pub lag_bytes: Option<u64>,
}

impl NodeFacts {
    fn cfg(&self, p: &str) -> Option<&str> {
        self.config.get(p).map(String::as_str)
    }

    fn cfg_u64(&self, p: &str) -> Option<u64> {
        self.cfg(p).and_then(conf::parse_memory)
    }

    fn cfg_i64(&self, p: &str) -> Option<i64> {
        self.cfg(p)?.trim().parse().ok()
    }

    /// This node's share of the host's RAM: 75% of it split over the nodes on the host.
    fn ram_share(&self) -> Option<u64> {
        let total = self.info.u64("total_system_memory").filter(|&t| t > 0)?;
        Some(total / 4 * 3 / self.nodes_on_host.max(1) as u64)
    }
}

/// A rule's finding on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub evidence: String,
    /// The recommendation in words.
    pub recommendation: String,
    /// The config change that implements it, when there is one.
    pub change: Option<(String, String)>,
    /// Overrides the rule's severity (e.g. memory at 97% is critical, at 85% a warning).
    pub severity: Option<Severity>,
}

fn hit(evidence: String, recommendation: &str, change: Option<(&str, String)>) -> Option<Hit> {
    Some(Hit {
        evidence,
        recommendation: recommendation.to_string(),
        change: change.map(|(p, v)| (p.to_string(), v)),
        severity: None,
    })
}

pub struct Rule {
    pub code: &'static str,
    pub severity: Severity,
    pub title: &'static str,
    pub eval: fn(&NodeFacts) -> Option<Hit>,
}

const MIB: u64 = 1 << 20;

fn mib(b: u64) -> String {
    if b >= 10 * 1024 * MIB {
        format!("{:.1} GiB", b as f64 / (1024 * MIB) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    }
}

/// Rounds down to whole MiB and writes it the way redis.conf does (`1536mb`).
fn mb(b: u64) -> String {
    format!("{}mb", (b / MIB).max(1))
}

/// Every rule, in the order findings are listed within a severity.
pub static RULES: &[Rule] = &[
    Rule {
        code: "maxmemory_unset",
        severity: Severity::Warning,
        title: "maxmemory is not set",
        eval: |f| {
            if f.cfg_u64("maxmemory")? != 0 {
                return None;
            }
            let share = f.ram_share()?;
            hit(
                format!(
                    "maxmemory 0 (unlimited); host RAM {} shared by {} node(s)",
                    mib(f.info.u64("total_system_memory")?),
                    f.nodes_on_host
                ),
                "cap memory below the host's RAM share so the OOM killer never picks redis",
                Some(("maxmemory", mb(share))),
            )
        },
    },
    Rule {
        code: "maxmemory_above_host_share",
        severity: Severity::Warning,
        title: "maxmemory exceeds this node's share of the host's RAM",
        eval: |f| {
            let max = f.cfg_u64("maxmemory").filter(|&m| m > 0)?;
            let share = f.ram_share()?;
            if max <= share {
                return None;
            }
            hit(
                format!(
                    "maxmemory {} > 75% of host RAM / {} node(s) = {}",
                    mib(max),
                    f.nodes_on_host,
                    mib(share)
                ),
                "lower maxmemory to the host share (fork for BGSAVE needs headroom too)",
                Some(("maxmemory", mb(share))),
            )
        },
    },
    Rule {
        code: "noeviction_on_cache",
        severity: Severity::Warning,
        title: "noeviction on a cache-like workload",
        eval: |f| {
            if f.cfg("maxmemory-policy")? != "noeviction" {
                return None;
            }
            let (keys, expires) = (f.info.total_keys(), f.info.total_expires());
            // Most keys expire: the data is a cache, and refusing writes when full hurts more
            // than evicting.
            if keys < 100 || expires * 2 < keys {
                return None;
            }
            hit(
                format!(
                    "maxmemory-policy noeviction; {expires} of {keys} keys ({:.0}%) have a TTL",
                    expires as f64 * 100.0 / keys as f64
                ),
                "evict instead of failing writes when memory is full",
                Some(("maxmemory-policy", "allkeys-lru".into())),
            )
        },
    },
    Rule {
        code: "fragmentation_high",
        severity: Severity::Warning,
        title: "memory fragmentation ratio above 1.5",
        eval: |f| {
            let ratio = f.info.f64("mem_fragmentation_ratio")?;
            let used = f.info.u64("used_memory")?;
            // On a nearly empty node the ratio is noise (allocator baseline vs few bytes).
            if ratio <= 1.5 || used < 64 * MIB {
                return None;
            }
            let change =
                (f.cfg("activedefrag") == Some("no")).then(|| ("activedefrag", "yes".into()));
            hit(
                format!("mem_fragmentation_ratio {ratio:.2} with {} used", mib(used)),
                "enable active defragmentation (or restart the node after a failover)",
                change,
            )
        },
    },
    Rule {
        code: "memory_near_limit",
        severity: Severity::Warning,
        title: "memory above 80% of maxmemory",
        eval: |f| {
            let max = f.cfg_u64("maxmemory").filter(|&m| m > 0)?;
            let used = f.info.u64("used_memory")?;
            let pct = used as f64 * 100.0 / max as f64;
            if pct <= 80.0 {
                return None;
            }
            let mut h = hit(
                format!(
                    "used_memory {} = {pct:.0}% of maxmemory {}",
                    mib(used),
                    mib(max)
                ),
                "add memory or shards, or review what is stored",
                None,
            )?;
            if pct > 95.0 {
                h.severity = Some(Severity::Critical);
            }
            Some(h)
        },
    },
    Rule {
        code: "no_persistence",
        severity: Severity::Warning,
        title: "neither AOF nor RDB snapshots are enabled",
        eval: |f| {
            let aof = f.cfg("appendonly")?;
            let save = f.cfg("save")?;
            if aof != "no" || !save.trim().is_empty() {
                return None;
            }
            hit(
                "appendonly no and save \"\"".into(),
                "a restart of a master and its replica loses everything: enable AOF",
                Some(("appendonly", "yes".into())),
            )
        },
    },
    Rule {
        code: "tcp_keepalive_off",
        severity: Severity::Warning,
        title: "tcp-keepalive is disabled",
        eval: |f| {
            if f.cfg_i64("tcp-keepalive")? != 0 {
                return None;
            }
            hit(
                "tcp-keepalive 0".into(),
                "detect dead peers and keep idle connections through NAT/firewalls",
                Some(("tcp-keepalive", "300".into())),
            )
        },
    },
    Rule {
        code: "replica_buffer_too_small",
        severity: Severity::Warning,
        title: "replica output buffer smaller than the dataset",
        eval: |f| {
            // Judged on the master, whose buffer holds the stream while a replica syncs.
            if !f.master {
                return None;
            }
            let limits = f.cfg("client-output-buffer-limit")?;
            let toks: Vec<&str> = limits.split_whitespace().collect();
            let at = toks.iter().position(|t| *t == "slave" || *t == "replica")?;
            let hard = conf::parse_memory(toks.get(at + 1)?)?;
            let dataset = f
                .info
                .u64("used_memory_dataset")
                .or_else(|| f.info.u64("used_memory"))?;
            if hard == 0 || hard >= dataset / 4 || dataset < 64 * MIB {
                return None;
            }
            // Full syncs of a big dataset write a lot while the RDB transfers: a small hard
            // limit kills the replica link and the sync restarts forever.
            let new_hard = (dataset / 2).max(256 * MIB);
            let mut rewritten: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
            rewritten[at + 1] = mb(new_hard);
            if let Some(soft) = rewritten.get_mut(at + 2) {
                *soft = mb(new_hard / 4);
            }
            hit(
                format!(
                    "replica hard limit {} vs dataset {}",
                    mib(hard),
                    mib(dataset)
                ),
                "raise the replica class limits so a full sync cannot overflow them",
                Some(("client-output-buffer-limit", rewritten.join(" "))),
            )
        },
    },
    Rule {
        code: "slowlog_disabled",
        severity: Severity::Warning,
        title: "the slow log is disabled",
        eval: |f| {
            if f.cfg_i64("slowlog-log-slower-than")? >= 0 {
                return None;
            }
            hit(
                format!(
                    "slowlog-log-slower-than {}",
                    f.cfg("slowlog-log-slower-than")?
                ),
                "log commands slower than 10 ms",
                Some(("slowlog-log-slower-than", "10000".into())),
            )
        },
    },
    Rule {
        code: "fork_slow",
        severity: Severity::Warning,
        title: "the last fork took long",
        eval: |f| {
            let us = f.info.u64("latest_fork_usec")?;
            if us <= 500_000 {
                return None;
            }
            hit(
                format!("latest_fork_usec {us} ({:.0} ms)", us as f64 / 1000.0),
                "forks block the server: smaller shards, no transparent huge pages, faster host",
                None,
            )
        },
    },
    Rule {
        code: "node_timeout_low",
        severity: Severity::Warning,
        title: "cluster-node-timeout is low",
        eval: |f| {
            let t = f.cfg_i64("cluster-node-timeout")?;
            if t >= 5000 {
                return None;
            }
            hit(
                format!("cluster-node-timeout {t} ms"),
                "below 5 s a GC pause, fork or network blip triggers needless failovers",
                Some(("cluster-node-timeout", "15000".into())),
            )
        },
    },
    Rule {
        code: "node_timeout_high",
        severity: Severity::Warning,
        title: "cluster-node-timeout is high",
        eval: |f| {
            let t = f.cfg_i64("cluster-node-timeout")?;
            if t <= 60_000 {
                return None;
            }
            hit(
                format!("cluster-node-timeout {t} ms"),
                "a dead master stays undetected for over a minute",
                Some(("cluster-node-timeout", "15000".into())),
            )
        },
    },
    Rule {
        code: "replica_lagging",
        severity: Severity::Warning,
        title: "replica lags behind its master",
        eval: |f| {
            if f.master {
                return None;
            }
            let link = f.info.get("master_link_status").unwrap_or("up");
            if link != "up" {
                let mut h = hit(
                    format!("master_link_status {link}"),
                    "the replica is not replicating: check the master's reachability and auth",
                    None,
                )?;
                h.severity = Some(Severity::Critical);
                return Some(h);
            }
            let lag = f.lag_bytes?;
            if lag <= MIB {
                return None;
            }
            hit(
                format!("{lag} bytes behind its master"),
                "check the replica's load and network; raise repl-backlog-size if it resyncs",
                None,
            )
        },
    },
    Rule {
        code: "rejected_connections",
        severity: Severity::Warning,
        title: "connections were rejected",
        eval: |f| {
            let n = f.info.u64("rejected_connections").filter(|&n| n > 0)?;
            let max = f.cfg_u64("maxclients")?;
            hit(
                format!("rejected_connections {n} with maxclients {max}"),
                "clients hit maxclients: raise it (and the file-descriptor limit) or pool connections",
                Some(("maxclients", (max * 2).to_string())),
            )
        },
    },
    Rule {
        code: "full_coverage_required",
        severity: Severity::Info,
        title: "cluster-require-full-coverage is on",
        eval: |f| {
            if f.cfg("cluster-require-full-coverage")? != "yes" {
                return None;
            }
            hit(
                "cluster-require-full-coverage yes".into(),
                "one shard losing all its nodes stops the whole cluster; for a cache, consider no",
                None,
            )
        },
    },
];

/// One finding of the advisor.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub code: &'static str,
    pub severity: Severity,
    pub title: &'static str,
    pub node: String,
    pub evidence: String,
    pub recommendation: String,
    /// `[param, value]` of the recommended `CONFIG SET`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<(String, String)>,
}

/// Runs every rule on every node. Findings sorted worst first, then by rule order.
pub fn evaluate(facts: &[NodeFacts]) -> Vec<Advice> {
    let mut out = Vec::new();
    for (order, rule) in RULES.iter().enumerate() {
        for f in facts {
            if let Some(h) = (rule.eval)(f) {
                out.push((
                    order,
                    Advice {
                        code: rule.code,
                        severity: h.severity.unwrap_or(rule.severity),
                        title: rule.title,
                        node: f.addr.clone(),
                        evidence: h.evidence,
                        recommendation: h.recommendation,
                        change: h.change,
                    },
                ));
            }
        }
    }
    out.sort_by(|a, b| b.1.severity.cmp(&a.1.severity).then(a.0.cmp(&b.0)));
    out.into_iter().map(|(_, a)| a).collect()
}

/// Collects facts from a view discovered with [`crate::topology::Detail::Full`] plus
/// `CONFIG GET *` from every target. Nodes that do not answer come back in the map.
pub async fn gather(
    exec: &crate::Executor,
    view: &crate::ClusterView,
    targets: &[Target],
) -> (Vec<NodeFacts>, BTreeMap<crate::Addr, crate::NodeError>) {
    let readings = super::read(exec, targets, &["*".to_string()]).await;
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for t in targets {
        *per_host.entry(t.addr.host.as_str()).or_default() += 1;
    }
    let mut facts = Vec::new();
    for t in targets {
        let (Some(config), Some(snap)) = (readings.nodes.get(&t.addr), view.snapshot(&t.id)) else {
            continue;
        };
        let lag = view.node(&t.id).and_then(|l| view.replica_lag_bytes(l));
        facts.push(NodeFacts {
            addr: t.addr.to_string(),
            master: t.master,
            info: snap.info.clone(),
            config: config.clone(),
            nodes_on_host: per_host.get(t.addr.host.as_str()).copied().unwrap_or(1),
            lag_bytes: if t.master { None } else { lag },
        });
    }
    let mut failed = readings.failed;
    for (a, e) in &view.failed {
        failed.entry(a.clone()).or_insert_with(|| e.clone());
    }
    (facts, failed)
}

/// The recommended changes as desired parameters per node, for a config plan.
pub fn desired(advice: &[Advice], targets: &[Target]) -> BTreeMap<crate::Addr, Params> {
    let mut out: BTreeMap<crate::Addr, Params> = BTreeMap::new();
    for a in advice {
        let Some((p, v)) = &a.change else { continue };
        if let Some(t) = targets.iter().find(|t| t.addr.to_string() == a.node) {
            out.entry(t.addr.clone())
                .or_default()
                .insert(p.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy, well-configured master: no rule fires on it.
    fn healthy() -> NodeFacts {
        let info = Info::parse(
            "# Memory\r\nused_memory:104857600\r\nused_memory_dataset:94371840\r\n\
             mem_fragmentation_ratio:1.10\r\ntotal_system_memory:17179869184\r\n\
             # Persistence\r\nlatest_fork_usec:1200\r\n# Stats\r\nrejected_connections:0\r\n\
             # Keyspace\r\ndb0:keys=1000,expires=10,avg_ttl=0\r\n",
        );
        let config = [
            ("maxmemory", "2gb"),
            ("maxmemory-policy", "noeviction"),
            ("appendonly", "yes"),
            ("save", "3600 1"),
            ("tcp-keepalive", "300"),
            (
                "client-output-buffer-limit",
                "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
            ),
            ("slowlog-log-slower-than", "10000"),
            ("cluster-node-timeout", "15000"),
            ("maxclients", "10000"),
            ("activedefrag", "no"),
            ("cluster-require-full-coverage", "no"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        NodeFacts {
            addr: "127.0.0.1:7000".into(),
            master: true,
            info,
            config,
            nodes_on_host: 2,
            lag_bytes: None,
        }
    }

    fn fire(code: &str, f: &NodeFacts) -> Option<Hit> {
        let rule = RULES.iter().find(|r| r.code == code).unwrap();
        (rule.eval)(f)
    }

    fn set(f: &mut NodeFacts, p: &str, v: &str) {
        f.config.insert(p.into(), v.into());
    }

    #[test]
    fn a_healthy_node_triggers_nothing() {
        assert_eq!(evaluate(&[healthy()]).len(), 0);
    }

    #[test]
    fn maxmemory_rules() {
        let mut f = healthy();
        set(&mut f, "maxmemory", "0");
        let h = fire("maxmemory_unset", &f).unwrap();
        // 16 GiB · 75% / 2 nodes = 6 GiB.
        assert_eq!(h.change, Some(("maxmemory".into(), "6144mb".into())));
        set(&mut f, "maxmemory", "8gb");
        assert!(fire("maxmemory_unset", &f).is_none());
        assert!(fire("maxmemory_above_host_share", &f).is_some());
        set(&mut f, "maxmemory", "6gb");
        assert!(fire("maxmemory_above_host_share", &f).is_none());
    }

    #[test]
    fn noeviction_only_matters_for_caches() {
        let mut f = healthy();
        assert!(fire("noeviction_on_cache", &f).is_none());
        f.info = Info::parse("# Keyspace\r\ndb0:keys=1000,expires=900,avg_ttl=5\r\n");
        let h = fire("noeviction_on_cache", &f).unwrap();
        assert_eq!(h.change.unwrap().1, "allkeys-lru");
    }

    #[test]
    fn fragmentation_needs_a_real_dataset() {
        let mut f = healthy();
        f.info =
            Info::parse("# Memory\r\nused_memory:104857600\r\nmem_fragmentation_ratio:1.8\r\n");
        assert_eq!(
            fire("fragmentation_high", &f).unwrap().change,
            Some(("activedefrag".into(), "yes".into()))
        );
        f.info = Info::parse("# Memory\r\nused_memory:1048576\r\nmem_fragmentation_ratio:9\r\n");
        assert!(fire("fragmentation_high", &f).is_none());
    }

    #[test]
    fn memory_near_limit_escalates() {
        let mut f = healthy();
        set(&mut f, "maxmemory", "110mb");
        let h = fire("memory_near_limit", &f).unwrap();
        assert_eq!(h.severity, None);
        set(&mut f, "maxmemory", "101mb");
        assert_eq!(
            fire("memory_near_limit", &f).unwrap().severity,
            Some(Severity::Critical)
        );
    }

    #[test]
    fn no_persistence_recommends_aof() {
        let mut f = healthy();
        set(&mut f, "appendonly", "no");
        assert!(fire("no_persistence", &f).is_none());
        set(&mut f, "save", "");
        assert_eq!(
            fire("no_persistence", &f).unwrap().change,
            Some(("appendonly".into(), "yes".into()))
        );
    }

    #[test]
    fn keepalive_slowlog_and_node_timeout() {
        let mut f = healthy();
        set(&mut f, "tcp-keepalive", "0");
        set(&mut f, "slowlog-log-slower-than", "-1");
        set(&mut f, "cluster-node-timeout", "2000");
        assert!(fire("tcp_keepalive_off", &f).is_some());
        assert!(fire("slowlog_disabled", &f).is_some());
        assert!(fire("node_timeout_low", &f).is_some());
        assert!(fire("node_timeout_high", &f).is_none());
        set(&mut f, "cluster-node-timeout", "120000");
        assert!(fire("node_timeout_high", &f).is_some());
    }

    #[test]
    fn replica_buffer_scales_with_the_dataset() {
        let mut f = healthy();
        f.info =
            Info::parse("# Memory\r\nused_memory:4294967296\r\nused_memory_dataset:4294967296\r\n");
        let h = fire("replica_buffer_too_small", &f).unwrap();
        let (p, v) = h.change.unwrap();
        assert_eq!(p, "client-output-buffer-limit");
        assert_eq!(
            v,
            "normal 0 0 0 slave 2048mb 512mb 60 pubsub 33554432 8388608 60"
        );
        f.master = false;
        assert!(fire("replica_buffer_too_small", &f).is_none());
    }

    #[test]
    fn fork_lag_rejections_and_coverage() {
        let mut f = healthy();
        f.info = Info::parse(
            "# Persistence\r\nlatest_fork_usec:900000\r\n# Stats\r\nrejected_connections:5\r\n",
        );
        assert!(fire("fork_slow", &f).is_some());
        assert_eq!(
            fire("rejected_connections", &f).unwrap().change,
            Some(("maxclients".into(), "20000".into()))
        );
        set(&mut f, "cluster-require-full-coverage", "yes");
        assert!(fire("full_coverage_required", &f).is_some());
        f.master = false;
        f.lag_bytes = Some(10 * MIB);
        assert!(fire("replica_lagging", &f).is_some());
        f.info = Info::parse("# Replication\r\nmaster_link_status:down\r\n");
        assert_eq!(
            fire("replica_lagging", &f).unwrap().severity,
            Some(Severity::Critical)
        );
    }

    #[test]
    fn every_rule_has_a_test_above() {
        let src = include_str!("advise.rs");
        let tests = &src[src.find("mod tests").unwrap()..];
        for r in RULES {
            assert!(
                tests.contains(&format!("\"{}\"", r.code)),
                "{} untested",
                r.code
            );
        }
    }
}
