#!/usr/bin/env python3
"""How long fdatasync takes on a disk: after appending, and after
overwriting blocks that were zero-filled beforehand (what the relay's mail
spool does). Writes a temporary file in the directory given (default: the
current one) and removes it.

    python3 scripts/fsync-probe.py [DIR] [WRITES] [BYTES]
"""
import os
import statistics
import sys
import tempfile
import time


def run(directory, mode, writes, size):
    fd, path = tempfile.mkstemp(dir=directory, suffix=".probe")
    try:
        if mode == "overwrite zero-filled room":
            os.write(fd, b"\0" * (writes * size + 4096))
            os.fsync(fd)
        buf = os.urandom(size)
        took = []
        for i in range(writes):
            start = time.perf_counter()
            os.pwrite(fd, buf, i * size)
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1e6)
        took.sort()
        print(f"{mode:28} p50 {statistics.median(took):7.0f} µs   p90 {took[int(len(took) * 0.9)]:7.0f} µs")
    finally:
        os.close(fd)
        os.remove(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 22_000
    for _ in range(2):
        for mode in ("append", "overwrite zero-filled room"):
            run(directory, mode, writes, size)


if __name__ == "__main__":
    main()
