//! Sample data for lab clusters: every type and the encodings Redis picks for small and large
//! values (int and binary strings, listpack and hashtable hashes, quicklist lists, intset and
//! hashtable sets, listpack and skiplist sorted sets, streams with consumer groups and pending
//! entries), some keys with TTLs and some with hash tags. Deterministic for a given index, so
//! reloading rewrites the same keys.

use rcops_formats::slot::key_slot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rcops_cluster::fanout::Executor;
use rcops_cluster::node::{Addr, NodeError};
use rcops_cluster::topology::{discover_light, line_addr, Detail, DiscoverError};

const TYPES: [&str; 6] = ["string", "hash", "list", "set", "zset", "stream"];
/// Commands per pipeline: large enough to amortise round trips, small enough to stay far
/// below any reply timeout.
const BATCH: usize = 256;

/// JSON: `{"keys", "with_ttl", "per_type": {type: n}, "per_master": {addr: n}, "elapsed_ms"}`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub keys: u64,
    pub with_ttl: u64,
    pub per_type: BTreeMap<&'static str, u64>,
    pub per_master: BTreeMap<String, u64>,
    pub elapsed_ms: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("slot {0} has no master: the cluster does not cover every slot")]
    Uncovered(u16),
    #[error("writing failed on {} node(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Nodes(Vec<NodeError>),
}

/// The key name of sample key `i`; every 12th string carries a hash tag.
pub fn key_name(i: u64) -> String {
    let ty = TYPES[(i % 6) as usize];
    if ty == "string" && i.is_multiple_of(12) {
        format!("lab:{{user:{}}}:string:{i:08}", i % 97)
    } else {
        format!("lab:{ty}:{i:08}")
    }
}

fn has_ttl(i: u64) -> bool {
    i % 10 == 3
}

/// Appends the commands that write sample key `i` to `pipe`.
fn write_key(pipe: &mut redis::Pipeline, i: u64) {
    let key = key_name(i);
    // Every 50th key of each type is big enough for the non-compact encodings.
    let big = (i / 6) % 50 == 1;
    pipe.cmd("DEL").arg(&key).ignore();
    match i % 6 {
        0 => {
            let value: Vec<u8> = match (i / 6) % 4 {
                0 => i.to_string().into_bytes(),
                1 => vec![0, 0xff, b'\r', b'\n', (i % 256) as u8],
                2 => Vec::new(),
                _ => format!("value-{i}-{}", "x".repeat((i % 64) as usize)).into_bytes(),
            };
            pipe.cmd("SET").arg(&key).arg(value).ignore();
        }
        1 => {
            let n = if big { 300 } else { 5 };
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            for f in 0..n {
                cmd.arg(format!("field{f}")).arg(format!("v{}", i + f));
            }
            pipe.add_command(cmd).ignore();
        }
        2 => {
            let n = if big { 500 } else { 5 };
            let mut cmd = redis::cmd("RPUSH");
            cmd.arg(&key);
            for e in 0..n {
                cmd.arg(format!("item-{e}"));
            }
            pipe.add_command(cmd).ignore();
        }
        3 => {
            let n = if big { 300 } else { 6 };
            let mut cmd = redis::cmd("SADD");
            cmd.arg(&key);
            for m in 0..n {
                // Even keys hold integers (intset), odd ones strings.
                if i.is_multiple_of(2) {
                    cmd.arg(m * 7);
                } else {
                    cmd.arg(format!("member-{m}"));
                }
            }
            pipe.add_command(cmd).ignore();
        }
        4 => {
            let n = if big { 200 } else { 5 };
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&key);
            for m in 0..n {
                cmd.arg(m as f64 * 1.5).arg(format!("m{m}"));
            }
            pipe.add_command(cmd).ignore();
        }
        _ => {
            for e in 0..3 {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("event")
                    .arg(e)
                    .arg("source")
                    .arg("lab")
                    .ignore();
            }
            if i % 4 == 1 {
                pipe.cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg("workers")
                    .arg("0")
                    .ignore();
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("workers")
                    .arg("worker-1")
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .ignore();
            }
        }
    }
    if has_ttl(i) {
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(86_400 + (i % 3600))
            .ignore();
    }
}

/// Writes `keys` sample keys into the cluster reached through `seeds`, pipelined per master
/// and all masters at once. `progress` is called with the number of keys each batch wrote.
pub async fn load(
    exec: &Executor,
    seeds: &[Addr],
    keys: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let view = discover_light(exec, seeds, Detail::Health).await?;
    let owners = view.slot_owner();
    let mut per_addr: BTreeMap<Addr, Vec<u64>> = BTreeMap::new();
    for i in 0..keys {
        let slot = key_slot(key_name(i).as_bytes());
        let owner = owners[usize::from(slot)]
            .and_then(line_addr)
            .ok_or(LoadError::Uncovered(slot))?;
        per_addr.entry(owner).or_default().push(i);
    }
    let per_addr = &per_addr;
    // Batches each wait on their own reply timeout; the whole job may take long.
    let result = exec
        .run_with_timeout(
            per_addr.keys().cloned(),
            Duration::from_secs(24 * 3600),
            |addr, mut conn| async move {
                let indices = &per_addr[&addr];
                for chunk in indices.chunks(BATCH) {
                    let mut pipe = redis::pipe();
                    for &i in chunk {
                        write_key(&mut pipe, i);
                    }
                    pipe.exec_async(&mut conn)
                        .await
                        .map_err(|e| NodeError::from_redis(&addr, &e))?;
                    progress(chunk.len() as u64);
                }
                Ok(indices.len() as u64)
            },
        )
        .await;
    if !result.failed.is_empty() {
        return Err(LoadError::Nodes(result.failed.into_values().collect()));
    }
    let mut per_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    for i in 0..keys {
        *per_type.entry(TYPES[(i % 6) as usize]).or_default() += 1;
    }
    Ok(LoadReport {
        keys,
        with_ttl: (0..keys).filter(|&i| has_ttl(i)).count() as u64,
        per_type,
        per_master: result
            .ok
            .into_iter()
            .map(|(a, n)| (a.to_string(), n))
            .collect(),
        elapsed_ms: started.elapsed().as_millis(),
    })
}
