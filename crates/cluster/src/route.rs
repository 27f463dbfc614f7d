//! Commands of a replication stream or an AOF, routed for a cluster: each command goes to
//! the slot of its keys — key positions from the target's own `COMMAND` table (`COMMAND
//! GETKEYS` for commands with movable keys), not a hand-kept list. `SELECT` is tracked and
//! commands of other databases are counted, not applied; `MULTI`/`EXEC` stays one atomic
//! write when its keys share a slot and is split (and counted) otherwise; multi-key
//! `DEL`/`UNLINK`/`TOUCH`/`MSET` across slots are split per key; `PING`/`REPLCONF` are
//! dropped; functions and scripts are handed back for every master; flushes are handed
//! back for the caller's rule. AOF replay, migration's stream and point-in-time restore
//! share it.

use rcops_formats::slot::key_slot;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use crate::fanout::Executor;
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};
use crate::writer::{Op, Write};

/// Where a command's keys are (COMMAND's first key, last key, step).
#[derive(Debug, Clone, Copy)]
struct KeySpec {
    first: i64,
    last: i64,
    step: i64,
    movable: bool,
    /// The value type the command works on, from its ACL categories (`@hash` → `hash`);
    /// `None` for generic commands (`DEL`, `EXPIRE`, `RENAME`, scripts).
    kind: Option<&'static str>,
}

/// The value type an ACL category stands for (HyperLogLogs and bitmaps are strings, geo
/// indexes sorted sets).
fn category_kind(c: &str) -> Option<&'static str> {
    Some(match c.trim_start_matches('@') {
        "string" | "bitmap" | "hyperloglog" => "string",
        "list" => "list",
        "set" => "set",
        "sortedset" | "geo" => "zset",
        "hash" => "hash",
        "stream" => "stream",
        _ => return None,
    })
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
                kind: match f.get(6) {
                    Some(redis::Value::Array(c) | redis::Value::Set(c)) => {
                        c.iter().find_map(|x| category_kind(&as_text(x)))
                    }
                    _ => None,
                },
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

    fn spec(&self, args: &[Vec<u8>]) -> Option<KeySpec> {
        let name = String::from_utf8_lossy(args.first()?).to_lowercase();
        let mut spec = self.specs.get(&name).copied();
        if let (Some(s), Some(sub)) = (spec, args.get(1)) {
            if s.first == 0 && !s.movable {
                let full = format!("{name}|{}", String::from_utf8_lossy(sub).to_lowercase());
                spec = self.specs.get(&full).copied().or(spec);
            }
        }
        spec
    }

    /// The value type the command works on (`None` for a generic or unknown command).
    pub fn kind(&self, args: &[Vec<u8>]) -> Option<&'static str> {
        self.spec(args).and_then(|s| s.kind)
    }

    /// The command's keys; `None` when it has none.
    pub async fn keys(&self, exec: &Executor, args: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
        let Some(s) = self.spec(args) else {
            let name = String::from_utf8_lossy(&args[0]).to_lowercase();
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

/// Which keys a job copies: a glob, prefixes to include or exclude, value types (the types
/// only where a value is seen: snapshots and scans).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyFilter {
    pub pattern: Option<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub exclude_prefixes: Vec<String>,
    #[serde(default)]
    pub types: Vec<String>,
}

impl KeyFilter {
    /// Whether a key's name passes.
    pub fn name_ok(&self, key: &[u8]) -> bool {
        self.pattern
            .as_deref()
            .is_none_or(|p| rcops_formats::conf::glob_bytes(p.as_bytes(), key))
            && (self.prefixes.is_empty()
                || self.prefixes.iter().any(|p| key.starts_with(p.as_bytes())))
            && !self
                .exclude_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_bytes()))
    }

    /// Whether a key of type `kind` (`string`, `hash`, …) passes.
    pub fn ok(&self, key: &[u8], kind: &str) -> bool {
        self.name_ok(key) && (self.types.is_empty() || self.types.iter().any(|t| t == kind))
    }

    fn names_all(&self) -> bool {
        self.pattern.is_none() && self.prefixes.is_empty() && self.exclude_prefixes.is_empty()
    }
}

/// What the router did with the commands it was given, by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteStats {
    pub commands: u64,
    pub transactions: u64,
    /// Transactions whose keys span slots: applied command by command.
    pub transactions_split: u64,
    /// Multi-key commands whose keys span slots, split into one command per slot.
    pub split: u64,
    /// `PING`, `REPLCONF`, `SELECT`, `MULTI`/`EXEC`/`DISCARD` themselves.
    pub control: u64,
    /// Commands without keys that are not applied, by name.
    pub keyless_skipped: BTreeMap<String, u64>,
    /// Commands for databases other than the one copied.
    pub other_db_skipped: u64,
    /// Commands that could not be routed (unknown to the target, several slots).
    pub unroutable: u64,
    /// Commands on keys the filter leaves out.
    #[serde(default)]
    pub filtered: u64,
}

/// What a command asks of the caller beyond the writes it queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Queued (or absorbed: control, another database, inside a transaction).
    Queued,
    /// For every master (`FUNCTION LOAD/DELETE/RESTORE/FLUSH`, `SCRIPT LOAD/FLUSH`), after
    /// what is queued before it.
    Broadcast(Vec<Vec<u8>>),
    /// `FLUSHALL` or `FLUSHDB` of the database copied.
    Flush(Vec<Vec<u8>>),
}

/// Turns commands into slot writes, one at a time, in order.
pub struct Router<'c> {
    cmds: &'c Commands,
    /// The database copied from the source (a cluster has only 0).
    db: u64,
    selected: u64,
    tx: Option<Vec<Vec<Vec<u8>>>>,
    filter: KeyFilter,
    pub stats: RouteStats,
    /// Why commands could not be routed (the first few).
    pub errors: Vec<String>,
}

fn upper(a: &[u8]) -> String {
    String::from_utf8_lossy(a).to_ascii_uppercase()
}

impl<'c> Router<'c> {
    pub fn new(cmds: &'c Commands, db: u64, filter: KeyFilter) -> Self {
        Router {
            cmds,
            db,
            selected: 0,
            tx: None,
            filter,
            stats: RouteStats::default(),
            errors: Vec::new(),
        }
    }

    /// Inside a `MULTI` whose `EXEC` has not come yet.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether `--type` lets the command through: it works on one of the chosen types, or is
    /// generic (`DEL`, `EXPIRE`, `RENAME`, scripts: they act on whatever the key holds).
    fn type_ok(&self, args: &[Vec<u8>]) -> bool {
        self.filter.types.is_empty()
            || self
                .cmds
                .kind(args)
                .is_none_or(|k| self.filter.types.iter().any(|t| t == k))
    }

    fn note(&mut self, e: String) {
        self.stats.unroutable += 1;
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }

    /// Routes one command; writes go to `out` with `index` as their id (a stream offset,
    /// a position in a file).
    pub async fn push(
        &mut self,
        exec: &Executor,
        args: Vec<Vec<u8>>,
        index: u64,
        out: &mut Vec<Write>,
    ) -> Routed {
        if args.is_empty() {
            return Routed::Queued;
        }
        self.stats.commands += 1;
        let name = upper(&args[0]);
        match name.as_str() {
            "SELECT" => {
                self.stats.control += 1;
                self.selected = args
                    .get(1)
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                    .unwrap_or(0);
                return Routed::Queued;
            }
            "PING" | "REPLCONF" => {
                self.stats.control += 1;
                return Routed::Queued;
            }
            "MULTI" => {
                self.stats.control += 1;
                self.tx = Some(Vec::new());
                return Routed::Queued;
            }
            "DISCARD" => {
                self.stats.control += 1;
                self.tx = None;
                return Routed::Queued;
            }
            "EXEC" => {
                self.stats.control += 1;
                if let Some(t) = self.tx.take() {
                    self.exec_tx(exec, t, index, out).await;
                }
                return Routed::Queued;
            }
            _ => {}
        }
        if self.selected != self.db {
            self.stats.other_db_skipped += 1;
            return Routed::Queued;
        }
        if let Some(t) = &mut self.tx {
            t.push(args);
            return Routed::Queued;
        }
        self.queue(exec, args, index, out).await
    }

    async fn exec_tx(
        &mut self,
        exec: &Executor,
        t: Vec<Vec<Vec<u8>>>,
        index: u64,
        out: &mut Vec<Write>,
    ) {
        self.stats.transactions += 1;
        let mut slots = Vec::new();
        let mut first = None;
        for c in &t {
            for k in self.cmds.keys(exec, c).await.unwrap_or_default() {
                slots.push(key_slot(&k));
                first.get_or_insert(k);
            }
        }
        slots.sort_unstable();
        slots.dedup();
        let all_in = self.filter.names_all() || {
            let mut ok = true;
            for c in &t {
                for k in self.cmds.keys(exec, c).await.unwrap_or_default() {
                    ok &= self.filter.name_ok(&k);
                }
            }
            ok
        } && t.iter().all(|c| self.type_ok(c));
        if slots.len() == 1 && all_in {
            out.push(Write {
                slot: slots[0],
                key: first.unwrap_or_default(),
                kind: "multi",
                index,
                op: Op::Commands {
                    cmds: t,
                    multi: true,
                },
            });
            return;
        }
        self.stats.transactions_split += 1;
        for c in t {
            // Keyless commands inside a transaction are not replayed on their own.
            let _ = self.queue(exec, c, index, out).await;
        }
    }

    /// Routes one command outside a transaction: by its keys' slot, split when it is a
    /// multi-key DEL/UNLINK/TOUCH/MSET whose keys span slots.
    async fn queue(
        &mut self,
        exec: &Executor,
        args: Vec<Vec<u8>>,
        index: u64,
        out: &mut Vec<Write>,
    ) -> Routed {
        let name = upper(&args[0]);
        let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
        match (name.as_str(), sub.as_str()) {
            ("FLUSHALL" | "FLUSHDB", _) => return Routed::Flush(args),
            ("FUNCTION", "LOAD" | "DELETE" | "RESTORE" | "FLUSH")
            | ("SCRIPT", "LOAD" | "FLUSH") => return Routed::Broadcast(args),
            _ => {}
        }
        let keys = match self.cmds.keys(exec, &args).await {
            Ok(k) => k,
            Err(e) => {
                self.note(e);
                return Routed::Queued;
            }
        };
        if keys.is_empty() {
            *self.stats.keyless_skipped.entry(name).or_default() += 1;
            return Routed::Queued;
        }
        if !keys.iter().all(|k| self.filter.name_ok(k)) || !self.type_ok(&args) {
            self.stats.filtered += 1;
            return Routed::Queued;
        }
        let one = |slot: u16, key: &[u8], cmd: Vec<Vec<u8>>| Write {
            slot,
            key: key.to_vec(),
            kind: "command",
            index,
            op: Op::Commands {
                cmds: vec![cmd],
                multi: false,
            },
        };
        let slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
        if slots.iter().all(|s| *s == slots[0]) {
            out.push(one(slots[0], &keys[0], args));
            return Routed::Queued;
        }
        match name.as_str() {
            "DEL" | "UNLINK" | "TOUCH" => {
                self.stats.split += 1;
                for k in &args[1..] {
                    out.push(one(key_slot(k), k, vec![args[0].clone(), k.clone()]));
                }
            }
            "MSET" => {
                self.stats.split += 1;
                for kv in args[1..].chunks(2) {
                    if let [k, v] = kv {
                        out.push(one(
                            key_slot(k),
                            k,
                            vec![args[0].clone(), k.clone(), v.clone()],
                        ));
                    }
                }
            }
            _ => self.note(format!(
                "{name} with keys in several slots cannot be applied to a cluster"
            )),
        }
        Routed::Queued
    }
}
