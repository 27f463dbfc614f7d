//! `bench`: a cluster-aware load generator. Each client owns a connection to one master and
//! only uses keys that master owns, so no request is redirected; clients are spread evenly
//! over masters. Latency is recorded per command in HDR histograms; with a rate cap it is
//! measured from each batch's *intended* send time, so stalls are not hidden by the
//! generator waiting (coordinated omission). Keys live under [`KEY_PREFIX`] and are deleted
//! afterwards unless kept.

use crate::job::CancellationToken;
use hdrhistogram::Histogram;
use rcops_formats::resp;
use rcops_formats::slot::key_slot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{rtt_histogram, Percentiles};
use crate::fanout::Executor;
use crate::node::{Addr, NodeError};
use crate::topology::{line_addr, ClusterView};
use crate::transport::Transport;

/// Every key `bench` writes starts with this.
pub const KEY_PREFIX: &str = "__rcops:bench:";

/// The load to generate.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub clients: usize,
    pub pipeline: usize,
    /// Stop after this long…
    pub duration: Option<Duration>,
    /// …or after this many requests.
    pub requests: Option<u64>,
    /// Distinct keys used.
    pub keyspace: u64,
    pub value_size: usize,
    /// SETs and GETs in this proportion, e.g. (1, 1).
    pub ratio: (u32, u32),
    /// Cluster-wide cap in requests per second.
    pub rate: Option<u64>,
    /// With `rate`: release the batches due within each tick of this length together, at its
    /// start, like a generator on a timer (valkey-benchmark `--rps` wakes its clients on a 1 ms
    /// timer, each thread on its own). `None`: each batch at its own time, evenly spaced cluster-wide.
    pub tick: Option<Duration>,
    /// Leave the keys in place.
    pub keep: bool,
    /// Client threads, each with its own event loop and a share of the clients (client `c`
    /// on thread `c % threads`, so with one thread per master each thread serves one
    /// master, as `redis-benchmark --cluster` does). 0: one per master, at most the cores.
    pub threads: usize,
}

/// Throughput and latency of one command.
#[derive(Debug, Clone, Serialize)]
pub struct CommandStats {
    pub count: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    /// From each batch's intended send time with `--rate`, else from its send.
    #[serde(flatten)]
    pub latency: Percentiles,
    /// With `--rate`: from the moment each batch was really sent — what a tool that does not
    /// correct for coordinated omission reports; the gap to `latency` is time spent behind
    /// schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Percentiles>,
}

/// JSON: `{"total", "ops_per_sec", "elapsed_ms", "errors", "commands": {"SET": CommandStats,
/// "GET": …}, "per_node": {addr: requests}, "keys_deleted", "stopped_early", "error_samples",
/// "threads"}`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub total: u64,
    pub ops_per_sec: f64,
    pub elapsed_ms: u128,
    pub errors: u64,
    pub commands: BTreeMap<&'static str, CommandStats>,
    pub per_node: BTreeMap<String, u64>,
    pub keys_deleted: u64,
    pub stopped_early: bool,
    /// A few distinct error messages, for diagnosis.
    pub error_samples: Vec<String>,
    /// Client threads the load ran on.
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("no master owns slots: nothing to benchmark")]
    NoMasters,
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// One batch of SET/GET as a single round trip. Keys and the value come RESP-encoded
/// ([`resp::bulk`]): a request is three copies of ready bytes.
async fn round_trip(
    t: &mut Transport,
    addr: &Addr,
    batch: &[(bool, &[u8])],
    value: &[u8],
) -> Result<Vec<Option<String>>, NodeError> {
    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n";
    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n";
    t.raw(addr, batch.len(), |out| {
        out.reserve(batch.iter().map(|(_, k)| k.len() + 14 + value.len()).sum());
        for (is_set, key) in batch {
            out.extend_from_slice(if *is_set { SET } else { GET });
            out.extend_from_slice(key);
            if *is_set {
                out.extend_from_slice(value);
            }
        }
    })
    .await
}

/// Waits for a batch's intended send time with microsecond precision. Tokio's timers tick
/// in milliseconds — late by up to a millisecond, which would count as latency — and spinning
/// instead steals a core from the servers on a small box, which shows up as multi-millisecond
/// stalls. On Linux a timerfd in the reactor wakes the task on time without spinning.
struct Pacer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<Timer>>,
}

/// A timerfd, owned: `AsyncFd` wants `AsRawFd`.
#[cfg(target_os = "linux")]
struct Timer(nix::sys::timerfd::TimerFd);

#[cfg(target_os = "linux")]
impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl Pacer {
    // The one unsafe call in rcops: tokio's `AsyncFd::register` (see the SAFETY note).
    #[allow(unsafe_code)]
    fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
            let fd = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .ok()
            // SAFETY: the timer's fd is owned by `Timer`, which the AsyncFd owns, so it stays
            // open exactly as long as it is registered.
            .and_then(|t| unsafe { tokio::io::unix::AsyncFd::register(Timer(t)) }.ok());
            Pacer { fd }
        }
        #[cfg(not(target_os = "linux"))]
        Pacer {}
    }

    async fn wait_until(&mut self, at: Instant) {
        if let Some(ahead) = at.checked_duration_since(Instant::now()) {
            self.wait(ahead, at).await;
        }
    }

    /// Waits `ahead` (the time left until `at`). Zero returns at once: a timerfd armed with a
    /// zero expiry is *disarmed* and would never fire — a slot read exactly on time (same
    /// nanosecond) hung a paced client forever.
    async fn wait(&mut self, ahead: Duration, at: Instant) {
        if ahead.is_zero() {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use nix::sys::time::TimeSpec;
            use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
            use std::os::fd::AsFd;
            let when = Expiration::OneShot(TimeSpec::from_duration(ahead));
            if fd.get_ref().0.set(when, TimerSetTimeFlags::empty()).is_ok() {
                while let Ok(mut ready) = fd.readable().await {
                    // Reading the expiry count consumes it; EAGAIN means not yet. Either way
                    // the one-shot timer is not readable after, so the next wait goes
                    // straight to the reactor instead of first reading EAGAIN.
                    let mut count = [0u8; 8];
                    match nix::unistd::read(fd.get_ref().0.as_fd(), &mut count) {
                        Ok(_) => {
                            ready.clear_ready();
                            return;
                        }
                        Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                        Err(_) => break,
                    }
                }
            }
        }
        // Fallback: sleep to just before the slot, then yield until it arrives.
        if ahead > Duration::from_millis(2) {
            tokio::time::sleep(ahead - Duration::from_millis(2)).await;
        }
        while Instant::now() < at {
            tokio::task::yield_now().await;
        }
    }
}

/// When each paced batch is due. The cluster-wide rate is one evenly spaced sequence of
/// slots dealt out to the clients in turn — client `c` takes slots `c`, `c + clients`, … — so
/// ten clients at 10,000/s send one batch every 100 µs between them, not ten together every
/// millisecond (which is what giving each client its own schedule from its own connect time
/// did, by accident of when the connections came up: p50 moved 0.05 ↔ 0.10 ms between runs).
/// Slot times count from one origin, taken once every client has connected.
/// With a tick, each slot moves back to the start of its tick.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Nanoseconds of one slot, times `rate` (kept as a fraction: no drift over long runs).
    slot_ns_times_rate: u128,
    rate: u128,
    clients: u128,
    tick_ns: u128,
}

impl Schedule {
    fn new(rate: u64, pipeline: usize, clients: usize, tick: Option<Duration>) -> Self {
        Schedule {
            slot_ns_times_rate: pipeline.max(1) as u128 * 1_000_000_000,
            rate: u128::from(rate.max(1)),
            clients: clients.max(1) as u128,
            tick_ns: tick.map_or(0, |t| t.as_nanos()),
        }
    }

    /// Start of slot `n` of the whole sequence, in ns from the origin, before ticks.
    fn slot_ns(&self, n: u128) -> u128 {
        n * self.slot_ns_times_rate / self.rate
    }

    /// When client `c`'s `k`-th batch is due, in ns from the origin (all clients connected).
    fn due_ns(&self, c: usize, k: u64) -> u128 {
        let at = self.slot_ns(u128::from(k) * self.clients + c as u128);
        match self.tick_ns {
            0 => at,
            t => at / t * t,
        }
    }
}

/// Runs each client as a task of the current runtime and collects what they measured.
async fn run_clients<F>(clients: Vec<F>, fallback: Addr) -> Vec<Result<ClientResult, NodeError>>
where
    F: std::future::Future<Output = Result<ClientResult, NodeError>> + Send + 'static,
{
    let tasks: Vec<_> = clients.into_iter().map(tokio::spawn).collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| {
                Err(NodeError::Command {
                    addr: fallback.clone(),
                    reason: format!("benchmark client task failed: {e}"),
                })
            })
        })
        .collect()
}

/// Key index → key name.
pub fn key_name(i: u64) -> String {
    format!("{KEY_PREFIX}{i}")
}

struct ClientResult {
    node: Addr,
    set: Histogram<u64>,
    get: Histogram<u64>,
    /// From the real send time (kept only when paced).
    set_service: Histogram<u64>,
    get_service: Histogram<u64>,
    set_errors: u64,
    get_errors: u64,
    errors: Vec<String>,
}

/// Runs the load against the masters of `view`. `stop` ends it early (Ctrl-C); `progress`
/// gets the number of requests each batch completed.
pub async fn bench(
    exec: &Executor,
    view: &ClusterView,
    opts: &BenchOptions,
    stop: CancellationToken,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<BenchReport, BenchError> {
    // Keys per master, by the slot table.
    let owners = view.slot_owner();
    let masters: Vec<Addr> = view
        .masters()
        .filter(|m| m.slot_count() > 0)
        .filter_map(line_addr)
        .collect();
    if masters.is_empty() {
        return Err(BenchError::NoMasters);
    }
    let mut keys_of: BTreeMap<Addr, Vec<u64>> = BTreeMap::new();
    // Names built and RESP-encoded once per master and shared by its clients: formatting per
    // request would cost more than the request.
    let mut names_of: BTreeMap<Addr, Vec<Box<[u8]>>> = BTreeMap::new();
    for i in 0..opts.keyspace {
        let name = key_name(i);
        if let Some(a) = owners[usize::from(key_slot(name.as_bytes()))].and_then(line_addr) {
            keys_of.entry(a.clone()).or_default().push(i);
            names_of
                .entry(a)
                .or_default()
                .push(resp::bulk(name.as_bytes()).into());
        }
    }
    let names_of: BTreeMap<Addr, Arc<[Box<[u8]>]>> =
        names_of.into_iter().map(|(a, n)| (a, n.into())).collect();
    let value: Arc<[u8]> = resp::bulk(&vec![b'x'; opts.value_size]).into();
    let issued = Arc::new(AtomicU64::new(0));
    let (pipeline, requests) = (opts.pipeline, opts.requests);
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let threads = match opts.threads {
        0 => masters
            .len()
            .min(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
    .clamp(1, opts.clients.max(1));
    let connected = Arc::new(tokio::sync::Barrier::new(opts.clients));
    let origin = Arc::new(std::sync::OnceLock::new());
    let schedule = opts
        .rate
        .map(|r| Schedule::new(r, opts.pipeline, opts.clients, opts.tick));
    let cycle = u64::from(opts.ratio.0 + opts.ratio.1).max(1);
    let sets = u64::from(opts.ratio.0);

    let clients = (0..opts.clients).map(|c| {
        let node = masters[c % masters.len()].clone();
        let keys: Arc<[Box<[u8]>]> = names_of.get(&node).cloned().unwrap_or_else(|| Arc::new([]));
        let value = value.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        let conn_opts = exec.options().clone();
        let (connected, origin) = (connected.clone(), origin.clone());
        async move {
            let mut r = ClientResult {
                node: node.clone(),
                set: rtt_histogram(),
                get: rtt_histogram(),
                set_service: rtt_histogram(),
                get_service: rtt_histogram(),
                set_errors: 0,
                get_errors: 0,
                errors: Vec::new(),
            };
            let conn = match keys.is_empty() {
                true => None,
                false => Some(Transport::open(&conn_opts, &node).await),
            };
            // Paced clients start together once all are connected (or failed to): the slots
            // count from one origin, and connection setup is not request latency.
            if schedule.is_some() {
                connected.wait().await;
            }
            let origin = *origin.get_or_init(Instant::now);
            let Some(conn) = conn else {
                return Ok(r);
            };
            let mut conn = conn?;
            let mut batch_no: u64 = 0;
            let mut pacer = Pacer::new();
            let mut seq: u64 = c as u64;
            let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
            loop {
                if stop.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let want = pipeline as u64;
                let n = match requests {
                    Some(total) => {
                        let before = issued.fetch_add(want, Ordering::Relaxed);
                        if before >= total {
                            break;
                        }
                        want.min(total - before)
                    }
                    None => {
                        issued.fetch_add(want, Ordering::Relaxed);
                        want
                    }
                };
                // With a rate cap, wait for this batch's slot; latency counts from it.
                let intended = match schedule {
                    Some(s) => {
                        let due = u64::try_from(s.due_ns(c, batch_no)).unwrap_or(u64::MAX);
                        // A slot centuries away (a huge --requests at a low rate) is never due.
                        let Some(at) = origin.checked_add(Duration::from_nanos(due)) else {
                            break;
                        };
                        // A slot past the end of the run is not waited for: at a low rate over
                        // many clients one slot can be a minute away.
                        if deadline.is_some_and(|d| at >= d) {
                            break;
                        }
                        // Long waits in slices, so Ctrl-C is not held up by one.
                        while !stop.is_cancelled() {
                            let slice = Instant::now() + Duration::from_millis(100);
                            pacer.wait_until(at.min(slice)).await;
                            if Instant::now() >= at {
                                break;
                            }
                        }
                        if stop.is_cancelled() {
                            break;
                        }
                        at
                    }
                    None => Instant::now(),
                };
                batch_no += 1;
                // One command per batch, the mix kept over batches (as redis-benchmark -P runs
                // one command per test): every command of a pipeline shares its round trip, so
                // a mixed batch would give SET and GET the same latency by construction.
                let is_set = seq % cycle < sets;
                seq += 1;
                let mut batch: Vec<(bool, &[u8])> = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    // xorshift: cheap, deterministic per client.
                    rng_state ^= rng_state << 13;
                    rng_state ^= rng_state >> 7;
                    rng_state ^= rng_state << 17;
                    let key = &keys[(rng_state % keys.len() as u64) as usize];
                    batch.push((is_set, &key[..]));
                }
                let sent = Instant::now();
                let reply = round_trip(&mut conn, &node, &batch, &value).await;
                // One clock reading for both, so sent-latency never exceeds intended-latency.
                let done = Instant::now();
                let us = (done - intended).as_micros().max(1) as u64;
                let service_us = (done - sent).as_micros().max(1) as u64;
                match reply {
                    Ok(failed) => {
                        for ((is_set, _), failed) in batch.iter().zip(failed) {
                            let (h, hs, e) = if *is_set {
                                (&mut r.set, &mut r.set_service, &mut r.set_errors)
                            } else {
                                (&mut r.get, &mut r.get_service, &mut r.get_errors)
                            };
                            match failed {
                                Some(err) => {
                                    *e += 1;
                                    if r.errors.len() < 3 {
                                        r.errors.push(format!("{node}: {err}"));
                                    }
                                }
                                None => {
                                    let _ = h.record(us.min(60_000_000));
                                    if schedule.is_some() {
                                        let _ = hs.record(service_us.min(60_000_000));
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        for (is_set, _) in &batch {
                            if *is_set {
                                r.set_errors += 1
                            } else {
                                r.get_errors += 1
                            }
                        }
                        if r.errors.len() < 3 {
                            r.errors.push(e.to_string());
                        }
                        // The connection is in an unknown state after a failed round trip.
                        break;
                    }
                }
                progress(n);
            }
            Ok::<_, NodeError>(r)
        }
    });
    let clients: Vec<_> = clients.collect();
    let fallback = masters[0].clone();
    let results = if threads == 1 {
        run_clients(clients, fallback).await
    } else {
        let mut groups: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (c, client) in clients.into_iter().enumerate() {
            groups[c % threads].push(client);
        }
        let handles = groups.into_iter().map(|group| {
            let fallback = fallback.clone();
            tokio::task::spawn_blocking(move || match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run_clients(group, fallback)),
                Err(e) => vec![Err(NodeError::Command {
                    addr: fallback,
                    reason: format!("cannot start a client thread: {e}"),
                })],
            })
        });
        let mut all = Vec::with_capacity(opts.clients);
        for h in futures::future::join_all(handles).await {
            match h {
                Ok(rs) => all.extend(rs),
                Err(e) => all.push(Err(NodeError::Command {
                    addr: fallback.clone(),
                    reason: format!("benchmark client thread failed: {e}"),
                })),
            }
        }
        all
    };
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64().max(1e-9);

    let mut set = rtt_histogram();
    let mut get = rtt_histogram();
    let mut set_service = rtt_histogram();
    let mut get_service = rtt_histogram();
    let (mut set_errors, mut get_errors) = (0u64, 0u64);
    let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_samples: Vec<String> = Vec::new();
    let mut failed = None;
    for r in results {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                failed.get_or_insert(e);
                continue;
            }
        };
        let _ = set.add(&r.set);
        let _ = get.add(&r.get);
        let _ = set_service.add(&r.set_service);
        let _ = get_service.add(&r.get_service);
        set_errors += r.set_errors;
        get_errors += r.get_errors;
        *per_node.entry(r.node.to_string()).or_default() +=
            r.set.len() + r.get.len() + r.set_errors + r.get_errors;
        for e in r.errors {
            if error_samples.len() < 5 && !error_samples.contains(&e) {
                error_samples.push(e);
            }
        }
    }
    let stats = |h: &Histogram<u64>, service: &Histogram<u64>, errors: u64| CommandStats {
        count: h.len(),
        errors,
        ops_per_sec: (h.len() as f64 / secs).round(),
        latency: Percentiles::of(h),
        service: opts.rate.map(|_| Percentiles::of(service)),
    };
    let mut commands = BTreeMap::new();
    if opts.ratio.0 > 0 {
        commands.insert("SET", stats(&set, &set_service, set_errors));
    }
    if opts.ratio.1 > 0 {
        commands.insert("GET", stats(&get, &get_service, get_errors));
    }
    let total = set.len() + get.len() + set_errors + get_errors;
    let keys_deleted = if opts.keep || opts.ratio.0 == 0 {
        0
    } else {
        cleanup(exec, &keys_of).await
    };
    // A client that could not run fails the benchmark, after the others' keys are removed.
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(BenchReport {
        total,
        ops_per_sec: (total as f64 / secs).round(),
        elapsed_ms: elapsed.as_millis(),
        errors: set_errors + get_errors,
        commands,
        per_node,
        keys_deleted,
        stopped_early: stop.is_cancelled(),
        error_samples,
        threads,
    })
}

/// Deletes every key of the keyspace — one UNLINK per key (keys of one master still span
/// many slots, so a multi-key UNLINK would be refused with CROSSSLOT), pipelined per master,
/// all masters at once. Returns how many existed.
async fn cleanup(exec: &Executor, keys_of: &BTreeMap<Addr, Vec<u64>>) -> u64 {
    let result = exec
        .run_with_timeout(
            keys_of.keys().cloned(),
            Duration::from_secs(3600),
            |addr, mut conn| async move {
                let mut deleted = 0u64;
                for chunk in keys_of[&addr].chunks(1000) {
                    let mut pipe = redis::pipe();
                    for &i in chunk {
                        pipe.cmd("UNLINK").arg(key_name(i));
                    }
                    let n: Vec<u64> = pipe
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| NodeError::from_redis(&addr, &e))?;
                    deleted += n.iter().sum::<u64>();
                }
                Ok(deleted)
            },
        )
        .await;
    for e in result.failed.values() {
        tracing::warn!(error = %e, "benchmark key cleanup failed");
    }
    result.ok.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_slots_are_spread_evenly_over_the_clients() {
        // 10 clients at 10,000/s: one batch every 100 µs between them, each client every 1 ms.
        let s = Schedule::new(10_000, 1, 10, None);
        let mut all: Vec<u128> = (0..10)
            .flat_map(|c| (0..5).map(move |k| (c, k)))
            .map(|(c, k)| s.due_ns(c, k))
            .collect();
        all.sort();
        assert_eq!(all, (0..50).map(|n| n * 100_000).collect::<Vec<_>>());
        assert_eq!(s.due_ns(3, 2) - s.due_ns(3, 1), 1_000_000);
        // A pipeline of 4 at 1,000/s from 2 clients: a batch every 4 ms, 8 ms per client.
        let p = Schedule::new(1_000, 4, 2, None);
        assert_eq!(
            (p.due_ns(0, 1), p.due_ns(1, 0), p.due_ns(1, 1)),
            (8_000_000, 4_000_000, 12_000_000)
        );
        // No drift: a rate that does not divide a second (3/s) lands on the exact second.
        assert_eq!(
            Schedule::new(3, 1, 1, None).due_ns(0, 3_000_000),
            1_000_000_000_000_000
        );
    }

    #[test]
    fn a_tick_releases_the_batches_due_within_it_together_at_its_start() {
        // 10 clients at 10,000/s with 1 ms ticks: all ten go at each millisecond.
        let s = Schedule::new(10_000, 1, 10, Some(Duration::from_millis(1)));
        for c in 0..10 {
            assert_eq!(s.due_ns(c, 0), 0);
            assert_eq!(s.due_ns(c, 7), 7_000_000);
        }
        // 2,000/s: two batches per tick, the others' ticks in between.
        let s = Schedule::new(2_000, 1, 10, Some(Duration::from_millis(1)));
        let firsts: Vec<u128> = (0..10).map(|c| s.due_ns(c, 0)).collect();
        assert_eq!(
            firsts,
            [0, 0, 1, 1, 2, 2, 3, 3, 4, 4].map(|ms| ms * 1_000_000)
        );
    }

    #[tokio::test]
    async fn a_slot_due_this_very_nanosecond_does_not_hang_the_pacer() {
        let mut pacer = Pacer::new();
        let zero = tokio::time::timeout(
            Duration::from_secs(2),
            pacer.wait(Duration::ZERO, Instant::now()),
        )
        .await;
        assert!(zero.is_ok(), "a wait with no time left hung");
        // A real wait still waits its time.
        let start = Instant::now();
        pacer.wait_until(start + Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
