//! The slot writer: the one place that writes into a cluster. Each write (a `RESTORE` of one
//! key, or the commands of one slot, a transaction kept whole) goes to the master owning its
//! slot in a live slot table; writes are grouped per node, one pipeline per node, all nodes
//! at once.
//!
//! Rules every caller gets:
//! - `MOVED` sends the write to the new owner and refreshes the table; `ASK` sends it once
//!   with `ASKING`; `TRYAGAIN`, `CLUSTERDOWN`, `LOADING` and `MASTERDOWN` are retried with
//!   backoff, and a node that cannot be reached triggers a table refresh before the retry
//!   (a failover promotes a replica whose address the old table does not have).
//! - A write whose outcome is unknown (timeout, dropped connection) is never counted blind:
//!   a `RESTORE` is looked up with `EXISTS` and re-sent when absent; commands are re-sent,
//!   and said to be (`Outcome::Written { twice: true }`), since they may have run.
//! - Under `skip`, a key found present after an unknown outcome is reported as existing,
//!   never rewritten.
//! - The replication fence ([`Lane::confirm`]): before a caller checkpoints, each master
//!   written to is asked for a replica's acknowledgement (`WAIT 1` on the connection that
//!   wrote); writes no replica confirmed are handed back, so a checkpoint never counts what
//!   a failover can still take away.
//! - Pacing: a cap in writes per second shared by every lane.
//! - Memory stays bounded whatever the size of a value: a payload kept in a spill file
//!   streams from it, and the reply timeout of a write grows with its size.
//! - A value too big for one `RESTORE` (which would block the target while it loads) is
//!   rebuilt piece by piece ([`Op::Rebuild`]): the commands of [`rcops_rdb::rebuild`] in
//!   batches into a temporary key hash-tagged into the same slot, then one script that sets
//!   the expiry and renames it over the key (or, unless replacing, leaves an existing key
//!   alone). A batch whose outcome is unknown starts the value over, since `RPUSH` or
//!   `APPEND` run twice would not be the same value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fanout::Executor;
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};
use crate::transport::Transport;

/// Slowest write rate assumed when sizing a reply timeout: a write gets `--timeout` plus a
/// second per this many bytes (a 300 MB value: 40 s), since the server parses the whole
/// value before it answers.
const WRITE_BYTES_PER_SEC: f64 = 8.0 * 1024.0 * 1024.0;

fn write_timeout(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / WRITE_BYTES_PER_SEC)
}

/// Attempts per write (redirects, retryable errors, re-sends after an unknown outcome).
const ATTEMPTS: usize = 8;

/// Least time between two refreshes of the slot table.
const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// How a write that ran out of attempts (never answered, not refused) is reported.
const GAVE_UP: &str = "gave up";

/// Tries at a big value before it counts as failed.
const REBUILD_ATTEMPTS: usize = 3;

/// Bytes of commands per piece of a big value.
const REBUILD_BATCH: usize = 4 << 20;

/// The end of a rebuild, run by the server in one step: KEYS[1] the temporary key, KEYS[2]
/// the key, ARGV[1] the absolute expiry in ms (0: none), ARGV[2] `replace`, `keep` (leave an
/// existing key) or `skip` (the same, and a key found after a lost reply may not be ours).
/// No temporary key but the key there means an earlier try renamed it and its reply was
/// lost. An expiry already past leaves nothing, as the source would.
const RENAME_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 and ARGV[2] ~= 'skip' then return 1 end
  if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('BUSYKEY') end
  return redis.error_reply('ERR the rebuilt value is gone (evicted?)')
end
if ARGV[2] ~= 'replace' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return redis.error_reply('BUSYKEY Target key name already exists.')
end
if ARGV[1] ~= '0' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
end
-- RENAME would free a big old value in the server's main thread; UNLINK frees it aside.
redis.call('UNLINK', KEYS[2])
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"#;

/// A value's DUMP payload: in memory, or (too big for it) the raw bytes in their spill file
/// with the version and CRC64 that follow them.
pub enum Payload {
    Mem(Vec<u8>),
    File {
        spilled: rcops_rdb::Spilled,
        /// RDB version (2 bytes LE) and CRC64 (8 bytes LE) of the raw bytes and the version.
        trailer: [u8; 10],
    },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Mem(v) => v.len() as u64,
            Payload::File { spilled, .. } => spilled.len + 10,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one write does.
pub enum Op {
    /// `RESTORE key ttl payload [REPLACE] [ABSTTL]`.
    Restore {
        payload: Payload,
        /// Absolute expiry in ms, 0 for none.
        abs_ttl: i64,
        replace: bool,
    },
    /// Commands whose keys all hash to the write's slot, in order; inside `MULTI`/`EXEC`
    /// when `multi`.
    Commands {
        cmds: Vec<Vec<Vec<u8>>>,
        multi: bool,
    },
    /// A big value rebuilt piece by piece from its serialization (see the module doc).
    Rebuild {
        raw: Raw,
        /// The RDB version the value was serialized with.
        version: u16,
        /// Absolute expiry in ms, 0 for none.
        abs_ttl: i64,
        replace: bool,
    },
}

/// A value's serialization (type byte, then the value): in memory or in its spill file.
#[derive(Clone)]
pub enum Raw {
    Mem(std::sync::Arc<Vec<u8>>),
    File(rcops_rdb::Spilled),
}

impl Raw {
    pub fn len(&self) -> u64 {
        match self {
            Raw::Mem(v) => v.len() as u64,
            Raw::File(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reader(&self) -> Box<dyn std::io::Read + Send> {
        struct Shared(std::sync::Arc<Vec<u8>>, usize);
        impl std::io::Read for Shared {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (&self.0[self.1..]).read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        match self {
            Raw::Mem(v) => Box::new(Shared(v.clone(), 0)),
            Raw::File(s) => Box::new(s.reader()),
        }
    }
}

/// One write into one slot.
pub struct Write {
    pub slot: u16,
    /// The key (`RESTORE`), or the first key of the commands (for messages).
    pub key: Vec<u8>,
    /// A label the caller counts by (a value type, a command name).
    pub kind: &'static str,
    /// The caller's id for the write (an entry's position in its file, a stream offset).
    pub index: u64,
    pub op: Op,
}

impl Write {
    fn bytes(&self) -> u64 {
        match &self.op {
            Op::Restore { payload, .. } => payload.len(),
            Op::Rebuild { raw, .. } => raw.len(),
            Op::Commands { cmds, .. } => cmds
                .iter()
                .map(|c| c.iter().map(|a| a.len() as u64 + 16).sum::<u64>())
                .sum(),
        }
    }

    fn is_restore(&self) -> bool {
        matches!(self.op, Op::Restore { .. })
    }
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done. `twice`: commands re-sent after an unknown outcome, so they may have run twice.
    Written {
        twice: bool,
    },
    /// The key was there already and was left alone (`BUSYKEY`, or found after an unknown
    /// outcome under `skip`).
    Exists,
    Failed(String),
}

/// One write's outcome.
#[derive(Debug, Clone)]
pub struct Done {
    pub index: u64,
    pub kind: &'static str,
    pub key: Vec<u8>,
    pub outcome: Outcome,
}

/// Writes a master acknowledged that no replica confirmed: `(index, kind)` of each.
#[derive(Debug, Clone)]
pub struct Unconfirmed {
    pub addr: Addr,
    pub why: String,
    pub writes: Vec<(u64, &'static str)>,
}

/// Where each slot goes.
struct Router {
    owners: Vec<Option<Addr>>,
    refreshed: Option<Instant>,
}

/// What every lane shares: the slot table, the pace, the conflict rule.
pub struct SlotWriter<'a> {
    exec: &'a Executor,
    router: Mutex<Router>,
    rate: Option<u64>,
    start: Instant,
    admitted: AtomicU64,
    /// Under `skip`, a key found present after an unknown outcome is not ours.
    skip: bool,
}

impl<'a> SlotWriter<'a> {
    /// A writer into `view`'s masters. `rate` caps writes per second across all lanes;
    /// `skip`: a key found after a lost reply may have existed before (the `skip` mode).
    pub fn new(exec: &'a Executor, view: &ClusterView, rate: Option<u64>, skip: bool) -> Self {
        SlotWriter {
            exec,
            router: Mutex::new(Router {
                owners: owners(view),
                refreshed: None,
            }),
            rate: rate.filter(|&r| r > 0),
            start: Instant::now(),
            admitted: AtomicU64::new(0),
            skip,
        }
    }

    pub fn exec(&self) -> &'a Executor {
        self.exec
    }

    /// A lane: its own connections (one per node) and fence. Writes of one lane are sent
    /// one batch at a time, in order.
    pub fn lane(&self) -> Lane<'_, 'a> {
        Lane {
            w: self,
            conns: Conns::default(),
            fence: HashMap::new(),
        }
    }

    /// Waits until `n` more writes fit under the rate cap.
    async fn admit(&self, n: u64) {
        let Some(rate) = self.rate else { return };
        let before = self.admitted.fetch_add(n, Ordering::Relaxed);
        let due = self.start + Duration::from_secs_f64(before as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }

    fn owner(&self, slot: u16) -> Option<Addr> {
        let r = self.router.lock().ok()?;
        r.owners[usize::from(slot)].clone()
    }

    fn moved(&self, slot: u16, to: &Addr) {
        if let Ok(mut r) = self.router.lock() {
            r.owners[usize::from(slot)] = Some(to.clone());
        }
    }

    /// Reads the slot table again from any master it knows (at most every
    /// [`REFRESH_EVERY`]); keeps the old one when none answers.
    async fn refresh(&self) {
        let seeds: Vec<Addr> = {
            let Ok(mut r) = self.router.lock() else {
                return;
            };
            if r.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            r.refreshed = Some(Instant::now());
            let mut s: Vec<Addr> = r.owners.iter().flatten().cloned().collect();
            s.sort();
            s.dedup();
            s
        };
        let detail = crate::topology::Detail::Health;
        if let Ok(view) = crate::topology::discover_light(self.exec, &seeds, detail).await {
            let fresh = owners(&view);
            if let Ok(mut r) = self.router.lock() {
                for (slot, o) in fresh.into_iter().enumerate() {
                    if o.is_some() {
                        r.owners[slot] = o;
                    }
                }
            }
        }
    }
}

fn owners(view: &ClusterView) -> Vec<Option<Addr>> {
    view.slot_owner()
        .into_iter()
        .map(|o| o.and_then(line_addr))
        .collect()
}

/// A write on its way: where to send it (a redirect), whether it needs `ASKING`, whether it
/// was sent before with an unknown outcome.
struct Todo {
    w: Write,
    to: Option<Addr>,
    asking: bool,
    resent: bool,
    /// The last error, reported if the attempts run out.
    last: Option<String>,
}

/// One sequence of batches with its own connections and replication fence.
pub struct Lane<'w, 'a> {
    w: &'w SlotWriter<'a>,
    conns: Conns,
    /// Writes counted as written since the last [`Lane::confirm`], by master.
    fence: HashMap<Addr, Vec<(u64, &'static str)>>,
}

impl Lane<'_, '_> {
    /// Sends one batch (paced): grouped by owner, one pipeline per node, all nodes at once,
    /// following redirects and retrying until every write has an outcome; then the big values
    /// of the batch, one at a time.
    pub async fn send(&mut self, batch: Vec<Write>) -> Vec<Done> {
        self.w.admit(batch.len() as u64).await;
        let (big, batch): (Vec<Write>, Vec<Write>) = batch
            .into_iter()
            .partition(|w| matches!(w.op, Op::Rebuild { .. }));
        let mut done = self.send_now(batch, true).await;
        for w in big {
            done.push(self.rebuild(w).await);
        }
        done
    }

    /// [`Self::send`] without pacing or big values; `fence`: whether writes count for the
    /// replication fence (a rebuild's pieces do not: its final rename does).
    async fn send_now(&mut self, batch: Vec<Write>, fence: bool) -> Vec<Done> {
        let mut done = Vec::with_capacity(batch.len());
        let mut todo: Vec<Todo> = batch
            .into_iter()
            .map(|w| Todo {
                w,
                to: None,
                asking: false,
                resent: false,
                last: None,
            })
            .collect();
        let finish = |t: Todo, outcome: Outcome, done: &mut Vec<Done>| {
            done.push(Done {
                index: t.w.index,
                kind: t.w.kind,
                key: t.w.key,
                outcome,
            });
        };
        let base = self.w.exec.timeout();
        for attempt in 0..ATTEMPTS {
            if todo.is_empty() {
                break;
            }
            if attempt > 0 && todo.iter().any(|t| t.to.is_none()) {
                // Not only redirects: give a failing-over or loading node time.
                let wait = Duration::from_millis(50 << attempt.min(5));
                tokio::time::sleep(wait).await;
            }
            let mut by_node: HashMap<Addr, Vec<Todo>> = HashMap::new();
            for t in todo.drain(..) {
                match t.to.clone().or_else(|| self.w.owner(t.w.slot)) {
                    Some(a) => by_node.entry(a).or_default().push(t),
                    None => {
                        let why = format!("slot {} has no owner in the target", t.w.slot);
                        finish(t, Outcome::Failed(why), &mut done);
                    }
                }
            }
            let (w, conns) = (self.w, &self.conns);
            let rounds =
                futures::future::join_all(by_node.into_iter().map(|(addr, items)| async move {
                    let r = pipeline(w, conns, &addr, &items, base).await;
                    (addr, items, r)
                }))
                .await;
            let mut refresh = false;
            for (addr, items, r) in rounds {
                let replies = match r {
                    Ok(replies) => replies,
                    Err(e) => {
                        refresh |= e.is_unreachable();
                        self.unknown(&addr, items, &e, base, &mut todo, &mut done)
                            .await;
                        continue;
                    }
                };
                for (mut t, reply) in items.into_iter().zip(replies) {
                    let Some(text) = reply else {
                        if fence {
                            self.landed(&addr, &t.w);
                        }
                        let twice = t.resent && !t.w.is_restore();
                        finish(t, Outcome::Written { twice }, &mut done);
                        continue;
                    };
                    let code = text.split_whitespace().next().unwrap_or("");
                    match code {
                        "MOVED" | "ASK" => {
                            let to = text
                                .split_whitespace()
                                .nth(2)
                                .and_then(|a| a.parse::<Addr>().ok());
                            if code == "MOVED" {
                                if let Some(to) = &to {
                                    self.w.moved(t.w.slot, to);
                                }
                                refresh = true;
                            }
                            t.asking = code == "ASK";
                            t.to = to;
                            t.last = Some(format!("{addr}: {text}"));
                            todo.push(t);
                        }
                        "BUSYKEY" => finish(t, Outcome::Exists, &mut done),
                        "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" => {
                            refresh |= code != "TRYAGAIN";
                            t.to = None;
                            t.asking = false;
                            t.last = Some(format!("{addr}: {text}"));
                            todo.push(t);
                        }
                        _ => {
                            let why = format!("{addr}: {text}");
                            finish(t, Outcome::Failed(why), &mut done);
                        }
                    }
                }
            }
            if refresh && !todo.is_empty() {
                self.w.refresh().await;
            }
        }
        for t in todo {
            let why = format!(
                "{GAVE_UP} after {ATTEMPTS} attempts: {}",
                t.last.as_deref().unwrap_or("no answer")
            );
            finish(t, Outcome::Failed(why), &mut done);
        }
        done
    }

    /// Writes one big value piece by piece into its temporary key, then renames it over the
    /// key (see the module doc). Starts over after a piece whose outcome is unknown.
    async fn rebuild(&mut self, w: Write) -> Done {
        let Write {
            slot,
            key,
            kind,
            index,
            op:
                Op::Rebuild {
                    raw,
                    version,
                    abs_ttl,
                    replace,
                },
        } = w
        else {
            unreachable!("only rebuilds come here")
        };
        let done = |outcome| Done {
            index,
            kind,
            key: key.clone(),
            outcome,
        };
        let tmp = format!(
            "{{{}}}rcops:rebuild:{:016x}",
            rcops_formats::slot::tag_for_slot(slot),
            rcops_rdb::crc64(&key)
        )
        .into_bytes();
        let piece = |cmds| Write {
            slot,
            key: key.clone(),
            kind,
            index,
            op: Op::Commands { cmds, multi: false },
        };
        let mut last = String::new();
        for _ in 0..REBUILD_ATTEMPTS {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<Vec<u8>>>>(2);
            let producer = {
                let (raw, tmp) = (raw.clone(), tmp.clone());
                tokio::task::spawn_blocking(move || {
                    let open = || raw.reader();
                    rcops_rdb::rebuild::rebuild(open, version, &tmp, REBUILD_BATCH, |b| {
                        tx.blocking_send(b).is_ok()
                    })
                })
            };
            let mut first = true;
            let mut broke = None;
            while let Some(mut cmds) = rx.recv().await {
                if std::mem::take(&mut first) {
                    // What a run that died half way through left.
                    cmds.insert(0, vec![b"DEL".to_vec(), tmp.clone()]);
                }
                let sent = self.send_now(vec![piece(cmds)], false).await;
                match sent.into_iter().next().map(|d| d.outcome) {
                    Some(Outcome::Written { twice: false }) => {}
                    Some(Outcome::Failed(why)) => {
                        let again = why.starts_with(GAVE_UP);
                        broke = Some((why, again));
                        break;
                    }
                    _ => {
                        broke = Some(("a piece's reply was lost".into(), true));
                        break;
                    }
                }
            }
            drop(rx);
            let walked = producer.await;
            // Whether another try may do better: not after an error the server gave.
            let (why, again) = match (broke, walked) {
                (_, Err(e)) => (format!("rebuilding: {e}"), false),
                (_, Ok(Err(e))) => {
                    last = format!("the value cannot be read: {e}");
                    break;
                }
                (Some(broke), _) => broke,
                (None, Ok(Ok(_))) => {
                    let ttl = abs_ttl.max(0).to_string();
                    let mode: &[u8] = if replace {
                        b"replace"
                    } else if self.w.skip {
                        b"skip"
                    } else {
                        b"keep"
                    };
                    let script = vec![
                        b"EVAL".to_vec(),
                        RENAME_SCRIPT.as_bytes().to_vec(),
                        b"2".to_vec(),
                        tmp.clone(),
                        key.clone(),
                        ttl.into_bytes(),
                        mode.to_vec(),
                    ];
                    let sent = self.send_now(vec![piece(vec![script])], true).await;
                    match sent.into_iter().next().map(|d| d.outcome) {
                        Some(Outcome::Written { .. }) => {
                            return done(Outcome::Written { twice: false })
                        }
                        Some(Outcome::Exists) => return done(Outcome::Exists),
                        Some(Outcome::Failed(why)) => {
                            let again = why.starts_with(GAVE_UP);
                            (why, again)
                        }
                        None => ("no reply to the rename".into(), true),
                    }
                }
            };
            last = why;
            if !again {
                break;
            }
        }
        let _ = self
            .send_now(vec![piece(vec![vec![b"DEL".to_vec(), tmp]])], false)
            .await;
        done(Outcome::Failed(format!("rebuilding a big value: {last}")))
    }

    /// Writes to `addr` whose outcome is unknown: a `RESTORE` is looked up (present: done,
    /// or existing under `skip`; absent: sent again); commands are sent again.
    async fn unknown(
        &mut self,
        addr: &Addr,
        items: Vec<Todo>,
        e: &NodeError,
        base: Duration,
        todo: &mut Vec<Todo>,
        done: &mut Vec<Done>,
    ) {
        let (restores, commands): (Vec<Todo>, Vec<Todo>) =
            items.into_iter().partition(|t| t.w.is_restore());
        for mut t in commands {
            t.resent = true;
            t.to = None;
            t.last = Some(e.to_string());
            todo.push(t);
        }
        if restores.is_empty() {
            return;
        }
        let bytes: u64 = restores.iter().map(|t| t.w.bytes()).sum();
        let timeout = write_timeout(base, bytes);
        match exists(self.w, &self.conns, addr, &restores, timeout).await {
            Err(_) => {
                for t in restores {
                    done.push(Done {
                        index: t.w.index,
                        kind: t.w.kind,
                        key: t.w.key,
                        outcome: Outcome::Failed(e.to_string()),
                    });
                }
            }
            Ok(present) => {
                for (mut t, present) in restores.into_iter().zip(present) {
                    let replace = matches!(t.w.op, Op::Restore { replace: true, .. });
                    if present && !replace {
                        // Ours (the target held none of the keys) or, under skip, possibly
                        // there before: either way not rewritten.
                        let outcome = if self.w.skip {
                            Outcome::Exists
                        } else {
                            self.landed(addr, &t.w);
                            Outcome::Written { twice: false }
                        };
                        done.push(Done {
                            index: t.w.index,
                            kind: t.w.kind,
                            key: t.w.key,
                            outcome,
                        });
                    } else {
                        t.last = Some(e.to_string());
                        todo.push(t);
                    }
                }
            }
        }
    }

    fn landed(&mut self, addr: &Addr, w: &Write) {
        self.fence
            .entry(addr.clone())
            .or_default()
            .push((w.index, w.kind));
    }

    /// The replication fence: asks every master written to since the last call whether a
    /// replica has the writes, all at once, and returns those none confirmed, per master.
    pub async fn confirm(&mut self) -> Vec<Unconfirmed> {
        let pending = std::mem::take(&mut self.fence);
        let (w, conns) = (self.w, &self.conns);
        let checks = pending.into_iter().map(|(addr, writes)| async move {
            let r = replicated(w, conns, &addr).await;
            (addr, writes, r)
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(addr, writes, r)| r.err().map(|why| Unconfirmed { addr, why, writes }))
            .collect()
    }
}

/// Whether a replica of `addr` holds what this lane wrote there: `WAIT 1` on the connection
/// that wrote (WAIT covers its own connection's writes), within the node timeout. A master
/// without an online replica confirms at once: nothing else could hold the keys. A master
/// demoted since (a failover) confirms once it continues from its new master by a partial
/// resync, which proves its writes are in the new master's history.
async fn replicated(w: &SlotWriter<'_>, conns: &Conns, addr: &Addr) -> Result<(), String> {
    let Some((mut t, true)) = conns.idle(addr) else {
        return Err("the connection that wrote them was lost".into());
    };
    let base = w.exec.timeout();
    let mut info = replication_info(&mut t, addr, base).await?;
    if info.get("role").is_some_and(|r| r != "master") {
        // Demoted by a failover. What it held is in its new master's history when it
        // continued from that master by a partial resync: it then keeps its old replication
        // id as its second one (after a full resync the second id is cleared, and what the
        // new master never had is gone). Waits for the link within the node timeout.
        let deadline = Instant::now() + base;
        loop {
            let up = info.get("master_link_status") == Some("up");
            let kept = info
                .get("master_replid2")
                .is_some_and(|id| !id.is_empty() && id.bytes().any(|b| b != b'0'));
            if up && kept {
                conns.put(addr, t, true);
                return Ok(());
            }
            if up || Instant::now() >= deadline {
                return Err(if up {
                    "it is a replica now and resynced in full (failed over)".into()
                } else {
                    "it is a replica now (failed over) without a link to its new master".into()
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            info = replication_info(&mut t, addr, base).await?;
        }
    }
    let online = info
        .replicas()
        .iter()
        .filter(|r| r.state == "online")
        .count();
    if online > 0 {
        let ms = base.as_millis().to_string();
        let got = t
            .frames_within(addr, 1, base * 2, |out| {
                rcops_formats::resp::encode_command(&[b"WAIT", b"1", ms.as_bytes()], out)
            })
            .await
            .map_err(|e| e.reason())?;
        if got.first().is_none_or(|f| f.starts_with(b":0")) {
            conns.put(addr, t, true);
            return Err(format!(
                "{online} replica(s) online, none acknowledged within {}",
                humantime::format_duration(base)
            ));
        }
    }
    conns.put(addr, t, true);
    Ok(())
}

async fn replication_info(
    t: &mut Transport,
    addr: &Addr,
    timeout: Duration,
) -> Result<rcops_formats::info::Info, String> {
    let info = t
        .frames_within(addr, 1, timeout, |out| {
            rcops_formats::resp::encode_command(&[b"INFO", b"replication"], out)
        })
        .await
        .map_err(|e| e.reason())?;
    Ok(rcops_formats::info::Info::parse(&String::from_utf8_lossy(
        info.first().map_or(&[][..], |f| f),
    )))
}

/// Whether each key exists, asked on a fresh connection within `timeout` (the server may
/// still be busy with the writes whose replies were lost).
async fn exists(
    w: &SlotWriter<'_>,
    conns: &Conns,
    addr: &Addr,
    items: &[Todo],
    timeout: Duration,
) -> Result<Vec<bool>, NodeError> {
    let mut t = Transport::open(w.exec.options(), addr).await?;
    let n = items.len() + items.iter().filter(|t| t.asking).count();
    let frames = t
        .frames_within(addr, n, timeout, |out| {
            for t in items {
                if t.asking {
                    rcops_formats::resp::encode_command(&[b"ASKING"], out);
                }
                rcops_formats::resp::encode_command(&[b"EXISTS", &t.w.key], out);
            }
        })
        .await?;
    let mut it = frames.into_iter();
    let mut out = Vec::with_capacity(items.len());
    for t in items {
        if t.asking {
            it.next();
        }
        match it.next() {
            Some(f) if f.starts_with(b":1") => out.push(true),
            Some(f) if f.starts_with(b":0") => out.push(false),
            other => {
                return Err(NodeError::Command {
                    addr: addr.clone(),
                    reason: format!(
                        "EXISTS answered {:?}",
                        String::from_utf8_lossy(&other.unwrap_or_default())
                    ),
                })
            }
        }
    }
    conns.put(addr, t, false);
    Ok(out)
}

/// A lane's bulk connections, one per node (a lane sends one batch at a time): taken for
/// one pipeline, put back after it (dropped after an error), each marked once it carried a
/// write, since the replication fence must ask on a connection that wrote.
#[derive(Default)]
struct Conns {
    idle: Mutex<HashMap<Addr, (Transport, bool)>>,
}

impl Conns {
    fn idle(&self, addr: &Addr) -> Option<(Transport, bool)> {
        self.idle.lock().ok().and_then(|mut m| m.remove(addr))
    }

    async fn take(&self, exec: &Executor, addr: &Addr) -> Result<(Transport, bool), NodeError> {
        match self.idle(addr) {
            Some(t) => Ok(t),
            None => Ok((Transport::open(exec.options(), addr).await?, false)),
        }
    }

    /// Keeps `t` unless a connection that wrote is already kept for `addr`.
    fn put(&self, addr: &Addr, t: Transport, wrote: bool) {
        if let Ok(mut m) = self.idle.lock() {
            if wrote || !m.get(addr).is_some_and(|(_, w)| *w) {
                m.insert(addr.clone(), (t, wrote));
            }
        }
    }
}

/// The arguments of `RESTORE key ttl <payload> [REPLACE] [ABSTTL]` (the payload at index 3),
/// and how many there are.
fn restore_args<'a>(
    key: &'a [u8],
    ttl: &'a str,
    replace: bool,
    abs_ttl: i64,
    payload: &'a [u8],
) -> ([&'a [u8]; 6], usize) {
    let mut args: [&[u8]; 6] = [b"RESTORE", key, ttl.as_bytes(), payload, b"", b""];
    let mut n = 4;
    if replace {
        args[n] = b"REPLACE";
        n += 1;
    }
    if abs_ttl > 0 {
        args[n] = b"ABSTTL";
        n += 1;
    }
    (args, n)
}

/// How many replies `t` gets: `ASKING` before a `RESTORE` and before each command (inside a
/// transaction once, before `MULTI`: the flag lasts until `EXEC`), `MULTI`, `EXEC`.
fn replies(t: &Todo) -> usize {
    let asking = usize::from(t.asking);
    match &t.w.op {
        Op::Restore { .. } => 1 + asking,
        Op::Rebuild { .. } => 0,
        Op::Commands { cmds, multi: true } => cmds.len() + 2 + asking,
        Op::Commands { cmds, multi: false } => cmds.len() * (1 + asking),
    }
}

/// Encodes an in-memory write (this is the hot loop of a restore: one encoding, one copy of
/// the payload).
fn encode(t: &Todo, out: &mut Vec<u8>) {
    let asking = |out: &mut Vec<u8>| {
        if t.asking {
            rcops_formats::resp::encode_command(&[b"ASKING"], out);
        }
    };
    match &t.w.op {
        Op::Restore {
            payload: Payload::Mem(v),
            abs_ttl,
            replace,
        } => {
            asking(out);
            let ttl = abs_ttl.to_string();
            let (args, n) = restore_args(&t.w.key, &ttl, *replace, *abs_ttl, v);
            rcops_formats::resp::encode_command(&args[..n], out);
        }
        Op::Restore { .. } | Op::Rebuild { .. } => {}
        Op::Commands { cmds, multi } => {
            if *multi {
                asking(out);
                rcops_formats::resp::encode_command(&[b"MULTI"], out);
            }
            for c in cmds {
                if !*multi {
                    asking(out);
                }
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                rcops_formats::resp::encode_command(&args, out);
            }
            if *multi {
                rcops_formats::resp::encode_command(&[b"EXEC"], out);
            }
        }
    }
}

/// One write's outcome from its replies: the first redirect or error that decides it (a
/// queued command's `MOVED` aborts its transaction), `None` for success.
fn verdict(t: &Todo, got: &mut impl Iterator<Item = Option<String>>) -> Option<String> {
    let mut first = None;
    for _ in 0..replies(t) {
        if let Some(Some(e)) = got.next() {
            first.get_or_insert(e);
        }
    }
    // In a transaction an ASKING's or MULTI's +OK and the QUEUEDs come first; EXECABORT
    // comes last and names no cause: the first error is the one that matters.
    first
}

/// Writes `items` to `addr`: the in-memory ones in one pipelined round trip, each value kept
/// in a spill file in a round trip of its own streamed from the file. The reply budget grows
/// with the bytes sent. One reply per item (`None` for success); an error means the outcome
/// of the whole round is unknown.
async fn pipeline(
    w: &SlotWriter<'_>,
    conns: &Conns,
    addr: &Addr,
    items: &[Todo],
    base: Duration,
) -> Result<Vec<Option<String>>, NodeError> {
    let (mut t, _) = conns.take(w.exec, addr).await?;
    let mut out: Vec<Option<Option<String>>> = (0..items.len()).map(|_| None).collect();
    let in_file = |t: &Todo| {
        matches!(
            t.w.op,
            Op::Restore {
                payload: Payload::File { .. },
                ..
            }
        )
    };
    let mem: Vec<usize> = (0..items.len()).filter(|&i| !in_file(&items[i])).collect();
    if !mem.is_empty() {
        let n: usize = mem.iter().map(|&i| replies(&items[i])).sum();
        let bytes: u64 = mem.iter().map(|&i| items[i].w.bytes()).sum();
        let got = t
            .raw_within(addr, n, write_timeout(base, bytes), |out| {
                for &i in &mem {
                    encode(&items[i], out);
                }
            })
            .await?;
        let mut it = got.into_iter();
        for &i in &mem {
            out[i] = Some(verdict(&items[i], &mut it));
        }
    }
    for (i, todo) in items.iter().enumerate() {
        let Op::Restore {
            payload: Payload::File { spilled, trailer },
            abs_ttl,
            replace,
        } = &todo.w.op
        else {
            continue;
        };
        // The bytes up to the payload's own (ending with its length header), the payload
        // from the file, then its trailer and the arguments after it.
        let mut head = Vec::new();
        if todo.asking {
            rcops_formats::resp::encode_command(&[b"ASKING"], &mut head);
        }
        let ttl = abs_ttl.to_string();
        let (args, n) = restore_args(&todo.w.key, &ttl, *replace, *abs_ttl, b"");
        head.extend_from_slice(format!("*{n}\r\n").as_bytes());
        for a in &args[..3] {
            head.extend_from_slice(&rcops_formats::resp::bulk(a));
        }
        head.extend_from_slice(format!("${}\r\n", spilled.len + 10).as_bytes());
        let mut tail = trailer.to_vec();
        tail.extend_from_slice(b"\r\n");
        for a in &args[4..n] {
            tail.extend_from_slice(&rcops_formats::resp::bulk(a));
        }
        let got = t
            .raw_with_file(
                addr,
                replies(todo),
                write_timeout(base, spilled.len),
                |out| out.extend_from_slice(&head),
                &spilled.file,
                spilled.len,
                &tail,
            )
            .await?;
        out[i] = Some(verdict(todo, &mut got.into_iter()));
    }
    conns.put(addr, t, true);
    Ok(out.into_iter().map(Option::flatten).collect())
}
