//! `rcops config …` and the change flow `advise --apply` shares: plan → (dry run | refuse
//! without --yes) → snapshot before → apply → snapshot after → report. Renders
//! [`rcops_core::ops::config`].

use rcops_core::ops::config::history::{self, History, ParamDiff};
use rcops_core::ops::config::{
    self as cfg, change, cluster_key, shown, snapshot, targets, uniform, ApplyReport, NodeConfig,
    NodeStatus, Plan, Rewrite, Selection, Target,
};
use rcops_core::topology::Detail;
use rcops_core::{Addr, ClusterView, Executor};
use rcops_formats::conf::{self, Params};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{view_seeds as view, CmdResult, Failure};
use crate::cli::{ChangeArgs, ConfigCommand, GlobalOpts, SelectArgs};
use crate::output::{self, paint, EXIT_FAILED, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, c: &ConfigCommand) -> CmdResult {
    match c {
        ConfigCommand::Get { params, select } => get(g, params, select).await,
        ConfigCommand::Set {
            pairs,
            select,
            change,
        } => {
            if pairs.len() % 2 != 0 {
                return Err(Failure::usage(format!(
                    "config set takes PARAM VALUE pairs; {:?} has no value",
                    pairs[pairs.len() - 1]
                )));
            }
            let mut params = Params::new();
            for p in pairs.chunks(2) {
                params.insert(p[0].to_ascii_lowercase(), p[1].clone());
            }
            let (exec, view) = view(g, Detail::Health).await?;
            let t = select_targets(&view, select)?;
            let desc = format!(
                "config set {}",
                params
                    .iter()
                    .map(|(k, v)| format!("{k} {}", conf::quote(&shown(k, v))))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let desired = uniform(&t, &params);
            change_flow(g, &exec, &view, &t, desired, Vec::new(), &desc, change).await
        }
        ConfigCommand::Apply {
            file,
            select,
            change,
        } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Failure::failed(format!("cannot read {}: {e}", file.display())))?;
            let d = cfg::parse_desired(file, &text).map_err(Failure::failed)?;
            if d.is_empty() {
                return Err(Failure::failed(format!(
                    "{}: no parameters in the file",
                    file.display()
                )));
            }
            let (exec, view) = view(g, Detail::Health).await?;
            let t = select_targets(&view, select)?;
            let desired = cfg::desired_by_role(&t, &d);
            let desc = format!("config apply {}", file.display());
            change_flow(g, &exec, &view, &t, desired, Vec::new(), &desc, change).await
        }
        ConfigCommand::Drift {
            baseline,
            all,
            select,
        } => drift(g, baseline.as_deref(), *all, select).await,
        ConfigCommand::Snapshot { message } => {
            let (exec, view) = view(g, Detail::Health).await?;
            let h = open_history(g, &view)?;
            let msg = message.clone().unwrap_or_else(|| "config snapshot".into());
            let (rev, failed) = record(&exec, &view, &h, &msg, false).await?;
            if g.json {
                output::print_json(&serde_json::json!({
                    "revision": rev, "history": h.path(), "failed": failed,
                }));
            } else {
                match &rev {
                    Some(r) => crate::outln!("recorded {} in {}", r.short, h.path().display()),
                    None => crate::outln!(
                        "nothing changed since the last snapshot ({})",
                        h.path().display()
                    ),
                }
                for e in failed.values() {
                    output::error(e);
                }
            }
            Ok(if failed.is_empty() {
                EXIT_OK
            } else {
                EXIT_FINDINGS
            })
        }
        ConfigCommand::History { node, param, limit } => {
            let (_, view) = view(g, Detail::Health).await?;
            let h = open_history(g, &view)?;
            let log = h
                .log(*limit, node.as_deref(), param.as_deref())
                .map_err(Failure::failed)?;
            if g.json {
                output::print_json(&log);
                return Ok(EXIT_OK);
            }
            let mut t = output::table(&["REV", "TIME (UTC)", "AUTHOR", "MESSAGE", "CHANGES"]);
            for e in &log {
                t.add_row(vec![
                    e.revision.short.clone(),
                    time(e.revision.time_unix),
                    e.revision.author.clone(),
                    e.revision.message.lines().next().unwrap_or("").to_string(),
                    summarize(&e.changes),
                ]);
            }
            output::print_table(&t);
            crate::outln!("{} revision(s) in {}", log.len(), h.path().display());
            Ok(EXIT_OK)
        }
        ConfigCommand::Show { rev, params, node } => {
            let (_, view) = view(g, Detail::Health).await?;
            let h = open_history(g, &view)?;
            let (r, mut configs) = h.load(rev).map_err(Failure::failed)?;
            if let Some(n) = node {
                configs.retain(|c| &c.addr == n);
            }
            let patterns = if params.is_empty() {
                vec!["*".to_string()]
            } else {
                params.clone()
            };
            for c in &mut configs {
                c.params
                    .retain(|k, _| patterns.iter().any(|p| conf::glob_match(p, k)));
            }
            if g.json {
                output::print_json(&serde_json::json!({ "revision": r, "nodes": configs }));
                return Ok(EXIT_OK);
            }
            crate::outln!(
                "{} {} {} — {}",
                r.short,
                time(r.time_unix),
                r.author,
                r.message.lines().next().unwrap_or("")
            );
            let readings: BTreeMap<String, Params> =
                configs.into_iter().map(|c| (c.addr, c.params)).collect();
            print_grouped(&readings);
            Ok(EXIT_OK)
        }
        ConfigCommand::Diff { revs } => diff(g, revs).await,
        ConfigCommand::Rollback {
            rev,
            select,
            change,
        } => rollback(g, rev, select, change).await,
    }
}

pub fn selection(s: &SelectArgs) -> Selection {
    Selection {
        role: s.role.as_deref().map(|r| r == "master"),
        nodes: s.nodes.clone(),
    }
}

pub fn select_targets(view: &ClusterView, s: &SelectArgs) -> Result<Vec<Target>, Failure> {
    let t = targets(view, &selection(s));
    if t.is_empty() {
        return Err(Failure::usage(format!(
            "no node matches the selection (role {:?}, nodes {:?})",
            s.role, s.nodes
        )));
    }
    Ok(t)
}

fn time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `maxmemory on 6 node(s), hz on 1 node(s)`.
fn summarize(changes: &[ParamDiff]) -> String {
    if changes.is_empty() {
        return "-".into();
    }
    let mut by: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in changes {
        by.entry(&c.param).or_default().insert(&c.node);
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(p, n)| format!("{p} on {} node(s)", n.len()))
        .collect();
    let mut s = parts.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if parts.len() > 3 {
        s.push_str(&format!(", +{} more", parts.len() - 3));
    }
    s
}

/// `127.0.0.1:7000,127.0.0.1:7001` or `6 nodes: 127.0.0.1:7000, …`.
fn node_list(nodes: &[String]) -> String {
    match nodes.len() {
        0 => "-".into(),
        1..=3 => nodes.join(","),
        n => format!("{n} nodes ({}, …)", nodes[0]),
    }
}

/// The history repository for this cluster.
pub fn open_history(g: &GlobalOpts, view: &ClusterView) -> Result<History, Failure> {
    let base = g.state_dir.clone().unwrap_or_else(default_state_dir);
    History::open(&base.join("config").join(cluster_key(view))).map_err(Failure::failed)
}

pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("rcops");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/rcops"),
        None => PathBuf::from(".rcops"),
    }
}

/// Every node's `CONFIG GET *`, committed. Nodes that did not answer are returned.
async fn record(
    exec: &Executor,
    view: &ClusterView,
    h: &History,
    message: &str,
    always: bool,
) -> Result<(Option<history::Revision>, BTreeMap<Addr, String>), Failure> {
    let all = targets(view, &Selection::default());
    let readings = cfg::read(exec, &all, &["*".to_string()]).await;
    let present: BTreeSet<String> = all.iter().map(|t| t.addr.to_string()).collect();
    let rev = h
        .record(
            &cfg::snaps(&all, &readings.nodes),
            &present,
            message,
            &history::current_user(),
            always,
        )
        .map_err(Failure::failed)?;
    let failed = readings
        .failed
        .into_iter()
        .map(|(a, e)| (a, e.to_string()))
        .collect();
    Ok((rev, failed))
}

/// JSON of a change command: `{"plan": {...}, "applied", "result"?: ApplyReport,
/// "history_before"?, "history_after"?}`.
#[derive(Serialize)]
struct ChangeOutput<'a> {
    plan: &'a Plan,
    applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a ApplyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history_after: Option<String>,
}

/// Prints a change as JSON, secrets masked like every other output.
fn print_change(plan: &Plan, r: Option<&change::ChangeReport>) {
    let result = r.map(|r| r.result.masked());
    output::print_json(&ChangeOutput {
        plan: &plan.masked(),
        applied: result.is_some(),
        result: result.as_ref(),
        history_before: r.and_then(|r| r.history_before.clone()),
        history_after: r.and_then(|r| r.history_after.clone()),
    })
}

/// Plan, confirm, then [`change::run`] (record, apply, record, rewrite), report.
#[allow(clippy::too_many_arguments)]
pub async fn change_flow(
    g: &GlobalOpts,
    exec: &Executor,
    view: &ClusterView,
    t: &[Target],
    desired: BTreeMap<Addr, Params>,
    skipped: Vec<cfg::Skipped>,
    desc: &str,
    args: &ChangeArgs,
) -> CmdResult {
    let prepared = change::prepare(exec, view, t, desired, skipped)
        .await
        .map_err(Failure::from)?;
    let plan = &prepared.plan;
    if plan.changes() == 0 {
        if g.json {
            print_change(plan, None);
        } else {
            render_skipped(plan);
            crate::outln!(
                "nothing to change: {} node(s) already have these values",
                plan.nodes.len()
            );
        }
        return Ok(EXIT_OK);
    }
    if !g.json {
        render_plan(plan);
    }
    if args.dry_run {
        if g.json {
            print_change(plan, None);
        }
        return Ok(EXIT_OK);
    }
    if !args.yes {
        if g.json {
            print_change(plan, None);
        }
        return Err(Failure::usage(format!(
            "would change {} value(s) on {} node(s); pass --yes to apply (or --dry-run)",
            plan.changes(),
            plan.nodes_changing()
        )));
    }
    let h = open_history(g, view)?;
    let path = h.path().to_path_buf();
    let opts = change::ChangeOptions {
        rolling: args.rolling,
        batch: args.batch.map(|b| b as usize),
        keep_going: args.keep_going,
        settle: args.settle,
        no_rewrite: args.no_rewrite,
        user: None,
    };
    let (ctx, bars) = super::job_ctx(g.json);
    let plan = prepared.plan.clone();
    let r = change::run(&ctx, exec, prepared, h, desc, &opts)
        .await
        .map_err(Failure::from)?;
    bars.clear();
    if g.json {
        print_change(&plan, Some(&r));
    } else {
        render_report(&r.result);
        crate::outln!("{}", r.summary);
        if let Some(rev) = &r.history_after {
            crate::outln!("history: {rev} in {}", path.display());
        }
    }
    Ok(r.result.exit_code())
}

fn render_skipped(plan: &Plan) {
    for s in &plan.skipped {
        output::warn(format!("{}: {} not changed: {}", s.node, s.param, s.reason));
    }
}

/// The plan, with identical moves on many nodes grouped in one row.
fn render_plan(plan: &Plan) {
    let mut rows: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for n in &plan.nodes {
        for c in &n.changes {
            rows.entry((
                c.param.clone(),
                shown(&c.param, &c.from),
                shown(&c.param, &c.to),
            ))
            .or_default()
            .push(n.target.addr.to_string());
        }
    }
    let mut t = output::table(&["PARAMETER", "CURRENT", "NEW", "NODES"]);
    for ((p, from, to), nodes) in &rows {
        t.add_row(vec![
            p.clone(),
            show_value(from),
            show_value(to),
            node_list(nodes),
        ]);
    }
    output::print_table(&t);
    render_skipped(plan);
    let unchanged = plan.nodes.iter().filter(|n| n.changes.is_empty()).count();
    crate::outln!(
        "plan: {} change(s) on {} node(s){}",
        plan.changes(),
        plan.nodes_changing(),
        if unchanged > 0 {
            format!(", {unchanged} node(s) already up to date")
        } else {
            String::new()
        }
    );
}

fn show_value(v: &str) -> String {
    if v.is_empty() {
        "\"\"".into()
    } else {
        v.to_string()
    }
}

fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Applied => "applied",
        NodeStatus::Unchanged => "unchanged",
        NodeStatus::Refused => "refused",
        NodeStatus::NotVerified => "not-verified",
        NodeStatus::Unreachable => "unreachable",
        NodeStatus::RolledBack => "rolled-back",
        NodeStatus::RollbackFailed => "ROLLBACK-FAILED",
        NodeStatus::NotAttempted => "not-attempted",
    }
}

/// Per node: every node on small clusters, only the exceptions on big ones.
fn render_report(r: &ApplyReport) {
    let interesting = |n: &&cfg::NodeResult| {
        r.nodes.len() <= 24
            || !matches!(n.status, NodeStatus::Applied | NodeStatus::Unchanged)
            || !matches!(n.rewrite, None | Some(Rewrite::Rewritten))
    };
    let mut t = output::table(&["NODE", "ROLE", "RESULT", "REWRITE", "DETAIL"]);
    let mut any = false;
    for n in r.nodes.iter().filter(interesting) {
        any = true;
        let rewrite = match &n.rewrite {
            None => "-".to_string(),
            Some(Rewrite::Rewritten) => "ok".into(),
            Some(Rewrite::NoConfigFile) => "no config file".into(),
            Some(Rewrite::Failed(_)) => "failed".into(),
        };
        let detail = match (&n.error, &n.rewrite) {
            (Some(e), _) => e.clone(),
            (None, Some(Rewrite::Failed(e))) => e.clone(),
            _ => String::new(),
        };
        let word = status_word(n.status);
        let painted = match n.status {
            NodeStatus::Applied => paint("ok").replace("ok", word),
            NodeStatus::Unchanged | NodeStatus::RolledBack => word.to_string(),
            NodeStatus::NotAttempted => word.to_string(),
            _ => paint("critical").replace("critical", word),
        };
        t.add_row(vec![
            n.addr.clone(),
            n.role.to_string(),
            painted,
            rewrite,
            detail,
        ]);
    }
    if any {
        output::print_table(&t);
    }
    for line in &r.regression {
        output::error(format!(
            "new critical finding after a rolling batch: {line}"
        ));
    }
}

/// Values per parameter, nodes with the same value in one row; the most common value first,
/// the odd ones out marked.
fn print_grouped(readings: &BTreeMap<String, Params>) {
    let names: BTreeSet<&String> = readings.values().flat_map(|p| p.keys()).collect();
    let mut t = output::table(&["PARAMETER", "VALUE", "NODES"]);
    for name in names {
        let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
        for (node, p) in readings {
            let Some(v) = p.get(name) else { continue };
            let c = conf::canonical(name, v);
            match groups.iter_mut().find(|g| g.1 == c) {
                Some(g) => g.2.push(node.clone()),
                None => groups.push((shown(name, v), c, vec![node.clone()])),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.2.len()));
        let split = groups.len() > 1;
        for (i, (v, _, nodes)) in groups.iter().enumerate() {
            let nodes_cell = if !split {
                format!("all {}", nodes.len())
            } else if i == 0 {
                node_list(nodes)
            } else {
                format!(
                    "{} {}",
                    paint("warning").replace("warning", "≠"),
                    node_list(nodes)
                )
            };
            t.add_row(vec![name.clone(), show_value(v), nodes_cell]);
        }
    }
    output::print_table(&t);
}

async fn get(g: &GlobalOpts, params: &[String], select: &SelectArgs) -> CmdResult {
    let (exec, view) = view(g, Detail::Health).await?;
    let t = select_targets(&view, select)?;
    let patterns: Vec<String> = params.iter().map(|p| p.to_ascii_lowercase()).collect();
    let mut readings = cfg::read(&exec, &t, &patterns).await;
    for p in readings.nodes.values_mut() {
        conf::mask_secrets(p);
    }
    let found = readings.nodes.values().any(|p| !p.is_empty());
    if g.json {
        output::print_json(&readings);
    } else {
        let by_addr: BTreeMap<String, Params> = readings
            .nodes
            .iter()
            .map(|(a, p)| (a.to_string(), p.clone()))
            .collect();
        print_grouped(&by_addr);
        for e in readings.failed.values() {
            output::error(e);
        }
    }
    if !found && readings.failed.is_empty() {
        return Err(Failure::failed(format!(
            "no configuration parameter matches {}",
            params.join(" ")
        )));
    }
    Ok(if readings.failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

async fn drift(
    g: &GlobalOpts,
    baseline: Option<&str>,
    all: bool,
    select: &SelectArgs,
) -> CmdResult {
    let (exec, view) = view(g, Detail::Health).await?;
    let t = select_targets(&view, select)?;
    let (configs, readings) = snapshot(&exec, &t).await;
    let drift = match baseline {
        None => cfg::drift_between(&configs, all),
        Some(b) if std::path::Path::new(b).is_file() => {
            let path = std::path::Path::new(b);
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::failed(format!("cannot read {b}: {e}")))?;
            let d = cfg::parse_desired(path, &text).map_err(Failure::failed)?;
            let want: BTreeMap<String, Params> = t
                .iter()
                .map(|x| (x.addr.to_string(), d.for_role(x.master)))
                .collect();
            cfg::drift_from(&configs, &want)
        }
        Some(rev) => {
            let h = open_history(g, &view)?;
            let (_, old) = h
                .load(rev)
                .map_err(|e| Failure::failed(format!("{e} (and no file named {rev:?} either)")))?;
            let want: BTreeMap<String, Params> = old
                .into_iter()
                .map(|c| {
                    let mut p = c.params;
                    p.retain(|k, _| all || !conf::is_per_node(k));
                    (c.addr, p)
                })
                .collect();
            cfg::drift_from(&configs, &want)
        }
    };
    let ignored: Vec<String> = if all {
        Vec::new()
    } else {
        conf::PER_NODE.iter().map(|s| s.to_string()).collect()
    };
    let failed: BTreeMap<String, String> = readings
        .failed
        .iter()
        .map(|(a, e)| (a.to_string(), e.to_string()))
        .collect();
    let report = cfg::DriftReport {
        drift,
        ignored,
        nodes: configs.len(),
        failed,
    };
    if g.json {
        output::print_json(&report);
    } else {
        if report.drift.is_empty() && report.nodes == 0 {
            crate::outln!("no node could be read");
        } else if report.drift.is_empty() {
            crate::outln!("no drift across {} node(s)", report.nodes);
        } else {
            let mut tb = output::table(&["PARAMETER", "SCOPE", "EXPECTED", "VALUE", "NODES"]);
            for d in &report.drift {
                let mut groups: Vec<(&String, &Vec<String>)> = d.values.iter().collect();
                groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
                for (v, nodes) in groups {
                    tb.add_row(vec![
                        d.param.clone(),
                        d.scope.clone(),
                        d.expected
                            .clone()
                            .map(|e| show_value(&e))
                            .unwrap_or_default(),
                        show_value(v),
                        node_list(nodes),
                    ]);
                }
            }
            output::print_table(&tb);
            crate::outln!(
                "{} parameter(s) drift across {} node(s)",
                report.drift.len(),
                report.nodes
            );
        }
        if !report.ignored.is_empty() {
            crate::outln!(
                "{} per-node parameters not compared ({}, …; --all to include)",
                report.ignored.len(),
                report.ignored[..5.min(report.ignored.len())].join(", ")
            );
        }
        for e in report.failed.values() {
            output::error(e);
        }
        if !report.failed.is_empty() {
            output::error(format!(
                "INCOMPLETE: {} node(s) could not be read; drift on them is unknown",
                report.failed.len()
            ));
        }
    }
    // A node that could not be read (down, or an ACL without CONFIG) fails the run.
    Ok(if !report.failed.is_empty() {
        EXIT_FAILED
    } else if report.drift.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

async fn diff(g: &GlobalOpts, revs: &[String]) -> CmdResult {
    let (exec, view) = view(g, Detail::Health).await?;
    let h = open_history(g, &view)?;
    let live = || async {
        let all = targets(&view, &Selection::default());
        snapshot(&exec, &all).await.0
    };
    let (from_label, from, to_label, to): (String, Vec<NodeConfig>, String, Vec<NodeConfig>) =
        match revs {
            [] => {
                let (r, a) = h.load("HEAD").map_err(Failure::failed)?;
                (r.short, a, "live".into(), live().await)
            }
            [rev] => {
                let (r, a) = h.load(rev).map_err(Failure::failed)?;
                (r.short, a, "live".into(), live().await)
            }
            [a, b, ..] => {
                let (ra, ca) = h.load(a).map_err(Failure::failed)?;
                let (rb, cb) = h.load(b).map_err(Failure::failed)?;
                (ra.short, ca, rb.short, cb)
            }
        };
    let d = history::diff(&from, &to);
    if g.json {
        output::print_json(
            &serde_json::json!({ "from": from_label, "to": to_label, "changes": d }),
        );
    } else {
        print_diff(&d, &from_label, &to_label);
    }
    Ok(if d.is_empty() { EXIT_OK } else { EXIT_FINDINGS })
}

fn print_diff(d: &[ParamDiff], from: &str, to: &str) {
    if d.is_empty() {
        crate::outln!("no differences between {from} and {to}");
        return;
    }
    let mut rows: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for c in d {
        let v = |x: &Option<String>| x.as_deref().map(show_value).unwrap_or("(absent)".into());
        rows.entry((c.param.clone(), v(&c.from), v(&c.to)))
            .or_default()
            .push(c.node.clone());
    }
    let mut t = output::table(&["PARAMETER", from, to, "NODES"]);
    for ((p, a, b), nodes) in &rows {
        t.add_row(vec![p.clone(), a.clone(), b.clone(), node_list(nodes)]);
    }
    output::print_table(&t);
    crate::outln!("{} difference(s) between {from} and {to}", d.len());
}

async fn rollback(
    g: &GlobalOpts,
    rev: &str,
    select: &SelectArgs,
    change: &ChangeArgs,
) -> CmdResult {
    let (exec, view) = view(g, Detail::Health).await?;
    let h = open_history(g, &view)?;
    let (r, old) = h.load(rev).map_err(Failure::failed)?;
    let t = select_targets(&view, select)?;
    // Compare the snapshot with live values of every parameter it holds, and restore the ones
    // that differ. Secrets (masked in history) and startup-only parameters are reported.
    let (live, _) = snapshot(&exec, &t).await;
    let live: BTreeMap<String, Params> = live.into_iter().map(|c| (c.addr, c.params)).collect();
    let mut desired: BTreeMap<Addr, Params> = BTreeMap::new();
    let mut skipped = Vec::new();
    for target in &t {
        let addr = target.addr.to_string();
        let Some(then) = old.iter().find(|c| c.addr == addr) else {
            skipped.push(cfg::Skipped {
                node: addr.clone(),
                param: "*".into(),
                reason: format!("no snapshot of this node at {}", r.short),
            });
            continue;
        };
        let now = live.get(&addr).cloned().unwrap_or_default();
        let mut want = Params::new();
        for (k, v) in &then.params {
            let Some(cur) = now.get(k) else { continue };
            // Secrets are masked on both sides, so equal masks say nothing: a set secret is
            // always reported as not restored, never silently taken as unchanged.
            if conf::is_secret(k) && !(cur.is_empty() && v.is_empty()) {
                skipped.push(cfg::Skipped {
                    node: addr.clone(),
                    param: k.clone(),
                    reason: "secrets are not kept in history: not restored, and whether it changed cannot be told; check it by hand".into(),
                });
                continue;
            }
            if conf::same_value(k, cur, v) {
                continue;
            }
            let reason = if conf::is_secret(k) {
                Some("secrets are not kept in history")
            } else if conf::is_immutable(k) {
                Some("can only be set at startup (edit the config file and restart)")
            } else {
                None
            };
            match reason {
                Some(why) => skipped.push(cfg::Skipped {
                    node: addr.clone(),
                    param: k.clone(),
                    reason: why.into(),
                }),
                None => {
                    want.insert(k.clone(), v.clone());
                }
            }
        }
        desired.insert(target.addr.clone(), want);
    }
    let desc = format!("config rollback {} (to {})", rev, r.short);
    change_flow(g, &exec, &view, &t, desired, skipped, &desc, change).await
}
