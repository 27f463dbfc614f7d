"""Apply lag of a follower, measured from outside: every 20 ms a probe key is written to the
source (a master, by slot) and the target is polled until it shows it; the delay is the lag
a client would see. Usage: follow_probe.py SRC_PORT DST_PORT SECONDS. Prints
"p50_ms p99_ms max_ms probes"."""
import sys, time
from redis.cluster import RedisCluster

src = RedisCluster(host="127.0.0.1", port=int(sys.argv[1]))
dst = RedisCluster(host="127.0.0.1", port=int(sys.argv[2]))
end = time.time() + float(sys.argv[3])
delays, i = [], 0
while time.time() < end:
    key = f"probe:{i}"
    src.set(key, "1")
    t0 = time.time()
    while dst.get(key) is None:
        if time.time() - t0 > 30:
            break
        time.sleep(0.0005)
    delays.append((time.time() - t0) * 1000)
    i += 1
    time.sleep(0.02)
delays.sort()
q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
print(f"{q(0.5):.1f} {q(0.99):.1f} {delays[-1]:.1f} {len(delays)}")
