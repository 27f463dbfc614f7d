//! Replaying an append-only file into a cluster: a single AOF (with or without an RDB
//! preamble) or a Redis 7 multi-part directory. Each command goes to the master owning its
//! keys' slot — key positions from the target's own `COMMAND` table (`COMMAND GETKEYS` for
//! commands with movable keys), not a hand-kept list. `MULTI`/`EXEC` blocks stay together
//! when all their keys share a slot; others are sent command by command and reported.
//! `--until` stops at the first `#TS:` annotation past the given time.

use crate::job::JobCtx;
use rcops_formats::slot::key_slot;
use rcops_rdb::aof::{parse_manifest, AofItem, AofReader};
use rcops_rdb::{Item, Parser};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fanout::Executor;
use crate::ops::restore::prepare_op;
use crate::route::{Routed, Router};
use crate::topology::ClusterView;
use crate::writer::{Lane, Op, Outcome, SlotWriter, Write};

#[derive(Debug, Clone, Default, Serialize)]
pub struct AofReport {
    pub files: Vec<String>,
    /// Keys from an RDB base or preamble, restored first.
    pub preamble_keys: u64,
    /// Base keys the target already held and kept (`--on-conflict skip`).
    pub preamble_kept: u64,
    pub commands: u64,
    pub sent: u64,
    pub failed: u64,
    pub transactions: u64,
    /// Transactions whose keys span slots: sent command by command.
    pub transactions_split: u64,
    /// Commands without keys that are not replayed (FLUSHALL, FUNCTION …), by name.
    pub keyless_skipped: BTreeMap<String, u64>,
    /// Commands for databases other than 0 (a cluster has only db 0).
    pub other_db_skipped: u64,
    /// Set when `--until` stopped the replay: the first timestamp past it.
    pub stopped_at_ts: Option<u64>,
    /// Stopped by cancellation (Ctrl-C) before the end: the target holds a prefix.
    pub interrupted: bool,
    pub errors: Vec<String>,
    pub elapsed_ms: u128,
}

/// The files to replay, in order: a manifest directory's base then increments, or one file.
pub fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let manifest = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".manifest"))
            .ok_or_else(|| format!("{}: no *.manifest in the directory", path.display()))?;
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        let parts = parse_manifest(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
        return Ok(parts.into_iter().map(|p| path.join(p.file)).collect());
    }
    Ok(vec![path.to_path_buf()])
}

pub struct AofOptions {
    pub until_unix: Option<u64>,
    pub batch: usize,
    /// What a base key the target already holds gets: replaced, kept, or (`fail`, for an
    /// empty target) reported as failed.
    pub base_conflict: crate::ops::restore::OnConflict,
    /// Base values serialized larger than this are rebuilt piece by piece.
    pub big_key_bytes: u64,
}

/// Replays `path` into the target.
/// Replays the files into the target, progress (commands read) per file to `ctx.progress`;
/// stops between batches when `ctx.cancel` fires.
pub async fn replay(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    path: &Path,
    opts: &AofOptions,
    target_version: u16,
) -> Result<AofReport, String> {
    let started = Instant::now();
    let cmds = crate::route::Commands::load(exec, view)
        .await
        .map_err(|e| e.to_string())?;
    let mut report = AofReport::default();
    let skip_busy = opts.base_conflict == crate::ops::restore::OnConflict::Skip;
    let writer = SlotWriter::new(exec, view, None, skip_busy);
    let mut replayer = Replayer::new(
        Router::new(&cmds, 0, Default::default()),
        writer.lane(),
        opts.batch,
    );
    'files: for file in files(path)? {
        let label = file.display().to_string();
        report.files.push(label.clone());
        let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut br = BufReader::with_capacity(256 * 1024, f);
        let head = {
            use std::io::BufRead;
            let start = br.fill_buf().map_err(|e| e.to_string())?;
            // Valkey 9 writes its preamble with its own magic.
            start.starts_with(b"REDIS") || start.starts_with(b"VALKEY")
        };
        let (rest, offset): (Box<dyn std::io::BufRead>, u64) = if head {
            // RDB preamble (or an RDB base file): restore its keys first.
            let p = Parser::new(br).map_err(|e| format!("{}: {e}", file.display()))?;
            let version = p.version();
            // As restore reads a backup: values decoded only to re-encode, big ones spilled.
            let mut p = p.decode_values(false).spill_raw_above(
                crate::ops::restore::SPILL_ABOVE,
                crate::ops::restore::spill_file(),
            );
            let (mut batch, mut bytes) = (Vec::new(), 0usize);
            for item in &mut p {
                match item.map_err(|e| format!("{}: {e}", file.display()))? {
                    Item::Entry(mut e) if e.db == 0 => {
                        if e.expire_ms.is_some_and(|x| x <= crate::ops::rdb::now_ms()) {
                            continue;
                        }
                        // The same payload rules as a backup restore: restamped, re-encoded
                        // (a 7.2 stream for 7.0) or refused for the key (a Valkey hash with
                        // field expirations for Redis); a big value rebuilt piece by piece.
                        let replace =
                            opts.base_conflict == crate::ops::restore::OnConflict::Replace;
                        let op = match prepare_op(
                            &mut e,
                            version,
                            target_version,
                            opts.big_key_bytes,
                            replace,
                        ) {
                            Ok(op) => op,
                            Err(why) => {
                                report.failed += 1;
                                let key = String::from_utf8_lossy(&e.key).into_owned();
                                note(&mut report, format!("{key:?}: {why}"));
                                continue;
                            }
                        };
                        report.preamble_keys += 1;
                        bytes += crate::ops::restore::batch_cost(&op);
                        batch.push(Write {
                            slot: key_slot(&e.key),
                            kind: "base",
                            index: 0,
                            op,
                            key: e.key,
                        });
                        if batch.len() >= opts.batch || bytes >= crate::ops::restore::BATCH_BYTES {
                            bytes = 0;
                            send(
                                replayer.lane(),
                                std::mem::take(&mut batch),
                                skip_busy,
                                &mut report,
                            )
                            .await;
                            ctx.progress
                                .shard(&label, "base", report.preamble_keys, None);
                            if ctx.cancel.is_cancelled() {
                                report.interrupted = true;
                                break 'files;
                            }
                        }
                    }
                    Item::Entry(_) => report.other_db_skipped += 1,
                    _ => {}
                }
            }
            send(replayer.lane(), batch, skip_busy, &mut report).await;
            let offset = p.offset();
            let (left, inner) = p.into_rest();
            (
                Box::new(BufReader::new(std::io::Cursor::new(left).chain(inner))),
                offset,
            )
        } else {
            (Box::new(br), 0)
        };
        let mut r = AofReader::new(rest, offset);
        loop {
            let item = r
                .next_item()
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let Some(item) = item else { break };
            let args = match item {
                AofItem::Timestamp(ts) => {
                    if opts.until_unix.is_some_and(|u| ts > u) {
                        report.stopped_at_ts = Some(ts);
                        break 'files;
                    }
                    continue;
                }
                AofItem::Command(a) if !a.is_empty() => a,
                AofItem::Command(_) => continue,
            };
            if replayer.push(exec, args, &mut report).await {
                ctx.progress.shard(&label, "replay", report.commands, None);
                if ctx.cancel.is_cancelled() {
                    report.interrupted = true;
                    break 'files;
                }
            }
        }
    }
    replayer.finish(&mut report).await;
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Commands of a file or an archived stream, routed by slot ([`Router`]) and written in
/// batches through one lane of the slot writer, counted in an [`AofReport`]. AOF replay and
/// point-in-time restore share it.
pub struct Replayer<'c, 'w, 'a> {
    router: Router<'c>,
    lane: Lane<'w, 'a>,
    units: Vec<Write>,
    batch: usize,
}

impl<'c, 'w, 'a> Replayer<'c, 'w, 'a> {
    pub fn new(router: Router<'c>, lane: Lane<'w, 'a>, batch: usize) -> Self {
        Replayer {
            router,
            lane,
            units: Vec::new(),
            batch: batch.max(1),
        }
    }

    /// Whether a `MULTI` is open (its commands are held until `EXEC`, so not sent yet).
    pub fn in_transaction(&self) -> bool {
        self.router.in_transaction()
    }

    /// The lane, for writes of other kinds (an AOF's base keys).
    pub fn lane(&mut self) -> &mut Lane<'w, 'a> {
        &mut self.lane
    }

    /// Routes one command; sends a batch when one is full (then returns `true`: a point to
    /// report progress and look at the cancellation).
    pub async fn push(
        &mut self,
        exec: &Executor,
        args: Vec<Vec<u8>>,
        report: &mut AofReport,
    ) -> bool {
        report.commands += 1;
        match self.router.push(exec, args, 0, &mut self.units).await {
            Routed::Queued => {}
            // Not replayed from a file: reported by name.
            Routed::Broadcast(a) | Routed::Flush(a) => {
                let name = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
                *report.keyless_skipped.entry(name).or_default() += 1;
            }
        }
        if self.units.len() < self.batch {
            return false;
        }
        send(
            &mut self.lane,
            std::mem::take(&mut self.units),
            false,
            report,
        )
        .await;
        true
    }

    /// Sends what is left, adds the router's counts, and reports what no replica of its
    /// master confirmed (the replication fence).
    pub async fn finish(mut self, report: &mut AofReport) {
        send(
            &mut self.lane,
            std::mem::take(&mut self.units),
            false,
            report,
        )
        .await;
        let st = &self.router.stats;
        report.transactions += st.transactions;
        report.transactions_split += st.transactions_split;
        report.other_db_skipped += st.other_db_skipped;
        report.failed += st.unroutable;
        for (name, n) in &st.keyless_skipped {
            *report.keyless_skipped.entry(name.clone()).or_default() += n;
        }
        for e in std::mem::take(&mut self.router.errors) {
            note(report, e);
        }
        for u in self.lane.confirm().await {
            let n = u.writes.len() as u64;
            report.sent = report.sent.saturating_sub(n);
            report.failed += n;
            note(
                report,
                format!(
                    "{}: {n} write(s) not confirmed by a replica ({})",
                    u.addr, u.why
                ),
            );
        }
    }
}

fn note(report: &mut AofReport, e: String) {
    if report.errors.len() < 20 {
        report.errors.push(e);
    }
}

/// Sends writes through the slot writer and counts them: by commands (a transaction
/// counts each of its own), a base key kept as it was under `skip` apart.
async fn send(
    lane: &mut Lane<'_, '_>,
    mut writes: Vec<Write>,
    skip_busy: bool,
    report: &mut AofReport,
) {
    let sizes: Vec<u64> = writes
        .iter()
        .map(|w| match &w.op {
            Op::Commands { cmds, .. } => cmds.len() as u64,
            Op::Restore { .. } | Op::Rebuild { .. } => 1,
        })
        .collect();
    for (i, w) in writes.iter_mut().enumerate() {
        w.index = i as u64;
    }
    for d in lane.send(writes).await {
        let n = sizes[d.index as usize];
        match d.outcome {
            Outcome::Written { .. } => report.sent += n,
            Outcome::Exists if skip_busy => report.preamble_kept += 1,
            Outcome::Exists => {
                report.failed += n;
                let key = String::from_utf8_lossy(&d.key).into_owned();
                note(
                    report,
                    format!("{key:?}: BUSYKEY Target key name already exists"),
                );
            }
            Outcome::Failed(why) => {
                report.failed += n;
                note(report, why);
            }
        }
    }
}
