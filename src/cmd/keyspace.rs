//! `rcops bigkeys` / `rcops memkeys`: render [`rcops_core::ops::keyspace`], with a progress
//! bar per shard.

use indicatif::MultiProgress;
use rcops_core::ops::keyspace::{scan, scan_targets, ScanOptions};
use rcops_core::topology::Detail;
use std::collections::BTreeMap;

use super::{view_light, CmdResult};
use crate::cli::{GlobalOpts, ScanArgs};
use crate::output::{self, bytes, EXIT_FAILED, EXIT_OK};

pub async fn run(g: &GlobalOpts, a: &ScanArgs, memory: bool) -> CmdResult {
    let (exec, view) = view_light(g, Detail::Keyspace).await?;
    let opts = ScanOptions {
        memory,
        count: a.count as usize,
        rate: a.rate,
        from_replicas: a.from_replicas,
        top: a.top as usize,
        delimiter: a.delimiter.clone(),
        pattern: a.pattern.clone(),
    };
    let multi = MultiProgress::new();
    let bars: BTreeMap<_, _> = scan_targets(&view, a.from_replicas)
        .into_iter()
        .map(|(addr, _, keys)| {
            let pb = multi.add(output::progress(
                Some(keys.max(1)),
                g.json,
                &format!("{addr:>21} [{{bar:30}}] {{pos}}/{{len}} keys {{per_sec}}"),
            ));
            (addr, pb)
        })
        .collect();
    let report = scan(&exec, &view, &opts, &|addr, n| {
        if let Some(pb) = bars.get(addr) {
            pb.inc(n);
        }
    })
    .await;
    for pb in bars.values() {
        pb.finish_and_clear();
    }
    if g.json {
        output::print_json(&report);
    } else {
        let size = |elements: u64, mem: Option<u64>| match mem {
            Some(m) if memory => bytes(m),
            _ => elements.to_string(),
        };
        let mut t = output::table(&["TYPE", "KEYS", "ELEMENTS", "MEMORY"]);
        for (ty, tot) in &report.by_type {
            t.add_row(vec![
                ty.clone(),
                tot.keys.to_string(),
                tot.elements.to_string(),
                if memory {
                    bytes(tot.memory_bytes)
                } else {
                    "-".into()
                },
            ]);
        }
        output::align_right(&mut t, &[1, 2, 3]);
        output::print_table(&t);
        crate::outln!("");
        let mut t = output::table(&[
            "TYPE",
            if memory { "MEMORY" } else { "ELEMENTS" },
            "KEY",
            "NODE",
        ]);
        for (ty, list) in &report.biggest {
            for k in list {
                t.add_row(vec![
                    ty.clone(),
                    size(k.elements, k.memory_bytes),
                    k.key.clone(),
                    k.node.clone(),
                ]);
            }
        }
        output::align_right(&mut t, &[1]);
        output::print_table(&t);
        crate::outln!("");
        let mut t = output::table(&["PREFIX", "KEYS", "ELEMENTS", "MEMORY"]);
        for p in &report.prefixes {
            t.add_row(vec![
                p.prefix.clone(),
                p.totals.keys.to_string(),
                p.totals.elements.to_string(),
                if memory {
                    bytes(p.totals.memory_bytes)
                } else {
                    "-".into()
                },
            ]);
        }
        output::align_right(&mut t, &[1, 2, 3]);
        output::print_table(&t);
        crate::outln!(
            "\n{} keys scanned on {} shard(s) in {} ms",
            report.keys_scanned,
            report.shards,
            report.elapsed_ms
        );
        for e in report.errors.values() {
            output::error(e);
        }
        if !report.errors.is_empty() {
            output::error(format!(
                "INCOMPLETE: {} of {} shard(s) could not be scanned",
                report.errors.len(),
                report.shards
            ));
        }
    }
    // A shard that could not be scanned leaves the answer incomplete: a failed run.
    Ok(if report.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}
