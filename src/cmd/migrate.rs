//! `rcops migrate`: flags → [`rcops_core::ops::migrate`] options, the plan, per-shard
//! progress bars, the report.

use rcops_core::ops::migrate::{self, Ends, MigrateOptions, MigratePlan, MigrateReport, OnFlush};
use rcops_core::ops::restore::OnConflict;
use rcops_core::route::KeyFilter;
use rcops_core::topology::{discover_endpoint, Detail};
use rcops_core::{Addr, ConnectOptions, Executor, Secret};
use std::path::{Path, PathBuf};

use super::config::default_state_dir;
use super::{connect_options, job_ctx, CmdResult, Failure};
use crate::cli::{EndsArgs, GlobalOpts, MigrateArgs};
use crate::output;

/// One side's connection options: its own user, password and TLS, else the global ones.
fn side(
    g: &GlobalOpts,
    user: &Option<String>,
    password_file: &Option<PathBuf>,
    env: &str,
    tls: bool,
) -> Result<ConnectOptions, Failure> {
    let mut opts = connect_options(g)?;
    if let Some(u) = user.clone().filter(|u| !u.is_empty()) {
        opts.user = Some(u);
    }
    if let Some(path) = password_file {
        opts.password = Some(super::password_file(path)?);
    } else if let Some(pw) = std::env::var(env).ok().filter(|p| !p.is_empty()) {
        opts.password = Some(Secret::new(pw));
    }
    // TLS per side: --tls for both, --from-tls/--to-tls for one (the certificate options
    // are material, not a switch, here).
    opts = if g.tls || tls {
        if opts.uses_tls() {
            opts
        } else {
            super::with_tls(g, opts)?
        }
    } else {
        opts.without_tls()
    };
    Ok(opts)
}

/// Both sides, connected and discovered (a standalone server as a one-shard cluster).
pub struct Sides {
    pub from: Executor,
    pub from_seeds: Vec<Addr>,
    pub from_view: rcops_core::ClusterView,
    pub to: Executor,
    pub to_view: rcops_core::ClusterView,
}

impl Sides {
    pub async fn open(
        g: &GlobalOpts,
        e: &EndsArgs,
        from_detail: Detail,
        to_detail: Detail,
    ) -> Result<Sides, Failure> {
        let from_seeds =
            Addr::parse_list(e.from.as_deref().unwrap_or_default()).map_err(Failure::usage)?;
        let to_seeds =
            Addr::parse_list(e.to.as_deref().unwrap_or_default()).map_err(Failure::usage)?;
        let from_opts = side(
            g,
            &e.from_user,
            &e.from_password_file,
            "RCOPS_FROM_PASSWORD",
            e.from_tls,
        )?;
        let to_opts = side(
            g,
            &e.to_user,
            &e.to_password_file,
            "RCOPS_TO_PASSWORD",
            e.to_tls,
        )?;
        let from = Executor::new(from_opts, g.concurrency as usize);
        let to = Executor::new(to_opts, g.concurrency as usize);
        let named = |side: &str, e: rcops_core::topology::DiscoverError| {
            Failure::failed(format!("{side}: {e}"))
        };
        let from_view = discover_endpoint(&from, &from_seeds, from_detail)
            .await
            .map_err(|e| named("source", e))?;
        let to_view = discover_endpoint(&to, &to_seeds, to_detail)
            .await
            .map_err(|e| named("target", e))?;
        Ok(Sides {
            from,
            from_seeds,
            from_view,
            to,
            to_view,
        })
    }
}

/// The checkpoint to resume: by id, or the newest one.
fn resume_id(base: &Path, asked: &str) -> Result<String, Failure> {
    if !asked.is_empty() {
        if !base.join(asked).join("checkpoint.json").is_file() {
            return Err(Failure::usage(format!(
                "--resume {asked}: no such migration checkpoint in {}",
                base.display()
            )));
        }
        return Ok(asked.to_string());
    }
    let mut ids: Vec<String> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("checkpoint.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids.pop().ok_or_else(|| {
        Failure::usage(format!(
            "--resume: no migration checkpoint in {}: nothing to resume",
            base.display()
        ))
    })
}

pub async fn run(g: &GlobalOpts, a: &MigrateArgs) -> CmdResult {
    let base = g
        .state_dir
        .clone()
        .unwrap_or_else(default_state_dir)
        .join("migrate");
    let id = match &a.resume {
        Some(asked) => resume_id(&base, asked)?,
        None => format!(
            "m-{}",
            rcops_core::ops::backup::backup_id(rcops_core::ops::backup::unix_ms())
        ),
    };
    let opts = MigrateOptions {
        cutover: a.cutover.then_some(migrate::CutoverOptions {
            max_lag: a.max_lag,
            pause: a.pause_timeout,
            keep_paused: a.keep_paused,
        }),
        method: if a.method == "scan" {
            migrate::Method::Scan
        } else {
            migrate::Method::Sync
        },
        checkpoint: base.join(&id).join("checkpoint.json"),
        id,
        resume: a.resume.is_some(),
        from_masters: a.from_masters,
        follow: a.follow,
        filter: KeyFilter {
            pattern: a.keys.pattern.clone(),
            prefixes: a.keys.prefixes.clone(),
            exclude_prefixes: a.keys.exclude_prefixes.clone(),
            types: a.types.clone(),
        },
        db: a.db,
        on_conflict: match a.on_conflict.as_str() {
            "skip" => OnConflict::Skip,
            "replace" => OnConflict::Replace,
            _ => OnConflict::Fail,
        },
        on_flush: match a.on_flush.as_str() {
            "apply" => OnFlush::Apply,
            "ignore" => OnFlush::Ignore,
            _ => OnFlush::Stop,
        },
        rate: a.rate,
        batch: a.batch as usize,
        big_key_bytes: a.big_key_bytes,
        idle_timeout: a.idle_timeout,
    };
    let sides = Sides::open(g, &a.ends, Detail::Full, Detail::Keyspace).await?;
    let (from, from_seeds, from_view) = (&sides.from, &sides.from_seeds, &sides.from_view);
    let (to, to_view) = (&sides.to, &sides.to_view);
    let ends = Ends {
        from,
        from_seeds,
        from_view,
        to,
        to_view,
    };
    let plan = migrate::plan(&ends, &opts).await.map_err(Failure::from)?;
    if g.json && (a.dry_run || !a.yes) {
        output::print_json(&serde_json::json!({ "plan": plan }));
    } else if !g.json {
        print_plan(&plan);
    }
    if a.dry_run {
        return Ok(output::EXIT_OK);
    }
    if !a.yes {
        return Err(Failure::usage("pass --yes to migrate (or --dry-run)"));
    }
    let (ctx, bars) = job_ctx(g.json);
    let report = migrate::migrate(&ctx, &ends, &opts, &plan)
        .await
        .map_err(Failure::from)?;
    bars.clear();
    if g.json {
        output::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(report.outcome.exit_code())
}

fn print_plan(p: &MigratePlan) {
    crate::outln!(
        "plan: migrate {} source shard(s) ({} keys in db {}) into {} master(s) ({} keys there \
         now) by {}{}, on conflict: {}, on flush: {}{}",
        p.source_shards.len(),
        p.source_keys,
        p.db,
        p.target_masters,
        p.target_keys,
        p.method,
        match p.cutover_max_lag {
            Some(l) => format!(
                ", following until every shard lags under {}, then pausing the source's \
                 writes for the cutover",
                output::bytes(l)
            ),
            None if p.follow => ", following until Ctrl-C".into(),
            None => String::new(),
        },
        p.on_conflict.as_str(),
        format!("{:?}", p.on_flush).to_lowercase(),
        if p.resume { ", resuming" } else { "" }
    );
    let mut t = output::table(&[
        "SOURCE SLOTS",
        "READ FROM",
        "ROLE",
        "KEYS",
        "MEMORY",
        "RESUME AT",
    ]);
    for s in &p.source_shards {
        t.add_row(vec![
            s.slots.clone(),
            output::opt(s.node.clone()),
            output::opt(s.role.clone()),
            s.keys.to_string(),
            output::opt(s.used_memory.map(output::bytes)),
            match (s.resume_phase, s.resume_offset) {
                (Some(migrate::Phase::Stream), Some(o)) => format!("stream offset {o}"),
                (Some(migrate::Phase::Snapshot), _) => "snapshot (redone)".into(),
                _ => "-".into(),
            },
        ]);
    }
    output::align_right(&mut t, &[3, 4]);
    output::print_table(&t);
    for w in &p.warnings {
        output::warn(w);
    }
    crate::outln!("checkpoint: {} (id {})", p.checkpoint, p.id);
}

fn print_report(r: &MigrateReport) {
    let mut t = output::table(&[
        "SOURCE SLOTS",
        "NODE",
        "PHASE",
        "KEYS",
        "EXISTING",
        "FAILED",
        "COMMANDS",
        "CMD FAILED",
        "OFFSET",
        "LAG",
    ]);
    for s in &r.shards {
        let scan = s.phase.starts_with("scan");
        let stream = |n: u64| if scan { "-".to_string() } else { n.to_string() };
        t.add_row(vec![
            s.slots.clone(),
            if s.node.is_empty() {
                "-".into()
            } else {
                format!("{} ({})", s.node, s.role)
            },
            s.phase.clone(),
            s.keys.restored.to_string(),
            s.keys.skipped_existing.to_string(),
            s.keys.failed.to_string(),
            stream(s.commands_applied),
            stream(s.commands_failed),
            // A scan has no stream: its offset is a SCAN cursor.
            stream(s.offset),
            output::opt(s.lag_bytes.map(output::bytes)),
        ]);
    }
    output::align_right(&mut t, &[3, 4, 5, 6, 7, 8, 9]);
    output::print_table(&t);
    for s in &r.shards {
        let st = &s.route;
        let mut notes = Vec::new();
        if st.transactions_split > 0 {
            notes.push(format!(
                "{} transaction(s) across slots applied command by command",
                st.transactions_split
            ));
        }
        if st.other_db_skipped > 0 {
            notes.push(format!(
                "{} command(s) on other databases skipped",
                st.other_db_skipped
            ));
        }
        for (name, n) in &st.keyless_skipped {
            notes.push(format!("{n} {name} (no keys) skipped"));
        }
        if s.commands_maybe_twice > 0 {
            notes.push(format!(
                "{} command(s) re-sent after a lost reply (may have run twice)",
                s.commands_maybe_twice
            ));
        }
        if s.resyncs > 0 {
            notes.push(format!("{} full resync(s)", s.resyncs));
        }
        if let Some(w) = s
            .crash_window
            .as_ref()
            .filter(|w| !w.non_idempotent.is_empty())
        {
            let names: Vec<String> = w
                .non_idempotent
                .iter()
                .map(|(n, c)| format!("{n} ×{c}"))
                .collect();
            notes.push(format!(
                "after the unclean stop, offsets {}-{} were applied again and may have run \
                 twice: {} (keys such as {})",
                w.from_offset,
                w.to_offset,
                names.join(", "),
                w.keys.join(", ")
            ));
        }
        if s.reconnects > 0 {
            notes.push(format!("{} reconnect(s)", s.reconnects));
        }
        if !notes.is_empty() {
            output::warn(format!("{}: {}", s.slots, notes.join("; ")));
        }
        for e in &s.errors {
            output::error(format!("{}: {e}", s.slots));
        }
        if let Some(e) = &s.error {
            output::error(format!("{}: stopped: {e}", s.slots));
        }
    }
    if let Some(c) = &r.cutover {
        match &c.error {
            None => crate::outln!(
                "cutover: source paused at {} (Unix ms), drained in {} ms; offsets {}; keys: \
                 source {}, target {}; {} sampled keys equal; source {}",
                c.paused_at_unix_ms.unwrap_or(0),
                c.drained_ms,
                c.offsets
                    .iter()
                    .map(|(s, o)| format!("{s}={o}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                c.source_keys,
                c.target_keys,
                c.sampled,
                if c.unpaused {
                    "unpaused"
                } else {
                    "STILL PAUSED (--keep-paused): CLIENT UNPAUSE on every master when ready"
                }
            ),
            Some(e) => output::error(format!(
                "{e}; source {}",
                if c.unpaused || c.paused_at_unix_ms.is_none() {
                    "not paused"
                } else {
                    "may still be paused until the pause timeout"
                }
            )),
        }
    }
    let verdict = match r.outcome {
        rcops_core::job::Outcome::Ok => "done".to_string(),
        rcops_core::job::Outcome::Findings => "done, with findings above".to_string(),
        rcops_core::job::Outcome::Failed => format!(
            "INCOMPLETE: see the errors above; continue with --resume {}",
            r.id
        ),
        rcops_core::job::Outcome::Interrupted => {
            format!("interrupted: continue with --resume {}", r.id)
        }
    };
    crate::outln!(
        "{} keys copied ({}/s), {} commands applied in {:.1}s: {verdict}",
        r.keys.restored,
        output::grouped(r.keys_per_sec as u64),
        r.commands_applied,
        r.elapsed_ms as f64 / 1000.0
    );
}
