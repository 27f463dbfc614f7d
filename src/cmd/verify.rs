//! `rcops verify`: flags → [`rcops_core::ops::verify`] options, the summary per kind and
//! per shard, differences as JSON Lines to `--out`.

use rcops_core::job::Outcome;
use rcops_core::ops::verify::{self, Difference, Mode, VerifyOptions};
use rcops_core::route::KeyFilter;
use rcops_core::topology::Detail;
use std::io::Write;

use super::job_ctx;
use super::migrate::Sides;
use super::{CmdResult, Failure};
use crate::cli::{GlobalOpts, VerifyArgs, VerifyCommand};
use crate::output;

pub async fn run(g: &GlobalOpts, a: &VerifyArgs) -> CmdResult {
    if let Some(VerifyCommand::Replicas { sample, rate }) = &a.sub {
        return replicas(g, *sample, rate.unwrap_or(0)).await;
    }
    let opts = VerifyOptions {
        mode: match a.mode.as_str() {
            "keys" => Mode::Keys,
            "length" => Mode::Length,
            _ => Mode::Full,
        },
        rounds: a.rounds,
        interval: a.interval,
        both_directions: a.both_directions,
        ttl_tolerance: a.ttl_tolerance,
        filter: KeyFilter {
            pattern: a.keys.pattern.clone(),
            prefixes: a.keys.prefixes.clone(),
            exclude_prefixes: a.keys.exclude_prefixes.clone(),
            types: Vec::new(),
        },
        rate: a.rate.unwrap_or(0),
        from_masters: a.from_masters,
        batch: a.batch as usize,
    };
    let mut out = match &a.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::usage(format!("--out {}: {e}", path.display())))?,
        )),
        None => None,
    };
    let sides = Sides::open(g, &a.ends, Detail::Health, Detail::Health).await?;
    let ends = verify::Ends {
        from: &sides.from,
        from_view: &sides.from_view,
        to: &sides.to,
        to_view: &sides.to_view,
    };
    let (ctx, bars) = job_ctx(g.json);
    let mut write_error = None;
    let mut sink = |d: &Difference| {
        if let Some(w) = out.as_mut() {
            let line = serde_json::to_string(d).unwrap_or_default();
            if let Err(e) = writeln!(w, "{line}") {
                write_error.get_or_insert(e.to_string());
            }
        }
    };
    let report = verify::verify(&ctx, &ends, &opts, &mut sink)
        .await
        .map_err(Failure::from)?;
    bars.clear();
    if let Some(mut w) = out {
        if let Err(e) = w.flush() {
            write_error.get_or_insert(e.to_string());
        }
    }
    if let Some(e) = write_error {
        return Err(Failure::failed(format!("writing the differences: {e}")));
    }
    if g.json {
        output::print_json(&report);
        return Ok(report.outcome.exit_code());
    }
    let kinds = [
        "missing_on_target",
        "missing_on_source",
        "type",
        "ttl",
        "length",
        "value",
    ];
    let mut header = vec!["SOURCE SLOTS", "READ FROM", "KEYS"];
    header.extend(kinds);
    let mut t = output::table(&header);
    for s in &report.shards {
        let mut row = vec![s.slots.clone(), s.node.clone(), s.keys_checked.to_string()];
        for k in kinds {
            row.push(s.differences.get(k).copied().unwrap_or(0).to_string());
        }
        t.add_row(row);
    }
    output::align_right(&mut t, &[2, 3, 4, 5, 6, 7, 8]);
    output::print_table(&t);
    for s in &report.shards {
        if let Some(e) = &s.error {
            output::error(format!("{}: {e}", s.slots));
        }
    }
    for d in report.examples.iter().take(10) {
        crate::outln!("  {}: {}", d.kind, d.shown_key());
    }
    let total: u64 = report.differences.values().sum();
    let verdict = match report.outcome {
        Outcome::Ok => "identical".to_string(),
        Outcome::Findings => format!(
            "{total} difference(s) persisted through {} round(s)",
            report.rounds
        ),
        Outcome::Failed => "INCOMPLETE: a shard could not be read (above)".to_string(),
        Outcome::Interrupted => "interrupted: the comparison is incomplete".to_string(),
    };
    crate::outln!(
        "{} keys compared ({} mode, {}/s); {} settled between rounds: {verdict}",
        report.keys_checked,
        a.mode,
        output::grouped(report.keys_per_sec as u64),
        report.settled
    );
    Ok(report.outcome.exit_code())
}

/// `rcops verify replicas`: each replica against its master.
async fn replicas(g: &GlobalOpts, sample: Option<u64>, rate: u64) -> CmdResult {
    let (exec, view) = super::view(g, Detail::Health).await?;
    let (ctx, bars) = job_ctx(g.json);
    let report = verify::replicas(&ctx, &exec, &view, sample, rate).await;
    bars.clear();
    if g.json {
        output::print_json(&report);
        return Ok(report.outcome.exit_code());
    }
    let mut t = output::table(&[
        "SLOTS",
        "MASTER",
        "REPLICA",
        "LINK",
        "LAG",
        "KEYS",
        "DIFFERENCES",
    ]);
    for r in &report.replicas {
        let diffs: Vec<String> = r
            .differences
            .iter()
            .map(|(k, n)| format!("{} {n}", replica_kind(k)))
            .collect();
        t.add_row(vec![
            r.slots.clone(),
            r.master.clone(),
            r.replica.clone(),
            r.link.clone(),
            output::opt(r.lag_bytes.map(output::bytes)),
            r.keys_checked.to_string(),
            if diffs.is_empty() {
                "0".into()
            } else {
                diffs.join(", ")
            },
        ]);
    }
    output::align_right(&mut t, &[4, 5]);
    output::print_table(&t);
    for r in &report.replicas {
        if let Some(e) = &r.error {
            output::error(format!("{}: {e}", r.replica));
        }
        for d in r.examples.iter().take(5) {
            crate::outln!(
                "  {}: {}: {}",
                r.replica,
                replica_kind(d.kind),
                d.shown_key()
            );
        }
    }
    Ok(report.outcome.exit_code())
}

/// A difference's kind named for a master and its replica.
fn replica_kind(kind: &str) -> String {
    kind.replace("_target", "_replica")
        .replace("_source", "_master")
}
