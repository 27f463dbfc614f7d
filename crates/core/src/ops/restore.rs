//! Restore RDB files (a backup set's shards, or any RDB) into a cluster of any shape: every
//! key routed by its slot to the master that owns it in the target, written with `RESTORE …
//! ABSTTL` (the DUMP payload built from the file's raw value bytes, so nothing is re-encoded
//! unless the target's RDB version requires it), pipelined per node and concurrent across
//! nodes and files, following MOVED/ASK, checkpointing so an interrupted run resumes.

use rcops_formats::slot::key_slot;
use rcops_rdb::{dump_payload, min_version_for_type, type_name, Entry, Item, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::fanout::{query, Executor};
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};
use crate::transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    Fail,
    Skip,
    Replace,
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub label: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub on_conflict: OnConflict,
    pub pattern: Option<String>,
    pub types: Vec<String>,
    pub db: Option<u64>,
    /// Keys per pipeline round per node.
    pub batch: usize,
    pub checkpoint: PathBuf,
    pub resume: bool,
    /// Cap on keys written per second, all files together (spares a production target).
    pub rate: Option<u64>,
}

/// Paces batches to a keys-per-second cap shared by every file.
struct Pace {
    start: Instant,
    rate: Option<u64>,
    admitted: std::sync::atomic::AtomicU64,
}

impl Pace {
    async fn admit(&self, n: u64) {
        let Some(rate) = self.rate.filter(|&r| r > 0) else {
            return;
        };
        let before = self.admitted.fetch_add(n, Ordering::Relaxed);
        let due = self.start + std::time::Duration::from_secs_f64(before as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub restored: u64,
    pub skipped_expired: u64,
    pub skipped_filtered: u64,
    pub skipped_existing: u64,
    /// Restored by an earlier, interrupted run (skipped on --resume).
    pub already_done: u64,
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.restored += o.restored;
        self.skipped_expired += o.skipped_expired;
        self.skipped_filtered += o.skipped_filtered;
        self.skipped_existing += o.skipped_existing;
        self.already_done += o.already_done;
        self.failed += o.failed;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub per_source: BTreeMap<String, Counts>,
    pub per_type: BTreeMap<&'static str, Counts>,
    pub total: Counts,
    /// First errors, with the key and the reason.
    pub errors: Vec<String>,
    pub target_rdb_version: u16,
    pub interrupted: bool,
    pub elapsed_ms: u128,
    pub keys_per_sec: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    File(#[from] crate::ops::rdb::RdbFileError),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("{0}")]
    Refused(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

/// Progress per source: how many entries of the file (in file order) are done, and the
/// largest batch size of the runs that wrote it (which bounds what they sent past `done`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub done: BTreeMap<String, u64>,
    #[serde(default)]
    pub batch: Option<u64>,
}

fn load_checkpoint(path: &Path) -> Result<Checkpoint, RestoreError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| RestoreError::Checkpoint {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(RestoreError::Checkpoint {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Batches between two checkpoint saves.
const CHECKPOINT_EVERY: u64 = 16;

/// Marks `file` done up to entry `index` and saves the checkpoint.
fn record_progress(
    checkpoint: &Mutex<Checkpoint>,
    path: &Path,
    file: &str,
    index: u64,
    batch: usize,
) {
    if let Ok(mut cp) = checkpoint.lock() {
        cp.done.insert(file.to_string(), index);
        // The largest batch of any run on this checkpoint: a file that starts later in a
        // resumed run still sizes its replace window for the run that was interrupted.
        cp.batch = Some(cp.batch.unwrap_or(0).max(batch as u64));
        save_checkpoint(path, &cp);
    }
}

fn save_checkpoint(path: &Path, c: &Checkpoint) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("tmp");
    if let Ok(t) = serde_json::to_string(c) {
        if std::fs::write(&tmp, t).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
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

/// One key ready to send.
struct Prepared {
    key: Vec<u8>,
    payload: Vec<u8>,
    /// Absolute expiry in ms, 0 for none.
    abs_ttl: i64,
    kind: &'static str,
    slot: u16,
}

/// The DUMP payload for `e` on a target of `target_version`, re-encoded when needed.
pub(crate) fn payload_for(
    e: &mut Entry,
    file_version: u16,
    target_version: u16,
) -> Result<Vec<u8>, String> {
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
    match reencode(&e.value) {
        Some(raw) => Ok(dump_payload(&raw, target_version.min(9))),
        None => Err(format!(
            "type {} (RDB type {}) needs RDB version {} but the target accepts {}",
            type_name(e.type_byte),
            e.type_byte,
            min_version_for_type(e.type_byte, file_version),
            target_version
        )),
    }
}

fn glob_ok(pattern: &Option<String>, key: &[u8]) -> bool {
    pattern
        .as_deref()
        .is_none_or(|p| rcops_formats::conf::glob_bytes(p.as_bytes(), key))
}

/// Checks that every key of every file can be written to the target before anything is:
/// value types vs the target's RDB version, and (for `fail`) keys that already exist there.
pub async fn preflight(
    exec: &Executor,
    view: &ClusterView,
    sources: &[SourceFile],
    opts: &RestoreOptions,
    target_version: u16,
    check_existing: bool,
) -> Result<(), RestoreError> {
    let owners: Vec<Option<Addr>> = view
        .slot_owner()
        .into_iter()
        .map(|o| o.and_then(line_addr))
        .collect();
    // Nothing to check when no key can exist and every file is readable by the target.
    if !check_existing {
        let mut all_readable = true;
        for src in sources {
            all_readable &= crate::ops::rdb::parser(&src.path)?.version() <= target_version;
        }
        if all_readable {
            return Ok(());
        }
    }
    let mut existing: Vec<String> = Vec::new();
    let mut existing_count = 0u64;
    for src in sources {
        let p = crate::ops::rdb::parser(&src.path)?;
        let file_version = p.version();
        let mut p = p.decode_values(file_version > target_version);
        let mut batch: HashMap<Addr, Vec<Vec<u8>>> = HashMap::new();
        let mut pending = 0usize;
        loop {
            let item = p.next();
            let done = item.is_none();
            if let Some(item) = item {
                let item = item.map_err(|source| crate::ops::rdb::RdbFileError::Rdb {
                    path: src.path.display().to_string(),
                    source,
                })?;
                if let Item::Entry(mut e) = item {
                    if !selected(&e, opts) {
                        continue;
                    }
                    payload_for(&mut e, file_version, target_version).map_err(|why| {
                        RestoreError::Refused(format!(
                            "{}: key {:?}: {why}; nothing was written",
                            src.label,
                            String::from_utf8_lossy(&e.key)
                        ))
                    })?;
                    if check_existing {
                        if let Some(a) = &owners[usize::from(key_slot(&e.key))] {
                            batch.entry(a.clone()).or_default().push(e.key);
                            pending += 1;
                        }
                    }
                }
            }
            if pending >= 5000 || (done && pending > 0) {
                for (addr, keys) in batch.drain() {
                    let mut conn = exec.conn(&addr).await?;
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("EXISTS").arg(k);
                    }
                    let found: Vec<i64> = pipe
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| NodeError::from_redis(&addr, &e))?;
                    for (k, f) in keys.iter().zip(found) {
                        if f > 0 {
                            existing_count += 1;
                            if existing.len() < 5 {
                                existing.push(String::from_utf8_lossy(k).into_owned());
                            }
                        }
                    }
                }
                pending = 0;
            }
            if done {
                break;
            }
        }
    }
    if existing_count > 0 {
        return Err(RestoreError::Refused(format!(
            "the target already holds {existing_count} of the keys (e.g. {}); nothing was written — \
             use --on-conflict skip or replace",
            existing.join(", ")
        )));
    }
    Ok(())
}

fn selected(e: &Entry, opts: &RestoreOptions) -> bool {
    opts.db.is_none_or(|d| d == e.db)
        && glob_ok(&opts.pattern, &e.key)
        && (opts.types.is_empty() || opts.types.iter().any(|t| t == type_name(e.type_byte)))
}

/// Where each slot goes; refreshed on MOVED.
struct Router {
    owners: Vec<Option<Addr>>,
}

/// Restores every source into the target. `progress(keys)` is called as keys complete.
pub async fn restore(
    exec: &Executor,
    view: &ClusterView,
    sources: &[SourceFile],
    opts: &RestoreOptions,
    target_version: u16,
    stop: Arc<AtomicBool>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let checkpoint = if opts.resume {
        load_checkpoint(&opts.checkpoint)?
    } else {
        Checkpoint::default()
    };
    let checkpoint = Arc::new(Mutex::new(checkpoint));
    let router = Arc::new(Mutex::new(Router {
        owners: view
            .slot_owner()
            .into_iter()
            .map(|o| o.and_then(line_addr))
            .collect(),
    }));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let per_type = Arc::new(Mutex::new(BTreeMap::<&'static str, Counts>::new()));
    let pool = Arc::new(Pool::default());
    let pace = Arc::new(Pace {
        start: Instant::now(),
        rate: opts.rate,
        admitted: Default::default(),
    });
    let jobs = sources.iter().map(|src| {
        let pace = pace.clone();
        let pool = pool.clone();
        let checkpoint = checkpoint.clone();
        let router = router.clone();
        let errors = errors.clone();
        let per_type = per_type.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        async move {
            let skip = checkpoint
                .lock()
                .ok()
                .and_then(|c| c.done.get(&src.label).copied())
                .unwrap_or(0);
            let r = restore_file(
                exec,
                src,
                opts,
                target_version,
                skip,
                &router,
                &errors,
                &per_type,
                &stop,
                &progress,
                &checkpoint,
                &pace,
                &pool,
            )
            .await;
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
    let interrupted = stop.load(Ordering::Relaxed);
    if !interrupted && total.failed == 0 {
        let _ = std::fs::remove_file(&opts.checkpoint);
    }
    let elapsed = started.elapsed();
    let per_type = per_type.lock().map(|p| p.clone()).unwrap_or_default();
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(RestoreReport {
        keys_per_sec: (total.restored as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
        per_source,
        per_type,
        total,
        errors,
        target_rdb_version: target_version,
        interrupted,
        elapsed_ms: elapsed.as_millis(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn restore_file(
    exec: &Executor,
    src: &SourceFile,
    opts: &RestoreOptions,
    target_version: u16,
    skip: u64,
    router: &Mutex<Router>,
    errors: &Mutex<Vec<String>>,
    per_type: &Mutex<BTreeMap<&'static str, Counts>>,
    stop: &AtomicBool,
    progress: &Arc<dyn Fn(u64) + Send + Sync>,
    checkpoint: &Mutex<Checkpoint>,
    pace: &Pace,
    pool: &Pool,
) -> Result<Counts, RestoreError> {
    let mut counts = Counts {
        already_done: skip,
        ..Default::default()
    };
    // Parsing runs on a blocking thread and hands over ready batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Prepared>, Counts, u64)>(4);
    let path = src.path.clone();
    let label = src.label.clone();
    let opts2 = opts.clone();
    let batch = opts.batch.max(1);
    let producer = tokio::task::spawn_blocking(move || -> Result<(), RestoreError> {
        let p = crate::ops::rdb::parser(&path)?;
        let file_version = p.version();
        // Values are only decoded when the target may need them re-encoded.
        let mut p = p.decode_values(file_version > target_version);
        let now = crate::ops::rdb::now_ms();
        let mut index = 0u64;
        let mut out = Vec::with_capacity(batch);
        let mut c = Counts::default();
        for item in &mut p {
            let item = item.map_err(|source| crate::ops::rdb::RdbFileError::Rdb {
                path: path.display().to_string(),
                source,
            })?;
            let Item::Entry(mut e) = item else { continue };
            index += 1;
            if index <= skip {
                continue;
            }
            if !selected(&e, &opts2) {
                c.skipped_filtered += 1;
            } else if e.expire_ms.is_some_and(|x| x <= now) {
                c.skipped_expired += 1;
            } else {
                let payload = payload_for(&mut e, file_version, target_version).map_err(|why| {
                    RestoreError::Refused(format!(
                        "{label}: key {:?}: {why}",
                        String::from_utf8_lossy(&e.key)
                    ))
                })?;
                out.push(Prepared {
                    slot: key_slot(&e.key),
                    abs_ttl: e.expire_ms.unwrap_or(0),
                    kind: type_name(e.type_byte),
                    key: e.key,
                    payload,
                });
            }
            if out.len() >= batch {
                let full = std::mem::replace(&mut out, Vec::with_capacity(batch));
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
    });
    // The checkpoint is saved every CHECKPOINT_EVERY batches (each save is a rename, which
    // ext4 turns into a data flush), on Ctrl-C and at the end of the file. After a crash, up
    // to CHECKPOINT_EVERY + 1 batches of the interrupted run past the checkpoint may already
    // be in the target: those keys are ours, so on resume they are replaced. Counted in keys
    // sent, so a resume with another --batch covers them too (same file and filters; only
    // more keys can have expired since, which moves the window further, never shorter).
    let mut replace_left: u64 = if opts.resume && skip > 0 {
        let earlier_batch = checkpoint
            .lock()
            .ok()
            .and_then(|c| c.batch)
            .unwrap_or(opts.batch as u64);
        (CHECKPOINT_EVERY + 1) * earlier_batch
    } else {
        0
    };
    let save = |index| {
        record_progress(
            checkpoint,
            &opts.checkpoint,
            &src.label,
            index,
            opts.batch.max(1),
        )
    };
    let mut since_save = 0u64;
    let mut last_index = None;
    while let Some((batch, c, index)) = rx.recv().await {
        counts.skipped_filtered += c.skipped_filtered;
        counts.skipped_expired += c.skipped_expired;
        let replace = opts.on_conflict == OnConflict::Replace || replace_left > 0;
        replace_left = replace_left.saturating_sub(batch.len() as u64);
        pace.admit(batch.len() as u64).await;
        let sent = send_batch(exec, pool, batch, replace, router, errors, per_type).await;
        counts.restored += sent.restored;
        counts.skipped_existing += sent.skipped_existing;
        counts.failed += sent.failed;
        progress(sent.restored + sent.skipped_existing + sent.failed);
        last_index = Some(index);
        since_save += 1;
        let stopping = stop.load(Ordering::Relaxed);
        if since_save >= CHECKPOINT_EVERY || stopping {
            save(index);
            since_save = 0;
        }
        if stopping {
            break;
        }
    }
    if let (Some(index), true) = (last_index, since_save > 0) {
        save(index);
    }
    drop(rx);
    producer
        .await
        .map_err(|e| RestoreError::Refused(format!("parser thread failed: {e}")))??;
    Ok(counts)
}

/// Sends one batch: grouped by owner, one pipeline per node, all nodes at once; keys that
/// come back MOVED/ASK are retried at the new owner.
async fn send_batch(
    exec: &Executor,
    pool: &Pool,
    batch: Vec<Prepared>,
    replace: bool,
    router: &Mutex<Router>,
    errors: &Mutex<Vec<String>>,
    per_type: &Mutex<BTreeMap<&'static str, Counts>>,
) -> Counts {
    let mut counts = Counts::default();
    // Per-type counts of this batch, merged into the shared map once at the end.
    let mut local: BTreeMap<&'static str, Counts> = BTreeMap::new();
    let mut todo: Vec<(Prepared, Option<Addr>, bool)> =
        batch.into_iter().map(|p| (p, None, false)).collect();
    for _attempt in 0..5 {
        if todo.is_empty() {
            break;
        }
        let mut by_node: HashMap<Addr, Vec<(Prepared, bool)>> = HashMap::new();
        {
            // One lock per batch, and an address cloned per node rather than per key.
            let routes = router.lock().ok();
            for (p, forced, asking) in todo.drain(..) {
                let owner = forced.as_ref().or_else(|| {
                    routes
                        .as_ref()
                        .and_then(|r| r.owners[usize::from(p.slot)].as_ref())
                });
                match owner {
                    Some(a) => match by_node.get_mut(a) {
                        Some(v) => v.push((p, asking)),
                        None => {
                            by_node.insert(a.clone(), vec![(p, asking)]);
                        }
                    },
                    None => {
                        let why = format!("slot {} has no owner in the target", p.slot);
                        fail(&mut counts, &mut local, errors, &p, why);
                    }
                }
            }
        }
        let rounds =
            futures::future::join_all(by_node.into_iter().map(|(addr, items)| async move {
                let r = pipeline(exec, pool, &addr, &items, replace).await;
                (addr, items, r)
            }))
            .await;
        for (addr, items, r) in rounds {
            match r {
                Err(e) => {
                    for (p, _) in items {
                        fail(&mut counts, &mut local, errors, &p, e.to_string());
                    }
                }
                Ok(replies) => {
                    for ((p, _), reply) in items.into_iter().zip(replies) {
                        match reply {
                            Ok(()) => {
                                counts.restored += 1;
                                local.entry(p.kind).or_default().restored += 1;
                            }
                            Err(text) => {
                                let code = text.split_whitespace().next().unwrap_or("");
                                match code {
                                    "MOVED" | "ASK" => {
                                        let to = text
                                            .split_whitespace()
                                            .nth(2)
                                            .and_then(|a| a.parse::<Addr>().ok());
                                        if code == "MOVED" {
                                            if let (Some(t), Ok(mut r)) = (&to, router.lock()) {
                                                r.owners[usize::from(p.slot)] = Some(t.clone());
                                            }
                                        }
                                        todo.push((p, to, code == "ASK"));
                                    }
                                    "BUSYKEY" => {
                                        counts.skipped_existing += 1;
                                        local.entry(p.kind).or_default().skipped_existing += 1;
                                    }
                                    _ => {
                                        let why = format!("{addr}: {text}");
                                        fail(&mut counts, &mut local, errors, &p, why);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for (p, _, _) in todo {
        let why = "still redirected after 5 attempts".to_string();
        fail(&mut counts, &mut local, errors, &p, why);
    }
    if let Ok(mut m) = per_type.lock() {
        for (kind, c) in local {
            m.entry(kind).or_default().add(&c);
        }
    }
    counts
}

/// Counts one key as failed, per type too, keeping the reason among the first errors.
fn fail(
    counts: &mut Counts,
    per_type: &mut BTreeMap<&'static str, Counts>,
    errors: &Mutex<Vec<String>>,
    p: &Prepared,
    why: String,
) {
    counts.failed += 1;
    per_type.entry(p.kind).or_default().failed += 1;
    note(
        errors,
        format!("{:?}: {why}", String::from_utf8_lossy(&p.key)),
    );
}

fn note(errors: &Mutex<Vec<String>>, e: String) {
    if let Ok(mut v) = errors.lock() {
        if v.len() < 20 {
            v.push(e);
        }
    }
}

/// Bulk connections per node, shared by the files being restored: taken for one pipeline,
/// put back after it (dropped after an error).
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Addr, Vec<Transport>>>,
}

impl Pool {
    async fn take(&self, exec: &Executor, addr: &Addr) -> Result<Transport, NodeError> {
        let idle = self
            .idle
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(addr).and_then(Vec::pop));
        match idle {
            Some(t) => Ok(t),
            None => Transport::open(exec.options(), addr).await,
        }
    }

    fn put(&self, addr: &Addr, t: Transport) {
        if let Ok(mut m) = self.idle.lock() {
            m.entry(addr.clone()).or_default().push(t);
        }
    }
}

/// One pipeline of RESTOREs to one node; per key `Ok` or the error text. Commands are encoded
/// straight into the output buffer and replies framed, not decoded (TCP or TLS alike).
async fn pipeline(
    exec: &Executor,
    pool: &Pool,
    addr: &Addr,
    items: &[(Prepared, bool)],
    replace: bool,
) -> Result<Vec<Result<(), String>>, NodeError> {
    let mut t = pool.take(exec, addr).await?;
    let n = items.len() + items.iter().filter(|(_, a)| *a).count();
    let replies = t
        .raw(addr, n, |out| {
            for (p, asking) in items {
                if *asking {
                    rcops_formats::resp::encode_command(&[b"ASKING"], out);
                }
                let ttl = p.abs_ttl.to_string();
                let mut args: [&[u8]; 6] =
                    [b"RESTORE", &p.key, ttl.as_bytes(), &p.payload, b"", b""];
                let mut n = 4;
                if replace {
                    args[n] = b"REPLACE";
                    n += 1;
                }
                if p.abs_ttl > 0 {
                    args[n] = b"ABSTTL";
                    n += 1;
                }
                rcops_formats::resp::encode_command(&args[..n], out);
            }
        })
        .await;
    let r = replies.map(|replies| {
        let mut it = replies.into_iter();
        items
            .iter()
            .map(|(_, asking)| {
                if *asking {
                    it.next(); // ASKING's +OK
                }
                match it.next().flatten() {
                    None => Ok(()),
                    Some(e) => Err(e),
                }
            })
            .collect()
    });
    if r.is_ok() {
        pool.put(addr, t);
    }
    r
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
