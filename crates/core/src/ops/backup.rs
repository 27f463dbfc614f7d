//! Cluster backups over the replication protocol: every shard's RDB streamed at once (from a
//! replica when it has a healthy one), compressed with zstd and hashed (SHA-256) on the way to
//! disk, parsed as it arrives (key count, RDB version — a corrupt stream fails the shard), into
//! a backup set written under a temporary name and renamed when complete. Also `list`,
//! `verify` and `prune`.

use crate::job::JobCtx;
use futures::StreamExt;
use rcops_formats::slot::{format_ranges, key_slot, SlotRange, SlotSet};
use rcops_rdb::{Item, Parser};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::node::{Addr, ConnectOptions};
use crate::repl::{ChunkReader, Psync, ReplError, ReplStream, Start};
use crate::topology::ClusterView;

pub const MANIFEST: &str = "manifest.json";

/// zstd level 1: RDBs (already LZF-compressed strings, packed encodings) shrink to ~13% of
/// their size at 1 and ~11% at 3, and level 3 cost twice the CPU on a box whose cores the
/// snapshotting servers need.
pub(crate) const ZSTD_LEVEL: i32 = 1;

/// One shard of a backup set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardManifest {
    pub master_id: String,
    /// The node the snapshot was taken from, and its role.
    pub node: String,
    pub role: String,
    /// Slot ranges in `CLUSTER NODES` notation.
    pub slots: String,
    pub file: String,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub sha256: String,
    pub rdb_version: u16,
    pub server_version: String,
    pub replid: String,
    pub offset: u64,
    pub keys: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sources tried before the one used, and why each was passed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    /// `complete` or `partial` (some shard failed: never restore it as if complete).
    pub status: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub rcops_version: String,
    pub cluster_nodes: String,
    pub shards: Vec<ShardManifest>,
    /// Nodes that were not shards or sources (slotless or failed masters, replicas out of
    /// sync): what an operator should know, not a reason for `partial`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(String),
    #[error("no backup {0:?} in {1}")]
    NotFound(String, String),
    #[error("no master owns slots: nothing to back up")]
    NoShards,
    /// Stopped by Ctrl-C: the unfinished set was removed.
    #[error(
        "interrupted: backup {0} stopped and its unfinished files removed ({1}); nothing was kept"
    )]
    Interrupted(String, String),
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> BackupError {
    BackupError::Io(format!("{what}: {e}"))
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `CLUSTER NODES` text of a node that answered discovery, for the manifest.
pub async fn cluster_nodes_text(
    exec: &crate::Executor,
    view: &ClusterView,
) -> Result<String, crate::NodeError> {
    let Some(addr) = view
        .snapshots
        .values()
        .find(|s| s.own_view)
        .map(|s| s.addr.clone())
    else {
        return Ok(String::new());
    };
    let mut conn = exec.conn(&addr).await?;
    crate::fanout::query(&addr, &mut conn, redis::cmd("CLUSTER").arg("NODES")).await
}

/// Which nodes each shard may be read from, best first (see
/// [`ClusterView::read_sources`]: the selection rule key scans share).
#[derive(Debug, Clone)]
pub struct Source {
    pub master_id: String,
    /// `(address, "replica" | "master")`, best first; empty when none is usable.
    pub candidates: Vec<(Addr, &'static str)>,
    /// Why no node is usable, when none is.
    pub why_none: Option<String>,
    pub slots: SlotSet,
}

/// Each shard's sources, and warnings about the nodes passed over.
pub fn sources(view: &ClusterView, from_replicas: bool) -> (Vec<Source>, Vec<String>) {
    let plan = view.read_sources(from_replicas);
    let shards = plan
        .shards
        .into_iter()
        .map(|s| Source {
            master_id: s.master_id,
            candidates: s
                .candidates
                .into_iter()
                .map(|(a, replica)| (a, if replica { "replica" } else { "master" }))
                .collect(),
            why_none: s.why_none,
            slots: s.slots,
        })
        .collect();
    (shards, plan.warnings)
}

/// What the disk side of one shard produced.
pub(crate) struct Written {
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub sha256: String,
    pub rdb_version: u16,
    pub server_version: String,
    pub keys: u64,
}

/// Counts and hashes what reaches the file.
pub(crate) struct Hashing<W: Write> {
    pub inner: W,
    pub sha: Sha256,
    pub bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.sha.update(&b[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The disk side: compress, hash, parse. Runs on a blocking thread.
pub(crate) fn write_shard(
    path: &Path,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Written, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hashing = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        sha: Sha256::new(),
        bytes: 0,
    };
    let enc = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(|e| e.to_string())?;
    let mut tee = ChunkReader::new(rx, enc);
    // A parse failure caused by a failed write (full disk, …) reports the write.
    let (rdb_version, keys, server_version) =
        walk_stream(&mut tee).map_err(|e| match tee.write_error.take() {
            Some(w) => w,
            None => format!("RDB stream: {e}"),
        })?;
    // Anything after the trailer still belongs in the file.
    std::io::copy(&mut tee, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let raw = tee.raw;
    let hashing = tee.out.finish().map_err(|e| e.to_string())?;
    let Hashing {
        inner, sha, bytes, ..
    } = hashing;
    let file = inner.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(Written {
        raw_bytes: raw,
        compressed_bytes: bytes,
        sha256: hex(&sha.finalize()),
        rdb_version,
        server_version,
        keys,
    })
}

/// Walks an RDB stream without decoding values: (RDB version, keys, server version).
fn walk_stream(r: impl Read) -> Result<(u16, u64, String), rcops_rdb::RdbError> {
    let mut p = Parser::new(r)?.decode_values(false).keep_raw(false);
    let (mut keys, mut server_version) = (0u64, String::new());
    for item in &mut p {
        match item? {
            Item::Entry(_) => keys += 1,
            Item::Aux { key, value } if key == b"redis-ver" || key == b"valkey-ver" => {
                server_version = String::from_utf8_lossy(&value).into_owned();
            }
            _ => {}
        }
    }
    Ok((p.version(), keys, server_version))
}

const WRITER_STOPPED: &str = "the disk writer stopped";

/// Where the network side hands the payload: the disk writer's channel, with a running count
/// for the progress bar.
struct Out<'a> {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    total: u64,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

impl Out<'_> {
    async fn push(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.total += chunk.len() as u64;
        (self.progress)(self.total);
        self.tx
            .send(chunk)
            .await
            .map_err(|_| WRITER_STOPPED.to_string())
    }
}

/// Handshake and payload of one shard. Returns (replid, offset) once the whole RDB went to
/// `out`. Every handshake reply up to `+FULLRESYNC` must come within `opts.timeout` (a server
/// waiting to start its snapshot sends a newline each second, so only a frozen or dead one
/// is silent that long); from then on — forking, generating, streaming — the silence
/// allowed is `idle`.
async fn stream_shard(
    opts: &ConnectOptions,
    addr: &Addr,
    out: &mut Out<'_>,
    idle: Duration,
) -> Result<(String, u64), String> {
    let psync = Psync {
        from: None,
        rdb_only: true,
    };
    // The caller names the node; keep only the cause.
    let (mut stream, sync) = ReplStream::open(opts, addr, &psync)
        .await
        .map_err(|e| e.reason())?;
    let Start::Full { replid, offset } = sync else {
        return Err("PSYNC ? -1 answered +CONTINUE".into());
    };
    stream
        .rdb(idle, async |chunk| out.push(chunk).await)
        .await
        .map_err(|e| match e {
            ReplError::Sink(s) => s,
            ReplError::Node(n) => n.reason(),
        })?;
    Ok((replid, offset))
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub dir: PathBuf,
    pub from_replicas: bool,
    /// Longest silence tolerated once a snapshot has started (forking, generating and
    /// streaming it); the handshake before it is bounded by the connection timeout.
    pub idle_timeout: Duration,
    /// Most shards streamed at once.
    pub concurrency: usize,
}

/// The file in an unfinished set naming the process writing it, so `prune` can tell a
/// running backup from an abandoned one.
const OWNER: &str = "owner.pid";

/// Backs up every shard at once into `DIR/<id>/` (written as `DIR/.<id>.partial/`, renamed
/// when done). `ctx.progress` is told the raw bytes received per shard (phase `received`);
/// when `ctx.cancel` fires the unfinished set is removed and [`BackupError::Interrupted`]
/// returned. A shard whose first source fails before any of its payload arrived is read from
/// the next one (another in-sync replica, then its master).
pub async fn backup(
    ctx: &JobCtx,
    opts_conn: &ConnectOptions,
    view: &ClusterView,
    cluster_nodes: String,
    opts: &BackupOptions,
) -> Result<(Manifest, PathBuf), BackupError> {
    let (srcs, warnings) = sources(view, opts.from_replicas);
    if srcs.is_empty() {
        return Err(BackupError::NoShards);
    }
    let started = unix_ms();
    let id = backup_id(started);
    std::fs::create_dir_all(&opts.dir).map_err(|e| io(opts.dir.display(), e))?;
    let tmp = opts.dir.join(format!(".{id}.partial"));
    std::fs::create_dir_all(&tmp).map_err(|e| io(tmp.display(), e))?;
    let _ = std::fs::write(tmp.join(OWNER), std::process::id().to_string());
    let jobs = srcs.iter().enumerate().map(|(i, src)| {
        let file = format!(
            "shard-{i:03}-{}.rdb.zst",
            &src.master_id[..8.min(src.master_id.len())]
        );
        let path = tmp.join(&file);
        let label = format_ranges(&src.slots.ranges());
        async move {
            let mut m = ShardManifest {
                master_id: src.master_id.clone(),
                node: String::new(),
                role: String::new(),
                slots: format_ranges(&src.slots.ranges()),
                file,
                raw_bytes: 0,
                compressed_bytes: 0,
                sha256: String::new(),
                rdb_version: 0,
                server_version: String::new(),
                replid: String::new(),
                offset: 0,
                keys: 0,
                ok: false,
                error: src.why_none.clone(),
                notes: Vec::new(),
            };
            for (n, (addr, role)) in src.candidates.iter().enumerate() {
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                let writer_path = path.clone();
                let writer = tokio::task::spawn_blocking(move || write_shard(&writer_path, rx));
                let report = |n: u64| ctx.progress.shard(&label, "received", n, None);
                let mut out = Out {
                    tx,
                    total: 0,
                    progress: &report,
                };
                let streamed = tokio::select! {
                    r = stream_shard(opts_conn, addr, &mut out, opts.idle_timeout) => r,
                    () = ctx.cancel.cancelled() => Err(INTERRUPTED.to_string()),
                };
                let received = out.total;
                drop(out);
                // The writer ends once its channel closes: wait for it so no file is left open.
                let written = writer.await.map_err(|e| e.to_string()).and_then(|r| r);
                m.node = addr.to_string();
                m.role = role.to_string();
                match (streamed, written) {
                    (Ok((replid, offset)), Ok(w)) => {
                        m.replid = replid;
                        m.offset = offset;
                        m.raw_bytes = w.raw_bytes;
                        m.compressed_bytes = w.compressed_bytes;
                        m.sha256 = w.sha256;
                        m.rdb_version = w.rdb_version;
                        m.server_version = w.server_version;
                        m.keys = w.keys;
                        m.ok = true;
                        m.error = None;
                    }
                    // The disk writer's own failure (full disk, …) is the cause when it stopped
                    // the stream; otherwise the network side's error is.
                    (Err(e), Err(w)) if e == WRITER_STOPPED => {
                        m.error = Some(format!("{addr}: writing {}: {w}", m.file));
                    }
                    (Ok(_), Err(w)) => {
                        m.error = Some(format!("{addr}: writing {}: {w}", m.file));
                    }
                    (Err(e), _) => {
                        let last = n + 1 == src.candidates.len();
                        // Nothing of this source's payload arrived: the next one starts clean.
                        if received == 0 && !last && e != INTERRUPTED {
                            m.notes
                                .push(format!("{addr} ({role}): {e}; tried the next source"));
                            continue;
                        }
                        m.error = Some(format!("{addr}: {e}"));
                    }
                }
                break;
            }
            m
        }
    });
    let mut shards: Vec<(usize, ShardManifest)> = futures::stream::iter(jobs.enumerate())
        .map(|(i, job)| async move { (i, job.await) })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    if ctx.cancel.is_cancelled() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BackupError::Interrupted(id, tmp.display().to_string()));
    }
    shards.sort_by_key(|(i, _)| *i);
    let shards: Vec<ShardManifest> = shards.into_iter().map(|(_, s)| s).collect();
    let complete = shards.iter().all(|s| s.ok);
    let manifest = Manifest {
        id: id.clone(),
        status: if complete { "complete" } else { "partial" }.into(),
        started_unix_ms: started,
        finished_unix_ms: unix_ms(),
        rcops_version: env!("CARGO_PKG_VERSION").into(),
        cluster_nodes,
        shards,
        warnings,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| io("manifest", e))?;
    let mpath = tmp.join(MANIFEST);
    std::fs::write(&mpath, text).map_err(|e| io(mpath.display(), e))?;
    if let Ok(f) = std::fs::File::open(&mpath) {
        let _ = f.sync_all();
    }
    let _ = std::fs::remove_file(tmp.join(OWNER));
    let done = opts.dir.join(&id);
    std::fs::rename(&tmp, &done).map_err(|e| io(done.display(), e))?;
    Ok((manifest, done))
}

const INTERRUPTED: &str = "interrupted";

/// The pid of the process writing an unfinished set, while it still runs (Linux: `/proc`;
/// without `/proc` a recorded owner counts as running). None without an owner file (older
/// sets: only age makes those abandoned) or once the process is gone.
fn owner_running(partial: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(partial.join(OWNER))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let proc = Path::new("/proc");
    (!proc.is_dir() || proc.join(pid.to_string()).exists()).then_some(pid)
}

/// `20261125T201530Z-123` (UTC, with milliseconds so two backups in one second differ).
pub fn backup_id(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}-{:03}", s.replace(['-', ':'], ""), unix_ms % 1000)
}

/// A backup set found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: String,
    pub path: String,
    pub manifest: Option<Manifest>,
    pub verified: Option<Verification>,
    /// Why the manifest could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub const VERIFIED: &str = "verified.json";

/// Backup sets in `dir`, newest first. Leftover `.partial` folders are listed as such.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir.display(), e)),
    };
    for e in rd.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".partial"))
        {
            let problem = match owner_running(&path) {
                Some(pid) => format!("in progress (pid {pid}): not restorable yet"),
                None => "unfinished (interrupted backup): not restorable".into(),
            };
            out.push(Listed {
                id: id.to_string(),
                path: path.display().to_string(),
                manifest: None,
                verified: None,
                problem: Some(problem),
            });
            continue;
        }
        let (manifest, problem) = match std::fs::read_to_string(path.join(MANIFEST)) {
            Ok(t) => match serde_json::from_str::<Manifest>(&t) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(format!("unreadable manifest: {e}"))),
            },
            Err(_) => continue, // not a backup folder
        };
        let verified = std::fs::read_to_string(path.join(VERIFIED))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        out.push(Listed {
            id: name,
            path: path.display().to_string(),
            manifest,
            verified,
            problem,
        });
    }
    out.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(out)
}

/// Finds a backup by id (or unique id prefix, or `latest`), or takes a path to a backup
/// folder.
pub fn find(dir: &Path, id_or_path: &str) -> Result<(PathBuf, Manifest), BackupError> {
    let p = Path::new(id_or_path);
    let folder = if p.join(MANIFEST).is_file() {
        p.to_path_buf()
    } else {
        let all = list(dir)?;
        let hits: Vec<&Listed> = if id_or_path == "latest" {
            // Newest first: the most recent set with a manifest.
            all.iter()
                .filter(|l| l.manifest.is_some())
                .take(1)
                .collect()
        } else {
            all.iter()
                .filter(|l| l.id.starts_with(id_or_path) && l.manifest.is_some())
                .collect()
        };
        match hits.as_slice() {
            [one] => PathBuf::from(&one.path),
            _ => {
                return Err(BackupError::NotFound(
                    id_or_path.to_string(),
                    dir.display().to_string(),
                ))
            }
        }
    };
    let text = std::fs::read_to_string(folder.join(MANIFEST))
        .map_err(|e| io(folder.join(MANIFEST).display(), e))?;
    let m = serde_json::from_str(&text).map_err(|e| io(folder.join(MANIFEST).display(), e))?;
    Ok((folder, m))
}

/// What `verify` found for one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCheck {
    pub file: String,
    pub ok: bool,
    pub keys: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub id: String,
    pub ok: bool,
    pub verified_unix_ms: u64,
    pub shards: Vec<ShardCheck>,
}

/// Checksums, a full parse of every file, every key's slot within its shard's ranges, and
/// the key counts against the manifest. The result is stored next to the manifest.
pub fn verify(folder: &Path, m: &Manifest) -> Verification {
    let shards: Vec<ShardCheck> = std::thread::scope(|scope| {
        let handles: Vec<_> = m
            .shards
            .iter()
            .map(|s| scope.spawn(move || verify_shard(folder, s)))
            .collect();
        handles
            .into_iter()
            .zip(&m.shards)
            .map(|(h, s)| {
                h.join().unwrap_or_else(|_| ShardCheck {
                    file: s.file.clone(),
                    ok: false,
                    keys: 0,
                    problems: vec!["verifier crashed".into()],
                })
            })
            .collect()
    });
    let ok = m.status == "complete" && shards.iter().all(|s| s.ok);
    let v = Verification {
        id: m.id.clone(),
        ok,
        verified_unix_ms: unix_ms(),
        shards,
    };
    if let Ok(t) = serde_json::to_string_pretty(&v) {
        let _ = std::fs::write(folder.join(VERIFIED), t);
    }
    v
}

pub(crate) fn verify_shard(folder: &Path, s: &ShardManifest) -> ShardCheck {
    let mut c = ShardCheck {
        file: s.file.clone(),
        ok: false,
        keys: 0,
        problems: Vec::new(),
    };
    if !s.ok {
        c.problems.push(format!(
            "shard failed during backup: {}",
            s.error.as_deref().unwrap_or("?")
        ));
        return c;
    }
    let path = folder.join(&s.file);
    match sha256_file(&path) {
        Ok(h) if h == s.sha256 => {}
        Ok(h) => c.problems.push(format!(
            "SHA-256 mismatch: manifest {}, file {h}",
            &s.sha256
        )),
        Err(e) => {
            c.problems.push(e);
            return c;
        }
    }
    let slots = parse_slots(&s.slots);
    let mut outside = 0u64;
    let mut example = None;
    let result = crate::ops::rdb::scan(&path, true, |e| {
        if let Some(set) = &slots {
            let slot = key_slot(&e.key);
            if !set.contains(slot) {
                outside += 1;
                example.get_or_insert_with(|| String::from_utf8_lossy(&e.key).into_owned());
            }
        }
    });
    match result {
        Ok(info) => {
            c.keys = info.keys;
            if info.keys != s.keys {
                c.problems.push(format!(
                    "{} keys in the file, manifest says {}",
                    info.keys, s.keys
                ));
            }
        }
        Err(e) => c.problems.push(e.to_string()),
    }
    if outside > 0 {
        c.problems.push(format!(
            "{outside} key(s) outside the shard's slots {} (e.g. {:?})",
            s.slots,
            example.unwrap_or_default()
        ));
    }
    c.ok = c.problems.is_empty();
    c
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `0-5460,5461` back into a set (`-` or garbage: none).
pub fn parse_slots(text: &str) -> Option<SlotSet> {
    let mut set = SlotSet::new();
    for part in text
        .split([',', ' '])
        .filter(|p| !p.is_empty() && *p != "-")
    {
        set.insert_range(SlotRange::parse(part).ok()?);
    }
    Some(set)
}

pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex(&sha.finalize()))
}

/// Which backups `prune` would delete: everything but the `keep_last` newest and those
/// younger than `keep_days`; unfinished sets whose backup process is gone (or, when that
/// cannot be told, older than a day) too. A set still being written is never deleted.
pub fn prune_plan(all: &[Listed], keep_days: Option<u64>, keep_last: Option<usize>) -> Vec<Listed> {
    let now = unix_ms();
    let mut out = Vec::new();
    let mut kept = 0usize;
    for l in all {
        let Some(m) = &l.manifest else {
            if l.problem
                .as_deref()
                .is_some_and(|p| p.starts_with("unfinished"))
            {
                let path = Path::new(&l.path);
                let abandoned = path.join(OWNER).is_file() && owner_running(path).is_none();
                let old = std::fs::metadata(&l.path)
                    .and_then(|md| md.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(86_400));
                if abandoned || old {
                    out.push(l.clone());
                }
            }
            continue;
        };
        let young =
            keep_days.is_some_and(|d| now.saturating_sub(m.finished_unix_ms) < d * 86_400_000);
        let within_last = keep_last.is_some_and(|n| kept < n);
        if young || within_last || (keep_days.is_none() && keep_last.is_none()) {
            kept += 1;
        } else {
            out.push(l.clone());
        }
    }
    out
}
