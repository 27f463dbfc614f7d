#!/usr/bin/env bash
# Benchmarks for backup and restore on a 3-master lab (1 replica each) with 1M+ keys:
#   1. `rcops backup` vs `redis-cli --cluster backup` (sizes too).
#   2. RDB parsing: `rcops rdb info` vs rdbtools (`rdbtools-tikon93`, the maintained fork;
#      rdbtools 0.1.15 refuses RDB version 10) on one shard's RDB.
#   3. `rcops restore` into an empty 3-master lab vs `redis-benchmark --cluster -P 32` SET
#      into the same lab (the box's physical limit for small writes); the cost of the
#      pre-write checks (vs --no-verify --force); into a lab with replicas (the fence's WAIT).
# Results go to bench/out/backup.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh; bench_init backup
dir=$(mktemp -d)
trap 'for l in src dst dst2; do $rcops lab down --dir "$dir/$l" >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
python3 -m pip install -q rdbtools-tikon93 python-lzf >/dev/null 2>&1 || python3 -m pip install -q rdbtools-tikon93 >/dev/null 2>&1 || true
n=${KEYS:-1000000}
$rcops lab up --masters 3 --replicas 1 --port 7400 --dir "$dir/src" >/dev/null
$rcops lab load --dir "$dir/src" --keys "$n" >/dev/null
export RCOPS_STATE_DIR="$dir/state"
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; python3 -c "print(round($(date +%s.%N)-$s,3))"; }
# Median of three runs, for the sub-second parses (this VM's steal time swings single runs).
t3() { local a b c; a=$(t "$@"); b=$(t "$@"); c=$(t "$@"); printf '%s\n' "$a" "$b" "$c" | sort -n | sed -n 2p; }

a=$(t $rcops backup -c 127.0.0.1:7400)
mkdir -p "$dir/redis-cli-backup"
b=$(t redis-cli --cluster backup 127.0.0.1:7400 "$dir/redis-cli-backup")
raw=$(du -cb "$dir"/redis-cli-backup/*.rdb | tail -1 | cut -f1)
zst=$(du -cb "$dir"/state/backups/*/*.zst | tail -1 | cut -f1)
{
echo "| $n keys, 3 masters | time |"
echo "|---|---:|"
echo "| rcops backup (3 shards at once, from replicas, zstd + SHA-256 + parse) | $a s |"
echo "| redis-cli --cluster backup (one master after another) | $b s |"
python3 -c "print(f'\nratio: {$b/$a:.1f}x; files: rcops {$zst/1e6:.1f} MB zstd vs {$raw/1e6:.1f} MB raw RDB = {100*$zst/$raw:.0f}%')"
} | tee -a "$md"

# Parsing one shard's RDB (the raw file redis-cli wrote): every rcops reader.
f=$(ls "$dir"/redis-cli-backup/*.rdb | head -1)
keys=$($rcops rdb info --json "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["keys"])')
p=$(t3 $rcops rdb info "$f")
k=$(t3 $rcops rdb keys "$f")
q=$(t3 $rcops rdb dump "$f")
{
echo
echo "| parse one shard's RDB ($keys keys, $(du -b "$f" | cut -f1) bytes, all six types) | time | keys/s |"
echo "|---|---:|---:|"
python3 -c "
for name, s in (('rcops rdb info (walk + CRC64)', $p), ('rcops rdb keys', $k), ('rcops rdb dump (JSON Lines of every value)', $q)):
    print(f'| {name} | {s} s | {$keys/s:,.0f} |')
"
} | tee -a "$md"

# rdbtools-tikon93 loses its place in streams with consumer groups (every stream `lab load`
# writes has one) and raises part-way, so the same-file comparison uses the first master's
# data without its streams: the other five types, every encoding, TTLs, big keys.
redis-cli -p 7400 --scan --pattern 'lab:stream:*' | sed 's/^/DEL /' | redis-cli -p 7400 >/dev/null
g="$dir/nostream.rdb"
redis-cli -p 7400 --rdb "$g" >/dev/null 2>&1
gkeys=$($rcops rdb info --json "$g" | python3 -c 'import json,sys; print(json.load(sys.stdin)["keys"])')
gp=$(t3 $rcops rdb info "$g"); gk=$(t3 $rcops rdb keys "$g"); gq=$(t3 $rcops rdb dump "$g")
rt() { # rdbtools command: time, or nan when it fails
  local s0; s0=$(date +%s.%N)
  if rdb --command "$1" "$g" >/dev/null 2>"$dir/rdbtools.err"; then
    python3 -c "print(round($(date +%s.%N)-$s0,3))"
  else echo nan; echo "rdbtools -c $1 failed: $(tail -1 "$dir/rdbtools.err")" >&2; fi
}
rj=nan; rk=nan
if command -v rdb >/dev/null; then rk=$(rt justkeys); rj=$(rt json); fi
{
echo
echo "| same file for both: $gkeys keys, $(du -b "$g" | cut -f1) bytes, no streams | rcops | rdbtools-tikon93 | ratio |"
echo "|---|---:|---:|---:|"
python3 -c "
import math
rows = (('every key listed (rdb keys / -c justkeys)', $gk, float('$rk')),
        ('every value as JSON (rdb dump / -c json)', $gq, float('$rj')),
        ('parse + CRC only (rdb info; rdbtools has none, vs -c justkeys)', $gp, float('$rk')))
for name, a, b in rows:
    r = f'{b/a:.0f}x' if not math.isnan(b) else 'rdbtools failed'
    bs = f'{b} s' if not math.isnan(b) else 'failed'
    print(f'| {name} | {a} s ({$gkeys/a:,.0f} keys/s) | {bs} | {r} |')
"
} | tee -a "$md"

# Restore into an empty 3-master lab vs redis-benchmark SETs into the same lab: with the default
# checks (every file verified, the target checked, a replication fence at each checkpoint),
# and without verification or health check (--no-verify --force) to show what they cost.
# Then into a lab with a replica per master, where the fence waits for a replica (WAIT 1).
$rcops lab up --masters 3 --replicas 0 --port 7500 --dir "$dir/dst" >/dev/null
$rcops lab up --masters 3 --replicas 1 --port 7600 --dir "$dir/dst2" >/dev/null
id=$($rcops backup list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
flush() { for p in "$@"; do redis-cli -p "$p" FLUSHALL >/dev/null; done; }
restore() { # seed, extra flags...: "keys seconds"
  local seed=$1; shift; local s e
  s=$(date +%s.%N)
  $rcops restore "$id" -c "127.0.0.1:$seed" --yes --json "$@" > "$dir/restore.json"
  e=$(date +%s.%N)
  python3 -c "import json; print(json.load(open('$dir/restore.json'))['total']['restored'], round($e-$s,3))"
}
r1=$(restore 7500); flush 7500 7501 7502
r2=$(restore 7500 --no-verify --force); flush 7500 7501 7502
r3=$(restore 7500)
r4=$(restore 7600)
sleep 2 # let the replicas finish applying before the floor below
bench_set() { redis-benchmark --cluster -h 127.0.0.1 -p "$1" -t set -c 50 -P 32 -n 2000000 -d 3 -r 1000000 --csv 2>/dev/null | tail -1 | python3 -c 'import csv,sys; print(next(csv.reader(sys.stdin))[1])'; }
rb=$(bench_set 7500)
rb2=$(bench_set 7600)
{
echo
echo "| restore of the backup ($n keys, all types, TTLs; wall incl. start-up and checks) | time | keys/s | of the SET floor |"
echo "|---|---:|---:|---:|"
python3 -c "
rows = (('3 masters: rcops restore (verify + health check + fence)', '$r1', $rb),
        ('3 masters: rcops restore --no-verify --force', '$r2', $rb),
        ('3 masters: rcops restore, again', '$r3', $rb),
        ('3 masters + 3 replicas: rcops restore (fence waits for a replica)', '$r4', $rb2))
for name, r, floor in rows:
    k, s = map(float, r.split())
    print(f'| {name} | {s:.2f} s | {k/s:,.0f} | {100*k/s/floor:.0f}% |')
print(f'| 3 masters: redis-benchmark --cluster -c 50 -P 32 SET, 3-byte values (floor) | | {float($rb):,.0f} | |')
print(f'| 3 masters + 3 replicas: same (floor) | | {float($rb2):,.0f} | |')
c = (float('$r1'.split()[1]) + float('$r3'.split()[1])) / 2 / float('$r2'.split()[1]) - 1
print(f'\nverify + health check + fence: {100*c:+.0f}% wall time over --no-verify --force')
"
} | tee -a "$md"
