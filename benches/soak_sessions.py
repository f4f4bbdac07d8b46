#!/usr/bin/env python3
"""A soak: steady load through one lockbox while grants expire and are revoked every few
seconds, sampling the proxy's RSS, open files and threads, and how late each session was
dropped.

  soak_sessions.py PROXY_PID PROXY_PORT DATABASE ENGINEER SECONDS

Requests go through the `lockbox` CLI ($LOCKBOX, $LOCKBOX_SERVER, $LOCKBOX_CA_CERT, keys in
$LOCKBOX_ENGINEER_KEY / $LOCKBOX_APPROVER_KEY / $LOCKBOX_ADMIN_KEY). Prints the figures and
exits 1 when a session outlived its end by more than a second, a session that should have
been dropped was not, or RSS / open files / live sessions grew between the start and the end.
"""
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import asyncpg

PID, PORT, DATABASE, ENGINEER, SECONDS = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
LOCKBOX = os.environ["LOCKBOX"]
STEADY_SESSIONS = 4
EVERY = 3.0          # a new expiring or revoked grant this often
PER_GRANT = 3        # sessions on each
LATE_LIMIT = 1.0     # seconds a drop may come after the end


def cli(key_env, *args):
    env = dict(os.environ, LOCKBOX_API_KEY=os.environ[key_env])
    out = subprocess.run([LOCKBOX, *args], env=env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"lockbox {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def grant(duration):
    rid = cli("LOCKBOX_ENGINEER_KEY", "request", "create", "--database", DATABASE, "--ticket", "SOAK",
              "--reason", "soak", "--access", "read", "--duration", duration)
    cli("LOCKBOX_APPROVER_KEY", "request", "approve", rid, "--reason", "soak")
    token = cli("LOCKBOX_ENGINEER_KEY", "token", rid)
    shown = json.loads(cli("LOCKBOX_ENGINEER_KEY", "--json", "request", "show", rid))
    ends = datetime.datetime.fromisoformat(shown["access_expires_at"].replace("Z", "+00:00")).timestamp()
    return rid, token, ends


async def session(token, drops, rate=20.0):
    """Runs SELECT 1 at `rate` per second until the session is dropped; records when and why."""
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user=ENGINEER, password=token,
                                     database=DATABASE, ssl=False, timeout=30)
    except Exception as e:  # noqa: BLE001 - a refused login is a figure too
        drops.append((time.time(), f"login: {e}"))
        return
    try:
        while True:
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(1.0 / rate)
    except Exception as e:  # noqa: BLE001
        drops.append((time.time(), getattr(e, "sqlstate", "") or type(e).__name__))
    finally:
        conn.terminate()


def sample():
    status = open(f"/proc/{PID}/status").read()
    rss = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:")))
    threads = int(next(l.split()[1] for l in status.splitlines() if l.startswith("Threads:")))
    fds = len(os.listdir(f"/proc/{PID}/fd"))
    live = len(json.loads(cli("LOCKBOX_ADMIN_KEY", "--json", "session", "list") or "[]"))
    return {"t": time.time(), "rss_kib": rss, "fds": fds, "threads": threads, "sessions": live}


async def main():
    loop = asyncio.get_running_loop()
    _, steady_token, _ = await loop.run_in_executor(None, grant, "8h")
    steady_drops = []
    steady = [asyncio.create_task(session(steady_token, steady_drops)) for _ in range(STEADY_SESSIONS)]
    ends = []        # (kind, end time, [drops]) for every grant that must end
    pending = []
    samples = []
    start = time.time()
    next_sample = start
    n = 0
    while time.time() - start < SECONDS:
        if time.time() >= next_sample:
            samples.append(await loop.run_in_executor(None, sample))
            next_sample += 10
        expiring = n % 2 == 0
        rid, token, end = await loop.run_in_executor(None, grant, "5s" if expiring else "1h")
        drops = []
        pending += [asyncio.create_task(session(token, drops)) for _ in range(PER_GRANT)]
        if expiring:
            ends.append(("expiry", end, drops))
        else:
            await asyncio.sleep(2)
            await loop.run_in_executor(None, cli, "LOCKBOX_APPROVER_KEY", "request", "revoke", rid, "--reason", "soak")
            ends.append(("revocation", time.time(), drops))
        n += 1
        await asyncio.sleep(max(0.0, EVERY - (2 if not expiring else 0)))
    await asyncio.wait(pending, timeout=15)
    await asyncio.sleep(2)
    samples.append(await loop.run_in_executor(None, sample))
    for t in steady:
        t.cancel()

    late, missing, wrong = [], 0, []
    for kind, end, drops in ends:
        if len(drops) < PER_GRANT:
            missing += PER_GRANT - len(drops)
        for when, why in drops:
            late.append(when - end)
            # 57P01 when the FATAL came during a query; between queries asyncpg sees the
            # connection already closed (08003, or InterfaceError "connection is closed").
            if why not in ("57P01", "08003", "InterfaceError"):
                wrong.append(f"{kind}: {why}")
    warm = [s for s in samples if s["t"] - start >= min(120, SECONDS / 4)] or samples
    first, last = warm[0], samples[-1]
    rss_growth = last["rss_kib"] - statistics.median(s["rss_kib"] for s in warm[: max(1, len(warm) // 4)])
    report = {
        "seconds": round(time.time() - start),
        "grants_ended": len(ends),
        "sessions_dropped": len(late),
        "not_dropped": missing,
        "dropped_otherwise": wrong[:5],
        "drop_late_ms": {
            "p50": round(statistics.median(late) * 1000) if late else None,
            "p99": round(sorted(late)[int(0.99 * (len(late) - 1))] * 1000) if late else None,
            "max": round(max(late) * 1000) if late else None,
        },
        "steady_sessions_lost": len(steady_drops),
        "rss_kib": [first["rss_kib"], last["rss_kib"], max(s["rss_kib"] for s in samples)],
        "fds": [first["fds"], last["fds"]],
        "threads": [first["threads"], last["threads"]],
        "live_sessions": [first["sessions"], last["sessions"]],
    }
    print(json.dumps(report))
    broken = (
        missing
        or wrong
        or steady_drops
        or (late and max(late) > LATE_LIMIT)
        or rss_growth > max(8 * 1024, first["rss_kib"] // 5)
        or last["fds"] > first["fds"] + 8
        or last["sessions"] > first["sessions"]
    )
    sys.exit(1 if broken else 0)


asyncio.run(main())
