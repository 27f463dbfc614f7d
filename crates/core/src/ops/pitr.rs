//! Point-in-time restore from a chain of `backup follow`: the plan (per shard, where the
//! archive is cut for the time asked: the last stamp at or before it) and the replay of each
//! shard's segments up to that cut, after its base was restored by `restore`'s own path. The
//! commands go through the same router and slot writer as an AOF replay ([`Replayer`]):
//! `MULTI`/`EXEC` kept within a slot, cross-slot multi-key commands split, keyless ones
//! (functions, flushes) reported. Shards replay at once, each in its own order; Redis Cluster
//! has no cross-shard transactions, so shards are cut at their own stamps (the skew between
//! them is reported).

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fanout::Executor;
use crate::job::{JobCtx, JobError};
use crate::ops::aof::{AofReport, Replayer};
use crate::ops::follow::{read_segment, Chain, CHAIN};
use crate::route::Router;
use crate::topology::ClusterView;
use crate::writer::SlotWriter;
use rcops_formats::segment::Record;

/// Where one shard's archive is cut.
#[derive(Debug, Clone, Serialize)]
pub struct ShardCut {
    pub slots: String,
    pub base_keys: u64,
    pub base_unix_ms: u64,
    pub base_offset: u64,
    /// Segments read (the last one in part), and their commands up to the cut.
    pub segments: usize,
    pub commands: u64,
    /// The stream offset and the stamp the replay stops at.
    pub stop_offset: u64,
    pub stop_unix_ms: u64,
}

/// JSON: `{"chain", "path", "until_unix_ms", "shards": [...], "skew_ms"}`.
#[derive(Debug, Clone, Serialize)]
pub struct PitrPlan {
    pub chain: String,
    pub path: PathBuf,
    pub until_unix_ms: u64,
    pub shards: Vec<ShardCut>,
    /// The widest difference between two shards' stop stamps.
    pub skew_ms: u64,
}

/// Finds a chain by id (or a unique prefix, or `latest`), or takes its folder.
pub fn find(dir: &Path, id_or_path: &str) -> Result<(PathBuf, Chain), JobError> {
    let p = Path::new(id_or_path);
    if p.join(CHAIN).is_file() {
        let text = std::fs::read(p.join(CHAIN)).map_err(JobError::internal)?;
        let c = serde_json::from_slice(&text)
            .map_err(|e| JobError::internal(format!("{}: {e}", p.join(CHAIN).display())))?;
        return Ok((p.to_path_buf(), c));
    }
    let all = crate::ops::follow::chains(dir).map_err(JobError::internal)?;
    let mut hits: Vec<(PathBuf, Chain)> = if id_or_path == "latest" {
        all.into_iter().last().into_iter().collect()
    } else {
        all.into_iter()
            .filter(|(_, c)| c.id.starts_with(id_or_path))
            .collect()
    };
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(JobError::usage(format!(
            "no chain {id_or_path:?} in {}",
            dir.join("chains").display()
        ))),
        n => Err(JobError::usage(format!(
            "{id_or_path:?} names {n} chains: give more of the id"
        ))),
    }
}

fn show(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where each shard of `chain` is cut for `until` (Unix ms). Refused (usage): a time before
/// a shard's base, after its last stamp, or inside a recorded gap.
pub fn plan(path: &Path, chain: &Chain, until: u64) -> Result<PitrPlan, JobError> {
    let mut shards = Vec::new();
    for s in &chain.shards {
        let Some(base) = &s.base else {
            return Err(JobError::precondition(format!(
                "shard {} of chain {} has no base snapshot yet",
                s.slots, chain.id
            )));
        };
        if let Some(g) = chain.gaps.iter().find(|g| {
            g.slots == s.slots
                && g.from_unix_ms < until
                && (g.to_unix_ms == 0 || until < g.to_unix_ms)
        }) {
            return Err(JobError::usage(format!(
                "--until {} falls in a gap of shard {} ({} to {}: {})",
                show(until),
                s.slots,
                show(g.from_unix_ms),
                if g.to_unix_ms == 0 {
                    "its next base".to_string()
                } else {
                    show(g.to_unix_ms)
                },
                g.why
            )));
        }
        if until < s.base_unix_ms {
            return Err(JobError::usage(format!(
                "--until {} is before shard {}'s base snapshot ({}): the chain starts there",
                show(until),
                s.slots,
                show(s.base_unix_ms)
            )));
        }
        let covered = s.covered_until();
        if until > covered {
            return Err(JobError::usage(format!(
                "--until {} is after the last stamp of shard {} ({}): the archive does not \
                 reach it",
                show(until),
                s.slots,
                show(covered)
            )));
        }
        let mut cut = ShardCut {
            slots: s.slots.clone(),
            base_keys: base.keys,
            base_unix_ms: s.base_unix_ms,
            base_offset: base.offset,
            segments: 0,
            commands: 0,
            stop_offset: base.offset,
            stop_unix_ms: s.base_unix_ms,
        };
        for seg in &s.segments {
            if seg.first_unix_ms == 0 || seg.first_unix_ms > until {
                if seg.first_unix_ms > until {
                    break;
                }
                continue;
            }
            cut.segments += 1;
            if seg.last_unix_ms <= until {
                cut.commands += seg.commands;
                cut.stop_offset = seg.end_offset;
                cut.stop_unix_ms = seg.last_unix_ms;
                continue;
            }
            // The cut is inside this segment: at its last stamp at or before the time.
            let (records, _) = read_segment(&path.join(&seg.file))
                .map_err(|e| JobError::internal(format!("{}: {e}", seg.file)))?;
            let mut n = 0;
            for r in records {
                match r {
                    Record::Command { .. } => n += 1,
                    Record::Stamp { offset, unix_ms } if unix_ms <= until => {
                        cut.commands += n;
                        n = 0;
                        cut.stop_offset = offset;
                        cut.stop_unix_ms = unix_ms;
                    }
                    Record::Stamp { .. } => break,
                }
            }
            break;
        }
        // A damaged segment in the range is refused before anything is written.
        for (k, seg) in s.segments.iter().take(cut.segments).enumerate() {
            let sha = crate::ops::backup::sha256_file(&path.join(&seg.file));
            if sha.as_deref() != Ok(seg.sha256.as_str()) {
                let before = k
                    .checked_sub(1)
                    .map_or(s.base_unix_ms, |p| s.segments[p].last_unix_ms);
                return Err(JobError::precondition(format!(
                    "segment {} of shard {} is damaged ({}): the chain restores only up to {}                      for these slots (rcops backup verify {} shows what is wrong)",
                    seg.file,
                    s.slots,
                    sha.err().unwrap_or_else(|| "checksum differs from the chain's".into()),
                    show(before),
                    chain.id
                )));
            }
        }
        shards.push(cut);
    }
    let stops = shards.iter().map(|c| c.stop_unix_ms);
    let skew_ms = stops.clone().max().unwrap_or(0) - stops.min().unwrap_or(0);
    Ok(PitrPlan {
        chain: chain.id.clone(),
        path: path.to_path_buf(),
        until_unix_ms: until,
        shards,
        skew_ms,
    })
}

/// What the replay of one shard did.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReplay {
    pub slots: String,
    pub stop_offset: u64,
    pub stop_unix_ms: u64,
    #[serde(flatten)]
    pub report: AofReport,
}

/// Replays every shard's segments up to its cut into the target (its bases restored
/// already), all shards at once. Stops between batches when `ctx.cancel` fires (the report
/// says `interrupted`).
pub async fn replay(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    chain: &Chain,
    plan: &PitrPlan,
    batch: usize,
) -> Result<Vec<ShardReplay>, JobError> {
    let cmds = crate::route::Commands::load(exec, view)
        .await
        .map_err(JobError::unavailable)?;
    let writer = SlotWriter::new(exec, view, None, false);
    let jobs = chain.shards.iter().zip(&plan.shards).map(|(s, cut)| {
        let (cmds, writer) = (&cmds, &writer);
        async move {
            let started = Instant::now();
            let mut report = AofReport::default();
            let mut replayer = Replayer::new(
                Router::new(cmds, 0, Default::default()),
                writer.lane(),
                batch,
            );
            'segments: for seg in s.segments.iter().take(cut.segments) {
                report.files.push(seg.file.clone());
                let file = plan.path.join(&seg.file);
                let sha = crate::ops::backup::sha256_file(&file);
                if sha.as_deref() != Ok(seg.sha256.as_str()) {
                    report.failed += 1;
                    report.errors.push(format!(
                        "{}: checksum differs from the chain's ({}): not replayed past it",
                        seg.file,
                        sha.unwrap_or_else(|e| e)
                    ));
                    break;
                }
                let (records, clean) = match read_segment(&file) {
                    Ok(r) => r,
                    Err(e) => {
                        report.errors.push(format!("{}: {e}", seg.file));
                        break;
                    }
                };
                if !clean {
                    report
                        .errors
                        .push(format!("{}: unreadable past a point", seg.file));
                }
                for r in records {
                    let Record::Command { end, args } = r else {
                        continue;
                    };
                    if end > cut.stop_offset {
                        break 'segments;
                    }
                    if replayer.push(exec, args, &mut report).await {
                        ctx.progress
                            .shard(&s.slots, "replay", report.commands, Some(cut.commands));
                        if ctx.cancel.is_cancelled() {
                            report.interrupted = true;
                            break 'segments;
                        }
                    }
                }
            }
            replayer.finish(&mut report).await;
            report.elapsed_ms = started.elapsed().as_millis();
            ShardReplay {
                slots: s.slots.clone(),
                stop_offset: cut.stop_offset,
                stop_unix_ms: cut.stop_unix_ms,
                report,
            }
        }
    });
    Ok(futures::future::join_all(jobs).await)
}
