//! `latency`: per-node round-trip latency — one request at a time per node, all nodes at
//! once — recorded in HDR histograms. Masters answer `SET`+`GET` of a probe key that lives
//! in one of their own slots; replicas answer `GET` of their master's probe key (after
//! `READONLY`). Probe keys sit under [`KEY_PREFIX`], carry a short TTL as a safety net, and
//! are deleted at the end, also when the run is stopped early.

use crate::job::CancellationToken;
use hdrhistogram::Histogram;
use rcops_formats::slot::key_slot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{rtt_histogram, Percentiles};
use crate::fanout::{query, Executor};
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};

/// Every key rcops writes for measurements starts with this.
pub const KEY_PREFIX: &str = "__rcops:latency:";

/// A probe key whose slot the given master owns (found by trying hash tags in order).
pub fn probe_key(view: &ClusterView, master_id: &str) -> Option<String> {
    let owned = view.node(master_id)?.slot_set();
    if owned.is_empty() {
        return None;
    }
    (0u32..200_000)
        .map(|i| format!("{KEY_PREFIX}{{{i}}}"))
        .find(|k| owned.contains(key_slot(k.as_bytes())))
}

/// One node's latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLatency {
    pub node: String,
    pub role: &'static str,
    pub samples: u64,
    pub errors: u64,
    /// None (null) without a single successful reply: no latency was measured.
    pub min_ms: Option<f64>,
    #[serde(flatten)]
    pub latency: Option<Percentiles>,
    /// Set when the node could not be measured at all, or no request succeeded.
    pub error: Option<String>,
}

/// JSON: `{"nodes": [NodeLatency], "duration_ms", "stopped_early", "keys_left"}`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub nodes: Vec<NodeLatency>,
    pub duration_ms: u128,
    /// The run was interrupted (Ctrl-C) before its duration.
    pub stopped_early: bool,
    /// Probe keys that could not be deleted (0 unless a master failed at the end).
    pub keys_left: usize,
}

fn summarise(
    node: String,
    role: &'static str,
    h: &Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
) -> NodeLatency {
    let measured = !h.is_empty();
    NodeLatency {
        node,
        role,
        samples: h.len(),
        errors,
        min_ms: measured.then(|| h.min() as f64 / 1000.0),
        latency: measured.then(|| Percentiles::of(h)),
        error: match first_error {
            Some(e) if !measured => Some(format!("all {errors} request(s) failed: {e}")),
            _ => None,
        },
    }
}

fn failed(node: String, role: &'static str, error: String) -> NodeLatency {
    NodeLatency {
        error: Some(error),
        ..summarise(node, role, &rtt_histogram(), 0, None)
    }
}

/// Measures every node in `targets` (addresses of the view) for `duration` or until `stop`
/// is set, then deletes the probe keys.
pub async fn latency(
    exec: &Executor,
    view: &ClusterView,
    targets: &[Addr],
    duration: Duration,
    stop: &CancellationToken,
) -> LatencyReport {
    let started = Instant::now();
    // Probe key per master, and what each target does.
    let mut keys: BTreeMap<Addr, String> = BTreeMap::new();
    let mut plan: BTreeMap<Addr, (&'static str, Option<String>)> = BTreeMap::new();
    for line in view.nodes.iter().filter(|l| l.dialable()) {
        let Some(addr) = line_addr(line) else {
            continue;
        };
        if !targets.contains(&addr) {
            continue;
        }
        let master_id = line.master_id.as_deref().unwrap_or(&line.id);
        let key = probe_key(view, master_id);
        if line.master_id.is_none() {
            if let Some(k) = &key {
                keys.insert(addr.clone(), k.clone());
            }
            plan.insert(addr, ("master", key));
        } else {
            plan.insert(addr, ("replica", key));
        }
    }
    let ttl_ms = (duration + Duration::from_secs(60)).as_millis() as u64;
    let plan = &plan;
    // Replicas read their master's key: write every key first so their GETs hit.
    let _ = exec
        .run(keys.keys().cloned(), |addr, mut conn| {
            let key = keys[&addr].clone();
            async move {
                query::<()>(
                    &addr,
                    &mut conn,
                    redis::cmd("SET")
                        .arg(&key)
                        .arg("rcops")
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await
            }
        })
        .await;
    let budget = duration + exec.timeout() * 2;
    let result = exec
        .run_with_timeout(plan.keys().cloned(), budget, |addr, mut conn| async move {
            let (role, key) = &plan[&addr];
            let mut h = rtt_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            if *role == "replica" {
                query::<()>(&addr, &mut conn, &redis::cmd("READONLY")).await?;
            }
            let set = key.as_ref().map(|k| {
                redis::cmd("SET")
                    .arg(k)
                    .arg("rcops")
                    .arg("PX")
                    .arg(ttl_ms)
                    .to_owned()
            });
            let get = key.as_ref().map(|k| redis::cmd("GET").arg(k).to_owned());
            let ping = redis::cmd("PING");
            let deadline = Instant::now() + duration;
            let mut turn = 0u64;
            while Instant::now() < deadline && !stop.is_cancelled() {
                // Masters alternate SET and GET; replicas GET; nodes without a key PING.
                let cmd = match (*role, &set, &get) {
                    ("master", Some(s), Some(g)) => {
                        if turn.is_multiple_of(2) {
                            s
                        } else {
                            g
                        }
                    }
                    (_, _, Some(g)) => g,
                    _ => &ping,
                };
                turn += 1;
                let t = Instant::now();
                match cmd.query_async::<redis::Value>(&mut conn).await {
                    Ok(_) => {
                        let us = t.elapsed().as_micros().max(1) as u64;
                        let _ = h.record(us.min(60_000_000));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| NodeError::from_redis(&addr, &e).reason());
                    }
                }
            }
            Ok(summarise(addr.to_string(), role, &h, errors, first_error))
        })
        .await;
    // Clean up whatever happened above.
    let cleanup = exec
        .run(keys.keys().cloned(), |addr, mut conn| {
            let key = keys[&addr].clone();
            async move { query::<()>(&addr, &mut conn, redis::cmd("DEL").arg(&key)).await }
        })
        .await;
    let mut nodes: Vec<NodeLatency> = result.ok.into_values().collect();
    for (addr, e) in result.failed {
        let role = plan.get(&addr).map(|p| p.0).unwrap_or("unknown");
        nodes.push(failed(addr.to_string(), role, e.reason()));
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    LatencyReport {
        nodes,
        duration_ms: started.elapsed().as_millis(),
        stopped_early: stop.is_cancelled(),
        keys_left: cleanup.failed.len(),
    }
}
