#!/usr/bin/env python3
"""Where a proxy's CPU time per transaction goes, from a `perf script` of a profile taken with
stacks (`perf record --call-graph dwarf`), as cost.sh takes it with BENCH_PERF.

    perf script -i PROFILE | benches/where_time_goes.py US_PER_TX

Each sample is counted once: in the kernel, by the system call it is in (a send, a receive, a
file write, a wait in epoll or on a futex; "other kernel" is interrupts, softirqs and the
scheduler outside any of those); in user space, by the innermost frame that belongs to a part of
the program (the audit, statement analysis, reply tracking, the relay, the async runtime,
tracing), so a memcpy or a clock read counts for whoever called it. US_PER_TX (the proxy's CPU
time per transaction over the same run) turns the shares into microseconds.

Proxies without symbols (pgbouncer) have all their user time in "user, no symbols"; their kernel
time is split as lockbox's is, which is what makes the two comparable.
"""

import collections
import sys

# (part, substrings of a kernel frame), first match wins.
KERNEL = [
    ("kernel: send (TCP, both sides)", ("__sys_sendto", "do_writev", "sock_write_iter", "__sys_sendmsg")),
    ("kernel: receive", ("__sys_recvfrom", "sock_recvmsg", "sock_read_iter")),
    ("kernel: file write (the audit)", ("ksys_write", "ksys_pwrite64", "vfs_write")),
    ("kernel: fsync", ("do_fsync", "__x64_sys_fdatasync", "__x64_sys_fsync")),
    ("kernel: epoll wait", ("do_epoll_wait",)),
    ("kernel: futex (thread wake-ups)", ("do_futex",)),
]

# (part, prefixes of a user-space symbol), for the innermost frame that has one.
USER = [
    ("user: audit (encode, hash chain, write)", ("lockbox::audit::", "<lockbox::audit::")),
    (
        "user: statement analysis (cache, guard, record)",
        ("lockbox::guard::", "lockbox::sql::", "lockbox::proxy::relay::inspect", "<lockbox::guard::"),
    ),
    (
        "user: reply tracking (scanner, tracker, outcomes)",
        ("lockbox::wire::", "lockbox::proxy::tracker", "lockbox::proxy::statements", "lockbox::proxy::relay::record"),
    ),
    ("user: tracing", ("tracing::", "tracing_core::", "tracing_subscriber::", "<tracing")),
    ("user: async runtime (tokio)", ("tokio::", "<tokio::", "mio::", "<mio::")),
    ("user: relay and session", ("lockbox::", "<lockbox::")),
]


def symbol(frame):
    """The symbol of a `perf script` stack line: "ADDR SYMBOL+OFF (DSO)"."""
    parts = frame.strip().split(None, 1)
    return parts[1] if len(parts) == 2 else ""


def part_of(frames):
    if frames and "[kernel.kallsyms]" in frames[0]:
        for name, keys in KERNEL:
            if any(k in f for f in frames for k in keys):
                return name
        return "kernel: other (interrupts, scheduler)"
    for frame in frames:
        sym = symbol(frame)
        for name, prefixes in USER:
            if sym.startswith(prefixes):
                return name
    if any("lockbox" in f for f in frames):
        return "user: other (libc, std)"
    return "user, no symbols"


def main():
    us_per_tx = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    counts = collections.Counter()
    block = []
    for line in sys.stdin:
        if line.strip():
            block.append(line)
            continue
        if len(block) > 1:
            counts[part_of(block[1:])] += 1
        block = []
    if len(block) > 1:
        counts[part_of(block[1:])] += 1
    total = sum(counts.values())
    if not total:
        print("no samples")
        return
    print(f"{'share':>6} {'us/tx':>6}  part ({total} samples)")
    for name, n in sorted(counts.items(), key=lambda kv: (kv[0].startswith("user"), -kv[1])):
        print(f"{100 * n / total:5.1f}% {us_per_tx * n / total:6.1f}  {name}")


if __name__ == "__main__":
    main()
