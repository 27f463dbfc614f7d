//! `verify`: compares two clusters (or servers) key by key. Round 1 reads every source key
//! (one [`ScanStream`] per source shard, from a replica by default) and checks it on the
//! target: exists, same type, absolute expiry within a tolerance (`PEXPIRETIME`), and the
//! value — `length` compares cardinalities and string lengths, `full` compares values: the
//! DUMP payloads first (equal bytes mean equal values), then, on a mismatch or for a big
//! value, a type-aware comparison read in chunks (`GETRANGE`, `LRANGE`, `ZRANGE`, `XRANGE`
//! in step on both sides; `HSCAN`/`SSCAN` into an order-independent digest), so encodings
//! may differ and memory stays bounded. Later rounds re-check only the keys that differed,
//! after an interval, so writes in flight settle: only differences that persist through
//! every round are reported. A key that expires or is deleted on the source during the
//! check is not a difference. `both_directions` also scans the target for keys the source
//! lacks.

use futures::StreamExt;
use redis::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::fanout::{query, Executor};
use crate::job::{JobCtx, JobError, Outcome};
use crate::node::{Addr, NodeError};
use crate::route::KeyFilter;
use crate::scan::{ScanSpec, ScanStream};
use crate::topology::{line_addr, ClusterView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Existence, type and TTL only.
    Keys,
    /// Also cardinalities and string lengths.
    Length,
    /// Also the values.
    Full,
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub mode: Mode,
    pub rounds: u32,
    pub interval: Duration,
    pub both_directions: bool,
    pub ttl_tolerance: Duration,
    pub filter: KeyFilter,
    /// Keys per second per shard at most (0: unlimited).
    pub rate: u64,
    /// Read the source's masters, not its replicas.
    pub from_masters: bool,
    /// Keys per SCAN and per pipeline.
    pub batch: usize,
}

/// What one side holds for a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    #[serde(rename = "type")]
    pub kind: String,
    /// Elements (bytes for a string), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Absolute expiry in ms, -1 for none.
    pub expire_ms: i64,
}

/// One difference that persisted through every round.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    #[serde(skip)]
    pub key_bytes: Vec<u8>,
    /// The key as text when it is UTF-8 …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// … and as base64 otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub kind: &'static str,
    pub source: Option<Side>,
    pub target: Option<Side>,
    /// The source shard (its slots).
    pub shard: String,
}

impl Difference {
    /// The key for a human: as text, or `base64:…` when it is not UTF-8.
    pub fn shown_key(&self) -> String {
        match (&self.key, &self.key_base64) {
            (Some(k), _) => k.clone(),
            (None, b) => format!("base64:{}", b.clone().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardVerify {
    pub slots: String,
    pub node: String,
    pub keys_checked: u64,
    /// Keys whose DUMP payloads differed (or were too big to DUMP) and were compared by
    /// content (different encodings of equal values are equal).
    pub compared_by_content: u64,
    pub differences: BTreeMap<&'static str, u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub outcome: Outcome,
    pub mode: Mode,
    pub rounds: u32,
    pub keys_checked: u64,
    /// Keys that differed in round 1 and no longer did in a later round (writes in flight).
    pub settled: u64,
    pub differences: BTreeMap<&'static str, u64>,
    pub shards: Vec<ShardVerify>,
    /// The first differences (all of them go to the caller's sink).
    pub examples: Vec<Difference>,
    pub elapsed_ms: u128,
    pub keys_per_sec: f64,
}

/// Both ends.
pub struct Ends<'a> {
    pub from: &'a Executor,
    pub from_view: &'a ClusterView,
    pub to: &'a Executor,
    pub to_view: &'a ClusterView,
}

/// Values bigger than this (elements, or bytes of a string) are compared in chunks rather
/// than by DUMP.
const DUMP_UP_TO: u64 = 10_000;
const STRING_DUMP_UP_TO: u64 = 1 << 20;
const CHUNK: i64 = 1000;
/// Batches of one shard compared at once.
const DEPTH: usize = 4;
const STRING_CHUNK: i64 = 1 << 20;

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        _ => -1,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        // XINFO GROUPS gives counts (`pending`) as integers.
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Type, expiry, length (by `kind_hint`'s length command when given) and, in full mode,
/// DUMP of each key, on one node in two pipelines at most.
async fn read_keys(
    addr: &Addr,
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[Vec<u8>],
    mode: Mode,
    kinds: Option<&[Side]>,
) -> Result<(Vec<Side>, Vec<Option<Vec<u8>>>), NodeError> {
    if keys.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut sides: Vec<Side> = match kinds {
        Some(k) => k
            .iter()
            .map(|s| Side {
                kind: s.kind.clone(),
                ..Default::default()
            })
            .collect(),
        None => vec![Side::default(); keys.len()],
    };
    let mut p = redis::pipe();
    p.ignore_errors();
    for k in keys {
        p.cmd("TYPE").arg(k);
        p.cmd("PEXPIRETIME").arg(k);
    }
    let got: Vec<redis::RedisResult<Value>> = p
        .query_async(conn)
        .await
        .map_err(|e| NodeError::from_redis(addr, &e))?;
    let own: Vec<String> = got
        .iter()
        .step_by(2)
        .map(|r| r.as_ref().map(text).unwrap_or_default())
        .collect();
    for (i, s) in sides.iter_mut().enumerate() {
        s.expire_ms = got[2 * i + 1].as_ref().map(int).unwrap_or(-1).max(-1);
        if kinds.is_none() {
            s.kind = own[i].clone();
        }
    }
    let mut dumps = vec![None; keys.len()];
    if mode == Mode::Keys {
        for (s, o) in sides.iter_mut().zip(&own) {
            s.kind = o.clone();
        }
        return Ok((sides, dumps));
    }
    // Lengths by the source's type (a type difference is reported either way), then DUMP
    // of the small values in full mode.
    let mut p = redis::pipe();
    p.ignore_errors();
    for (k, s) in keys.iter().zip(&sides) {
        match crate::scan::length_command(&s.kind) {
            Some(c) => p.cmd(c).arg(k),
            None => p.cmd("EXISTS").arg(k),
        };
    }
    let lens: Vec<redis::RedisResult<Value>> = p
        .query_async(conn)
        .await
        .map_err(|e| NodeError::from_redis(addr, &e))?;
    for (s, l) in sides.iter_mut().zip(&lens) {
        s.length = l.as_ref().ok().map(int).and_then(|n| u64::try_from(n).ok());
    }
    for (s, o) in sides.iter_mut().zip(&own) {
        s.kind = o.clone();
    }
    if mode == Mode::Full {
        let small: Vec<usize> = (0..keys.len())
            .filter(|&i| {
                let limit = if sides[i].kind == "string" {
                    STRING_DUMP_UP_TO
                } else {
                    DUMP_UP_TO
                };
                sides[i].length.is_some_and(|n| n <= limit)
            })
            .collect();
        if !small.is_empty() {
            let mut p = redis::pipe();
            p.ignore_errors();
            for &i in &small {
                p.cmd("DUMP").arg(&keys[i]);
            }
            let got: Vec<redis::RedisResult<Value>> = p
                .query_async(conn)
                .await
                .map_err(|e| NodeError::from_redis(addr, &e))?;
            for (&i, r) in small.iter().zip(got) {
                if let Ok(Value::BulkString(b)) = r {
                    dumps[i] = Some(b);
                }
            }
        }
    }
    Ok((sides, dumps))
}

/// A value read in chunks into a digest: ordered types chunk by chunk in order, hashes and
/// sets (whose scan order differs between nodes) as an order-independent sum.
async fn digest(
    addr: &Addr,
    conn: &mut redis::aio::MultiplexedConnection,
    key: &[u8],
    kind: &str,
) -> Result<(u64, u64), NodeError> {
    let mut ordered = std::collections::hash_map::DefaultHasher::new();
    let (mut sum, mut n) = (0u64, 0u64);
    let one = |v: &[u8]| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    };
    match kind {
        "string" => {
            let mut at = 0i64;
            loop {
                let mut c = redis::cmd("GETRANGE");
                c.arg(key).arg(at).arg(at + STRING_CHUNK - 1);
                let part: Vec<u8> = query(addr, conn, &c).await?;
                if part.is_empty() {
                    break;
                }
                part.hash(&mut ordered);
                n += part.len() as u64;
                at += STRING_CHUNK;
            }
        }
        "list" | "zset" => {
            let mut at = 0i64;
            loop {
                let mut c = redis::cmd(if kind == "list" { "LRANGE" } else { "ZRANGE" });
                c.arg(key).arg(at).arg(at + CHUNK - 1);
                if kind == "zset" {
                    c.arg("WITHSCORES");
                }
                let part: Vec<Vec<u8>> = query(addr, conn, &c).await?;
                if part.is_empty() {
                    break;
                }
                part.hash(&mut ordered);
                n += part.len() as u64;
                at += CHUNK;
            }
        }
        "hash" | "set" => {
            let mut cursor = 0u64;
            loop {
                let mut c = redis::cmd(if kind == "hash" { "HSCAN" } else { "SSCAN" });
                c.arg(key).arg(cursor).arg("COUNT").arg(CHUNK);
                let (next, items): (u64, Vec<Vec<u8>>) = query(addr, conn, &c).await?;
                if kind == "hash" {
                    for pair in items.chunks(2) {
                        sum = sum.wrapping_add(one(&pair.concat()));
                        n += 1;
                    }
                } else {
                    for m in items {
                        sum = sum.wrapping_add(one(&m));
                        n += 1;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        "stream" => {
            let mut from = b"-".to_vec();
            loop {
                let mut c = redis::cmd("XRANGE");
                c.arg(key).arg(&from).arg("+").arg("COUNT").arg(CHUNK);
                let part: Value = query(addr, conn, &c).await?;
                let Value::Array(entries) = part else { break };
                if entries.is_empty() {
                    break;
                }
                let last_id = match entries.last() {
                    Some(Value::Array(e)) => e.first().map(text).unwrap_or_default(),
                    _ => String::new(),
                };
                for e in &entries {
                    hash_value(e, &mut ordered);
                }
                n += entries.len() as u64;
                if entries.len() < CHUNK as usize || last_id.is_empty() {
                    break;
                }
                from = format!("({last_id}").into_bytes();
            }
            let groups: Value = query(addr, conn, redis::cmd("XINFO").arg("GROUPS").arg(key))
                .await
                .unwrap_or(Value::Nil);
            hash_groups(&groups, &mut ordered);
        }
        _ => {
            let d: Option<Vec<u8>> = query(addr, conn, redis::cmd("DUMP").arg(key)).await?;
            d.hash(&mut ordered);
        }
    }
    Ok((ordered.finish() ^ sum, n))
}

/// Feeds a reply into a hasher without formatting it.
fn hash_value(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::BulkString(b) => b.hash(h),
        Value::SimpleString(s) => s.hash(h),
        Value::Int(i) => i.hash(h),
        Value::Array(items) | Value::Set(items) => {
            items.len().hash(h);
            for i in items {
                hash_value(i, h);
            }
        }
        Value::Map(pairs) => {
            for (a, b) in pairs {
                hash_value(a, h);
                hash_value(b, h);
            }
        }
        Value::Nil => 0u8.hash(h),
        other => format!("{other:?}").hash(h),
    }
}

/// The target's owner of each slot.
fn owners(view: &ClusterView) -> Vec<Option<Addr>> {
    view.slot_owner()
        .into_iter()
        .map(|o| o.and_then(line_addr))
        .collect()
}

/// Compares one batch of source keys with the target; the differences found.
async fn compare(
    ends: &Ends<'_>,
    src: &Addr,
    sconn: &mut redis::aio::MultiplexedConnection,
    keys: Vec<Vec<u8>>,
    opts: &VerifyOptions,
    owners: &[Option<Addr>],
    shard: &str,
) -> Result<(Vec<Difference>, u64), NodeError> {
    // SCAN with MATCH often answers no key for a call: nothing to send.
    if keys.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let (ss, sd) = read_keys(src, sconn, &keys, opts.mode, None).await?;
    let mut by_content = 0u64;
    let mut by_node: BTreeMap<Addr, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some(a) = &owners[usize::from(rcops_formats::slot::key_slot(k))] {
            by_node.entry(a.clone()).or_default().push(i);
        }
    }
    let mut ts: Vec<Option<Side>> = vec![None; keys.len()];
    let mut td: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    for (addr, idx) in by_node {
        let mut conn = ends.to.conn(&addr).await?;
        let ks: Vec<Vec<u8>> = idx.iter().map(|&i| keys[i].clone()).collect();
        let hint: Vec<Side> = idx.iter().map(|&i| ss[i].clone()).collect();
        let (sides, dumps) = read_keys(&addr, &mut conn, &ks, opts.mode, Some(&hint)).await?;
        for ((&i, s), d) in idx.iter().zip(sides).zip(dumps) {
            ts[i] = Some(s);
            td[i] = d;
        }
    }
    let mut content: Vec<(Vec<u8>, Side, Side)> = Vec::new();
    let tol = opts.ttl_tolerance.as_millis() as i64;
    let now = crate::ops::rdb::now_ms();
    let mut out = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        let s = &ss[i];
        // Gone from the source since the scan (expired, deleted): nothing to compare.
        if s.kind == "none" || s.kind.is_empty() {
            continue;
        }
        let t = ts[i].clone().filter(|t| t.kind != "none");
        let kind = match &t {
            // About to expire: not a difference.
            None if s.expire_ms >= 0 && s.expire_ms - now <= tol => continue,
            None => "missing_on_target",
            Some(t) if t.kind != s.kind => "type",
            Some(t)
                if !((s.expire_ms < 0 && t.expire_ms < 0)
                    || (s.expire_ms >= 0
                        && t.expire_ms >= 0
                        && (s.expire_ms - t.expire_ms).abs() <= tol)) =>
            {
                "ttl"
            }
            Some(t) if opts.mode != Mode::Keys && t.length != s.length => "length",
            Some(t) if opts.mode == Mode::Full => {
                let same_dump = matches!((&sd[i], &td[i]), (Some(a), Some(b)) if a == b);
                if !same_dump {
                    // Encodings differ between versions and configurations; values may
                    // not: compared by content below, all of the batch's at once.
                    by_content += 1;
                    content.push((k, s.clone(), t.clone()));
                }
                continue;
            }
            Some(_) => continue,
        };
        out.push(difference(k, kind, Some(s.clone()), t, shard));
    }
    for (k, s, t) in differ_by_content(ends, src, sconn, content, owners).await? {
        out.push(difference(k, "value", Some(s), Some(t), shard));
    }
    Ok((out, by_content))
}

/// Keys whose payloads differed, compared by content: small values with one pipeline per
/// node (the whole value in one reply), big ones chunk by chunk. The keys whose contents
/// differ.
async fn differ_by_content(
    ends: &Ends<'_>,
    src: &Addr,
    sconn: &mut redis::aio::MultiplexedConnection,
    keys: Vec<(Vec<u8>, Side, Side)>,
    owners: &[Option<Addr>],
) -> Result<Vec<(Vec<u8>, Side, Side)>, NodeError> {
    let small = |s: &Side| {
        let limit = if s.kind == "string" {
            STRING_DUMP_UP_TO
        } else {
            CHUNK as u64
        };
        s.length.is_some_and(|n| n <= limit)
    };
    let (small_keys, big_keys): (Vec<_>, Vec<_>) = keys.into_iter().partition(|(_, s, _)| small(s));
    let mut out = Vec::new();
    if !small_keys.is_empty() {
        let items: Vec<(&[u8], &str)> = small_keys
            .iter()
            .map(|(k, s, _)| (k.as_slice(), s.kind.as_str()))
            .collect();
        let a = small_digests(src, sconn, &items).await?;
        let mut by_node: BTreeMap<Addr, Vec<usize>> = BTreeMap::new();
        for (i, (k, _, _)) in small_keys.iter().enumerate() {
            if let Some(o) = &owners[usize::from(rcops_formats::slot::key_slot(k))] {
                by_node.entry(o.clone()).or_default().push(i);
            }
        }
        let mut b = vec![(0u64, 0u64); small_keys.len()];
        for (node, idx) in by_node {
            let mut conn = ends.to.conn(&node).await?;
            let these: Vec<(&[u8], &str)> = idx.iter().map(|&i| items[i]).collect();
            for (&i, d) in idx
                .iter()
                .zip(small_digests(&node, &mut conn, &these).await?)
            {
                b[i] = d;
            }
        }
        for ((k, s, t), (x, y)) in small_keys.into_iter().zip(a.into_iter().zip(b)) {
            if x != y {
                out.push((k, s, t));
            }
        }
    }
    for (k, s, t) in big_keys {
        let a = digest(src, sconn, &k, &s.kind).await?;
        let Some(owner) = owners[usize::from(rcops_formats::slot::key_slot(&k))].clone() else {
            continue;
        };
        let mut conn = ends.to.conn(&owner).await?;
        if a != digest(&owner, &mut conn, &k, &s.kind).await? {
            out.push((k, s, t));
        }
    }
    Ok(out)
}

/// The commands that read a small value whole.
fn whole(kind: &str, key: &[u8], p: &mut redis::Pipeline) -> usize {
    match kind {
        "string" => p.cmd("GET").arg(key),
        "list" => p.cmd("LRANGE").arg(key).arg(0).arg(-1),
        "zset" => p.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES"),
        "hash" => p.cmd("HGETALL").arg(key),
        "set" => p.cmd("SMEMBERS").arg(key),
        "stream" => {
            p.cmd("XRANGE").arg(key).arg("-").arg("+");
            p.cmd("XINFO").arg("GROUPS").arg(key);
            return 2;
        }
        _ => p.cmd("DUMP").arg(key),
    };
    1
}

/// Digests of small values read whole in one pipeline: the same digest [`digest`] computes
/// chunk by chunk for big ones is not needed (both sides of a key take the same path).
async fn small_digests(
    addr: &Addr,
    conn: &mut redis::aio::MultiplexedConnection,
    items: &[(&[u8], &str)],
) -> Result<Vec<(u64, u64)>, NodeError> {
    let mut p = redis::pipe();
    p.ignore_errors();
    let counts: Vec<usize> = items
        .iter()
        .map(|(k, kind)| whole(kind, k, &mut p))
        .collect();
    let got: Vec<redis::RedisResult<Value>> = p
        .query_async(conn)
        .await
        .map_err(|e| NodeError::from_redis(addr, &e))?;
    let mut it = got.into_iter();
    let mut out = Vec::with_capacity(items.len());
    for ((_, kind), n) in items.iter().zip(counts) {
        let replies: Vec<Value> = (0..n)
            .map(|_| it.next().and_then(Result::ok).unwrap_or(Value::Nil))
            .collect();
        let mut ordered = std::collections::hash_map::DefaultHasher::new();
        let mut sum = 0u64;
        match (*kind, replies.first()) {
            ("hash", Some(Value::Array(items)) | Some(Value::Set(items))) => {
                for pair in items.chunks(2) {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    for v in pair {
                        hash_value(v, &mut h);
                    }
                    sum = sum.wrapping_add(h.finish());
                }
            }
            ("hash", Some(Value::Map(pairs))) => {
                for (a, b) in pairs {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    hash_value(a, &mut h);
                    hash_value(b, &mut h);
                    sum = sum.wrapping_add(h.finish());
                }
            }
            ("set", Some(Value::Array(items)) | Some(Value::Set(items))) => {
                for v in items {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    hash_value(v, &mut h);
                    sum = sum.wrapping_add(h.finish());
                }
            }
            ("stream", _) => {
                if let Some(entries) = replies.first() {
                    hash_value(entries, &mut ordered);
                }
                if let Some(groups) = replies.get(1) {
                    hash_groups(groups, &mut ordered);
                }
            }
            _ => {
                for r in &replies {
                    hash_value(r, &mut ordered);
                }
            }
        }
        out.push((ordered.finish() ^ sum, 0));
    }
    Ok(out)
}

/// Consumer groups: names, pending counts, last delivered ids (a replica keeps its own
/// consumer times and entries-read, which are not compared).
fn hash_groups(groups: &Value, h: &mut impl Hasher) {
    let Value::Array(gs) = groups else { return };
    for g in gs {
        let fields: Vec<String> = match g {
            Value::Array(f) => f.iter().map(text).collect(),
            Value::Map(m) => m.iter().flat_map(|(a, b)| [text(a), text(b)]).collect(),
            _ => Vec::new(),
        };
        let pick = |name: &str| {
            fields
                .iter()
                .position(|f| f == name)
                .and_then(|i| fields.get(i + 1).cloned())
                .unwrap_or_default()
        };
        (pick("name"), pick("pending"), pick("last-delivered-id")).hash(h);
    }
}

/// Compares a few keys of one source node with the target (type, TTL, length), for a
/// quick check: the differences.
pub async fn sample(
    ends: &Ends<'_>,
    src: &Addr,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<Difference>, NodeError> {
    let opts = VerifyOptions {
        mode: Mode::Length,
        rounds: 1,
        interval: Duration::ZERO,
        both_directions: false,
        ttl_tolerance: Duration::from_secs(2),
        filter: KeyFilter::default(),
        rate: 0,
        from_masters: true,
        batch: keys.len(),
    };
    let mut conn = ends.from.conn(src).await?;
    let owners = owners(ends.to_view);
    Ok(
        compare(ends, src, &mut conn, keys, &opts, &owners, "sample")
            .await?
            .0,
    )
}

fn difference(
    k: Vec<u8>,
    kind: &'static str,
    source: Option<Side>,
    target: Option<Side>,
    shard: &str,
) -> Difference {
    let (key, key_base64) = match std::str::from_utf8(&k) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64(&k))),
    };
    Difference {
        key_bytes: k,
        key,
        key_base64,
        kind,
        source,
        target,
        shard: shard.to_string(),
    }
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One side's shards to scan: (slots, node, is replica).
fn shards(view: &ClusterView, replicas: bool) -> Result<Vec<(String, Addr, bool)>, JobError> {
    let plan = view.read_sources(replicas);
    let mut out = Vec::new();
    for s in plan.shards {
        let slots = rcops_formats::slot::format_ranges(&s.slots.ranges());
        let Some((addr, replica)) = s.candidates.first().cloned() else {
            return Err(JobError::unavailable(format!(
                "shard {slots}: {}",
                s.why_none.unwrap_or_else(|| "no usable node".into())
            )));
        };
        out.push((slots, addr, replica));
    }
    Ok(out)
}

/// Runs the comparison; every persistent difference goes to `sink` as it is confirmed.
pub async fn verify(
    ctx: &JobCtx,
    ends: &Ends<'_>,
    opts: &VerifyOptions,
    sink: &mut (dyn FnMut(&Difference) + Send),
) -> Result<VerifyReport, JobError> {
    let started = Instant::now();
    let sources = shards(ends.from_view, !opts.from_masters)?;
    let to_owners = owners(ends.to_view);
    let from_owners = owners(ends.from_view);
    let spec = ScanSpec {
        count: opts.batch.max(1),
        pattern: opts.filter.pattern.clone(),
        kind: None,
        rate: opts.rate,
    };
    // Round 1, every source shard at once.
    let jobs = sources.iter().map(|(slots, addr, replica)| {
        let spec = spec.clone();
        let to_owners = &to_owners;
        async move {
            let mut rep = ShardVerify {
                slots: slots.clone(),
                node: addr.to_string(),
                ..Default::default()
            };
            let mut diffs = Vec::new();
            let r = async {
                let mut scan = ScanStream::open(ends.from, addr, *replica, spec, 0).await?;
                let sconn = scan.conn().clone();
                // SCAN calls in order; up to DEPTH batches compared at once (each side's
                // reads overlap the other's, and the next SCAN).
                let batches = futures::stream::unfold(Some(scan), |scan| async move {
                    let mut scan = scan?;
                    match scan.next().await {
                        Ok(Some(keys)) => Some((Ok(keys), Some(scan))),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), None)),
                    }
                });
                let compared = batches
                    .map(|keys| {
                        let mut sconn = sconn.clone();
                        async move {
                            let keys: Vec<Vec<u8>> = keys?
                                .into_iter()
                                .filter(|k| opts.filter.name_ok(k))
                                .collect();
                            let n = keys.len() as u64;
                            let found =
                                compare(ends, addr, &mut sconn, keys, opts, to_owners, slots)
                                    .await?;
                            Ok::<_, NodeError>((n, found.0, found.1))
                        }
                    })
                    .buffered(DEPTH);
                let mut compared = std::pin::pin!(compared);
                while let Some(r) = compared.next().await {
                    let (n, found, by_content) = r?;
                    rep.keys_checked += n;
                    rep.compared_by_content += by_content;
                    diffs.extend(found);
                    ctx.progress.shard(slots, "verify", rep.keys_checked, None);
                    if ctx.cancel.is_cancelled() {
                        break;
                    }
                }
                Ok::<(), NodeError>(())
            }
            .await;
            if let Err(e) = r {
                rep.error = Some(e.to_string());
            }
            (rep, diffs)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let mut reps = Vec::new();
    let mut pending: Vec<Difference> = Vec::new();
    for (rep, diffs) in results {
        reps.push(rep);
        pending.extend(diffs);
    }
    if opts.both_directions {
        let targets = shards(ends.to_view, false)?;
        for (slots, addr, _) in targets {
            let mut scan = ScanStream::open(ends.to, &addr, false, spec.clone(), 0)
                .await
                .map_err(|e| JobError::unavailable(e.to_string()))?;
            while let Some(keys) = scan
                .next()
                .await
                .map_err(|e| JobError::unavailable(e.to_string()))?
            {
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter(|k| opts.filter.name_ok(k))
                    .collect();
                for d in missing_on_source(ends, &from_owners, keys, &slots).await? {
                    pending.push(d);
                }
            }
        }
    }
    let first = pending.len() as u64;
    // Later rounds: only what differed, after the interval.
    for _ in 1..opts.rounds.max(1) {
        if pending.is_empty() || ctx.cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(opts.interval) => {}
            () = ctx.cancel.cancelled() => break,
        }
        pending = recheck(ends, opts, &to_owners, &from_owners, pending).await?;
    }
    let mut differences: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut per_shard: HashMap<String, BTreeMap<&'static str, u64>> = HashMap::new();
    for d in &pending {
        *differences.entry(d.kind).or_default() += 1;
        *per_shard
            .entry(d.shard.clone())
            .or_default()
            .entry(d.kind)
            .or_default() += 1;
        sink(d);
    }
    for r in &mut reps {
        r.differences = per_shard.remove(&r.slots).unwrap_or_default();
    }
    let keys_checked: u64 = reps.iter().map(|r| r.keys_checked).sum();
    let failed = reps.iter().any(|r| r.error.is_some());
    let outcome = if failed {
        Outcome::Failed
    } else if ctx.cancel.is_cancelled() {
        Outcome::Interrupted
    } else if pending.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Findings
    };
    let elapsed = started.elapsed();
    Ok(VerifyReport {
        outcome,
        mode: opts.mode,
        rounds: opts.rounds.max(1),
        keys_checked,
        settled: first.saturating_sub(pending.len() as u64),
        differences,
        shards: reps,
        examples: pending.into_iter().take(20).collect(),
        elapsed_ms: elapsed.as_millis(),
        keys_per_sec: (keys_checked as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    })
}

/// Target keys (of one target shard) that the source does not have.
async fn missing_on_source(
    ends: &Ends<'_>,
    from_owners: &[Option<Addr>],
    keys: Vec<Vec<u8>>,
    shard: &str,
) -> Result<Vec<Difference>, JobError> {
    let mut by_node: BTreeMap<Addr, Vec<Vec<u8>>> = BTreeMap::new();
    for k in keys {
        if let Some(a) = &from_owners[usize::from(rcops_formats::slot::key_slot(&k))] {
            by_node.entry(a.clone()).or_default().push(k);
        }
    }
    let mut out = Vec::new();
    for (addr, ks) in by_node {
        let mut conn = ends
            .from
            .conn(&addr)
            .await
            .map_err(|e| JobError::unavailable(e.to_string()))?;
        let mut p = redis::pipe();
        for k in &ks {
            p.cmd("EXISTS").arg(k);
        }
        let got: Vec<u64> = p
            .query_async(&mut conn)
            .await
            .map_err(|e| JobError::unavailable(NodeError::from_redis(&addr, &e).to_string()))?;
        for (k, n) in ks.into_iter().zip(got) {
            if n == 0 {
                out.push(difference(k, "missing_on_source", None, None, shard));
            }
        }
    }
    Ok(out)
}

/// Checks the differing keys again; those that still differ.
async fn recheck(
    ends: &Ends<'_>,
    opts: &VerifyOptions,
    to_owners: &[Option<Addr>],
    from_owners: &[Option<Addr>],
    pending: Vec<Difference>,
) -> Result<Vec<Difference>, JobError> {
    let unavailable = |e: NodeError| JobError::unavailable(e.to_string());
    let mut out = Vec::new();
    let (from_source, from_target): (Vec<Difference>, Vec<Difference>) = pending
        .into_iter()
        .partition(|d| d.kind != "missing_on_source");
    // Re-read on the source's masters: a replica may still lag the write that settles it.
    let mut by_node: BTreeMap<(Addr, String), Vec<Vec<u8>>> = BTreeMap::new();
    for d in from_source {
        if let Some(a) = &from_owners[usize::from(rcops_formats::slot::key_slot(&d.key_bytes))] {
            by_node
                .entry((a.clone(), d.shard))
                .or_default()
                .push(d.key_bytes);
        }
    }
    for ((addr, shard), keys) in by_node {
        let mut conn = ends.from.conn(&addr).await.map_err(unavailable)?;
        out.extend(
            compare(ends, &addr, &mut conn, keys, opts, to_owners, &shard)
                .await
                .map_err(unavailable)?
                .0,
        );
    }
    let mut by_shard: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for d in from_target {
        by_shard.entry(d.shard).or_default().push(d.key_bytes);
    }
    for (shard, keys) in by_shard {
        // Still on the target (not deleted since), still absent from the source.
        let mut still = Vec::new();
        for k in keys {
            let Some(owner) = &to_owners[usize::from(rcops_formats::slot::key_slot(&k))] else {
                continue;
            };
            let mut conn = ends.to.conn(owner).await.map_err(unavailable)?;
            let n: u64 = query(owner, &mut conn, redis::cmd("EXISTS").arg(&k))
                .await
                .map_err(unavailable)?;
            if n == 1 {
                still.push(k);
            }
        }
        out.extend(missing_on_source(ends, from_owners, still, &shard).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0x00, 0xfe, 0x80]), "/wD+gA==");
    }
}

/// One replica compared with its master.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaVerify {
    pub slots: String,
    pub master: String,
    pub replica: String,
    /// `master_link_status` on the replica.
    pub link: String,
    /// The master's offset minus the replica's when the check began.
    pub lag_bytes: Option<u64>,
    pub keys_checked: u64,
    pub differences: BTreeMap<&'static str, u64>,
    pub examples: Vec<Difference>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicasReport {
    pub outcome: Outcome,
    pub replicas: Vec<ReplicaVerify>,
    pub elapsed_ms: u128,
}

/// The replication offset a node reports.
async fn repl_offset(exec: &Executor, addr: &Addr) -> Result<(u64, String), NodeError> {
    let mut conn = exec.conn(addr).await?;
    let text: String = query(addr, &mut conn, redis::cmd("INFO").arg("replication")).await?;
    let info = rcops_formats::info::Info::parse(&text);
    let off = info
        .get("master_repl_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    Ok((
        off,
        info.get("master_link_status").unwrap_or("").to_string(),
    ))
}

/// `verify replicas`: per shard, each replica against its master, key by key (`--sample N`
/// keys per shard, or all; values in full), both ways (a key only the replica holds, written
/// with `replica-read-only no`, is found). Each batch is compared only once the replica's
/// offset has reached the master's offset read before the batch, so writes in flight do not
/// look like differences; the replica is read with `READONLY`.
pub async fn replicas(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    sample: Option<u64>,
    rate: u64,
) -> ReplicasReport {
    let started = Instant::now();
    let mut pairs = Vec::new();
    for m in view.masters_by_slot() {
        let (Some(maddr), false) = (line_addr(m), m.slots.is_empty()) else {
            continue;
        };
        let slots = rcops_formats::slot::format_ranges(&m.slots);
        for r in view.replicas_of(&m.id) {
            if let Some(raddr) = line_addr(r) {
                pairs.push((slots.clone(), maddr.clone(), raddr));
            }
        }
    }
    let jobs = pairs
        .into_iter()
        .map(|(slots, master, replica)| async move {
            let mut rep = ReplicaVerify {
                slots: slots.clone(),
                master: master.to_string(),
                replica: replica.to_string(),
                ..Default::default()
            };
            if let Err(e) =
                one_replica(ctx, exec, view, &master, &replica, sample, rate, &mut rep).await
            {
                rep.error = Some(e.to_string());
            }
            rep
        });
    let replicas: Vec<ReplicaVerify> = futures::future::join_all(jobs).await;
    let outcome = if replicas.iter().any(|r| r.error.is_some()) {
        Outcome::Failed
    } else if ctx.cancel.is_cancelled() {
        Outcome::Interrupted
    } else if replicas
        .iter()
        .any(|r| !r.differences.is_empty() || r.link != "up")
    {
        Outcome::Findings
    } else {
        Outcome::Ok
    };
    ReplicasReport {
        outcome,
        replicas,
        elapsed_ms: started.elapsed().as_millis(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_replica(
    ctx: &JobCtx,
    exec: &Executor,
    view: &ClusterView,
    master: &Addr,
    replica: &Addr,
    sample: Option<u64>,
    rate: u64,
    rep: &mut ReplicaVerify,
) -> Result<(), NodeError> {
    let (moff, _) = repl_offset(exec, master).await?;
    let (roff, link) = repl_offset(exec, replica).await?;
    rep.link = link;
    rep.lag_bytes = Some(moff.saturating_sub(roff));
    // The replica's reads on the executor's connection to it.
    let mut rconn = exec.conn(replica).await?;
    query::<()>(replica, &mut rconn, &redis::cmd("READONLY")).await?;
    let ends = Ends {
        from: exec,
        from_view: view,
        to: exec,
        to_view: view,
    };
    let to_replica: Vec<Option<Addr>> = vec![Some(replica.clone()); 16384];
    let to_master: Vec<Option<Addr>> = vec![Some(master.clone()); 16384];
    let opts = VerifyOptions {
        mode: Mode::Full,
        rounds: 1,
        interval: Duration::ZERO,
        both_directions: false,
        ttl_tolerance: Duration::from_secs(2),
        filter: KeyFilter::default(),
        rate,
        from_masters: true,
        batch: 500,
    };
    let spec = ScanSpec {
        count: 500,
        pattern: None,
        kind: None,
        rate,
    };
    let limit = sample.unwrap_or(u64::MAX);
    let add = |rep: &mut ReplicaVerify, diffs: Vec<Difference>| {
        for d in diffs {
            *rep.differences.entry(d.kind).or_default() += 1;
            if rep.examples.len() < 20 {
                rep.examples.push(d);
            }
        }
    };
    // Master → replica.
    let mut scan = ScanStream::open(exec, master, false, spec.clone(), 0).await?;
    let mut mconn = scan.conn().clone();
    let mut seen = 0u64;
    while let Some(keys) = scan.next().await? {
        if ctx.cancel.is_cancelled() || seen >= limit {
            break;
        }
        let keys: Vec<Vec<u8>> = keys.into_iter().take((limit - seen) as usize).collect();
        seen += keys.len() as u64;
        caught_up(exec, master, replica).await?;
        let (diffs, _) = compare(
            &ends,
            master,
            &mut mconn,
            keys,
            &opts,
            &to_replica,
            &rep.slots,
        )
        .await?;
        rep.keys_checked = seen;
        add(rep, diffs);
        ctx.progress.shard(&rep.slots, "verify", seen, None);
    }
    // Replica → master: keys only the replica has.
    let mut scan = ScanStream::open(exec, replica, true, spec, 0).await?;
    let mut checked = 0u64;
    while let Some(keys) = scan.next().await? {
        if ctx.cancel.is_cancelled() || checked >= limit {
            break;
        }
        let keys: Vec<Vec<u8>> = keys.into_iter().take((limit - checked) as usize).collect();
        checked += keys.len() as u64;
        caught_up(exec, master, replica).await?;
        let found = missing_on_source(&ends, &to_master, keys, &rep.slots)
            .await
            .map_err(|e| NodeError::Command {
                addr: master.clone(),
                reason: e.message,
            })?;
        // A key that expired is still listed by a replica's SCAN but reads as absent.
        let mut still = Vec::new();
        for d in found {
            let n: u64 = query(replica, &mut rconn, redis::cmd("EXISTS").arg(&d.key_bytes)).await?;
            if n == 1 {
                still.push(d);
            }
        }
        add(rep, still);
    }
    Ok(())
}

/// Waits (up to 5 s) until the replica's offset reaches the master's offset of now.
async fn caught_up(exec: &Executor, master: &Addr, replica: &Addr) -> Result<(), NodeError> {
    let (goal, _) = repl_offset(exec, master).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (at, _) = repl_offset(exec, replica).await?;
        if at >= goal || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
