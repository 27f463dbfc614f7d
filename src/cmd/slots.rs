//! `rcops slots`: renders [`rcops_core::ops::slots`].

use rcops_core::ops::slots::slots;
use rcops_core::topology::Detail;

use super::{view, CmdResult};
use crate::cli::GlobalOpts;
use crate::output::{self, opt, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts) -> CmdResult {
    let (_exec, view) = view(g, Detail::Keyspace).await?;
    let report = slots(&view);
    let problems = report.uncovered != "-" || !report.open.is_empty();
    if g.json {
        output::print_json(&report);
    } else {
        let mut t = output::table(&[
            "MASTER",
            "ID",
            "SLOTS",
            "SHARE",
            "DEVIATION",
            "KEYS",
            "RANGES",
        ]);
        for m in &report.masters {
            t.add_row(vec![
                m.addr.clone(),
                m.id.get(..8).unwrap_or(&m.id).to_string(),
                m.slots.to_string(),
                format!("{:.1}%", m.share_pct),
                format!("{:+.1}%", m.deviation_pct),
                opt(m.keys),
                m.ranges.clone(),
            ]);
        }
        output::align_right(&mut t, &[2, 3, 4, 5]);
        output::print_table(&t);
        crate::outln!(
            "\ncovered: {}/16384   uncovered: {}   keys: {}",
            report.covered,
            report.uncovered,
            report.total_keys
        );
        if !report.open.is_empty() {
            crate::outln!("open slots:");
            for o in &report.open {
                let dir = if o.state == "migrating" { "->" } else { "<-" };
                crate::outln!("  {} {} {} {} ({})", o.slot, o.node, dir, o.peer, o.state);
            }
        }
    }
    Ok(if problems { EXIT_FINDINGS } else { EXIT_OK })
}
