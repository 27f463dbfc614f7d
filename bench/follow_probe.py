"""Recovery point of `rcops backup follow`, measured from outside: every 50 ms each master's
INFO replication gives its offset and the offset its one replica (the follower) acknowledged
— rcops acknowledges only what it has flushed and synced. The recovery point at an instant is
how long ago the master's offset was last at or below that acknowledged offset: everything
written before then is on disk. Prints "p50_ms p99_ms max_ms samples" over the run.
Usage: follow_probe.py STOPFILE PORT… (runs until STOPFILE exists)"""
import os, sys, time, redis

stop, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
conns = {p: redis.Redis(port=p) for p in ports}
hist = {p: [] for p in ports}  # (t, master_offset)
samples = []
while not os.path.exists(stop):
    for p, c in conns.items():
        info = c.info("replication")
        t = time.time()
        mo = info["master_repl_offset"]
        acked = info["slave0"]["offset"] if "slave0" in info else 0
        hist[p].append((t, mo))
        # the latest instant the master had no more than what is on disk
        safe = None
        for (ht, ho) in reversed(hist[p]):
            if ho <= acked:
                safe = ht
                break
        if safe is not None and len(hist[p]) > 20:
            samples.append((t - safe) * 1000)
        if len(hist[p]) > 400:
            hist[p] = hist[p][-400:]
    time.sleep(0.05)
samples.sort()
q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))] if samples else float("nan")
print(f"{q(0.5):.0f} {q(0.99):.0f} {max(samples) if samples else float('nan'):.0f} {len(samples)}")
