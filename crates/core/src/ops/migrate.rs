//! `migrate`: copies a live cluster (or standalone server) into another one of any shape
//! over the replication protocol, and keeps it in step. Per source shard one
//! [`ReplStream`] (from an in-sync replica unless `from_masters`): the snapshot is restored
//! through the [`SlotWriter`] as `restore` does (payload version rules, re-encoding, expired
//! keys skipped, absolute TTLs), then the command stream is applied in order through the
//! command [`Router`] (transactions kept within a slot, cross-slot commands split,
//! functions to every master, flushes by `on_flush`).
//!
//! Resumable: a checkpoint (`STATE_DIR/migrate/ID/checkpoint.json`) holds per shard the
//! phase and, once streaming, the replication id and the offset applied, written at least
//! every second (after the replication fence confirmed what it counts) and at every stop.
//! A resumed shard still in its snapshot redoes it with replace semantics (the keys are its
//! own); a streaming one continues with `PSYNC replid offset+1`, or does a full resync when
//! the source no longer has that offset, and says so. A stream that breaks (a source
//! failover) reconnects to the shard's node of the moment and continues.
//!
//! Also here: `--method scan` (SCAN + DUMP + PEXPIRETIME → RESTORE, a one-shot copy for
//! sources that refuse PSYNC, its cursor checkpointed) and the cutover (pause the source's
//! writes, drain every shard to its master's offset, check, unpause).

use rcops_formats::slot::{format_ranges, key_slot};
use rcops_rdb::{type_name, Item, Parser};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fanout::Executor;
use crate::job::{JobCtx, JobError, Outcome};
use crate::node::{Addr, NodeError};
use crate::ops::backup::Source;
use crate::ops::link::{Closed, ShardLink};
use crate::ops::restore::{Counts, OnConflict};
use crate::repl::{ChunkReader, Psync, ReplError, ReplStream, Start, StreamCommand};
use crate::route::{Commands, KeyFilter, RouteStats, Routed, Router};
use crate::topology::{line_addr, ClusterView, Detail};
use crate::writer::{Done, Lane, Op, Outcome as WriteOutcome, SlotWriter, Write};

/// What a flush on the source does to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFlush {
    /// Halt this shard's stream before the flush and say so (the default: a flush on the
    /// source must never silently empty the target).
    Stop,
    /// Flush every target master too.
    Apply,
    /// Skip it and count it.
    Ignore,
}

/// Both ends of a migration.
pub struct Ends<'a> {
    pub from: &'a Executor,
    pub from_seeds: &'a [Addr],
    pub from_view: &'a ClusterView,
    pub to: &'a Executor,
    pub to_view: &'a ClusterView,
}

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub method: Method,
    pub id: String,
    pub checkpoint: PathBuf,
    pub resume: bool,
    pub from_masters: bool,
    /// Keep applying the stream until cancelled; otherwise stop once each shard has applied
    /// what its source had when the stream phase began.
    pub follow: bool,
    pub filter: KeyFilter,
    pub db: u64,
    pub on_conflict: OnConflict,
    pub on_flush: OnFlush,
    /// Writes per second across all shards.
    pub rate: Option<u64>,
    pub batch: usize,
    /// Snapshot values whose serialization is longer are rebuilt piece by piece into a
    /// temporary key and renamed, not sent as one `RESTORE`.
    pub big_key_bytes: u64,
    /// Longest silence tolerated while a source builds and sends its snapshot.
    pub idle_timeout: Duration,
    /// Switch over once every shard's lag is under `max_lag`: pause the source's writes,
    /// drain, check, report the switch point (implies following until then).
    pub cutover: Option<CutoverOptions>,
}

#[derive(Debug, Clone)]
pub struct CutoverOptions {
    /// Bytes of stream a shard may lag before the pause.
    pub max_lag: u64,
    /// `CLIENT PAUSE` timeout: the source resumes by itself after it even if rcops dies.
    pub pause: Duration,
    /// Leave the source paused after a successful cutover (the operator unpauses).
    pub keep_paused: bool,
}

/// How a cutover went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CutoverReport {
    /// When the source's writes were paused (Unix ms), and how long the drain and the
    /// check took after it.
    pub paused_at_unix_ms: Option<u64>,
    pub drained_ms: u128,
    /// Per source shard (its slots): the master offset the target reached.
    pub offsets: BTreeMap<String, u64>,
    pub source_keys: u64,
    pub target_keys: u64,
    /// Keys compared (type, TTL, length) in the quick check, and how many differed.
    pub sampled: u64,
    pub sample_differences: u64,
    /// Whether the source's writes were resumed (unless `keep_paused`).
    pub unpaused: bool,
    pub error: Option<String>,
}

/// What the shards and the cutover coordinator share.
#[derive(Default)]
struct CutoverCtl {
    /// Each streaming shard's last lag, by its slots.
    lags: Mutex<BTreeMap<String, u64>>,
    /// Set once the source is paused: the master offset each shard must reach.
    goals: Mutex<Option<BTreeMap<String, u64>>>,
    reached: Mutex<std::collections::BTreeSet<String>>,
}

/// Where one source shard stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Snapshot,
    Stream,
    /// `--method scan`: copying by SCAN + DUMP (the cursor in `offset`).
    Scan,
    /// `--method scan`: every key was read.
    Scanned,
}

/// How a migration reads the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The replication protocol: snapshot, then the command stream.
    Sync,
    /// SCAN + DUMP + PEXPIRETIME → RESTORE ABSTTL: a one-shot copy for sources that refuse
    /// PSYNC; writes during the copy may be missed (`verify` afterwards shows which).
    Scan,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardState {
    pub phase: Phase,
    #[serde(default)]
    pub replid: String,
    /// The last stream offset applied (and confirmed by the fence); with `--method scan`
    /// the SCAN cursor to continue from.
    #[serde(default)]
    pub offset: u64,
    /// The node a scan reads (a cursor means nothing on another node).
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub keys: Counts,
    #[serde(default)]
    pub commands_applied: u64,
}

/// The resumable state of a migration, per source shard (by its slot ranges, which a
/// failover does not change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: String,
    #[serde(default = "sync_method")]
    pub method: Method,
    pub from: String,
    pub to: String,
    pub db: u64,
    pub filter: KeyFilter,
    pub on_conflict: OnConflict,
    pub shards: BTreeMap<String, ShardState>,
}

pub fn load_checkpoint(path: &std::path::Path) -> Result<Option<Checkpoint>, JobError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| JobError::internal(format!("checkpoint {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JobError::internal(format!(
            "checkpoint {}: {e}",
            path.display()
        ))),
    }
}

fn sync_method() -> Method {
    Method::Sync
}

/// One source shard in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanShard {
    pub slots: String,
    /// The node the stream is read from (first choice), and its role.
    pub node: Option<String>,
    pub role: Option<String>,
    pub keys: u64,
    pub used_memory: Option<u64>,
    /// Where the checkpoint has it (on resume).
    pub resume_phase: Option<Phase>,
    pub resume_offset: Option<u64>,
}

/// What a migration would do.
#[derive(Debug, Clone, Serialize)]
pub struct MigratePlan {
    pub id: String,
    pub checkpoint: String,
    pub method: &'static str,
    pub source_shards: Vec<PlanShard>,
    pub source_keys: u64,
    pub target_masters: usize,
    pub target_keys: u64,
    pub target_rdb_version: u16,
    pub filter: KeyFilter,
    pub db: u64,
    pub on_conflict: OnConflict,
    pub on_flush: OnFlush,
    pub follow: bool,
    /// `--cutover`: the lag (bytes) under which the source is paused.
    pub cutover_max_lag: Option<u64>,
    pub resume: bool,
    pub warnings: Vec<String>,
}

/// Sources that wait before they send a snapshot (`repl-diskless-sync-delay`, 5 s by default:
/// the server waits for more replicas to share the transfer): each wait said in the plan.
async fn sync_delays(exec: &crate::fanout::Executor, shards: &[PlanShard]) -> Vec<String> {
    let nodes: Vec<Addr> = shards
        .iter()
        .filter_map(|s| s.node.as_ref()?.parse().ok())
        .collect();
    let asked = nodes.iter().map(|a| async move {
        let mut conn = exec.conn(a).await.ok()?;
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("repl-diskless-sync*");
        let got: std::collections::HashMap<String, String> =
            crate::fanout::query(a, &mut conn, &get).await.ok()?;
        let delay: u64 = got.get("repl-diskless-sync-delay")?.parse().ok()?;
        (got.get("repl-diskless-sync").map(String::as_str) == Some("yes") && delay > 0)
            .then(|| format!("{a}: repl-diskless-sync-delay is {delay} s: its snapshot starts {delay} s after rcops asks (CONFIG SET repl-diskless-sync-delay 0 to start at once)"))
    });
    futures::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Reads both ends and decides whether the migration may start: every refusal here comes
/// before anything is written.
pub async fn plan(ends: &Ends<'_>, opts: &MigrateOptions) -> Result<MigratePlan, JobError> {
    if (opts.follow || opts.cutover.is_some()) && opts.method == Method::Scan {
        return Err(JobError::usage(
            "--follow and --cutover need --method sync (a scan copies once; it has no stream \
             to follow)",
        ));
    }
    let blockers = crate::ops::restore::write_blockers(ends.to_view);
    if let Some(b) = blockers.first() {
        return Err(JobError::precondition(format!(
            "target not writable: {} ({} problem(s); see rcops check)",
            b.message,
            blockers.len()
        )));
    }
    let earlier = if opts.resume {
        let cp = load_checkpoint(&opts.checkpoint)?.ok_or_else(|| {
            JobError::usage(format!(
                "--resume {}: no checkpoint at {}",
                opts.id,
                opts.checkpoint.display()
            ))
        })?;
        Some(cp)
    } else {
        None
    };
    let (sources, mut warnings) = crate::ops::backup::sources(ends.from_view, !opts.from_masters);
    let mut shards = Vec::new();
    let mut source_keys = 0;
    for s in &sources {
        let slots = format_ranges(&s.slots.ranges());
        let first = s.candidates.first();
        let snap =
            first.and_then(|(a, _)| ends.from_view.snapshots.values().find(|sn| &sn.addr == a));
        let keys = snap
            .map(|sn| {
                sn.info
                    .keyspace()
                    .iter()
                    .filter(|d| u64::from(d.db) == opts.db)
                    .map(|d| d.keys)
                    .sum()
            })
            .unwrap_or(0);
        source_keys += keys;
        let state = earlier.as_ref().and_then(|c| c.shards.get(&slots));
        if earlier.is_some() && state.is_none() {
            return Err(JobError::precondition(format!(
                "--resume: the checkpoint has no shard with slots {slots} (the source was \
                 resharded): start a new migration"
            )));
        }
        if let Some(why) = &s.why_none {
            return Err(JobError::unavailable(format!(
                "source shard {slots}: {why}"
            )));
        }
        shards.push(PlanShard {
            slots,
            node: first.map(|(a, _)| a.to_string()),
            role: first.map(|(_, r)| r.to_string()),
            keys,
            used_memory: snap.and_then(|sn| sn.info.get("used_memory")?.parse().ok()),
            resume_phase: state.map(|s| s.phase),
            resume_offset: state
                .filter(|s| matches!(s.phase, Phase::Stream | Phase::Scan))
                .map(|s| s.offset),
        });
    }
    if shards.is_empty() {
        return Err(JobError::unavailable("the source has no shard with slots"));
    }
    if let Some(cp) = &earlier {
        if cp.method != opts.method {
            return Err(JobError::usage(
                format!(
                "--resume {}: that migration used --method {:?}; resume it with the same method",
                opts.id, cp.method
            )
                .to_lowercase(),
            ));
        }
        if cp.db != opts.db || cp.filter != opts.filter || cp.on_conflict != opts.on_conflict {
            return Err(JobError::usage(format!(
                "--resume {}: the checkpoint was made with other --db/--match/--prefix/--type/\
                 --on-conflict options; resume with the same ones",
                opts.id
            )));
        }
    }
    let target_keys = crate::ops::restore::target_keys(ends.to, ends.to_view).await;
    if earlier.is_none() && opts.on_conflict == OnConflict::Fail && target_keys > 0 {
        return Err(JobError::precondition(format!(
            "the target holds {target_keys} key(s) and --on-conflict is fail: migrate into an \
             empty target, or choose --on-conflict skip (keep the target's keys) or replace"
        )));
    }
    let target_rdb_version = crate::ops::restore::target_rdb_version(ends.to, ends.to_view)
        .await
        .map_err(|e| JobError::unavailable(e.to_string()))?;
    if opts.method == Method::Scan {
        warnings.push(
            "--method scan copies once: writes during the copy may be missed (run rcops verify \
             afterwards to see which)"
                .into(),
        );
    }
    if opts.method == Method::Sync {
        warnings.extend(sync_delays(ends.from, &shards).await);
    }
    if !opts.filter.types.is_empty() && opts.method == Method::Sync {
        warnings.push(
            "--type: the stream's commands pass by the type they work on (their ACL category); \
             generic ones (DEL, EXPIRE, RENAME, scripts) pass whatever the key holds"
                .into(),
        );
    }
    Ok(MigratePlan {
        id: opts.id.clone(),
        checkpoint: opts.checkpoint.display().to_string(),
        method: match opts.method {
            Method::Sync => "sync",
            Method::Scan => "scan",
        },
        source_keys,
        source_shards: shards,
        target_masters: ends
            .to_view
            .masters()
            .filter(|m| !m.slots.is_empty())
            .count(),
        target_keys,
        target_rdb_version,
        filter: opts.filter.clone(),
        db: opts.db,
        on_conflict: opts.on_conflict,
        on_flush: opts.on_flush,
        follow: opts.follow,
        cutover_max_lag: opts.cutover.as_ref().map(|c| c.max_lag),
        resume: opts.resume,
        warnings,
    })
}

/// Commands a shard applied again after an unclean stop (or a reconnect whose last writes
/// no target replica had confirmed): those between the checkpoint and the last offset sent. Idempotent ones (SET, HSET,
/// DEL, PEXPIREAT, …) are harmless; the others are named so an operator can check the keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CrashWindow {
    pub from_offset: u64,
    pub to_offset: u64,
    pub commands: u64,
    /// Non-idempotent commands in the window, by name.
    pub non_idempotent: BTreeMap<String, u64>,
    /// Keys they touched (the first few).
    pub keys: Vec<String>,
    /// Commands the target refused in the window because they had run already (an XADD
    /// with an id the stream has).
    pub refused_as_done: u64,
}

/// Commands whose second run changes the result.
fn non_idempotent(name: &str) -> bool {
    matches!(
        name,
        "INCR"
            | "INCRBY"
            | "DECR"
            | "DECRBY"
            | "HINCRBY"
            | "ZINCRBY"
            | "LPUSH"
            | "RPUSH"
            | "LPUSHX"
            | "RPUSHX"
            | "LINSERT"
            | "LPOP"
            | "RPOP"
            | "LMOVE"
            | "RPOPLPUSH"
            | "LREM"
            | "APPEND"
            | "BITFIELD"
            | "ZPOPMIN"
            | "ZPOPMAX"
            | "LMPOP"
            | "ZMPOP"
            | "BLMOVE"
            | "SMOVE"
            | "GETDEL"
            | "XAUTOCLAIM"
            | "XCLAIM"
    )
}

/// One source shard's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardReport {
    pub slots: String,
    /// The node the stream was last read from, and its role.
    pub node: String,
    pub role: String,
    pub phase: String,
    pub replid: String,
    /// The last stream offset applied.
    pub offset: u64,
    /// Keys of the snapshot(s), all runs.
    pub keys: Counts,
    pub per_type: BTreeMap<&'static str, Counts>,
    pub snapshot_bytes: u64,
    /// Commands applied (all runs), failed, and re-sent after an unknown outcome (which may
    /// have run twice).
    pub commands_applied: u64,
    pub commands_failed: u64,
    pub commands_maybe_twice: u64,
    pub route: RouteStats,
    pub flushes: u64,
    /// Functions and scripts loaded on every target master.
    pub broadcasts: u64,
    /// After an unclean stop (a crash, `kill -9`): the commands re-applied from the
    /// checkpoint up to what the stopped run had sent, which may have run twice.
    pub crash_window: Option<CrashWindow>,
    pub reconnects: u32,
    /// Target keys of this shard's slots removed after a resync because the source no
    /// longer had them (deleted while rcops was stopped).
    pub removed_after_resync: u64,
    /// Full resyncs after the stream could not continue.
    pub resyncs: u32,
    /// Source offset minus applied offset when the shard stopped.
    pub lag_bytes: Option<u64>,
    pub elapsed_ms: u128,
    /// Why the shard stopped early, if it did.
    pub error: Option<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub cutover: Option<CutoverReport>,
    pub id: String,
    pub checkpoint: String,
    pub outcome: Outcome,
    pub shards: Vec<ShardReport>,
    pub keys: Counts,
    pub commands_applied: u64,
    pub resumed: bool,
    pub elapsed_ms: u128,
    pub keys_per_sec: f64,
}

/// What every shard's task shares.
struct Shared<'a> {
    ends: &'a Ends<'a>,
    opts: &'a MigrateOptions,
    ctx: &'a JobCtx,
    writer: SlotWriter<'a>,
    cmds: Commands,
    target_version: u16,
    checkpoint: Mutex<Checkpoint>,
    cutover: Option<CutoverCtl>,
    /// Shards whose task has ended.
    ended: std::sync::atomic::AtomicUsize,
}

impl Shared<'_> {
    fn save(&self, slots: &str, state: &ShardState) -> Result<(), String> {
        let mut cp = self.checkpoint.lock().map_err(|_| "a lock was poisoned")?;
        cp.shards.insert(slots.to_string(), state.clone());
        crate::job::save_json(&self.opts.checkpoint, &*cp)
    }
}

/// Runs the migration the plan describes.
pub async fn migrate(
    ctx: &JobCtx,
    ends: &Ends<'_>,
    opts: &MigrateOptions,
    plan: &MigratePlan,
) -> Result<MigrateReport, JobError> {
    let started = Instant::now();
    let (sources, _) = crate::ops::backup::sources(ends.from_view, !opts.from_masters);
    let mut cp = match load_checkpoint(&opts.checkpoint)? {
        Some(cp) if opts.resume => cp,
        _ => Checkpoint {
            id: opts.id.clone(),
            method: opts.method,
            from: ends
                .from_seeds
                .iter()
                .map(Addr::to_string)
                .collect::<Vec<_>>()
                .join(","),
            to: String::new(),
            db: opts.db,
            filter: opts.filter.clone(),
            on_conflict: opts.on_conflict,
            shards: BTreeMap::new(),
        },
    };
    for s in &sources {
        cp.shards
            .entry(format_ranges(&s.slots.ranges()))
            .or_insert(ShardState {
                phase: if opts.method == Method::Scan {
                    Phase::Scan
                } else {
                    Phase::Snapshot
                },
                replid: String::new(),
                offset: 0,
                node: String::new(),
                keys: Counts::default(),
                commands_applied: 0,
            });
    }
    // Saved before the first write, so a run killed at any point after it resumes.
    crate::job::save_json(&opts.checkpoint, &cp)
        .map_err(|e| JobError::internal(format!("checkpoint: {e}")))?;
    let cmds = Commands::load(ends.to, ends.to_view)
        .await
        .map_err(|e| JobError::unavailable(e.to_string()))?;
    let shared = Shared {
        ends,
        opts,
        ctx,
        writer: SlotWriter::new(
            ends.to,
            ends.to_view,
            opts.rate,
            opts.on_conflict == OnConflict::Skip,
        ),
        cmds,
        target_version: plan.target_rdb_version,
        checkpoint: Mutex::new(cp),
        cutover: opts.cutover.as_ref().map(|_| CutoverCtl::default()),
        ended: Default::default(),
    };
    let jobs = sources.iter().map(|s| async {
        let r = match opts.method {
            Method::Sync => shard(&shared, s).await,
            Method::Scan => scan_shard(&shared, s).await,
        };
        shared
            .ended
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    });
    let (shards, cutover): (Vec<ShardReport>, Option<CutoverReport>) = futures::join!(
        futures::future::join_all(jobs),
        switch_over(&shared, sources.len())
    );
    let mut keys = Counts::default();
    let mut commands_applied = 0;
    for s in &shards {
        keys.add(&s.keys);
        commands_applied += s.commands_applied;
    }
    let outcome = if shards.iter().any(|s| s.error.is_some())
        || cutover.as_ref().is_some_and(|c| c.error.is_some())
    {
        Outcome::Failed
    } else if ctx.cancel.is_cancelled() {
        Outcome::Interrupted
    } else if keys.failed > 0 || shards.iter().any(|s| s.commands_failed > 0) {
        Outcome::Failed
    } else if keys.skipped_existing > 0
        || shards.iter().any(|s| {
            s.route.unroutable > 0
                || s.route.other_db_skipped > 0
                || s.route.transactions_split > 0
                || !s.route.keyless_skipped.is_empty()
                || s.commands_maybe_twice > 0
                || s.resyncs > 0
                || s.crash_window
                    .as_ref()
                    .is_some_and(|w| !w.non_idempotent.is_empty())
        })
    {
        Outcome::Findings
    } else {
        Outcome::Ok
    };
    let elapsed = started.elapsed();
    Ok(MigrateReport {
        cutover,
        id: opts.id.clone(),
        checkpoint: opts.checkpoint.display().to_string(),
        outcome,
        keys_per_sec: (keys.restored as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
        keys,
        commands_applied,
        shards,
        resumed: opts.resume,
        elapsed_ms: elapsed.as_millis(),
    })
}

/// The cutover: once every shard lags less than `max_lag`, pause the writes of every
/// source master (`CLIENT PAUSE … WRITE`, with a timeout so a dead rcops never leaves it
/// paused), read each master's offset, let every shard drain to it, check key counts and a
/// sample, and unpause unless asked not to. Any failure after the pause unpauses.
async fn switch_over(sh: &Shared<'_>, shards: usize) -> Option<CutoverReport> {
    use std::sync::atomic::Ordering;
    let (ctl, opts) = (sh.cutover.as_ref()?, sh.opts.cutover.as_ref()?);
    let mut rep = CutoverReport::default();
    let stopped = || sh.ended.load(Ordering::SeqCst) > 0 || sh.ctx.cancel.is_cancelled();
    loop {
        if stopped() {
            rep.error = Some("a shard stopped before the cutover: nothing was paused".into());
            return Some(rep);
        }
        let ready = ctl
            .lags
            .lock()
            .map(|l| l.len() == shards && l.values().all(|&v| v <= opts.max_lag))
            .unwrap_or(false);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The source's masters now (a failover may have moved them).
    let view =
        match crate::topology::discover_endpoint(sh.ends.from, sh.ends.from_seeds, Detail::Health)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                rep.error = Some(format!("cutover: source: {e}"));
                return Some(rep);
            }
        };
    let masters: Vec<(Addr, rcops_formats::slot::SlotSet)> = view
        .masters()
        .filter(|m| !m.slots.is_empty())
        .filter_map(|m| {
            Some((
                line_addr(m)?,
                rcops_formats::slot::SlotSet::from_ranges(&m.slots),
            ))
        })
        .collect();
    let addrs: Vec<Addr> = masters.iter().map(|(a, _)| a.clone()).collect();
    let ms = opts.pause.as_millis().to_string();
    let paused = sh
        .ends
        .from
        .run(addrs.clone(), |addr, mut conn| {
            let ms = ms.clone();
            async move {
                crate::fanout::query::<()>(
                    &addr,
                    &mut conn,
                    redis::cmd("CLIENT").arg("PAUSE").arg(&ms).arg("WRITE"),
                )
                .await
            }
        })
        .await;
    let started = Instant::now();
    rep.paused_at_unix_ms = Some(crate::ops::backup::unix_ms());
    let result = async {
        if let Some(e) = paused.first_error() {
            return Err(format!("pausing the source: {e}"));
        }
        // Each shard's goal: its master's offset once writes stopped.
        let mut goals = BTreeMap::new();
        let (sources, _) = crate::ops::backup::sources(sh.ends.from_view, false);
        for src in &sources {
            let slots = format_ranges(&src.slots.ranges());
            let first = src.slots.ranges().first().map(|r| r.start).unwrap_or(0);
            let Some((addr, _)) = masters.iter().find(|(_, s)| s.contains(first)) else {
                return Err(format!("no source master serves slot {first} now"));
            };
            goals.insert(
                slots,
                crate::ops::link::source_offset(sh.ends.from, addr).await?,
            );
        }
        rep.offsets = goals.clone();
        if let Ok(mut g) = ctl.goals.lock() {
            *g = Some(goals);
        }
        // Drain, within the pause.
        let deadline = started + opts.pause.mul_f64(0.8);
        loop {
            let reached = ctl.reached.lock().map(|r| r.len()).unwrap_or(0);
            if reached == shards {
                break;
            }
            if sh.ended.load(Ordering::SeqCst) > reached || sh.ctx.cancel.is_cancelled() {
                return Err("a shard stopped during the cutover".into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the target did not catch up within {} of the pause",
                    humantime::format_duration(opts.pause.mul_f64(0.8))
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rep.drained_ms = started.elapsed().as_millis();
        quick_check(sh, &view, &addrs, &mut rep).await
    }
    .await;
    if let Err(e) = result {
        rep.error = Some(format!("cutover: {e}"));
    }
    if rep.error.is_some() || !opts.keep_paused {
        let un = sh
            .ends
            .from
            .run(addrs, |addr, mut conn| async move {
                crate::fanout::query::<()>(&addr, &mut conn, redis::cmd("CLIENT").arg("UNPAUSE"))
                    .await
            })
            .await;
        rep.unpaused = un.failed.is_empty();
        if let Some(e) = un.first_error() {
            rep.error.get_or_insert(format!(
                "unpausing the source: {e} (it resumes by itself after the pause timeout)"
            ));
        }
    }
    Some(rep)
}

/// After the drain: key counts of both sides (equal under `fail` with no filter), and a
/// sample of source keys compared on the target (type, TTL, length).
async fn quick_check(
    sh: &Shared<'_>,
    view: &ClusterView,
    masters: &[Addr],
    rep: &mut CutoverReport,
) -> Result<(), String> {
    rep.source_keys = crate::ops::restore::target_keys(sh.ends.from, view).await;
    rep.target_keys = crate::ops::restore::target_keys(sh.ends.to, sh.ends.to_view).await;
    let whole = sh.opts.filter == KeyFilter::default() && sh.opts.db == 0;
    if whole && sh.opts.on_conflict == OnConflict::Fail && rep.source_keys != rep.target_keys {
        return Err(format!(
            "the source holds {} keys and the target {} after the drain",
            rep.source_keys, rep.target_keys
        ));
    }
    let ends = crate::ops::verify::Ends {
        from: sh.ends.from,
        from_view: view,
        to: sh.ends.to,
        to_view: sh.ends.to_view,
    };
    for addr in masters {
        let mut conn = sh.ends.from.conn(addr).await.map_err(|e| e.to_string())?;
        let mut p = redis::pipe();
        for _ in 0..200 {
            p.cmd("RANDOMKEY");
        }
        let mut keys: Vec<Vec<u8>> = p
            .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
            .await
            .map_err(|e| NodeError::from_redis(addr, &e).to_string())?
            .into_iter()
            .flatten()
            .filter(|k| sh.opts.filter.name_ok(k))
            .collect();
        keys.sort();
        keys.dedup();
        rep.sampled += keys.len() as u64;
        let diffs = crate::ops::verify::sample(&ends, addr, keys)
            .await
            .map_err(|e| e.to_string())?;
        rep.sample_differences += diffs.len() as u64;
    }
    if rep.sample_differences > 0 {
        return Err(format!(
            "{} of {} sampled keys differ on the target",
            rep.sample_differences, rep.sampled
        ));
    }
    Ok(())
}

/// How a stream run ended.
enum Stop {
    /// Caught up (without `follow`) or cancelled.
    Done,
    /// The link broke: reconnect.
    Broken(String),
    /// Nothing more can be done for this shard.
    Fatal(String),
}

/// One source shard, start to end: connect, snapshot if needed, stream; reconnect when the
/// link breaks.
async fn shard(sh: &Shared<'_>, src: &Source) -> ShardReport {
    let started = Instant::now();
    let slots = format_ranges(&src.slots.ranges());
    let mut state = sh
        .checkpoint
        .lock()
        .ok()
        .and_then(|c| c.shards.get(&slots).cloned())
        .unwrap_or(ShardState {
            phase: Phase::Snapshot,
            replid: String::new(),
            offset: 0,
            node: String::new(),
            keys: Counts::default(),
            commands_applied: 0,
        });
    let mut rep = ShardReport {
        slots: slots.clone(),
        keys: state.keys.clone(),
        commands_applied: state.commands_applied,
        ..Default::default()
    };
    // A snapshot redone by this run (resumed, or a resync) writes keys that are its own.
    let mut ours = sh.opts.resume;
    if sh.opts.resume && state.phase == Phase::Stream {
        let sent = std::fs::read_to_string(inflight_path(sh, &slots))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(to) = sent.filter(|&to| to > state.offset) {
            rep.crash_window = Some(CrashWindow {
                from_offset: state.offset,
                to_offset: to,
                ..Default::default()
            });
        }
    }
    let mut link = ShardLink::new(sh.ends.from, sh.ends.from_seeds, src, !sh.opts.from_masters)
        .explain_with(refused);
    let mut router = Router::new(&sh.cmds, sh.opts.db, sh.opts.filter.clone());
    let mut lane = sh.writer.lane();
    loop {
        if sh.ctx.cancel.is_cancelled() {
            break;
        }
        let psync = Psync {
            from: (state.phase == Phase::Stream).then(|| (state.replid.clone(), state.offset)),
            rdb_only: false,
        };
        let (mut stream, start) = match link.open(sh.ctx, &slots, &psync).await {
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
                if state.phase == Phase::Stream {
                    rep.resyncs += 1;
                    sh.ctx.progress.message(&format!(
                        "{slots}: the source no longer holds offset {} of {}: full resync",
                        state.offset, state.replid
                    ));
                    rep.errors.push(format!(
                        "resync: the source's backlog no longer held offset {}; the snapshot \
                         was copied again{}",
                        state.offset,
                        if sh.opts.on_conflict == OnConflict::Fail {
                            ""
                        } else {
                            " (keys deleted on the source meanwhile may remain: the target \
                             held keys of its own, so none is removed)"
                        }
                    ));
                    ours = true;
                }
                state.phase = Phase::Snapshot;
                rep.phase = "snapshot".into();
                // This snapshot's keys are counted afresh (an earlier one was not finished,
                // or is replaced by a resync).
                rep.keys = Counts::default();
                rep.per_type.clear();
                match snapshot(sh, &mut stream, &mut lane, &slots, ours, &mut rep).await {
                    Ok(()) => {}
                    Err(ReplError::Sink(e)) => {
                        rep.error = Some(e);
                        break;
                    }
                    Err(ReplError::Node(e)) => {
                        if sh.ctx.cancel.is_cancelled() {
                            break;
                        }
                        rep.reconnects += 1;
                        if !link.retry() {
                            rep.error = Some(format!("snapshot: {e}"));
                            break;
                        }
                        sh.ctx
                            .progress
                            .message(&format!("{slots}: snapshot: {e}; again"));
                        ours = true;
                        continue;
                    }
                }
                if sh.ctx.cancel.is_cancelled() {
                    break; // the snapshot is redone on resume
                }
                // Only when the target held none of the keys at the start (`fail`): then every
                // key of these slots there is the migration's own.
                if ours && sh.opts.on_conflict == OnConflict::Fail {
                    if let Err(e) = remove_gone(sh, src, stream.addr(), &mut lane, &mut rep).await {
                        rep.error = Some(format!("after the resync: {e}"));
                        break;
                    }
                }
                let unconfirmed = lane.confirm().await;
                if let Some(u) = unconfirmed.first() {
                    rep.error = Some(format!(
                        "{}: {} snapshot key(s) not confirmed by a replica ({}): --resume \
                         copies the shard again",
                        u.addr,
                        u.writes.len(),
                        u.why
                    ));
                    break;
                }
                state.keys = rep.keys.clone();
                state.phase = Phase::Stream;
                state.replid = replid;
                state.offset = offset;
                stream.applied(offset);
                if let Err(e) = sh.save(&slots, &state) {
                    rep.error = Some(format!("checkpoint: {e}"));
                    break;
                }
            }
            Start::Continue { replid, .. } => {
                // A promoted replica continues the same history under a new id.
                state.replid = replid;
            }
        }
        rep.phase = "stream".into();
        rep.replid = state.replid.clone();
        match follow(
            sh,
            &mut stream,
            &mut lane,
            &mut router,
            &slots,
            &mut state,
            &mut rep,
        )
        .await
        {
            Stop::Done => break,
            Stop::Fatal(e) => {
                rep.error = Some(e);
                break;
            }
            Stop::Broken(e) => {
                rep.reconnects += 1;
                sh.ctx.progress.message(&format!(
                    "{slots}: stream from {}: {e}; reconnecting",
                    rep.node
                ));
                link.broke().await;
            }
        }
    }
    // The last stop: what the fence confirms is saved.
    if state.phase == Phase::Stream {
        if lane.confirm().await.is_empty() {
            state.commands_applied = rep.commands_applied;
            let _ = sh.save(&slots, &state);
        }
    } else {
        // An unfinished snapshot keeps its place: redone on resume.
        let mut s = state.clone();
        s.keys = rep.keys.clone();
        let _ = sh.save(&slots, &s);
    }
    rep.offset = state.offset;
    rep.replid = state.replid.clone();
    rep.route = router.stats.clone();
    rep.errors.extend(router.errors.iter().cloned());
    rep.errors.truncate(20);
    rep.elapsed_ms = started.elapsed().as_millis();
    rep
}

/// `--method scan` for one shard: SCAN the chosen node from the checkpoint's cursor,
/// `DUMP` + `PEXPIRETIME` (+ `TYPE` under `--type`) per key in one pipeline per batch,
/// `RESTORE … ABSTTL` through the slot writer; the cursor checkpointed each second once the
/// fence confirmed the writes behind it.
async fn scan_shard(sh: &Shared<'_>, src: &Source) -> ShardReport {
    let started = Instant::now();
    let slots = format_ranges(&src.slots.ranges());
    let mut state = sh
        .checkpoint
        .lock()
        .ok()
        .and_then(|c| c.shards.get(&slots).cloned())
        .unwrap_or(ShardState {
            phase: Phase::Scan,
            replid: String::new(),
            offset: 0,
            node: String::new(),
            keys: Counts::default(),
            commands_applied: 0,
        });
    let mut rep = ShardReport {
        slots: slots.clone(),
        keys: state.keys.clone(),
        phase: "scan".into(),
        ..Default::default()
    };
    if state.phase == Phase::Scanned {
        rep.phase = "scanned".into();
        return rep;
    }
    let Some((addr, role)) = src.candidates.first().cloned() else {
        rep.error = Some(
            src.why_none
                .clone()
                .unwrap_or_else(|| "no usable node".into()),
        );
        return rep;
    };
    rep.node = addr.to_string();
    rep.role = role.to_string();
    // A cursor is only valid on the node that gave it; elsewhere the scan starts over (its
    // keys are the migration's own: written again with replace semantics under fail).
    let restart = state.node != rep.node;
    if restart {
        state.offset = 0;
        state.node = rep.node.clone();
    }
    let replace = sh.opts.on_conflict == OnConflict::Replace
        || (sh.opts.resume && sh.opts.on_conflict == OnConflict::Fail);
    let one_type = (sh.opts.filter.types.len() == 1).then(|| sh.opts.filter.types[0].clone());
    let spec = crate::scan::ScanSpec {
        count: sh.opts.batch.max(1),
        pattern: sh.opts.filter.pattern.clone(),
        kind: one_type,
        rate: 0,
    };
    let r = async {
        let mut scan = crate::scan::ScanStream::open(
            sh.ends.from,
            &addr,
            role == "replica",
            spec,
            state.offset,
        )
        .await
        .map_err(|e| e.to_string())?;
        // Values are read on a bulk connection, where a big payload streams to a file.
        let mut bulk = crate::transport::Transport::open(sh.ends.from.options(), &addr)
            .await
            .map_err(|e| e.to_string())?;
        if role == "replica" {
            let said = bulk
                .raw(&addr, 1, |out| {
                    rcops_formats::resp::encode_command(&[b"READONLY"], out)
                })
                .await
                .map_err(|e| e.to_string())?;
            if let Some(Some(e)) = said.first() {
                return Err(format!("{addr}: READONLY refused: {e}"));
            }
        }
        // Reading (SCAN, DUMP) and writing overlap: the reader runs up to two batches ahead,
        // each batch carrying the cursor after it, saved once its keys are written.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Write>, Counts, u64)>(2);
        let read = async move {
            loop {
                if sh.ctx.cancel.is_cancelled() {
                    return Ok(());
                }
                let Some(keys) = scan.next().await.map_err(|e| e.to_string())? else {
                    return Ok(());
                };
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter(|k| sh.opts.filter.name_ok(k))
                    .collect();
                let mut c = Counts::default();
                let writes = dump_keys(sh, &addr, &mut bulk, keys, replace, &mut c).await?;
                if tx.send((writes, c, scan.cursor())).await.is_err() {
                    return Ok(());
                }
            }
        };
        let write = async {
            let mut lane = sh.writer.lane();
            let mut saved = Instant::now();
            let mut written = 0u64;
            while let Some((writes, c, cursor)) = rx.recv().await {
                rep.keys.skipped_expired += c.skipped_expired;
                rep.keys.skipped_filtered += c.skipped_filtered;
                written += writes.len() as u64;
                count_keys(lane.send(writes).await, &mut rep);
                sh.ctx.progress.shard(&slots, "scan", written, None);
                if saved.elapsed() >= SAVE_EVERY || cursor == 0 {
                    saved = Instant::now();
                    if let Some(u) = lane.confirm().await.first() {
                        return Err(format!(
                            "{}: {} key(s) not confirmed by a replica ({}): --resume copies \
                             from the last checkpoint again",
                            u.addr,
                            u.writes.len(),
                            u.why
                        ));
                    }
                    state.offset = cursor;
                    state.keys = rep.keys.clone();
                    if cursor == 0 {
                        state.phase = Phase::Scanned;
                    }
                    sh.save(&slots, &state)
                        .map_err(|e| format!("checkpoint: {e}"))?;
                }
            }
            Ok::<(), String>(())
        };
        let (read, write) = futures::join!(read, write);
        write.and(read)
    }
    .await;
    if let Err(e) = r {
        rep.error = Some(e);
    }
    rep.phase = if state.phase == Phase::Scanned {
        "scanned"
    } else {
        "scan"
    }
    .into();
    rep.offset = state.offset;
    rep.elapsed_ms = started.elapsed().as_millis();
    rep
}

/// One batch of keys read for writing: `DUMP` + `PEXPIRETIME` (+ `TYPE` under `--type`) in
/// one pipeline on a bulk connection. A payload above [`SPILL_ABOVE`] streams into a
/// temporary file as it arrives; one above `--big-key-bytes`, or from a newer server than the
/// target, goes the way restore writes a value from a file ([`prepare_op`]: rebuilt piece by
/// piece, or re-encoded).
///
/// [`SPILL_ABOVE`]: crate::ops::restore::SPILL_ABOVE
/// [`prepare_op`]: crate::ops::restore::prepare_op
async fn dump_keys(
    sh: &Shared<'_>,
    addr: &Addr,
    conn: &mut crate::transport::Transport,
    keys: Vec<Vec<u8>>,
    replace: bool,
    counts: &mut Counts,
) -> Result<Vec<Write>, String> {
    use crate::transport::Frame;
    use rcops_formats::resp::{encode_command, scalar, Scalar};
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let typed = !sh.opts.filter.types.is_empty();
    let per = if typed { 3 } else { 2 };
    let got = conn
        .frames_spilling(
            addr,
            keys.len() * per,
            sh.opts.idle_timeout,
            crate::ops::restore::SPILL_ABOVE as u64,
            &tempfile::tempfile,
            |out| {
                for k in &keys {
                    encode_command(&[b"DUMP", k], out);
                    encode_command(&[b"PEXPIRETIME", k], out);
                    if typed {
                        encode_command(&[b"TYPE", k], out);
                    }
                }
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let answer = |f: &Frame, cmd: &str| match f {
        Frame::Whole(f) => match scalar(f) {
            Some(Scalar::Error(e)) => Err(format!(
                "{addr}: {cmd} refused: {}",
                String::from_utf8_lossy(e)
            )),
            _ => Ok(()),
        },
        Frame::Spilled(_) => Ok(()),
    };
    let mut out = Vec::with_capacity(keys.len());
    let mut got = got.into_iter();
    for k in keys {
        let (dump, expire) = (got.next(), got.next());
        let kind = if typed { got.next() } else { None };
        let (Some(dump), Some(expire)) = (dump, expire) else {
            return Err(format!("{addr}: fewer replies than commands"));
        };
        answer(&dump, "DUMP")?;
        answer(&expire, "PEXPIRETIME")?;
        let expire = match &expire {
            Frame::Whole(f) => match scalar(f) {
                Some(Scalar::Int(i)) => i,
                _ => -1,
            },
            Frame::Spilled(_) => -1,
        };
        if let Some(Frame::Whole(f)) = &kind {
            let ok = match scalar(f) {
                Some(Scalar::Simple(t)) => sh.opts.filter.types.iter().any(|x| x.as_bytes() == t),
                _ => false,
            };
            if !ok {
                counts.skipped_filtered += 1;
                continue;
            }
        }
        let (type_byte, op) = match dump {
            Frame::Whole(f) => match scalar(&f) {
                Some(Scalar::Bulk(Some(p))) if p.len() > 10 => {
                    let version = rcops_rdb::dump_payload_version(p).unwrap_or(u16::MAX);
                    let op = if p.len() as u64 <= sh.opts.big_key_bytes
                        && version <= sh.target_version
                    {
                        Op::Restore {
                            payload: crate::writer::Payload::Mem(p.to_vec()),
                            abs_ttl: expire.max(0),
                            replace,
                        }
                    } else {
                        let raw = p[..p.len() - 10].to_vec();
                        prepare(
                            sh,
                            dump_entry(&k, p[0], raw, None, expire),
                            version,
                            replace,
                        )?
                    };
                    (p[0], op)
                }
                Some(Scalar::Bulk(Some(_))) => {
                    return Err(format!("{addr}: DUMP gave a payload too short to be one"))
                }
                _ => {
                    counts.skipped_expired += 1; // gone since the SCAN
                    continue;
                }
            },
            Frame::Spilled(s) => {
                let (type_byte, version) = spilled_dump_head(&s)
                    .map_err(|e| format!("reading a spilled DUMP payload: {e}"))?;
                let spilled = rcops_rdb::Spilled {
                    file: s.file,
                    len: s.len - 10,
                };
                let e = dump_entry(&k, type_byte, Vec::new(), Some(spilled), expire);
                (type_byte, prepare(sh, e, version, replace)?)
            }
        };
        let kind = type_name(type_byte);
        out.push(Write {
            slot: key_slot(&k),
            kind,
            key: k,
            index: 0,
            op,
        });
    }
    Ok(out)
}

/// A key read by `DUMP`, as the RDB parser would have given it (`raw`: the payload without
/// its version and checksum), for [`crate::ops::restore::prepare_op`].
fn dump_entry(
    key: &[u8],
    type_byte: u8,
    raw: Vec<u8>,
    spilled: Option<rcops_rdb::Spilled>,
    expire: i64,
) -> rcops_rdb::Entry {
    let raw_len = spilled.as_ref().map_or(raw.len() as u64, |s| s.len);
    rcops_rdb::Entry {
        db: 0,
        key: key.to_vec(),
        expire_ms: (expire > 0).then_some(expire),
        idle: None,
        freq: None,
        type_byte,
        value: rcops_rdb::Value::NotDecoded,
        raw,
        spilled,
        raw_len,
        offset: 0,
        value_offset: 1,
    }
}

/// [`crate::ops::restore::prepare_op`] for a key read by `DUMP`.
fn prepare(
    sh: &Shared<'_>,
    mut e: rcops_rdb::Entry,
    version: u16,
    replace: bool,
) -> Result<Op, String> {
    crate::ops::restore::prepare_op(
        &mut e,
        version,
        sh.target_version,
        sh.opts.big_key_bytes,
        replace,
    )
    .map_err(|why| format!("key {}: {why}", rcops_formats::show_key(&e.key)))
}

/// A spilled `DUMP` payload's type byte and RDB version (from its trailer).
fn spilled_dump_head(s: &rcops_rdb::Spilled) -> std::io::Result<(u8, u16)> {
    use std::os::unix::fs::FileExt;
    let (mut t, mut v) = ([0u8; 1], [0u8; 2]);
    s.file.read_exact_at(&mut t, 0)?;
    s.file.read_exact_at(&mut v, s.len.saturating_sub(10))?;
    Ok((t[0], u16::from_le_bytes(v)))
}

/// A source that will not replicate to rcops: the message says what to do.
fn refused(e: &NodeError) -> String {
    match e {
        NodeError::NoPerm { .. } | NodeError::Command { .. } => {
            format!("{e}: the source refuses replication (PSYNC); copy with --method scan instead")
        }
        _ => e.to_string(),
    }
}

/// After a resync: removes the target's keys in this shard's slots (that the filter
/// selects) which the source node no longer has — deleted on the source while no stream
/// carried the deletion. A key created on the source since is kept (the stream brings it).
async fn remove_gone(
    sh: &Shared<'_>,
    src: &Source,
    from: &Addr,
    lane: &mut Lane<'_, '_>,
    rep: &mut ShardReport,
) -> Result<(), String> {
    let mut source = sh.ends.from.conn(from).await.map_err(|e| e.to_string())?;
    // The source may be a replica: reads need READONLY (a master ignores it).
    let _ = crate::fanout::query::<()>(from, &mut source, &redis::cmd("READONLY")).await;
    let masters: Vec<Addr> = sh
        .ends
        .to_view
        .masters()
        .filter(|m| !m.slots.is_empty())
        .filter_map(line_addr)
        .collect();
    for m in masters {
        let spec = crate::scan::ScanSpec {
            count: 1000,
            ..Default::default()
        };
        let mut scan = crate::scan::ScanStream::open(sh.ends.to, &m, false, spec, 0)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(keys) = scan.next().await.map_err(|e| e.to_string())? {
            let mine: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| src.slots.contains(key_slot(k)) && sh.opts.filter.name_ok(k))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut p = redis::pipe();
            for k in &mine {
                p.cmd("EXISTS").arg(k);
            }
            let present: Vec<u64> = p
                .query_async(&mut source)
                .await
                .map_err(|e| NodeError::from_redis(from, &e).to_string())?;
            let gone: Vec<Write> = mine
                .into_iter()
                .zip(present)
                .filter(|(_, n)| *n == 0)
                .map(|(k, _)| Write {
                    slot: key_slot(&k),
                    kind: "del",
                    index: 0,
                    op: Op::Commands {
                        cmds: vec![vec![b"DEL".to_vec(), k.clone()]],
                        multi: false,
                    },
                    key: k,
                })
                .collect();
            for d in lane.send(gone).await {
                match d.outcome {
                    WriteOutcome::Failed(why) => {
                        return Err(format!("{}: {why}", rcops_formats::show_key(&d.key)))
                    }
                    _ => rep.removed_after_resync += 1,
                }
            }
        }
    }
    Ok(())
}

/// One batch of snapshot keys from the parser, the entries it filtered or found expired,
/// and the functions' code it met.
type Batch = (Vec<Write>, Counts, Vec<Vec<u8>>);

/// Reads the snapshot off the stream, parses it on a blocking thread and writes its keys.
async fn snapshot(
    sh: &Shared<'_>,
    stream: &mut ReplStream,
    lane: &mut Lane<'_, '_>,
    slots: &str,
    ours: bool,
    rep: &mut ShardReport,
) -> Result<(), ReplError> {
    let (raw_tx, raw_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let replace = sh.opts.on_conflict == OnConflict::Replace
        || (ours && sh.opts.on_conflict == OnConflict::Fail);
    let parser = {
        let (opts, version) = (sh.opts.clone(), sh.target_version);
        tokio::task::spawn_blocking(move || {
            produce(
                ChunkReader::new(raw_rx, std::io::sink()),
                &opts,
                version,
                replace,
                tx,
            )
        })
    };
    let idle = sh.opts.idle_timeout;
    let cancel = sh.ctx.cancel.clone();
    let addr = stream.addr().clone();
    let reading = async move {
        let r = tokio::select! {
            r = stream.rdb(idle, async |chunk| {
                raw_tx.send(chunk).await.map_err(|_| "the snapshot parser stopped".to_string())
            }) => r,
            () = cancel.cancelled() => Ok(0),
        };
        drop(raw_tx);
        r
    };
    let mut written = 0u64;
    let writing = async {
        while let Some((batch, c, functions)) = rx.recv().await {
            rep.keys.skipped_expired += c.skipped_expired;
            rep.keys.skipped_filtered += c.skipped_filtered;
            if sh.ctx.cancel.is_cancelled() {
                break;
            }
            for code in functions {
                broadcast(sh, &[b"FUNCTION".to_vec(), b"LOAD".to_vec(), code], rep).await;
                rep.broadcasts += 1;
            }
            let done = lane.send(batch).await;
            written += done.len() as u64;
            count_keys(done, rep);
            sh.ctx.progress.shard(slots, "snapshot", written, None);
        }
        drop(rx);
    };
    let (read, ()) = futures::join!(reading, writing);
    let parsed = parser
        .await
        .map_err(|e| ReplError::Sink(format!("snapshot parser: {e}")))?;
    let bytes = read?;
    rep.snapshot_bytes += bytes;
    if sh.ctx.cancel.is_cancelled() {
        return Ok(());
    }
    parsed.map_err(|e| ReplError::Sink(format!("{addr}: snapshot: {e}")))
}

fn count_keys(done: Vec<Done>, rep: &mut ShardReport) {
    for d in done {
        let c = rep.per_type.entry(d.kind).or_default();
        match d.outcome {
            WriteOutcome::Written { .. } => {
                rep.keys.restored += 1;
                c.restored += 1;
            }
            WriteOutcome::Exists => {
                rep.keys.skipped_existing += 1;
                c.skipped_existing += 1;
            }
            WriteOutcome::Failed(why) => {
                rep.keys.failed += 1;
                c.failed += 1;
                if rep.errors.len() < 20 {
                    rep.errors
                        .push(format!("{}: {why}", rcops_formats::show_key(&d.key)));
                }
            }
        }
    }
}

/// The parser side of a snapshot: entries of the chosen database that pass the filter and
/// have not expired, as `RESTORE` writes in batches (capped in keys and bytes).
fn produce(
    r: ChunkReader<std::io::Sink>,
    opts: &MigrateOptions,
    target_version: u16,
    replace: bool,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Result<(), String> {
    let p = Parser::new(r).map_err(|e| e.to_string())?;
    let version = p.version();
    // Values are decoded only when one needs re-encoding for the target.
    let mut p = p.decode_values(false).spill_raw_above(
        crate::ops::restore::SPILL_ABOVE,
        crate::ops::restore::spill_file(),
    );
    let now = crate::ops::rdb::now_ms();
    let batch = opts.batch.max(1);
    let (mut out, mut bytes, mut c) = (Vec::new(), 0usize, Counts::default());
    let mut functions = Vec::new();
    for item in &mut p {
        let mut e = match item.map_err(|e| e.to_string())? {
            Item::Entry(e) => e,
            Item::Function { code } => {
                functions.push(code);
                continue;
            }
            _ => continue,
        };
        if e.db != opts.db || !opts.filter.ok(&e.key, type_name(e.type_byte)) {
            c.skipped_filtered += 1;
        } else if e.expire_ms.is_some_and(|x| x <= now) {
            c.skipped_expired += 1;
        } else {
            let op = crate::ops::restore::prepare_op(
                &mut e,
                version,
                target_version,
                opts.big_key_bytes,
                replace,
            )
            .map_err(|why| format!("key {}: {why}", rcops_formats::show_key(&e.key)))?;
            bytes += crate::ops::restore::batch_cost(&op);
            out.push(Write {
                slot: key_slot(&e.key),
                kind: type_name(e.type_byte),
                key: e.key,
                index: 0,
                op,
            });
        }
        if out.len() >= batch || bytes >= crate::ops::restore::BATCH_BYTES {
            bytes = 0;
            let batch = (
                std::mem::take(&mut out),
                std::mem::take(&mut c),
                std::mem::take(&mut functions),
            );
            if tx.blocking_send(batch).is_err() {
                return Ok(());
            }
        }
    }
    let _ = tx.blocking_send((out, c, functions));
    Ok(())
}

/// The file where a shard notes the last stream offset it is about to send (no fsync: it
/// survives a crash of rcops, not of the machine), so a resume after `kill -9` knows the
/// window of commands that may have run twice.
fn inflight_path(sh: &Shared<'_>, slots: &str) -> PathBuf {
    sh.opts
        .checkpoint
        .with_file_name(format!("inflight-{}", slots.replace(',', "_")))
}

/// How often the checkpoint is saved while streaming.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Applies the stream until caught up (without `follow`), cancelled, or broken.
async fn follow(
    sh: &Shared<'_>,
    stream: &mut ReplStream,
    lane: &mut Lane<'_, '_>,
    router: &mut Router<'_>,
    slots: &str,
    state: &mut ShardState,
    rep: &mut ShardReport,
) -> Stop {
    // Without follow: what the source had when the stream phase began.
    let goal = if sh.opts.follow || sh.cutover.is_some() {
        None
    } else {
        match crate::ops::link::source_offset(sh.ends.from, stream.addr()).await {
            Ok(o) => Some(o),
            Err(e) => return Stop::Broken(e),
        }
    };
    let mut saved = Instant::now();
    let mut applied = state.offset;
    let mut tx_begin = None;
    let inflight = inflight_path(sh, slots);
    // Offsets applied but not yet confirmed by the fence.
    let save = |state: &mut ShardState, applied: u64, rep: &ShardReport| {
        state.offset = applied;
        state.commands_applied = rep.commands_applied;
        sh.save(slots, state)
    };
    // Lag is reported more often while a cutover waits for it.
    let lag_every = if sh.cutover.is_some() {
        Duration::from_millis(200)
    } else {
        SAVE_EVERY
    };
    let mut measured = Instant::now();
    let mut heard = Instant::now();
    loop {
        if goal.is_some_and(|g| applied >= g) || sh.ctx.cancel.is_cancelled() {
            return checkpoint(lane, state, applied, rep, &save).await;
        }
        if let Some(c) = &sh.cutover {
            let target = c
                .goals
                .lock()
                .ok()
                .and_then(|g| g.as_ref()?.get(slots).copied());
            if target.is_some_and(|t| applied >= t) {
                let r = checkpoint(lane, state, applied, rep, &save).await;
                if let Ok(mut done) = c.reached.lock() {
                    done.insert(slots.to_string());
                }
                return r;
            }
        }
        let t0 = Instant::now();
        let cmds = tokio::select! {
            r = stream.commands(Duration::from_millis(100), sh.opts.batch.max(1)) => r,
            () = sh.ctx.cancel.cancelled() => Ok(Vec::new()),
        };
        let t1 = Instant::now();
        let ncmds = cmds.as_ref().map(|c| c.len()).unwrap_or(0);
        // A master PINGs its replicas every 10 s (repl-ping-replica-period): a link silent
        // for longer than the idle timeout (30 s at least) is dead even if TCP never said so.
        let silence = crate::ops::link::silence_limit(sh.opts.idle_timeout);
        if ncmds > 0 {
            heard = t1;
        } else if t1 - heard > silence && !sh.ctx.cancel.is_cancelled() {
            let _ = checkpoint(lane, state, applied, rep, &save).await;
            return Stop::Broken(format!(
                "no data for {}",
                humantime::format_duration(silence)
            ));
        }
        let cmds = match cmds {
            Ok(c) => c,
            Err(e) => {
                // What was applied before the break is kept; what the fence could not
                // confirm is read again after the reconnect, and said to be.
                let _ = checkpoint(lane, state, applied, rep, &save).await;
                if applied > state.offset {
                    let w = rep.crash_window.get_or_insert(CrashWindow {
                        from_offset: state.offset,
                        ..Default::default()
                    });
                    w.from_offset = w.from_offset.min(state.offset);
                    w.to_offset = w.to_offset.max(applied);
                }
                return Stop::Broken(e.to_string());
            }
        };
        match apply(
            sh,
            lane,
            router,
            cmds,
            &mut applied,
            &mut tx_begin,
            &inflight,
            rep,
        )
        .await
        {
            Ok(()) => {}
            Err(why) => {
                stream.applied(applied);
                let _ = checkpoint(lane, state, applied, rep, &save).await;
                return Stop::Fatal(why);
            }
        }
        tracing::trace!(
            shard = slots,
            commands = ncmds,
            read_us = (t1 - t0).as_micros() as u64,
            apply_us = t1.elapsed().as_micros() as u64,
            "stream batch"
        );
        stream.applied(applied);
        if saved.elapsed() >= SAVE_EVERY {
            saved = Instant::now();
            if let Stop::Fatal(e) = checkpoint(lane, state, applied, rep, &save).await {
                return Stop::Fatal(e);
            }
        }
        if measured.elapsed() >= lag_every {
            measured = Instant::now();
            let lag = crate::ops::link::source_offset(sh.ends.from, stream.addr())
                .await
                .ok();
            rep.lag_bytes = lag.map(|o| o.saturating_sub(applied));
            if let (Some(c), Some(l)) = (&sh.cutover, rep.lag_bytes) {
                if let Ok(mut m) = c.lags.lock() {
                    m.insert(slots.to_string(), l);
                }
            }
            sh.ctx
                .progress
                .shard(slots, "stream", applied, lag.map(|l| l.max(applied)));
        }
    }
}

/// Saves the applied offset once the fence confirmed the writes behind it; when it cannot,
/// the checkpoint keeps the older offset (a resume applies those commands again).
async fn checkpoint(
    lane: &mut Lane<'_, '_>,
    state: &mut ShardState,
    applied: u64,
    rep: &mut ShardReport,
    save: &impl Fn(&mut ShardState, u64, &ShardReport) -> Result<(), String>,
) -> Stop {
    if let Some(u) = lane.confirm().await.first() {
        rep.errors.push(format!(
            "{}: {} write(s) not confirmed by a replica ({}): the checkpoint stays at offset {}",
            u.addr,
            u.writes.len(),
            u.why,
            state.offset
        ));
        return Stop::Done;
    }
    match save(state, applied, rep) {
        Ok(()) => Stop::Done,
        Err(e) => Stop::Fatal(format!("checkpoint: {e}")),
    }
}

/// Routes and writes one read of commands, in order; `applied` advances to the end of the
/// last command done. A flush under `stop` ends the shard before it.
#[allow(clippy::too_many_arguments)]
async fn apply(
    sh: &Shared<'_>,
    lane: &mut Lane<'_, '_>,
    router: &mut Router<'_>,
    cmds: Vec<StreamCommand>,
    applied: &mut u64,
    tx_begin: &mut Option<u64>,
    inflight: &std::path::Path,
    rep: &mut ShardReport,
) -> Result<(), String> {
    let mut writes = Vec::new();
    let mut end = *applied;
    if let Some(last) = cmds.last() {
        let _ = std::fs::write(inflight, last.end.to_string());
    }
    for c in cmds {
        let before = end;
        if let Some(w) = rep.crash_window.as_mut().filter(|w| c.end <= w.to_offset) {
            w.commands += 1;
            let name = String::from_utf8_lossy(&c.args[0]).to_ascii_uppercase();
            if non_idempotent(&name) {
                *w.non_idempotent.entry(name).or_default() += 1;
                if let Some(k) = c.args.get(1).filter(|_| w.keys.len() < 20) {
                    let k = rcops_formats::show_key(k);
                    if !w.keys.contains(&k) {
                        w.keys.push(k);
                    }
                }
            }
        }
        let was_open = router.in_transaction();
        let routed = router.push(sh.ends.to, c.args, c.end, &mut writes).await;
        // A checkpoint never lands inside an open transaction: a resume reads it again
        // from its MULTI.
        match (was_open, router.in_transaction()) {
            (false, true) => *tx_begin = Some(before),
            (_, false) => *tx_begin = None,
            _ => {}
        }
        match routed {
            Routed::Queued => {}
            Routed::Broadcast(args) => {
                write(lane, std::mem::take(&mut writes), rep).await;
                broadcast(sh, &args, rep).await;
                rep.broadcasts += 1;
            }
            Routed::Flush(args) => match sh.opts.on_flush {
                OnFlush::Stop => {
                    write(lane, std::mem::take(&mut writes), rep).await;
                    *applied = before;
                    return Err(format!(
                        "the source ran {} at offset {before}: the stream stopped before it \
                         (--on-flush apply to flush the target too, ignore to skip it; \
                         then --resume)",
                        String::from_utf8_lossy(&args[0]).to_uppercase()
                    ));
                }
                OnFlush::Apply => {
                    write(lane, std::mem::take(&mut writes), rep).await;
                    broadcast(sh, &args, rep).await;
                    rep.flushes += 1;
                }
                OnFlush::Ignore => rep.flushes += 1,
            },
        }
        end = c.end;
    }
    write(lane, writes, rep).await;
    *applied = tx_begin.unwrap_or(end);
    Ok(())
}

async fn write(lane: &mut Lane<'_, '_>, writes: Vec<Write>, rep: &mut ShardReport) {
    if writes.is_empty() {
        return;
    }
    for d in lane.send(writes).await {
        match d.outcome {
            WriteOutcome::Written { twice } => {
                rep.commands_applied += 1;
                rep.commands_maybe_twice += u64::from(twice);
            }
            WriteOutcome::Exists => rep.commands_applied += 1,
            // Re-applied after a crash and refused because it ran already.
            WriteOutcome::Failed(why)
                if why.contains("equal or smaller than the target stream top item")
                    && rep
                        .crash_window
                        .as_ref()
                        .is_some_and(|w| d.index <= w.to_offset) =>
            {
                if let Some(w) = rep.crash_window.as_mut() {
                    w.refused_as_done += 1;
                }
            }
            WriteOutcome::Failed(why) => {
                rep.commands_failed += 1;
                if rep.errors.len() < 20 {
                    rep.errors
                        .push(format!("command at offset {}: {why}", d.index));
                }
            }
        }
    }
}

/// Runs a keyless command (a function, a flush) on every target master.
async fn broadcast(sh: &Shared<'_>, args: &[Vec<u8>], rep: &mut ShardReport) {
    let masters: Vec<Addr> = sh
        .ends
        .to_view
        .masters()
        .filter(|m| !m.slots.is_empty())
        .filter_map(line_addr)
        .collect();
    let mut args = args.to_vec();
    // Loaded again on a resume or a resync: replace, never fail on an existing library.
    if args.len() >= 3
        && args[0].eq_ignore_ascii_case(b"FUNCTION")
        && args[1].eq_ignore_ascii_case(b"LOAD")
        && !args[2].eq_ignore_ascii_case(b"REPLACE")
    {
        args.insert(2, b"REPLACE".to_vec());
    }
    let fan = sh
        .ends
        .to
        .run(masters, |addr, mut conn| {
            let args = args.clone();
            async move {
                let mut cmd = redis::Cmd::new();
                for a in &args {
                    cmd.arg(a);
                }
                crate::fanout::query::<redis::Value>(&addr, &mut conn, &cmd).await
            }
        })
        .await;
    for (addr, e) in fan.failed {
        rep.commands_failed += 1;
        if rep.errors.len() < 20 {
            rep.errors.push(format!(
                "{addr}: {}: {e}",
                String::from_utf8_lossy(&args[0]).to_uppercase()
            ));
        }
    }
}
