//! `rcops backup [list|verify|prune]` and `rcops restore`: render
//! [`rcops_core::ops::backup`] and [`rcops_core::ops::restore`].

use rcops_core::ops::backup::{self, BackupOptions, Listed};
use rcops_core::ops::restore::{self, OnConflict, RestoreOptions, SourceFile};
use rcops_core::topology::Detail;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::config::default_state_dir;
use super::{view, view_light, CmdResult, Failure};
use crate::cli::{BackupArgs, BackupCommand, GlobalOpts, RestoreArgs};
use crate::output::{self, bytes, paint, EXIT_FAILED, EXIT_FINDINGS, EXIT_INTERRUPTED, EXIT_OK};

fn backup_dir(g: &GlobalOpts, dir: &Option<PathBuf>) -> PathBuf {
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
        Some(BackupCommand::List) => {
            let all = backup::list(&dir).map_err(Failure::failed)?;
            if g.json {
                output::print_json(&all);
                return Ok(EXIT_OK);
            }
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
                        "unfinished".into(),
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
            output::print_table(&t);
            crate::outln!("{} backup set(s) in {}", all.len(), dir.display());
            Ok(EXIT_OK)
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
    let srcs = backup::sources(&view, !a.from_masters);
    let bar = output::progress(None, g.json, "{spinner} {msg}");
    let totals: Arc<std::sync::Mutex<Vec<u64>>> =
        Arc::new(std::sync::Mutex::new(vec![0; srcs.len()]));
    let bar2 = bar.clone();
    let t2 = totals.clone();
    let progress = Arc::new(move |i: usize, n: u64| {
        if let Ok(mut t) = t2.lock() {
            if let Some(x) = t.get_mut(i) {
                *x = n;
            }
            let sum: u64 = t.iter().sum();
            bar2.set_message(format!("{} shards, {} received", t.len(), bytes(sum)));
        }
    });
    let opts = BackupOptions {
        dir: dir.to_path_buf(),
        from_replicas: !a.from_masters,
        idle_timeout: Duration::from_secs(60).max(g.timeout * 10),
        concurrency: g.concurrency as usize,
    };
    let (m, folder) = backup::backup(exec.options(), &view, cluster_nodes, &opts, progress)
        .await
        .map_err(Failure::failed)?;
    bar.finish_and_clear();
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

pub async fn restore(g: &GlobalOpts, a: &RestoreArgs) -> CmdResult {
    if let Some(aof) = &a.aof {
        return replay_aof(g, a, aof).await;
    }
    let dir = backup_dir(g, &a.dir);
    let source = a.source.clone().unwrap_or_default();
    // Sources: a backup set (id, prefix or folder), or RDB files.
    let src_path = Path::new(&source);
    let (label, mut sources, expected): (String, Vec<SourceFile>, Option<u64>) = if src_path
        .is_file()
    {
        (
            src_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vec![SourceFile {
                label: source.clone(),
                path: src_path.to_path_buf(),
            }],
            None,
        )
    } else {
        let (folder, m) = backup::find(&dir, &source).map_err(Failure::failed)?;
        if m.status != "complete" {
            return Err(Failure::failed(format!(
                    "backup {} is {}: some shards are missing; restore its files one by one if you must",
                    m.id, m.status
                )));
        }
        let files = m
            .shards
            .iter()
            .map(|s| SourceFile {
                label: s.file.clone(),
                path: folder.join(&s.file),
            })
            .collect();
        (
            m.id.clone(),
            files,
            Some(m.shards.iter().map(|s| s.keys).sum()),
        )
    };
    for f in &a.files {
        if !f.is_file() {
            return Err(Failure::failed(format!("{}: no such file", f.display())));
        }
        sources.push(SourceFile {
            label: f.display().to_string(),
            path: f.clone(),
        });
    }
    // Every file must at least open as an RDB before anything else.
    for s in &sources {
        rcops_core::ops::rdb::parser(&s.path).map_err(Failure::failed)?;
    }
    let (exec, view) = view_light(g, Detail::Health).await?;
    let policy = a.on_conflict.clone().unwrap_or_else(|| "fail".into());
    let on_conflict = match policy.as_str() {
        "skip" => OnConflict::Skip,
        "replace" => OnConflict::Replace,
        _ => OnConflict::Fail,
    };
    let target_version = restore::target_rdb_version(&exec, &view)
        .await
        .map_err(Failure::failed)?;
    let existing = restore::target_keys(&exec, &view).await;
    let key = rcops_core::ops::config::cluster_key(&view);
    let checkpoint = g
        .state_dir
        .clone()
        .unwrap_or_else(default_state_dir)
        .join("restore")
        .join(format!("{}-into-{key}.json", sanitize(&label)));
    let opts = RestoreOptions {
        on_conflict,
        pattern: a.pattern.clone(),
        types: a.types.clone(),
        db: a.db,
        batch: a.batch as usize,
        checkpoint,
        resume: a.resume,
        rate: a.rate,
    };
    let masters = view.masters().filter(|m| m.slot_count() > 0).count();
    if !g.json {
        crate::outln!(
            "plan: restore {} file(s) of {label}{} into {masters} master(s) ({} keys there now), on conflict: {}{}",
            sources.len(),
            expected.map(|k| format!(" ({k} keys)")).unwrap_or_default(),
            existing,
            policy,
            if a.resume { ", resuming from the checkpoint" } else { "" }
        );
    }
    if a.dry_run {
        return Ok(EXIT_OK);
    }
    if !a.yes {
        return Err(Failure::usage("pass --yes to restore (or --dry-run)"));
    }
    // Refuse before writing: value types the target cannot load, keys that already exist.
    let check_existing = on_conflict == OnConflict::Fail && existing > 0 && !a.resume;
    restore::preflight(
        &exec,
        &view,
        &sources,
        &opts,
        target_version,
        check_existing,
    )
    .await
    .map_err(Failure::failed)?;
    let bar = output::progress(
        expected,
        g.json,
        "{bar:30} {pos}/{len} keys {per_sec} eta {eta}",
    );
    let b2 = bar.clone();
    let progress = Arc::new(move |n: u64| b2.inc(n));
    let stop = super::stop_on_ctrl_c();
    let report = restore::restore(
        &exec,
        &view,
        &sources,
        &opts,
        target_version,
        stop,
        progress,
    )
    .await
    .map_err(Failure::failed)?;
    bar.finish_and_clear();
    if g.json {
        output::print_json(&report);
    } else {
        let mut t = output::table(&[
            "SOURCE",
            "RESTORED",
            "EXPIRED",
            "FILTERED",
            "EXISTING",
            "EARLIER RUN",
            "FAILED",
        ]);
        let row = |name: String, c: &restore::Counts| {
            vec![
                name,
                c.restored.to_string(),
                c.skipped_expired.to_string(),
                c.skipped_filtered.to_string(),
                c.skipped_existing.to_string(),
                c.already_done.to_string(),
                c.failed.to_string(),
            ]
        };
        for (s, c) in &report.per_source {
            t.add_row(row(s.clone(), c));
        }
        t.add_row(row("total".into(), &report.total));
        output::align_right(&mut t, &[1, 2, 3, 4, 5, 6]);
        output::print_table(&t);
        let mut t = output::table(&["TYPE", "RESTORED", "EXISTING", "FAILED"]);
        for (ty, c) in &report.per_type {
            t.add_row(vec![
                ty.to_string(),
                c.restored.to_string(),
                c.skipped_existing.to_string(),
                c.failed.to_string(),
            ]);
        }
        output::align_right(&mut t, &[1, 2, 3]);
        output::print_table(&t);
        for e in &report.errors {
            output::error(e);
        }
        crate::outln!(
            "{} keys restored in {:.1} s ({} keys/s)",
            report.total.restored,
            report.elapsed_ms as f64 / 1000.0,
            report.keys_per_sec
        );
    }
    if report.interrupted {
        output::error("interrupted: run the same command with --resume to continue");
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(if report.total.failed > 0 {
        EXIT_FAILED
    } else if report.total.skipped_existing > 0 {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

/// `--until`: RFC 3339 or Unix seconds.
fn parse_until(s: &str) -> Result<u64, Failure> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            Failure::usage(format!(
                "--until {s:?}: expected RFC 3339 (2026-11-25T10:00:00Z) or Unix seconds"
            ))
        })
}

async fn replay_aof(g: &GlobalOpts, a: &RestoreArgs, path: &Path) -> CmdResult {
    let until = a.until.as_deref().map(parse_until).transpose()?;
    let files = rcops_core::ops::aof::files(path).map_err(Failure::failed)?;
    for f in &files {
        if !f.is_file() {
            return Err(Failure::failed(format!(
                "{}: no such file (listed by the manifest?)",
                f.display()
            )));
        }
    }
    let (exec, view) = view_light(g, Detail::Health).await?;
    if !g.json {
        crate::outln!(
            "plan: replay {} file(s) from {} into {} master(s){}",
            files.len(),
            path.display(),
            view.masters().filter(|m| m.slot_count() > 0).count(),
            until
                .map(|u| format!(", stopping after {u} (Unix)"))
                .unwrap_or_default()
        );
    }
    if a.dry_run {
        return Ok(EXIT_OK);
    }
    if !a.yes {
        return Err(Failure::usage("pass --yes to replay (or --dry-run)"));
    }
    let target_version = restore::target_rdb_version(&exec, &view)
        .await
        .map_err(Failure::failed)?;
    let opts = rcops_core::ops::aof::AofOptions {
        until_unix: until,
        batch: a.batch as usize,
    };
    let report = rcops_core::ops::aof::replay(&exec, &view, path, &opts, target_version)
        .await
        .map_err(Failure::failed)?;
    if g.json {
        output::print_json(&report);
    } else {
        crate::outln!(
            "{} command(s) read, {} sent, {} failed; {} key(s) from an RDB preamble/base; {} transaction(s), {} split across slots",
            report.commands, report.sent, report.failed, report.preamble_keys, report.transactions, report.transactions_split
        );
        for (name, n) in &report.keyless_skipped {
            output::warn(format!("{n} {name} command(s) without keys not replayed"));
        }
        if report.other_db_skipped > 0 {
            output::warn(format!(
                "{} command(s) for databases other than 0 skipped",
                report.other_db_skipped
            ));
        }
        if let Some(ts) = report.stopped_at_ts {
            crate::outln!("stopped at the first entry after --until (#TS:{ts})");
        }
        for e in &report.errors {
            output::error(e);
        }
    }
    Ok(if report.failed > 0 {
        EXIT_FAILED
    } else if !report.keyless_skipped.is_empty() || report.transactions_split > 0 {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
