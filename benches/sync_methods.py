#!/usr/bin/env python3
"""How long it takes this disk to make a small write durable, by method: the audit's `fsync`
mode waits for one such sync per batch of statements, so this is the floor under its latency
and a large part of its CPU. In the spirit of PostgreSQL's pg_test_fsync, for the patterns the
audit writes (a frame of a few hundred bytes to a few KiB per sync).

    benches/sync_methods.py [DIR] [--count N] [--rounds R] [--bytes B]

    DIR       where the test file goes (default: the current directory); use the audit
              folder's filesystem, since the figures are the filesystem's and the device's
    --count   syncs per method and round (default 2000)
    --rounds  rounds, the methods interleaved within each (default 3); figures are medians
    --bytes   bytes per write (default 700, about one statement's record and frame header)

Methods, each on a file allocated up front (as the journal is) unless said:
    append+fdatasync   write(2) at the end of a growing file, then fdatasync: the trail's own
                       sync, which must also write the new size (a second I/O, a journal
                       commit on ext4)
    pwrite+fdatasync   pwrite into the allocated file, then fdatasync: the journal today
    O_DSYNC            pwrite on a descriptor opened O_DSYNC: write and sync in one call
    O_DIRECT|O_DSYNC   the same bypassing the page cache, in whole aligned 4 KiB blocks (the
                       block holding the write is written whole, as a journal would have to);
                       "unsupported" where the filesystem refuses O_DIRECT (tmpfs)

For each: wall µs per sync, and this process's CPU µs per sync (user + system; work the kernel
does in its own threads, such as ext4's journal commits, is not counted).
"""

import argparse
import mmap
import os
import resource
import statistics
import tempfile
import time

BLOCK = 4096
FILE_BYTES = 32 << 20


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def allocated(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, FILE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_fdatasync(path, count, size):
    payload = b"x" * size
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(count):
            os.write(fd, payload)
            os.fdatasync(fd)
    finally:
        os.close(fd)


def pwrite_fdatasync(path, count, size):
    payload = b"x" * size
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(count):
            os.pwrite(fd, payload, (i * size) % (FILE_BYTES - size))
            os.fdatasync(fd)
    finally:
        os.close(fd)


def pwrite_dsync(path, count, size):
    payload = b"x" * size
    fd = os.open(path, os.O_RDWR | os.O_DSYNC)
    try:
        for i in range(count):
            os.pwrite(fd, payload, (i * size) % (FILE_BYTES - size))
    finally:
        os.close(fd)


def pwrite_direct(path, count, size):
    blocks = (size + BLOCK - 1) // BLOCK + 1
    # An anonymous mapping is page-aligned, as O_DIRECT wants its buffer.
    buffer = mmap.mmap(-1, blocks * BLOCK)
    buffer.write(b"x" * (blocks * BLOCK))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
    try:
        for i in range(count):
            at = (i * size) % (FILE_BYTES - blocks * BLOCK)
            start = at - at % BLOCK
            end = at + size
            length = (end - start + BLOCK - 1) // BLOCK * BLOCK
            os.pwritev(fd, [memoryview(buffer)[:length]], start)
    finally:
        os.close(fd)
        buffer.close()


METHODS = [
    ("append+fdatasync", append_fdatasync, False),
    ("pwrite+fdatasync", pwrite_fdatasync, True),
    ("O_DSYNC", pwrite_dsync, True),
    ("O_DIRECT|O_DSYNC", pwrite_direct, True),
]


def measure(run, path, count, size):
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    run(path, count, size)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return wall / count * 1e6, cpu / count * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=".")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=700)
    args = parser.parse_args()
    if args.count < 1 or args.rounds < 1 or not 0 < args.bytes <= 1 << 20:
        parser.error("--count and --rounds must be positive, --bytes between 1 and 1048576")
    figures = {name: [] for name, _, _ in METHODS}
    unsupported = {}
    with tempfile.TemporaryDirectory(prefix="lockbox-sync-", dir=args.dir) as folder:
        path = os.path.join(folder, "journal")
        for _ in range(args.rounds):
            for name, run, needs_allocation in METHODS:
                if name in unsupported:
                    continue
                if needs_allocation:
                    allocated(path)
                try:
                    figures[name].append(measure(run, path, args.count, args.bytes))
                except OSError as e:
                    unsupported[name] = e.strerror or str(e)
                os.unlink(path)
    print(f"{args.count} syncs of {args.bytes} bytes per method and round, median of {args.rounds} "
          f"round(s), in {os.path.abspath(args.dir)}")
    print(f"{'method':<18} {'wall us':>8} {'cpu us':>8}")
    for name, _, _ in METHODS:
        if name in unsupported:
            print(f"{name:<18} unsupported here ({unsupported[name]})")
            continue
        walls = [w for w, _ in figures[name]]
        cpus = [c for _, c in figures[name]]
        print(f"{name:<18} {statistics.median(walls):>8.1f} {statistics.median(cpus):>8.1f}")


if __name__ == "__main__":
    main()
