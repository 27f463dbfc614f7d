#!/usr/bin/env bash
# Benchmarks for the performance-analysis commands on a 3-master lab (1 replica each):
#   1. `rcops bench` vs `redis-benchmark --cluster`: same clients, pipeline, value size and
#      keyspace, SET-only and GET-only runs, and the same threads (redis-benchmark --cluster
#      runs one per master: rcops gets --threads 3; one single-threaded rcops row for
#      reference); then unloaded latency (one client, no pipeline).
#   2. `rcops bigkeys` vs `redis-cli --bigkeys` run on each master one after another, 1M keys.
# Results go to bench/out/perf.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init perf
dir=$(mktemp -d)
trap '$rcops lab down --dir "$dir/lab" >/dev/null 2>&1 || true' EXIT
$rcops lab up --masters 3 --replicas 1 --port 7700 --dir "$dir/lab" >/dev/null
seed=127.0.0.1:7700
n=1000000

rb() { # redis-benchmark test → "rps p50 p99"
  redis-benchmark --cluster -h 127.0.0.1 -p 7700 "$@" --csv 2>/dev/null | tail -1 |
    python3 -c 'import csv,sys; r=next(csv.reader(sys.stdin)); print(r[1], r[4], r[6])'
}
rc() { # rcops bench → "rps p50 p99" for one command
  local cmd=$1; shift
  $rcops bench -c $seed --json "$@" | python3 -c "import json,sys; d=json.load(sys.stdin); c=d['commands']['$cmd']; print(d['ops_per_sec'], c['p50_ms'], c['p99_ms'])"
}
echo "| run | tool | requests/s | p50 ms | p99 ms |" | tee -a "$md"
echo "|---|---|---:|---:|---:|" | tee -a "$md"
for p in 1 16; do
  read -r a b c <<<"$(rb -t set -c 50 -P $p -n $n -d 3 -r 100000)"
  echo "| SET, 50 clients, pipeline $p | redis-benchmark | $a | $b | $c |" | tee -a "$md"
  read -r a b c <<<"$(rc SET --clients 50 -P $p -n $n --value-size 3 --keyspace 100000 --ratio 1:0 --threads 3)"
  echo "| SET, 50 clients, pipeline $p | rcops bench --threads 3 | $a | $b | $c |" | tee -a "$md"
  read -r a b c <<<"$(rb -t get -c 50 -P $p -n $n -d 3 -r 100000)"
  echo "| GET, 50 clients, pipeline $p | redis-benchmark | $a | $b | $c |" | tee -a "$md"
  read -r a b c <<<"$(rc GET --clients 50 -P $p -n $n --value-size 3 --keyspace 100000 --ratio 0:1 --threads 3)"
  echo "| GET, 50 clients, pipeline $p | rcops bench --threads 3 | $a | $b | $c |" | tee -a "$md"
done
read -r a b c <<<"$(rc GET --clients 50 -P 1 -n $n --value-size 3 --keyspace 100000 --ratio 0:1 --threads 1)"
echo "| GET, 50 clients, pipeline 1 | rcops bench --threads 1 | $a | $b | $c |" | tee -a "$md"
# Unloaded latency: one client, one request at a time. redis-benchmark 7.0 has no rate cap,
# so its closed loop is the anchor; rcops runs closed-loop too, then paced at fixed rates
# (latency from each request's intended send time).
read -r a b c <<<"$(rb -t get -c 1 -n 20000 -d 3 -r 100000)"
echo "| GET, 1 client | redis-benchmark | $a | $b | $c |" | tee -a "$md"
read -r a b c <<<"$(rc GET --clients 1 -n 20000 --keyspace 100000 --ratio 0:1)"
echo "| GET, 1 client | rcops bench | $a | $b | $c |" | tee -a "$md"
for rate in 2000 5000; do
  read -r a b c <<<"$(rc GET --clients 1 -n 20000 --keyspace 100000 --ratio 0:1 --rate $rate)"
  echo "| GET, 1 client, --rate $rate | rcops bench | $a | $b | $c |" | tee -a "$md"
done

# bigkeys on 1M keys.
$rcops lab load --dir "$dir/lab" --keys $n >/dev/null
t0=$(date +%s.%N); $rcops bigkeys -c $seed >/dev/null; t1=$(date +%s.%N)
for port in 7700 7701 7702; do redis-cli -p $port --bigkeys >/dev/null; done; t2=$(date +%s.%N)
python3 -c "
a=$t1-$t0; b=$t2-$t1
print(f'bigkeys, {$n} keys on 3 masters: rcops {a:.2f} s, redis-cli --bigkeys on each master in turn {b:.2f} s, ratio {b/a:.1f}x')" | tee -a "$md"
t0=$(date +%s.%N); $rcops bigkeys -c $seed --from-replicas >/dev/null; t1=$(date +%s.%N)
python3 -c "print(f'rcops bigkeys --from-replicas: {$t1-$t0:.2f} s')" | tee -a "$md"
