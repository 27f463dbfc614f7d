#!/usr/bin/env bash
# Benchmarks for the observability commands on a 120-node lab (60 masters + 60 replicas):
#   1. one full `rcops exporter` scrape of all 120 nodes vs redis_exporter (Debian's
#      prometheus-redis-exporter) scraping nodes one at a time through /scrape?target=,
#      with the resident memory of both exporters;
#   2. `rcops metrics` vs a redis-py script calling INFO on each node in turn.
# Results go to bench/out/observability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init observability hyperfine curl prometheus-redis-exporter
python3 -c "import redis" 2>/dev/null || pip install -q redis
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  $rcops lab down --dir "$dir/lab" >/dev/null 2>&1 || true
}
trap cleanup EXIT

$rcops lab up --masters 60 --replicas 1 --port 8000 --dir "$dir/lab" >/dev/null
$rcops lab load --dir "$dir/lab" --keys 100000 >/dev/null

$rcops exporter -c 127.0.0.1:8000 --listen 127.0.0.1:9300 2>/dev/null & pids+=($!); rpid=$!
prometheus-redis-exporter -web.listen-address 127.0.0.1:9301 -redis.addr "" >/dev/null 2>&1 & pids+=($!); xpid=$!
sleep 1
cold=$(curl -s -o /dev/null -w '%{time_total}' http://127.0.0.1:9300/metrics)
echo "rcops exporter: first scrape of 120 nodes (connections opened): ${cold}s" | tee -a "$md"

targets10=$(for p in $(seq 8000 8009); do printf 'curl -s -o /dev/null "http://127.0.0.1:9301/scrape?target=redis://127.0.0.1:%s"; ' "$p"; done)
targets120=$(for p in $(seq 8000 8119); do printf 'curl -s -o /dev/null "http://127.0.0.1:9301/scrape?target=redis://127.0.0.1:%s"; ' "$p"; done)
hyperfine -N --warmup 2 --runs 20 --export-json "$out/exporter.json" \
  "curl -s -o /dev/null http://127.0.0.1:9300/metrics" >/dev/null
hyperfine --warmup 1 --runs 10 --export-json "$out/exporter-x.json" \
  --command-name "redis_exporter, 10 nodes one after another" "$targets10" \
  --command-name "redis_exporter, 120 nodes one after another" "$targets120" >/dev/null
python3 - "$out/exporter.json" "$out/exporter-x.json" <<'PY' | tee -a "$md"
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
x = json.load(open(sys.argv[2]))["results"]
a = r["median"]
print(f"rcops exporter, all 120 nodes in one scrape: median {a*1000:.1f} ms")
for e in x:
    print(f"{e['command']}: median {e['median']*1000:.1f} ms ({e['median']/a:.1f}x rcops)")
PY
echo "peak RSS: rcops exporter $(awk '/VmHWM/{print $2}' /proc/$rpid/status) KiB, redis_exporter $(awk '/VmHWM/{print $2}' /proc/$xpid/status) KiB" | tee -a "$md"

hyperfine -N --warmup 2 --runs 20 --export-json "$out/metrics.json" \
  "$rcops metrics -c 127.0.0.1:8000 --json" \
  "python3 bench/info_loop.py 8000 120" >/dev/null
python3 - "$out/metrics.json" <<'PY' | tee -a "$md"
import json, sys
r = json.load(open(sys.argv[1]))["results"]
a, b = r[0]["median"], r[1]["median"]
print(f"rcops metrics (120 nodes): median {a*1000:.1f} ms; redis-py INFO loop: median {b*1000:.1f} ms; ratio {b/a:.1f}x")
PY
