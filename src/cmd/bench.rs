//! `rcops bench`: runs [`rcops_core::ops::bench`] and renders throughput and latency.

use rcops_core::ops::bench::{bench, BenchOptions};
use rcops_core::topology::Detail;

use super::{cancel_on_signals, view_light, CmdResult, Failure};
use crate::cli::{BenchArgs, GlobalOpts};
use crate::output::{self, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &BenchArgs) -> CmdResult {
    let (exec, view) = view_light(g, Detail::Health).await?;
    let requests = match (a.duration, a.requests) {
        (None, None) => Some(100_000),
        (_, r) => r,
    };
    let opts = BenchOptions {
        clients: a.clients as usize,
        pipeline: a.pipeline as usize,
        duration: a.duration,
        requests,
        keyspace: a.keyspace,
        value_size: a.value_size as usize,
        ratio: a.ratio,
        rate: a.rate,
        tick: a.tick,
        keep: a.keep,
        threads: a.threads.unwrap_or(0) as usize,
    };
    let stop = cancel_on_signals();
    let pb = match requests {
        Some(n) => output::progress(
            Some(n),
            g.json,
            "{spinner} {pos}/{len} requests [{bar:30}] {per_sec} eta {eta}",
        ),
        None => output::progress(
            None,
            g.json,
            "{spinner} {pos} requests {per_sec} ({elapsed})",
        ),
    };
    let bar = pb.clone();
    let report = bench(
        &exec,
        &view,
        &opts,
        stop,
        std::sync::Arc::new(move |n| bar.inc(n)),
    )
    .await;
    pb.finish_and_clear();
    let report = report.map_err(Failure::failed)?;
    if g.json {
        output::print_json(&report);
    } else {
        crate::outln!(
            "{} requests in {:.2}s: {:.0} requests/s ({} clients on {} thread(s), pipeline {}, {} errors)",
            report.total,
            report.elapsed_ms as f64 / 1000.0,
            report.ops_per_sec,
            a.clients,
            report.threads,
            a.pipeline,
            report.errors
        );
        let mut t = output::table(&[
            "COMMAND", "COUNT", "ERRORS", "OPS/S", "P50", "P95", "P99", "P99.9", "MAX",
        ]);
        for (name, c) in &report.commands {
            let mut row = vec![
                name.to_string(),
                c.count.to_string(),
                c.errors.to_string(),
                format!("{:.0}", c.ops_per_sec),
            ];
            row.extend(output::percentile_cells(&c.latency));
            t.add_row(row);
            if let Some(service) = &c.service {
                let mut row = vec![
                    format!("  {name} sent"),
                    String::new(),
                    String::new(),
                    String::new(),
                ];
                row.extend(output::percentile_cells(service));
                t.add_row(row);
            }
        }
        output::align_right(&mut t, &[1, 2, 3, 4, 5, 6, 7, 8]);
        output::print_table(&t);
        crate::outln!(
            "latencies in ms{}",
            if a.rate.is_some() {
                ", from each batch's intended send time (\"sent\": from its real send)"
            } else {
                ""
            }
        );
        let per_node: Vec<String> = report
            .per_node
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        crate::outln!("per node: {}", per_node.join(", "));
        if !a.keep {
            crate::outln!("deleted {} benchmark keys", report.keys_deleted);
        }
        for e in &report.error_samples {
            output::error(e);
        }
    }
    // Stopped by Ctrl-C: what ran is reported and the keys are gone, but the run is not
    // complete (130, as `latency` and `backup`).
    Ok(if report.stopped_early {
        EXIT_INTERRUPTED
    } else if report.errors > 0 {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}
