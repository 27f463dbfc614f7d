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

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The archive: chains in `DIR/chains/`.
    pub dir: PathBuf,
    pub from_replicas: bool,
    /// Longest silence allowed while a base snapshot is made (see `backup`).
    pub idle_timeout: Duration,
    pub segment_bytes: u64,
    pub segment_age: Duration,
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
    /// Times some shard's archive does not cover, and why.
    #[serde(default)]
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainShard {
    /// Slot ranges in `CLUSTER NODES` notation.
    pub slots: String,
    pub master_id: String,
    /// The shard's folder in the chain (`shard-000`).
    pub dir: String,
    /// The base snapshot (the backup manifest's shard entry; its file is under `base/`).
    pub base: Option<ShardManifest>,
    pub base_unix_ms: u64,
    pub segments: Vec<Segment>,
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

impl ChainShard {
    /// Where the archive of this shard continues: the replid and offset after its last
    /// segment, or after its base; `None` before the base.
    pub fn position(&self) -> Option<(String, u64)> {
        if let Some(s) = self.segments.last() {
            return Some((s.replid.clone(), s.end_offset));
        }
        self.base.as_ref().map(|b| (b.replid.clone(), b.offset))
    }

    /// The latest time the archive covers (its last stamp, or the base's time).
    pub fn covered_until(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .map(|s| s.last_unix_ms)
            .find(|&t| t > 0)
            .unwrap_or(self.base_unix_ms)
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
    /// The window a restore can ask for: from the last shard's base to the first shard's
    /// last stamp (0 when some shard has no base yet).
    pub from_unix_ms: u64,
    pub until_unix_ms: u64,
    pub segments: usize,
    /// Bases and segments, compressed.
    pub bytes: u64,
    pub shards: Vec<ShardWindow>,
    pub gaps: Vec<Gap>,
}

impl ChainSummary {
    pub fn of(path: &Path, c: &Chain) -> ChainSummary {
        let shards: Vec<ShardWindow> = c
            .shards
            .iter()
            .map(|s| ShardWindow {
                slots: s.slots.clone(),
                from_unix_ms: if s.base.is_some() { s.base_unix_ms } else { 0 },
                until_unix_ms: if s.base.is_some() {
                    s.covered_until()
                } else {
                    0
                },
                segments: s.segments.len(),
                bytes: s.base.as_ref().map_or(0, |b| b.compressed_bytes)
                    + s.segments.iter().map(|g| g.bytes).sum::<u64>(),
            })
            .collect();
        let all_based = shards.iter().all(|s| s.from_unix_ms > 0);
        ChainSummary {
            id: c.id.clone(),
            path: path.to_path_buf(),
            status: c.status.clone(),
            from_unix_ms: if all_based {
                shards.iter().map(|s| s.from_unix_ms).max().unwrap_or(0)
            } else {
                0
            },
            until_unix_ms: if all_based {
                shards.iter().map(|s| s.until_unix_ms).min().unwrap_or(0)
            } else {
                0
            },
            segments: shards.iter().map(|s| s.segments).sum(),
            bytes: shards.iter().map(|s| s.bytes).sum(),
            shards,
            gaps: c.gaps.clone(),
        }
    }
}

/// Node ids in a `CLUSTER NODES` text.
fn node_ids(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// Archives every shard until cancelled. Continues the newest open chain in `opts.dir` when
/// it is this cluster's with the same shards; otherwise starts a new one.
pub async fn follow(
    ctx: &JobCtx,
    exec: &Executor,
    seeds: &[Addr],
    view: &ClusterView,
    cluster_nodes: String,
    opts: &FollowOptions,
) -> Result<FollowReport, JobError> {
    let (srcs, _) = sources(view, opts.from_replicas);
    if srcs.is_empty() {
        return Err(JobError::precondition(
            "no master owns slots: nothing to follow",
        ));
    }
    let slots: Vec<String> = srcs
        .iter()
        .map(|s| format_ranges(&s.slots.ranges()))
        .collect();
    let existing = chains(&opts.dir).map_err(JobError::internal)?;
    let open = existing.into_iter().rev().find(|(_, c)| c.status == "open");
    let (path, chain, continued) = match open {
        Some((path, c)) => {
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
            if theirs != slots.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(JobError::precondition(format!(
                    "open chain {} has shards {} but the cluster now has {}: a chain across a \
                     reshard is not supported yet",
                    c.id,
                    theirs.join(" "),
                    slots.join(" ")
                )));
            }
            (path, c, true)
        }
        None => {
            let (path, chain) = new_chain(opts, &srcs, &slots, &cluster_nodes, Vec::new())?;
            (path, chain, false)
        }
    };
    let (mut path, mut chain, mut continued) = (path, chain, continued);
    let mut closed = Vec::new();
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
        };
        let jobs = srcs
            .iter()
            .enumerate()
            .map(|(i, src)| archive_shard(&shared, i, src));
        let shards = futures::future::join_all(jobs).await;
        let resync = shared.resync.lock().ok().and_then(|mut r| r.take());
        let mut old = shared.chain.into_inner().unwrap_or(chain.clone());
        if let (Some((slots_gone, why)), false) = (resync, ctx.cancel.is_cancelled()) {
            // The chain cannot go on: it is closed where each shard's archive ends, and a new
            // one begins with fresh bases; until they land, nothing is covered.
            old.status = "closed".into();
            crate::job::save_json(&path.join(CHAIN), &old).map_err(JobError::internal)?;
            let gaps = old
                .shards
                .iter()
                .map(|s| Gap {
                    slots: s.slots.clone(),
                    from_unix_ms: s.covered_until(),
                    to_unix_ms: 0,
                    why: if s.slots == slots_gone {
                        why.clone()
                    } else {
                        format!("a new chain began: shard {slots_gone} could not continue")
                    },
                })
                .collect();
            closed.push(old.id.clone());
            let (p, c) = new_chain(opts, &srcs, &slots, &old.cluster_nodes, gaps)?;
            ctx.progress.message(&format!(
                "shard {slots_gone}: {why}: chain {} closed, new chain {}",
                old.id, c.id
            ));
            (path, chain, continued) = (p, c, false);
            continue;
        }
        let outcome = if shards.iter().any(|s| s.error.is_some()) {
            Outcome::Failed
        } else if !closed.is_empty() {
            Outcome::Findings
        } else {
            Outcome::Ok
        };
        return Ok(FollowReport {
            chain: chain.id,
            path,
            continued,
            closed,
            shards,
            outcome,
        });
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
                base: None,
                base_unix_ms: 0,
                segments: Vec::new(),
            })
            .collect(),
        gaps,
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
    /// Set by a shard whose source no longer holds its offset: (its slots, why).
    resync: Mutex<Option<(String, String)>>,
}

impl Shared<'_> {
    /// Changes shard `i` of the chain and saves it (atomically).
    fn update(&self, i: usize, f: impl FnOnce(&mut ChainShard)) -> Result<(), String> {
        let mut c = self.chain.lock().map_err(|_| "a lock was poisoned")?;
        f(&mut c.shards[i]);
        crate::job::save_json(&self.path.join(CHAIN), &*c)
    }

    fn shard(&self, i: usize) -> Option<ChainShard> {
        self.chain.lock().ok().map(|c| c.shards[i].clone())
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
    let mut pos = sh.shard(i).and_then(|s| s.position());
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
        match start {
            Start::Full { replid, offset } => {
                if let Some((id, at)) = &pos {
                    let why = format!(
                        "the source no longer holds offset {at} of {id} (its backlog moved on)"
                    );
                    if let Ok(mut r) = sh.resync.lock() {
                        r.get_or_insert((label.clone(), why));
                    }
                    rep.resynced = true;
                    sh.ctx.cancel.cancel();
                    break;
                }
                match base(sh, i, src, &mut stream, &replid, offset).await {
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
        pos = sh.shard(i).and_then(|s| s.position());
        match stop {
            Stop::Cancelled => break,
            Stop::Fatal(e) => {
                rep.error = Some(e);
                break;
            }
            Stop::Broken(e) => {
                rep.reconnects += 1;
                sh.ctx.progress.message(&format!(
                    "{label}: stream from {}: {e}; reconnecting",
                    rep.node
                ));
                link.broke().await;
            }
        }
    }
    if let Some(s) = sh.shard(i) {
        rep.offset = s.position().map_or(0, |p| p.1);
        rep.covered_until_unix_ms = s.covered_until();
    }
    rep
}

/// Takes the shard's base snapshot off the stream into `base/` (as `backup` writes it) and
/// records it in the chain. Returns its key count.
async fn base(
    sh: &Shared<'_>,
    i: usize,
    src: &Source,
    stream: &mut ReplStream,
    replid: &str,
    offset: u64,
) -> Result<u64, ReplError> {
    let file = format!(
        "shard-{i:03}-{}.rdb.zst",
        &src.master_id[..8.min(src.master_id.len())]
    );
    let dir = sh.path.join("base");
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
    if let Ok(mut c) = sh.chain.lock() {
        // A gap carried from the chain before ends where this base begins.
        let slots = c.shards[i].slots.clone();
        for g in c
            .gaps
            .iter_mut()
            .filter(|g| g.slots == slots && g.to_unix_ms == 0)
        {
            g.to_unix_ms = now;
        }
    }
    sh.update(i, |s| {
        s.base = Some(m);
        s.base_unix_ms = now;
    })
    .map_err(ReplError::Sink)?;
    // Once every shard has its base, `base/` is a backup set like any other.
    let set = sh.chain.lock().ok().and_then(|c| {
        let shards: Option<Vec<ShardManifest>> = c.shards.iter().map(|s| s.base.clone()).collect();
        shards.map(|shards| crate::ops::backup::Manifest {
            id: format!("{}-base", c.id),
            status: "complete".into(),
            started_unix_ms: c.started_unix_ms,
            finished_unix_ms: unix_ms(),
            rcops_version: c.rcops_version.clone(),
            cluster_nodes: c.cluster_nodes.clone(),
            shards,
            warnings: Vec::new(),
        })
    });
    if let Some(set) = set {
        crate::job::save_json(&dir.join(crate::ops::backup::MANIFEST), &set)
            .map_err(ReplError::Sink)?;
    }
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
    let close = |seg: OpenSegment, rep: &mut ShardFollow| -> Result<(), String> {
        if let Some(s) = seg
            .close(&shard_dir)
            .map_err(|e| format!("closing a segment: {e}"))?
        {
            rep.segments += 1;
            rep.bytes += s.bytes;
            sh.update(i, |c| c.segments.push(s))?;
        }
        Ok(())
    };
    loop {
        let cmds = tokio::select! {
            r = stream.commands(STAMP_EVERY, 10_000) => r,
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
        if !cmds.is_empty() || stamped.is_none_or(|t: Instant| t.elapsed() >= STAMP_EVERY) {
            seg.stamp(stream.offset(), unix_ms());
            stamped = Some(now);
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
            // The master hears of what is on disk, not of what was read.
            stream.applied(seg.meta.end_offset);
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
    /// The base: checksum and a full parse, as for a backup set.
    pub base: Option<crate::ops::backup::ShardCheck>,
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
/// starts where the one before ended (the base, for the first), that every record parses
/// with offsets going forward, and that its counts and stamps match the chain.
pub fn verify_chain(path: &Path, chain: &Chain) -> ChainVerification {
    let base_dir = path.join("base");
    let shards: Vec<ShardVerification> = chain
        .shards
        .iter()
        .map(|s| {
            let mut v = ShardVerification {
                slots: s.slots.clone(),
                base: s
                    .base
                    .as_ref()
                    .map(|b| crate::ops::backup::verify_shard(&base_dir, b)),
                segments: s.segments.len(),
                commands: 0,
                ok: true,
                problems: Vec::new(),
            };
            if s.base.is_none() {
                v.problems.push("no base snapshot yet".into());
            }
            let mut at = s.base.as_ref().map(|b| b.offset);
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
            v.ok = v.problems.is_empty() && v.base.as_ref().is_some_and(|b| b.ok);
            v
        })
        .collect();
    ChainVerification {
        chain: chain.id.clone(),
        ok: shards.iter().all(|s| s.ok),
        shards,
    }
}
