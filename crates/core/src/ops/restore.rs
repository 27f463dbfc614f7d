//! Restore RDB files (a backup set's shards, or any RDB) into a cluster of any shape: every
//! key routed by its slot to the master that owns it in the target, written with `RESTORE …
//! ABSTTL` (the DUMP payload built from the file's raw value bytes, so nothing is re-encoded
//! unless the target's RDB version requires it), pipelined per node and concurrent across
//! nodes and files, following MOVED/ASK, checkpointing so an interrupted run resumes.
//!
//! Safety rules, in the order they apply:
//! - [`preflight`] runs before the first write: every file is verified (a backup shard's
//!   SHA-256 against its manifest, a plain RDB parsed to its CRC64 trailer), value types are
//!   checked against the target's RDB version, the databases of a standalone RDB are counted
//!   (several without `--db` or `--merge-dbs` is refused), and under `fail` every key is
//!   looked up in the target. A file that fails writes nothing.
//! - A key that failed is never checkpointed as done: the checkpoint keeps it for `--resume`,
//!   which retries it, and a resumed run reports the whole restore.
//! - `skip` never writes a key that existed before the run, on resume too: only a restore
//!   that began under `fail` (the target held none of the keys) may replace the keys sent
//!   past the last checkpoint.
//! - A write whose outcome is unknown (timeout, dropped connection) is re-checked with
//!   `EXISTS` before it is counted, and re-sent when the key is absent.
//! - A checkpoint counts a key only once a replica of its master has it (the fence:
//!   `WAIT 1` before each save): keys a master acknowledged and lost in a failover before
//!   replicating them are re-sent by `--resume`.
//! - Memory stays bounded whatever the size of a key: batches are capped in bytes, and a
//!   value above [`SPILL_ABOVE`] goes to an anonymous temporary file and streams from there;
//!   the reply timeout of a write grows with its size.

use futures::StreamExt;
use rcops_formats::slot::key_slot;
use rcops_rdb::{dump_payload, min_version_for_type, type_name, Entry, Item, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::fanout::{query, Executor};
use crate::job::JobCtx;
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};
use crate::writer::{Done, Lane, Op, Outcome, Payload, Raw, SlotWriter, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    Fail,
    Skip,
    Replace,
}

impl OnConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Fail => "fail",
            OnConflict::Skip => "skip",
            OnConflict::Replace => "replace",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub label: String,
    pub path: PathBuf,
    /// The SHA-256 its backup manifest records (verified before anything is written).
    pub sha256: Option<String>,
    /// Keys its manifest records (a file that is not read before writing counts these).
    pub keys: Option<u64>,
}

/// What a restore will do, shown before it writes (`--dry-run --json` prints it).
///
/// JSON: `{"source", "files", "source_keys", "target_masters", "target_keys",
/// "target_rdb_version", "on_conflict", "resume", "blockers": [Finding], "preflight":
/// Preflight|null}`.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub source: String,
    pub files: Vec<String>,
    pub source_keys: Option<u64>,
    pub target_masters: usize,
    /// Keys in the target now (`DBSIZE` summed over its masters).
    pub target_keys: u64,
    pub target_rdb_version: u16,
    pub on_conflict: OnConflict,
    pub resume: bool,
    /// `check` findings that make writing unsafe: the restore refuses them unless forced.
    pub blockers: Vec<crate::ops::check::Finding>,
    /// What the checks before writing found (absent until they ran).
    pub preflight: Option<Preflight>,
}

/// The files to restore: a backup set in `backups` (id, prefix, `latest` or its folder) or an
/// RDB file named by `source`, then `extra` RDB files; the set's label. A plain file must at
/// least open as an RDB (a backup shard is checked against its SHA-256 by the preflight).
pub fn resolve_sources(
    backups: &Path,
    source: &str,
    extra: &[PathBuf],
) -> Result<(String, Vec<SourceFile>), RestoreError> {
    use crate::ops::backup;
    let src_path = Path::new(source);
    let (label, mut sources) = if src_path.is_file() {
        let file = SourceFile {
            label: source.to_string(),
            path: src_path.to_path_buf(),
            sha256: None,
            keys: None,
        };
        let name = src_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, vec![file])
    } else {
        if src_path.is_dir() && !src_path.join(backup::MANIFEST).is_file() {
            return Err(RestoreError::Refused(format!(
                "{}: not a backup set (no {} in it); pass RDB files by name",
                src_path.display(),
                backup::MANIFEST
            )));
        }
        let (folder, m) =
            backup::find(backups, source).map_err(|e| RestoreError::Refused(e.to_string()))?;
        if m.status != "complete" {
            return Err(RestoreError::Refused(format!(
                "backup {} is {}: some shards are missing; restore its files one by one if you must",
                m.id, m.status
            )));
        }
        let files = m
            .shards
            .iter()
            .map(|s| SourceFile {
                label: s.file.clone(),
                path: folder.join(&s.file),
                sha256: Some(s.sha256.clone()),
                keys: Some(s.keys),
            })
            .collect();
        (m.id.clone(), files)
    };
    for f in extra {
        if !f.is_file() {
            return Err(RestoreError::Refused(format!(
                "{}: no such file",
                f.display()
            )));
        }
        sources.push(SourceFile {
            label: f.display().to_string(),
            path: f.clone(),
            sha256: None,
            keys: None,
        });
    }
    for s in sources.iter().filter(|s| s.sha256.is_none()) {
        crate::ops::rdb::parser(&s.path)?;
    }
    Ok((label, sources))
}

/// Where the checkpoint of restoring `label` into the cluster of `view` lives under
/// `state_dir`: one per source and target, so a resume finds it again.
pub fn checkpoint_path(state_dir: &Path, label: &str, view: &ClusterView) -> PathBuf {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key = crate::ops::config::cluster_key(view);
    state_dir
        .join("restore")
        .join(format!("{clean}-into-{key}.json"))
}

/// The plan: what is restored from where into what (the target's masters, keys, RDB
/// version, the findings that make writing unsafe). The preflight runs separately.
pub async fn plan(
    exec: &Executor,
    view: &ClusterView,
    label: &str,
    sources: &[SourceFile],
    opts: &RestoreOptions,
) -> Result<RestorePlan, RestoreError> {
    if opts.resume && !opts.checkpoint.is_file() {
        return Err(RestoreError::Usage(format!(
            "--resume: no checkpoint for {label} into this cluster ({}): nothing to resume; \
             run without --resume",
            opts.checkpoint.display()
        )));
    }
    Ok(RestorePlan {
        source: label.to_string(),
        files: sources.iter().map(|s| s.label.clone()).collect(),
        source_keys: sources.iter().map(|s| s.keys).sum(),
        target_masters: view.masters().filter(|m| m.slot_count() > 0).count(),
        target_keys: target_keys(exec, view).await,
        target_rdb_version: target_rdb_version(exec, view).await?,
        on_conflict: opts.on_conflict,
        resume: opts.resume,
        blockers: write_blockers(view),
        preflight: None,
    })
}

/// `check`'s rules on the target, keeping the findings that make writing unsafe.
pub fn write_blockers(view: &ClusterView) -> Vec<crate::ops::check::Finding> {
    use crate::ops::check;
    check::write_blockers(
        view,
        &check::evaluate(view, &check::CheckOptions::default()),
    )
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub on_conflict: OnConflict,
    pub pattern: Option<String>,
    pub types: Vec<String>,
    pub db: Option<u64>,
    /// Write every database of a standalone RDB into the cluster's one (names that occur in
    /// several are reported as collisions).
    pub merge_dbs: bool,
    /// Check files before writing (default); off only when the caller verified them.
    pub verify: bool,
    /// Keys per pipeline round per node.
    pub batch: usize,
    pub checkpoint: PathBuf,
    pub resume: bool,
    /// Cap on keys written per second, all files together (spares a production target).
    pub rate: Option<u64>,
    /// Values whose serialization is longer are rebuilt piece by piece, not `RESTORE`d.
    pub big_key_bytes: u64,
}

/// Default for `--big-key-bytes`: above this a `RESTORE` blocks the target for about a second.
pub const BIG_KEY_BYTES: u64 = 32 << 20;

/// Values whose raw bytes exceed this go to a temporary file instead of memory.
pub const SPILL_ABOVE: usize = 16 << 20;

/// A batch closes at this many payload bytes, whatever `--batch` says (a run of big keys
/// stays small in memory: the parser runs at most a few batches ahead).
pub(crate) const BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub restored: u64,
    pub skipped_expired: u64,
    pub skipped_filtered: u64,
    pub skipped_existing: u64,
    /// Restored by earlier, interrupted runs of the same restore (`--resume`).
    pub already_done: u64,
    /// Not in the target, or written but not confirmed by a replica before its master
    /// failed: sent again by `--resume`.
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.restored += o.restored;
        self.skipped_expired += o.skipped_expired;
        self.skipped_filtered += o.skipped_filtered;
        self.skipped_existing += o.skipped_existing;
        self.already_done += o.already_done;
        self.failed += o.failed;
    }

    /// Entries accounted for.
    pub fn entries(&self) -> u64 {
        self.restored
            + self.skipped_expired
            + self.skipped_filtered
            + self.skipped_existing
            + self.already_done
            + self.failed
    }
}

/// JSON: `{"per_source": {label: Counts}, "per_type", "total": Counts, "source_keys",
/// "complete", "errors", "target_rdb_version", "interrupted", "resumed", "elapsed_ms",
/// "keys_per_sec"}` where Counts is `{"restored", "skipped_expired", "skipped_filtered",
/// "skipped_existing", "already_done", "failed"}`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub per_source: BTreeMap<String, Counts>,
    pub per_type: BTreeMap<&'static str, Counts>,
    /// The whole restore, earlier runs included.
    pub total: Counts,
    /// Keys in the source files (entries counted by the verification pass or the manifest).
    pub source_keys: Option<u64>,
    /// Every key of the source is in the target, or was expired, filtered or kept as it was.
    pub complete: bool,
    /// First errors, with the key and the reason.
    pub errors: Vec<String>,
    pub target_rdb_version: u16,
    pub interrupted: bool,
    pub resumed: bool,
    /// Key names found in more than one database of a merged standalone RDB.
    pub db_collisions: u64,
    pub elapsed_ms: u128,
    pub keys_per_sec: f64,
}

impl RestoreReport {
    /// 130 interrupted, 2 keys missing, 1 keys kept as they were (skip), 0 complete.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else if self.total.failed > 0 || !self.complete {
            2
        } else if self.total.skipped_existing > 0 || self.db_collisions > 0 {
            1
        } else {
            0
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    File(#[from] crate::ops::rdb::RdbFileError),
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The restore cannot go ahead as asked; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The command line asks for something impossible (exit 64).
    #[error("{0}")]
    Usage(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

/// Where one source file stands between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileProgress {
    /// Entries of the file (in file order) that were handled, up to this index.
    pub done: u64,
    /// Indices at or below `done` that did not reach the target: a resumed run sends them
    /// again.
    #[serde(default)]
    pub retry: Vec<u64>,
    /// The entries of `retry` that were written but no replica confirmed them: ours, so a
    /// resumed run sends them with `REPLACE` whatever the conflict mode.
    #[serde(default)]
    pub resend: Vec<u64>,
    /// Outcomes of the handled entries, failed ones excepted (those are in `retry`).
    #[serde(default)]
    pub counts: Counts,
}

/// The resumable state of a restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(default)]
    pub files: BTreeMap<String, FileProgress>,
    /// The largest batch size of the runs that wrote it (bounds what they sent past `done`).
    #[serde(default)]
    pub batch: Option<u64>,
    /// The conflict mode of the first run: only a restore that began under `fail` may
    /// replace keys it finds again on resume (they cannot have existed before).
    #[serde(default)]
    pub first_mode: Option<OnConflict>,
}

pub fn load_checkpoint(path: &Path) -> Result<Option<Checkpoint>, RestoreError> {
    let err = |reason: String| RestoreError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Batches between two checkpoint saves.
const CHECKPOINT_EVERY: u64 = 16;

fn save_checkpoint(path: &Path, c: &Checkpoint) -> Result<(), String> {
    crate::job::save_json(path, c)
}

/// RDB length encoding.
fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 64 {
        out.push(n as u8);
    } else if n < 16_384 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else if n <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A value in the oldest encodings every server reads (string, linked list, set, hash, zset
/// with binary scores), for targets too old for the file's encoding. `None` when the value
/// cannot be re-encoded (streams, modules, hashes with field expirations).
pub fn reencode(v: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match v {
        Value::String(s) => {
            out.push(0);
            put_str(&mut out, s);
        }
        Value::List(items) | Value::Set(items) => {
            out.push(if matches!(v, Value::List(_)) { 1 } else { 2 });
            put_len(&mut out, items.len() as u64);
            for i in items.iter() {
                put_str(&mut out, i);
            }
        }
        Value::Zset(items) => {
            out.push(5);
            put_len(&mut out, items.len() as u64);
            for (m, s) in items.iter() {
                put_str(&mut out, m);
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        Value::Hash(items) if items.expiries.iter().all(Option::is_none) => {
            out.push(4);
            put_len(&mut out, items.len() as u64);
            for (f, x, _) in items.iter() {
                put_str(&mut out, f);
                put_str(&mut out, x);
            }
        }
        _ => return None,
    }
    Some(out)
}

/// The RDB version the target's `RESTORE` accepts: what its own `DUMP` writes.
pub async fn target_rdb_version(exec: &Executor, view: &ClusterView) -> Result<u16, RestoreError> {
    let owners = view.slot_owner();
    // A probe key in a slot of the first master.
    let (key, addr) = (0..100_000u32)
        .find_map(|i| {
            let k = format!("__rcops:probe:{i}");
            let a = owners[usize::from(key_slot(k.as_bytes()))].and_then(line_addr)?;
            Some((k, a))
        })
        .ok_or_else(|| RestoreError::Refused("the target has no slots assigned".into()))?;
    let mut conn = exec.conn(&addr).await?;
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(&key)
        .arg("x")
        .arg("PX")
        .arg(60_000)
        .ignore();
    p.cmd("DUMP").arg(&key);
    p.cmd("DEL").arg(&key).ignore();
    let (dump,): (Vec<u8>,) = p
        .query_async(&mut conn)
        .await
        .map_err(|e| NodeError::from_redis(&addr, &e))?;
    if dump.len() < 10 {
        return Err(RestoreError::Refused(format!(
            "{addr}: unexpected DUMP reply"
        )));
    }
    let v = &dump[dump.len() - 10..dump.len() - 8];
    Ok(u16::from_le_bytes([v[0], v[1]]))
}

/// Why the target cannot take a value of this entry's type, if it cannot.
fn unwritable(e: &Entry, file_version: u16, target_version: u16) -> Option<String> {
    if file_version <= target_version
        || min_version_for_type(e.type_byte, file_version) <= target_version
        || (e.type_byte == 21 && target_version >= 10)
        || reencode_possible(&e.value)
    {
        return None;
    }
    Some(format!(
        "type {} (RDB type {}) needs RDB version {} but the target accepts {}",
        type_name(e.type_byte),
        e.type_byte,
        min_version_for_type(e.type_byte, file_version),
        target_version
    ))
}

fn reencode_possible(v: &Value) -> bool {
    match v {
        Value::String(_) | Value::List(_) | Value::Set(_) | Value::Zset(_) => true,
        Value::Hash(items) => items.expiries.iter().all(Option::is_none),
        _ => false,
    }
}

/// The DUMP payload for `e` on a target of `target_version`, re-encoded when needed.
fn payload_for(e: &mut Entry, file_version: u16, target_version: u16) -> Result<Vec<u8>, String> {
    if e.spilled.is_some() {
        e.raw = read_spilled(e).map_err(|err| format!("reading the spilled value: {err}"))?;
    }
    if file_version <= target_version
        || min_version_for_type(e.type_byte, file_version) <= target_version
    {
        let raw = std::mem::take(&mut e.raw);
        return Ok(rcops_rdb::into_dump_payload(
            raw,
            file_version.min(target_version),
        ));
    }
    if e.type_byte == 21 && target_version >= 10 {
        let raw = rcops_rdb::stream_v3_to_v2(&e.raw).map_err(|err| err.to_string())?;
        return Ok(dump_payload(&raw, 10));
    }
    if matches!(e.value, Value::NotDecoded) {
        e.value = rcops_rdb::decode_raw(&e.raw, e.offset, e.value_offset, file_version)
            .map_err(|err| err.to_string())?;
    }
    match reencode(&e.value) {
        Some(raw) => Ok(dump_payload(&raw, target_version.min(9))),
        None => Err(unwritable(e, file_version, target_version).unwrap_or_default()),
    }
}

/// A spilled value's bytes, read back into memory (only for the rare conversions that need
/// them whole).
fn read_spilled(e: &Entry) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let Some(s) = &e.spilled else {
        return Ok(Vec::new());
    };
    let mut out = vec![0u8; s.len as usize];
    s.file.read_exact_at(&mut out, 0)?;
    Ok(out)
}

/// The payload of a value that stays in its spill file: version and CRC64 computed from it.
fn spilled_payload(s: &rcops_rdb::Spilled, version: u16) -> std::io::Result<Payload> {
    use std::os::unix::fs::FileExt;
    let mut crc = rcops_rdb::crc64_digest();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < s.len {
        let want = ((s.len - at) as usize).min(buf.len());
        s.file.read_exact_at(&mut buf[..want], at)?;
        crc.update(&buf[..want]);
        at += want as u64;
    }
    crc.update(&version.to_le_bytes());
    let mut trailer = [0u8; 10];
    trailer[..2].copy_from_slice(&version.to_le_bytes());
    trailer[2..].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(Payload::File {
        spilled: s.clone(),
        trailer,
    })
}

/// [`payload_for`], keeping a spilled value in its file when it needs no conversion.
pub(crate) fn prepare_payload(
    e: &mut Entry,
    file_version: u16,
    target_version: u16,
) -> Result<Payload, String> {
    if let Some(s) = &e.spilled {
        if file_version <= target_version
            || min_version_for_type(e.type_byte, file_version) <= target_version
        {
            return spilled_payload(s, file_version.min(target_version))
                .map_err(|err| format!("reading the spilled value: {err}"));
        }
    }
    payload_for(e, file_version, target_version).map(Payload::Mem)
}

/// The write for `e` on a target of `target_version`: a `RESTORE`, or a rebuild piece by
/// piece for a value above `big_key_bytes` (or one in its spill file that needs
/// re-encoding, which would otherwise be read whole into memory).
pub(crate) fn prepare_op(
    e: &mut Entry,
    file_version: u16,
    target_version: u16,
    big_key_bytes: u64,
    replace: bool,
) -> Result<Op, String> {
    let abs_ttl = e.expire_ms.unwrap_or(0);
    let converts = file_version > target_version
        && min_version_for_type(e.type_byte, file_version) > target_version;
    let big = e.raw_len > big_key_bytes || (e.spilled.is_some() && converts);
    if big && rcops_rdb::rebuild::rebuildable(e.type_byte, file_version) {
        let raw = match e.spilled.take() {
            Some(s) => Raw::File(s),
            None => Raw::Mem(Arc::new(std::mem::take(&mut e.raw))),
        };
        return Ok(Op::Rebuild {
            raw,
            version: file_version,
            abs_ttl,
            replace,
        });
    }
    Ok(Op::Restore {
        payload: prepare_payload(e, file_version, target_version)?,
        abs_ttl,
        replace,
    })
}

/// What a write weighs against a batch's byte budget (one in a file streams from it).
pub(crate) fn batch_cost(op: &Op) -> usize {
    match op {
        Op::Restore {
            payload: Payload::Mem(v),
            ..
        } => v.len(),
        _ => 1 << 20,
    }
}

/// Anonymous temporary files for spilled values (removed as soon as they are closed).
pub(crate) fn spill_file() -> rcops_rdb::SpillFile {
    Arc::new(tempfile::tempfile)
}

fn glob_ok(pattern: &Option<String>, key: &[u8]) -> bool {
    pattern
        .as_deref()
        .is_none_or(|p| rcops_formats::conf::glob_bytes(p.as_bytes(), key))
}

fn selected(e: &Entry, opts: &RestoreOptions) -> bool {
    opts.db.is_none_or(|d| d == e.db)
        && glob_ok(&opts.pattern, &e.key)
        && (opts.types.is_empty() || opts.types.iter().any(|t| t == type_name(e.type_byte)))
}

pub use rcops_formats::show_key;

/// What the checks before writing found in one file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileCheck {
    pub label: String,
    /// `sha256` (against the manifest), `parsed` (to the CRC64 trailer), or `unchecked`.
    pub verified: &'static str,
    /// Entries in the file, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Keys per database, when the file was read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dbs: BTreeMap<u64, u64>,
}

/// JSON: `{"files": [{"label", "verified", "entries"?, "dbs"?}], "existing": n|null,
/// "db_collisions", "collision_examples"}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preflight {
    pub files: Vec<FileCheck>,
    /// Keys of the source already in the target (when looked up).
    pub existing: Option<u64>,
    pub db_collisions: u64,
    pub collision_examples: Vec<String>,
}

impl Preflight {
    /// Entries of all files, when every file was read.
    pub fn entries(&self) -> Option<u64> {
        self.files.iter().map(|f| f.entries).sum()
    }
}

/// Reads one file before anything is written: SHA-256 against the manifest, then (when
/// asked) a walk to the CRC64 trailer counting keys per database, checking value types and
/// handing the selected keys to `keys` for the conflict check.
fn check_file(
    src: &SourceFile,
    opts: &RestoreOptions,
    target_version: u16,
    walk: bool,
    keys: Option<tokio::sync::mpsc::Sender<Vec<Vec<u8>>>>,
) -> Result<(FileCheck, u64, Vec<String>), RestoreError> {
    let mut check = FileCheck {
        label: src.label.clone(),
        verified: "unchecked",
        entries: src.keys,
        ..Default::default()
    };
    if let (Some(want), true) = (&src.sha256, opts.verify) {
        let got = crate::ops::backup::sha256_file(&src.path).map_err(RestoreError::Refused)?;
        if &got != want {
            return Err(RestoreError::Refused(format!(
                "{}: SHA-256 mismatch (the manifest says {want}, the file hashes to {got}): \
                 the file is corrupt or was changed; nothing was written",
                src.path.display()
            )));
        }
        check.verified = "sha256";
    }
    let (mut collisions, mut examples) = (0u64, Vec::new());
    let fail = |source| {
        RestoreError::Refused(format!(
            "{}: {source}; nothing was written",
            src.path.display()
        ))
    };
    let p = crate::ops::rdb::parser(&src.path).map_err(|e| match e {
        crate::ops::rdb::RdbFileError::Rdb { source, .. } => fail(source),
        e => RestoreError::File(e),
    })?;
    let file_version = p.version();
    // A file the target reads as it is needs no walk when its checksum already matched.
    if !walk && file_version <= target_version {
        return Ok((check, collisions, examples));
    }
    // Only values that need re-encoding for the target are decoded (to see whether they
    // can be); a stream 7.2 → 7.0 converts without it.
    let mut p = p
        .decode_only(move |t| {
            min_version_for_type(t, file_version) > target_version
                && !(t == 21 && target_version >= 10)
        })
        .keep_raw(false);
    let mut seen: HashSet<u64> = HashSet::new();
    let hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let mut entries = 0u64;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for item in &mut p {
        let Item::Entry(e) = item.map_err(fail)? else {
            continue;
        };
        entries += 1;
        *check.dbs.entry(e.db).or_default() += 1;
        if opts.merge_dbs {
            use std::hash::BuildHasher;
            if !seen.insert(hasher.hash_one(&e.key)) {
                collisions += 1;
                if examples.len() < 5 {
                    examples.push(show_key(&e.key));
                }
            }
        }
        if !selected(&e, opts) {
            continue;
        }
        if let Some(why) = unwritable(&e, file_version, target_version) {
            return Err(RestoreError::Refused(format!(
                "{}: key {}: {why}; nothing was written",
                src.label,
                show_key(&e.key)
            )));
        }
        if let Some(tx) = &keys {
            batch.push(e.key);
            if batch.len() >= 5000 && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                break; // the checker stopped: it reports why
            }
        }
    }
    if let (Some(tx), false) = (&keys, batch.is_empty()) {
        let _ = tx.blocking_send(batch);
    }
    check.entries = Some(entries);
    if check.verified == "unchecked" {
        check.verified = "parsed";
    }
    Ok((check, collisions, examples))
}

/// Looks up keys in the target as the file checks hand them over: (how many exist, some of
/// them).
async fn count_existing(
    exec: &Executor,
    owners: &[Option<Addr>],
    mut rx: tokio::sync::mpsc::Receiver<Vec<Vec<u8>>>,
) -> Result<(u64, Vec<String>), RestoreError> {
    let (mut count, mut examples) = (0u64, Vec::new());
    while let Some(keys) = rx.recv().await {
        let mut by_node: HashMap<&Addr, Vec<&Vec<u8>>> = HashMap::new();
        for k in &keys {
            if let Some(a) = &owners[usize::from(key_slot(k))] {
                by_node.entry(a).or_default().push(k);
            }
        }
        let lookups = by_node.into_iter().map(|(addr, keys)| async move {
            let mut conn = exec.conn(addr).await?;
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("EXISTS").arg(k.as_slice());
            }
            let found: Vec<i64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| NodeError::from_redis(addr, &e))?;
            Ok::<_, NodeError>(
                keys.into_iter()
                    .zip(found)
                    .filter(|(_, f)| *f > 0)
                    .map(|(k, _)| show_key(k))
                    .collect::<Vec<_>>(),
            )
        });
        for found in futures::future::join_all(lookups).await {
            let found = found?;
            count += found.len() as u64;
            examples.extend(
                found
                    .into_iter()
                    .take(5usize.saturating_sub(examples.len())),
            );
        }
    }
    Ok((count, examples))
}

/// Checks every file before anything is written (see the module docs): verification, value
/// types against `target_version`, databases of standalone RDBs, and — with
/// `check_existing` — keys that already exist in the target. Files are read concurrently.
pub async fn preflight(
    exec: &Executor,
    view: &ClusterView,
    sources: &[SourceFile],
    opts: &RestoreOptions,
    target_version: u16,
    check_existing: bool,
) -> Result<Preflight, RestoreError> {
    let owners: Vec<Option<Addr>> = view
        .slot_owner()
        .into_iter()
        .map(|o| o.and_then(line_addr))
        .collect();
    // A plain RDB is parsed to its trailer (CRC64, truncation, databases); a backup shard
    // whose SHA-256 matched was parsed when it was taken, so it is read again only for what
    // the target needs checked (existing keys; value types when its version is newer).
    let walk: Vec<bool> = sources
        .iter()
        .map(|src| ((opts.verify || opts.merge_dbs) && src.sha256.is_none()) || check_existing)
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(4);
    let checker = async {
        if check_existing {
            count_existing(exec, &owners, rx).await.map(Some)
        } else {
            drop(rx);
            Ok(None)
        }
    };
    let inputs: Vec<_> = sources
        .iter()
        .cloned()
        .zip(walk)
        .map(|(src, walk)| (src, walk, check_existing.then(|| tx.clone())))
        .collect();
    drop(tx);
    // Files in parallel, at most one per core (each check is one pass of CPU work).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let jobs = futures::stream::iter(inputs.into_iter().map(|(src, walk, keys)| {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || check_file(&src, &opts, target_version, walk, keys))
    }))
    .buffered(cores);
    let files = async {
        let mut out = Vec::new();
        let mut jobs = std::pin::pin!(jobs);
        while let Some(r) = jobs.next().await {
            out.push(r.map_err(|e| RestoreError::Refused(format!("file check failed: {e}")))??);
        }
        Ok::<_, RestoreError>(out)
    };
    let (files, existing) = futures::join!(files, checker);
    let files = files?;
    let existing = existing?;
    let mut report = Preflight::default();
    for (check, collisions, examples) in files {
        report.db_collisions += collisions;
        report.collision_examples.extend(
            examples
                .into_iter()
                .take(5 - report.collision_examples.len().min(5)),
        );
        report.files.push(check);
    }
    // Several databases in a standalone RDB: a cluster has one.
    for f in &report.files {
        if f.dbs.len() > 1 && opts.db.is_none() && !opts.merge_dbs {
            let dbs: Vec<String> = f
                .dbs
                .iter()
                .map(|(db, n)| format!("db {db}: {n} keys"))
                .collect();
            return Err(RestoreError::Refused(format!(
                "{} holds {} databases ({}) and a cluster has one: pass --db N to restore one \
                 of them, or --merge-dbs to write them all into db 0; nothing was written",
                f.label,
                f.dbs.len(),
                dbs.join(", ")
            )));
        }
        if let Some(db) = opts.db {
            if !f.dbs.is_empty() && !f.dbs.contains_key(&db) {
                let have: Vec<String> = f.dbs.keys().map(|d| d.to_string()).collect();
                return Err(RestoreError::Usage(format!(
                    "--db {db}: {} has no database {db} (it has {}); nothing was written",
                    f.label,
                    have.join(", ")
                )));
            }
        }
    }
    if let Some((n, examples)) = existing {
        if n > 0 {
            return Err(RestoreError::Refused(format!(
                "the target already holds {n} of the keys (e.g. {}); nothing was written — \
                 use --on-conflict skip or replace",
                examples.join(", ")
            )));
        }
        report.existing = Some(0);
    }
    Ok(report)
}

/// What every file's writer shares.
struct Shared<'a> {
    writer: SlotWriter<'a>,
    errors: Mutex<Vec<String>>,
    per_type: Mutex<BTreeMap<&'static str, Counts>>,
    checkpoint: Mutex<Checkpoint>,
    checkpoint_path: PathBuf,
}

/// Restores every source into the target: progress per file (keys written of its entries)
/// to `ctx.progress`, stopped cleanly (checkpointed) when `ctx.cancel` fires. The checks of
/// [`preflight`] must have passed (`checked` is what they found).
pub async fn restore(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    sources: &[SourceFile],
    opts: &RestoreOptions,
    target_version: u16,
    checked: &Preflight,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let earlier = if opts.resume {
        load_checkpoint(&opts.checkpoint)?.ok_or_else(|| {
            RestoreError::Usage(format!(
                "--resume: no checkpoint at {}: nothing to resume (run without --resume)",
                opts.checkpoint.display()
            ))
        })?
    } else {
        // Saved before the first write, so a run killed at any point after it resumes.
        let fresh = Checkpoint {
            first_mode: Some(opts.on_conflict),
            batch: Some(opts.batch as u64),
            ..Default::default()
        };
        save_checkpoint(&opts.checkpoint, &fresh).map_err(|reason| RestoreError::Checkpoint {
            path: opts.checkpoint.display().to_string(),
            reason,
        })?;
        fresh
    };
    let shared = Shared {
        writer: SlotWriter::new(exec, view, opts.rate, opts.on_conflict == OnConflict::Skip),
        errors: Mutex::new(Vec::new()),
        per_type: Mutex::new(BTreeMap::new()),
        checkpoint: Mutex::new(earlier),
        checkpoint_path: opts.checkpoint.clone(),
    };
    let jobs = sources.iter().map(|src| {
        let shared = &shared;
        let total = checked
            .files
            .iter()
            .find(|f| f.label == src.label)
            .and_then(|f| f.entries)
            .or(src.keys);
        async move {
            let r = restore_file(shared, src, opts, target_version, ctx, total).await;
            (src.label.clone(), r)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let mut per_source = BTreeMap::new();
    let mut total = Counts::default();
    for (label, r) in results {
        let c = r?;
        total.add(&c);
        per_source.insert(label, c);
    }
    let interrupted = ctx.cancel.is_cancelled();
    // Every entry of the source accounted for: none failed, none left unread.
    let complete =
        !interrupted && total.failed == 0 && checked.entries().is_none_or(|n| total.entries() >= n);
    if complete {
        let _ = std::fs::remove_file(&opts.checkpoint);
    }
    let elapsed = started.elapsed();
    let per_type = shared.per_type.into_inner().unwrap_or_default();
    let errors = shared.errors.into_inner().unwrap_or_default();
    Ok(RestoreReport {
        keys_per_sec: (total.restored as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
        per_source,
        per_type,
        total,
        source_keys: checked.entries(),
        complete,
        errors,
        target_rdb_version: target_version,
        interrupted,
        resumed: opts.resume,
        db_collisions: checked.db_collisions,
        elapsed_ms: elapsed.as_millis(),
    })
}

/// One batch from the parser: keys to send, the entries it filtered or found expired, and
/// the index of its last entry.
type Batch = (Vec<Write>, Counts, u64);

/// Reads one file on a blocking thread and hands over batches: entries the checkpoint has as
/// done are skipped (but not those it must retry), and each key knows whether it is sent with
/// `REPLACE`.
fn produce(
    src: &SourceFile,
    opts: &RestoreOptions,
    target_version: u16,
    earlier: &FileProgress,
    replace_window: u64,
    may_replace_ours: bool,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Result<(), RestoreError> {
    let p = crate::ops::rdb::parser(&src.path)?;
    let file_version = p.version();
    // Values are decoded only when one needs re-encoding for the target (`payload_for`).
    let mut p = p
        .decode_values(false)
        .spill_raw_above(SPILL_ABOVE, spill_file());
    let now = crate::ops::rdb::now_ms();
    let batch = opts.batch.max(1);
    let (mut index, mut bytes, mut window) = (0u64, 0usize, replace_window);
    let mut retry = earlier.retry.iter().copied().peekable();
    let mut resend = earlier.resend.iter().copied().peekable();
    let mut out = Vec::with_capacity(batch.min(4096));
    let mut c = Counts::default();
    for item in &mut p {
        let item = item.map_err(|source| crate::ops::rdb::RdbFileError::Rdb {
            path: src.path.display().to_string(),
            source,
        })?;
        let Item::Entry(mut e) = item else { continue };
        index += 1;
        let retrying = index <= earlier.done;
        let mut ours_for_sure = false;
        if retrying {
            while retry.next_if(|&i| i < index).is_some() {}
            if retry.next_if_eq(&index).is_none() {
                continue; // done by an earlier run
            }
            while resend.next_if(|&i| i < index).is_some() {}
            ours_for_sure = resend.next_if_eq(&index).is_some();
        }
        if !selected(&e, opts) {
            c.skipped_filtered += 1;
        } else if e.expire_ms.is_some_and(|x| x <= now) {
            c.skipped_expired += 1;
        } else {
            // Keys an earlier run may have written (retried, or sent past its last
            // checkpoint) are replaced only when none of the keys existed before it began.
            let ours = retrying || window > 0;
            if !retrying {
                window = window.saturating_sub(1);
            }
            let replace = opts.on_conflict == OnConflict::Replace
                || ours_for_sure
                || (ours && may_replace_ours);
            let op = prepare_op(
                &mut e,
                file_version,
                target_version,
                opts.big_key_bytes,
                replace,
            )
            .map_err(|why| {
                RestoreError::Refused(format!("{}: key {}: {why}", src.label, show_key(&e.key)))
            })?;
            bytes += batch_cost(&op);
            out.push(Write {
                slot: key_slot(&e.key),
                kind: type_name(e.type_byte),
                key: e.key,
                index,
                op,
            });
        }
        if out.len() >= batch || bytes >= BATCH_BYTES {
            let full = std::mem::replace(&mut out, Vec::with_capacity(batch.min(4096)));
            bytes = 0;
            if tx
                .blocking_send((full, std::mem::take(&mut c), index))
                .is_err()
            {
                return Ok(());
            }
        }
    }
    let _ = tx.blocking_send((out, c, index));
    Ok(())
}

async fn restore_file(
    shared: &Shared<'_>,
    src: &SourceFile,
    opts: &RestoreOptions,
    target_version: u16,
    ctx: &JobCtx,
    total: Option<u64>,
) -> Result<Counts, RestoreError> {
    let (earlier, earlier_batch, first_mode) = {
        let cp = shared.checkpoint.lock().map_err(|_| poisoned())?;
        (
            cp.files.get(&src.label).cloned().unwrap_or_default(),
            cp.batch,
            cp.first_mode.unwrap_or(OnConflict::Fail),
        )
    };
    // After a crash, up to CHECKPOINT_EVERY + 1 batches of the interrupted run past the
    // checkpoint may already be in the target. Under `fail` (the target held none of the
    // keys when the restore began) those keys are ours and are replaced on resume; under
    // `skip` a key found there may have existed before, so it is left alone either way.
    // Counted in keys sent, so a resume with another --batch covers them too.
    let may_replace_ours = first_mode == OnConflict::Fail && opts.on_conflict == OnConflict::Fail;
    let replace_window = if opts.resume && earlier.done > 0 {
        (CHECKPOINT_EVERY + 1) * earlier_batch.unwrap_or(opts.batch as u64)
    } else {
        0
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let producer = {
        let (src, opts, earlier) = (src.clone(), opts.clone(), earlier.clone());
        tokio::task::spawn_blocking(move || {
            produce(
                &src,
                &opts,
                target_version,
                &earlier,
                replace_window,
                may_replace_ours,
                tx,
            )
        })
    };
    // This run's outcomes, and the entries that did not reach the target.
    let mut run = Counts::default();
    let mut failed: Vec<u64> = Vec::new();
    let mut since_save = 0u64;
    let mut last_index = None;
    let mut written = 0u64;
    let mut lane = shared.writer.lane();
    // Entries this run wrote that no replica confirmed: re-sent by --resume.
    let mut unconfirmed: Vec<u64> = Vec::new();
    // A checkpoint: the fence first, so it counts only what a replica has.
    let save = async |index: u64,
                      run: &mut Counts,
                      failed: &mut Vec<u64>,
                      unconfirmed: &mut Vec<u64>,
                      lane: &mut Lane<'_, '_>| {
        fence(shared, lane, run, failed, unconfirmed).await;
        save_progress(
            shared,
            &src.label,
            &earlier,
            index,
            run,
            failed,
            unconfirmed,
            opts.batch,
        );
    };
    while let Some((batch, c, index)) = rx.recv().await {
        run.skipped_filtered += c.skipped_filtered;
        run.skipped_expired += c.skipped_expired;
        let done = lane.send(batch).await;
        written += done.len() as u64;
        ctx.progress.shard(&src.label, "restore", written, total);
        count(shared, done, &mut run, &mut failed);
        last_index = Some(index);
        since_save += 1;
        let stopping = ctx.cancel.is_cancelled();
        if since_save >= CHECKPOINT_EVERY || stopping {
            save(index, &mut run, &mut failed, &mut unconfirmed, &mut lane).await;
            since_save = 0;
        }
        if stopping {
            break;
        }
    }
    if let (Some(index), true) = (last_index, since_save > 0) {
        save(index, &mut run, &mut failed, &mut unconfirmed, &mut lane).await;
    }
    drop(rx);
    producer
        .await
        .map_err(|e| RestoreError::Refused(format!("parser thread failed: {e}")))??;
    // Earlier runs' outcomes, and their failures this run did not reach (interrupted).
    let reached = last_index.unwrap_or(0);
    let mut total = run;
    total.already_done = earlier.counts.restored + earlier.counts.already_done;
    total.skipped_expired += earlier.counts.skipped_expired;
    total.skipped_filtered += earlier.counts.skipped_filtered;
    total.skipped_existing += earlier.counts.skipped_existing;
    total.failed += earlier.retry.iter().filter(|&&i| i > reached).count() as u64;
    Ok(total)
}

fn poisoned() -> RestoreError {
    RestoreError::Refused("internal error: a lock was poisoned".into())
}

/// Records `file` as handled up to entry `index`: this run's outcomes added to the earlier
/// runs', failed entries kept for a retry (with the earlier failures not reached yet).
#[allow(clippy::too_many_arguments)]
fn save_progress(
    shared: &Shared<'_>,
    file: &str,
    earlier: &FileProgress,
    index: u64,
    run: &Counts,
    failed: &[u64],
    unconfirmed: &[u64],
    batch: usize,
) {
    let Ok(mut cp) = shared.checkpoint.lock() else {
        return;
    };
    let mut retry: Vec<u64> = failed
        .iter()
        .copied()
        .chain(earlier.retry.iter().copied().filter(|&i| i > index))
        .collect();
    retry.sort_unstable();
    retry.dedup();
    let mut resend: Vec<u64> = unconfirmed
        .iter()
        .copied()
        .chain(earlier.resend.iter().copied().filter(|&i| i > index))
        .collect();
    resend.sort_unstable();
    resend.dedup();
    let mut counts = earlier.counts.clone();
    counts.restored += run.restored;
    counts.skipped_expired += run.skipped_expired;
    counts.skipped_filtered += run.skipped_filtered;
    counts.skipped_existing += run.skipped_existing;
    cp.files.insert(
        file.to_string(),
        FileProgress {
            done: earlier.done.max(index),
            retry,
            resend,
            counts,
        },
    );
    // The largest batch of any run on this checkpoint: a file that starts later in a
    // resumed run still sizes its replace window for the run that was interrupted.
    cp.batch = Some(cp.batch.unwrap_or(0).max(batch as u64));
    if let Err(e) = save_checkpoint(&shared.checkpoint_path, &cp) {
        note(
            &shared.errors,
            format!(
                "checkpoint {}: {e} (a resume may redo more work)",
                shared.checkpoint_path.display()
            ),
        );
    }
}

/// Counts a batch's outcomes into this run's counts and the per-type ones; failed entries
/// are kept for a retry and their errors noted.
fn count(shared: &Shared<'_>, done: Vec<Done>, run: &mut Counts, failed: &mut Vec<u64>) {
    // Per-type counts of this batch, merged into the shared map once.
    let mut local: BTreeMap<&'static str, Counts> = BTreeMap::new();
    for d in done {
        let c = local.entry(d.kind).or_default();
        match d.outcome {
            Outcome::Written { .. } => {
                run.restored += 1;
                c.restored += 1;
            }
            Outcome::Exists => {
                run.skipped_existing += 1;
                c.skipped_existing += 1;
            }
            Outcome::Failed(why) => {
                run.failed += 1;
                c.failed += 1;
                failed.push(d.index);
                note(&shared.errors, format!("{}: {why}", show_key(&d.key)));
            }
        }
    }
    if let Ok(mut m) = shared.per_type.lock() {
        for (kind, c) in local {
            m.entry(kind).or_default().add(&c);
        }
    }
}

/// The replication fence before a checkpoint: keys no replica confirmed move from restored
/// to failed (and `unconfirmed`, re-sent with REPLACE by --resume), one error line per
/// master.
async fn fence(
    shared: &Shared<'_>,
    lane: &mut Lane<'_, '_>,
    run: &mut Counts,
    failed: &mut Vec<u64>,
    unconfirmed: &mut Vec<u64>,
) {
    for u in lane.confirm().await {
        note(
            &shared.errors,
            format!(
                "{}: {} restored key(s) not confirmed by a replica ({}): \
                 --resume sends them again",
                u.addr,
                u.writes.len(),
                u.why
            ),
        );
        let mut per_type = shared.per_type.lock().ok();
        for (index, kind) in u.writes {
            run.restored = run.restored.saturating_sub(1);
            run.failed += 1;
            if let Some(m) = per_type.as_mut() {
                let c = m.entry(kind).or_default();
                c.restored = c.restored.saturating_sub(1);
                c.failed += 1;
            }
            failed.push(index);
            unconfirmed.push(index);
        }
    }
}

fn note(errors: &Mutex<Vec<String>>, e: String) {
    if let Ok(mut v) = errors.lock() {
        if v.len() < 20 {
            v.push(e);
        }
    }
}

/// Sum of `DBSIZE` over the target's masters (0: nothing can conflict).
pub async fn target_keys(exec: &Executor, view: &ClusterView) -> u64 {
    let masters: Vec<Addr> = view.masters().filter_map(line_addr).collect();
    let fan = exec
        .run(masters, |addr, mut conn| async move {
            query::<u64>(&addr, &mut conn, &redis::cmd("DBSIZE")).await
        })
        .await;
    fan.ok.values().sum::<u64>() + fan.failed.len() as u64
}
