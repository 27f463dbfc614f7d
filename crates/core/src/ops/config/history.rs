//! Configuration history: a plain git repository (one per cluster) holding one redis.conf-style
//! file per node — `CONFIG GET *`, sorted, secrets masked. Every change records a snapshot
//! before and after; `git log` works on it directly.

use git2::{Repository, Signature};
use rcops_formats::conf::{self, Params};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{file_stem, NodeConfig};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history at {path}: {reason}")]
    Repo { path: String, reason: String },
    #[error("no revision {rev:?} in the history at {path}")]
    NoRevision { rev: String, path: String },
    #[error("the history at {0} is empty: record one with `rcops config snapshot`")]
    Empty(String),
}

/// A commit of the history.
#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    pub id: String,
    pub short: String,
    pub time_unix: i64,
    pub author: String,
    pub message: String,
}

/// One parameter that differs between two snapshots (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamDiff {
    pub node: String,
    pub param: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    #[serde(flatten)]
    pub revision: Revision,
    pub changes: Vec<ParamDiff>,
}

pub struct History {
    repo: Repository,
    root: PathBuf,
}

/// Every commit lands as a pack of its own, and libgit2 opens (and maps) the index of every
/// pack for lookups: beyond this many they are folded into one, as `git gc` would.
const MAX_PACKS: usize = 16;

const HEADER: &str = "# rcops config snapshot: CONFIG GET * of one node, secrets masked";

/// One node's configuration as history records it, borrowed: secrets are masked as the file
/// is rendered, so live values need no masked copy (cloning 120 nodes' parameters cost a
/// 120-node `config set` 5 ms).
pub struct Snap<'a> {
    pub addr: String,
    pub id: &'a str,
    pub role: &'a str,
    pub params: &'a Params,
}

impl<'a> From<&'a NodeConfig> for Snap<'a> {
    fn from(c: &'a NodeConfig) -> Self {
        Snap {
            addr: c.addr.clone(),
            id: &c.id,
            role: &c.role,
            params: &c.params,
        }
    }
}

/// A node's snapshot file: a header naming the node, then valid redis.conf lines.
pub fn render_node(c: &Snap) -> String {
    let mut out = format!("{HEADER}\n# node {} id {} role {}\n", c.addr, c.id, c.role);
    out.reserve(c.params.len() * 32);
    conf::write_conf_into(&mut out, c.params, true);
    out
}

/// Reads a snapshot file back.
pub fn parse_node(text: &str) -> Result<NodeConfig, String> {
    let mut addr = String::new();
    let mut id = String::new();
    let mut role = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# node ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let [a, "id", i, "role", r] = f.as_slice() {
                (addr, id, role) = (a.to_string(), i.to_string(), r.to_string());
            }
        }
    }
    if addr.is_empty() {
        return Err("not an rcops snapshot file (no '# node' header)".into());
    }
    let params = conf::parse_conf(text)
        .map_err(|e| e.to_string())?
        .sections
        .remove(&conf::Scope::All)
        .unwrap_or_default();
    Ok(NodeConfig {
        addr,
        id,
        role,
        params,
    })
}

/// Every parameter that differs between two sets of snapshots, by node then parameter.
pub fn diff(a: &[NodeConfig], b: &[NodeConfig]) -> Vec<ParamDiff> {
    let index = |s: &[NodeConfig]| -> BTreeMap<String, Params> {
        s.iter()
            .map(|c| {
                let mut p = c.params.clone();
                conf::mask_secrets(&mut p);
                (c.addr.clone(), p)
            })
            .collect()
    };
    let (a, b) = (index(a), index(b));
    let nodes: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let empty = Params::new();
    let mut out = Vec::new();
    for node in nodes {
        let (pa, pb) = (a.get(node).unwrap_or(&empty), b.get(node).unwrap_or(&empty));
        let names: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
        for param in names {
            let (from, to) = (pa.get(param), pb.get(param));
            let same = match (from, to) {
                (Some(x), Some(y)) => conf::same_value(param, x, y),
                (None, None) => true,
                _ => false,
            };
            if !same {
                out.push(ParamDiff {
                    node: node.clone(),
                    param: param.clone(),
                    from: from.cloned(),
                    to: to.cloned(),
                });
            }
        }
    }
    out
}

impl History {
    /// Opens the repository at `dir`, creating it (and the directory) when missing.
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let err = |e: &dyn std::fmt::Display| HistoryError::Repo {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let repo = match Repository::open(dir) {
            Ok(r) => r,
            Err(_) => Repository::init(dir).map_err(|e| err(&e))?,
        };
        Ok(History {
            repo,
            root: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Repo {
            path: self.root.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn revision(&self, c: &git2::Commit) -> Revision {
        let id = c.id().to_string();
        Revision {
            short: id.get(..10).unwrap_or(&id).to_string(),
            id,
            time_unix: c.time().seconds(),
            author: c.author().name().unwrap_or("?").to_string(),
            message: c.message().unwrap_or("").trim_end().to_string(),
        }
    }

    /// Writes the snapshots and commits them when anything changed. Files of nodes in
    /// `present` that did not answer are kept as they were; files of nodes no longer in the
    /// cluster are removed. Returns the new revision, or `None` when nothing changed — unless
    /// `always`, for the record after a change attempt, which is kept even when it failed and
    /// left every value as it was.
    pub fn record(
        &self,
        configs: &[Snap<'_>],
        present: &BTreeSet<String>,
        message: &str,
        author: &str,
        always: bool,
    ) -> Result<Option<Revision>, HistoryError> {
        // One record at a time per repository: two runs overwriting the same working-tree
        // file in place could otherwise interleave. Released when `_lock` is dropped.
        let _lock = self.lock()?;
        let keep: BTreeSet<String> = present
            .iter()
            .map(String::as_str)
            .chain(configs.iter().map(|c| c.addr.as_str()))
            .map(|a| format!("{}.conf", file_stem(a)))
            .collect();
        // Objects go to an in-memory backend and land as one pack file at the end: a loose
        // object per changed node file costs ~1 ms each in file-system work at 120 nodes.
        let started = std::time::Instant::now();
        let repo = Repository::open(&self.root).map_err(|e| self.err(e))?;
        let odb = repo.odb().map_err(|e| self.err(e))?;
        let _mempack = odb.add_new_mempack_backend(1000).map_err(|e| self.err(e))?;
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parent_tree = parent.as_ref().and_then(|p| p.tree().ok());
        // The tree is built in memory: blobs that did not change are only hashed, never
        // rewritten, which keeps a 120-node snapshot in milliseconds.
        let mut tb = repo.treebuilder(None).map_err(|e| self.err(e))?;
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let known: BTreeMap<String, git2::Oid> = parent_tree
            .iter()
            .flat_map(|t| t.iter())
            .filter_map(|e| Some((e.name().ok()?.to_string(), e.id())))
            .collect();
        // Objects the new pack must carry: blobs the store does not hold yet, the tree and
        // the commit.
        let mut new_objects: Vec<git2::Oid> = Vec::new();
        for c in configs {
            let name = format!("{}.conf", file_stem(&c.addr));
            let text = render_node(c).into_bytes();
            let hashed =
                git2::Oid::hash_object(git2::ObjectType::Blob, &text).map_err(|e| self.err(e))?;
            let unchanged = known.get(&name) == Some(&hashed);
            let oid = if unchanged || odb.exists(hashed) {
                hashed
            } else {
                let oid = repo.blob(&text).map_err(|e| self.err(e))?;
                new_objects.push(oid);
                oid
            };
            tb.insert(&name, oid, 0o100644).map_err(|e| self.err(e))?;
            // Unchanged files are rewritten only when the working tree's copy differs (missing,
            // edited, or torn by a crash while it was overwritten in place).
            if !unchanged || std::fs::read(self.root.join(&name)).ok().as_ref() != Some(&text) {
                files.insert(name.clone(), text);
            }
            names.insert(name);
        }
        // Nodes that are in the cluster but did not answer keep their last snapshot.
        if let Some(t) = &parent_tree {
            for e in t.iter() {
                let name = e.name().unwrap_or_default().to_string();
                if keep.contains(&name) && !names.contains(&name) {
                    tb.insert(&name, e.id(), e.filemode())
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        let tree_id = tb.write().map_err(|e| self.err(e))?;
        if !always && parent_tree.as_ref().is_some_and(|t| t.id() == tree_id) {
            // Nothing to commit; a working copy that drifted from the commit is put back.
            if !files.is_empty() {
                let tree = repo.find_tree(tree_id).map_err(|e| self.err(e))?;
                self.sync_workdir(&repo, &tree, &files)?;
            }
            return Ok(None);
        }
        let tree = repo.find_tree(tree_id).map_err(|e| self.err(e))?;
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "history tree written"
        );
        let host = hostname();
        let sig = Signature::now(author, &format!("{author}@{host}")).map_err(|e| self.err(e))?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id = repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .map_err(|e| self.err(e))?;
        new_objects.extend([tree_id, id]);
        let pack = whole_object_pack(&odb, &new_objects).map_err(|e| self.err(e))?;
        let mut writer = odb.packwriter().map_err(|e| self.err(e))?;
        std::io::Write::write_all(&mut writer, &pack).map_err(|e| self.err(e))?;
        writer.commit().map_err(|e| self.err(e))?;
        // The branch moves only once its objects are on disk.
        let head = repo.find_reference("HEAD").map_err(|e| self.err(e))?;
        let branch = head
            .symbolic_target()
            .ok()
            .flatten()
            .unwrap_or("refs/heads/master")
            .to_string();
        repo.reference(&branch, id, true, message.lines().next().unwrap_or("rcops"))
            .map_err(|e| self.err(e))?;
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "history commit written"
        );
        // Best effort: a failed repack leaves more packs, never fewer objects.
        if let Err(e) = consolidate_packs(&repo) {
            tracing::warn!("history at {}: repack failed: {e}", self.root.display());
        }
        self.sync_workdir(&repo, &tree, &files)?;
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "history working tree synced"
        );
        let commit = repo.find_commit(id).map_err(|e| self.err(e))?;
        Ok(Some(self.revision(&commit)))
    }

    /// The repository's record lock. Another run holds it for milliseconds; one that holds it
    /// for seconds is stuck, which is an error here rather than a hang.
    fn lock(&self) -> Result<std::fs::File, HistoryError> {
        let path = self.repo.path().join("rcops-record.lock");
        let f = std::fs::File::create(&path)
            .map_err(|e| self.err(format!("{}: {e}", path.display())))?;
        for _ in 0..100 {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(std::fs::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(self.err(format!("{}: {e}", path.display())));
                }
            }
        }
        Err(self.err(format!(
            "{} is held by another rcops for over 5 s",
            path.display()
        )))
    }

    /// Makes the working tree and index match `tree`, so `git status` in the repository is
    /// clean and the files can be read directly. `fresh` holds the files that changed.
    ///
    /// They are overwritten in place, not written aside and renamed: on ext4 a rename over a
    /// file (or a truncation to zero) starts a flush of it, which made this step 80 ms of a
    /// 120-node `config set`. The commit is the record; a copy torn by a crash shows in
    /// `git status` and is rewritten by the next record (it differs from the commit). Concurrent
    /// records are serialized by a lock file in the repository ([`History::record`]).
    fn sync_workdir(
        &self,
        repo: &Repository,
        tree: &git2::Tree,
        fresh: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), HistoryError> {
        let names: BTreeSet<String> = tree
            .iter()
            .filter_map(|e| e.name().ok().map(str::to_string))
            .collect();
        let entries = std::fs::read_dir(&self.root).map_err(|e| self.err(e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && !names.contains(&name) {
                std::fs::remove_file(e.path()).map_err(|e| self.err(e))?;
            }
        }
        for (name, text) in fresh {
            let path = self.root.join(name);
            overwrite(&path, text).map_err(|e| self.err(format!("{}: {e}", path.display())))?;
        }
        let mut index = repo.index().map_err(|e| self.err(e))?;
        index.read_tree(tree).map_err(|e| self.err(e))?;
        index.write().map_err(|e| self.err(e))
    }

    fn commit(&self, rev: &str) -> Result<git2::Commit<'_>, HistoryError> {
        if self.repo.head().is_err() {
            return Err(HistoryError::Empty(self.root.display().to_string()));
        }
        self.repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| HistoryError::NoRevision {
                rev: rev.to_string(),
                path: self.root.display().to_string(),
            })
    }

    fn configs_of(&self, commit: &git2::Commit) -> Result<Vec<NodeConfig>, HistoryError> {
        let tree = commit.tree().map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in tree.iter() {
            let name = entry.name().unwrap_or_default().to_string();
            if !name.ends_with(".conf") {
                continue;
            }
            let blob = entry
                .to_object(&self.repo)
                .and_then(|o| o.peel_to_blob())
                .map_err(|e| self.err(e))?;
            let text = String::from_utf8_lossy(blob.content());
            out.push(parse_node(&text).map_err(|e| self.err(format!("{name}: {e}")))?);
        }
        Ok(out)
    }

    /// The snapshots at a revision (`HEAD`, `HEAD~2`, a hash prefix, a tag…).
    pub fn load(&self, rev: &str) -> Result<(Revision, Vec<NodeConfig>), HistoryError> {
        let c = self.commit(rev)?;
        Ok((self.revision(&c), self.configs_of(&c)?))
    }

    /// Newest first, each with what it changed against its parent; filtered to commits that
    /// touched a node and/or a parameter.
    pub fn log(
        &self,
        limit: usize,
        node: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<LogEntry>, HistoryError> {
        if self.repo.head().is_err() {
            return Ok(Vec::new());
        }
        let mut walk = self.repo.revwalk().map_err(|e| self.err(e))?;
        walk.push_head().map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for oid in walk {
            if out.len() >= limit {
                break;
            }
            let oid = oid.map_err(|e| self.err(e))?;
            let c = self.repo.find_commit(oid).map_err(|e| self.err(e))?;
            let now = self.configs_of(&c)?;
            let before = match c.parent(0) {
                Ok(p) => self.configs_of(&p)?,
                Err(_) => Vec::new(),
            };
            let mut changes = diff(&before, &now);
            if let Some(n) = node {
                changes.retain(|d| d.node == n);
            }
            if let Some(p) = param {
                changes.retain(|d| conf::glob_match(p, &d.param));
            }
            let first = before.is_empty();
            // The first snapshot "changes" everything; list it, but not its every value.
            if first {
                changes.clear();
            }
            if (node.is_some() || param.is_some()) && changes.is_empty() && !first {
                continue;
            }
            out.push(LogEntry {
                revision: self.revision(&c),
                changes,
            });
        }
        Ok(out)
    }
}

/// A pack of whole objects as format version 2 lays it out: a header, each object as its
/// type and size then its zlib stream, a SHA-1 trailer. `git_mempack_dump` writes the same
/// objects but first searches deltas among them: 20–35 ms of a 120-node commit. Deltas come
/// when the packs are folded ([`consolidate_packs`]).
fn whole_object_pack(odb: &git2::Odb, oids: &[git2::Oid]) -> Result<Vec<u8>, String> {
    use flate2::{write::ZlibEncoder, Compression};
    use git2::ObjectType;
    use std::io::Write;
    let mut out = Vec::with_capacity(12 + oids.len() * 4096);
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(oids.len() as u32).to_be_bytes());
    for oid in oids {
        let obj = odb.read(*oid).map_err(|e| e.to_string())?;
        let kind: u8 = match obj.kind() {
            ObjectType::Commit => 1,
            ObjectType::Tree => 2,
            ObjectType::Blob => 3,
            ObjectType::Tag => 4,
            other => return Err(format!("cannot pack a {other} object")),
        };
        let data = obj.data();
        // Type and size: 3 bits of type and 4 of size, then 7 bits of size per byte.
        let mut size = data.len();
        let mut byte = (kind << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            out.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        out.push(byte);
        let mut z = ZlibEncoder::new(&mut out, Compression::fast());
        z.write_all(data).map_err(|e| e.to_string())?;
        z.finish().map_err(|e| e.to_string())?;
    }
    let digest = sha1_smol::Sha1::from(&out).digest().bytes();
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Writes `text` over the file's old bytes, then cuts what is left of a longer old version.
fn overwrite(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all(text)?;
    f.set_len(text.len() as u64)
}

/// Packs in the repository's object store.
fn packs(repo: &Repository) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo.path().join("objects").join("pack"))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "pack") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Past [`MAX_PACKS`], writes everything reachable from HEAD as one pack, then removes the
/// packs it replaces (the new one is complete before any old one goes).
fn consolidate_packs(repo: &Repository) -> Result<(), String> {
    let old = packs(repo).map_err(|e| e.to_string())?;
    if old.len() <= MAX_PACKS {
        return Ok(());
    }
    let mut pb = repo.packbuilder().map_err(|e| e.to_string())?;
    let mut walk = repo.revwalk().map_err(|e| e.to_string())?;
    walk.push_head().map_err(|e| e.to_string())?;
    pb.insert_walk(&mut walk).map_err(|e| e.to_string())?;
    let dir = repo.path().join("objects").join("pack");
    pb.write(&dir, 0o444).map_err(|e| e.to_string())?;
    let keep = format!("pack-{}", pb.name().ok().flatten().ok_or("unnamed pack")?);
    for p in old {
        if p.file_stem().is_some_and(|s| s.to_string_lossy() == keep) {
            continue;
        }
        let _ = std::fs::remove_file(p.with_extension("idx"));
        let _ = std::fs::remove_file(&p);
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Who is making a change, for commit messages: `$USER`, else `rcops`.
pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "rcops".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps(v: &[NodeConfig]) -> Vec<Snap<'_>> {
        v.iter().map(Snap::from).collect()
    }

    fn nc(addr: &str, kv: &[(&str, &str)]) -> NodeConfig {
        NodeConfig {
            addr: addr.into(),
            id: "abc".into(),
            role: "master".into(),
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn snapshot_files_round_trip_and_mask_secrets() {
        let c = nc(
            "127.0.0.1:7000",
            &[("save", "3600 1"), ("requirepass", "s3cret"), ("hz", "10")],
        );
        let text = render_node(&Snap::from(&c));
        assert!(!text.contains("s3cret"));
        let back = parse_node(&text).unwrap();
        assert_eq!(back.addr, "127.0.0.1:7000");
        assert_eq!(back.params["save"], "3600 1");
        assert_eq!(back.params["requirepass"], conf::MASK);
        assert!(parse_node("hz 10\n").is_err());
    }

    #[test]
    fn records_commits_only_on_change_and_logs_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        assert!(matches!(h.load("HEAD"), Err(HistoryError::Empty(_))));
        let present: BTreeSet<String> = ["a:1".to_string(), "b:2".to_string()].into();
        let v1 = [nc("a:1", &[("hz", "10")]), nc("b:2", &[("hz", "10")])];
        let r1 = h
            .record(&snaps(&v1), &present, "first", "tester", false)
            .unwrap()
            .unwrap();
        assert!(h
            .record(&snaps(&v1), &present, "again", "tester", false)
            .unwrap()
            .is_none());
        let noop = h
            .record(&snaps(&v1), &present, "failed attempt", "tester", true)
            .unwrap()
            .unwrap();
        assert!(h.log(10, None, None).unwrap()[0].changes.is_empty());
        assert_eq!(h.log(10, None, None).unwrap()[0].revision.id, noop.id);
        let v2 = [nc("a:1", &[("hz", "20")]), nc("b:2", &[("hz", "10")])];
        let r2 = h
            .record(&snaps(&v2), &present, "second", "tester", false)
            .unwrap()
            .unwrap();
        assert_ne!(r1.id, r2.id);
        let (_, at1) = h.load(&r1.short).unwrap();
        assert_eq!(at1.len(), 2);
        assert_eq!(at1[0].params["hz"], "10");
        let log = h.log(10, None, None).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].revision.message, "second");
        assert_eq!(
            log[0].changes,
            vec![ParamDiff {
                node: "a:1".into(),
                param: "hz".into(),
                from: Some("10".into()),
                to: Some("20".into())
            }]
        );
        assert_eq!(h.log(10, Some("b:2"), None).unwrap().len(), 1);
        assert_eq!(h.log(10, None, Some("maxmemory")).unwrap().len(), 1);
        assert!(matches!(
            h.load("nope"),
            Err(HistoryError::NoRevision { .. })
        ));
        // A node that left the cluster loses its file; one that did not answer keeps it.
        let only_a: BTreeSet<String> = ["a:1".to_string()].into();
        h.record(&snaps(&v2[..1]), &only_a, "b left", "tester", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.load("HEAD").unwrap().1.len(), 1);
    }

    #[test]
    fn working_copy_matches_head_and_packs_hold_whole_objects() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let present: BTreeSet<String> = ["a:1".to_string(), "b:2".to_string()].into();
        let long = [
            nc("a:1", &[("hz", "10"), ("save", "3600 1 300 100 60 10000")]),
            nc("b:2", &[("hz", "10")]),
        ];
        let short = [nc("a:1", &[("hz", "9")]), nc("b:2", &[("hz", "10")])];
        // Long, short (the file shrinks in place), then long again: every blob of the third
        // commit is already in an older pack, so its pack carries only tree and commit.
        let file_a = dir.path().join(format!("{}.conf", file_stem("a:1")));
        let mut revs = Vec::new();
        for v in [&long, &short, &long] {
            revs.push(
                h.record(&snaps(v), &present, "step", "t", false)
                    .unwrap()
                    .unwrap(),
            );
            assert_eq!(
                std::fs::read_to_string(&file_a).unwrap(),
                render_node(&Snap::from(&v[0]))
            );
            let statuses = h.repo.statuses(None).unwrap();
            assert!(statuses.is_empty(), "git status is not clean");
        }
        // A copy torn in place (same length, other bytes) is put back by the next record,
        // even one that has nothing to commit.
        let good = std::fs::read(&file_a).unwrap();
        std::fs::write(&file_a, vec![b'#'; good.len()]).unwrap();
        assert!(h
            .record(&snaps(&long), &present, "same", "t", false)
            .unwrap()
            .is_none());
        assert_eq!(std::fs::read(&file_a).unwrap(), good);
        let odb = h.repo.odb().unwrap();
        let mut count = 0;
        odb.foreach(|oid| {
            odb.read(*oid).unwrap();
            count += 1;
            true
        })
        .unwrap();
        // 3 commits, 3 trees (the third equals the first), 3 blobs.
        assert!(count >= 8, "{count} objects");
        for (r, v) in revs.iter().zip([&long, &short, &long]) {
            assert_eq!(h.load(&r.id).unwrap().1, v.to_vec());
        }
    }

    #[test]
    fn a_record_waits_for_another_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let held = std::fs::File::create(h.repo.path().join("rcops-record.lock")).unwrap();
        held.lock().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let started = std::time::Instant::now();
        let present: BTreeSet<String> = ["a:1".to_string()].into();
        let v = [nc("a:1", &[("hz", "10")])];
        assert!(h
            .record(&snaps(&v), &present, "first", "t", false)
            .unwrap()
            .is_some());
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        release.join().unwrap();
    }

    #[test]
    fn packs_are_folded_and_every_revision_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let present: BTreeSet<String> = ["a:1".to_string()].into();
        let mut revs = Vec::new();
        for i in 0..(MAX_PACKS + 5) {
            let v = [nc("a:1", &[("hz", &i.to_string())])];
            revs.push(
                h.record(&snaps(&v), &present, "step", "t", false)
                    .unwrap()
                    .unwrap(),
            );
            assert!(packs(&h.repo).unwrap().len() <= MAX_PACKS + 1);
        }
        assert!(packs(&h.repo).unwrap().len() < MAX_PACKS);
        let h = History::open(dir.path()).unwrap();
        for (i, r) in revs.iter().enumerate() {
            assert_eq!(h.load(&r.id).unwrap().1[0].params["hz"], i.to_string());
        }
        assert_eq!(h.log(100, None, None).unwrap().len(), MAX_PACKS + 5);
    }
}
