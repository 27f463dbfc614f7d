//! Point-in-time restore from a chain of `backup follow`: the plan (per shard, where the
//! archive is cut for the time asked: the last stamp at or before it) and the replay of each
//! shard's segments up to that cut, after its base was restored by `restore`'s own path. The
//! commands go through the same router and slot writer as an AOF replay ([`Replayer`]):
//! `MULTI`/`EXEC` kept within a slot, cross-slot multi-key commands split, keyless ones
//! (functions, flushes) reported. Shards replay at once, each in its own order; Redis Cluster
//! has no cross-shard transactions, so shards are cut at their own stamps (the skew between
//! them is reported).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fanout::Executor;
use crate::job::{JobCtx, JobError};
use crate::ops::aof::{AofReport, Replayer};
use crate::ops::follow::{read_segment, BaseSet, Chain, Segment, CHAIN};
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
    /// The segments read: from index `first_segment`, `segments` of them (the first and
    /// the last perhaps in part), and their commands after the base up to the cut.
    pub first_segment: usize,
    pub segments: usize,
    pub commands: u64,
    /// The stream offset and the stamp the replay stops at (the stamp: the last at or
    /// before the offset).
    pub stop_offset: u64,
    pub stop_unix_ms: u64,
}

/// JSON: `{"chain", "path", "base", "until_unix_ms", "shards": [...], "skew_ms"}`.
#[derive(Debug, Clone, Serialize)]
pub struct PitrPlan {
    pub chain: String,
    pub path: PathBuf,
    /// The base set restored first (its folder in the chain).
    pub base: String,
    /// The time asked for (0 when every shard was cut at an offset).
    pub until_unix_ms: u64,
    pub shards: Vec<ShardCut>,
    /// The widest difference between two shards' stop stamps.
    pub skew_ms: u64,
    /// The gaps the chain records (none of them between a shard's base and its cut: a cut
    /// in a gap is refused).
    pub gaps: Vec<crate::ops::follow::Gap>,
    /// Windows archived without their times (a cut inside one is refused).
    pub undated: Vec<crate::ops::follow::Gap>,
}

/// Where a shard is cut: at the last stamp at or before a time, or at an exact offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Until {
    Time(u64),
    Offset(u64),
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

use crate::ops::follow::show_ms as show;

/// Resolves `--until-offset` shard names: an index (`0`), the shard's folder
/// (`shard-000`), its slot ranges (`0-5460`) or a prefix of its master's id.
pub fn shard_index(chain: &Chain, name: &str) -> Result<usize, JobError> {
    let hits: Vec<usize> = chain
        .shards
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            name == i.to_string()
                || name == s.dir
                || name == s.slots
                || (name.len() >= 4 && s.master_id.starts_with(name))
        })
        .map(|(i, _)| i)
        .collect();
    match hits[..] {
        [i] => Ok(i),
        _ => Err(JobError::usage(format!(
            "{name:?} names {} shards of chain {}; its shards: {}",
            if hits.is_empty() {
                "no".to_string()
            } else {
                hits.len().to_string()
            },
            chain.id,
            chain
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{i}={} ({})", s.slots, s.dir))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// One shard's cut in its stream, before a base is chosen: the offset, and the stamp at
/// or before it (`None`: before the shard's first stamp, or its first segment).
fn cut_of(
    path: &Path,
    chain: &Chain,
    i: usize,
    until: Until,
) -> Result<Option<(u64, u64)>, JobError> {
    let s = &chain.shards[i];
    let read = |seg: &Segment| {
        read_segment(&path.join(&seg.file))
            .map(|r| r.0)
            .map_err(|e| JobError::internal(format!("{}: {e}", seg.file)))
    };
    let mut cut: Option<(u64, u64)> = None;
    let stamp_of = |seg: &Segment, cut: Option<(u64, u64)>| {
        if seg.last_unix_ms > 0 {
            seg.last_unix_ms
        } else {
            cut.map_or(0, |c| c.1)
        }
    };
    match until {
        Until::Time(t) => {
            for seg in &s.segments {
                if seg.first_unix_ms == 0 || seg.last_unix_ms <= t {
                    // Wholly before the time (or without stamps: placed by those after it).
                    if seg.last_unix_ms > 0 {
                        cut = Some((seg.end_offset, seg.last_unix_ms));
                    }
                    continue;
                }
                if seg.first_unix_ms <= t {
                    for r in read(seg)? {
                        match r {
                            Record::Stamp { offset, unix_ms } if unix_ms <= t => {
                                cut = Some((offset, unix_ms))
                            }
                            Record::Stamp { .. } => break,
                            Record::Command { .. } => {}
                        }
                    }
                }
                break;
            }
        }
        Until::Offset(o) => {
            for seg in &s.segments {
                if seg.end_offset <= o {
                    cut = Some((seg.end_offset, stamp_of(seg, cut)));
                    if seg.end_offset == o {
                        break;
                    }
                    continue;
                }
                if seg.start_offset < o {
                    let mut stamp = cut.map_or(0, |c| c.1);
                    let mut found = false;
                    for r in read(seg)? {
                        let end = match r {
                            Record::Stamp { offset, unix_ms } => {
                                if offset <= o {
                                    stamp = unix_ms;
                                }
                                offset
                            }
                            Record::Command { end, .. } => end,
                        };
                        found |= end == o;
                        if end > o {
                            break;
                        }
                    }
                    if !found {
                        return Err(JobError::usage(format!(
                            "offset {o} of shard {} is not between two commands of its stream \
                             (segment {})",
                            s.slots, seg.file
                        )));
                    }
                    cut = Some((o, stamp));
                }
                break;
            }
        }
    }
    Ok(cut)
}

/// Where each shard of `chain` is cut: `until[i]` for shard `i`. Refused (usage): a time
/// before the oldest base set, after a shard's last stamp, or inside a recorded gap; an
/// offset that is not a command boundary of the archive. The base set is the newest
/// complete one at or before every shard's cut; a damaged segment between it and a cut
/// is refused (precondition) before anything is written.
pub fn plan(path: &Path, chain: &Chain, until: &[Until]) -> Result<PitrPlan, JobError> {
    if !chain.restorable() {
        return Err(JobError::precondition(format!(
            "chain {} has no complete base set yet: nothing to restore from",
            chain.id
        )));
    }
    let mut cuts = Vec::new();
    for (i, s) in chain.shards.iter().enumerate() {
        let u = until[i];
        if let Until::Time(t) = u {
            if let Some(g) = chain.gaps.iter().find(|g| {
                g.slots == s.slots && g.from_unix_ms < t && (g.to_unix_ms == 0 || t < g.to_unix_ms)
            }) {
                return Err(JobError::usage(format!(
                    "--until {} falls in a gap of shard {} ({} to {}: {})",
                    show(t),
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
            if let Some(w) = chain
                .undated
                .iter()
                .find(|w| w.slots == s.slots && w.from_unix_ms < t && t < w.to_unix_ms)
            {
                return Err(JobError::usage(format!(
                    "--until {} falls in a window of shard {} without times ({} to {}: {}): \
                     ask for a time before or after it",
                    show(t),
                    s.slots,
                    show(w.from_unix_ms),
                    show(w.to_unix_ms),
                    w.why
                )));
            }
            let covered = chain.covered_until(i);
            if t > covered {
                return Err(JobError::usage(format!(
                    "--until {} is after the last stamp of shard {} ({}): the archive does not \
                     reach it",
                    show(t),
                    s.slots,
                    show(covered)
                )));
            }
        }
        if let Until::Offset(o) = u {
            let end = chain.position(i).map_or(0, |p| p.1);
            if o > end {
                return Err(JobError::usage(format!(
                    "offset {o} of shard {} is after its archive's end ({end})",
                    s.slots
                )));
            }
        }
        cuts.push(cut_of(path, chain, i, u)?);
    }
    // The newest complete set every shard's cut is at or after (a cut before a shard's
    // first stamp is at its base, when the base is at or before the time).
    let fits = |b: &BaseSet| {
        b.shards.iter().zip(&cuts).zip(until).all(|((sb, cut), u)| {
            let Some(sb) = sb else { return false };
            match (cut, u) {
                (Some((o, _)), _) => sb.manifest.offset <= *o,
                (None, Until::Time(t)) => sb.unix_ms <= *t,
                (None, Until::Offset(o)) => sb.manifest.offset == *o,
            }
        })
    };
    let Some(set) = chain
        .bases
        .iter()
        .rev()
        .filter(|b| b.complete())
        .find(|b| fits(b))
    else {
        let oldest = chain
            .bases
            .iter()
            .find(|b| b.complete())
            .map_or(0, BaseSet::unix_ms);
        return Err(JobError::usage(
            match until.iter().find_map(|u| match u {
                Until::Time(t) => Some(*t),
                Until::Offset(_) => None,
            }) {
                Some(t) => format!(
                    "--until {} is before chain {}'s oldest base set ({}): the chain starts there",
                    show(t),
                    chain.id,
                    show(oldest)
                ),
                None => format!(
                    "an offset asked for is before chain {}'s oldest base set ({})",
                    chain.id,
                    show(oldest)
                ),
            },
        ));
    };
    let mut shards = Vec::new();
    for (i, s) in chain.shards.iter().enumerate() {
        let Some(b) = &set.shards[i] else {
            continue;
        };
        let base_offset = b.manifest.offset;
        let (stop_offset, stop_unix_ms) = match cuts[i] {
            Some((o, ms)) if o >= base_offset => (o, if ms > 0 { ms } else { b.unix_ms }),
            _ => (base_offset, b.unix_ms),
        };
        let mut cut = ShardCut {
            slots: s.slots.clone(),
            base_keys: b.manifest.keys,
            base_unix_ms: b.unix_ms,
            base_offset,
            first_segment: s
                .segments
                .iter()
                .take_while(|g| g.end_offset <= base_offset)
                .count(),
            segments: 0,
            commands: 0,
            stop_offset,
            stop_unix_ms,
        };
        for seg in s.segments.iter().skip(cut.first_segment) {
            if seg.start_offset >= stop_offset {
                break;
            }
            cut.segments += 1;
            if seg.start_offset >= base_offset && seg.end_offset <= stop_offset {
                cut.commands += seg.commands;
                continue;
            }
            let (records, _) = read_segment(&path.join(&seg.file))
                .map_err(|e| JobError::internal(format!("{}: {e}", seg.file)))?;
            cut.commands += records
                .iter()
                .filter(|r| matches!(r, Record::Command { end, .. } if *end > base_offset && *end <= stop_offset))
                .count() as u64;
        }
        // A damaged segment in the range is refused before anything is written.
        let range = s
            .segments
            .iter()
            .enumerate()
            .skip(cut.first_segment)
            .take(cut.segments);
        for (k, seg) in range {
            let sha = crate::ops::backup::sha256_file(&path.join(&seg.file));
            if sha.as_deref() != Ok(seg.sha256.as_str()) {
                let before = k
                    .checked_sub(1)
                    .map_or(b.unix_ms, |p| s.segments[p].last_unix_ms.max(b.unix_ms));
                return Err(JobError::precondition(format!(
                    "segment {} of shard {} is damaged ({}): the chain restores only up to {} \
                     for these slots (rcops backup verify {} shows what is wrong)",
                    seg.file,
                    s.slots,
                    sha.err()
                        .unwrap_or_else(|| "checksum differs from the chain's".into()),
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
        base: set.dir.clone(),
        until_unix_ms: until
            .iter()
            .find_map(|u| match u {
                Until::Time(t) => Some(*t),
                Until::Offset(_) => None,
            })
            .unwrap_or(0),
        shards,
        skew_ms,
        gaps: chain.gaps.clone(),
        undated: chain.undated.clone(),
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

/// Where a point-in-time restore got to, for `--resume`: saved every second while the
/// replay runs and exactly when it stops; removed when the restore is complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PitrCheckpoint {
    pub chain: String,
    /// The base set restored first, and whether that restore is complete.
    pub base: String,
    pub base_done: bool,
    /// Each shard's cut (a resume keeps the same cut).
    pub stops: Vec<u64>,
    /// Per shard, the stream offset replayed up to: every command before it written.
    pub applied: Vec<u64>,
    /// Whether `applied` is exact: the run stopped between batches with nothing failed. A
    /// killed run (or a failed write) leaves `false`: commands past `applied` may have been
    /// written, and sending them again could apply an `INCR` twice.
    pub clean: bool,
}

impl PitrCheckpoint {
    /// A fresh one for `plan`: nothing replayed.
    pub fn new(plan: &PitrPlan) -> Self {
        PitrCheckpoint {
            chain: plan.chain.clone(),
            base: plan.base.clone(),
            base_done: false,
            stops: plan.shards.iter().map(|c| c.stop_offset).collect(),
            applied: plan.shards.iter().map(|c| c.base_offset).collect(),
            clean: true,
        }
    }

    /// Where it lives: one per chain and target cluster.
    pub fn path(state_dir: &Path, chain: &str, view: &ClusterView) -> PathBuf {
        crate::ops::restore::checkpoint_path(state_dir, &format!("pitr-{chain}"), view)
    }

    pub fn load(path: &Path) -> Result<Option<PitrCheckpoint>, JobError> {
        match std::fs::read(path) {
            Ok(t) => serde_json::from_slice(&t)
                .map(Some)
                .map_err(|e| JobError::internal(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JobError::internal(format!("{}: {e}", path.display()))),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), JobError> {
        crate::job::save_json(path, self).map_err(JobError::internal)
    }

    /// Whether `--resume` may go on from it with `plan`: the same chain, base and cut, and
    /// an exact stop.
    pub fn resumable(&self, plan: &PitrPlan) -> Result<(), JobError> {
        let fresh = PitrCheckpoint::new(plan);
        if (&self.chain, &self.base, &self.stops) != (&fresh.chain, &fresh.base, &fresh.stops) {
            return Err(JobError::usage(format!(
                "--resume: the checkpoint is for chain {} from {} cut at {:?}, not this plan \
                 ({} from {} cut at {:?}): run the same command as before",
                self.chain, self.base, self.stops, fresh.chain, fresh.base, fresh.stops
            )));
        }
        if !self.clean {
            let at: Vec<String> = plan
                .shards
                .iter()
                .zip(&self.applied)
                .map(|(c, a)| format!("{} at {a}", c.slots))
                .collect();
            return Err(JobError::precondition(format!(
                "--resume: the previous run did not stop cleanly (killed, or a write failed); \
                 commands after the checkpoint ({}) may have been written, and sending them \
                 again could apply INCR, RPUSH and the like twice. Empty the target and \
                 restore again without --resume",
                at.join(", ")
            )));
        }
        Ok(())
    }
}

/// Replays every shard's segments up to its cut into the target (its bases restored
/// already), all shards at once, from `ck.applied` on; `ck` is saved at `ck_path` every
/// second and when the replay stops. Stops between batches when `ctx.cancel` fires (the
/// report says `interrupted`). `rate` caps writes per second.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    chain: &Chain,
    plan: &PitrPlan,
    batch: usize,
    rate: Option<u64>,
    ck: &mut PitrCheckpoint,
    ck_path: &Path,
) -> Result<Vec<ShardReplay>, JobError> {
    let cmds = crate::route::Commands::load(exec, view)
        .await
        .map_err(JobError::unavailable)?;
    let writer = SlotWriter::new(exec, view, rate, false);
    let progress = std::sync::Mutex::new(ck.clone());
    {
        let mut p = progress
            .lock()
            .map_err(|_| JobError::internal("lock poisoned"))?;
        p.clean = false; // until the replay stops where it says
        p.save(ck_path)?;
    }
    let done = crate::job::CancellationToken::new();
    let jobs = chain
        .shards
        .iter()
        .zip(&plan.shards)
        .enumerate()
        .map(|(i, (s, cut))| {
            let (cmds, writer, progress) = (&cmds, &writer, &progress);
            let from = ck.applied[i];
            async move {
                let started = Instant::now();
                let mut report = AofReport::default();
                let mut replayer = Replayer::new(
                    Router::new(cmds, 0, Default::default()),
                    writer.lane(),
                    batch,
                );
                // The end of the last command routed outside a MULTI: once sent, every
                // command up to it is written.
                let mut routed = from;
                let mut exact = true;
                'segments: for seg in s.segments.iter().skip(cut.first_segment).take(cut.segments) {
                    if seg.end_offset <= from {
                        continue;
                    }
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
                        if end <= from {
                            continue; // in the base, or replayed before the resume
                        }
                        if end > cut.stop_offset {
                            break 'segments;
                        }
                        let sent = replayer.push(exec, args, &mut report).await;
                        if !replayer.in_transaction() {
                            routed = end;
                        }
                        if sent {
                            ctx.progress.shard(
                                &s.slots,
                                "replay",
                                report.commands,
                                Some(cut.commands),
                            );
                            exact &= report.failed == 0;
                            if exact {
                                if let Ok(mut p) = progress.lock() {
                                    p.applied[i] = routed;
                                }
                            }
                            if ctx.cancel.is_cancelled() {
                                report.interrupted = true;
                                break 'segments;
                            }
                        }
                    }
                }
                // Sends the rest: everything routed is written (a MULTI open at the end is
                // not, so an interrupted shard resumes before it).
                replayer.finish(&mut report).await;
                exact &= report.failed == 0;
                if let (true, Ok(mut p)) = (exact, progress.lock()) {
                    p.applied[i] = if report.interrupted {
                        routed
                    } else {
                        cut.stop_offset
                    };
                }
                report.elapsed_ms = started.elapsed().as_millis();
                (
                    ShardReplay {
                        slots: s.slots.clone(),
                        stop_offset: cut.stop_offset,
                        stop_unix_ms: cut.stop_unix_ms,
                        report,
                    },
                    exact,
                )
            }
        });
    let saver = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = done.cancelled() => return,
            }
            if let Ok(p) = progress.lock() {
                let _ = p.save(ck_path);
            }
        }
    };
    let (shards, ()) = futures::future::join(
        async {
            let r = futures::future::join_all(jobs).await;
            done.cancel();
            r
        },
        saver,
    )
    .await;
    let mut p = progress
        .into_inner()
        .map_err(|_| JobError::internal("lock poisoned"))?;
    p.clean = shards.iter().all(|(_, exact)| *exact);
    let complete = p.clean && p.applied == p.stops;
    if complete {
        let _ = std::fs::remove_file(ck_path);
    } else {
        p.save(ck_path)?;
    }
    *ck = p;
    Ok(shards.into_iter().map(|(s, _)| s).collect())
}
