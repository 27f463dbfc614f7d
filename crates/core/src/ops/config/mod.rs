//! Configuration as a versioned, verifiable, reversible thing: reading `CONFIG GET` from every
//! node, planning a change (per node: current → new), applying it all-or-nothing with
//! read-back verification and `CONFIG REWRITE`, rolling batches gated on `check`, and the
//! drift rules. History (git) lives in [`history`], the tuning advisor in [`advise`].

pub mod advise;
pub mod change;
pub mod history;

use rcops_formats::conf::{self, Params};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::fanout::{query, Executor};
use crate::node::{Addr, NodeError};
use crate::ops::check::{self, CheckOptions, Severity};
use crate::topology::{discover, line_addr, ClusterView, Detail};
use history::Snap;

/// A node a configuration command acts on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Target {
    pub addr: Addr,
    pub id: String,
    pub master: bool,
}

impl Target {
    pub fn role(&self) -> &'static str {
        if self.master {
            "master"
        } else {
            "replica"
        }
    }
}

/// Which nodes: all, one role, and/or a `--node` list (addresses or id prefixes).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub role: Option<bool>,
    pub nodes: Vec<String>,
}

/// The nodes of `view` a selection names. Nodes flagged `fail`/`noaddr` are still listed:
/// a change must not silently skip a node that is down.
pub fn targets(view: &ClusterView, sel: &Selection) -> Vec<Target> {
    let mut out: Vec<Target> = view
        .select(&sel.nodes)
        .filter(|l| sel.role.is_none_or(|m| l.flags.master == m))
        .filter_map(|l| {
            Some(Target {
                addr: line_addr(l)?,
                id: l.id.clone(),
                master: l.flags.master,
            })
        })
        .collect();
    out.sort();
    out
}

/// `CONFIG GET` replies (RESP2 pairs or a RESP3 map) as parameters; non-UTF-8 read lossily.
fn params_of(v: redis::Value) -> Params {
    fn text(v: &redis::Value) -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            redis::Value::Int(i) => i.to_string(),
            _ => String::new(),
        }
    }
    let mut out = Params::new();
    match v {
        redis::Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    out.insert(text(k).to_ascii_lowercase(), text(v));
                }
            }
        }
        redis::Value::Map(items) => {
            for (k, v) in items {
                out.insert(text(&k).to_ascii_lowercase(), text(&v));
            }
        }
        _ => {}
    }
    out
}

/// `CONFIG GET pattern…` on one connection.
pub async fn config_get(
    addr: &Addr,
    conn: &mut MultiplexedConnection,
    patterns: &[String],
) -> Result<Params, NodeError> {
    let v: redis::Value = query(addr, conn, redis::cmd("CONFIG").arg("GET").arg(patterns)).await?;
    Ok(params_of(v))
}

/// Every node's answer to `CONFIG GET pattern…`, and the nodes that failed.
#[derive(Debug, Default, Serialize)]
pub struct Readings {
    pub nodes: BTreeMap<Addr, Params>,
    pub failed: BTreeMap<Addr, NodeError>,
}

pub async fn read(exec: &Executor, targets: &[Target], patterns: &[String]) -> Readings {
    let patterns = patterns.to_vec();
    let fan = exec
        .run(targets.iter().map(|t| t.addr.clone()), |addr, mut conn| {
            let patterns = patterns.clone();
            async move { config_get(&addr, &mut conn, &patterns).await }
        })
        .await;
    Readings {
        nodes: fan.ok,
        failed: fan.failed,
    }
}

/// One node's full configuration (`CONFIG GET *`, secrets masked) with who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    pub addr: String,
    pub id: String,
    pub role: String,
    pub params: Params,
}

/// Every node's full configuration, masked — what history records — and the raw readings.
pub async fn snapshot(exec: &Executor, targets: &[Target]) -> (Vec<NodeConfig>, Readings) {
    let readings = read(exec, targets, &["*".to_string()]).await;
    (configs_of(targets, &readings.nodes), readings)
}

/// What history records of the targets that have values in `values`, borrowed from them.
pub fn snaps<'a>(targets: &'a [Target], values: &'a BTreeMap<Addr, Params>) -> Vec<Snap<'a>> {
    targets
        .iter()
        .filter_map(|t| {
            Some(Snap {
                addr: t.addr.to_string(),
                id: &t.id,
                role: t.role(),
                params: values.get(&t.addr)?,
            })
        })
        .collect()
}

/// Snapshots (secrets masked) of the targets that have values in `values`.
pub fn configs_of(targets: &[Target], values: &BTreeMap<Addr, Params>) -> Vec<NodeConfig> {
    targets
        .iter()
        .filter_map(|t| {
            let mut params = values.get(&t.addr)?.clone();
            conf::mask_secrets(&mut params);
            Some(NodeConfig {
                addr: t.addr.to_string(),
                id: t.id.clone(),
                role: t.role().to_string(),
                params,
            })
        })
        .collect()
}

/// One parameter's move on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub param: String,
    pub from: String,
    pub to: String,
}

/// What a change does to one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub target: Target,
    /// Parameters whose value changes.
    pub changes: Vec<Change>,
    /// Parameters already at the desired value.
    pub unchanged: Vec<String>,
}

/// A parameter left out of a plan, and why (secret from history, cannot be set at runtime).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub node: String,
    pub param: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    pub skipped: Vec<Skipped>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.nodes.iter().map(|n| n.changes.len()).sum()
    }

    pub fn nodes_changing(&self) -> usize {
        self.nodes.iter().filter(|n| !n.changes.is_empty()).count()
    }

    /// A copy fit for output: secret values masked.
    pub fn masked(&self) -> Plan {
        let mut p = self.clone();
        for n in &mut p.nodes {
            mask_changes(&mut n.changes);
        }
        p
    }
}

/// Masks secret values in changes (the real ones are needed to apply and restore, never to
/// show).
pub fn mask_changes(changes: &mut [Change]) {
    for c in changes {
        c.from = shown(&c.param, &c.from);
        c.to = shown(&c.param, &c.to);
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanError {
    #[error("unknown configuration parameter {param:?} (node {node} does not have it)")]
    Unknown { param: String, node: String },
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("no node matches the selection")]
    NoTargets,
}

/// Compares desired values with each node's current ones. Pure: `current` holds what the
/// nodes reported for (at least) the desired parameters.
pub fn plan(
    targets: &[Target],
    current: &BTreeMap<Addr, Params>,
    desired: &BTreeMap<Addr, Params>,
) -> Result<Plan, PlanError> {
    let mut nodes = Vec::new();
    for t in targets {
        let Some(want) = desired.get(&t.addr) else {
            continue;
        };
        let have = current.get(&t.addr).cloned().unwrap_or_default();
        let mut np = NodePlan {
            target: t.clone(),
            changes: Vec::new(),
            unchanged: Vec::new(),
        };
        for (param, to) in want {
            let Some(from) = have.get(param) else {
                return Err(PlanError::Unknown {
                    param: param.clone(),
                    node: t.addr.to_string(),
                });
            };
            if conf::same_value(param, from, to) {
                np.unchanged.push(param.clone());
            } else {
                np.changes.push(Change {
                    param: param.clone(),
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        nodes.push(np);
    }
    Ok(Plan {
        nodes,
        skipped: Vec::new(),
    })
}

/// Reads the desired parameters from every target and plans. Refuses up front when a target
/// does not answer or does not know a parameter: nothing is half-applied for a typo.
pub async fn plan_live(
    exec: &Executor,
    targets: &[Target],
    desired: &BTreeMap<Addr, Params>,
) -> Result<Plan, PlanError> {
    if targets.is_empty() {
        return Err(PlanError::NoTargets);
    }
    let names: BTreeSet<String> = desired.values().flat_map(|p| p.keys().cloned()).collect();
    let names: Vec<String> = names.into_iter().collect();
    if names.is_empty() {
        return plan(targets, &BTreeMap::new(), desired);
    }
    let readings = read(exec, targets, &names).await;
    if let Some(e) = readings.failed.values().next() {
        return Err(PlanError::Node(e.clone()));
    }
    plan(targets, &readings.nodes, desired)
}

/// The same parameters for every target.
pub fn uniform(targets: &[Target], params: &Params) -> BTreeMap<Addr, Params> {
    targets
        .iter()
        .map(|t| (t.addr.clone(), params.clone()))
        .collect()
}

/// How a change is carried out.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// `CONFIG REWRITE` after the values verified.
    pub rewrite: bool,
    /// On a refusal, keep the nodes that did change instead of restoring them.
    pub keep_going: bool,
    /// Rolling: this many nodes at a time, each batch gated on `check` (no new criticals).
    pub batch: Option<usize>,
    /// Wait between a batch and its health check.
    pub settle: Duration,
    /// Seeds for the health checks of a rolling change.
    pub seeds: Vec<Addr>,
}

/// Where a node ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// New values set and read back.
    Applied,
    /// Nothing to change on this node.
    Unchanged,
    /// The node refused the change (nothing changed there: multi-parameter CONFIG SET is
    /// atomic).
    Refused,
    /// Set, but a value read back differently.
    NotVerified,
    /// Did not answer; its state is unknown.
    Unreachable,
    /// Changed, then put back to its previous values because another node failed.
    RolledBack,
    /// Changed, and putting it back failed: the node is left changed.
    RollbackFailed,
    /// Not reached (an earlier batch failed).
    NotAttempted,
}

/// What `CONFIG REWRITE` did on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "error")]
pub enum Rewrite {
    Rewritten,
    /// The node runs without a config file: the change lives until restart.
    NoConfigFile,
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub addr: String,
    pub id: String,
    pub role: &'static str,
    pub status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    pub changes: Vec<Change>,
    /// The changed parameters (and their aliases) as the node reported them after the last
    /// successful set or restore.
    #[serde(skip)]
    pub read_back: Params,
}

/// Overall result of an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every node has the new values.
    Applied,
    /// Something failed and every changed node was put back.
    RolledBack,
    /// Some nodes changed and some did not (`--keep-going`, or a restore failed).
    Partial,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub outcome: Outcome,
    pub nodes: Vec<NodeResult>,
    /// New critical findings that stopped a rolling change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regression: Vec<String>,
    /// Cancelled between batches: what changed was handled as after a failure (put back,
    /// or kept under `keep_going`), the nodes not reached are `not_attempted`.
    pub interrupted: bool,
    pub elapsed_ms: u128,
}

impl ApplyReport {
    /// One line: applied, rolled back or partial, and what was not persisted.
    pub fn summary(&self) -> String {
        let changing = self
            .nodes
            .iter()
            .filter(|n| n.status != NodeStatus::Unchanged)
            .count();
        let mut s = match self.outcome {
            Outcome::Applied => format!(
                "applied on {}/{changing} node(s)",
                self.count(NodeStatus::Applied)
            ),
            Outcome::RolledBack => format!(
                "failed; {} changed node(s) rolled back, no node left changed",
                self.count(NodeStatus::RolledBack)
            ),
            Outcome::Partial => format!(
                "PARTIAL: {} node(s) changed, {} failed, {} could not be restored",
                self.count(NodeStatus::Applied),
                self.nodes
                    .iter()
                    .filter(|n| matches!(
                        n.status,
                        NodeStatus::Refused | NodeStatus::NotVerified | NodeStatus::Unreachable
                    ))
                    .count(),
                self.count(NodeStatus::RollbackFailed)
            ),
        };
        if self.interrupted {
            s.push_str(" (interrupted)");
        }
        let no_file = self
            .nodes
            .iter()
            .filter(|n| n.rewrite == Some(Rewrite::NoConfigFile))
            .count();
        if no_file > 0 {
            s.push_str(&format!(
                "; {no_file} node(s) have no config file (not persisted)"
            ));
        }
        s
    }

    /// A copy fit for output: secret values masked.
    pub fn masked(&self) -> ApplyReport {
        let mut r = self.clone();
        for n in &mut r.nodes {
            mask_changes(&mut n.changes);
        }
        r
    }

    /// Records what [`rewrite_applied`] did on each node.
    pub fn set_rewrites(&mut self, rewrites: Vec<(usize, Rewrite)>) {
        for (i, r) in rewrites {
            if let Some(n) = self.nodes.get_mut(i) {
                n.rewrite = Some(r);
            }
        }
    }

    pub fn count(&self, s: NodeStatus) -> usize {
        self.nodes.iter().filter(|n| n.status == s).count()
    }

    /// 0 applied cleanly; 1 applied but a rewrite did not persist everywhere; 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            return 130;
        }
        match self.outcome {
            Outcome::Applied
                if self
                    .nodes
                    .iter()
                    .any(|n| matches!(n.rewrite, Some(Rewrite::Failed(_)))) =>
            {
                1
            }
            Outcome::Applied => 0,
            _ => 2,
        }
    }
}

/// Sets and verifies one node's changes. `Err` carries the status and the reason.
async fn set_node(
    exec: &Executor,
    addr: &Addr,
    changes: &[Change],
    forward: bool,
) -> Result<Params, (NodeStatus, String)> {
    let pick = |c: &Change| {
        if forward {
            c.to.clone()
        } else {
            c.from.clone()
        }
    };
    let unreachable = |e: NodeError| {
        let status = if e.is_unreachable() {
            NodeStatus::Unreachable
        } else {
            NodeStatus::Refused
        };
        (status, e.to_string())
    };
    let work = async {
        let mut conn = exec.conn(addr).await.map_err(unreachable)?;
        // The SET and the read-back in one round trip, each reply judged on its own: a
        // refused SET changed nothing; a failed read-back after a SET that took leaves the
        // node unverified (so it is rolled back and read again for history).
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let set = pipe.cmd("CONFIG").arg("SET");
        for c in changes {
            set.arg(&c.param).arg(pick(c));
        }
        // Aliases too: the read-back is what history records for this node afterwards.
        let names: Vec<String> = changes
            .iter()
            .flat_map(|c| std::iter::once(c.param.clone()).chain(conf::aliases(&c.param)))
            .collect();
        pipe.cmd("CONFIG").arg("GET").arg(&names);
        let mut replies: Vec<redis::RedisResult<redis::Value>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(NodeError::from_redis(addr, &e)))?;
        let (Some(read_back), Some(set)) = (replies.pop(), replies.pop()) else {
            return Err((NodeStatus::NotVerified, format!("{addr}: short reply")));
        };
        set.map_err(|e| unreachable(NodeError::from_redis(addr, &e)))?;
        let got = params_of(read_back.map_err(|e| {
            (
                NodeStatus::NotVerified,
                NodeError::from_redis(addr, &e).to_string(),
            )
        })?);
        for c in changes {
            let want = pick(c);
            let now = got.get(&c.param).cloned().unwrap_or_default();
            if !conf::same_value(&c.param, &now, &want) {
                return Err((
                    NodeStatus::NotVerified,
                    format!(
                        "{addr}: {} reads back as {:?}, not {:?}",
                        c.param,
                        shown(&c.param, &now),
                        shown(&c.param, &want)
                    ),
                ));
            }
        }
        Ok(got)
    };
    match tokio::time::timeout(exec.timeout() * 2, work).await {
        Ok(r) => r,
        Err(_) => Err((
            NodeStatus::Unreachable,
            format!("{addr}: no answer within {:?}", exec.timeout() * 2),
        )),
    }
}

/// A value as it may be shown: secrets masked.
pub fn shown(param: &str, value: &str) -> String {
    if conf::is_secret(param) && !value.is_empty() {
        conf::MASK.to_string()
    } else {
        value.to_string()
    }
}

async fn rewrite(exec: &Executor, addr: &Addr) -> Rewrite {
    let r = async {
        let mut conn = exec.conn(addr).await?;
        query::<()>(addr, &mut conn, redis::cmd("CONFIG").arg("REWRITE")).await
    };
    match tokio::time::timeout(exec.timeout() * 2, r).await {
        Ok(Ok(())) => Rewrite::Rewritten,
        Ok(Err(e)) if e.to_string().contains("without a config file") => Rewrite::NoConfigFile,
        Ok(Err(e)) => Rewrite::Failed(e.to_string()),
        Err(_) => Rewrite::Failed(format!("{addr}: CONFIG REWRITE timed out")),
    }
}

/// Critical findings of a fresh check, as comparable strings.
async fn criticals(exec: &Executor, seeds: &[Addr]) -> Result<BTreeSet<String>, String> {
    let view = discover(exec, seeds, Detail::Health)
        .await
        .map_err(|e| e.to_string())?;
    let report = check::evaluate(&view, &CheckOptions::default());
    Ok(report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .map(|f| format!("{} {}: {}", f.code, f.nodes.join(","), f.message))
        .collect())
}

/// Applies a plan: every node at once (or in rolling batches), each node's parameters in one
/// atomic `CONFIG SET`, read back; on any failure the nodes already changed are restored
/// (unless `keep_going`). `CONFIG REWRITE` only runs once a batch is known good.
/// Applies `plan` (see [`ApplyOptions`]); `ctx.cancel` stops it between batches, handled
/// like a failed batch, and `ctx.progress` hears nodes done of nodes changing.
pub async fn apply(
    ctx: &crate::job::JobCtx,
    exec: &Executor,
    plan: &Plan,
    opts: &ApplyOptions,
) -> ApplyReport {
    let started = Instant::now();
    let mut results: Vec<NodeResult> = plan
        .nodes
        .iter()
        .map(|n| NodeResult {
            addr: n.target.addr.to_string(),
            id: n.target.id.clone(),
            role: n.target.role(),
            status: if n.changes.is_empty() {
                NodeStatus::Unchanged
            } else {
                NodeStatus::NotAttempted
            },
            error: None,
            rewrite: None,
            changes: n.changes.clone(),
            read_back: Params::new(),
        })
        .collect();
    let work: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| !plan.nodes[i].changes.is_empty())
        .collect();
    let batch = opts.batch.unwrap_or(work.len()).max(1);
    let baseline = match opts.batch {
        Some(_) => criticals(exec, &opts.seeds).await.ok(),
        None => None,
    };
    let mut regression = Vec::new();
    let mut failed = false;
    // Nodes whose values may have changed, in order; rewritten ones are marked.
    let mut touched: Vec<usize> = Vec::new();
    let mut rewritten: BTreeSet<usize> = BTreeSet::new();
    let mut interrupted = false;
    let mut done = 0u64;

    for chunk in work.chunks(batch) {
        if ctx.cancel.is_cancelled() {
            interrupted = true;
            failed = true;
            break;
        }
        let outcomes = futures::future::join_all(chunk.iter().map(|&i| {
            let n = &plan.nodes[i];
            async move { (i, set_node(exec, &n.target.addr, &n.changes, true).await) }
        }))
        .await;
        let mut chunk_failed = false;
        done += outcomes.len() as u64;
        ctx.progress
            .shard("config", "apply", done, Some(work.len() as u64));
        for (i, r) in outcomes {
            match r {
                Ok(got) => {
                    results[i].status = NodeStatus::Applied;
                    results[i].read_back = got;
                    touched.push(i);
                }
                Err((status, why)) => {
                    results[i].status = status;
                    results[i].error = Some(why);
                    chunk_failed = true;
                    // A refused atomic SET changed nothing; anything else may have.
                    if status != NodeStatus::Refused {
                        touched.push(i);
                    }
                }
            }
        }
        if !chunk_failed {
            if let Some(before) = &baseline {
                tokio::time::sleep(opts.settle).await;
                match criticals(exec, &opts.seeds).await {
                    Ok(after) => regression.extend(after.difference(before).cloned()),
                    Err(e) => regression.push(format!("health check failed: {e}")),
                }
                chunk_failed = !regression.is_empty();
            }
        }
        let good: Vec<usize> = chunk
            .iter()
            .copied()
            .filter(|&i| results[i].status == NodeStatus::Applied)
            .collect();
        if chunk_failed && !opts.keep_going {
            failed = true;
            break;
        }
        tracing::info!(nodes = good.len(), "batch set and verified");
        if opts.rewrite {
            let rw = futures::future::join_all(
                good.iter()
                    .map(|&i| async move { (i, rewrite(exec, &plan.nodes[i].target.addr).await) }),
            )
            .await;
            for (i, r) in rw {
                rewritten.insert(i);
                results[i].rewrite = Some(r);
            }
        }
        if chunk_failed {
            // keep_going: stop rolling on a regression, but leave what changed.
            failed = true;
            if !regression.is_empty() {
                break;
            }
        }
    }

    let outcome = if !failed {
        Outcome::Applied
    } else if opts.keep_going {
        Outcome::Partial
    } else {
        // Put back every node that may have changed, all at once.
        let restores = futures::future::join_all(touched.iter().map(|&i| {
            let n = &plan.nodes[i];
            let rw = rewritten.contains(&i) && opts.rewrite;
            async move {
                let r = set_node(exec, &n.target.addr, &n.changes, false).await;
                let w = match (&r, rw) {
                    (Ok(_), true) => Some(rewrite(exec, &n.target.addr).await),
                    _ => None,
                };
                (i, r, w)
            }
        }))
        .await;
        let mut all_restored = true;
        for (i, r, w) in restores {
            match r {
                Ok(got) => {
                    // A node that failed keeps its error, saying why it all went back.
                    results[i].status = NodeStatus::RolledBack;
                    results[i].read_back = got;
                    if let Some(w) = w {
                        results[i].rewrite = Some(w);
                    }
                }
                Err((_, why)) => {
                    all_restored = false;
                    results[i].status = NodeStatus::RollbackFailed;
                    let first = results[i].error.take();
                    results[i].error = Some(match first {
                        Some(f) => format!("{f}; restoring failed: {why}"),
                        None => format!("restoring failed: {why}"),
                    });
                }
            }
        }
        if all_restored {
            Outcome::RolledBack
        } else {
            Outcome::Partial
        }
    };
    ApplyReport {
        outcome,
        nodes: results,
        regression,
        interrupted,
        elapsed_ms: started.elapsed().as_millis(),
    }
}

/// `CONFIG REWRITE` on every node an apply left changed (for a change applied with
/// `rewrite: false`, so the rewrite can overlap other work such as recording history): each
/// node's outcome by its index in the report, for [`ApplyReport::set_rewrites`].
pub async fn rewrite_applied(exec: &Executor, report: &ApplyReport) -> Vec<(usize, Rewrite)> {
    let addrs: Vec<(usize, Addr)> = report
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.status == NodeStatus::Applied)
        .filter_map(|(i, n)| Some((i, n.addr.parse().ok()?)))
        .collect();
    let done = futures::future::join_all(addrs.iter().map(|(i, a)| async move {
        let r = rewrite(exec, a).await;
        // The node's part is over: closing its connection now overlaps the teardown
        // with the other nodes' fsyncs instead of paying it for every node at exit.
        exec.forget(a);
        (*i, r)
    }))
    .await;
    tracing::debug!(nodes = addrs.len(), "config files rewritten");
    done
}

/// Every node's configuration after an apply, without reading 100+ full configurations
/// again: the values before, overlaid with what each changed node reported when its change
/// (or restore) was verified. Nodes whose state is uncertain (no answer, not verified, restore
/// failed) are returned separately, to be read in full.
pub fn after_state(
    before: BTreeMap<Addr, Params>,
    report: &ApplyReport,
) -> (BTreeMap<Addr, Params>, Vec<Addr>) {
    let mut after = before;
    let mut uncertain = Vec::new();
    for n in &report.nodes {
        let Ok(addr) = n.addr.parse::<Addr>() else {
            continue;
        };
        match n.status {
            NodeStatus::Applied | NodeStatus::RolledBack => {
                if let Some(p) = after.get_mut(&addr) {
                    for (k, v) in &n.read_back {
                        p.insert(k.clone(), v.clone());
                    }
                }
            }
            NodeStatus::Unchanged | NodeStatus::Refused | NodeStatus::NotAttempted => {}
            NodeStatus::NotVerified | NodeStatus::Unreachable | NodeStatus::RollbackFailed => {
                uncertain.push(addr)
            }
        }
    }
    (after, uncertain)
}

/// Drift: parameters whose values differ between nodes of one role, or from a baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub param: String,
    /// `master`, `replica`, or `baseline`.
    pub scope: String,
    /// Value → nodes holding it.
    pub values: BTreeMap<String, Vec<String>>,
    /// The baseline's value, when comparing to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub drift: Vec<Drift>,
    /// Per-node parameters left out of the comparison.
    pub ignored: Vec<String>,
    pub nodes: usize,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
}

/// Groups values by canonical form so `4gb` and `4294967296` count as one.
fn group_values(param: &str, values: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for (node, v) in values {
        let c = conf::canonical(param, v);
        match groups.iter_mut().find(|g| g.1 == c) {
            Some(g) => g.2.push(node.clone()),
            None => groups.push((shown(param, v), c, vec![node.clone()])),
        }
    }
    groups.into_iter().map(|(v, _, n)| (v, n)).collect()
}

/// Compares nodes of the same role with each other. Pure.
pub fn drift_between(configs: &[NodeConfig], include_per_node: bool) -> Vec<Drift> {
    let mut out = Vec::new();
    for role in ["master", "replica"] {
        let nodes: Vec<&NodeConfig> = configs.iter().filter(|c| c.role == role).collect();
        let names: BTreeSet<&String> = nodes.iter().flat_map(|c| c.params.keys()).collect();
        for param in names {
            if !include_per_node && conf::is_per_node(param) {
                continue;
            }
            let values: Vec<(String, String)> = nodes
                .iter()
                .map(|c| {
                    (
                        c.addr.clone(),
                        c.params.get(param).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let groups = group_values(param, &values);
            if groups.len() > 1 {
                out.push(Drift {
                    param: param.clone(),
                    scope: role.into(),
                    values: groups,
                    expected: None,
                });
            }
        }
    }
    out
}

/// Compares every node with the value a baseline wants for its role (or for that node).
/// Pure: `want` gives, per node address, the expected parameters.
pub fn drift_from(configs: &[NodeConfig], want: &BTreeMap<String, Params>) -> Vec<Drift> {
    let mut by_param: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for c in configs {
        let Some(w) = want.get(&c.addr) else { continue };
        for (param, expected) in w {
            if conf::is_secret(param) {
                continue;
            }
            let have = c.params.get(param).cloned().unwrap_or_default();
            if !conf::same_value(param, &have, expected) {
                by_param
                    .entry((param.clone(), expected.clone()))
                    .or_default()
                    .push((c.addr.clone(), have));
            }
        }
    }
    by_param
        .into_iter()
        .map(|((param, expected), values)| Drift {
            values: group_values(&param, &values),
            param,
            scope: "baseline".into(),
            expected: Some(expected),
        })
        .collect()
}

/// The desired parameters for every target from a desired-state file's role sections.
pub fn desired_by_role(targets: &[Target], d: &conf::Desired) -> BTreeMap<Addr, Params> {
    targets
        .iter()
        .map(|t| (t.addr.clone(), d.for_role(t.master)))
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

/// Reads a desired-state file: TOML (`.toml`: top-level keys for every node, `[master]` /
/// `[replica]` tables per role) or redis.conf syntax (anything else).
pub fn parse_desired(path: &std::path::Path, text: &str) -> Result<conf::Desired, String> {
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if !is_toml {
        return conf::parse_conf(text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
    let mut d = conf::Desired::default();
    let scalar = |k: &str, v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(if *b { "yes" } else { "no" }.into()),
            toml::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(format!(
                        "{}: {k}: arrays hold strings or integers",
                        path.display()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join(" ")),
            _ => Err(format!("{}: {k}: unsupported value", path.display())),
        }
    };
    for (k, v) in &table {
        match v {
            toml::Value::Table(t) => {
                let scope = conf::parse_scope(k).ok_or_else(|| {
                    format!(
                        "{}: unknown section [{k}] (expected all, master or replica)",
                        path.display()
                    )
                })?;
                let p = d.sections.entry(scope).or_default();
                for (k2, v2) in t {
                    p.insert(k2.to_ascii_lowercase(), scalar(k2, v2)?);
                }
            }
            other => {
                d.sections
                    .entry(conf::Scope::All)
                    .or_default()
                    .insert(k.to_ascii_lowercase(), scalar(k, other)?);
            }
        }
    }
    Ok(d)
}

/// The directory name history uses for a cluster: its lowest node address, which survives
/// failovers and does not depend on which seed was given.
pub fn cluster_key(view: &ClusterView) -> String {
    let mut addrs: Vec<Addr> = view.nodes.iter().filter_map(line_addr).collect();
    addrs.sort_by(|a, b| (a.host.as_str(), a.port).cmp(&(b.host.as_str(), b.port)));
    addrs
        .first()
        .map(|a| file_stem(&a.to_string()))
        .unwrap_or_else(|| "cluster".into())
}

/// A node address as a file name: `127.0.0.1:7000` → `127.0.0.1_7000`.
pub fn file_stem(addr: &str) -> String {
    addr.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16, master: bool) -> Target {
        Target {
            addr: Addr::new("127.0.0.1", port),
            id: format!("id{port}"),
            master,
        }
    }

    fn params(kv: &[(&str, &str)]) -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plan_separates_changes_from_no_ops_and_refuses_unknown_parameters() {
        let targets = [t(1, true), t(2, false)];
        let mut current = BTreeMap::new();
        current.insert(
            targets[0].addr.clone(),
            params(&[("maxmemory", "4294967296"), ("hz", "10")]),
        );
        current.insert(
            targets[1].addr.clone(),
            params(&[("maxmemory", "0"), ("hz", "10")]),
        );
        let desired = uniform(&targets, &params(&[("maxmemory", "4gb"), ("hz", "10")]));
        let p = plan(&targets, &current, &desired).unwrap();
        assert_eq!(p.nodes[0].changes.len(), 0);
        assert_eq!(p.nodes[0].unchanged, vec!["hz", "maxmemory"]);
        assert_eq!(
            p.nodes[1].changes,
            vec![Change {
                param: "maxmemory".into(),
                from: "0".into(),
                to: "4gb".into()
            }]
        );
        assert_eq!((p.changes(), p.nodes_changing()), (1, 1));
        let mut secret = p.clone();
        secret.nodes[1].changes[0].param = "requirepass".into();
        secret.nodes[1].changes[0].to = "hunter2".into();
        let shown = serde_json::to_string(&secret.masked()).unwrap();
        assert!(!shown.contains("hunter2"));
        let bad = uniform(&targets, &params(&[("maxmemroy", "1")]));
        assert!(matches!(
            plan(&targets, &current, &bad),
            Err(PlanError::Unknown { .. })
        ));
    }

    fn nc(port: u16, role: &str, kv: &[(&str, &str)]) -> NodeConfig {
        NodeConfig {
            addr: format!("127.0.0.1:{port}"),
            id: String::new(),
            role: role.into(),
            params: params(kv),
        }
    }

    #[test]
    fn drift_compares_within_a_role_and_ignores_per_node_parameters() {
        let configs = [
            nc(1, "master", &[("maxmemory", "4gb"), ("port", "1")]),
            nc(2, "master", &[("maxmemory", "4294967296"), ("port", "2")]),
            nc(3, "master", &[("maxmemory", "0"), ("port", "3")]),
            nc(4, "replica", &[("maxmemory", "0"), ("port", "4")]),
        ];
        let d = drift_between(&configs, false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].param, "maxmemory");
        assert_eq!(d[0].scope, "master");
        assert_eq!(d[0].values.len(), 2);
        assert_eq!(d[0].values["4gb"].len(), 2);
        assert_eq!(drift_between(&configs, true).len(), 2);

        let mut want = BTreeMap::new();
        for c in &configs {
            want.insert(c.addr.clone(), params(&[("maxmemory", "0")]));
        }
        let d = drift_from(&configs, &want);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].values.values().map(Vec::len).sum::<usize>(), 2);
    }

    #[test]
    fn toml_desired_state_has_role_sections() {
        let text =
            "maxmemory = \"4gb\"\nappendonly = true\nhz = 20\n[replica]\nmaxmemory = \"2gb\"\n";
        let d = parse_desired(std::path::Path::new("x.toml"), text).unwrap();
        assert_eq!(d.for_role(true)["appendonly"], "yes");
        assert_eq!(d.for_role(true)["hz"], "20");
        assert_eq!(d.for_role(false)["maxmemory"], "2gb");
        assert!(parse_desired(std::path::Path::new("x.toml"), "[bogus]\na=1").is_err());
        assert!(parse_desired(std::path::Path::new("x.toml"), "a = ").is_err());
    }

    #[test]
    fn exit_code_follows_outcome_and_rewrites() {
        let mut r = ApplyReport {
            outcome: Outcome::Applied,
            nodes: vec![],
            regression: vec![],
            interrupted: false,
            elapsed_ms: 0,
        };
        assert_eq!(r.exit_code(), 0);
        r.nodes.push(NodeResult {
            addr: String::new(),
            id: String::new(),
            role: "master",
            status: NodeStatus::Applied,
            error: None,
            rewrite: Some(Rewrite::Failed("x".into())),
            changes: vec![],
            read_back: Params::new(),
        });
        assert_eq!(r.exit_code(), 1);
        r.outcome = Outcome::RolledBack;
        assert_eq!(r.exit_code(), 2);
        r.interrupted = true;
        assert_eq!(r.exit_code(), 130);
        assert!(r.summary().contains("(interrupted)"), "{}", r.summary());
    }
}
