#!/usr/bin/env bash
# Big keys through migrate and verify: a 300 MB string and a hash of 2M fields, 3 → 2 masters.
#   1. `rcops migrate` with the default --big-key-bytes (32 MiB: rebuilt piece by piece into a
#      temporary key, renamed) and with --big-key-bytes 4GiB (one RESTORE per key, what
#      RedisShake and a DUMP/RESTORE script send), and a redis-py DUMP + RESTORE script.
#      And `--method scan`: each DUMP reply streams into a temporary file, then the same pieces.
#   2. `rcops verify --mode full` on the copy.
# Each: time, peak RSS (/usr/bin/time), and the longest command the target ran (its SLOWLOG,
# threshold 5 ms): how long the target could not serve anyone else. The floor: the same data
# written straight into the target's master with redis-cli (`-x SET`, `--pipe` of HSETs of
# 1000 fields). Results go to bench/out/bigkeys.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init bigkeys time
dir=$(mktemp -d)
trap 'for l in src dst; do $rcops lab down --dir "$dir/$l" >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
$rcops lab up --masters 3 --replicas 0 --port 7700 --dir "$dir/src" >/dev/null
$rcops lab up --masters 2 --replicas 0 --port 7800 --dir "$dir/dst" >/dev/null
export RCOPS_STATE_DIR="$dir/state"
port_of() { # the master port of key $2 in the cluster at port $1
  python3 -c "import redis; print(redis.RedisCluster(host='127.0.0.1', port=$1).get_node_from_key('$2').port)"
}
hash_cmds() { python3 - <<'EOF'
import sys
out = sys.stdout.buffer
for s in range(0, 2_000_000, 1000):
    args = [b"HSET", b"bighash"]
    for i in range(s, s + 1000):
        args += [b"field:%d" % i, b"value-%d" % (i * 7)]
    out.write(b"*%d\r\n" % len(args))
    for a in args:
        out.write(b"$%d\r\n%s\r\n" % (len(a), a))
EOF
}
head -c 300000000 /dev/urandom > "$dir/big.bin"
hash_cmds > "$dir/hash.resp"
# The floor, into the target: each key written as fast as redis-cli writes it.
sp=$(port_of 7800 bigstr); hp=$(port_of 7800 bighash)
s=$(date +%s.%N); redis-cli -p "$sp" -x SET bigstr < "$dir/big.bin" >/dev/null
redis-cli -p "$hp" --pipe < "$dir/hash.resp" >/dev/null; floor=$(python3 -c "print(round($(date +%s.%N)-$s, 2))")
flush() { for p in 7800 7801; do redis-cli -p "$p" FLUSHALL >/dev/null; done; }
flush
redis-cli -p "$(port_of 7700 bigstr)" -x SET bigstr < "$dir/big.bin" >/dev/null
redis-cli -p "$(port_of 7700 bighash)" --pipe < "$dir/hash.resp" >/dev/null
rm -f "$dir/big.bin" "$dir/hash.resp"
slow_reset() { for p in 7700 7701 7702 7800 7801; do redis-cli -p "$p" CONFIG SET slowlog-log-slower-than 5000 >/dev/null; redis-cli -p "$p" SLOWLOG RESET >/dev/null; done; }
# The longest command on the target (or on the ports given) since slow_reset, in ms, and
# its name.
slowest() {
  for p in ${@:-7800 7801}; do redis-cli -p "$p" --json SLOWLOG GET 128 2>/dev/null || echo '[]'; done |
    python3 -c "
import json, sys
best = (0, '-')
for line in sys.stdin.read().split('\n'):
    line = line.strip()
    if not line: continue
    for e in json.loads(line):
        best = max(best, (e[2], e[3][0]))
print(f'{best[0]/1000:.0f} {best[1]}')"
}
timed() { # → "seconds rss_mb slowest_ms slowest_cmd"
  slow_reset
  /usr/bin/time -f '%e %M' -o "$dir/time" "$@" > "$dir/last.out" 2>&1 || true
  echo "$(awk '{printf "%s %.0f", $1, $2/1024}' "$dir/time") $(slowest)"
}
chunked=$(timed "$rcops" migrate --from 127.0.0.1:7700 --to 127.0.0.1:7800 --yes)
verify=$(timed "$rcops" verify --from 127.0.0.1:7700 --to 127.0.0.1:7800 --mode full --rounds 1)
verdict=$(tail -1 "$dir/last.out")
flush
restore=$(timed "$rcops" migrate --from 127.0.0.1:7700 --to 127.0.0.1:7800 --big-key-bytes 4GiB --yes)
flush
scan=$(timed "$rcops" migrate --method scan --from 127.0.0.1:7700 --to 127.0.0.1:7800 --yes)
scan_source=$(slowest 7700 7701 7702)
flush
script=$(timed python3 -c "
import redis
c = redis.RedisCluster(host='127.0.0.1', port=7700)
t = redis.RedisCluster(host='127.0.0.1', port=7800)
for k in (b'bigstr', b'bighash'):
    t.restore(k, 0, c.dump(k), replace=True)
")
{
echo "| 300 MB string + 2M-field hash (129 MB), 3 → 2 masters | time | peak RSS | longest command on the target |"
echo "|---|---:|---:|---:|"
for row in "rcops migrate (default: pieces of 4 MiB, renamed)|$chunked" \
           "rcops migrate --big-key-bytes 4GiB (one RESTORE per key)|$restore" \
           "rcops migrate --method scan (DUMP streamed to a file, then pieces; source: $scan_source ms)|$scan" \
           "redis-py DUMP + RESTORE per key|$script"; do
  name=${row%%|*}; set -- ${row#*|}
  echo "| $name | $1 s | $2 MB | $3 ms ($4) |"
done
set -- $verify
echo "| rcops verify --mode full ($verdict) | $1 s | $2 MB | $3 ms ($4) |"
echo "| floor: redis-cli -x SET + --pipe HSETs of 1000 fields, straight into the target | $floor s | | |"
} | tee -a "$md"
