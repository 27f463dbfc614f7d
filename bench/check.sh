#!/usr/bin/env bash
# Benchmark: `rcops check` vs `redis-cli --cluster check` on a 6-node and a 120-node lab,
# side by side in one run (hyperfine), plus rcops's peak RSS. Results go to bench/out/.
# Usage: bench/check.sh   (needs hyperfine and GNU time: apt-get install -y hyperfine time)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || scripts/ensure-deps time
. bench/lib.sh; bench_init check hyperfine
dir=$(mktemp -d)
trap '$rcops lab down --dir "$dir/6" >/dev/null 2>&1 || true; $rcops lab down --dir "$dir/120" >/dev/null 2>&1 || true' EXIT

echo "## lab up" | tee "$out/check.md"
/usr/bin/time -f "lab up 120 nodes: %e s wall, %M KiB peak RSS" \
  $rcops lab up --masters 60 --replicas 1 --port 8000 --dir "$dir/120" 2>&1 | tail -1 | tee -a "$out/check.md"
$rcops lab up --masters 3 --replicas 1 --port 7600 --dir "$dir/6" >/dev/null
$rcops lab load --dir "$dir/6" --keys 10000 >/dev/null

for n in 6 120; do
  port=$([ $n = 6 ] && echo 7600 || echo 8000)
  echo; echo "## $n nodes" | tee -a "$out/check.md"
  hyperfine -N -i --warmup 3 --runs 40 --export-markdown "$out/check-$n.md" --export-json "$out/check-$n.json" \
    "$rcops check -c 127.0.0.1:$port" \
    "redis-cli --cluster check 127.0.0.1:$port" >/dev/null || true
  cat "$out/check-$n.md" | tee -a "$out/check.md"
  # Medians resist the outliers a loaded 2-core box produces.
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"]
a, b = r[0]["median"] * 1000, r[1]["median"] * 1000
print(f"median: rcops {a:.1f} ms, redis-cli {b:.1f} ms, ratio {b / a:.2f}x")
' "$out/check-$n.json" | tee -a "$out/check.md"
  /usr/bin/time -f "rcops check peak RSS ($n nodes): %M KiB" $rcops check -c 127.0.0.1:$port 2>&1 >/dev/null | tail -1 | tee -a "$out/check.md"
  /usr/bin/time -f "redis-cli --cluster check peak RSS ($n nodes): %M KiB" redis-cli --cluster check 127.0.0.1:$port 2>&1 >/dev/null | tail -1 | tee -a "$out/check.md"
done

# The floor on this machine: PING every node of the 120-node lab at once from one asyncio
# process (no parsing, no checks). The servers share the benchmark's cores, so this bounds
# how fast any parallel tool can touch all 120 of them.
python3 - <<'PY' | tee -a "$out/check.md"
import asyncio, statistics, time
async def one(port):
    r, w = await asyncio.open_connection('127.0.0.1', port)
    w.write(b"*1\r\n$4\r\nPING\r\n"); await w.drain(); await r.readline(); w.close()
async def main():
    times = []
    for _ in range(20):
        t = time.perf_counter()
        await asyncio.gather(*[one(p) for p in range(8000, 8120)])
        times.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.1)
    print(f"floor: parallel PING of 120 nodes (python asyncio): median {statistics.median(times):.1f} ms, min {min(times):.1f} ms")
asyncio.run(main())
PY
