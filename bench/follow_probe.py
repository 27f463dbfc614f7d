"""Recovery point of `rcops backup follow`, measured from outside: every 50 ms each master's
INFO replication gives its offset and the offset its one replica (the follower) acknowledged
— rcops acknowledges only what it has flushed and synced. The recovery point at an instant is
how long ago the master's offset was last at or below that acknowledged offset: everything
written before then is on disk. Prints "p50_ms p99_ms max_ms samples" over the run.
Usage: follow_probe.py STOPFILE PORT… (runs until STOPFILE exists). Standard library only."""
import os, socket, sys, time


class Conn:
    """One keep-alive connection that sends INFO replication and reads the bulk reply."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def info(self):
        self.s.sendall(b"INFO replication\r\n")
        n = int(self.f.readline()[1:])
        body = self.f.read(n + 2).decode()
        out = {}
        for line in body.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out


def acked_offset(info):
    # slave0:ip=…,port=…,state=online,offset=N,lag=0 — the follower is the only replica
    fields = dict(kv.split("=", 1) for kv in info.get("slave0", "").split(",") if "=" in kv)
    return int(fields.get("offset", 0))


stop, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
conns = {p: Conn(p) for p in ports}
hist = {p: [] for p in ports}  # (t, master_offset)
samples = []
while not os.path.exists(stop):
    for p, c in conns.items():
        info = c.info()
        t = time.time()
        mo = int(info["master_repl_offset"])
        acked = acked_offset(info)
        hist[p].append((t, mo))
        # the latest instant the master had no more than what is on disk; when the whole
        # window is ahead of it, the window's start is a lower bound (never skipped)
        safe = hist[p][0][0]
        for (ht, ho) in reversed(hist[p]):
            if ho <= acked:
                safe = ht
                break
        if len(hist[p]) > 20:
            samples.append((t - safe) * 1000)
        if len(hist[p]) > 2000:
            hist[p] = hist[p][-2000:]
    time.sleep(0.05)
samples.sort()
q = lambda f: samples[min(len(samples) - 1, int(f * len(samples)))] if samples else float("nan")
print(f"{q(0.5):.0f} {q(0.99):.0f} {max(samples) if samples else float('nan'):.0f} {len(samples)}")
