//! `rcops slots`: renders [`rcops_core::ops::slots`].

use rcops_core::ops::slots::slots;
use rcops_core::topology::Detail;

use super::{view, CmdResult};
use crate::cli::GlobalOpts;
use crate::output::{self, opt, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts) -> CmdResult {
    let (_exec, view) = view(g, Detail::Keyspace).await?;
    let report = slots(&view);
    let problems = report.has_problems();
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
                m.deviation_pct
                    .map_or_else(|| "-".to_string(), |d| format!("{d:+.1}%")),
                opt(m.keys),
                match (m.slots, m.failed) {
                    (0, true) => "- (failed)".to_string(),
                    _ => m.ranges.clone(),
                },
            ]);
        }
        output::align_right(&mut t, &[2, 3, 4, 5]);
        output::print_table(&t);
        let unread = report
            .masters
            .iter()
            .filter(|m| m.slots > 0 && m.keys.is_none())
            .count();
        crate::outln!(
            "\ncovered: {}/16384   uncovered: {}   keys: {}{}",
            report.covered,
            report.uncovered,
            report.total_keys,
            if unread > 0 {
                format!(" (INCOMPLETE: {unread} master(s) not read)")
            } else {
                String::new()
            }
        );
        for m in &report.masters {
            if let Some(e) = &m.error {
                output::warn(format!("{}: {e}", m.addr));
            }
        }
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
