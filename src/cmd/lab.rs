//! `rcops lab up|down|status|load`: local lab clusters (see [`rcops_lab`]).

use rand::distr::{Alphanumeric, SampleString};
use rcops_core::{Executor, Secret};
use rcops_lab::{self as lab, LabOptions, LabState};
use std::time::Instant;

use super::{connect_options, seeds, CmdResult, Failure};
use crate::cli::{GlobalOpts, LabCommand, LabUpArgs};
use crate::output::{self, paint, EXIT_FINDINGS, EXIT_OK};

pub async fn run(g: &GlobalOpts, c: &LabCommand) -> CmdResult {
    match c {
        LabCommand::Up(a) => up(g, a).await,
        LabCommand::Down { at, keep } => {
            let report = lab::down(&at.dir(), *keep).map_err(Failure::failed)?;
            if g.json {
                output::print_json(&report);
            } else {
                crate::outln!(
                    "stopped {} node(s) ({} already gone){}",
                    report.stopped,
                    report.already_gone,
                    if report.removed_dir {
                        format!(", removed {}", report.dir.display())
                    } else {
                        String::new()
                    }
                );
            }
            Ok(EXIT_OK)
        }
        LabCommand::Status { at } => {
            let report = lab::status(&at.dir(), g.timeout)
                .await
                .map_err(Failure::failed)?;
            let healthy = report.answering == report.nodes.len();
            if g.json {
                output::print_json(&report);
            } else {
                crate::outln!(
                    "lab {}: {}/{} running, {}/{} answering, seed {}{}",
                    report.dir.display(),
                    report.running,
                    report.nodes.len(),
                    report.answering,
                    report.nodes.len(),
                    report.seed,
                    if report.tls { " (TLS)" } else { "" }
                );
                let mut t =
                    output::table(&["PORT", "PID", "RUNNING", "ANSWERING", "ROLE", "ERROR"]);
                for n in &report.nodes {
                    t.add_row(vec![
                        n.port.to_string(),
                        n.pid.to_string(),
                        paint(if n.running { "yes" } else { "no" }),
                        paint(if n.answering { "yes" } else { "no" }),
                        output::opt(n.role.as_deref()),
                        output::opt(n.error.as_deref()),
                    ]);
                }
                output::print_table(&t);
            }
            Ok(if healthy { EXIT_OK } else { EXIT_FINDINGS })
        }
        LabCommand::Load { at, keys } => {
            // `-c` loads any cluster with the global options; otherwise the lab's own.
            let (exec, seeds) = if g.cluster.is_some() {
                (
                    Executor::new(connect_options(g)?, g.concurrency as usize),
                    seeds(g)?,
                )
            } else {
                let state = LabState::load(&at.dir()).map_err(Failure::failed)?;
                let opts = state.connect_options(g.timeout).map_err(Failure::failed)?;
                (
                    Executor::new(opts, g.concurrency as usize),
                    vec![state.seed()],
                )
            };
            let pb = output::progress(
                Some(*keys),
                g.json,
                "{spinner} loading {pos}/{len} keys [{bar:30}] {per_sec} eta {eta}",
            );
            let report = lab::load::load(&exec, &seeds, *keys, &|n| pb.inc(n)).await;
            pb.finish_and_clear();
            let report = report.map_err(Failure::failed)?;
            if g.json {
                output::print_json(&report);
            } else {
                let types: Vec<String> = report
                    .per_type
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect();
                crate::outln!(
                    "loaded {} keys ({}; {} with TTL) into {} masters in {} ms",
                    report.keys,
                    types.join(", "),
                    report.with_ttl,
                    report.per_master.len(),
                    report.elapsed_ms
                );
            }
            Ok(EXIT_OK)
        }
    }
}

async fn up(g: &GlobalOpts, a: &LabUpArgs) -> CmdResult {
    let dir = a.at.dir();
    let requirepass = a.requirepass.then(|| {
        std::env::var("RCOPS_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), 24))
    });
    let opts = LabOptions {
        masters: a.masters as usize,
        replicas: a.replicas as usize,
        port: a.at.port,
        dir: dir.clone(),
        server_bin: a.server_bin.clone(),
        tls: g.tls,
        requirepass: requirepass.map(Secret::new),
        node_timeout_ms: a.node_timeout,
        wait: a.wait,
    };
    let started = Instant::now();
    let pb = output::progress(None, g.json, "{spinner} {msg} ({elapsed})");
    let result = lab::up(&opts, &|stage| pb.set_message(stage.to_string())).await;
    pb.finish_and_clear();
    let state = result.map_err(Failure::failed)?;
    if g.json {
        output::print_json(&state);
        return Ok(EXIT_OK);
    }
    let last = state.nodes.last().map(|n| n.port).unwrap_or(state.port);
    crate::outln!(
        "lab up: {} nodes ({} masters, {} replica(s) each) on 127.0.0.1:{}-{} in {:.1}s",
        state.nodes.len(),
        state.masters,
        state.replicas,
        state.port,
        last,
        started.elapsed().as_secs_f64()
    );
    crate::outln!("dir:  {}", state.dir.display());
    crate::outln!("seed: {}", state.seed());
    let mut hint = format!("rcops check -c {}", state.seed());
    if let Some(t) = &state.tls {
        hint.push_str(&format!(" --tls --cacert {}", t.ca.display()));
    }
    if let Some(p) = &state.password_file {
        crate::outln!(
            "password: in {} (export RCOPS_PASSWORD=\"$(cat {})\")",
            p.display(),
            p.display()
        );
    }
    crate::outln!("try:  {hint}");
    Ok(EXIT_OK)
}
