//! `rcops latency`: renders [`rcops_core::ops::latency`]; Ctrl-C stops early, still cleaning up.

use rcops_core::ops::latency::latency;
use rcops_core::topology::{line_addr, Detail};

use super::{cancel_on_signals, view_light, CmdResult, Failure};
use crate::cli::{GlobalOpts, LatencyArgs};
use crate::output::{self, EXIT_FAILED, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &LatencyArgs) -> CmdResult {
    let (exec, view) = view_light(g, Detail::Health).await?;
    let targets: Vec<_> = view
        .select(&a.nodes)
        .filter(|l| l.dialable())
        .filter_map(line_addr)
        .collect();
    if targets.is_empty() {
        return Err(Failure::usage(format!("no node matches {:?}", a.nodes)));
    }
    let stop = cancel_on_signals();
    let pb = output::progress(
        None,
        g.json,
        &format!(
            "{{spinner}} measuring {} node(s) for {:?} ({{elapsed}})",
            targets.len(),
            a.duration
        ),
    );
    let report = latency(&exec, &view, &targets, a.duration, &stop).await;
    pb.finish_and_clear();
    if g.json {
        output::print_json(&report);
    } else {
        let mut t = output::table(&[
            "NODE", "ROLE", "SAMPLES", "ERRORS", "MIN", "P50", "P95", "P99", "P99.9", "MAX",
        ]);
        for n in &report.nodes {
            let (Some(min), Some(p)) = (n.min_ms, &n.latency) else {
                t.add_row(vec![
                    n.node.clone(),
                    n.role.to_string(),
                    n.samples.to_string(),
                    n.errors.to_string(),
                    "-".into(),
                ]);
                continue;
            };
            let mut row = vec![
                n.node.clone(),
                n.role.to_string(),
                n.samples.to_string(),
                n.errors.to_string(),
                format!("{min:.3}"),
            ];
            row.extend(output::percentile_cells(p));
            t.add_row(row);
        }
        output::align_right(&mut t, &[2, 3, 4, 5, 6, 7, 8, 9]);
        output::print_table(&t);
        for n in &report.nodes {
            if let Some(e) = &n.error {
                output::error(format!("{}: {e}", n.node));
            }
        }
        crate::outln!(
            "latencies in ms; {} ms measured{}",
            report.duration_ms,
            if report.stopped_early {
                " (interrupted)"
            } else {
                ""
            }
        );
    }
    if report.keys_left > 0 {
        output::warn(format!(
            "{} probe key(s) could not be deleted; they expire on their own within a minute",
            report.keys_left
        ));
    }
    Ok(if report.stopped_early {
        EXIT_INTERRUPTED
    } else if report.nodes.iter().all(|n| n.latency.is_none()) {
        EXIT_FAILED
    } else if report
        .nodes
        .iter()
        .any(|n| n.error.is_some() || n.errors > 0)
    {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}
