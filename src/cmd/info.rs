//! `rcops info`: renders [`rcops_core::ops::info`] — one summary row per node, or one raw
//! section from every node.

use rcops_core::ops::info::{section, summary, NodeInfo};
use rcops_core::topology::Detail;

use super::{view_light, CmdResult, Failure};
use crate::cli::{GlobalOpts, InfoArgs};
use crate::output::{self, age, bytes, opt, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &InfoArgs) -> CmdResult {
    let (exec, view) = view_light(g, Detail::Full).await?;
    if let Some(name) = &a.section {
        let report = section(&exec, &view, &a.nodes, name).await;
        if report.nodes.is_empty() && report.errors.is_empty() {
            return Err(Failure::usage(format!("no node matches {:?}", a.nodes)));
        }
        if g.json {
            output::print_json(&report);
        } else {
            let mut t = output::table(&["NODE", "FIELD", "VALUE"]);
            for (node, fields) in &report.nodes {
                for (k, v) in fields {
                    t.add_row(vec![node.as_str(), k.as_str(), v.as_str()]);
                }
            }
            output::print_table(&t);
            for e in report.errors.values() {
                output::error(e);
            }
        }
        return Ok(if report.errors.is_empty() {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        });
    }
    let rows = summary(&view, &a.nodes, a.raw);
    if rows.is_empty() {
        return Err(Failure::usage(format!("no node matches {:?}", a.nodes)));
    }
    let failed = rows.iter().any(|r| r.error.is_some());
    if g.json {
        output::print_json(&rows);
        return Ok(if failed { EXIT_FINDINGS } else { EXIT_OK });
    }
    let mut t = output::table(&[
        "NODE", "ROLE", "VERSION", "UPTIME", "MEM", "PEAK", "MAXMEM", "FRAG", "CLIENTS", "BLOCKED",
        "OPS/S", "CMDS", "HIT%", "KEYS", "EXPIRES", "EVICTED", "EXPIRED", "OFFSET", "LAG", "LINK",
        "RDB", "AOF",
    ]);
    for r in &rows {
        if r.error.is_some() {
            // The cause goes under the table, so it neither fills a column nor widens it.
            t.add_row(vec![r.addr.clone(), r.role.clone(), "DOWN".into()]);
            continue;
        }
        t.add_row(vec![
            r.addr.clone(),
            if r.loading {
                format!("{} (loading)", r.role)
            } else {
                r.role.clone()
            },
            opt(r.version.as_deref()),
            opt(r.uptime_s.map(age)),
            opt(r.used_memory.map(bytes)),
            opt(r.used_memory_peak.map(bytes)),
            maxmemory_cell(r.maxmemory),
            opt(r.fragmentation.map(|f| format!("{f:.2}"))),
            opt(r.clients),
            opt(r.blocked_clients),
            opt(r.ops_per_sec),
            opt(r.total_commands),
            opt(r.hit_rate_pct.map(|h| format!("{h:.1}"))),
            r.keys.to_string(),
            r.expires.to_string(),
            opt(r.evicted),
            opt(r.expired),
            opt(r.repl_offset),
            opt(r.lag_bytes),
            opt(r.master_link.as_deref()),
            opt(r.rdb_last_bgsave.as_deref()),
            aof_cell(r),
        ]);
    }
    output::align_right(
        &mut t,
        &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
    );
    output::print_table(&t);
    for r in rows.iter().filter(|r| r.error.is_some()) {
        output::error(r.error.as_deref().unwrap_or_default());
    }
    Ok(if failed { EXIT_FINDINGS } else { EXIT_OK })
}

/// `maxmemory` as operators read it: `none` for 0 (unlimited).
pub fn maxmemory_cell(m: Option<u64>) -> String {
    match m {
        Some(0) => "none".to_string(),
        m => opt(m.map(bytes)),
    }
}

/// AOF state: `off`, or the last write status when on.
pub fn aof_cell(r: &NodeInfo) -> String {
    match (r.aof_enabled, &r.aof_last_write) {
        (Some(true), Some(s)) => s.clone(),
        (Some(false), _) => "off".to_string(),
        _ => "-".to_string(),
    }
}
