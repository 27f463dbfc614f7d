//! `rcops backup [list|verify|prune]`: render [`rcops_core::ops::backup`].

use rcops_core::ops::backup::{self, BackupError, BackupOptions, Listed};
use rcops_core::ops::follow;
use rcops_core::topology::Detail;
use std::path::{Path, PathBuf};

use super::config::default_state_dir;
use super::{view, CmdResult, Failure};
use crate::cli::{BackupArgs, BackupCommand, GlobalOpts};
use crate::output::{self, bytes, paint, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK};

pub(super) fn backup_dir(g: &GlobalOpts, dir: &Option<PathBuf>) -> PathBuf {
    dir.clone().unwrap_or_else(|| {
        g.state_dir
            .clone()
            .unwrap_or_else(default_state_dir)
            .join("backups")
    })
}

pub async fn run(g: &GlobalOpts, a: &BackupArgs) -> CmdResult {
    let dir = backup_dir(g, &a.dir);
    match &a.command {
        None => create(g, a, &dir).await,
        Some(BackupCommand::Follow {
            segment_size,
            segment_age,
            base_every,
            keep,
            metrics,
        }) => {
            let opts = follow::FollowOptions {
                dir: dir.clone(),
                from_replicas: !a.from_masters,
                idle_timeout: a.idle_timeout,
                segment_bytes: (*segment_size).max(1),
                segment_age: *segment_age,
                base_every: (!base_every.is_zero()).then_some(*base_every),
                keep: *keep,
                stats: std::sync::Arc::new(follow::FollowStats::new(metrics.is_some())),
            };
            follow(g, opts, metrics.as_deref()).await
        }
        Some(BackupCommand::List) => {
            let all = backup::list(&dir).map_err(Failure::failed)?;
            let chains: Vec<follow::ChainSummary> = follow::chains(&dir)
                .map_err(Failure::failed)?
                .iter()
                .rev()
                .map(|(p, c)| follow::ChainSummary::of(p, c))
                .collect();
            if g.json {
                output::print_json(&serde_json::json!({ "sets": all, "chains": chains }));
                return Ok(EXIT_OK);
            }
            print_chains(&chains);
            let mut t =
                output::table(&["ID", "AGE", "SHARDS", "KEYS", "SIZE", "STATUS", "VERIFIED"]);
            let now = backup::unix_ms();
            for l in &all {
                let (age, shards, keys, size, status) = match &l.manifest {
                    Some(m) => (
                        output::age(now.saturating_sub(m.finished_unix_ms) / 1000),
                        m.shards.len().to_string(),
                        m.shards.iter().map(|s| s.keys).sum::<u64>().to_string(),
                        bytes(m.shards.iter().map(|s| s.compressed_bytes).sum()),
                        m.status.clone(),
                    ),
                    None => (
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        if l.problem
                            .as_deref()
                            .is_some_and(|p| p.starts_with("in progress"))
                        {
                            "in progress".into()
                        } else {
                            "unfinished".into()
                        },
                    ),
                };
                let verified = match &l.verified {
                    Some(v) if v.ok => "ok".to_string(),
                    Some(_) => "FAILED".to_string(),
                    None => "-".to_string(),
                };
                let status = if status == "complete" {
                    status
                } else {
                    paint("critical").replace("critical", &status)
                };
                t.add_row(vec![
                    l.id.clone(),
                    age,
                    shards,
                    keys,
                    size,
                    status,
                    verified,
                ]);
            }
            output::align_right(&mut t, &[2, 3, 4]);
            if !all.is_empty() {
                output::print_table(&t);
            }
            crate::outln!(
                "{} backup set(s) and {} chain(s) in {}",
                all.len(),
                chains.len(),
                dir.display()
            );
            Ok(EXIT_OK)
        }
        Some(BackupCommand::Verify { id })
            if id.starts_with("c-") || Path::new(id).join(follow::CHAIN).is_file() =>
        {
            let (path, chain) = rcops_core::ops::pitr::find(&dir, id)?;
            let v = tokio::task::spawn_blocking(move || follow::verify_chain(&path, &chain))
                .await
                .map_err(Failure::failed)?;
            if g.json {
                output::print_json(&v);
            } else {
                let mut t = output::table(&[
                    "SLOTS", "BASE", "SEGMENTS", "COMMANDS", "RESULT", "PROBLEMS",
                ]);
                for s in &v.shards {
                    let mut problems = s.problems.clone();
                    for b in &s.bases {
                        problems.extend(b.problems.iter().map(|p| format!("{}: {p}", b.file)));
                    }
                    t.add_row(vec![
                        s.slots.clone(),
                        match &s.bases[..] {
                            [] => "-".into(),
                            [b] => format!("{} keys", b.keys),
                            [.., b] => format!("{} sets, newest {} keys", s.bases.len(), b.keys),
                        },
                        s.segments.to_string(),
                        s.commands.to_string(),
                        paint(if s.ok { "ok" } else { "critical" }).replace("critical", "FAILED"),
                        problems.join("; "),
                    ]);
                }
                output::align_right(&mut t, &[2, 3]);
                output::print_table(&t);
                crate::outln!(
                    "chain {}: {}",
                    v.chain,
                    if v.ok { "verified" } else { "NOT VERIFIED" }
                );
            }
            Ok(if v.ok { EXIT_OK } else { EXIT_FAILED })
        }
        Some(BackupCommand::Verify { id }) => {
            let (folder, m) = backup::find(&dir, id).map_err(Failure::failed)?;
            let folder2 = folder.clone();
            let m2 = m.clone();
            let v = tokio::task::spawn_blocking(move || backup::verify(&folder2, &m2))
                .await
                .map_err(Failure::failed)?;
            if g.json {
                output::print_json(&v);
            } else {
                let mut t = output::table(&["FILE", "KEYS", "RESULT", "PROBLEMS"]);
                for s in &v.shards {
                    t.add_row(vec![
                        s.file.clone(),
                        s.keys.to_string(),
                        paint(if s.ok { "ok" } else { "critical" }).replace("critical", "FAILED"),
                        s.problems.join("; "),
                    ]);
                }
                output::align_right(&mut t, &[1]);
                output::print_table(&t);
                crate::outln!(
                    "backup {} ({}): {}",
                    m.id,
                    m.status,
                    if v.ok { "verified" } else { "NOT VERIFIED" }
                );
            }
            Ok(if v.ok { EXIT_OK } else { EXIT_FAILED })
        }
        Some(BackupCommand::Prune {
            keep_days,
            keep_last,
            yes,
        }) => {
            if keep_days.is_none() && keep_last.is_none() {
                return Err(Failure::usage("prune needs --keep-days and/or --keep-last"));
            }
            let all = backup::list(&dir).map_err(Failure::failed)?;
            let doomed = backup::prune_plan(&all, *keep_days, *keep_last);
            let show = |l: &Listed| {
                crate::outln!("  {} ({})", l.id, l.path);
            };
            if doomed.is_empty() {
                crate::outln!("nothing to prune ({} set(s) kept)", all.len());
                return Ok(EXIT_OK);
            }
            if !g.json {
                crate::outln!(
                    "would delete {} of {} backup set(s):",
                    doomed.len(),
                    all.len()
                );
                doomed.iter().for_each(show);
            }
            if !yes {
                return Err(Failure::usage("pass --yes to delete them"));
            }
            let mut deleted = Vec::new();
            for l in &doomed {
                std::fs::remove_dir_all(&l.path)
                    .map_err(|e| Failure::failed(format!("{}: {e}", l.path)))?;
                deleted.push(l.id.clone());
            }
            if g.json {
                output::print_json(&serde_json::json!({ "deleted": deleted }));
            } else {
                crate::outln!("deleted {} backup set(s)", deleted.len());
            }
            Ok(EXIT_OK)
        }
    }
}

async fn create(g: &GlobalOpts, a: &BackupArgs, dir: &Path) -> CmdResult {
    let (exec, view) = view(g, Detail::Health).await?;
    let cluster_nodes = backup::cluster_nodes_text(&exec, &view)
        .await
        .map_err(Failure::failed)?;
    let opts = BackupOptions {
        dir: dir.to_path_buf(),
        from_replicas: !a.from_masters,
        idle_timeout: a.idle_timeout,
        concurrency: g.concurrency as usize,
    };
    let (ctx, bars) = super::job_ctx(g.json);
    let result = backup::backup(&ctx, exec.options(), &view, cluster_nodes, &opts).await;
    bars.clear();
    let (m, folder) = match result {
        Ok(done) => done,
        Err(e @ BackupError::Interrupted(..)) => {
            return Err(Failure {
                code: EXIT_INTERRUPTED,
                message: e.to_string(),
            })
        }
        Err(e) => return Err(Failure::failed(e)),
    };
    if g.json {
        output::print_json(&serde_json::json!({ "path": folder, "manifest": m }));
    } else {
        let mut t = output::table(&[
            "SHARD", "NODE", "ROLE", "SLOTS", "KEYS", "RAW", "ZSTD", "RESULT",
        ]);
        for s in &m.shards {
            t.add_row(vec![
                s.master_id[..8.min(s.master_id.len())].to_string(),
                s.node.clone(),
                s.role.clone(),
                s.slots.clone(),
                s.keys.to_string(),
                bytes(s.raw_bytes),
                bytes(s.compressed_bytes),
                if s.ok {
                    "ok".to_string()
                } else {
                    s.error.clone().unwrap_or_default()
                },
            ]);
        }
        output::align_right(&mut t, &[4, 5, 6]);
        output::print_table(&t);
        for s in &m.shards {
            for n in &s.notes {
                output::warn(format!(
                    "shard {}: {n}",
                    &s.master_id[..8.min(s.master_id.len())]
                ));
            }
        }
        for w in &m.warnings {
            output::warn(w);
        }
        let secs = (m.finished_unix_ms - m.started_unix_ms) as f64 / 1000.0;
        if m.status == "complete" {
            crate::outln!(
                "backup {} complete in {secs:.1} s: {}",
                m.id,
                folder.display()
            );
        } else {
            output::error(format!(
                "backup {} is PARTIAL: {} of {} shard(s) failed; kept at {} marked partial",
                m.id,
                m.shards.iter().filter(|s| !s.ok).count(),
                m.shards.len(),
                folder.display()
            ));
        }
    }
    Ok(if m.status == "complete" {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

async fn follow(g: &GlobalOpts, opts: follow::FollowOptions, metrics: Option<&str>) -> CmdResult {
    let (exec, seeds) = super::executor(g)?;
    let (_, view) = view(g, Detail::Health).await?;
    let cluster_nodes = backup::cluster_nodes_text(&exec, &view)
        .await
        .map_err(Failure::failed)?;
    let (ctx, bars) = super::job_ctx(g.json);
    let server = match metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::failed(format!("--metrics: cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_or(addr.to_string(), |a| a.to_string());
            output::note(format!("follower metrics on http://{local}/metrics"));
            let stop = ctx.cancel.clone();
            Some(tokio::spawn(rcops_server::serve_follow(
                listener,
                opts.stats.clone(),
                async move { stop.cancelled().await },
            )))
        }
        None => None,
    };
    if !g.json {
        output::note(format!(
            "archiving into {} (Ctrl-C or SIGTERM stops cleanly)",
            opts.dir.join("chains").display()
        ));
    }
    let r = follow::follow(&ctx, &exec, &seeds, &view, cluster_nodes, &opts).await;
    ctx.cancel.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    bars.clear();
    let r = r?;
    if g.json {
        output::print_json(&r);
    } else {
        let mut t = output::table(&[
            "SLOTS",
            "NODE",
            "BASE KEYS",
            "FRESH BASES",
            "SEGMENTS",
            "COMMANDS",
            "ZSTD",
            "OFFSET",
            "COVERED UNTIL",
            "RESULT",
        ]);
        for s in &r.shards {
            t.add_row(vec![
                s.slots.clone(),
                s.node.clone(),
                s.base_keys.map_or("-".into(), |k| k.to_string()),
                s.rebases.to_string(),
                s.segments.to_string(),
                s.commands.to_string(),
                bytes(s.bytes),
                s.offset.to_string(),
                output::unix_ms_text(s.covered_until_unix_ms),
                s.error.clone().unwrap_or_else(|| "ok".into()),
            ]);
        }
        output::align_right(&mut t, &[2, 3, 4, 5, 6, 7]);
        output::print_table(&t);
        for s in r.shards.iter().filter(|s| s.recovered_commands > 0) {
            output::note(format!(
                "{}: {} command(s) recovered from the segment a stopped follower left open",
                s.slots, s.recovered_commands
            ));
        }
        for c in &r.closed {
            output::warn(format!(
                "chain {c} was closed: a shard's source no longer held its offset; the gap is \
                 recorded in the new chain (rcops backup list)"
            ));
        }
        crate::outln!(
            "chain {} ({}): {}",
            r.chain,
            if r.continued { "continued" } else { "new" },
            r.path.display()
        );
    }
    Ok(r.outcome.exit_code())
}

/// The chains of `backup follow`, newest first, with the window each covers and its gaps.
fn print_chains(chains: &[follow::ChainSummary]) {
    if chains.is_empty() {
        return;
    }
    let mut t = output::table(&[
        "CHAIN", "STATUS", "SHARDS", "FROM", "UNTIL", "BASES", "SEGMENTS", "SIZE", "GAPS",
    ]);
    for c in chains {
        t.add_row(vec![
            c.id.clone(),
            c.status.clone(),
            c.shards.len().to_string(),
            output::unix_ms_text(c.from_unix_ms),
            output::unix_ms_text(c.until_unix_ms),
            c.bases.to_string(),
            c.segments.to_string(),
            bytes(c.bytes),
            if c.gaps.is_empty() {
                "none".into()
            } else {
                paint("critical").replace("critical", &c.gaps.len().to_string())
            },
        ]);
    }
    output::align_right(&mut t, &[2, 5, 6, 7]);
    output::print_table(&t);
    for c in chains {
        for g in &c.gaps {
            output::warn(format!(
                "chain {}: shard {} has no archive from {} to {}: {}",
                c.id,
                g.slots,
                output::unix_ms_text(g.from_unix_ms),
                match (g.to_unix_ms, c.status.as_str()) {
                    (0, "closed") => "the chain's end".to_string(),
                    (0, _) => "its next base".to_string(),
                    (t, _) => output::unix_ms_text(t),
                },
                g.why
            ));
        }
        for w in &c.undated {
            output::note(format!(
                "chain {}: shard {} from {} to {} is archived without its times (a restore \
                 cannot cut inside it): {}",
                c.id,
                w.slots,
                output::unix_ms_text(w.from_unix_ms),
                output::unix_ms_text(w.to_unix_ms),
                w.why
            ));
        }
    }
    crate::outln!("");
}
