#!/usr/bin/env bash
# Load: SESSIONS concurrent sessions × STATEMENTS statements (simple, extended and pipelined
# mixed) through one `lockbox serve` (audit fsync), driven by benches/load_sessions.py.
#
#   benches/load.sh [SESSIONS] [STATEMENTS]
#
#   SESSIONS    concurrent sessions (env LOAD_SESSIONS; default 1000)
#   STATEMENTS  statements per session (env LOAD_STATEMENTS; default 1000)
#   env LOCKBOX_BIN  use this lockbox binary instead of `cargo build --release`
#
# Prints errors, statements, throughput, p50/p99 statement latency and the proxy's peak RSS,
# then counts the trail: exactly SESSIONS × STATEMENTS statement records carry this run's
# marker, and `lockbox audit verify --config` passes. Exits non-zero when a promise breaks.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SESSIONS=${1:-${LOAD_SESSIONS:-1000}}
STATEMENTS=${2:-${LOAD_STATEMENTS:-1000}}
MARKER="load-$$-$RANDOM"

python3 -c 'import asyncpg' 2>/dev/null || bench_die "asyncpg is needed (python3 -m pip install asyncpg)"
bench_init
bench_raise_nofile $((4 * SESSIONS + 1000))
bench_start_demo
if ((SESSIONS + 30 > $(bench_max_connections))); then
    bench_raise_max_connections $((SESSIONS + 100))
fi
bench_start_lockbox load fsync
bench_target load "${BENCH_PROXY_PORT[load]}" "$LOCKBOX_ENGINEER" disable load
bench_grant load read
CONFIG="$(dirname "$LOCKBOX_CONFIG")/lockbox-load.toml"
TRAIL="$(dirname "$LOCKBOX_CONFIG")/audit/audit-load.jsonl"
PID=${BENCH_SERVE_PID[load]}

peak=0
(
    while bench_pid_alive "$PID"; do
        awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" 2>/dev/null
        sleep 0.5
    done
) >"$BENCH_WORK/rss" &
sampler=$!

bench_log "$SESSIONS sessions × $STATEMENTS statements through one lockbox (audit fsync)"
result=$(python3 "$BENCH_ROOT/benches/load_sessions.py" 127.0.0.1 "${BENCH_PROXY_PORT[load]}" \
    "$LOCKBOX_ENGINEER" "${BENCH_TOKEN[load,read]}" "$LOCKBOX_DATABASE" "$SESSIONS" "$STATEMENTS" "$MARKER")
kill "$sampler" 2>/dev/null || true
peak=$(sort -n "$BENCH_WORK/rss" | tail -1)
bench_stop_lockbox load

verified=ok
"$LOCKBOX" audit verify --config "$CONFIG" >"$BENCH_WORK/verify.log" 2>&1 || verified=FAILED
# Statement records that carry this run's marker, in the text (simple) or a parameter
# (asyncpg sends text parameters in binary format, recorded as hex).
records=$(python3 - "$TRAIL" "$MARKER-" <<'PY'
import glob, json, sys
marker = sys.argv[2]
marker_hex = marker.encode().hex()
n = 0
# The active file and the segments rotated out of it (audit-load-<seq>.jsonl).
for path in glob.glob(sys.argv[1][: -len(".jsonl")] + "*.jsonl"):
    with open(path, errors="replace") as f:
        for line in f:
            if marker not in line and marker_hex not in line:
                continue
            r = json.loads(line)
            if r.get("type") == "statement":
                n += 1
print(n)
PY
)
python3 - "$result" "$SESSIONS" "$STATEMENTS" "$records" "$verified" "${peak:-0}" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
sessions, statements, records, verified, peak = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
want = sessions * statements
print(f"sessions × statements:    {sessions} × {statements} = {want}")
print(f"errors:                   {r['errors']} {r['first_errors'] if r['errors'] else ''}")
print(f"statements completed:     {r['statements']} in {r['seconds']} s ({r['per_second']}/s)")
print(f"statement latency:        p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
print(f"statement records:        {records}")
print(f"audit verify:             {verified}")
print(f"proxy peak RSS:           {peak // 1024} MiB ({peak // max(sessions, 1)} KiB per session)")
if r["errors"] or r["statements"] != want or records != want or verified != "ok":
    sys.exit(1)
PY
