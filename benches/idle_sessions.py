#!/usr/bin/env python3
"""Opens N idle PostgreSQL sessions and holds them (for benches/idle.sh).

Speaks the protocol over raw sockets (no driver): optional SSLRequest + TLS, StartupMessage,
cleartext or no password, until ReadyForQuery. The connection settings come from libpq's
variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE=require|disable).

Prints one JSON line once every session is open (or failed), then holds them until a line or
end of file on standard input, sends Terminate on each, and prints a second JSON line.
"""
import argparse
import asyncio
import json
import os
import ssl
import struct
import sys
import time


async def open_session(tls_context):
    host = os.environ.get("PGHOST", "127.0.0.1")
    port = int(os.environ.get("PGPORT", "5432"))
    user = os.environ["PGUSER"]
    database = os.environ.get("PGDATABASE", user)
    password = os.environ.get("PGPASSWORD", "")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if tls_context is not None:
            writer.write(struct.pack("!ii", 8, 80877103))
            await writer.drain()
            if await reader.readexactly(1) != b"S":
                raise RuntimeError("the server refused TLS")
            await writer.start_tls(tls_context)
        params = b"".join(
            k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in (("user", user), ("database", database), ("application_name", "idle-bench"))
        ) + b"\0"
        body = struct.pack("!i", 196608) + params
        writer.write(struct.pack("!i", len(body) + 4) + body)
        await writer.drain()
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            payload = await reader.readexactly(length - 4)
            if kind == b"R":
                (code,) = struct.unpack("!i", payload[:4])
                if code == 3:  # cleartext password
                    secret = password.encode() + b"\0"
                    writer.write(b"p" + struct.pack("!i", len(secret) + 4) + secret)
                    await writer.drain()
                elif code != 0:
                    raise RuntimeError(f"unsupported authentication request {code}")
            elif kind == b"E":
                fields = dict(
                    (f[:1], f[1:].decode(errors="replace")) for f in payload.split(b"\0") if f
                )
                raise RuntimeError(f"{fields.get(b'C', '')} {fields.get(b'M', '')}")
            elif kind == b"Z":
                return reader, writer
    except BaseException:
        writer.close()
        raise


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("sessions", type=int)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    tls_context = None
    if os.environ.get("PGSSLMODE", "disable") not in ("disable", "allow", "prefer"):
        tls_context = ssl.create_default_context()
        tls_context.check_hostname = False
        tls_context.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(args.concurrency)
    errors = []

    async def one():
        async with gate:
            try:
                return await open_session(tls_context)
            except Exception as e:  # noqa: BLE001 — counted and reported
                errors.append(str(e) or type(e).__name__)
                return None

    start = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(args.sessions)))
    sessions = [r for r in results if r is not None]
    print(json.dumps({
        "opened": len(sessions),
        "failed": len(errors),
        "seconds": round(time.monotonic() - start, 3),
        "first_error": errors[0] if errors else None,
    }), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, writer in sessions:
        try:
            writer.write(b"X\0\0\0\4")
            writer.close()
        except Exception:  # noqa: BLE001 — closing anyway
            pass
    await asyncio.gather(*(w.wait_closed() for _, w in sessions), return_exceptions=True)
    print(json.dumps({"closed": len(sessions)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
