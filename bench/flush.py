#!/usr/bin/env python3
"""flush.py: how long the disk takes to flush, the floor under every commit's latency.

Writes 8 kB at a time into a file, each followed by fdatasync (as PostgreSQL flushes its WAL
at commit), for a number of seconds, and prints the percentiles of the flushes and the time
spent in flushes over 20 ms. Run it where PostgreSQL keeps its data, on an otherwise idle
machine, to read tally's and the baseline's write p99 against (docs/performance.md):

    python3 bench/flush.py /var/lib/postgresql 8
"""
import os
import sys
import tempfile
import time

directory, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
block = b"\0" * 8192
times = []
with tempfile.TemporaryFile(dir=directory) as f:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        os.pwrite(f.fileno(), block, (i % 2048) * len(block))
        start = time.perf_counter()
        os.fdatasync(f.fileno())
        times.append((time.perf_counter() - start) * 1000)
        i += 1
times.sort()
n = len(times)
slow = [t for t in times if t > 20]
print(f"{n} flushes of 8 kB: p50 {times[n // 2]:.3f} ms, p99 {times[int(n * 0.99)]:.3f} ms, "
      f"p99.9 {times[int(n * 0.999)]:.3f} ms, max {times[-1]:.1f} ms; "
      f"{len(slow)} over 20 ms, {sum(slow):.0f} ms in all")
