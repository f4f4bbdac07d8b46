#!/usr/bin/env bash
# Memory of idle sessions: opens SESSIONS idle sessions through one lockbox and reports the
# proxy's RSS growth per session.
#
#   benches/idle.sh [SESSIONS]
#
#   SESSIONS   idle sessions to hold (env IDLE_SESSIONS; default 2000)
#   env IDLE_MODES        client transports, one fresh `lockbox serve` each (default: plain,tls)
#   env IDLE_CONCURRENCY  logins in flight while opening (default 32)
#   env IDLE_RAISE_MAX_CONNECTIONS=0  do not restart the demo's PostgreSQL with a larger
#                         max_connections; open only as many sessions as it allows
#   env LOCKBOX_BIN       use this lockbox binary instead of `cargo build --release`
#
# Every lockbox session holds one upstream backend, so PostgreSQL must allow SESSIONS
# connections. The demo's cluster is started with max_connections=300 on its command line
# (src/sandbox.rs), which ALTER SYSTEM cannot override: when SESSIONS needs more, this script
# restarts that cluster (pg_ctl restart, same options, max_connections = SESSIONS + 100) before
# starting its lockbox. The open-files limit is raised to fit the sessions (client and proxy
# side, two sockets per session in the proxy).
#
# For each mode: a fresh `lockbox serve` (audit fsync, the demo's state, its own grant); one
# session opened and closed (the grant's role is made, lazy state is set up); RSS read from
# /proc; SESSIONS sessions opened by benches/idle_sessions.py (raw protocol, no driver) and
# held; RSS read again after 2 s; sessions closed; RSS read once more.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SESSIONS=${1:-${IDLE_SESSIONS:-2000}}
read -ra MODES <<<"$(bench_list "${IDLE_MODES:-plain,tls}")"
CONCURRENCY=${IDLE_CONCURRENCY:-32}

bench_init
bench_raise_nofile $((2 * SESSIONS + 1000))
notes=("open files limit (ulimit -n): $(ulimit -Sn)")
bench_start_demo

needed=$((SESSIONS + 30))
max_connections=$(bench_max_connections)
if ((needed > max_connections)); then
    if [ "${IDLE_RAISE_MAX_CONNECTIONS:-1}" != 0 ]; then
        bench_raise_max_connections $((SESSIONS + 100))
        notes+=("the demo's PostgreSQL had max_connections=$max_connections; restarted with $(bench_max_connections)")
    else
        notes+=("max_connections=$max_connections allows $((max_connections - 30)) sessions, not $SESSIONS")
        SESSIONS=$((max_connections - 30))
    fi
fi

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

results=$BENCH_WORK/results
: >"$results"
for mode in "${MODES[@]}"; do
    name=idle-$mode
    ssl=disable
    [ "$mode" = tls ] && ssl=require
    bench_log "$mode: starting a lockbox (audit fsync)"
    bench_start_lockbox "$name" fsync
    bench_target "$name" "${BENCH_PROXY_PORT[$name]}" "$LOCKBOX_ENGINEER" "$ssl" "$name"
    bench_grant "$name" read
    pid=${BENCH_SERVE_PID[$name]}
    bench_on "$name" -- "$PSQL" -X -q -c "SELECT 1" >/dev/null
    sleep 1
    before=$(rss_kib "$pid")
    bench_log "$mode: opening $SESSIONS idle sessions"
    coproc IDLE { bench_on "$name" -- python3 "$BENCH_ROOT/benches/idle_sessions.py" "$SESSIONS" \
        --concurrency "$CONCURRENCY" 2>"$BENCH_WORK/idle-$mode.err"; }
    # shellcheck disable=SC2153  # IDLE_PID is set by coproc
    idle_pid=$IDLE_PID
    BENCH_PIDS+=("$idle_pid")
    read -r opened <&"${IDLE[0]}" || bench_die "the idle client failed: $(tail -3 "$BENCH_WORK/idle-$mode.err")"
    sleep 2
    held=$(rss_kib "$pid")
    backends=$(bench_psql -At -c "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'lockbox\_req%'")
    bench_log "$mode: $opened; $backends upstream backends; closing"
    echo >&"${IDLE[1]}"
    read -r _closed <&"${IDLE[0]}" || true
    wait "$idle_pid" || true
    sleep 2
    after=$(rss_kib "$pid")
    bench_stop_lockbox "$name"
    echo "$mode $before $held $after $backends $opened" >>"$results"
done

echo
echo "idle sessions through one lockbox (fresh \`lockbox serve\` per mode, audit fsync), $(bench_cores)"
echo "RSS of the lockbox process (VmRSS) after one warm-up session, with the sessions open (2 s after"
echo "the last login), and 2 s after they closed; per session = (with - before) / sessions opened"
for note in "${notes[@]}"; do echo "note: $note"; done
python3 - "$results" "$SESSIONS" <<'PY'
import json, sys
path, wanted = sys.argv[1], int(sys.argv[2])
head = (f"{'mode':<6} {'sessions':>8} {'failed':>6} {'open s':>7} {'logins/s':>8} {'RSS before':>10} "
        f"{'RSS with':>10} {'per session':>11} {'RSS after':>10} {'backends':>8}")
print(head)
print("-" * len(head))
for line in open(path):
    mode, before, held, after, backends, opened = line.split(maxsplit=5)
    o = json.loads(opened)
    n = o["opened"]
    mib = lambda kib: f"{int(kib) / 1024:.1f} MiB"
    per = f"{(int(held) - int(before)) / n:.1f} KiB" if n else "-"
    rate = f"{n / o['seconds']:.0f}" if o["seconds"] else "-"
    print(f"{mode:<6} {n:>8} {o['failed']:>6} {o['seconds']:>7.2f} {rate:>8} {mib(before):>10} "
          f"{mib(held):>10} {per:>11} {mib(after):>10} {backends:>8}")
    if o["first_error"]:
        print(f"       first error: {o['first_error']}")
PY
