//! `rcops slowlog`: renders [`rcops_core::ops::slowlog`]; `--reset` shows its plan and needs
//! `--yes`.

use rcops_core::ops::slowlog::{reset, slowlog, SlowlogOptions};
use rcops_core::topology::Detail;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{view_light, CmdResult, Failure};
use crate::cli::{GlobalOpts, SlowlogArgs};
use crate::output::{self, opt, EXIT_FAILED, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &SlowlogArgs) -> CmdResult {
    let (exec, view) = view_light(g, Detail::Health).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let opts = SlowlogOptions {
        per_node: a.count as usize,
        since_unix: a.since.map(|d| now.saturating_sub(d).as_secs()),
        top: a.top.map(|t| t as usize),
    };
    let report = slowlog(&exec, &view, &opts).await;
    if a.reset {
        let nodes = view.addrs().len();
        if !a.yes {
            // The plan: what would be lost, then refuse.
            if !g.json {
                render(g, &report);
            }
            return Err(Failure::usage(format!(
                "would clear the slow log on {nodes} node(s), losing {} entries; pass --yes to do it",
                report.entries.len()
            )));
        }
        let done = reset(&exec, &view).await;
        if g.json {
            output::print_json(&done);
        } else {
            crate::outln!(
                "cleared the slow log on {} of {nodes} node(s)",
                done.reset.len()
            );
            for e in done.errors.values() {
                output::error(e);
            }
        }
        return Ok(if done.errors.is_empty() {
            EXIT_OK
        } else {
            EXIT_FAILED
        });
    }
    render(g, &report);
    Ok(if report.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

fn render(g: &GlobalOpts, report: &rcops_core::ops::slowlog::SlowlogReport) {
    if g.json {
        output::print_json(report);
        return;
    }
    let mut t = output::table(&["TIME (UTC)", "NODE", "DURATION", "COMMAND", "CLIENT"]);
    for e in &report.entries {
        let when = UNIX_EPOCH + Duration::from_secs(e.time_unix);
        let mut cmd = e.command.join(" ");
        if cmd.chars().count() > 100 {
            cmd = format!("{}…", cmd.chars().take(100).collect::<String>());
        }
        t.add_row(vec![
            humantime::format_rfc3339_seconds(when).to_string(),
            e.node.clone(),
            format!("{:.3} ms", e.duration_us as f64 / 1000.0),
            cmd,
            opt(e.client.as_deref()),
        ]);
    }
    output::align_right(&mut t, &[2]);
    output::print_table(&t);
    crate::outln!(
        "{} entries from {} node(s)",
        report.entries.len(),
        report.nodes
    );
    for e in report.errors.values() {
        output::error(e);
    }
}
