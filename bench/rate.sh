#!/usr/bin/env bash
# Latency at a fixed request rate: `rcops bench --rate` vs valkey-benchmark --rps (9.1.2, built
# by bench/valkey-benchmark: redis-benchmark's successor; redis-benchmark 7.0 has no rate cap).
# Same clients (1, then 10), pipeline 1, 64-byte values, requests (5 s worth) and client threads
# (10 clients: 3, one per master, as --cluster runs), on one 3-master lab (1 replica each). The
# tools alternate, five rounds per case: medians, and the median ratio of adjacent runs.
# Both sides measure from each request's real send (rcops's "sent" row). With 10 clients rcops
# runs twice: with its default even pacing (one request every 1/rate s cluster-wide), and with --tick 1ms,
# which releases the requests due in each millisecond together — close to what
# valkey-benchmark's token bucket, refilled on a 1 ms timer, sends.
# Results go to bench/out/rate.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init rate
vb=$(bench/valkey-benchmark)
dir=$(mktemp -d)
trap '$rcops lab down --dir "$dir/lab" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
$rcops lab up --masters 3 --replicas 1 --port 7750 --dir "$dir/lab" >/dev/null
python3 - "$rcops" "$vb" <<'PY' | tee "$md"
import json, statistics, subprocess, sys
rcops, vb = sys.argv[1], sys.argv[2]
# Ten clients: 5 s a run. One client: 4,000 requests a run, so each p99 rests on 40 requests.
secs, rounds, alone = 5, 5, 4000
def valkey_benchmark(cmd, rate, clients, n):
    out = subprocess.run([vb, "-p", "7750", "--cluster", "-c", str(clients), "-n", str(n),
                          "--rps", str(rate), "-t", cmd.lower(), "-d", "64", "-r", "100000",
                          "--precision", "3", "--csv"], capture_output=True, text=True, check=True).stdout
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    f = out.strip().splitlines()[-1].replace('"', "").split(",")
    return {"p50": float(f[4]), "p99": float(f[6])}
def rcops_bench(cmd, rate, clients, n, threads, *extra):
    out = subprocess.run([rcops, "-c", "127.0.0.1:7750", "bench", "--json", "--clients", str(clients),
                          "--rate", str(rate), "--requests", str(n), "--value-size", "64",
                          "--keyspace", "100000", "--ratio", "1:0" if cmd == "SET" else "0:1",
                          "--threads", str(threads), *extra], capture_output=True, text=True, check=True).stdout
    c = json.loads(out)["commands"][cmd]["service"]
    return {"p50": c["p50_ms"], "p99": c["p99_ms"]}
# valkey-benchmark's histogram starts at 10 us, so it counts in 8 us buckets and reports each
# bucket's top (23, 31, 39 ... us); ratios put rcops's figure on the same grid first.
grid = lambda ms: (int(round(ms * 1000)) // 8 * 8 + 7) / 1000
med = lambda rs, k: statistics.median(r[k] for r in rs)
paired = lambda a, b, k: statistics.median(grid(y[k]) / x[k] for x, y in zip(a, b))
cell = lambda a, b: (f"{med(b, 'p50'):.3f} / {med(b, 'p99'):.3f} | {grid(med(b, 'p50'))/med(a, 'p50'):.2f} / "
                     f"{grid(med(b, 'p99'))/med(a, 'p99'):.2f} ({paired(a, b, 'p50'):.2f} / {paired(a, b, 'p99'):.2f})")
print(f"p50 / p99 in ms from each request's real send (rcops: the \"sent\" row), 64-byte values, pipeline 1, "
      f"{rounds} rounds of the tools in turn; ratio to valkey-benchmark of the medians, rcops's "
      "put on valkey-benchmark's 8 us grid (in brackets: median ratio of adjacent runs). GET on an empty keyspace.\n")
print(f"One client (rcops on one thread), {alone} requests a run: isolated requests at 250 and 500/s, the same load from both tools; at 2000/s valkey-benchmark sends most of them back to back.\n")
print("| command, rate | valkey-benchmark p50 / p99 | rcops p50 / p99 | ratio |")
print("|---|---:|---:|---:|")
for cmd in ("GET", "SET"):
    for rate in (250, 500, 2000):
        a, b = [], []
        for _ in range(rounds):
            a.append(valkey_benchmark(cmd, rate, 1, alone)); b.append(rcops_bench(cmd, rate, 1, alone, 1))
        print(f"| {cmd} {rate}/s | {med(a, 'p50'):.3f} / {med(a, 'p99'):.3f} | {cell(a, b)} |", flush=True)
print(f"\nTen clients, {secs} s a run, three client threads on both (valkey-benchmark --cluster: one per master). rcops "
      "twice: its even pacing, and --tick 1ms (the requests due in each millisecond together).\n")
print("| command, rate | valkey-benchmark p50 / p99 | rcops (even) p50 / p99 | ratio | rcops --tick 1ms p50 / p99 | ratio |")
print("|---|---:|---:|---:|---:|---:|")
for cmd in ("GET", "SET"):
    for rate in (2000, 10000, 20000):
        a, b, t = [], [], []
        for _ in range(rounds):
            a.append(valkey_benchmark(cmd, rate, 10, rate * secs)); b.append(rcops_bench(cmd, rate, 10, rate * secs, 3))
            t.append(rcops_bench(cmd, rate, 10, rate * secs, 3, "--tick", "1ms"))
        print(f"| {cmd} {rate}/s | {med(a, 'p50'):.3f} / {med(a, 'p99'):.3f} | {cell(a, b)} | {cell(a, t)} |", flush=True)
PY
