#!/usr/bin/env bash
# Latency at a fixed request rate: `rcops bench --rate` vs resp-benchmark (PyPI
# `resp-benchmark`, a load generator with a rate cap and cluster mode; redis-benchmark 7.0 has
# no rate cap and memtier_benchmark is not packaged here). Same clients, rate, command and value
# size, on one 3-master lab (1 replica each); the tools alternate, seven runs of each: medians,
# and the median ratio of adjacent runs.
# resp-benchmark reports the mean and p99 measured from each request's real send, so those are
# compared with rcops's "sent" figures; rcops's default figures (from each request's intended
# send time, coordinated omission corrected) are listed beside them.
# Results go to bench/out/rate.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init rate
venv=$out/.venv-resp-benchmark
[ -x "$venv/bin/resp-benchmark" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q resp-benchmark; }
dir=$(mktemp -d)
trap '$rcops lab down --dir "$dir/lab" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
$rcops lab up --masters 3 --replicas 1 --port 7750 --dir "$dir/lab" >/dev/null
python3 - "$rcops" "$venv/bin/resp-benchmark" <<'PY' | tee "$md"
import json, re, statistics, subprocess, sys
rcops, rb = sys.argv[1], sys.argv[2]
secs, clients, runs = 5, 10, 7
def resp_benchmark(cmd, rate):
    line = {"SET": "SET {key uniform 100000} {value 64}", "GET": "GET {key uniform 100000}"}[cmd]
    out = subprocess.run([rb, "-p", "7750", "--cluster", "-c", str(clients), "-t", str(rate),
                          "-s", str(secs), line], capture_output=True, text=True, check=True).stdout
    last = [l for l in out.replace("\r", "\n").splitlines() if "qps" in l][-1]
    m = re.search(r"qps: ([\d.]+), conn: \d+, cnt: \d+, avg: ([\d.]+)ms, p99: ([\d.]+)ms", last)
    return {"rps": float(m[1]), "mean": float(m[2]), "p99": float(m[3])}
def rcops_bench(cmd, rate):
    ratio = "1:0" if cmd == "SET" else "0:1"
    out = subprocess.run([rcops, "-c", "127.0.0.1:7750", "bench", "--json", "--clients", str(clients),
                          "--rate", str(rate), "--duration", f"{secs}s", "--value-size", "64",
                          "--keyspace", "100000", "--ratio", ratio],
                         capture_output=True, text=True).stdout
    c = json.loads(out)["commands"][cmd]
    return {"rps": c["ops_per_sec"], "mean": c["service"]["mean_ms"], "p99": c["service"]["p99_ms"],
            "co_mean": c["mean_ms"], "co_p50": c["p50_ms"], "co_p99": c["p99_ms"]}
med = lambda rs, k: statistics.median(r[k] for r in rs)
# The tools alternate, and each run of one is compared with the other's run next to it: this
# VM's speed drifts over minutes (the reference tool's own medians moved 2-5x between whole
# runs of this script), so a ratio of adjacent runs says more than a ratio of medians.
paired = lambda a, b, k: statistics.median(y[k] / x[k] for x, y in zip(a, b))
print(f"{clients} clients, pipeline 1, 64-byte values, {secs} s per run, {runs} runs of each tool, alternating (GET on an empty keyspace: both miss)\n")
print("| command, rate | resp-benchmark mean / p99 ms (median) | rcops sent mean / p99 ms (median) | ratio of medians, mean / p99 | median ratio of adjacent runs, mean / p99 | rcops from intended send: mean / p50 / p99 ms |")
print("|---|---:|---:|---:|---:|---:|")
for cmd in ("GET", "SET"):
    for rate in (2000, 10000, 20000):
        a, b = [], []
        for _ in range(runs):
            a.append(resp_benchmark(cmd, rate)); b.append(rcops_bench(cmd, rate))
        am, ap, bm, bp = med(a, "mean"), med(a, "p99"), med(b, "mean"), med(b, "p99")
        print(f"| {cmd} {rate}/s | {am:.3f} / {ap:.3f} | {bm:.3f} / {bp:.3f} | {bm/am:.2f} / {bp/ap:.2f} "
              f"| {paired(a, b, 'mean'):.2f} / {paired(a, b, 'p99'):.2f} "
              f"| {med(b, 'co_mean'):.3f} / {med(b, 'co_p50'):.3f} / {med(b, 'co_p99'):.3f} |", flush=True)
PY
