#!/usr/bin/env bash
# Benchmarks for migrate and verify, 3 → 3 masters, KEYS (default 1M) mixed keys of every type
# from `rcops lab load`:
#   1. `rcops migrate` (sync and scan) vs the SCAN+GET+TTL+SET script operators run (redis-py,
#      strings only; timed for 20 s) and `redis-cli --cluster import` (standalone source only;
#      100k keys), with the target's ingest limit beside them: `redis-benchmark --cluster
#      -c 50 -P 32` SET into the same target.
#   2. `rcops verify` in length and full mode vs the sampled-GET consistency script.
# Peak RSS of rcops from /usr/bin/time. Results go to bench/out/migrate.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init migrate time
dir=$(mktemp -d)
trap 'for l in src dst; do $rcops lab down --dir "$dir/$l" >/dev/null 2>&1 || true; done; kill $(cat "$dir/solo.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
n=${KEYS:-1000000}
$rcops lab up --masters 3 --replicas 1 --port 7700 --dir "$dir/src" >/dev/null
$rcops lab up --masters 3 --replicas 0 --port 7800 --dir "$dir/dst" >/dev/null
$rcops lab load --dir "$dir/src" --keys "$n" >/dev/null
export RCOPS_STATE_DIR="$dir/state"
flush() { for p in 7800 7801 7802; do redis-cli -p "$p" FLUSHALL >/dev/null; done; }
# CPU seconds the target's masters and the source's nodes have used so far.
server_cpu() { for p in "$@"; do redis-cli -p "$p" INFO cpu; done | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.2f\n", s}'; }
SRC="7700 7701 7702 7703 7704 7705"; DST="7800 7801 7802"
# Runs rcops with /usr/bin/time: "seconds peak_rss_mb rcops_cpu_s target_cpu_s source_cpu_s";
# the JSON report in $dir/last.json.
timed() {
  local t0 s0; t0=$(server_cpu $DST); s0=$(server_cpu $SRC)
  /usr/bin/time -f '%e %M %U %S' -o "$dir/time" "$rcops" "$@" --json > "$dir/last.json" || true
  local t1 s1; t1=$(server_cpu $DST); s1=$(server_cpu $SRC)
  awk -v t="$(python3 -c "print(round($t1-$t0,2))")" -v s="$(python3 -c "print(round($s1-$s0,2))")" \
    '{printf "%s %.0f %.2f %s %s\n", $1, $2/1024, $3+$4, t, s}' "$dir/time"
}
keys_of() { python3 -c "import json; print(json.load(open('$dir/last.json'))['keys']['restored'])"; }

sync=$(timed migrate --from 127.0.0.1:7700 --to 127.0.0.1:7800 --yes); sync_keys=$(keys_of); flush
scan=$(timed migrate --from 127.0.0.1:7700 --to 127.0.0.1:7800 --method scan --yes); scan_keys=$(keys_of)
# verify on the scan copy (identical: nothing writes to the source)
vlen=$(timed verify --from 127.0.0.1:7700 --to 127.0.0.1:7800 --mode length --rounds 1)
vlen_keys=$(python3 -c "import json; print(json.load(open('$dir/last.json'))['keys_checked'])")
vfull=$(timed verify --from 127.0.0.1:7700 --to 127.0.0.1:7800 --mode full --rounds 1)
vfull_keys=$(python3 -c "import json; print(json.load(open('$dir/last.json'))['keys_checked'])")
check_rate=$(python3 bench/migrate_script.py check 7700 7800 5000)
flush
script_rate=$(python3 bench/migrate_script.py migrate 7700 7800 20)
flush
# redis-cli --cluster import needs a standalone source: 100k keys copied there by rcops.
redis-server --port 7900 --save '' --daemonize yes --pidfile "$dir/solo.pid" --dir "$dir" >/dev/null
sleep 0.5
$rcops migrate --from 127.0.0.1:7700 --to 127.0.0.1:7900 --match 'lab:*:000?????' --yes >/dev/null || true
solo=$(redis-cli -p 7900 DBSIZE)
s=$(date +%s.%N)
redis-cli --cluster import 127.0.0.1:7800 --cluster-from 127.0.0.1:7900 --cluster-copy >/dev/null 2>&1
import_rate=$(python3 -c "print(round($solo/($(date +%s.%N)-$s)))")
flush
f0=$(server_cpu $DST)
# Follow: the apply lag under a write load on the source (redis-benchmark SET, 20 clients,
# pipelined by 4), measured by probes from outside (bench/follow_probe.py), at two loads.
$rcops migrate --from 127.0.0.1:7700 --to 127.0.0.1:7800 --follow --yes --on-conflict replace > "$dir/follow.out" 2>&1 &
fpid=$!
# Streaming once a marker written now reaches the target (after the 1M-key snapshot).
redis-cli -c -p 7700 SET follow:marker 1 >/dev/null
for _ in $(seq 600); do [ "$(redis-cli -c -p 7800 EXISTS follow:marker)" = 1 ] && break; sleep 0.1; done
follow_at() { # requests, pipeline, probe seconds → "ops_per_s p50 p99 max probes"
  redis-benchmark --cluster -h 127.0.0.1 -p 7700 -t set -c 20 -P "$2" -n "$1" -d 16 -r 100000 --csv > "$dir/bench.csv" 2>/dev/null &
  local b=$! probe
  probe=$(python3 bench/follow_probe.py 7700 7800 "$3")
  wait $b
  python3 -c "import csv; print(round(float(list(csv.reader(open('$dir/bench.csv')))[-1][1])), '$probe')"
}
f1=$(follow_at 800000 1 10)
f2=$(follow_at 2000000 4 10)
kill -INT $fpid; wait $fpid || true
flush
floor=$(redis-benchmark --cluster -h 127.0.0.1 -p 7800 -t set -c 50 -P 32 -n 2000000 -d 3 -r 1000000 --csv 2>/dev/null | tail -1 | python3 -c 'import csv,sys; print(next(csv.reader(sys.stdin))[1])')
floor_cpu=$(python3 -c "print(round(($(server_cpu $DST)-$f0)/2e6*1e6, 2))")
{
echo "| 3 → 3 masters, $n keys of every type | time | keys/s | of the SET floor | vs the script | peak RSS | CPU-s: rcops / target / source |"
echo "|---|---:|---:|---:|---:|---:|---:|"
python3 -c "
floor, script = float($floor), float($script_rate)
for name, r, k in (('rcops migrate (sync: PSYNC snapshot + stream, from replicas)', '$sync', $sync_keys),
                   ('rcops migrate --method scan (SCAN + DUMP + PEXPIRETIME)', '$scan', $scan_keys)):
    s, rss, rc, tc, sc = map(float, r.split())
    print(f'| {name} | {s:.2f} s | {k/s:,.0f} | {100*k/s/floor:.0f}% | {k/s/script:,.0f}x | {rss:.0f} MB | {rc:.1f} / {tc:.1f} / {sc:.1f} |')
print(f'| SCAN+GET+TTL+SET script (redis-py RedisCluster, strings only, 20 s) | | {script:,.0f} | {100*script/floor:.1f}% | 1x | |')
print(f'| redis-cli --cluster import --cluster-copy ($solo keys, standalone source) | | {float($import_rate):,.0f} | {100*float($import_rate)/floor:.1f}% | {float($import_rate)/script:.1f}x | |')
print(f'| redis-benchmark --cluster -c 50 -P 32 SET, 3-byte values (the floor) | | {floor:,.0f} | | | | target: {float($floor_cpu)} µs per SET |')
for name, r, k in (('sync', '$sync', $sync_keys), ('scan', '$scan', $scan_keys)):
    s, rss, rc, tc, sc = map(float, r.split())
    per = (rc + tc + sc) / k * 1e6
    print(f'\n{name}: CPU per key {rc/k*1e6:.1f} µs rcops + {tc/k*1e6:.1f} µs target + {sc/k*1e6:.1f} µs source = {per:.1f} µs; 2 cores give at most {2e6/per:,.0f} keys/s ({100*2e6/per/floor:.0f}% of the floor) with every core busy')
print()
print('| verify, identical data | time | keys/s | vs the sampled-GET script | peak RSS | CPU-s: rcops / target / source |')
print('|---|---:|---:|---:|---:|---:|')
check = float($check_rate)
for name, r, k in (('rcops verify --mode length', '$vlen', $vlen_keys), ('rcops verify --mode full', '$vfull', $vfull_keys)):
    s, rss, rc, tc, sc = map(float, r.split())
    print(f'| {name} ({k:,} keys) | {s:.2f} s | {k/s:,.0f} | {k/s/check:,.0f}x | {rss:.0f} MB | {rc:.1f} / {tc:.1f} / {sc:.1f} |')
print(f'| sampled GET on both sides (check-data-consistency.py, strings only) | | {check:,.0f} | 1x | |')
print()
print('| migrate --follow under a write load on the source | writes/s (redis-benchmark SET) | apply lag p50 | p99 | max | probes |')
print('|---|---:|---:|---:|---:|---:|')
for name, r in (('20 clients, no pipelining', '$f1'), ('20 clients, pipelined by 4', '$f2')):
    ops, p50, p99, mx, n = r.split()
    print(f'| {name} | {int(ops):,} | {p50} ms | {p99} ms | {mx} ms | {n} |')
"
} | tee -a "$md"
