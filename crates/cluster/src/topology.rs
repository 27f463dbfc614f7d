//! Topology discovery and the cluster model every capability reads.
//!
//! [`discover`] asks the seeds for `CLUSTER NODES`, then fetches a [`NodeSnapshot`]
//! (`CLUSTER NODES`, `CLUSTER INFO`, `INFO`) from every node concurrently in one pipeline
//! each, following newly seen nodes until no more appear. [`ClusterView`] keeps every node's
//! own view and picks the view most nodes agree on as the reference.

use rcops_formats::cluster_nodes::{self, NodeLine};
use rcops_formats::info::Info;
use rcops_formats::slot::{SlotSet, SLOTS};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use crate::fanout::Executor;
use crate::node::{Addr, NodeError};

/// What one node said about itself and the cluster, fetched in one round trip.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// The address we dialled.
    pub addr: Addr,
    /// This node's `CLUSTER NODES` — or, when `own_view` is false, only its own line as the
    /// seed sees it (see [`discover_light`]).
    pub lines: Vec<NodeLine>,
    /// Whether `lines` is the node's own full view.
    pub own_view: bool,
    pub cluster_info: Info,
    pub info: Info,
    /// The ACL refused `INFO` or `CLUSTER INFO`: those figures are missing, not zero.
    pub denied: Option<NodeError>,
}

impl NodeSnapshot {
    pub fn myself(&self) -> Option<&NodeLine> {
        cluster_nodes::myself(&self.lines)
    }

    pub fn id(&self) -> Option<&str> {
        self.myself().map(|l| l.id.as_str())
    }

    fn for_user(mut self, user: Option<&str>) -> Self {
        self.denied = self.denied.map(|e| e.for_user(user));
        self
    }

    /// This node's view reduced to what must agree cluster-wide: which master owns which
    /// slots, and which master each replica follows (the idea of redis-cli's config signature,
    /// extended to roles), hashed. Failure flags are local opinions and left out.
    pub fn signature(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut parts: Vec<(&str, Option<&str>, bool, &[rcops_formats::slot::SlotRange])> = self
            .lines
            .iter()
            .filter(|l| !l.flags.handshake && !l.flags.noaddr)
            .map(|l| {
                (
                    l.id.as_str(),
                    l.master_id.as_deref(),
                    l.flags.master,
                    l.slots.as_slice(),
                )
            })
            .collect();
        parts.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parts.hash(&mut h);
        h.finish()
    }
}

/// How much of `INFO` a snapshot carries. INFO is the costliest reply to produce and parse
/// after `CLUSTER NODES`, so each capability asks only for what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// `replication` and `persistence`: roles, links, offsets, loading.
    Health,
    /// Health plus `keyspace`.
    Keyspace,
    /// The default `INFO` sections.
    Full,
}

impl Detail {
    fn sections(self) -> &'static [&'static str] {
        match self {
            // One section per command: multi-section INFO needs Redis 7.
            Detail::Health => &["replication", "persistence"],
            Detail::Keyspace => &["replication", "persistence", "keyspace"],
            Detail::Full => &[],
        }
    }
}

/// Fetches one node's snapshot in one pipeline. With `seen_as` (its line in another node's
/// view), its own `CLUSTER NODES` — the costliest reply on a big cluster — is skipped.
async fn fetch_snapshot(
    addr: &Addr,
    conn: &mut redis::aio::MultiplexedConnection,
    detail: Detail,
    seen_as: Option<&NodeLine>,
) -> Result<NodeSnapshot, NodeError> {
    let mut pipe = redis::pipe();
    if seen_as.is_none() {
        pipe.cmd("CLUSTER").arg("NODES");
    }
    pipe.cmd("CLUSTER").arg("INFO");
    let sections = detail.sections();
    if sections.is_empty() {
        pipe.cmd("INFO");
    }
    for s in sections {
        pipe.cmd("INFO").arg(*s);
    }
    // A refused INFO (an ACL without it) degrades the snapshot instead of failing it: the
    // topology still comes from CLUSTER NODES.
    let replies: Vec<redis::RedisResult<String>> = pipe
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(|e| NodeError::from_redis(addr, &e))?;
    let mut denied = None;
    let mut replies_ok = Vec::with_capacity(replies.len());
    for (i, r) in replies.into_iter().enumerate() {
        match r {
            Ok(text) => replies_ok.push(text),
            Err(e) => match NodeError::from_redis(addr, &e) {
                e @ NodeError::NoPerm { .. } if i > 0 || seen_as.is_some() => {
                    denied.get_or_insert(e);
                    replies_ok.push(String::new());
                }
                e => return Err(e),
            },
        }
    }
    let replies = replies_ok;
    let short = || NodeError::Command {
        addr: addr.clone(),
        reason: "short reply to CLUSTER NODES/INFO pipeline".into(),
    };
    let (lines, rest) = match seen_as {
        Some(line) => {
            let mut own = line.clone();
            own.flags.myself = true;
            (vec![own], replies.as_slice())
        }
        None => {
            let (nodes, rest) = replies.split_first().ok_or_else(short)?;
            let lines = cluster_nodes::parse(nodes).map_err(|e| NodeError::Command {
                addr: addr.clone(),
                reason: format!("unparsable CLUSTER NODES reply: {e}"),
            })?;
            (lines, rest)
        }
    };
    let (cinfo, infos) = rest.split_first().ok_or_else(short)?;
    Ok(NodeSnapshot {
        addr: addr.clone(),
        own_view: seen_as.is_none(),
        lines,
        cluster_info: Info::parse(cinfo),
        info: Info::parse(&infos.join("\r\n")),
        denied,
    })
}

/// The cluster as rcops saw it at one moment.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The reference view: the `CLUSTER NODES` lines most reachable nodes agree on.
    pub nodes: Vec<NodeLine>,
    /// Snapshots of every node that answered, by node id.
    pub snapshots: BTreeMap<String, NodeSnapshot>,
    /// Nodes that could not be read, by dialled address.
    pub failed: BTreeMap<Addr, NodeError>,
    /// Signature of the reference view and which node ids hold each signature.
    pub signatures: BTreeMap<u64, Vec<String>>,
    pub reference_signature: u64,
    pub elapsed_ms: u128,
}

/// Why discovery could not produce any view at all.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Every seed failed; each error names its node.
    #[error("{}: {}", if .0.iter().all(NodeError::is_unreachable) { "no seed node answered" } else { "no seed node could be read" }, join_errors(.0))]
    NoSeed(Vec<NodeError>),
}

impl DiscoverError {
    /// The seed errors, for callers that classify them.
    pub fn errors(&self) -> &[NodeError] {
        match self {
            DiscoverError::NoSeed(e) => e,
        }
    }
}

fn join_errors(errors: &[NodeError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Discovers the cluster from seed nodes: a seed that is down is skipped if another answers.
/// Every node's own `CLUSTER NODES` is read, so agreement, open slots and failure opinions
/// can be judged (what `check`, `slots` and the exporter need).
pub async fn discover(
    exec: &Executor,
    seeds: &[Addr],
    detail: Detail,
) -> Result<ClusterView, DiscoverError> {
    discover_with(exec, seeds, detail, Follow::AllViews).await
}

/// Like [`discover`], but only the seeds' views are read; every other node contributes its
/// INFO and `CLUSTER INFO`. For capabilities that need the node list and per-node numbers,
/// not each node's opinion (metrics, info, latency, bench, key scans, slow logs): on a
/// 120-node cluster it saves producing and parsing 119 views of 120 lines.
pub async fn discover_light(
    exec: &Executor,
    seeds: &[Addr],
    detail: Detail,
) -> Result<ClusterView, DiscoverError> {
    discover_with(exec, seeds, detail, Follow::Light).await
}

/// A cluster, or a standalone server seen as a one-shard cluster (one master owning every
/// slot, under its run id), so that moving data treats both alike.
pub async fn discover_endpoint(
    exec: &Executor,
    seeds: &[Addr],
    detail: Detail,
) -> Result<ClusterView, DiscoverError> {
    match discover_light(exec, seeds, detail).await {
        Err(DiscoverError::NoSeed(errors)) => {
            let standalone = errors.iter().find_map(|e| match e {
                NodeError::NotCluster { addr } => Some(addr.clone()),
                _ => None,
            });
            match standalone {
                Some(addr) => standalone_view(exec, &addr)
                    .await
                    .map_err(|e| DiscoverError::NoSeed(vec![e])),
                None => Err(DiscoverError::NoSeed(errors)),
            }
        }
        r => r,
    }
}

async fn standalone_view(exec: &Executor, addr: &Addr) -> Result<ClusterView, NodeError> {
    let mut conn = exec.conn(addr).await?;
    let text: String = crate::fanout::query(addr, &mut conn, &redis::cmd("INFO")).await?;
    let info = Info::parse(&text);
    let id = info
        .get("run_id")
        .filter(|id| !id.is_empty())
        .unwrap_or("0000000000000000000000000000000000000000")
        .to_string();
    let line = format!(
        "{id} {}:{}@0 myself,master - 0 0 0 connected 0-16383",
        addr.host, addr.port
    );
    let lines = cluster_nodes::parse(&line).map_err(|e| NodeError::Command {
        addr: addr.clone(),
        reason: format!("standalone view: {e}"),
    })?;
    let snap = NodeSnapshot {
        addr: addr.clone(),
        lines,
        own_view: true,
        cluster_info: Info::parse(
            "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n\
             cluster_known_nodes:1\r\ncluster_size:1\r\n",
        ),
        info,
        denied: None,
    };
    Ok(ClusterView::from_snapshots(
        BTreeMap::from([(id, snap)]),
        BTreeMap::new(),
    ))
}

/// Only the seeds are read: the node list, ids and roles are their view. For capabilities
/// that talk to every node next anyway and report those that fail (configuration): on a
/// 120-node cluster it saves a round trip to every node before the real work starts.
pub async fn discover_seeds(
    exec: &Executor,
    seeds: &[Addr],
    detail: Detail,
) -> Result<ClusterView, DiscoverError> {
    discover_with(exec, seeds, detail, Follow::No).await
}

/// How far discovery goes past the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Every node's own view.
    AllViews,
    /// Every node's INFO, with its line from the view that mentioned it.
    Light,
    /// Not past the seeds.
    No,
}

/// Discovery as far as `follow` says ([`discover`], [`discover_light`], [`discover_seeds`]).
pub async fn discover_with(
    exec: &Executor,
    seeds: &[Addr],
    detail: Detail,
    follow: Follow,
) -> Result<ClusterView, DiscoverError> {
    let started = Instant::now();
    let seed_results = exec
        .run(seeds.iter().cloned(), |addr, mut conn| async move {
            fetch_snapshot(&addr, &mut conn, detail, None)
                .await
                .map(|s| s.for_user(exec.options().user.as_deref()))
        })
        .await;
    if seed_results.ok.is_empty() {
        // Keep the user's seed order in the message.
        let errors = seeds
            .iter()
            .filter_map(|s| seed_results.failed.get(s).cloned())
            .collect();
        return Err(DiscoverError::NoSeed(errors));
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        seeds = seeds.len(),
        "seeds read"
    );
    let mut snapshots: BTreeMap<String, NodeSnapshot> = BTreeMap::new();
    let mut visited: BTreeSet<Addr> = seeds.iter().cloned().collect();
    let mut failed = BTreeMap::new();
    for (_, snap) in seed_results.ok {
        let _ = insert_snapshot(&mut snapshots, &mut visited, snap);
    }
    // Seeds that failed matter only if the cluster knows them; decided below.
    let seed_failures = seed_results.failed;

    // Follow every node any view mentions until nothing new appears. Only the views that
    // arrived in the last round can mention new nodes; ids already handled are skipped
    // without allocating.
    let mut handled: HashSet<String> = snapshots.keys().cloned().collect();
    let mut fresh: Vec<String> = snapshots.keys().cloned().collect();
    let rounds = if follow == Follow::No { 0 } else { 4 };
    for _round in 0..rounds {
        // Address → that node's line in the view that mentioned it.
        let mut todo: BTreeMap<Addr, NodeLine> = BTreeMap::new();
        for id in &fresh {
            for l in snapshots[id].lines.iter().filter(|l| l.dialable()) {
                if handled.contains(l.id.as_str()) {
                    continue;
                }
                handled.insert(l.id.clone());
                if let Some(a) = line_addr(l).filter(|a| visited.insert(a.clone())) {
                    todo.insert(a, l.clone());
                }
            }
        }
        if todo.is_empty() {
            break;
        }
        let todo = &todo;
        let round = exec
            .run(todo.keys().cloned(), |addr, mut conn| async move {
                let seen_as = (follow != Follow::AllViews).then(|| &todo[&addr]);
                fetch_snapshot(&addr, &mut conn, detail, seen_as)
                    .await
                    .map(|s| s.for_user(exec.options().user.as_deref()))
            })
            .await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = round.ok.len(),
            failed = round.failed.len(),
            "discovery round"
        );
        failed.extend(round.failed);
        fresh.clear();
        for (_, snap) in round.ok {
            if let Some(id) = insert_snapshot(&mut snapshots, &mut visited, snap) {
                handled.insert(id.clone());
                fresh.push(id);
            }
        }
    }
    let mut view = ClusterView::from_snapshots(snapshots, failed);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "view built"
    );
    // A failed seed the cluster knows about is a failed node; an unknown one was a typo or
    // a stale seed and is not the cluster's problem.
    let known: BTreeSet<Addr> = view.nodes.iter().filter_map(line_addr).collect();
    for (addr, e) in seed_failures {
        if known.contains(&addr) {
            view.failed.insert(addr, e);
        }
    }
    view.elapsed_ms = started.elapsed().as_millis();
    Ok(view)
}

/// Keeps a snapshot under its node id; returns the id when it is new.
fn insert_snapshot(
    snapshots: &mut BTreeMap<String, NodeSnapshot>,
    visited: &mut BTreeSet<Addr>,
    snap: NodeSnapshot,
) -> Option<String> {
    let me = snap.myself()?;
    if let Some(a) = line_addr(me) {
        visited.insert(a);
    }
    let id = me.id.clone();
    if snapshots.contains_key(&id) {
        return None;
    }
    snapshots.insert(id.clone(), snap);
    Some(id)
}

/// The address to dial for a node line.
pub fn line_addr(line: &NodeLine) -> Option<Addr> {
    (!line.ip.is_empty() && line.port != 0).then(|| Addr::new(line.ip.clone(), line.port))
}

impl ClusterView {
    /// Builds the model from snapshots; pure, so checks can be tested on synthetic input.
    pub fn from_snapshots(
        snapshots: BTreeMap<String, NodeSnapshot>,
        failed: BTreeMap<Addr, NodeError>,
    ) -> ClusterView {
        let mut signatures: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        // Only full views count: a light snapshot's one line is the seed's opinion.
        for (id, snap) in snapshots.iter().filter(|(_, s)| s.own_view) {
            signatures
                .entry(snap.signature())
                .or_default()
                .push(id.clone());
        }
        // Most holders wins; ties go to the lexicographically first signature for stability.
        let reference_signature = signatures
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
            .map(|(s, _)| *s)
            .unwrap_or_default();
        let nodes = signatures
            .get(&reference_signature)
            .and_then(|ids| ids.first())
            .and_then(|id| snapshots.get(id))
            .map(|s| {
                let mut lines: Vec<NodeLine> = s
                    .lines
                    .iter()
                    .filter(|l| !l.flags.handshake)
                    .cloned()
                    .map(|mut l| {
                        l.flags.myself = false;
                        l
                    })
                    .collect();
                lines.sort_by_key(|l| (line_addr(l), l.id.clone()));
                lines
            })
            .unwrap_or_default();
        ClusterView {
            nodes,
            snapshots,
            failed,
            signatures,
            reference_signature,
            elapsed_ms: 0,
        }
    }

    pub fn node(&self, id: &str) -> Option<&NodeLine> {
        self.nodes.iter().find(|l| l.id == id)
    }

    pub fn snapshot(&self, id: &str) -> Option<&NodeSnapshot> {
        self.snapshots.get(id)
    }

    /// Why a node of the reference view could not be read, if it could not.
    pub fn error_for(&self, line: &NodeLine) -> Option<&NodeError> {
        line_addr(line).and_then(|a| self.failed.get(&a))
    }

    /// Masters in the reference view, sorted by address.
    pub fn masters(&self) -> impl Iterator<Item = &NodeLine> {
        self.nodes
            .iter()
            .filter(|l| l.flags.master && l.master_id.is_none())
    }

    /// Masters ordered as operators read a cluster: by first slot (slotless last), then address.
    pub fn masters_by_slot(&self) -> Vec<&NodeLine> {
        let mut masters: Vec<&NodeLine> = self.masters().collect();
        masters.sort_by_key(|m| {
            (
                m.slots.first().map_or(u32::MAX, |r| u32::from(r.start)),
                m.addr(),
            )
        });
        masters
    }

    /// Replicas following `master_id` in the reference view.
    pub fn replicas_of<'a>(&'a self, master_id: &'a str) -> impl Iterator<Item = &'a NodeLine> {
        self.nodes
            .iter()
            .filter(move |l| l.master_id.as_deref() == Some(master_id))
    }

    /// Every slot some master serves: a reachable master's own claim is authoritative (after
    /// `CLUSTER DELSLOTS` on the owner only it knows the slot is gone); an unreachable one is
    /// taken at the reference view's word.
    pub fn covered(&self) -> SlotSet {
        let mut set = SlotSet::new();
        for m in self.masters() {
            match self.snapshot(&m.id).and_then(NodeSnapshot::myself) {
                Some(own) => set.union_with(&own.slot_set()),
                None => set.union_with(&m.slot_set()),
            }
        }
        set
    }

    /// Master id owning each slot in the reference view.
    pub fn slot_owner(&self) -> Vec<Option<&NodeLine>> {
        let mut owners: Vec<Option<&NodeLine>> = vec![None; usize::from(SLOTS)];
        for m in self.masters() {
            for r in &m.slots {
                for s in r.start..=r.end {
                    owners[usize::from(s)] = Some(m);
                }
            }
        }
        owners
    }

    /// Nodes matching a `--node` filter — addresses, or node id prefixes of at least four
    /// characters; every node when the filter is empty.
    pub fn select<'a>(&'a self, filter: &'a [String]) -> impl Iterator<Item = &'a NodeLine> + 'a {
        self.nodes.iter().filter(move |l| {
            !l.flags.noaddr
                && (filter.is_empty()
                    || filter
                        .iter()
                        .any(|f| *f == l.addr() || (f.len() >= 4 && l.id.starts_with(f.as_str()))))
        })
    }

    /// Addresses of every dialable node in the reference view.
    pub fn addrs(&self) -> Vec<Addr> {
        self.nodes
            .iter()
            .filter(|l| l.dialable())
            .filter_map(line_addr)
            .collect()
    }

    /// Nodes whose INFO the ACL refused, as one warning line (None when there are none).
    pub fn denied_warning(&self) -> Option<String> {
        let mut denied: Vec<&NodeError> = self
            .snapshots
            .values()
            .filter_map(|s| s.denied.as_ref())
            .collect();
        denied.sort_by_key(|e| e.addr().clone());
        let first = denied.first()?;
        let more = match denied.len() {
            1 => String::new(),
            n => format!(" (and {} other node(s))", n - 1),
        };
        Some(format!(
            "{first}{more}: figures from INFO (roles, memory, keys, replication) are missing"
        ))
    }

    /// Replication offset gap of a replica behind its master, in bytes, when both answered.
    pub fn replica_lag_bytes(&self, replica: &NodeLine) -> Option<u64> {
        let master = self.snapshot(replica.master_id.as_deref()?)?;
        let snap = self.snapshot(&replica.id)?;
        let master_off = master.info.u64("master_repl_offset")?;
        let replica_off = snap
            .info
            .u64("slave_repl_offset")
            .or_else(|| snap.info.u64("master_repl_offset"))?;
        Some(master_off.saturating_sub(replica_off))
    }
}

/// Where one shard (a master that owns slots) can be read from, best first.
#[derive(Debug, Clone)]
pub struct ReadSource {
    pub master_id: String,
    pub master_addr: Option<Addr>,
    pub slots: SlotSet,
    /// Usable nodes, best first: `(address, is_replica)`. Empty when none is usable; then
    /// `why_none` says why.
    pub candidates: Vec<(Addr, bool)>,
    pub why_none: Option<String>,
}

/// What [`ClusterView::read_sources`] chose, and the nodes it passed over.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    pub shards: Vec<ReadSource>,
    /// Masters that are not shards (no slots, failed) and replicas that were not usable, one
    /// line each naming the node.
    pub warnings: Vec<String>,
}

impl ClusterView {
    /// The one rule for reading a shard's data (backups, key scans): the shards are the
    /// masters that own slots; a replica is used only if it answered discovery, is not
    /// flagged failing, and its link to the master is up with no sync in progress (the most
    /// caught-up first); the master only if it answered and is not flagged failed. With
    /// `prefer_replicas` false the master alone is a candidate.
    pub fn read_sources(&self, prefer_replicas: bool) -> ReadPlan {
        let mut plan = ReadPlan::default();
        for m in self.masters_by_slot() {
            let addr = line_addr(m);
            let name = addr.as_ref().map_or_else(|| m.id.clone(), Addr::to_string);
            if m.slot_count() == 0 {
                plan.warnings.push(if m.flags.fail {
                    format!("{name}: failed master without slots (an old master after a failover?): not a shard")
                } else {
                    format!("{name}: master without slots: not a shard")
                });
                continue;
            }
            let master_ok = if m.flags.fail {
                Err("flagged failed by the cluster".to_string())
            } else if self.snapshot(&m.id).is_none() {
                Err(self
                    .error_for(m)
                    .map_or_else(|| "did not answer".to_string(), |e| e.reason()))
            } else {
                Ok(())
            };
            let mut replicas: Vec<(u64, Addr)> = Vec::new();
            if prefer_replicas {
                for r in self.replicas_of(&m.id) {
                    let Some(raddr) = line_addr(r) else { continue };
                    let snap = self.snapshot(&r.id);
                    let why = if r.flags.fail || r.flags.pfail {
                        Some("flagged failing".to_string())
                    } else if snap.is_none() {
                        Some(
                            self.error_for(r)
                                .map_or_else(|| "did not answer".to_string(), |e| e.reason()),
                        )
                    } else if snap.and_then(|s| s.info.get("master_link_status")) != Some("up") {
                        Some("link to its master is down".to_string())
                    } else if snap.and_then(|s| s.info.u64("master_sync_in_progress")) == Some(1) {
                        Some("still syncing with its master".to_string())
                    } else {
                        None
                    };
                    match why {
                        Some(why) => plan.warnings.push(format!(
                            "{raddr}: replica of {name} not used as a source: {why}"
                        )),
                        None => {
                            let offset = snap
                                .and_then(|s| s.info.u64("slave_repl_offset"))
                                .unwrap_or(0);
                            replicas.push((offset, raddr));
                        }
                    }
                }
            }
            replicas.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let mut candidates: Vec<(Addr, bool)> =
                replicas.into_iter().map(|(_, a)| (a, true)).collect();
            let why_none = match (&master_ok, &addr) {
                (Ok(()), Some(a)) => {
                    candidates.push((a.clone(), false));
                    None
                }
                (Err(why), _) if candidates.is_empty() => {
                    Some(format!("master {name} {why}, and no replica is in sync"))
                }
                (Err(why), _) => {
                    plan.warnings
                        .push(format!("{name}: master not usable as a fallback: {why}"));
                    None
                }
                (Ok(()), None) => Some(format!("master {name} has no address")),
            };
            plan.shards.push(ReadSource {
                master_id: m.id.clone(),
                master_addr: addr,
                slots: m.slot_set(),
                candidates,
                why_none,
            });
        }
        plan
    }
}

/// A node as the JSON outputs show it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRef {
    pub id: String,
    pub addr: String,
}

impl From<&NodeLine> for NodeRef {
    fn from(l: &NodeLine) -> Self {
        NodeRef {
            id: l.id.clone(),
            addr: l.addr(),
        }
    }
}

#[doc(hidden)]
pub mod testing {
    //! Synthetic snapshots for testing the model and the rules that read it (here and in
    //! the ops crate's tests; not an API).
    use super::*;
    use rcops_formats::info::Info;

    pub const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    pub const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    pub const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    /// The same cluster text, as seen by `me`.
    fn nodes_as(me: &str, text: &str) -> String {
        text.lines()
            .map(|l| {
                if l.starts_with(me) {
                    l.replacen(" master ", " myself,master ", 1).replacen(
                        " slave ",
                        " myself,slave ",
                        1,
                    )
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn snap(id: &str, port: u16, nodes: &str, info: &str) -> (String, NodeSnapshot) {
        let lines = cluster_nodes::parse(&nodes_as(id, nodes)).expect("test CLUSTER NODES");
        (
            id.to_string(),
            NodeSnapshot {
                addr: Addr::new("127.0.0.1", port),
                lines,
                own_view: true,
                cluster_info: Info::parse("cluster_state:ok\n"),
                info: Info::parse(info),
                denied: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{snap, A, B, C};
    use super::*;

    const D: &str = "dddddddddddddddddddddddddddddddddddddddd";
    const E: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

    fn text() -> String {
        format!(
            "{A} 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191\n\
             {B} 127.0.0.1:7001@17001 master - 0 0 2 connected 8192-16383\n\
             {C} 127.0.0.1:7002@17002 slave {A} 0 0 1 connected\n\
             {D} 127.0.0.1:7003@17003 slave {A} 0 0 1 connected\n\
             {E} 127.0.0.1:7004@17004 master,fail - 0 0 0 disconnected\n"
        )
    }

    const MASTER: &str = "role:master\nmaster_repl_offset:1000\n";
    const UP: &str =
        "role:slave\nmaster_link_status:up\nmaster_sync_in_progress:0\nslave_repl_offset:";

    #[test]
    fn shards_are_slot_owners_and_only_in_sync_reachable_replicas_are_sources() {
        let t = text();
        let up_900 = format!("{UP}900\n");
        let up_1000 = format!("{UP}1000\n");
        let all = [
            snap(A, 7000, &t, MASTER),
            snap(B, 7001, &t, MASTER),
            snap(C, 7002, &t, &up_900),
            snap(D, 7003, &t, &up_1000),
        ];
        let view =
            ClusterView::from_snapshots(all.clone().into_iter().collect(), Default::default());
        let plan = view.read_sources(true);
        assert_eq!(
            plan.shards.len(),
            2,
            "the slotless failed master is no shard"
        );
        assert!(plan.warnings[0].contains("127.0.0.1:7004: failed master without slots"));
        let ports = |s: &ReadSource| {
            s.candidates
                .iter()
                .map(|(a, r)| (a.port, *r))
                .collect::<Vec<_>>()
        };
        // The most caught-up replica first, then the other, then the master.
        assert_eq!(
            ports(&plan.shards[0]),
            [(7003, true), (7002, true), (7000, false)]
        );
        assert_eq!(ports(&plan.shards[1]), [(7001, false)]);
        assert_eq!(ports(&view.read_sources(false).shards[0]), [(7000, false)]);

        // D frozen (no snapshot), C's link down: the master only, with one warning each.
        let down = up_900.replace("up", "down");
        let view = ClusterView::from_snapshots(
            [all[0].clone(), all[1].clone(), snap(C, 7002, &t, &down)]
                .into_iter()
                .collect(),
            Default::default(),
        );
        let plan = view.read_sources(true);
        assert_eq!(ports(&plan.shards[0]), [(7000, false)]);
        let w = plan.warnings.join("\n");
        assert!(w.contains("127.0.0.1:7002: replica of 127.0.0.1:7000 not used as a source: link to its master is down"), "{w}");
        assert!(
            w.contains(
                "127.0.0.1:7003: replica of 127.0.0.1:7000 not used as a source: did not answer"
            ),
            "{w}"
        );

        // B unreachable and without replicas: a shard with no source, and why.
        let view = ClusterView::from_snapshots(
            [all[0].clone(), all[2].clone()].into_iter().collect(),
            Default::default(),
        );
        let plan = view.read_sources(true);
        assert!(plan.shards[1].candidates.is_empty());
        assert_eq!(
            plan.shards[1].why_none.as_deref(),
            Some("master 127.0.0.1:7001 did not answer, and no replica is in sync")
        );
    }
}
