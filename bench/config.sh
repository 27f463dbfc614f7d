#!/usr/bin/env bash
# Benchmark: `rcops config set` on a 120-node lab vs the same change made the way operators
# script it today — a shell loop of `redis-cli CONFIG SET` + `CONFIG REWRITE`, node by node.
# rcops does more in its time: plans (reads every node), records a history snapshot before and
# after (CONFIG GET * of all 120 nodes, a git commit each), sets, reads back to verify, and
# rewrites. Each run flips the value so every run really changes all 120 nodes.
# Results go to bench/out/config.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init config
dir=$(mktemp -d)
shm=$(mktemp -d -p /dev/shm)
trap '$rcops lab down --dir "$dir/lab" >/dev/null 2>&1 || true; $rcops lab down --dir "$shm/lab" >/dev/null 2>&1 || true; rm -rf "$dir" "$shm"' EXIT
export RCOPS_STATE_DIR="$dir/state"
# Two labs, one after the other: node directories on this VM's one disk (120 servers' fsyncs
# queue on one journal), then on tmpfs — closer to 120 hosts that each fsync their own disk,
# and no help to the shell loop, whose fsyncs are one after another either way.
for where in disk tmpfs; do
base=$dir; [ "$where" = tmpfs ] && base=$shm
# Redis's default node timeout (the lab's 5 s is for quick failover tests): 120 servers
# gossiping at 5 s burn half of this 2-core box while idle, at 15 s a quarter.
$rcops lab up --masters 60 --replicas 1 --port 8000 --dir "$base/lab" --node-timeout 15000 >/dev/null
echo "### node directories on $where" | tee -a "$md"
python3 - "$rcops" <<'PY' | tee -a "$md"
import os, statistics, subprocess, sys, time
rcops = sys.argv[1]
ports = range(8000, 8120)
def shell_loop(v):
    script = "".join(
        f"redis-cli -p {p} CONFIG SET maxmemory-samples {v} >/dev/null && "
        f"redis-cli -p {p} CONFIG REWRITE >/dev/null\n" for p in ports)
    subprocess.run(["bash", "-c", "set -e\n" + script], check=True)
def rcops_set(v):
    subprocess.run([rcops, "-c", "127.0.0.1:8000", "config", "set", "maxmemory-samples", str(v), "--yes"],
                   check=True, stdout=subprocess.DEVNULL)
def verify(v):
    out = subprocess.run(["redis-cli", "-p", "8119", "CONFIG", "GET", "maxmemory-samples"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == str(v), out
times = {"rcops": [], "shell": []}
for i in range(10):
    for name, fn in (("shell", shell_loop), ("rcops", rcops_set)):
        v = 5 + (len(times[name]) % 2) + (1 if name == "rcops" else 3)
        # Each tool starts on a quiet box: the other's file writes flushed, its processes gone.
        os.sync(); time.sleep(0.5)
        t = time.perf_counter(); fn(v); times[name].append(time.perf_counter() - t); verify(v)
a, b = statistics.median(times["rcops"]), statistics.median(times["shell"])
print("| 120 nodes, one parameter | median of 10 | min | max |")
print("|---|---:|---:|---:|")
print(f"| rcops config set --yes (plan, 2 history snapshots, set, verify, rewrite) | {a:.3f} s | {min(times['rcops']):.3f} s | {max(times['rcops']):.3f} s |")
print(f"| shell loop: redis-cli CONFIG SET + CONFIG REWRITE per node | {b:.3f} s | {min(times['shell']):.3f} s | {max(times['shell']):.3f} s |")
print(f"\nratio: {b / a:.1f}x")
PY
$rcops lab down --dir "$base/lab" >/dev/null
done
