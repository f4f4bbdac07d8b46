#!/usr/bin/env bash
# Crash under load, many times: `kill -9` of `lockbox serve` (audit durability fsync) while
# pgbench runs through it, then a restart, KILLS times. After each restart the audit chain
# must verify (`lockbox audit verify --config`); at the end every statement PostgreSQL logged
# for the load (log_statement = all, by application_name) must have its record in the trail.
#
#   benches/crash_loop.sh [KILLS] [CLIENTS]
#
#   KILLS    kills and restarts (env BENCH_KILLS; default 50)
#   CLIENTS  pgbench clients (env BENCH_CLIENTS; default 8)
#   env LOCKBOX_BIN  use this lockbox binary instead of `cargo build --release`
#
# Prints the figures and exits non-zero when a promise breaks: a chain that does not verify,
# a statement the server ran without its record, or a proxy that does not come back.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

KILLS=${1:-${BENCH_KILLS:-50}}
CLIENTS=${2:-${BENCH_CLIENTS:-8}}
APP=lockbox-crash-loop

bench_init
bench_start_demo
bench_targets lockbox-fsync
bench_grants read lockbox-fsync
bench_load_pgbench 1

# Every statement the server runs for the load, in its log, named by the client's
# application_name (the proxy passes it upstream).
bench_psql -c "ALTER SYSTEM SET log_statement = 'all'" \
    -c "ALTER SYSTEM SET log_line_prefix = '%m [%p] app=%a: '" -c "SELECT pg_reload_conf()" >/dev/null
SERVER_LOG=$(dirname "$PG_DATA")/server.log

CONFIG="$(dirname "$LOCKBOX_CONFIG")/lockbox-fsync.toml"
TRAIL="$(dirname "$LOCKBOX_CONFIG")/audit/audit-fsync.jsonl"
PORT=${BENCH_PROXY_PORT[fsync]}

restart_proxy() {
    "$LOCKBOX" serve --config "$CONFIG" >>"$BENCH_WORK/serve-fsync.log" 2>&1 &
    BENCH_SERVE_PID[fsync]=$!
    BENCH_PIDS+=("$!")
    bench_wait_port "$PORT" || {
        tail -20 "$BENCH_WORK/serve-fsync.log" >&2
        bench_die "lockbox serve did not come back after kill $1"
    }
}

verify_failures=0
pgbench_errors=0
bench_log "$KILLS kills of lockbox serve under $CLIENTS pgbench clients (select-only, simple protocol)"
for i in $(seq 1 "$KILLS"); do
    PGAPPNAME=$APP bench_on lockbox-fsync -- "$PGBENCH" -n -S -M simple -c "$CLIENTS" -j "$CLIENTS" -T 30 \
        >"$BENCH_WORK/pgbench-$i.log" 2>&1 &
    load=$!
    # Between 0.5 and 2.5 s of load, then no warning at all.
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.5, 2.5), 2))')"
    kill -KILL "${BENCH_SERVE_PID[fsync]}"
    wait "${BENCH_SERVE_PID[fsync]}" 2>/dev/null || true
    wait "$load" 2>/dev/null || pgbench_errors=$((pgbench_errors + 1))
    restart_proxy "$i"
    if ! "$LOCKBOX" audit verify --config "$CONFIG" >"$BENCH_WORK/verify-$i.log" 2>&1; then
        verify_failures=$((verify_failures + 1))
        bench_log "kill $i: audit verify failed: $(tail -3 "$BENCH_WORK/verify-$i.log")"
    fi
    ((i % 10 == 0)) && bench_log "kill $i of $KILLS done"
done
bench_stop_lockbox fsync

# The differential: what the server logged for the load against what the trail holds.
python3 - "$SERVER_LOG" "$APP" "$TRAIL" "$KILLS" "$verify_failures" "$pgbench_errors" <<'PY'
import collections, glob, json, os, re, sys

log, app, trail, kills, verify_failures, pgbench_errors = sys.argv[1:]
norm = lambda s: s.strip().rstrip(";").strip()
logged = collections.Counter()
pattern = re.compile(r" app=" + re.escape(app) + r": LOG:  statement: (.*)$")
with open(log, errors="replace") as f:
    for line in f:
        m = pattern.search(line.rstrip("\n"))
        if m:
            logged[norm(m.group(1))] += 1
recorded = collections.Counter()
# The active file and the segments rotated out of it (audit-fsync-<seq>.jsonl).
files = sorted(glob.glob(trail[: -len(".jsonl")] + "*.jsonl"))
for path in files:
    with open(path, errors="replace") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("type") == "statement":
                recorded[norm(r.get("statement", ""))] += 1
missing = sum(max(0, n - recorded[t]) for t, n in logged.items())
print(f"kills and restarts:          {kills}")
print(f"audit verify failures:       {verify_failures}")
print(f"pgbench runs cut by a kill:  {pgbench_errors}")
print(f"statements the server ran:   {sum(logged.values())}")
print(f"statement records:           {sum(recorded.values())}")
print(f"ran without a record:        {missing}")
if sum(logged.values()) == 0:
    sys.exit("the server logged no statement of the load: the differential saw nothing")
if missing or int(verify_failures):
    sys.exit(1)
PY
