//! `rcops restore`: render [`rcops_core::ops::restore`] (backup sets and RDB files) and
//! [`rcops_core::ops::aof`] (`--aof`).

use rcops_core::ops::restore::{self, OnConflict, RestoreError, RestoreOptions};
use rcops_core::topology::Detail;
use std::path::Path;

use super::backup::backup_dir;
use super::config::default_state_dir;
use super::{view, CmdResult, Failure};
use crate::cli::{GlobalOpts, RestoreArgs};
use crate::output::{self, EXIT_FAILED, EXIT_FINDINGS, EXIT_OK};

fn failure(e: RestoreError) -> Failure {
    match e {
        RestoreError::Usage(m) => Failure::usage(m),
        e => Failure::failed(e),
    }
}

fn on_conflict(a: &RestoreArgs) -> OnConflict {
    match a.on_conflict.as_deref() {
        Some("skip") => OnConflict::Skip,
        Some("replace") => OnConflict::Replace,
        _ => OnConflict::Fail,
    }
}

/// Prints the findings that make writing unsafe; an error unless `--force`.
fn refuse_unsafe(
    g: &GlobalOpts,
    blockers: &[rcops_core::ops::check::Finding],
    force: bool,
) -> Result<(), Failure> {
    if blockers.is_empty() {
        return Ok(());
    }
    if !g.json {
        for f in blockers {
            output::error(format!("{}: {}", f.code, f.message));
        }
    }
    if force {
        output::warn("--force: writing into a cluster that check finds unsafe");
        return Ok(());
    }
    Err(Failure::failed(format!(
        "the target is not healthy ({} finding(s) above): keys for unserved slots would fail; \
         fix the cluster (rcops check) or pass --force; nothing was written",
        blockers.len()
    )))
}

pub async fn run(g: &GlobalOpts, a: &RestoreArgs) -> CmdResult {
    if let Some(aof) = &a.aof {
        return replay_aof(g, a, aof).await;
    }
    if a.until.is_some() || !a.until_offset.is_empty() {
        return point_in_time(g, a).await;
    }
    let source = a.source.as_deref().unwrap_or_default();
    restore_set(g, a, source, true).await.map(|(code, _)| code)
}

/// A backup set (or RDB files) into the target: plan, checks, restore. Prints the report
/// unless `emit_json` is off in JSON mode (the caller prints it inside its own).
async fn restore_set(
    g: &GlobalOpts,
    a: &RestoreArgs,
    source: &str,
    emit_json: bool,
) -> Result<(u8, Option<restore::RestoreReport>), Failure> {
    let backups = backup_dir(g, &a.dir);
    let (label, sources) = restore::resolve_sources(&backups, source, &a.files).map_err(failure)?;
    let (exec, view) = view(g, Detail::Health).await?;
    let mode = on_conflict(a);
    let state = g.state_dir.clone().unwrap_or_else(default_state_dir);
    let opts = RestoreOptions {
        on_conflict: mode,
        pattern: a.pattern.clone(),
        types: a.types.clone(),
        db: a.db,
        merge_dbs: a.merge_dbs,
        verify: !a.no_verify,
        batch: a.batch as usize,
        big_key_bytes: a.big_key_bytes,
        checkpoint: restore::checkpoint_path(&state, &label, &view),
        resume: a.resume,
        rate: a.rate,
    };
    // Before anything else is asked of an unhealthy target.
    let blockers = restore::write_blockers(&view);
    if !blockers.is_empty() && !a.force {
        refuse_unsafe(g, &blockers, false)?;
    }
    let mut plan = restore::plan(&exec, &view, &label, &sources, &opts)
        .await
        .map_err(failure)?;
    let target_rdb_version = plan.target_rdb_version;
    if !g.json {
        crate::outln!(
            "plan: restore {} file(s) of {label}{} into {} master(s) ({} keys there now), on conflict: {}{}",
            plan.files.len(),
            plan.source_keys
                .map(|k| format!(" ({k} keys)"))
                .unwrap_or_default(),
            plan.target_masters,
            plan.target_keys,
            mode.as_str(),
            if opts.resume {
                ", resuming from the checkpoint"
            } else {
                ""
            }
        );
    }
    let blocked = refuse_unsafe(g, &plan.blockers, a.force);
    if !a.dry_run && !a.yes {
        blocked?;
        return Err(Failure::usage("pass --yes to restore (or --dry-run)"));
    }
    // Refuse before writing: corrupt files, several databases, value types the target cannot
    // load, keys that already exist.
    let check_existing = mode == OnConflict::Fail && plan.target_keys > 0 && !a.resume;
    let checked = if blocked.is_ok() || a.dry_run {
        restore::preflight(
            &exec,
            &view,
            &sources,
            &opts,
            target_rdb_version,
            check_existing,
        )
        .await
    } else {
        Err(RestoreError::Refused(String::new()))
    };
    if a.dry_run {
        let code = match (&blocked, &checked) {
            (Ok(()), Ok(_)) => EXIT_OK,
            _ => EXIT_FAILED,
        };
        let refusal = match (blocked, &checked) {
            (Err(f), _) => Some(f.message),
            (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        if let Ok(c) = &checked {
            plan.source_keys = c.entries().or(plan.source_keys);
            plan.preflight = Some(c.clone());
        }
        if g.json {
            output::print_json(&serde_json::json!({"plan": plan, "refused": refusal}));
        } else {
            if let Ok(c) = &checked {
                print_preflight(c);
            }
            match &refusal {
                Some(r) => output::error(format!("would be refused: {r}")),
                None => crate::outln!("dry run: the checks passed; nothing was written"),
            }
        }
        return Ok((code, None));
    }
    blocked?;
    let checked = checked.map_err(failure)?;
    if !g.json {
        print_preflight(&checked);
    }
    let (ctx, bars) = super::job_ctx(g.json);
    let report = restore::restore(
        &ctx,
        &exec,
        &view,
        &sources,
        &opts,
        target_rdb_version,
        &checked,
    )
    .await
    .map_err(failure)?;
    bars.clear();
    if !g.json {
        print_report(&report);
    } else if emit_json {
        output::print_json(&report);
    }
    Ok((report.exit_code(), Some(report)))
}

/// A time for `--until`: Unix seconds, or RFC 3339 with `Z` or an offset (`+01:00`) and an
/// optional fraction; in Unix milliseconds.
fn parse_time_ms(s: &str) -> Result<u64, Failure> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n.saturating_mul(1000));
    }
    let bad = || {
        Failure::usage(format!(
            "--until {s:?}: expected RFC 3339 (2026-12-02T09:59:30Z, or with an offset such as \
             +01:00) or Unix seconds"
        ))
    };
    // humantime reads UTC only: an offset is taken off and applied by hand.
    let (utc, shift_s): (String, i64) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((head, off))
            if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
        {
            let h: i64 = off[1..3].parse().map_err(|_| bad())?;
            let m: i64 = off[4..6].parse().map_err(|_| bad())?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (format!("{head}Z"), sign * (h * 3600 + m * 60))
        }
        _ if s.ends_with('Z') || s.ends_with('z') => (s.to_string(), 0),
        _ => return Err(bad()),
    };
    if !utc.contains('T') && !utc.contains('t') {
        return Err(bad());
    }
    let t = humantime::parse_rfc3339(&utc).map_err(|_| bad())?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis() as i64;
    u64::try_from(ms - shift_s * 1000).map_err(|_| bad())
}

/// `restore CHAIN --until TIME`: the plan (per shard, the stamp and offset the archive is
/// cut at), then the chain's base through [`restore_set`], then each shard's stream up to
/// its cut.
async fn point_in_time(g: &GlobalOpts, a: &RestoreArgs) -> CmdResult {
    use rcops_core::ops::pitr;
    let until = a.until.as_deref().map(parse_time_ms).transpose()?;
    let offsets = a
        .until_offset
        .iter()
        .map(|s| {
            let (shard, off) = s.split_once('=').ok_or_else(|| {
                Failure::usage(format!("--until-offset {s:?}: expected SHARD=OFFSET"))
            })?;
            let off: u64 = off.trim().parse().map_err(|_| {
                Failure::usage(format!("--until-offset {s:?}: {off:?} is not an offset"))
            })?;
            Ok((shard.trim().to_string(), off))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    // Each shard's cut in one chain: its offset when named, else the time.
    let cuts = |chain: &rcops_core::ops::follow::Chain| -> Result<Vec<pitr::Until>, Failure> {
        let mut v: Vec<Option<pitr::Until>> =
            vec![until.map(pitr::Until::Time); chain.shards.len()];
        for (shard, off) in &offsets {
            v[pitr::shard_index(chain, shard)?] = Some(pitr::Until::Offset(*off));
        }
        v.into_iter()
            .enumerate()
            .map(|(i, u)| {
                u.ok_or_else(|| {
                    Failure::usage(format!(
                        "--until-offset names no offset for shard {i} ({}) of chain {}: name                          every shard, or give --until for the others",
                        chain.shards[i].slots, chain.id
                    ))
                })
            })
            .collect()
    };
    let dir = backup_dir(g, &a.dir);
    let source = a.source.as_deref().unwrap_or("latest");
    // `latest`: the newest chain that covers the time (an older one may, after a gap).
    let (path, chain, plan) = if source == "latest" {
        let all = rcops_core::ops::follow::chains(&dir).map_err(Failure::failed)?;
        let mut first_error = None;
        let mut found = None;
        for (path, chain) in all.into_iter().rev() {
            match cuts(&chain).and_then(|c| Ok(pitr::plan(&path, &chain, &c)?)) {
                Ok(plan) => {
                    found = Some((path, chain, plan));
                    break;
                }
                // The newest chain's reason, unless an older one has the time in a gap or an
                // undated window.
                Err(e) if e.message.contains("falls in a ") => first_error = Some(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (found, first_error) {
            (Some(f), _) => f,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(Failure::usage(format!(
                    "no chain in {}: `rcops backup follow` makes them",
                    dir.join("chains").display()
                )))
            }
        }
    } else {
        let (path, chain) = pitr::find(&dir, source)?;
        let plan = pitr::plan(&path, &chain, &cuts(&chain)?)?;
        (path, chain, plan)
    };
    if !g.json {
        crate::outln!(
            "plan: chain {}, base set {}, then per shard its stream up to {}",
            plan.chain,
            plan.base,
            match until {
                Some(t) if offsets.is_empty() =>
                    format!("the last stamp at or before {}", output::unix_ms_text(t)),
                _ => "the offsets asked for".into(),
            }
        );
        let mut t = output::table(&[
            "SLOTS",
            "BASE",
            "BASE KEYS",
            "SEGMENTS",
            "COMMANDS",
            "STOP OFFSET",
            "STOP STAMP",
        ]);
        for c in &plan.shards {
            t.add_row(vec![
                c.slots.clone(),
                output::unix_ms_text(c.base_unix_ms),
                c.base_keys.to_string(),
                c.segments.to_string(),
                c.commands.to_string(),
                c.stop_offset.to_string(),
                output::unix_ms_text(c.stop_unix_ms),
            ]);
        }
        output::align_right(&mut t, &[2, 3, 4, 5]);
        output::print_table(&t);
        crate::outln!(
            "shards are cut at their own stamps, {} ms apart at most (Redis Cluster has no \
             cross-shard transactions)",
            plan.skew_ms
        );
        crate::outln!(
            "gaps: {}",
            if plan.gaps.is_empty() {
                "none recorded in the chain".to_string()
            } else {
                format!(
                    "{} recorded in the chain, none between a base and its cut ({})",
                    plan.gaps.len(),
                    plan.gaps
                        .iter()
                        .map(|g| format!(
                            "{} from {}",
                            g.slots,
                            output::unix_ms_text(g.from_unix_ms)
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if !a.yes || a.dry_run {
        if g.json {
            output::print_json(&serde_json::json!({ "plan": plan }));
        }
        if a.dry_run {
            return Ok(EXIT_OK);
        }
        return Err(Failure::usage("pass --yes to restore (or --dry-run)"));
    }
    let (exec, view) = view(g, Detail::Health).await?;
    let state = g.state_dir.clone().unwrap_or_else(default_state_dir);
    let ck_path = pitr::PitrCheckpoint::path(&state, &plan.chain, &view);
    // Without a checkpoint of the replay, a resume is the base's own (restore's checkpoint).
    let mut ck = match (a.resume, pitr::PitrCheckpoint::load(&ck_path)?) {
        (true, Some(ck)) => {
            ck.resumable(&plan)?;
            ck
        }
        _ => pitr::PitrCheckpoint::new(&plan),
    };
    let base_report = if ck.base_done {
        if !g.json {
            output::note(format!(
                "the base set {} was restored by the run resumed: the stream goes on from the \
                 checkpoint",
                plan.base
            ));
        }
        None
    } else {
        let base = path.join(&plan.base).display().to_string();
        let (code, base_report) = restore_set(g, a, &base, false).await?;
        if code != EXIT_OK {
            if g.json {
                output::print_json(&serde_json::json!({ "plan": plan, "base": base_report }));
            }
            output::error("the base was not restored completely: the stream is not replayed");
            return Ok(code);
        }
        ck.base_done = true;
        ck.save(&ck_path)?;
        base_report
    };
    let (ctx, bars) = super::job_ctx(g.json);
    let shards = pitr::replay(
        &ctx,
        &exec,
        &view,
        &chain,
        &plan,
        a.batch as usize,
        a.rate,
        &mut ck,
        &ck_path,
    )
    .await?;
    bars.clear();
    let failed = shards.iter().any(|s| s.report.failed > 0);
    let interrupted = shards.iter().any(|s| s.report.interrupted);
    if g.json {
        output::print_json(&serde_json::json!({
            "plan": plan, "base": base_report, "replay": shards,
        }));
    } else {
        let mut t = output::table(&["SLOTS", "COMMANDS", "SENT", "FAILED", "STOPPED AT", "STAMP"]);
        for s in &shards {
            t.add_row(vec![
                s.slots.clone(),
                s.report.commands.to_string(),
                s.report.sent.to_string(),
                s.report.failed.to_string(),
                s.stop_offset.to_string(),
                output::unix_ms_text(s.stop_unix_ms),
            ]);
            for e in &s.report.errors {
                output::error(format!("{}: {e}", s.slots));
            }
        }
        output::align_right(&mut t, &[1, 2, 3, 4]);
        output::print_table(&t);
        match until {
            Some(t) if offsets.is_empty() => crate::outln!(
                "restored chain {} as of {}",
                plan.chain,
                output::unix_ms_text(t)
            ),
            _ => crate::outln!("restored chain {} to the offsets above", plan.chain),
        }
    }
    if interrupted && ck.clean {
        output::error("interrupted: run the same command with --resume to continue");
    } else if failed {
        output::error(
            "some commands were not written: the target is not the chain's state; empty it and \
             restore again",
        );
    }
    Ok(if interrupted {
        crate::output::EXIT_INTERRUPTED
    } else if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

fn print_preflight(c: &restore::Preflight) {
    let verified: Vec<String> = c
        .files
        .iter()
        .map(|f| format!("{} {}", f.label, f.verified))
        .collect();
    crate::outln!("checked: {}", verified.join(", "));
    if c.db_collisions > 0 {
        output::warn(format!(
            "--merge-dbs: {} key name(s) occur in more than one database (e.g. {}): the last one written wins",
            c.db_collisions,
            c.collision_examples.join(", ")
        ));
    }
}

fn print_report(report: &restore::RestoreReport) {
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
    let total = &report.total;
    let in_target = total.restored + total.already_done;
    crate::outln!(
        "{} keys restored in {:.1} s ({:.0} keys/s){}",
        total.restored,
        report.elapsed_ms as f64 / 1000.0,
        report.keys_per_sec,
        if report.resumed {
            format!("; with the earlier runs {in_target} in total")
        } else {
            String::new()
        }
    );
    if let Some(n) = report.source_keys {
        let accounted = total.entries();
        crate::outln!(
            "source: {n} keys = {in_target} restored + {} expired + {} filtered + {} kept as they were{}{}",
            total.skipped_expired,
            total.skipped_filtered,
            total.skipped_existing,
            if total.failed > 0 {
                format!(" + {} FAILED", total.failed)
            } else {
                String::new()
            },
            if accounted < n {
                format!(" + {} not reached", n - accounted)
            } else {
                String::new()
            }
        );
    }
    if report.interrupted {
        output::error("interrupted: run the same command with --resume to continue");
    } else if !report.complete {
        output::error(format!(
            "incomplete: {} key(s) are not in the target; run the same command with --resume to retry them",
            total.failed + report.source_keys.map_or(0, |n| n.saturating_sub(total.entries()))
        ));
    }
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
    let mode = on_conflict(a);
    if a.into_non_empty && mode == OnConflict::Fail {
        return Err(Failure::usage(
            "--into-non-empty needs --on-conflict replace or skip: what to do with base keys the target holds",
        ));
    }
    let (exec, view) = view(g, Detail::Health).await?;
    let target_keys = restore::target_keys(&exec, &view).await;
    if !g.json {
        crate::outln!(
            "plan: replay {} file(s) from {} into {} master(s) ({target_keys} keys there now){}{}",
            files.len(),
            path.display(),
            view.masters().filter(|m| m.slot_count() > 0).count(),
            until
                .map(|u| format!(", stopping after {u} (Unix)"))
                .unwrap_or_default(),
            if a.into_non_empty {
                format!(", base keys there: {}", mode.as_str())
            } else {
                String::new()
            }
        );
    }
    let blocked = refuse_unsafe(g, &restore::write_blockers(&view), a.force);
    let non_empty = if target_keys > 0 && !a.into_non_empty {
        Err(Failure::failed(format!(
            "the target already holds {target_keys} keys: an AOF replays commands on top of them \
             (not idempotent: an INCR counts twice, a base key would be overwritten); replay into \
             an empty cluster, or pass --into-non-empty with --on-conflict replace|skip; nothing was written"
        )))
    } else {
        Ok(())
    };
    if a.dry_run {
        let refusal = blocked.err().or(non_empty.err()).map(|f| f.message);
        match &refusal {
            Some(r) if !g.json => output::error(format!("would be refused: {r}")),
            _ => {}
        }
        if g.json {
            output::print_json(&serde_json::json!({
                "plan": {"files": files, "target_keys": target_keys, "until_unix": until,
                         "on_conflict": mode, "into_non_empty": a.into_non_empty},
                "refused": refusal,
            }));
        }
        return Ok(if refusal.is_some() {
            EXIT_FAILED
        } else {
            EXIT_OK
        });
    }
    blocked?;
    non_empty?;
    if !a.yes {
        return Err(Failure::usage("pass --yes to replay (or --dry-run)"));
    }
    let target_version = restore::target_rdb_version(&exec, &view)
        .await
        .map_err(failure)?;
    let opts = rcops_core::ops::aof::AofOptions {
        until_unix: until,
        batch: a.batch as usize,
        base_conflict: mode,
        big_key_bytes: a.big_key_bytes,
    };
    let (ctx, bars) = super::job_ctx(g.json);
    let report = rcops_core::ops::aof::replay(&ctx, &exec, &view, path, &opts, target_version)
        .await
        .map_err(Failure::failed)?;
    bars.clear();
    if g.json {
        output::print_json(&report);
    } else {
        crate::outln!(
            "{} command(s) read, {} sent, {} failed; {} key(s) from an RDB preamble/base ({} kept as they were); {} transaction(s), {} split across slots",
            report.commands, report.sent, report.failed, report.preamble_keys, report.preamble_kept, report.transactions, report.transactions_split
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
        if report.interrupted {
            output::warn(
                "interrupted: the target holds the commands sent so far, not the whole file",
            );
        }
        for e in &report.errors {
            output::error(e);
        }
    }
    Ok(if report.failed > 0 {
        EXIT_FAILED
    } else if report.interrupted {
        output::EXIT_INTERRUPTED
    } else if !report.keyless_skipped.is_empty()
        || report.transactions_split > 0
        || report.preamble_kept > 0
    {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::parse_time_ms;

    #[test]
    fn until_takes_rfc_3339_with_offsets_and_fractions_and_refuses_the_rest() {
        let z = parse_time_ms("2026-12-02T09:59:30Z").unwrap();
        assert_eq!(z, 1_796_205_570_000);
        assert_eq!(parse_time_ms("2026-12-02T10:59:30+01:00").unwrap(), z);
        assert_eq!(parse_time_ms("2026-12-02T04:29:30-05:30").unwrap(), z);
        assert_eq!(parse_time_ms("2026-12-02T09:59:30.250Z").unwrap(), z + 250);
        assert_eq!(parse_time_ms("1796205570").unwrap(), z);
        for bad in [
            "2026-12-02 09:59:30",
            "2026-12-02T09:59:30",
            "02/12/2026 09:59",
            "yesterday",
            "2026-12-02T09:59:30+1:00",
            "",
        ] {
            assert!(parse_time_ms(bad).is_err(), "{bad:?}");
        }
    }
}
