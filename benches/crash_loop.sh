#!/usr/bin/env bash
# Crash under load, many times: `kill -9` of `lockbox serve` (audit durability fsync) while
# pgbench runs through it, then a restart, KILLS times. After each restart the audit chain
# must verify (`lockbox audit verify --config`); at the end every statement PostgreSQL logged
# for the load (log_statement = all, by application_name) must have its record in the trail.
# The load mixes the protocols, one pgbench per protocol at once: simple (Query), extended
# (Parse/Bind/Describe/Execute/Sync per statement) and pipelined (pgbench's \startpipeline:
# five extended statements, one Sync). Extended statements are matched with their
# parameters (the server's "execute …" line and its "parameters:" detail against the
# record's statement and params).
#
#   benches/crash_loop.sh [KILLS] [CLIENTS]
#
#   KILLS    kills and restarts (env BENCH_KILLS; default 50)
#   CLIENTS  pgbench clients per protocol (env BENCH_CLIENTS; default 3)
#   env LOCKBOX_BIN  use this lockbox binary instead of `cargo build --release`
#
# Prints the figures and exits non-zero when a promise breaks: a chain that does not verify,
# a statement the server ran without its record, or a proxy that does not come back.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

KILLS=${1:-${BENCH_KILLS:-50}}
CLIENTS=${2:-${BENCH_CLIENTS:-3}}
APP=lockbox-crash-loop
PROTOCOLS=(simple extended pipelined)

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

# Pipelined: five statements (texts of their own, so the differential tells them from the
# extended ones) and one Sync.
cat >"$BENCH_WORK/pipelined.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, :scale)
\startpipeline
SELECT aid, abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT bid, bbalance FROM pgbench_branches WHERE bid = :bid;
SELECT count(*) FROM pgbench_tellers WHERE bid = :bid;
SELECT aid, bid FROM pgbench_accounts WHERE aid = :aid;
SELECT :aid::int + :bid::int AS sum;
\endpipeline
SQL

# Starts the load of one protocol in the background (its pid in $!).
start_load() {
    local protocol=$1 i=$2
    local args=(-n -c "$CLIENTS" -j "$CLIENTS" -T 30)
    case $protocol in
    simple) args+=(-S -M simple) ;;
    extended) args+=(-S -M extended) ;;
    pipelined) args+=(-M extended -f "$BENCH_WORK/pipelined.sql") ;;
    esac
    PGAPPNAME=$APP-$protocol bench_on lockbox-fsync -- "$PGBENCH" "${args[@]}" \
        >"$BENCH_WORK/pgbench-$protocol-$i.log" 2>&1 &
}

verify_failures=0
pgbench_errors=0
bench_log "$KILLS kills of lockbox serve under $CLIENTS pgbench clients per protocol (${PROTOCOLS[*]})"
for i in $(seq 1 "$KILLS"); do
    loads=()
    for protocol in "${PROTOCOLS[@]}"; do
        start_load "$protocol" "$i"
        loads+=("$!")
    done
    # Between 0.5 and 2.5 s of load, then no warning at all.
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.5, 2.5), 2))')"
    kill -KILL "${BENCH_SERVE_PID[fsync]}"
    wait "${BENCH_SERVE_PID[fsync]}" 2>/dev/null || true
    for load in "${loads[@]}"; do
        wait "$load" 2>/dev/null || pgbench_errors=$((pgbench_errors + 1))
    done
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
import collections, glob, json, re, sys

log, app, trail, kills, verify_failures, pgbench_errors = sys.argv[1:]
norm = lambda s: s.strip().rstrip(";").strip()
# "<prefix> app=APP-PROTOCOL: LOG:  statement: SQL" (simple) or "LOG:  execute <name>: SQL"
# (extended), the latter followed by "<prefix>: DETAIL:  parameters: $1 = '…', …" when it
# has parameters. The prefix holds the backend's pid: a detail belongs to its pid's execute.
line_re = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] app=" + re.escape(app) + r"-(\w+): (LOG|DETAIL):  (.*)$")
param_re = re.compile(r"\$(\d+) = (NULL|'((?:[^']|'')*)')")
logged = collections.Counter()
protocol_of = {}
last_execute = {}  # pid -> (protocol, text) of an execute whose detail may follow
def count(protocol, text, params):
    key = (norm(text), tuple(params))
    logged[key] += 1
    protocol_of[key] = protocol
def flush(pid):
    if pid in last_execute:
        protocol, text = last_execute.pop(pid)
        count(protocol, text, ())
with open(log, errors="replace") as f:
    for line in f:
        m = line_re.match(line.rstrip("\n"))
        if not m:
            continue
        pid, protocol, level, rest = m.groups()
        if level == "DETAIL":
            if pid in last_execute and rest.startswith("parameters: "):
                protocol, text = last_execute.pop(pid)
                params = [None if p[1] == "NULL" else p[2].replace("''", "'") for p in param_re.findall(rest)]
                count(protocol, text, params)
            continue
        flush(pid)
        if rest.startswith("statement: "):
            count(protocol, rest[len("statement: "):], ())
        elif rest.startswith("execute "):
            last_execute[pid] = (protocol, rest.split(": ", 1)[1])
for pid in list(last_execute):
    flush(pid)
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
                params = tuple(p if p is None or isinstance(p, str) else json.dumps(p) for p in r.get("params") or ())
                recorded[(norm(r.get("statement", "")), params)] += 1
ran = collections.Counter()
missing = collections.Counter()
for key, n in logged.items():
    ran[protocol_of[key]] += n
    missing[protocol_of[key]] += max(0, n - recorded[key])
print(f"kills and restarts:          {kills}")
print(f"audit verify failures:       {verify_failures}")
print(f"pgbench runs cut by a kill:  {pgbench_errors}")
for protocol in ("simple", "extended", "pipelined"):
    print(f"{protocol + ':':<29}{ran[protocol]} statements ran, {missing[protocol]} without a record")
print(f"statements the server ran:   {sum(logged.values())}")
print(f"statement records:           {sum(recorded.values())}")
print(f"ran without a record:        {sum(missing.values())}")
for key in [k for k, n in logged.items() if n > recorded[k]][:3]:
    print(f"  e.g. without a record: {key}")
if sum(logged.values()) == 0:
    sys.exit("the server logged no statement of the load: the differential saw nothing")
if any(ran[p] == 0 for p in ("simple", "extended", "pipelined")):
    sys.exit("a protocol's load ran no statement: the differential did not cover it")
if sum(missing.values()) or int(verify_failures):
    sys.exit(1)
PY
