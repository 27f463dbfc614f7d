#!/usr/bin/env bash
# Benchmark: `rcops check` vs `redis-cli --cluster check` on a 6-node and a 120-node lab,
# side by side in one run (hyperfine), plus rcops's peak RSS. Results go to bench/out/.
# Usage: bench/check.sh   (needs hyperfine and GNU time: apt-get install -y hyperfine time)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps hyperfine
[ -x /usr/bin/time ] || scripts/ensure-deps time
cargo build --release --locked
rcops=$PWD/target/release/rcops
out=bench/out; mkdir -p "$out"
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
  hyperfine -N -i --warmup 3 --runs 30 --export-markdown "$out/check-$n.md" \
    "$rcops check -c 127.0.0.1:$port" \
    "redis-cli --cluster check 127.0.0.1:$port" >/dev/null || true
  cat "$out/check-$n.md" | tee -a "$out/check.md"
  /usr/bin/time -f "rcops check peak RSS ($n nodes): %M KiB" $rcops check -c 127.0.0.1:$port 2>&1 >/dev/null | tail -1 | tee -a "$out/check.md"
  /usr/bin/time -f "redis-cli --cluster check peak RSS ($n nodes): %M KiB" redis-cli --cluster check 127.0.0.1:$port 2>&1 >/dev/null | tail -1 | tee -a "$out/check.md"
done
