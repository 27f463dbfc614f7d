//! `rcops metrics`: renders [`rcops_core::ops::metrics`], once or refreshed with `--watch`.

use rcops_core::ops::metrics::{apply_deltas, metrics, MetricsReport};
use rcops_core::topology::{discover_light, Detail};
use std::io::IsTerminal;

use super::info::{aof_cell, maxmemory_cell};
use super::{executor, CmdResult, Failure};
use crate::cli::{GlobalOpts, MetricsArgs};
use crate::output::{self, bytes, opt, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &MetricsArgs) -> CmdResult {
    let (exec, seeds) = executor(g)?;
    let mut prev: Option<MetricsReport> = None;
    let mut round = 0u64;
    loop {
        let view = discover_light(&exec, &seeds, Detail::Full)
            .await
            .map_err(Failure::failed)?;
        let mut report = metrics(&view);
        if let Some(p) = &prev {
            apply_deltas(p, &mut report);
        }
        round += 1;
        if g.json {
            // One JSON document per line when watching, so the stream stays parseable.
            match (a.watch.is_some(), serde_json::to_string(&report)) {
                (true, Ok(line)) => crate::outln!("{line}"),
                _ => output::print_json(&report),
            }
        } else {
            if a.watch.is_some() && std::io::stdout().is_terminal() {
                // Redraw in place.
                print!("\x1b[2J\x1b[H");
            }
            render(&report);
        }
        let degraded = report.cluster.up < report.cluster.nodes;
        let Some(every) = a.watch else {
            return Ok(if degraded { EXIT_FINDINGS } else { EXIT_OK });
        };
        if a.count.is_some_and(|c| round >= c) {
            return Ok(if degraded { EXIT_FINDINGS } else { EXIT_OK });
        }
        prev = Some(report);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
    }
}

fn render(r: &MetricsReport) {
    let mut t = output::table(&[
        "NODE", "ROLE", "MEM", "MAXMEM", "FRAG", "CLIENTS", "BLOCKED", "REJECTED", "OPS/S", "CMDS",
        "HIT%", "KEYS", "EXPIRES", "EVICTED", "EXPIRED", "NET-IN", "NET-OUT", "LAG", "FORK-MS",
        "RDB", "AOF",
    ]);
    for n in &r.nodes {
        let i = &n.info;
        if i.error.is_some() {
            // The cause goes under the table, so it neither fills a column nor widens it.
            t.add_row(vec![i.addr.clone(), i.role.clone(), "DOWN".into()]);
            continue;
        }
        let ops = n
            .ops_per_sec_measured
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| opt(i.ops_per_sec));
        t.add_row(vec![
            i.addr.clone(),
            i.role.clone(),
            opt(i.used_memory.map(bytes)),
            maxmemory_cell(i.maxmemory),
            opt(i.fragmentation.map(|f| format!("{f:.2}"))),
            opt(i.clients),
            opt(i.blocked_clients),
            opt(i.rejected_connections),
            ops,
            opt(i.total_commands),
            opt(i.hit_rate_pct.map(|h| format!("{h:.1}"))),
            i.keys.to_string(),
            i.expires.to_string(),
            opt(i.evicted),
            opt(i.expired),
            opt(i.net_input_bytes.map(bytes)),
            opt(i.net_output_bytes.map(bytes)),
            opt(i.lag_bytes),
            opt(i
                .latest_fork_usec
                .map(|u| format!("{:.1}", u as f64 / 1000.0))),
            opt(i.rdb_last_bgsave.as_deref()),
            aof_cell(i),
        ]);
    }
    let c = &r.cluster;
    let ops = c
        .ops_per_sec_measured
        .map(|v| format!("{v:.0}"))
        .unwrap_or_else(|| c.ops_per_sec.to_string());
    t.add_row(vec![
        format!("TOTAL ({}/{} up)", c.up, c.nodes),
        String::new(),
        bytes(c.used_memory),
        if c.maxmemory == 0 {
            "none".to_string()
        } else {
            bytes(c.maxmemory)
        },
        String::new(),
        c.clients.to_string(),
        String::new(),
        c.rejected_connections.to_string(),
        ops,
        c.total_commands.to_string(),
        opt(c.hit_rate_pct.map(|h| format!("{h:.1}"))),
        c.keys.to_string(),
        c.expires.to_string(),
        c.evicted.to_string(),
        c.expired.to_string(),
        bytes(c.net_input_bytes),
        bytes(c.net_output_bytes),
    ]);
    output::align_right(&mut t, &(2..19).collect::<Vec<_>>());
    output::print_table(&t);
    for e in r.nodes.iter().filter_map(|n| n.info.error.as_ref()) {
        output::error(e);
    }
}
