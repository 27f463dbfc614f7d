//! `bigkeys` / `memkeys`: a cluster-wide SCAN of every shard at once (the master, or a
//! replica with `from_replicas`), pipelined per batch, optionally rate-limited, reporting the
//! biggest keys per type — by element count, or by `MEMORY USAGE` — and totals per type and
//! per key prefix.

use redis::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::fanout::Executor;
use crate::node::{Addr, NodeError};
use crate::scan::{ScanSpec, ScanStream};
use crate::topology::ClusterView;

/// What to measure and how hard to push.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Rank by `MEMORY USAGE` (memkeys) instead of element count (bigkeys).
    pub memory: bool,
    /// Keys per SCAN call.
    pub count: usize,
    /// Keys per second per shard at most (0: unlimited).
    pub rate: u64,
    /// Read from a replica of each shard when one is up.
    pub from_replicas: bool,
    /// Biggest keys kept per type.
    pub top: usize,
    /// Prefix = the key up to its last delimiter.
    pub delimiter: String,
    /// `SCAN … MATCH` pattern.
    pub pattern: Option<String>,
}

/// One key and its size.
#[derive(Debug, Clone, Serialize)]
pub struct KeySize {
    pub key: String,
    pub node: String,
    /// Elements (bytes for strings).
    pub elements: u64,
    pub memory_bytes: Option<u64>,
}

/// Totals for one type or prefix.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub keys: u64,
    pub elements: u64,
    pub memory_bytes: u64,
}

/// JSON: `{"shards", "keys_scanned", "by_type": {type: Totals}, "biggest": {type: [KeySize]},
/// "prefixes": [{"prefix", …Totals}], "errors": {node: error}, "elapsed_ms"}`.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub shards: usize,
    pub keys_scanned: u64,
    pub by_type: BTreeMap<String, Totals>,
    pub biggest: BTreeMap<String, Vec<KeySize>>,
    pub prefixes: Vec<PrefixTotals>,
    pub errors: BTreeMap<String, String>,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefixTotals {
    pub prefix: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Prefixes tracked at most; beyond that new prefixes fold into `(other)` so memory stays bounded.
const MAX_PREFIXES: usize = 100_000;
/// Prefixes shown.
const SHOWN_PREFIXES: usize = 20;

#[derive(Default)]
struct Acc {
    scanned: u64,
    by_type: BTreeMap<String, Totals>,
    biggest: BTreeMap<String, Vec<KeySize>>,
    prefixes: HashMap<String, Totals>,
}

impl Acc {
    fn add(&mut self, opts: &ScanOptions, ty: String, k: KeySize) {
        self.scanned += 1;
        let mem = k.memory_bytes.unwrap_or(0);
        let t = self.by_type.entry(ty.clone()).or_default();
        t.keys += 1;
        t.elements += k.elements;
        t.memory_bytes += mem;
        let prefix = match k.key.rfind(opts.delimiter.as_str()) {
            Some(i) if !opts.delimiter.is_empty() => k.key[..i].to_string(),
            _ => "(no prefix)".to_string(),
        };
        let prefix = if self.prefixes.len() >= MAX_PREFIXES && !self.prefixes.contains_key(&prefix)
        {
            "(other)".to_string()
        } else {
            prefix
        };
        let p = self.prefixes.entry(prefix).or_default();
        p.keys += 1;
        p.elements += k.elements;
        p.memory_bytes += mem;
        let rank = |k: &KeySize| {
            if opts.memory {
                k.memory_bytes.unwrap_or(0)
            } else {
                k.elements
            }
        };
        let list = self.biggest.entry(ty).or_default();
        if list.len() < opts.top || list.last().is_some_and(|last| rank(&k) > rank(last)) {
            let pos = list.partition_point(|x| rank(x) >= rank(&k));
            list.insert(pos, k);
            list.truncate(opts.top);
        }
    }

    fn merge(&mut self, opts: &ScanOptions, other: Acc) {
        self.scanned += other.scanned;
        for (ty, t) in other.by_type {
            let e = self.by_type.entry(ty).or_default();
            e.keys += t.keys;
            e.elements += t.elements;
            e.memory_bytes += t.memory_bytes;
        }
        for (p, t) in other.prefixes {
            let e = self.prefixes.entry(p).or_default();
            e.keys += t.keys;
            e.elements += t.elements;
            e.memory_bytes += t.memory_bytes;
        }
        let rank = |k: &KeySize| {
            if opts.memory {
                k.memory_bytes.unwrap_or(0)
            } else {
                k.elements
            }
        };
        for (ty, list) in other.biggest {
            let e = self.biggest.entry(ty).or_default();
            e.extend(list);
            e.sort_by_key(|k| std::cmp::Reverse(rank(k)));
            e.truncate(opts.top);
        }
    }
}

/// The command that measures a key of `ty` in elements (bytes for strings).
fn length_cmd(ty: &str, key: &[u8]) -> Option<redis::Cmd> {
    crate::scan::length_command(ty).map(|name| redis::cmd(name).arg(key).to_owned())
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}

async fn scan_shard(
    exec: &Executor,
    addr: &Addr,
    opts: &ScanOptions,
    replica: bool,
    progress: &(dyn Fn(&Addr, u64) + Sync),
) -> Result<Acc, NodeError> {
    let err = |e: redis::RedisError| NodeError::from_redis(addr, &e);
    let spec = ScanSpec {
        count: opts.count,
        pattern: opts.pattern.clone(),
        kind: None,
        rate: opts.rate,
    };
    let mut scan = ScanStream::open(exec, addr, replica, spec, 0).await?;
    let mut acc = Acc::default();
    while let Some(keys) = scan.next().await? {
        let conn = scan.conn();
        if !keys.is_empty() {
            let mut types = redis::pipe();
            for k in &keys {
                types.cmd("TYPE").arg(k);
            }
            let types: Vec<String> = types.query_async(conn).await.map_err(err)?;
            let mut sizes = redis::pipe();
            for (k, ty) in keys.iter().zip(&types) {
                // Keys that expired between SCAN and TYPE come back as "none".
                sizes.add_command(
                    length_cmd(ty, k).unwrap_or_else(|| redis::cmd("EXISTS").arg(k).to_owned()),
                );
                if opts.memory {
                    sizes
                        .cmd("MEMORY")
                        .arg("USAGE")
                        .arg(k)
                        .arg("SAMPLES")
                        .arg(0);
                }
            }
            let values: Vec<Value> = sizes.query_async(conn).await.map_err(err)?;
            let per_key = if opts.memory { 2 } else { 1 };
            for ((k, ty), v) in keys.iter().zip(types).zip(values.chunks(per_key)) {
                if ty == "none" {
                    continue;
                }
                acc.add(
                    opts,
                    ty,
                    KeySize {
                        key: rcops_formats::display_key(k),
                        node: addr.to_string(),
                        elements: int(&v[0]),
                        memory_bytes: v.get(1).map(int),
                    },
                );
            }
            progress(addr, keys.len() as u64);
        }
    }
    Ok(acc)
}

/// The node each shard is scanned on, with whether it is a replica, and its key count: the
/// first source [`ClusterView::read_sources`] picks (a shard with none is scanned on its
/// master, whose error the report then carries).
pub fn scan_targets(view: &ClusterView, from_replicas: bool) -> Vec<(Addr, bool, u64)> {
    view.read_sources(from_replicas)
        .shards
        .into_iter()
        .filter_map(|s| {
            let (addr, replica) = s
                .candidates
                .into_iter()
                .next()
                .or_else(|| Some((s.master_addr?, false)))?;
            let keys = view
                .snapshot(&s.master_id)
                .map(|n| n.info.total_keys())
                .unwrap_or(0);
            Some((addr, replica, keys))
        })
        .collect()
}

/// Scans every shard concurrently. `progress(node, keys)` is called after each batch.
pub async fn scan(
    exec: &Executor,
    view: &ClusterView,
    opts: &ScanOptions,
    progress: &(dyn Fn(&Addr, u64) + Sync),
) -> ScanReport {
    let started = Instant::now();
    let targets = scan_targets(view, opts.from_replicas);
    let replica_of: BTreeMap<Addr, bool> =
        targets.iter().map(|(a, r, _)| (a.clone(), *r)).collect();
    let replica_of = &replica_of;
    let result = exec
        .run_with_timeout(
            replica_of.keys().cloned(),
            Duration::from_secs(7 * 24 * 3600),
            |addr, _conn| async move {
                scan_shard(exec, &addr, opts, replica_of[&addr], progress).await
            },
        )
        .await;
    let mut total = Acc::default();
    for acc in result.ok.into_values() {
        total.merge(opts, acc);
    }
    let mut prefixes: Vec<PrefixTotals> = total
        .prefixes
        .into_iter()
        .map(|(prefix, totals)| PrefixTotals { prefix, totals })
        .collect();
    // The same measure as the per-type ranking: memory, or elements.
    prefixes.sort_by(|a, b| {
        let key = |p: &PrefixTotals| {
            if opts.memory {
                p.totals.memory_bytes
            } else {
                p.totals.elements
            }
        };
        key(b).cmp(&key(a)).then(a.prefix.cmp(&b.prefix))
    });
    prefixes.truncate(SHOWN_PREFIXES);
    ScanReport {
        shards: targets.len(),
        keys_scanned: total.scanned,
        by_type: total.by_type,
        biggest: total.biggest,
        prefixes,
        errors: result
            .failed
            .into_iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect(),
        elapsed_ms: started.elapsed().as_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(memory: bool) -> ScanOptions {
        ScanOptions {
            memory,
            count: 100,
            rate: 0,
            from_replicas: false,
            top: 2,
            delimiter: ":".into(),
            pattern: None,
        }
    }

    fn k(key: &str, elements: u64, mem: u64) -> KeySize {
        KeySize {
            key: key.into(),
            node: "n".into(),
            elements,
            memory_bytes: Some(mem),
        }
    }

    #[test]
    fn keeps_the_biggest_per_type_and_totals_per_prefix() {
        let o = opts(false);
        let mut a = Acc::default();
        a.add(&o, "hash".into(), k("user:1", 5, 500));
        a.add(&o, "hash".into(), k("user:2", 50, 100));
        a.add(&o, "hash".into(), k("session:x:1", 7, 900));
        a.add(&o, "string".into(), k("plain", 3, 60));
        let mut b = Acc::default();
        b.add(&o, "hash".into(), k("user:3", 20, 50));
        a.merge(&o, b);
        let names: Vec<&str> = a.biggest["hash"].iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["user:2", "user:3"]);
        assert_eq!(a.by_type["hash"].keys, 4);
        assert_eq!(a.by_type["hash"].elements, 82);
        assert_eq!(a.prefixes["user"].keys, 3);
        assert_eq!(a.prefixes["session:x"].keys, 1);
        assert_eq!(a.prefixes["(no prefix)"].keys, 1);
        assert_eq!(a.scanned, 5);
    }

    #[test]
    fn memkeys_ranks_by_memory() {
        let o = opts(true);
        let mut a = Acc::default();
        a.add(&o, "hash".into(), k("a", 500, 10));
        a.add(&o, "hash".into(), k("b", 5, 9000));
        a.add(&o, "hash".into(), k("c", 50, 100));
        let names: Vec<&str> = a.biggest["hash"].iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(a.by_type["hash"].memory_bytes, 9110);
    }
}
