#!/usr/bin/env bash
# Continuous backup and point-in-time restore (issue 16), 3-master lab:
#   1. `rcops backup follow` while redis-benchmark writes SETs (50 clients, no pipelining)
#      into the source: the recovery point measured from outside every 50 ms
#      (bench/follow_probe.py: how long ago the master last held no more than what the
#      follower has synced to disk), rcops's CPU and peak RSS, and the archive's size per
#      million commands beside the same commands in the masters' own AOF (appendonly yes,
#      appendfsync everysec).
#   2. `rcops restore latest --until <end>` into a fresh 3-master target: the stream replay's
#      rate beside the target's ingest limit (redis-benchmark --cluster -P 32 SET).
# Results go to bench/out/follow.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init follow time
dir=$(mktemp -d)
trap 'pkill -P "$(cat "$dir/fpid" 2>/dev/null)" 2>/dev/null || true; for l in src dst; do $rcops lab down --dir "$dir/$l" >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
n=${COMMANDS:-3000000}
$rcops lab up --masters 3 --replicas 0 --port 7700 --dir "$dir/src" >/dev/null
$rcops lab up --masters 3 --replicas 0 --port 7800 --dir "$dir/dst" >/dev/null
SRC="7700 7701 7702"
for p in $SRC; do redis-cli -p "$p" CONFIG SET appendonly yes >/dev/null; redis-cli -p "$p" CONFIG SET repl-backlog-size 64mb >/dev/null; done
sleep 2
export RCOPS_STATE_DIR="$dir/state"
aof_bytes() { du -cb "$dir"/src/*/appendonlydir/*.incr.aof 2>/dev/null | tail -1 | cut -f1; }
/usr/bin/time -f '%e %M %U %S' -o "$dir/time" "$rcops" -c 127.0.0.1:7700 backup follow --segment-age 10s --json > "$dir/follow.json" 2> "$dir/follow.err" &
echo $! > "$dir/fpid"
until [ -f "$dir/state/backups/chains"/*/base/manifest.json ] 2>/dev/null; do sleep 0.2; done
# /usr/bin/time neither forwards SIGINT nor burns CPU: the follower is its child.
fpid=$(pgrep -P "$(cat "$dir/fpid")" -x rcops)
a0=$(aof_bytes); c0=$(awk '{print $14+$15}' /proc/$fpid/stat)
s=$(date +%s.%N)
python3 bench/follow_probe.py "$dir/stop" $SRC > "$dir/probe" &
probe=$!
redis-benchmark -p 7700 --cluster -t set -n "$n" -r 1000000 -d 64 -c 50 -q > "$dir/bench" 2>&1
load_s=$(python3 -c "print(round($(date +%s.%N)-$s, 2))")
c1=$(awk '{print $14+$15}' /proc/$fpid/stat)
touch "$dir/stop"; wait $probe || true
a1=$(aof_bytes)
sleep 1.5
end=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
sleep 1
kill -INT "$fpid"; wait "$(cat "$dir/fpid")" || true
seg_bytes=$(python3 -c "
import json, glob
t = 0
for f in glob.glob('$dir/state/backups/chains/*/chain.json'):
    for s in json.load(open(f))['shards']:
        t += sum(g['bytes'] for g in s['segments'])
print(t)")
rate=$(python3 -c "print(round($n/$load_s))")
cpu=$(python3 -c "print(round(($c1-$c0)/100/$load_s*100))")  # % of one core over the load
rss=$(awk '{printf "%.0f", $2/1024}' "$dir/time")
# Restore at the end: the base (small) then the stream.
/usr/bin/time -f '%e %M' -o "$dir/rtime" "$rcops" -c 127.0.0.1:7800 restore latest --until "$end" --yes --json > "$dir/restore.json" 2> "$dir/restore.err" || true
replay=$(python3 -c "
import json
r = json.load(open('$dir/restore.json'))['replay']
cmds = sum(s['commands'] for s in r); ms = max(s['elapsed_ms'] for s in r)
print(cmds, round(cmds / (ms / 1000)))")
for p in 7800 7801 7802; do redis-cli -p "$p" FLUSHALL >/dev/null; done
floor=$(redis-benchmark -p 7800 --cluster -t set -n 2000000 -r 1000000 -d 64 -c 50 -P 32 -q 2>/dev/null | tr '\r' '\n' | grep -o 'SET: [0-9.]*' | tail -1 | awk '{printf "%.0f", $2}')
read p50 p99 pmax samples < "$dir/probe" || true
set -- $replay
{
echo "| backup follow, 3 masters, redis-benchmark SET -c 50 (-d 64) | value |"
echo "|---|---:|"
echo "| write load (redis-benchmark, $n SETs) | $rate ops/s |"
echo "| recovery point, p50 / p99 / max ($samples probes) | $p50 / $p99 / $pmax ms |"
echo "| rcops CPU during the load (all 3 shards) | $cpu% of one core |"
echo "| rcops peak RSS | $rss MB |"
echo "| archive: segments per 1M commands | $(python3 -c "print(round($seg_bytes/$n*1e6/1048576, 1))") MiB |"
echo "| the masters' own AOF per 1M commands | $(python3 -c "print(round(($a1-$a0)/$n*1e6/1048576, 1))") MiB |"
echo "| restore --until: stream replay ($1 commands) | $2 commands/s |"
echo "| floor: redis-benchmark --cluster -P 32 SET into the target | $floor ops/s |"
} | tee -a "$md"
