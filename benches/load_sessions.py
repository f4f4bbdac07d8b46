#!/usr/bin/env python3
"""SESSIONS concurrent sessions through one proxy, each running STATEMENTS statements, a third
each over the simple protocol, the extended protocol (one Parse/Bind/Execute/Sync each) and
pipelined (asyncpg's executemany: one Parse, then a Bind/Execute per row and one Sync).
Every statement carries a unique marker, so the trail can be counted exactly.

  load_sessions.py HOST PORT USER PASSWORD DATABASE SESSIONS STATEMENTS MARKER

Prints one JSON line: errors, statements sent, seconds, statements per second, p50/p99 of
one statement's latency in ms (a pipelined batch counts as its statements, each at the
batch's latency divided by its size).
"""
import asyncio
import json
import sys
import time

import asyncpg

BATCH = 10


async def session(args, n, latencies, errors):
    host, port, user, password, database, _, statements, marker = args
    try:
        conn = await asyncpg.connect(host=host, port=int(port), user=user, password=password,
                                     database=database, ssl=False, timeout=120,
                                     statement_cache_size=0)
    except Exception as e:  # noqa: BLE001 - every failure counts, whatever its type
        errors.append(f"connect {n}: {e}")
        return 0
    sent = 0
    try:
        i = 0
        while i < statements:
            kind = i % 3
            start = time.perf_counter()
            if kind == 0:
                # No arguments: asyncpg sends a simple Query.
                await conn.execute(f"SELECT '{marker}-{n}-{i}'")
                latencies.append(time.perf_counter() - start)
                i += 1
                sent += 1
            elif kind == 1:
                await conn.fetchval("SELECT $1::text", f"{marker}-{n}-{i}")
                latencies.append(time.perf_counter() - start)
                i += 1
                sent += 1
            else:
                count = min(BATCH, statements - i)
                rows = [(f"{marker}-{n}-{i + k}",) for k in range(count)]
                await conn.executemany("SELECT $1::text", rows)
                per = (time.perf_counter() - start) / count
                latencies.extend([per] * count)
                i += count
                sent += count
    except Exception as e:  # noqa: BLE001
        errors.append(f"session {n} at {sent}: {e}")
    finally:
        await conn.close()
    return sent


async def main():
    args = sys.argv[1:]
    sessions, statements = int(args[5]), int(args[6])
    args[6] = statements
    latencies, errors = [], []
    start = time.perf_counter()
    sent = await asyncio.gather(*(session(args, n, latencies, errors) for n in range(sessions)))
    seconds = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else None
    print(json.dumps({
        "errors": len(errors),
        "first_errors": errors[:5],
        "statements": sum(sent),
        "seconds": round(seconds, 1),
        "per_second": round(sum(sent) / seconds) if seconds else 0,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }))


asyncio.run(main())
