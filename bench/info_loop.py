"""The way operators collect metrics today: redis-py, INFO on each node in turn.

Usage: python3 bench/info_loop.py FIRST_PORT COUNT
"""
import sys

import redis

first, count = int(sys.argv[1]), int(sys.argv[2])
total_keys = 0
for port in range(first, first + count):
    info = redis.Redis(host="127.0.0.1", port=port).info()
    total_keys += sum(v.get("keys", 0) for k, v in info.items() if k.startswith("db"))
print(total_keys)
