//! The change flow every configuration write shares (`config set`, `config apply`,
//! `config rollback`, `advise --apply`): [`prepare`] reads every node's `CONFIG GET *` once
//! for the plan and the snapshot before; [`run`] records that snapshot in the history before
//! anything changes, applies (at once or rolling), records the state after — what each
//! changed node reported when its values were verified, nodes in doubt read again — and
//! rewrites the config files. The CLI and the server call these and render.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::history::{self, History};
use super::{
    after_state, apply, plan, plan_live, read, rewrite_applied, snaps, targets, ApplyOptions,
    ApplyReport, Plan, PlanError, Readings, Selection, Skipped, Target,
};
use crate::fanout::Executor;
use crate::job::{JobCtx, JobError};
use crate::node::Addr;
use crate::topology::ClusterView;
use rcops_formats::conf::Params;

/// A planned change and the readings it was planned from.
pub struct Prepared {
    pub plan: Plan,
    all: Vec<Target>,
    readings: Readings,
}

/// Plans setting `desired` on the targets `t` of `view`; `skipped` are reported in the plan.
pub async fn prepare(
    exec: &Executor,
    view: &ClusterView,
    t: &[Target],
    desired: BTreeMap<Addr, Params>,
    skipped: Vec<Skipped>,
) -> Result<Prepared, JobError> {
    let all = targets(view, &Selection::default());
    let readings = read(exec, &all, &["*".to_string()]).await;
    tracing::debug!(nodes = readings.nodes.len(), "configurations read");
    if let Some(e) = t.iter().find_map(|x| readings.failed.get(&x.addr)) {
        return Err(JobError::unavailable(format!("nothing changed: {e}")));
    }
    let mut plan = match plan(t, &readings.nodes, &desired) {
        Ok(p) => p,
        // Hidden parameters are missing from CONFIG GET *: ask for them by name.
        Err(PlanError::Unknown { .. }) => {
            plan_live(exec, t, &desired).await.map_err(|e| match e {
                PlanError::NoTargets => JobError::usage(e),
                other => JobError::precondition(other),
            })?
        }
        Err(e) => return Err(JobError::precondition(e)),
    };
    plan.skipped = skipped;
    Ok(Prepared {
        plan,
        all,
        readings,
    })
}

#[derive(Debug, Clone)]
pub struct ChangeOptions {
    /// One node at a time (or `batch` at a time), each batch gated on `check`.
    pub rolling: bool,
    pub batch: Option<usize>,
    pub keep_going: bool,
    pub settle: Duration,
    /// Leave the config files as they are (the change lives until restart).
    pub no_rewrite: bool,
    /// Whom the history names (default: the user running rcops); the server passes the
    /// user who asked.
    pub user: Option<String>,
}

/// What a change did, with the history revisions around it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    pub result: ApplyReport,
    pub history_before: Option<String>,
    pub history_after: Option<String>,
    /// One line: the outcome.
    pub summary: String,
}

/// Records, applies, records, rewrites (see the module doc). `desc` names the change in the
/// history's messages.
pub async fn run(
    ctx: &JobCtx,
    exec: &Executor,
    prepared: Prepared,
    h: History,
    desc: &str,
    opts: &ChangeOptions,
) -> Result<ChangeReport, JobError> {
    let Prepared {
        plan,
        all,
        mut readings,
    } = prepared;
    let present: BTreeSet<String> = all.iter().map(|t| t.addr.to_string()).collect();
    let user = opts.user.clone().unwrap_or_else(history::current_user);
    // Nothing changes before the history has recorded the state it changes from.
    let before = h
        .record(
            &snaps(&all, &readings.nodes),
            &present,
            &format!("before: {desc}"),
            &user,
            false,
        )
        .map_err(JobError::internal)?;
    tracing::info!("history recorded before the change");
    let rolling = opts.rolling || opts.batch.is_some();
    let apply_opts = ApplyOptions {
        // A rolling change persists each batch once it is known good; otherwise every node
        // is rewritten at the end, while history records the result.
        rewrite: !opts.no_rewrite && rolling,
        keep_going: opts.keep_going,
        batch: match (opts.rolling, opts.batch) {
            (_, Some(b)) => Some(b),
            (true, None) => Some(1),
            (false, None) => None,
        },
        settle: opts.settle,
        seeds: plan.nodes.iter().map(|n| n.target.addr.clone()).collect(),
    };
    let mut report = apply(ctx, exec, &plan, &apply_opts).await;
    tracing::info!(elapsed_ms = report.elapsed_ms, "applied");
    let (mut after, uncertain) = after_state(std::mem::take(&mut readings.nodes), &report);
    if !uncertain.is_empty() {
        let doubt: Vec<Target> = all
            .iter()
            .filter(|x| uncertain.contains(&x.addr))
            .cloned()
            .collect();
        let again = read(exec, &doubt, &["*".to_string()]).await;
        for a in &uncertain {
            match again.nodes.get(a) {
                Some(p) => {
                    after.insert(a.clone(), p.clone());
                }
                // Still silent: history keeps its last known file for it.
                None => {
                    after.remove(a);
                }
            }
        }
    }
    let message = format!("{desc}: {}\n\nby {user}", report.summary());
    // Git work on a blocking thread while the nodes rewrite their config files. The values
    // come back to be freed here: glibc frees another thread's allocations slowly (a quarter
    // of that thread's time at 120 nodes).
    let record_after = tokio::task::spawn_blocking(move || {
        let rev = h.record(&snaps(&all, &after), &present, &message, &user, true);
        (rev, after)
    });
    if !opts.no_rewrite && !rolling {
        let rewrites = rewrite_applied(exec, &report).await;
        report.set_rewrites(rewrites);
    }
    let (after_rev, _after) = record_after
        .await
        .map_err(|e| JobError::internal(format!("recording history failed: {e}")))?;
    let after_rev = after_rev.map_err(JobError::internal)?;
    Ok(ChangeReport {
        summary: report.summary(),
        result: report,
        history_before: before.map(|r| r.short),
        history_after: after_rev.map(|r| r.short),
    })
}
