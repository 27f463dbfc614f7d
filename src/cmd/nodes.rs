//! `rcops nodes`: renders [`rcops_core::ops::nodes`] as a tree of masters and replicas.

use rcops_core::ops::nodes::{nodes, NodeEntry};
use rcops_core::topology::Detail;

use super::{view_light, CmdResult};
use crate::cli::GlobalOpts;
use crate::output::{self, opt, paint, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts) -> CmdResult {
    let (_exec, view) = view_light(g, Detail::Health).await?;
    let report = nodes(&view);
    let unreachable = report
        .shards
        .iter()
        .flat_map(|s| std::iter::once(&s.master).chain(&s.replicas))
        .chain(&report.orphans)
        .any(|n| !n.reachable);
    if g.json {
        output::print_json(&report);
    } else {
        let mut t = output::table(&[
            "NODE", "ID", "ROLE", "FLAGS", "SLOTS", "RANGES", "LINK", "OFFSET", "LAG",
        ]);
        let row = |t: &mut comfy_table::Table, n: &NodeEntry, prefix: &str| {
            let link = match (&n.master_link, n.reachable) {
                (_, false) => paint("down"),
                (Some(l), _) => paint(l),
                (None, _) => n.link.to_string(),
            };
            t.add_row(vec![
                format!("{prefix}{}", n.addr),
                n.id.get(..8).unwrap_or(&n.id).to_string(),
                n.role.to_string(),
                n.flags.clone(),
                n.slots.to_string(),
                n.ranges.clone(),
                link,
                opt(n.repl_offset),
                opt(n.lag_bytes),
            ]);
        };
        for shard in &report.shards {
            row(&mut t, &shard.master, "");
            let last = shard.replicas.len().saturating_sub(1);
            for (i, r) in shard.replicas.iter().enumerate() {
                row(&mut t, r, if i == last { "└─ " } else { "├─ " });
            }
        }
        for o in &report.orphans {
            row(&mut t, o, "? ");
        }
        output::align_right(&mut t, &[4, 7, 8]);
        output::print_table(&t);
    }
    Ok(if unreachable { EXIT_FINDINGS } else { EXIT_OK })
}
