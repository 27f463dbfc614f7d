//! `rcops advise`: renders [`rcops_core::ops::config::advise`]; `--apply` hands the
//! recommended changes to the config change flow (plan, --yes, history).

use rcops_core::ops::check::Severity;
use rcops_core::ops::config::advise;
use rcops_core::topology::Detail;
use std::collections::BTreeMap;

use super::config::{change_flow, select_targets};
use super::{view_light as view, CmdResult};
use crate::cli::{AdviseArgs, GlobalOpts};
use crate::output::{self, paint, EXIT_FAILED, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &AdviseArgs) -> CmdResult {
    let (exec, view) = view(g, Detail::Full).await?;
    let t = select_targets(&view, &a.select)?;
    let (facts, failed) = advise::gather(&exec, &view, &t).await;
    let advice = advise::evaluate(&facts);
    if !(g.json && a.apply) {
        render(g, &advice, facts.len(), &failed);
    }
    if a.apply {
        let desired = advise::desired(&advice, &t);
        if desired.is_empty() {
            if !g.json {
                crate::outln!("no recommendation comes with a config change to apply");
            }
            return Ok(EXIT_OK);
        }
        let mut codes: Vec<&str> = advice
            .iter()
            .filter(|x| x.change.is_some())
            .map(|x| x.code)
            .collect();
        codes.dedup();
        let desc = format!("advise --apply ({})", codes.join(", "));
        return change_flow(g, &exec, &view, &t, desired, Vec::new(), &desc, &a.change).await;
    }
    let worst = advice.iter().map(|x| x.severity).max();
    // A node that could not be read (down, or an ACL without CONFIG) is a failed run: its
    // advice is missing, not clean.
    Ok(match worst {
        _ if !failed.is_empty() => EXIT_FAILED,
        Some(Severity::Critical) => EXIT_FAILED,
        Some(Severity::Warning) => EXIT_FINDINGS,
        _ => EXIT_OK,
    })
}

fn render(
    g: &crate::cli::GlobalOpts,
    advice: &[advise::Advice],
    nodes: usize,
    failed: &BTreeMap<rcops_core::Addr, rcops_core::NodeError>,
) {
    if g.json {
        let failed: BTreeMap<String, String> = failed
            .iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect();
        output::print_json(&serde_json::json!({
            "findings": advice, "nodes": nodes, "failed": failed,
        }));
        return;
    }
    // One row per rule and recommended change; the evidence is the first node's.
    let mut groups: Vec<(&advise::Advice, Vec<String>)> = Vec::new();
    for x in advice {
        match groups
            .iter_mut()
            .find(|(f, _)| f.code == x.code && f.change == x.change)
        {
            Some((_, nodes)) => nodes.push(x.node.clone()),
            None => groups.push((x, vec![x.node.clone()])),
        }
    }
    let mut t = output::table(&["SEVERITY", "CODE", "NODES", "EVIDENCE", "RECOMMENDATION"]);
    for (x, nodes) in &groups {
        let nodes_cell = match nodes.len() {
            1..=2 => nodes.join(","),
            n => format!("{n} nodes"),
        };
        let rec = match &x.change {
            Some((p, v)) => format!("{} → CONFIG SET {p} {v}", x.recommendation),
            None => x.recommendation.clone(),
        };
        t.add_row(vec![
            paint(x.severity.as_str()),
            x.code.to_string(),
            nodes_cell,
            x.evidence.clone(),
            rec,
        ]);
    }
    if !groups.is_empty() {
        output::print_table(&t);
    }
    crate::outln!(
        "{} finding(s) in {} group(s) on {nodes} node(s){}",
        advice.len(),
        groups.len(),
        if advice.iter().any(|x| x.change.is_some()) {
            "; `rcops advise --apply` turns the CONFIG SET recommendations into one plan"
        } else {
            ""
        }
    );
    for e in failed.values() {
        output::error(e);
    }
    if !failed.is_empty() {
        output::error(format!(
            "INCOMPLETE: {} node(s) could not be read; their advice is missing",
            failed.len()
        ));
    }
}
