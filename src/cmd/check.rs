//! `rcops check`: renders [`rcops_core::ops::check`].

use rcops_core::ops::check::{check, CheckOptions, Status};

use super::{executor, CmdResult, Failure};
use crate::cli::{CheckArgs, GlobalOpts};
use crate::output::{self, paint};

pub async fn run(g: &GlobalOpts, a: &CheckArgs) -> CmdResult {
    let (exec, seeds) = executor(g)?;
    let opts = CheckOptions {
        lag_threshold_bytes: a.lag_threshold,
        balance_threshold_pct: a.balance_threshold,
    };
    let report = check(&exec, &seeds, &opts).await.map_err(Failure::failed)?;
    if g.json {
        output::print_json(&report);
    } else {
        let status = match report.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
        };
        crate::outln!(
            "{}: {} nodes, {} masters, {}/16384 slots covered, {} finding(s), {} ms",
            paint(status),
            report.nodes,
            report.masters,
            report.slots_covered,
            report.findings.len(),
            report.elapsed_ms
        );
        if !report.findings.is_empty() {
            let mut t = output::table(&["SEVERITY", "CODE", "NODES", "MESSAGE"]);
            for f in &report.findings {
                let nodes = match f.nodes.len() {
                    0 => "-".to_string(),
                    1..=2 => f.nodes.join(","),
                    n => format!("{},… ({n})", f.nodes[0]),
                };
                t.add_row(vec![
                    paint(f.severity.as_str()),
                    f.code.to_string(),
                    nodes,
                    f.message.clone(),
                ]);
            }
            output::print_table(&t);
        }
    }
    Ok(report.status.exit_code())
}
