"""The migration and consistency scripts operators run today (the ops guide's
migrate-cluster-data.py and check-data-consistency.py), the way they run them: redis-py's
RedisCluster, SCAN + GET + TTL + SET per key (strings only), and a sampled GET comparison.
Usage: migrate_script.py migrate SRC_PORT DST_PORT SECONDS | check SRC_PORT DST_PORT SAMPLES
Prints keys (or samples) per second."""
import sys, time, random
from redis.cluster import RedisCluster

def cluster(port):
    # The guide passes decode_responses=True, which raises on the binary values `lab load`
    # writes; bytes keep the loop running so its rate can be measured.
    return RedisCluster(host="127.0.0.1", port=int(port), decode_responses=False,
                        skip_full_coverage_check=True)

def migrate(src, dst, seconds):
    s, d = cluster(src), cluster(dst)
    n, start = 0, time.time()
    # The guide's loop: one SCAN cursor over the cluster, then per key GET, TTL, SET(EX).
    for key in s.scan_iter(match=b"lab:string:*", count=1000):
        value = s.get(key)
        ttl = s.ttl(key)
        if ttl > 0:
            d.setex(key, ttl, value)
        else:
            d.set(key, value)
        n += 1
        if time.time() - start > seconds:
            break
    print(round(n / (time.time() - start)))

def check(src, dst, samples):
    s, d = cluster(src), cluster(dst)
    keys = []
    for key in s.scan_iter(match=b"lab:string:*", count=1000):
        keys.append(key)
        if len(keys) >= samples * 4:
            break
    pick = random.sample(keys, min(samples, len(keys)))
    start, same = time.time(), 0
    for k in pick:
        same += s.get(k) == d.get(k)
    print(round(len(pick) / (time.time() - start)))

if __name__ == "__main__":
    {"migrate": lambda a: migrate(a[0], a[1], float(a[2])),
     "check": lambda a: check(a[0], a[1], int(a[2]))}[sys.argv[1]](sys.argv[2:])
