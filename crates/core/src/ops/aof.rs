//! Replaying an append-only file into a cluster: a single AOF (with or without an RDB
//! preamble) or a Redis 7 multi-part directory. Each command goes to the master owning its
//! keys' slot — key positions from the target's own `COMMAND` table (`COMMAND GETKEYS` for
//! commands with movable keys), not a hand-kept list. `MULTI`/`EXEC` blocks stay together
//! when all their keys share a slot; others are sent command by command and reported.
//! `--until` stops at the first `#TS:` annotation past the given time.

use rcops_formats::slot::key_slot;
use rcops_rdb::aof::{parse_manifest, AofItem, AofReader};
use rcops_rdb::{Item, Parser};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fanout::Executor;
use crate::node::{Addr, NodeError};
use crate::ops::restore::payload_for;
use crate::topology::{line_addr, ClusterView};
use crate::writer::{Lane, Op, Outcome, Payload, SlotWriter, Write};

/// Where a command's keys are (COMMAND's first key, last key, step).
#[derive(Debug, Clone, Copy)]
struct KeySpec {
    first: i64,
    last: i64,
    step: i64,
    movable: bool,
}

/// The target's command table: name (and `name|sub`) → key positions.
pub struct Commands {
    specs: HashMap<String, KeySpec>,
    probe: Addr,
}

fn as_i64(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(i) => *i,
        _ => 0,
    }
}

fn as_text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).to_lowercase(),
        redis::Value::SimpleString(s) => s.to_lowercase(),
        _ => String::new(),
    }
}

fn collect(entries: &[redis::Value], out: &mut HashMap<String, KeySpec>) {
    for e in entries {
        let redis::Value::Array(f) = e else { continue };
        if f.len() < 6 {
            continue;
        }
        let flags = match &f[2] {
            redis::Value::Array(fl) => fl.iter().map(as_text).collect::<Vec<_>>(),
            redis::Value::Set(fl) => fl.iter().map(as_text).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        out.insert(
            as_text(&f[0]),
            KeySpec {
                first: as_i64(&f[3]),
                last: as_i64(&f[4]),
                step: as_i64(&f[5]),
                movable: flags.iter().any(|x| x == "movablekeys"),
            },
        );
        // Redis 7: subcommands (element 10) carry their own key positions.
        if let Some(redis::Value::Array(subs)) = f.get(9) {
            collect(subs, out);
        }
    }
}

impl Commands {
    pub async fn load(exec: &Executor, view: &ClusterView) -> Result<Commands, NodeError> {
        let probe = view
            .masters()
            .find_map(line_addr)
            .ok_or_else(|| NodeError::Command {
                addr: Addr::new("?", 0),
                reason: "no master in the target".into(),
            })?;
        let mut conn = exec.conn(&probe).await?;
        let v: redis::Value =
            crate::fanout::query(&probe, &mut conn, &redis::cmd("COMMAND")).await?;
        let mut specs = HashMap::new();
        if let redis::Value::Array(entries) = &v {
            collect(entries, &mut specs);
        }
        Ok(Commands { specs, probe })
    }

    /// The command's keys; `None` when it has none.
    async fn keys(&self, exec: &Executor, args: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
        let name = String::from_utf8_lossy(&args[0]).to_lowercase();
        let mut spec = self.specs.get(&name).copied();
        if let (Some(s), Some(sub)) = (spec, args.get(1)) {
            if s.first == 0 && !s.movable {
                let full = format!("{name}|{}", String::from_utf8_lossy(sub).to_lowercase());
                spec = self.specs.get(&full).copied().or(spec);
            }
        }
        let Some(s) = spec else {
            return Err(format!("unknown command {name:?} on the target"));
        };
        if s.movable {
            let mut conn = exec.conn(&self.probe).await.map_err(|e| e.to_string())?;
            let mut cmd = redis::cmd("COMMAND");
            cmd.arg("GETKEYS");
            for a in args {
                cmd.arg(a);
            }
            return cmd
                .query_async::<Vec<Vec<u8>>>(&mut conn)
                .await
                .or_else(|e| {
                    // "no key arguments" is an answer, not a failure.
                    if e.to_string().contains("no key arguments") {
                        Ok(Vec::new())
                    } else {
                        Err(e.to_string())
                    }
                });
        }
        if s.first <= 0 {
            return Ok(Vec::new());
        }
        let n = args.len() as i64;
        let last = if s.last < 0 {
            n + s.last
        } else {
            s.last.min(n - 1)
        };
        let step = s.step.max(1);
        let mut keys = Vec::new();
        let mut i = s.first;
        while i <= last && i < n {
            keys.push(args[i as usize].clone());
            i += step;
        }
        Ok(keys)
    }
}

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
}

/// Replays `path` into the target.
pub async fn replay(
    exec: &Executor,
    view: &ClusterView,
    path: &Path,
    opts: &AofOptions,
    target_version: u16,
) -> Result<AofReport, String> {
    let started = Instant::now();
    let cmds = Commands::load(exec, view)
        .await
        .map_err(|e| e.to_string())?;
    let mut report = AofReport::default();
    let skip_busy = opts.base_conflict == crate::ops::restore::OnConflict::Skip;
    let writer = SlotWriter::new(exec, view, None, skip_busy);
    let mut lane = writer.lane();
    let mut units: Vec<Write> = Vec::new();
    let mut tx: Option<Vec<Vec<Vec<u8>>>> = None;
    let mut db = 0u64;
    'files: for file in files(path)? {
        report.files.push(file.display().to_string());
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
            let mut p = Parser::new(br).map_err(|e| format!("{}: {e}", file.display()))?;
            let version = p.version();
            let mut batch = Vec::new();
            for item in &mut p {
                match item.map_err(|e| format!("{}: {e}", file.display()))? {
                    Item::Entry(mut e) if e.db == 0 => {
                        if e.expire_ms.is_some_and(|x| x <= crate::ops::rdb::now_ms()) {
                            continue;
                        }
                        // The same payload rules as a backup restore: restamped, re-encoded
                        // (a 7.2 stream for 7.0) or refused for the key (a Valkey hash with
                        // field expirations for Redis).
                        let payload = match payload_for(&mut e, version, target_version) {
                            Ok(p) => p,
                            Err(why) => {
                                report.failed += 1;
                                let key = String::from_utf8_lossy(&e.key).into_owned();
                                note(&mut report, format!("{key:?}: {why}"));
                                continue;
                            }
                        };
                        report.preamble_keys += 1;
                        batch.push(Write {
                            slot: key_slot(&e.key),
                            kind: "base",
                            index: 0,
                            op: Op::Restore {
                                payload: Payload::Mem(payload),
                                abs_ttl: e.expire_ms.unwrap_or(0),
                                replace: opts.base_conflict
                                    == crate::ops::restore::OnConflict::Replace,
                            },
                            key: e.key,
                        });
                        if batch.len() >= opts.batch {
                            send(
                                &mut lane,
                                std::mem::take(&mut batch),
                                skip_busy,
                                &mut report,
                            )
                            .await;
                        }
                    }
                    Item::Entry(_) => report.other_db_skipped += 1,
                    _ => {}
                }
            }
            send(&mut lane, batch, skip_busy, &mut report).await;
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
            report.commands += 1;
            let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
            match name.as_str() {
                "SELECT" => {
                    db = args
                        .get(1)
                        .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                        .unwrap_or(0);
                    continue;
                }
                "MULTI" => {
                    tx = Some(Vec::new());
                    continue;
                }
                "EXEC" => {
                    if let Some(t) = tx.take() {
                        report.transactions += 1;
                        let mut slots = Vec::new();
                        for c in &t {
                            for k in cmds.keys(exec, c).await.unwrap_or_default() {
                                slots.push(key_slot(&k));
                            }
                        }
                        slots.dedup();
                        slots.sort_unstable();
                        slots.dedup();
                        if slots.len() == 1 {
                            units.push(Write {
                                slot: slots[0],
                                key: Vec::new(),
                                kind: "multi",
                                index: 0,
                                op: Op::Commands {
                                    cmds: t,
                                    multi: true,
                                },
                            });
                        } else {
                            report.transactions_split += 1;
                            for c in t {
                                queue(exec, &cmds, c, &mut units, &mut report).await;
                            }
                        }
                    }
                    continue;
                }
                "DISCARD" => {
                    tx = None;
                    continue;
                }
                _ => {}
            }
            if db != 0 {
                report.other_db_skipped += 1;
                continue;
            }
            match &mut tx {
                Some(t) => t.push(args),
                None => queue(exec, &cmds, args, &mut units, &mut report).await,
            }
            if units.len() >= opts.batch {
                send(&mut lane, std::mem::take(&mut units), false, &mut report).await;
            }
        }
    }
    send(&mut lane, units, false, &mut report).await;
    // The replication fence: what no replica of its master confirmed is reported.
    for u in lane.confirm().await {
        let n = u.writes.len() as u64;
        report.sent = report.sent.saturating_sub(n);
        report.failed += n;
        note(
            &mut report,
            format!(
                "{}: {n} write(s) not confirmed by a replica ({})",
                u.addr, u.why
            ),
        );
    }
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Routes one command: by its keys' slot, split when it is a multi-key DEL/UNLINK/MSET whose
/// keys span slots, reported when it has no keys.
async fn queue(
    exec: &Executor,
    cmds: &Commands,
    args: Vec<Vec<u8>>,
    units: &mut Vec<Write>,
    report: &mut AofReport,
) {
    let keys = match cmds.keys(exec, &args).await {
        Ok(k) => k,
        Err(e) => {
            report.failed += 1;
            note(report, e);
            return;
        }
    };
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    if keys.is_empty() {
        *report.keyless_skipped.entry(name).or_default() += 1;
        return;
    }
    let slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
    let one = |slot: u16, cmd: Vec<Vec<u8>>| Write {
        slot,
        key: Vec::new(),
        kind: "command",
        index: 0,
        op: Op::Commands {
            cmds: vec![cmd],
            multi: false,
        },
    };
    if slots.iter().all(|s| *s == slots[0]) {
        units.push(one(slots[0], args));
        return;
    }
    match name.as_str() {
        "DEL" | "UNLINK" | "TOUCH" => {
            for k in &args[1..] {
                units.push(one(key_slot(k), vec![args[0].clone(), k.clone()]));
            }
        }
        "MSET" => {
            for kv in args[1..].chunks(2) {
                if let [k, v] = kv {
                    units.push(one(
                        key_slot(k),
                        vec![args[0].clone(), k.clone(), v.clone()],
                    ));
                }
            }
        }
        _ => {
            report.failed += 1;
            note(
                report,
                format!("{name} with keys in several slots cannot be replayed on a cluster"),
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
            Op::Restore { .. } => 1,
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
