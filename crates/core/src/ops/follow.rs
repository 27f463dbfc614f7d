//! `backup follow`: a continuous archive of every shard's replication stream. A **chain**
//! (`DIR/chains/<id>/chain.json`) holds per shard a base snapshot (written as `backup`
//! writes one, under `base/`) and then **segments** of the stream after it
//! (`shard-NNN/<start offset>-<first stamp>.seg.zst`): zstd-compressed [`rcops_formats::segment`] records —
//! every command with the offset just after it, and a stamp of the offset reached and the
//! wall-clock time at least every 100 ms, since the stream carries no times. A segment is
//! written as `open.seg.zst` (flushed and synced every 200 ms), and closed at its size or
//! age limit: finished, synced, renamed, then listed in `chain.json` (replaced atomically).
//! A follower killed mid-segment loses only what came after the last flush: the next run
//! closes the open segment's readable records and continues the stream right after them
//! (`PSYNC <replid> <offset+1>`), through failovers like migration's sync ([`ShardLink`]).

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fanout::Executor;
use crate::job::{JobCtx, JobError, Outcome};
use crate::node::Addr;
use crate::ops::backup::{
    hex, sources, unix_ms, write_shard, Hashing, ShardManifest, Source, ZSTD_LEVEL,
};
use crate::ops::link::{Closed, ShardLink};
use crate::repl::{Psync, ReplError, ReplStream, Start};
use crate::topology::ClusterView;
use rcops_formats::segment::{self, Record};
use rcops_formats::slot::format_ranges;

pub const CHAIN: &str = "chain.json";
const OPEN: &str = "open.seg.zst";
const OPEN_META: &str = "open.json";
/// How often the open segment is flushed and synced (what a crash of the follower may lose,
/// and so the recovery point): a zstd block and an `fsync` five times a second per shard.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often the stream is stamped with the time at least.
const STAMP_EVERY: Duration = Duration::from_millis(100);
/// Commands taken off the stream per read at most.
const READ_MAX: usize = 10_000;
/// A catch-up that ends this long after the last stamp makes an undated window.
const UNDATED_AFTER_MS: u64 = 1000;

/// A Unix-ms time in RFC 3339, for messages.
pub(crate) fn show_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The archive: chains in `DIR/chains/`.
    pub dir: PathBuf,
    pub from_replicas: bool,
    /// Longest silence allowed while a base snapshot is made (see `backup`).
    pub idle_timeout: Duration,
    pub segment_bytes: u64,
    pub segment_age: Duration,
    /// Take fresh base snapshots of every shard this often (`None`: only the chain's first).
    pub base_every: Option<Duration>,
    /// Remove what only restores to times older than this (`None`: keep everything).
    pub keep: Option<Duration>,
    /// Live figures for `/metrics`.
    pub stats: std::sync::Arc<FollowStats>,
}

/// One chain: per shard a base and the segments after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chain {
    pub id: String,
    /// `open` (a follower may append to it) or `closed`.
    pub status: String,
    pub started_unix_ms: u64,
    pub rcops_version: String,
    /// `CLUSTER NODES` when the chain began: whose shards these are.
    pub cluster_nodes: String,
    pub shards: Vec<ChainShard>,
    /// Base snapshots, oldest first: the chain's first (each shard's taken off the stream it
    /// archives, in `base/`), then those of `--base-every` (`base-<id>/`, each shard's an
    /// rdb-only sync at a point of that stream). A restore starts from the newest complete
    /// one whose offsets are at or before its cut.
    #[serde(default)]
    pub bases: Vec<BaseSet>,
    /// Times some shard's archive does not cover, and why.
    #[serde(default)]
    pub gaps: Vec<Gap>,
    /// Times some shard's archive covers without their times: the follower was not
    /// connected, and what was written then came in the catch-up after, dated then. A
    /// restore cannot cut inside one.
    #[serde(default)]
    pub undated: Vec<Gap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainShard {
    /// Slot ranges in `CLUSTER NODES` notation.
    pub slots: String,
    pub master_id: String,
    /// The shard's folder in the chain (`shard-000`).
    pub dir: String,
    pub segments: Vec<Segment>,
}

/// One generation of base snapshots: a backup set (with `manifest.json` once complete) in
/// the chain's folder `dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseSet {
    pub dir: String,
    pub started_unix_ms: u64,
    /// Per shard of the chain, in its order: the snapshot, once taken.
    pub shards: Vec<Option<ShardBase>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardBase {
    /// When the snapshot was on disk.
    pub unix_ms: u64,
    /// The backup manifest's shard entry (its `replid` and `offset` place it in the stream).
    pub manifest: ShardManifest,
}

impl BaseSet {
    pub fn complete(&self) -> bool {
        !self.shards.is_empty() && self.shards.iter().all(Option::is_some)
    }

    /// When its last shard landed (0 until complete).
    pub fn unix_ms(&self) -> u64 {
        if !self.complete() {
            return 0;
        }
        self.shards
            .iter()
            .flatten()
            .map(|b| b.unix_ms)
            .max()
            .unwrap_or(0)
    }
}

/// One closed segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Segment {
    /// Path in the chain folder.
    pub file: String,
    pub replid: String,
    /// The stream offset it starts at (the previous segment's end) and ends at.
    pub start_offset: u64,
    pub end_offset: u64,
    /// Its first and last stamps (0 when it has none).
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    pub commands: u64,
    /// Record bytes before compression, and the file's size and SHA-256.
    pub raw_bytes: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gap {
    pub slots: String,
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub why: String,
}

impl Chain {
    /// Shard `i`'s snapshots, oldest first.
    pub fn shard_bases(&self, i: usize) -> impl Iterator<Item = &ShardBase> {
        self.bases
            .iter()
            .filter_map(move |b| b.shards.get(i)?.as_ref())
    }

    /// Where the archive of shard `i` continues: the replid and offset after its last
    /// segment, or after its base; `None` before the base.
    pub fn position(&self, i: usize) -> Option<(String, u64)> {
        if let Some(s) = self.shards[i].segments.last() {
            return Some((s.replid.clone(), s.end_offset));
        }
        self.shard_bases(i)
            .max_by_key(|b| b.manifest.offset)
            .map(|b| (b.manifest.replid.clone(), b.manifest.offset))
    }

    /// When shard `i`'s oldest snapshot was taken (0: none yet).
    pub fn based_at(&self, i: usize) -> u64 {
        self.shard_bases(i).map(|b| b.unix_ms).min().unwrap_or(0)
    }

    /// The latest time shard `i`'s archive covers (its last stamp, or its base's time).
    pub fn covered_until(&self, i: usize) -> u64 {
        self.shards[i]
            .segments
            .iter()
            .rev()
            .map(|s| s.last_unix_ms)
            .find(|&t| t > 0)
            .unwrap_or_else(|| self.based_at(i))
    }

    /// Whether some base set is complete (the chain can restore).
    pub fn restorable(&self) -> bool {
        self.bases.iter().any(BaseSet::complete)
    }
}

/// What one shard's follower did in this run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardFollow {
    pub slots: String,
    pub node: String,
    pub role: String,
    /// Keys in the base snapshot, when this run took it.
    pub base_keys: Option<u64>,
    /// Records recovered from a segment a killed follower left open.
    pub recovered_commands: u64,
    pub segments: u64,
    pub commands: u64,
    pub bytes: u64,
    /// The offset archived up to, and the time it covers.
    pub offset: u64,
    pub covered_until_unix_ms: u64,
    pub reconnects: u64,
    /// Its source no longer held its offset: the chain was closed and a new one begun.
    pub resynced: bool,
    /// Fresh base snapshots taken (`--base-every`).
    pub rebases: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// JSON: `{"chain", "path", "continued", "closed", "shards": [...], "outcome"}`.
#[derive(Debug, Clone, Serialize)]
pub struct FollowReport {
    pub chain: String,
    pub path: PathBuf,
    /// Whether this run continued an open chain.
    pub continued: bool,
    /// Chains this run closed because a shard could not continue them (each followed by a
    /// new one; the gaps are in the new chain).
    pub closed: Vec<String>,
    /// The shards of the last chain.
    pub shards: Vec<ShardFollow>,
    pub outcome: Outcome,
}

/// Chains in `dir`, oldest first (by id, which starts with the time).
pub fn chains(dir: &Path) -> Result<Vec<(PathBuf, Chain)>, String> {
    let root = dir.join("chains");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Ok(text) = std::fs::read(path.join(CHAIN)) else {
            continue;
        };
        let chain: Chain = serde_json::from_slice(&text)
            .map_err(|err| format!("{}: {err}", path.join(CHAIN).display()))?;
        out.push((path, chain));
    }
    out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(out)
}

/// One shard of a [`ChainSummary`].
#[derive(Debug, Clone, Serialize)]
pub struct ShardWindow {
    pub slots: String,
    /// Its base's time (0 before the base) and its last stamp.
    pub from_unix_ms: u64,
    pub until_unix_ms: u64,
    pub segments: usize,
    pub bytes: u64,
}

/// What `backup list` shows of a chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainSummary {
    pub id: String,
    pub path: PathBuf,
    pub status: String,
    /// The window a restore can ask for: from when the oldest complete base set landed to
    /// the first shard's last stamp (0 when no base set is complete yet).
    pub from_unix_ms: u64,
    pub until_unix_ms: u64,
    /// Complete base sets.
    pub bases: usize,
    pub segments: usize,
    /// Bases and segments, compressed.
    pub bytes: u64,
    pub shards: Vec<ShardWindow>,
    pub gaps: Vec<Gap>,
    pub undated: Vec<Gap>,
}

impl ChainSummary {
    pub fn of(path: &Path, c: &Chain) -> ChainSummary {
        let shards: Vec<ShardWindow> = c
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| ShardWindow {
                slots: s.slots.clone(),
                from_unix_ms: c.based_at(i),
                until_unix_ms: if c.based_at(i) > 0 {
                    c.covered_until(i)
                } else {
                    0
                },
                segments: s.segments.len(),
                bytes: c
                    .shard_bases(i)
                    .map(|b| b.manifest.compressed_bytes)
                    .sum::<u64>()
                    + s.segments.iter().map(|g| g.bytes).sum::<u64>(),
            })
            .collect();
        let from = c
            .bases
            .iter()
            .find(|b| b.complete())
            .map_or(0, BaseSet::unix_ms);
        ChainSummary {
            id: c.id.clone(),
            path: path.to_path_buf(),
            status: c.status.clone(),
            from_unix_ms: from,
            until_unix_ms: if from > 0 {
                shards.iter().map(|s| s.until_unix_ms).min().unwrap_or(0)
            } else {
                0
            },
            bases: c.bases.iter().filter(|b| b.complete()).count(),
            segments: shards.iter().map(|s| s.segments).sum(),
            bytes: shards.iter().map(|s| s.bytes).sum(),
            shards,
            gaps: c.gaps.clone(),
            undated: c.undated.clone(),
        }
    }
}

/// Node ids in a `CLUSTER NODES` text.
fn node_ids(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// Why a chain cannot go on.
#[derive(Debug, Clone)]
struct Resync {
    /// The shard whose source no longer holds its offset; `None`: the cluster's slots moved
    /// (every shard is affected).
    slots: Option<String>,
    why: String,
    /// For a reshard: the last time the slots were seen as the chain has them.
    since_unix_ms: u64,
}

/// The shards of the cluster as `sources` sees them, and their slot ranges.
fn shards_of(
    view: &ClusterView,
    from_replicas: bool,
) -> Result<(Vec<Source>, Vec<String>), JobError> {
    let (srcs, _) = sources(view, from_replicas);
    if srcs.is_empty() {
        return Err(JobError::precondition(
            "no master owns slots: nothing to follow",
        ));
    }
    let slots = srcs
        .iter()
        .map(|s| format_ranges(&s.slots.ranges()))
        .collect();
    Ok((srcs, slots))
}

/// Closes `old` where each shard's archive ends, recording `gaps` in it, and saves it.
fn close_chain(path: &Path, old: &mut Chain, gaps: Vec<Gap>) -> Result<(), JobError> {
    old.status = "closed".into();
    old.gaps.extend(gaps);
    crate::job::save_json(&path.join(CHAIN), old).map_err(JobError::internal)
}

/// Archives every shard until cancelled. Continues the newest open chain in `opts.dir` when
/// it is this cluster's with the same shards; otherwise starts a new one. A shard whose
/// source lost its offset, or slots that move between shards (a reshard), end the chain: a
/// new one begins with fresh bases, and the time between is recorded as a gap in both.
pub async fn follow(
    ctx: &JobCtx,
    exec: &Executor,
    seeds: &[Addr],
    view: &ClusterView,
    cluster_nodes: String,
    opts: &FollowOptions,
) -> Result<FollowReport, JobError> {
    let (mut srcs, mut slots) = shards_of(view, opts.from_replicas)?;
    let mut cluster_nodes = cluster_nodes;
    let existing = chains(&opts.dir).map_err(JobError::internal)?;
    let open = existing.into_iter().rev().find(|(_, c)| c.status == "open");
    let mut closed = Vec::new();
    let (path, chain, continued) = match open {
        Some((path, mut c)) => {
            let ours = node_ids(&cluster_nodes);
            if !node_ids(&c.cluster_nodes)
                .iter()
                .any(|id| ours.contains(id))
            {
                return Err(JobError::precondition(format!(
                    "{} holds open chain {} of another cluster (no node in common): follow into \
                     another --dir",
                    opts.dir.display(),
                    c.id
                )));
            }
            let theirs: Vec<&str> = c.shards.iter().map(|s| s.slots.as_str()).collect();
            if theirs == slots.iter().map(String::as_str).collect::<Vec<_>>() {
                (path, c, true)
            } else {
                // Resharded while no follower ran: the old chain ends where it ends.
                let why = format!(
                    "the cluster's shards changed while no follower ran (from {} to {})",
                    theirs.join(" "),
                    slots.join(" ")
                );
                let end = (0..c.shards.len())
                    .map(|i| c.covered_until(i))
                    .min()
                    .unwrap_or(0);
                let gaps: Vec<Gap> = c
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Gap {
                        slots: s.slots.clone(),
                        from_unix_ms: c.covered_until(i),
                        to_unix_ms: 0,
                        why: why.clone(),
                    })
                    .collect();
                close_chain(&path, &mut c, gaps)?;
                ctx.progress
                    .message(&format!("{why}: chain {} closed, a new one begins", c.id));
                closed.push(c.id.clone());
                let (p, n) = new_chain(
                    opts,
                    &srcs,
                    &slots,
                    &cluster_nodes,
                    new_gaps(&slots, end, &why),
                )?;
                (p, n, false)
            }
        }
        None => {
            let (path, chain) = new_chain(opts, &srcs, &slots, &cluster_nodes, Vec::new())?;
            (path, chain, false)
        }
    };
    let (mut path, mut chain, mut continued) = (path, chain, continued);
    loop {
        // A shard that must resync stops the others through this token.
        let sub = JobCtx {
            cancel: ctx.cancel.child_token(),
            progress: ctx.progress.clone(),
        };
        let shared = Shared {
            ctx: &sub,
            exec,
            seeds,
            opts,
            path: path.clone(),
            chain: Mutex::new(chain.clone()),
            resync: Mutex::new(None),
            done: sub.cancel.child_token(),
        };
        let jobs = srcs
            .iter()
            .enumerate()
            .map(|(i, src)| archive_shard(&shared, i, src));
        opts.stats.begin(&chain, &slots);
        let (shards, (), (), (), ()) = futures::future::join5(
            async {
                let r = futures::future::join_all(jobs).await;
                // The chain's upkeep stops with its archivers.
                shared.done.cancel();
                r
            },
            rebase_loop(&shared, &srcs),
            keep_loop(&shared),
            opts.stats.poll_sources(exec, &shared.done),
            watch_slots(&shared, &slots),
        )
        .await;
        let resync = shared.resync.lock().ok().and_then(|mut r| r.take());
        let mut old = shared.chain.into_inner().unwrap_or(chain.clone());
        if let (Some(r), false) = (resync, ctx.cancel.is_cancelled()) {
            // The chain cannot go on: it is closed where each shard's archive ends, and a new
            // one begins with fresh bases; until they land, nothing is covered.
            let gaps_old: Vec<Gap> = match &r.slots {
                Some(_) => Vec::new(),
                // After a reshard began the shards' streams cannot be cut together.
                None => old
                    .shards
                    .iter()
                    .map(|s| Gap {
                        slots: s.slots.clone(),
                        from_unix_ms: r.since_unix_ms,
                        to_unix_ms: 0,
                        why: r.why.clone(),
                    })
                    .collect(),
            };
            close_chain(&path, &mut old, gaps_old)?;
            closed.push(old.id.clone());
            let gaps = match &r.slots {
                Some(gone) => {
                    opts.stats.resynced(gone);
                    old.shards
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Gap {
                            slots: s.slots.clone(),
                            from_unix_ms: old.covered_until(i),
                            to_unix_ms: 0,
                            why: if &s.slots == gone {
                                r.why.clone()
                            } else {
                                format!("a new chain began: shard {gone} could not continue")
                            },
                        })
                        .collect()
                }
                None => {
                    ctx.progress.message(&format!(
                        "{}: chain {} closed; waiting for the slots to settle",
                        r.why, old.id
                    ));
                    let Some(v) = settled(ctx, exec, seeds).await else {
                        break Ok(report(chain, path, continued, closed, Vec::new()));
                    };
                    (srcs, slots) = shards_of(&v, opts.from_replicas)?;
                    cluster_nodes = crate::ops::backup::cluster_nodes_text(exec, &v)
                        .await
                        .unwrap_or_else(|_| old.cluster_nodes.clone());
                    for s in &slots {
                        opts.stats.resynced(s);
                    }
                    new_gaps(&slots, r.since_unix_ms, &r.why)
                }
            };
            let (p, c) = new_chain(opts, &srcs, &slots, &cluster_nodes, gaps)?;
            ctx.progress.message(&format!(
                "{}: chain {} closed, new chain {}",
                r.slots
                    .as_deref()
                    .map_or(String::new(), |s| format!("shard {s}: "))
                    + &r.why,
                old.id,
                c.id
            ));
            (path, chain, continued) = (p, c, false);
            continue;
        }
        break Ok(report(chain, path, continued, closed, shards));
    }
}

/// The gaps a new chain after a reshard starts with: every shard from `from` to its base.
fn new_gaps(slots: &[String], from: u64, why: &str) -> Vec<Gap> {
    slots
        .iter()
        .map(|s| Gap {
            slots: s.clone(),
            from_unix_ms: from,
            to_unix_ms: 0,
            why: why.to_string(),
        })
        .collect()
}

fn report(
    chain: Chain,
    path: PathBuf,
    continued: bool,
    closed: Vec<String>,
    shards: Vec<ShardFollow>,
) -> FollowReport {
    let outcome = if shards.iter().any(|s| s.error.is_some()) {
        Outcome::Failed
    } else if !closed.is_empty() {
        Outcome::Findings
    } else {
        Outcome::Ok
    };
    FollowReport {
        chain: chain.id,
        path,
        continued,
        closed,
        shards,
        outcome,
    }
}

/// One `CLUSTER NODES` from the first of `addrs` that answers.
async fn cluster_lines(
    exec: &Executor,
    addrs: impl IntoIterator<Item = Addr>,
) -> Option<Vec<rcops_formats::cluster_nodes::NodeLine>> {
    for addr in addrs {
        let Ok(mut conn) = exec.conn(&addr).await else {
            continue;
        };
        let text: Result<String, _> =
            crate::fanout::query(&addr, &mut conn, redis::cmd("CLUSTER").arg("NODES")).await;
        if let Some(lines) = text
            .ok()
            .and_then(|t| rcops_formats::cluster_nodes::parse(&t).ok())
        {
            return Some(lines);
        }
    }
    None
}

/// The slot ranges of the masters that own slots (sorted), and whether a slot is in transit.
fn slot_layout(lines: &[rcops_formats::cluster_nodes::NodeLine]) -> (Vec<String>, Option<u16>) {
    let mut have: Vec<String> = lines
        .iter()
        .filter(|l| l.flags.master && !l.slots.is_empty())
        .map(|l| format_ranges(&l.slot_set().ranges()))
        .collect();
    have.sort();
    let moving = lines
        .iter()
        .flat_map(|l| &l.open_slots)
        .map(|o| o.slot)
        .next();
    (have, moving)
}

/// Every second, the cluster's slots against the chain's shards: a slot in transit
/// (`MIGRATING`/`IMPORTING`) or owned by another shard ends the chain. A key that moves is
/// a `DEL` in one shard's stream and a `RESTORE` in another's, and shards replay on their
/// own, so no cut inside a reshard is safe: the gap starts at the last check that saw the
/// slots as the chain has them. Standalone servers (no `CLUSTER NODES`) are not watched.
async fn watch_slots(sh: &Shared<'_>, slots: &[String]) {
    let mut want = slots.to_vec();
    want.sort();
    let mut clean = unix_ms();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = sh.done.cancelled() => return,
        }
        let at = unix_ms();
        let nodes: Vec<Addr> = sh
            .opts
            .stats
            .shards()
            .into_iter()
            .filter_map(|s| s.node)
            .chain(sh.seeds.iter().cloned())
            .collect();
        let Some(lines) = cluster_lines(sh.exec, nodes).await else {
            continue;
        };
        let (have, moving) = slot_layout(&lines);
        let why = match moving {
            Some(slot) => format!("slot {slot} is moving between shards (a reshard)"),
            None if have != want => format!(
                "the cluster's shards changed (a reshard): now {}",
                have.join(" ")
            ),
            None => {
                clean = at;
                continue;
            }
        };
        if let Ok(mut r) = sh.resync.lock() {
            r.get_or_insert(Resync {
                slots: None,
                why,
                since_unix_ms: clean,
            });
        }
        sh.ctx.cancel.cancel();
        return;
    }
}

/// Waits until every node's view agrees on the slots and none is in transit, twice a
/// second apart, and returns the cluster as it is then; `None` when cancelled first.
async fn settled(ctx: &JobCtx, exec: &Executor, seeds: &[Addr]) -> Option<ClusterView> {
    let mut last: Option<u64> = None;
    loop {
        let v = crate::topology::discover(exec, seeds, crate::topology::Detail::Health).await;
        let calm = v.ok().filter(|v| {
            v.signatures.len() == 1
                && v.snapshots
                    .values()
                    .all(|s| s.lines.iter().all(|l| l.open_slots.is_empty()))
        });
        match calm {
            Some(v) if last == Some(v.reference_signature) => return Some(v),
            Some(v) => last = Some(v.reference_signature),
            None => last = None,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = ctx.cancel.cancelled() => return None,
        }
    }
}

/// A new chain for these shards, saved, with `gaps` carried from the one it replaces.
fn new_chain(
    opts: &FollowOptions,
    srcs: &[Source],
    slots: &[String],
    cluster_nodes: &str,
    gaps: Vec<Gap>,
) -> Result<(PathBuf, Chain), JobError> {
    let started = unix_ms();
    let id = format!("c-{}", crate::ops::backup::backup_id(started));
    let chain = Chain {
        id: id.clone(),
        status: "open".into(),
        started_unix_ms: started,
        rcops_version: env!("CARGO_PKG_VERSION").into(),
        cluster_nodes: cluster_nodes.to_string(),
        shards: srcs
            .iter()
            .enumerate()
            .map(|(i, s)| ChainShard {
                slots: slots[i].clone(),
                master_id: s.master_id.clone(),
                dir: format!("shard-{i:03}"),
                segments: Vec::new(),
            })
            .collect(),
        bases: vec![BaseSet {
            dir: "base".into(),
            started_unix_ms: started,
            shards: vec![None; srcs.len()],
        }],
        gaps,
        undated: Vec::new(),
    };
    let path = opts.dir.join("chains").join(&id);
    crate::job::save_json(&path.join(CHAIN), &chain).map_err(JobError::internal)?;
    Ok((path, chain))
}

struct Shared<'a> {
    ctx: &'a JobCtx,
    exec: &'a Executor,
    seeds: &'a [Addr],
    opts: &'a FollowOptions,
    path: PathBuf,
    chain: Mutex<Chain>,
    /// Set when the chain cannot go on: a shard's source no longer holds its offset, or the
    /// slots moved.
    resync: Mutex<Option<Resync>>,
    /// Cancelled once every shard's archiver has stopped (ends the rebase and keep loops).
    done: crate::job::CancellationToken,
}

impl Shared<'_> {
    /// Changes shard `i` of the chain and saves it (atomically).
    fn update(&self, i: usize, f: impl FnOnce(&mut ChainShard)) -> Result<(), String> {
        let mut c = self.chain.lock().map_err(|_| "a lock was poisoned")?;
        f(&mut c.shards[i]);
        crate::job::save_json(&self.path.join(CHAIN), &*c)
    }

    /// Changes the chain and saves it (atomically).
    fn update_chain<T>(&self, f: impl FnOnce(&mut Chain) -> T) -> Result<T, String> {
        let mut c = self.chain.lock().map_err(|_| "a lock was poisoned")?;
        let r = f(&mut c);
        crate::job::save_json(&self.path.join(CHAIN), &*c)?;
        Ok(r)
    }

    fn shard(&self, i: usize) -> Option<ChainShard> {
        self.chain.lock().ok().map(|c| c.shards[i].clone())
    }

    fn position(&self, i: usize) -> Option<(String, u64)> {
        self.chain.lock().ok().and_then(|c| c.position(i))
    }
}

/// Why an archive run of one stream ended.
enum Stop {
    Cancelled,
    Broken(String),
    Fatal(String),
}

async fn archive_shard(sh: &Shared<'_>, i: usize, src: &Source) -> ShardFollow {
    let Some(shard) = sh.shard(i) else {
        return ShardFollow::default();
    };
    let label = shard.slots.clone();
    let mut rep = ShardFollow {
        slots: label.clone(),
        ..Default::default()
    };
    let dir = sh.path.join(&shard.dir);
    let r = async {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(seg) = recover(&dir, &shard.dir).map_err(|e| format!("recovering: {e}"))? {
            rep.recovered_commands = seg.commands;
            sh.update(i, |s| s.segments.push(seg))?;
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = r {
        rep.error = Some(e);
        return rep;
    }
    let mut pos = sh.position(i);
    let mut link = ShardLink::new(sh.exec, sh.seeds, src, sh.opts.from_replicas);
    loop {
        let psync = Psync {
            from: pos.clone(),
            rdb_only: false,
        };
        let (mut stream, start) = match link.open(sh.ctx, &label, &psync).await {
            Ok(s) => s,
            Err(Closed::Cancelled) => break,
            Err(Closed::Failed(why)) => {
                rep.error = Some(why);
                break;
            }
        };
        rep.node = link.node.clone();
        rep.role = link.role.clone();
        let node = stream.addr().clone();
        sh.opts.stats.with(i, |t| t.node = Some(node));
        match start {
            Start::Full { replid, offset } => {
                if let Some((id, at)) = &pos {
                    let why = format!(
                        "the source no longer holds offset {at} of {id} (its backlog moved on)"
                    );
                    if let Ok(mut r) = sh.resync.lock() {
                        r.get_or_insert(Resync {
                            slots: Some(label.clone()),
                            why,
                            since_unix_ms: 0,
                        });
                    }
                    rep.resynced = true;
                    sh.ctx.cancel.cancel();
                    break;
                }
                match base(sh, i, src, &mut stream, &replid, offset, "base").await {
                    Ok(keys) => rep.base_keys = Some(keys),
                    Err(ReplError::Node(e)) if !sh.ctx.cancel.is_cancelled() && link.retry() => {
                        rep.reconnects += 1;
                        sh.ctx
                            .progress
                            .message(&format!("{label}: base snapshot: {e}; again"));
                        continue;
                    }
                    Err(e) => {
                        if !sh.ctx.cancel.is_cancelled() {
                            rep.error = Some(format!("base snapshot: {e}"));
                        }
                        break;
                    }
                }
                pos = Some((replid, offset));
            }
            Start::Continue { replid, offset } => pos = Some((replid, offset)),
        }
        let Some((replid, offset)) = pos.clone() else {
            break;
        };
        let stop = archive(sh, i, &mut stream, &dir, &replid, offset, &mut rep).await;
        pos = sh.position(i);
        match stop {
            Stop::Cancelled => break,
            Stop::Fatal(e) => {
                rep.error = Some(e);
                break;
            }
            Stop::Broken(e) => {
                rep.reconnects += 1;
                sh.opts.stats.with(i, |s| s.reconnects += 1);
                sh.ctx.progress.message(&format!(
                    "{label}: stream from {}: {e}; reconnecting",
                    rep.node
                ));
                link.broke().await;
            }
        }
    }
    if let Ok(c) = sh.chain.lock() {
        rep.offset = c.position(i).map_or(0, |p| p.1);
        rep.covered_until_unix_ms = c.covered_until(i);
    }
    rep.rebases = sh.opts.stats.get(i, |s| s.rebases);
    rep
}

/// Takes the shard's snapshot off `stream` into the base set in folder `set` (as `backup`
/// writes one) and records it in the chain. Returns its key count. Sets are named by folder:
/// `--keep` may remove older ones meanwhile.
async fn base(
    sh: &Shared<'_>,
    i: usize,
    src: &Source,
    stream: &mut ReplStream,
    replid: &str,
    offset: u64,
    set: &str,
) -> Result<u64, ReplError> {
    let file = format!(
        "shard-{i:03}-{}.rdb.zst",
        &src.master_id[..8.min(src.master_id.len())]
    );
    let gone = || ReplError::Sink(format!("base set {set} is no longer in the chain"));
    let dir = sh.path.join(set);
    std::fs::create_dir_all(&dir).map_err(|e| ReplError::Sink(e.to_string()))?;
    let path = dir.join(&file);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::task::spawn_blocking(move || write_shard(&path, rx));
    let label = format_ranges(&src.slots.ranges());
    let mut total = 0u64;
    let got = tokio::select! {
        r = stream.rdb(sh.opts.idle_timeout, async |chunk| {
            total += chunk.len() as u64;
            sh.ctx.progress.shard(&label, "base", total, None);
            tx.send(chunk).await.map_err(|_| "the disk writer stopped".to_string())
        }) => r,
        () = sh.ctx.cancel.cancelled() => Err(ReplError::Sink("interrupted".into())),
    };
    drop(tx);
    let written = writer
        .await
        .map_err(|e| ReplError::Sink(e.to_string()))?
        .map_err(|e| ReplError::Sink(format!("writing {file}: {e}")));
    got?;
    let w = written?;
    let m = ShardManifest {
        master_id: src.master_id.clone(),
        node: stream.addr().to_string(),
        role: String::new(),
        slots: label,
        file,
        raw_bytes: w.raw_bytes,
        compressed_bytes: w.compressed_bytes,
        sha256: w.sha256,
        rdb_version: w.rdb_version,
        server_version: w.server_version,
        replid: replid.to_string(),
        offset,
        keys: w.keys,
        ok: true,
        error: None,
        notes: Vec::new(),
    };
    let keys = m.keys;
    let now = unix_ms();
    // Once every shard has its snapshot, the set is a backup set like any other: its
    // manifest is written before the chain lists it complete.
    let manifest = sh.chain.lock().ok().and_then(|c| {
        let b = c.bases.iter().find(|b| b.dir == set)?;
        let shards: Option<Vec<ShardManifest>> = b
            .shards
            .iter()
            .enumerate()
            .map(|(k, s)| {
                if k == i {
                    Some(m.clone())
                } else {
                    s.as_ref().map(|s| s.manifest.clone())
                }
            })
            .collect();
        shards.map(|shards| crate::ops::backup::Manifest {
            id: format!("{}-{}", c.id, b.dir),
            status: "complete".into(),
            started_unix_ms: b.started_unix_ms,
            finished_unix_ms: now,
            rcops_version: c.rcops_version.clone(),
            cluster_nodes: c.cluster_nodes.clone(),
            shards,
            warnings: Vec::new(),
        })
    });
    if let Some(manifest) = manifest {
        crate::job::save_json(&dir.join(crate::ops::backup::MANIFEST), &manifest)
            .map_err(ReplError::Sink)?;
    }
    sh.update_chain(|c| {
        // A gap carried from the chain before ends where this shard's first base begins.
        let slots = c.shards[i].slots.clone();
        for g in c
            .gaps
            .iter_mut()
            .filter(|g| g.slots == slots && g.to_unix_ms == 0)
        {
            g.to_unix_ms = now;
        }
        let b = c.bases.iter_mut().find(|b| b.dir == set)?;
        b.shards[i] = Some(ShardBase {
            unix_ms: now,
            manifest: m,
        });
        Some(())
    })
    .map_err(ReplError::Sink)?
    .ok_or_else(gone)?;
    sh.opts.stats.with(i, |s| s.base_unix_ms = now);
    Ok(keys)
}

/// Archives the stream into segments until cancelled or broken.
async fn archive(
    sh: &Shared<'_>,
    i: usize,
    stream: &mut ReplStream,
    dir: &Path,
    replid: &str,
    offset: u64,
    rep: &mut ShardFollow,
) -> Stop {
    let shard_dir = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut seg = match OpenSegment::create(dir, replid, offset) {
        Ok(s) => s,
        Err(e) => return Stop::Fatal(format!("{}: {e}", dir.display())),
    };
    let silence = crate::ops::link::silence_limit(sh.opts.idle_timeout);
    let (mut flushed, mut heard, mut stamped) = (Instant::now(), Instant::now(), None);
    // The stream dates a command by the stamp after it arrived. What the source wrote while
    // no follower was connected comes in the catch-up after (re)connecting, dated then: when
    // that spans over a second past the last stamp, the window is recorded as undated.
    let mut catching_up = sh.chain.lock().ok().map(|c| c.covered_until(i));
    let close = |seg: OpenSegment, rep: &mut ShardFollow| -> Result<(), String> {
        if let Some(s) = seg
            .close(&shard_dir)
            .map_err(|e| format!("closing a segment: {e}"))?
        {
            rep.segments += 1;
            rep.bytes += s.bytes;
            sh.opts.stats.with(i, |t| {
                t.segments += 1;
                t.bytes += s.bytes;
            });
            sh.update(i, |c| c.segments.push(s))?;
        }
        Ok(())
    };
    loop {
        let cmds = tokio::select! {
            r = stream.commands(STAMP_EVERY, READ_MAX) => r,
            () = sh.ctx.cancel.cancelled() => Ok(Vec::new()),
        };
        let now = Instant::now();
        let cmds = match cmds {
            Ok(c) => c,
            Err(e) => {
                // What arrived is kept; the next open continues right after it.
                return match close(seg, rep) {
                    Ok(()) => Stop::Broken(e.to_string()),
                    Err(e) => Stop::Fatal(e),
                };
            }
        };
        if !cmds.is_empty() {
            heard = now;
        }
        for c in &cmds {
            seg.command(c.end, &c.args);
        }
        rep.commands += cmds.len() as u64;
        sh.opts.stats.with(i, |t| t.commands += cmds.len() as u64);
        if !cmds.is_empty() || stamped.is_none_or(|t: Instant| t.elapsed() >= STAMP_EVERY) {
            let ms = unix_ms();
            seg.stamp(stream.offset(), ms);
            stamped = Some(now);
            // Caught up once a read leaves the buffer drained.
            if let (Some(t0), true) = (catching_up, cmds.len() < READ_MAX) {
                catching_up = None;
                if stream.offset() > offset && ms.saturating_sub(t0) > UNDATED_AFTER_MS {
                    let w = Gap {
                        slots: rep.slots.clone(),
                        from_unix_ms: t0,
                        to_unix_ms: ms,
                        why: format!(
                            "the follower was not connected; the {} bytes written meanwhile \
                             were archived on reconnecting, dated then",
                            stream.offset() - offset
                        ),
                    };
                    if let Err(e) = sh.update_chain(|c| c.undated.push(w)) {
                        return Stop::Fatal(e);
                    }
                }
            }
        }
        if sh.ctx.cancel.is_cancelled() {
            return match close(seg, rep) {
                Ok(()) => Stop::Cancelled,
                Err(e) => Stop::Fatal(e),
            };
        }
        if heard.elapsed() > silence {
            return match close(seg, rep) {
                Ok(()) => Stop::Broken(format!(
                    "no data for {}",
                    humantime::format_duration(silence)
                )),
                Err(e) => Stop::Fatal(e),
            };
        }
        if flushed.elapsed() >= FLUSH_EVERY {
            flushed = now;
            if let Err(e) = seg.flush() {
                return Stop::Fatal(format!("{}: {e}", dir.display()));
            }
            // The master hears of what is on disk, not of what was read, and at once: its
            // view of the replica's offset is what `INFO replication` shows an operator.
            stream.applied(seg.meta.end_offset);
            let (end, stamp) = (seg.meta.end_offset, seg.meta.last_unix_ms);
            sh.opts.stats.with(i, |t| t.flushed(end, stamp));
            if let Err(e) = stream.ack().await {
                return match close(seg, rep) {
                    Ok(()) => Stop::Broken(e.to_string()),
                    Err(e) => Stop::Fatal(e),
                };
            }
            sh.ctx
                .progress
                .shard(&rep.slots, "archived", seg.meta.end_offset, None);
        }
        if seg.meta.raw_bytes >= sh.opts.segment_bytes
            || seg.opened.elapsed() >= sh.opts.segment_age
        {
            let end = seg.meta.end_offset;
            if let Err(e) = close(seg, rep) {
                return Stop::Fatal(e);
            }
            seg = match OpenSegment::create(dir, replid, end) {
                Ok(s) => s,
                Err(e) => return Stop::Fatal(format!("{}: {e}", dir.display())),
            };
        }
    }
}

/// `--base-every`: once the chain's first base set is complete, a fresh set every `every`
/// from when the last began; a set some shard could not take is retried for the missing
/// shards after `min(every, 5 min)`. Each snapshot is an rdb-only sync of the shard (its
/// archiver's stream goes on), used only when its replid is the archived stream's, so it is
/// a point of that stream.
async fn rebase_loop(sh: &Shared<'_>, srcs: &[Source]) {
    let Some(every) = sh.opts.base_every else {
        return;
    };
    let retry = every.min(Duration::from_secs(300));
    let mut tried: Option<Instant> = None;
    loop {
        let due = sh.chain.lock().ok().and_then(|c| {
            let first = c.bases.first()?;
            let last = c.bases.last()?;
            if !first.complete() {
                return None;
            }
            if last.complete() {
                return Some((
                    last.started_unix_ms + every.as_millis() as u64,
                    c.bases.len(),
                ));
            }
            // An incomplete set (not the first): its missing shards again, after a while.
            let at = tried.map_or(0, |t| {
                unix_ms() + retry.saturating_sub(t.elapsed()).as_millis() as u64
            });
            Some((at, c.bases.len() - 1))
        });
        let wait = due.map_or(Duration::from_secs(1), |(at, _)| {
            Duration::from_millis(at.saturating_sub(unix_ms()))
        });
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                () = sh.done.cancelled() => return,
            }
            continue;
        }
        let Some((_, k)) = due else { continue };
        let set = if k == sh.chain.lock().map_or(0, |c| c.bases.len()) {
            let now = unix_ms();
            let dir = format!("base-{}", crate::ops::backup::backup_id(now));
            let made = sh.update_chain(|c| {
                c.bases.push(BaseSet {
                    dir: dir.clone(),
                    started_unix_ms: now,
                    shards: vec![None; c.shards.len()],
                });
            });
            if let Err(e) = made {
                sh.ctx.progress.message(&format!("fresh base set: {e}"));
                tried = Some(Instant::now());
                continue;
            }
            sh.ctx.progress.message(&format!(
                "fresh base snapshots into {dir} (--base-every {})",
                humantime::format_duration(every)
            ));
            dir
        } else {
            match sh
                .chain
                .lock()
                .ok()
                .and_then(|c| c.bases.get(k).map(|b| b.dir.clone()))
            {
                Some(d) => d,
                None => continue,
            }
        };
        tried = Some(Instant::now());
        let missing: Vec<usize> = sh.chain.lock().map_or(Vec::new(), |c| {
            c.bases
                .iter()
                .find(|b| b.dir == set)
                .map_or(Vec::new(), |b| {
                    (0..b.shards.len())
                        .filter(|&i| b.shards[i].is_none())
                        .collect()
                })
        });
        let jobs = missing.iter().map(|&i| rebase_shard(sh, i, &srcs[i], &set));
        tokio::select! {
            _ = futures::future::join_all(jobs) => {}
            () = sh.done.cancelled() => return,
        }
    }
}

/// One shard's snapshot for the base set in folder `set`, over its own rdb-only link.
async fn rebase_shard(sh: &Shared<'_>, i: usize, src: &Source, set: &str) {
    let label = format_ranges(&src.slots.ranges());
    let say = |m: String| {
        sh.ctx
            .progress
            .message(&format!("{label}: fresh base: {m}"))
    };
    let mut link = ShardLink::new(sh.exec, sh.seeds, src, sh.opts.from_replicas);
    let psync = Psync {
        from: None,
        rdb_only: true,
    };
    let (mut stream, start) = match link.open(sh.ctx, &label, &psync).await {
        Ok(s) => s,
        Err(Closed::Cancelled) => return,
        Err(Closed::Failed(why)) => return say(why),
    };
    let Start::Full { replid, offset } = start else {
        return say("the source answered an rdb-only sync with +CONTINUE".into());
    };
    let ours = sh.position(i).map(|p| p.0).unwrap_or_default();
    if ours != replid {
        return say(format!(
            "{} is at replication id {replid}, the archived stream at {ours} (a failover in \
             between): not used; tried again later",
            stream.addr()
        ));
    }
    match base(sh, i, src, &mut stream, &replid, offset, set).await {
        Ok(keys) => {
            sh.opts.stats.with(i, |t| t.rebases += 1);
            say(format!("{keys} keys at offset {offset}"));
        }
        Err(e) => say(e.to_string()),
    }
}

/// `--keep`: every minute (a quarter of the window when shorter), removes what only
/// restores to times before the window — in the chain being written and in the closed ones.
async fn keep_loop(sh: &Shared<'_>) {
    let Some(keep) = sh.opts.keep else {
        return;
    };
    let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let cutoff = unix_ms().saturating_sub(keep.as_millis() as u64);
        let open = sh.update_chain(|c| (c.id.clone(), trim(c, cutoff)));
        match open {
            Ok((id, gone)) => {
                // File removal and the other chains' JSON: off the async runtime.
                let (path, dir, id2) = (sh.path.clone(), sh.opts.dir.clone(), id.clone());
                let done = tokio::task::spawn_blocking(move || {
                    (remove_all(&path, &gone), prune_closed(&dir, cutoff, &id2))
                })
                .await;
                let (n, others) = match done {
                    Ok(r) => r,
                    Err(e) => ((0, 0), Err(e.to_string())),
                };
                let (chains, bytes) = match others {
                    Ok(p) => p,
                    Err(e) => {
                        sh.ctx.progress.message(&format!("--keep: {e}"));
                        (Vec::new(), 0)
                    }
                };
                if n.0 + chains.len() > 0 {
                    sh.ctx.progress.message(&format!(
                        "--keep {}: removed {} file(s) of chain {id}{}",
                        humantime::format_duration(keep),
                        n.0,
                        if chains.is_empty() {
                            String::new()
                        } else {
                            format!(" and chain(s) {}", chains.join(", "))
                        }
                    ));
                }
                sh.opts.stats.pruned(n.1 + bytes);
            }
            Err(e) => sh.ctx.progress.message(&format!("--keep: {e}")),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = sh.done.cancelled() => return,
        }
    }
}

/// Removes what of `chain` only restores to times before `cutoff` (Unix ms): base sets
/// older than the newest complete one that landed at or before it, and each shard's
/// segments wholly before that set's snapshot (offsets and stamps). Returns the paths
/// (relative to the chain's folder) to delete once the chain is saved without them.
pub fn trim(chain: &mut Chain, cutoff: u64) -> Vec<String> {
    let Some(k) = chain
        .bases
        .iter()
        .rposition(|b| b.complete() && b.unix_ms() <= cutoff)
    else {
        return Vec::new();
    };
    let mut gone: Vec<String> = chain.bases.drain(..k).map(|b| b.dir).collect();
    let keep = &chain.bases[0];
    for (i, s) in chain.shards.iter_mut().enumerate() {
        let Some(Some(b)) = keep.shards.get(i) else {
            continue;
        };
        let n = s
            .segments
            .iter()
            .take_while(|g| g.end_offset <= b.manifest.offset && g.last_unix_ms <= b.unix_ms)
            .count();
        gone.extend(s.segments.drain(..n).map(|g| g.file));
    }
    let since = keep.unix_ms();
    chain
        .gaps
        .retain(|g| g.to_unix_ms == 0 || g.to_unix_ms > since);
    chain.undated.retain(|g| g.to_unix_ms > since);
    gone
}

/// Deletes `paths` (files or folders) under `root`: how many, and their bytes.
fn remove_all(root: &Path, paths: &[String]) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    for p in paths {
        let path = root.join(p);
        let size = dir_bytes(&path);
        let ok = if path.is_dir() {
            std::fs::remove_dir_all(&path).is_ok()
        } else {
            std::fs::remove_file(&path).is_ok()
        };
        if ok {
            n += 1;
            bytes += size;
        }
    }
    (n, bytes)
}

fn dir_bytes(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|es| es.flatten().map(|e| dir_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// `--keep` over the chains other than `except` (the one being written): a closed chain
/// whose every stamp is before `cutoff` is removed — unless it is the newest that can
/// restore — and the others are trimmed. Returns the chains removed and the bytes freed.
pub fn prune_closed(dir: &Path, cutoff: u64, except: &str) -> Result<(Vec<String>, u64), String> {
    let all = chains(dir)?;
    let newest_restorable = all
        .iter()
        .rev()
        .find(|(_, c)| c.restorable())
        .map(|(_, c)| c.id.clone());
    let (mut removed, mut bytes) = (Vec::new(), 0);
    for (path, mut c) in all {
        if c.id == except || c.status != "closed" {
            continue;
        }
        let last = (0..c.shards.len())
            .map(|i| c.covered_until(i))
            .max()
            .unwrap_or(0)
            .max(c.started_unix_ms);
        if last < cutoff && newest_restorable.as_deref() != Some(c.id.as_str()) {
            bytes += dir_bytes(&path);
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(c.id);
            continue;
        }
        let gone = trim(&mut c, cutoff);
        if !gone.is_empty() {
            crate::job::save_json(&path.join(CHAIN), &c)?;
            bytes += remove_all(&path, &gone).1;
        }
    }
    Ok((removed, bytes))
}

/// Live figures of a follower for its `/metrics`, per shard of the chain being written.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Whether the source nodes' offsets are polled (what lag and recovery point need).
    poll: bool,
    shards: Mutex<Vec<ShardStats>>,
    pruned_bytes: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub slots: String,
    /// The node the stream comes from.
    pub node: Option<Addr>,
    /// What is on disk: the offset and the last stamp flushed.
    pub flushed_offset: u64,
    pub flushed_unix_ms: u64,
    pub segments: u64,
    pub bytes: u64,
    pub commands: u64,
    pub reconnects: u64,
    pub resyncs: u64,
    pub rebases: u64,
    /// Gaps the current chain records for the shard.
    pub gaps: u64,
    /// When its newest base snapshot landed.
    pub base_unix_ms: u64,
    /// `(when, the source's offset then)`, oldest first: what the recovery point is read
    /// from.
    history: std::collections::VecDeque<(u64, u64)>,
}

impl ShardStats {
    fn flushed(&mut self, offset: u64, stamp: u64) {
        self.flushed_offset = offset;
        if stamp > 0 {
            self.flushed_unix_ms = stamp;
        }
    }

    /// How far the source is ahead of what is on disk, by its last poll.
    pub fn lag_bytes(&self) -> Option<u64> {
        let (_, at) = self.history.back()?;
        Some(at.saturating_sub(self.flushed_offset))
    }

    /// The recovery point now: how long ago the source last held no more than what is on
    /// disk (everything written before then survives a crash of the follower). When every
    /// poll in the window is ahead, the window's start: a lower bound.
    pub fn recovery_point_ms(&self, now: u64) -> Option<u64> {
        let first = self.history.front()?.0;
        let safe = self
            .history
            .iter()
            .rev()
            .find(|(_, o)| *o <= self.flushed_offset)
            .map_or(first, |(t, _)| *t);
        Some(now.saturating_sub(safe))
    }
}

/// How often the sources' offsets are read, and how many reads are kept (10 minutes).
const POLL_EVERY: Duration = Duration::from_millis(250);
const POLL_KEEP: usize = 2400;

impl FollowStats {
    /// `poll`: read each source's offset four times a second (for lag and recovery point).
    pub fn new(poll: bool) -> FollowStats {
        FollowStats {
            poll,
            ..Default::default()
        }
    }

    /// A run over `chain` begins: one entry per shard (counters of the same shards kept).
    fn begin(&self, chain: &Chain, slots: &[String]) {
        let Ok(mut v) = self.shards.lock() else {
            return;
        };
        if v.len() != slots.len() || v.iter().zip(slots).any(|(s, l)| &s.slots != l) {
            *v = slots
                .iter()
                .map(|l| ShardStats {
                    slots: l.clone(),
                    ..Default::default()
                })
                .collect();
        }
        for (i, s) in v.iter_mut().enumerate() {
            s.gaps = chain.gaps.iter().filter(|g| g.slots == s.slots).count() as u64;
            s.base_unix_ms = chain.shard_bases(i).map(|b| b.unix_ms).max().unwrap_or(0);
            if let Some((_, o)) = chain.position(i) {
                s.flushed_offset = o;
            }
            s.flushed_unix_ms = chain.covered_until(i);
        }
    }

    fn with(&self, i: usize, f: impl FnOnce(&mut ShardStats)) {
        if let Some(s) = self.shards.lock().ok().as_mut().and_then(|v| v.get_mut(i)) {
            f(s);
        }
    }

    fn get<T: Default>(&self, i: usize, f: impl FnOnce(&ShardStats) -> T) -> T {
        self.shards
            .lock()
            .ok()
            .and_then(|v| v.get(i).map(f))
            .unwrap_or_default()
    }

    fn resynced(&self, slots: &str) {
        if let Ok(mut v) = self.shards.lock() {
            for s in v.iter_mut().filter(|s| s.slots == slots) {
                s.resyncs += 1;
            }
        }
    }

    fn pruned(&self, bytes: u64) {
        self.pruned_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy of every shard's figures.
    pub fn shards(&self) -> Vec<ShardStats> {
        self.shards.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Reads each source's `master_repl_offset` every [`POLL_EVERY`] until `done`.
    async fn poll_sources(&self, exec: &Executor, done: &crate::job::CancellationToken) {
        if !self.poll {
            return;
        }
        loop {
            let nodes: Vec<(usize, Addr)> = self
                .shards()
                .into_iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.node?)))
                .collect();
            let reads = nodes.into_iter().map(|(i, addr)| async move {
                let offset = tokio::time::timeout(
                    exec.timeout(),
                    crate::ops::link::source_offset(exec, &addr),
                )
                .await
                .ok()
                .and_then(Result::ok);
                (i, offset)
            });
            for (i, offset) in futures::future::join_all(reads).await {
                if let Some(o) = offset {
                    self.with(i, |s| {
                        s.history.push_back((unix_ms(), o));
                        if s.history.len() > POLL_KEEP {
                            s.history.pop_front();
                        }
                    });
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = done.cancelled() => return,
            }
        }
    }

    /// The figures as OpenMetrics text.
    pub fn encode(&self) -> String {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        type G = Gauge<f64, std::sync::atomic::AtomicU64>;
        type C = Counter<f64, std::sync::atomic::AtomicU64>;
        type Labels = Vec<(&'static str, String)>;
        let now = unix_ms();
        let mut reg = prometheus_client::registry::Registry::default();
        let gauge = |f: &dyn Fn(&ShardStats) -> Option<f64>| {
            let fam = Family::<Labels, G>::default();
            for s in self.shards() {
                if let Some(v) = f(&s) {
                    fam.get_or_create(&vec![("shard", s.slots.clone())]).set(v);
                }
            }
            fam
        };
        let counter = |f: &dyn Fn(&ShardStats) -> u64| {
            let fam = Family::<Labels, C>::default();
            for s in self.shards() {
                fam.get_or_create(&vec![("shard", s.slots.clone())])
                    .inc_by(f(&s) as f64);
            }
            fam
        };
        reg.register(
            "rcops_follow_lag_bytes",
            "Bytes of the stream its source holds that are not on disk yet",
            gauge(&|s| s.lag_bytes().map(|b| b as f64)),
        );
        reg.register(
            "rcops_follow_recovery_point_seconds",
            "How long ago the source last held no more than what is on disk",
            gauge(&|s| s.recovery_point_ms(now).map(|ms| ms as f64 / 1000.0)),
        );
        reg.register(
            "rcops_follow_archived_offset",
            "Stream offset flushed and synced to disk",
            gauge(&|s| Some(s.flushed_offset as f64)),
        );
        reg.register(
            "rcops_follow_covered_until_timestamp_seconds",
            "Time of the last stamp on disk",
            gauge(&|s| (s.flushed_unix_ms > 0).then(|| s.flushed_unix_ms as f64 / 1000.0)),
        );
        reg.register(
            "rcops_follow_base_age_seconds",
            "Age of the newest base snapshot",
            gauge(&|s| {
                (s.base_unix_ms > 0).then(|| now.saturating_sub(s.base_unix_ms) as f64 / 1000.0)
            }),
        );
        reg.register(
            "rcops_follow_gaps",
            "Gaps the current chain records for the shard",
            gauge(&|s| Some(s.gaps as f64)),
        );
        type Count = fn(&ShardStats) -> u64;
        let counters: [(&str, &str, Count); 6] = [
            ("rcops_follow_segments", "Segments closed", |s| s.segments),
            (
                "rcops_follow_segment_bytes",
                "Bytes of segments closed (compressed)",
                |s| s.bytes,
            ),
            ("rcops_follow_commands", "Commands archived", |s| s.commands),
            (
                "rcops_follow_reconnects",
                "Times the stream was reopened after it broke",
                |s| s.reconnects,
            ),
            (
                "rcops_follow_resyncs",
                "Times the chain could not go on (offset lost, reshard) and a new one began",
                |s| s.resyncs,
            ),
            (
                "rcops_follow_rebases",
                "Fresh base snapshots taken (--base-every)",
                |s| s.rebases,
            ),
        ];
        for (name, help, f) in counters {
            reg.register(name, help, counter(&f));
        }
        let pruned = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        pruned.inc_by(self.pruned_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64);
        reg.register(
            "rcops_follow_pruned_bytes",
            "Bytes removed by --keep",
            pruned,
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}

type SegmentEncoder =
    zstd::stream::write::Encoder<'static, Hashing<std::io::BufWriter<std::fs::File>>>;

/// The segment being written: `open.seg.zst`, with `open.json` naming its replid and start.
struct OpenSegment {
    dir: PathBuf,
    enc: SegmentEncoder,
    buf: Vec<u8>,
    meta: Segment,
    opened: Instant,
}

#[derive(Serialize, Deserialize)]
struct OpenMeta {
    replid: String,
    start_offset: u64,
}

impl OpenSegment {
    fn create(dir: &Path, replid: &str, start: u64) -> std::io::Result<OpenSegment> {
        let meta = OpenMeta {
            replid: replid.to_string(),
            start_offset: start,
        };
        crate::job::save_json(&dir.join(OPEN_META), &meta).map_err(std::io::Error::other)?;
        let file = std::fs::File::create(dir.join(OPEN))?;
        let hashing = Hashing {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            sha: <sha2::Sha256 as sha2::Digest>::new(),
            bytes: 0,
        };
        let mut enc = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL)?;
        // A damaged segment then fails to decode instead of yielding other bytes.
        enc.include_checksum(true)?;
        Ok(OpenSegment {
            dir: dir.to_path_buf(),
            enc,
            buf: Vec::with_capacity(1 << 20),
            meta: Segment {
                file: String::new(),
                replid: replid.to_string(),
                start_offset: start,
                end_offset: start,
                first_unix_ms: 0,
                last_unix_ms: 0,
                commands: 0,
                raw_bytes: 0,
                bytes: 0,
                sha256: String::new(),
            },
            opened: Instant::now(),
        })
    }

    fn command(&mut self, end: u64, args: &[Vec<u8>]) {
        let before = self.buf.len();
        segment::push_command(&mut self.buf, end, args);
        self.meta.raw_bytes += (self.buf.len() - before) as u64;
        self.meta.commands += 1;
        self.meta.end_offset = end;
    }

    fn stamp(&mut self, offset: u64, unix_ms: u64) {
        segment::push_stamp(&mut self.buf, offset, unix_ms);
        self.meta.raw_bytes += 17;
        self.meta.end_offset = offset;
        if self.meta.first_unix_ms == 0 {
            self.meta.first_unix_ms = unix_ms;
        }
        self.meta.last_unix_ms = unix_ms;
    }

    /// Everything so far into the file, as a complete zstd block, and synced.
    fn flush(&mut self) -> std::io::Result<()> {
        self.enc.write_all(&self.buf)?;
        self.buf.clear();
        self.enc.flush()?;
        self.enc.get_mut().inner.flush()?;
        self.enc.get_ref().inner.get_ref().sync_data()
    }

    /// Finishes, syncs and renames the segment to `<start offset>.seg.zst`; `None` (and the
    /// file removed) when it holds no record.
    fn close(mut self, shard_dir: &str) -> std::io::Result<Option<Segment>> {
        let empty = self.meta.raw_bytes == 0;
        self.enc.write_all(&self.buf)?;
        let hashing = self.enc.finish()?;
        let Hashing { inner, sha, bytes } = hashing;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        if empty {
            drop(file);
            let _ = std::fs::remove_file(self.dir.join(OPEN));
            let _ = std::fs::remove_file(self.dir.join(OPEN_META));
            return Ok(None);
        }
        file.sync_all()?;
        // Start offset, then first stamp: a segment of stamps only starts where it ends.
        let name = format!(
            "{:020}-{}.seg.zst",
            self.meta.start_offset, self.meta.first_unix_ms
        );
        std::fs::rename(self.dir.join(OPEN), self.dir.join(&name))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let _ = std::fs::remove_file(self.dir.join(OPEN_META));
        let mut meta = self.meta;
        meta.file = format!("{shard_dir}/{name}");
        meta.bytes = bytes;
        meta.sha256 = hex(&sha2::Digest::finalize(sha));
        Ok(Some(meta))
    }
}

/// The records a segment file holds: every complete one (of a file cut short, those before
/// the cut), and whether the file ended cleanly.
pub fn read_segment(path: &Path) -> std::io::Result<(Vec<Record>, bool)> {
    let mut raw = Vec::new();
    let mut clean = true;
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(path)?)?;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match dec.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    let mut records = Vec::new();
    let mut at = 0;
    loop {
        match segment::next_record(&raw[at..]) {
            Ok(Some((r, n))) => {
                records.push(r);
                at += n;
            }
            Ok(None) => {
                clean &= at == raw.len();
                break;
            }
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    Ok((records, clean))
}

/// Closes the segment a killed follower left open: its readable records become a closed
/// segment. `None` when there was none (or it held nothing).
fn recover(dir: &Path, shard_dir: &str) -> std::io::Result<Option<Segment>> {
    let path = dir.join(OPEN);
    if !path.exists() {
        return Ok(None);
    }
    let meta: OpenMeta = match std::fs::read(dir.join(OPEN_META))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
    {
        Some(m) => m,
        None => {
            // Without its start offset the file cannot be placed: nothing was flushed yet.
            std::fs::remove_file(&path)?;
            return Ok(None);
        }
    };
    let (records, _) = read_segment(&path)?;
    std::fs::rename(&path, dir.join("open.seg.zst.recovering"))?;
    let mut seg = OpenSegment::create(dir, &meta.replid, meta.start_offset)?;
    for r in &records {
        match r {
            Record::Command { end, args } => seg.command(*end, args),
            Record::Stamp { offset, unix_ms } => seg.stamp(*offset, *unix_ms),
        }
    }
    let closed = seg.close(shard_dir)?;
    std::fs::remove_file(dir.join("open.seg.zst.recovering"))?;
    Ok(closed)
}

/// What `backup verify` found in one shard of a chain.
#[derive(Debug, Clone, Serialize)]
pub struct ShardVerification {
    pub slots: String,
    /// Each base snapshot (oldest first; `file` names its set's folder): checksum and a
    /// full parse, as for a backup set.
    pub bases: Vec<crate::ops::backup::ShardCheck>,
    pub segments: usize,
    pub commands: u64,
    pub ok: bool,
    /// Each names the segment and the stream offset.
    pub problems: Vec<String>,
}

/// JSON: `{"chain", "ok", "shards": [{"slots", "base", "segments", "commands", "ok",
/// "problems"}]}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChainVerification {
    pub chain: String,
    pub ok: bool,
    pub shards: Vec<ShardVerification>,
}

/// Checks a chain: each base like a backup set's file; each segment's checksum, that it
/// starts where the one before ended (the first at or before the oldest base), that every
/// record parses with offsets going forward, and that its counts and stamps match the chain.
pub fn verify_chain(path: &Path, chain: &Chain) -> ChainVerification {
    let shards: Vec<ShardVerification> = chain
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bases: Vec<(&str, &ShardBase)> = chain
                .bases
                .iter()
                .filter_map(|b| Some((b.dir.as_str(), b.shards.get(i)?.as_ref()?)))
                .collect();
            let mut v = ShardVerification {
                slots: s.slots.clone(),
                bases: bases
                    .iter()
                    .map(|(dir, b)| {
                        let mut c = crate::ops::backup::verify_shard(&path.join(dir), &b.manifest);
                        c.file = format!("{dir}/{}", c.file);
                        c
                    })
                    .collect(),
                segments: s.segments.len(),
                commands: 0,
                ok: true,
                problems: Vec::new(),
            };
            let first = bases.first().map(|(_, b)| b.manifest.offset);
            match (first, s.segments.first()) {
                (None, _) => v.problems.push("no base snapshot yet".into()),
                (Some(o), Some(g)) if g.start_offset > o => v.problems.push(format!(
                    "{}: the archive starts at offset {} but the oldest base is at {o}",
                    g.file, g.start_offset
                )),
                _ => {}
            }
            let mut at: Option<u64> = None;
            for seg in &s.segments {
                let mut problem = |p: String| v.problems.push(format!("{}: {p}", seg.file));
                if at.is_some_and(|a| a != seg.start_offset) {
                    problem(format!(
                        "starts at offset {} but the archive before it ends at {}",
                        seg.start_offset,
                        at.unwrap_or_default()
                    ));
                }
                let file = path.join(&seg.file);
                match crate::ops::backup::sha256_file(&file) {
                    Ok(sha) if sha == seg.sha256 => {}
                    Ok(_) => problem("checksum differs from the chain's".into()),
                    Err(e) => problem(e),
                }
                let (records, clean) = match read_segment(&file) {
                    Ok(r) => r,
                    Err(e) => {
                        problem(e.to_string());
                        at = Some(seg.end_offset);
                        continue;
                    }
                };
                let (mut end, mut commands, mut last_ms) = (seg.start_offset, 0u64, 0u64);
                let mut backwards = None;
                for r in &records {
                    let (offset, ms) = match r {
                        Record::Command { end, .. } => {
                            commands += 1;
                            (*end, None)
                        }
                        Record::Stamp { offset, unix_ms } => (*offset, Some(*unix_ms)),
                    };
                    if offset < end && backwards.is_none() {
                        backwards = Some(offset);
                    }
                    end = end.max(offset);
                    if let Some(ms) = ms {
                        last_ms = ms;
                    }
                }
                if !clean {
                    problem(format!(
                        "unreadable after stream offset {end} ({} record(s) read)",
                        records.len()
                    ));
                } else if end != seg.end_offset || commands != seg.commands {
                    problem(format!(
                        "holds {commands} command(s) up to offset {end}; the chain says {} up \
                         to {}",
                        seg.commands, seg.end_offset
                    ));
                }
                if let Some(o) = backwards {
                    problem(format!("offsets go backwards at {o}"));
                }
                if clean && last_ms != seg.last_unix_ms {
                    problem(format!(
                        "last stamp {last_ms}, the chain says {}",
                        seg.last_unix_ms
                    ));
                }
                v.commands += commands;
                at = Some(seg.end_offset);
            }
            v.ok = v.problems.is_empty() && !v.bases.is_empty() && v.bases.iter().all(|b| b.ok);
            v
        })
        .collect();
    ChainVerification {
        chain: chain.id.clone(),
        ok: shards.iter().all(|s| s.ok),
        shards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, end: u64, first: u64, last: u64) -> Segment {
        Segment {
            file: format!("shard-000/{start}"),
            replid: "r".into(),
            start_offset: start,
            end_offset: end,
            first_unix_ms: first,
            last_unix_ms: last,
            commands: 1,
            raw_bytes: 1,
            bytes: 1,
            sha256: String::new(),
        }
    }

    fn set(dir: &str, at: Option<(u64, u64)>) -> BaseSet {
        BaseSet {
            dir: dir.into(),
            started_unix_ms: 0,
            shards: vec![at.map(|(unix_ms, offset)| ShardBase {
                unix_ms,
                manifest: ShardManifest {
                    offset,
                    ..Default::default()
                },
            })],
        }
    }

    fn chain(bases: Vec<BaseSet>, segments: Vec<Segment>) -> Chain {
        Chain {
            id: "c".into(),
            status: "open".into(),
            started_unix_ms: 0,
            rcops_version: String::new(),
            cluster_nodes: String::new(),
            shards: vec![ChainShard {
                slots: "0-16383".into(),
                master_id: "m".into(),
                dir: "shard-000".into(),
                segments,
            }],
            bases,
            gaps: Vec::new(),
            undated: Vec::new(),
        }
    }

    #[test]
    fn trim_keeps_the_newest_base_at_or_before_the_cutoff_and_what_follows_it() {
        let segments = vec![
            seg(0, 100, 1_000, 1_900),
            seg(100, 200, 2_000, 2_900),
            seg(200, 300, 3_000, 3_900),
            // stamps only, after the base at offset 300: kept (they say how far it reaches)
            seg(300, 300, 4_000, 4_900),
            seg(300, 400, 5_000, 5_900),
        ];
        let bases = vec![
            set("base", Some((900, 0))),
            set("base-b", Some((2_950, 200))),
            set("base-c", None), // incomplete: never the one kept
            set("base-d", Some((3_950, 300))),
        ];
        // No complete set at or before the cutoff: nothing goes.
        let mut c = chain(bases.clone(), segments.clone());
        assert!(trim(&mut c, 800).is_empty());
        assert_eq!(c.bases.len(), 4);
        // Between b and d: a and the segments wholly before b go; c stays (after b).
        let mut c = chain(bases.clone(), segments.clone());
        let gone = trim(&mut c, 3_500);
        assert_eq!(gone, ["base", "shard-000/0", "shard-000/100"]);
        assert_eq!(c.bases[0].dir, "base-b");
        assert_eq!(c.shards[0].segments[0].start_offset, 200);
        // After d: everything before d, but the stamp-only segment after it stays.
        let mut c = chain(bases, segments);
        let gone = trim(&mut c, 10_000);
        assert_eq!(gone.len(), 6, "{gone:?}");
        assert_eq!(c.bases.len(), 1);
        assert_eq!(c.shards[0].segments.len(), 2);
        assert_eq!(c.position(0), Some(("r".into(), 400)));
        assert_eq!(c.covered_until(0), 5_900);
    }

    #[test]
    fn recovery_point_is_when_the_source_last_held_no_more_than_the_disk() {
        let mut s = ShardStats::default();
        assert_eq!(s.recovery_point_ms(10_000), None);
        s.history.extend([(1_000, 10), (2_000, 20), (3_000, 30)]);
        s.flushed_offset = 20;
        assert_eq!(s.recovery_point_ms(3_500), Some(1_500));
        assert_eq!(s.lag_bytes(), Some(10));
        s.flushed_offset = 5; // every poll ahead: the window's start, a lower bound
        assert_eq!(s.recovery_point_ms(3_500), Some(2_500));
        s.flushed_offset = 30;
        assert_eq!(s.recovery_point_ms(3_500), Some(500));
        assert_eq!(s.lag_bytes(), Some(0));
    }
}
