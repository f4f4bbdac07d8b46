# Shared setup of the benchmark scripts (sourced, not run):
#
#   source "$(dirname "$0")/lib.sh"
#   bench_init                  # binaries, temp dir, cleanup trap
#   bench_start_demo            # `lockbox demo --keep`: PostgreSQL + lockbox (audit fsync)
#   bench_targets direct pgbouncer lockbox-fsync-tls …   # starts what those targets need
#   bench_grants read TARGET…   # a grant (and token) per lockbox process the targets use
#   bench_on TARGET [ACCESS] -- pgbench …   # a libpq client against TARGET (PGHOST, PGPORT, …)
#
# Targets: direct (PostgreSQL, superuser, no TLS), pgbouncer / pgbouncer-tls (session pooling,
# the TLS one with client_tls_sslmode=require), lockbox-fsync / lockbox-fsync-tls (a
# `lockbox serve` on the demo's state, audit durability fsync), lockbox-write /
# lockbox-write-tls (another on the same state, audit durability write). Each lockbox process gets grants of its own, so two
# proxies never take a per-grant role over from each other between runs.
#
# Environment: LOCKBOX_BIN=/path/to/lockbox uses that binary instead of `cargo build --release`.
# BENCH_SPARES=off starts the lockbox targets with `[proxy] spare_backends = "off"` (default:
# "reconnects"), to compare logins with and without spare backends on one binary.
# BENCH_THREADS=N starts them with `[proxy] threads = N` (default: the CPUs), to compare session
# thread counts on one binary.
# The binary is copied into the temp dir first, so a rebuild during a run changes nothing.
# shellcheck shell=bash
# shellcheck disable=SC2034  # globals (PGBENCH, NPROC, …) are for the scripts that source this

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_WORK=""
BENCH_DEMO_PID=""
BENCH_PIDS=()            # our own children, stopped in reverse order on exit
BENCH_PIDFILES=()        # pid files of processes started through runuser (pgbouncer)
BENCH_LAST_PORT=""
declare -A BENCH_PORT=() BENCH_USER=() BENCH_SSL=() BENCH_PROXY=() BENCH_TOKEN=() BENCH_PASSWORD=()
declare -A BENCH_SERVE_PID=() BENCH_PROXY_PORT=() BENCH_API_PORT=()

bench_log() { echo "[$(date +%T)] $*" >&2; }
bench_die() {
    echo "error: $*" >&2
    exit 1
}

# "1,8 64" → "1 8 64"
bench_list() { echo "${*//,/ }" | xargs; }

# Median of the numbers given (non-numbers such as "failed" are skipped; "failed" if none).
bench_median() {
    python3 - "$@" <<'PY'
import statistics, sys
xs = []
for a in sys.argv[1:]:
    try:
        xs.append(float(a))
    except ValueError:
        pass
print(statistics.median(xs) if xs else "failed")
PY
}

# Whether a process runs (an exited child not yet reaped does not count).
bench_pid_alive() {
    kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}

# Dies if the demo or a lockbox serve has stopped (a failed run is then no measurement).
bench_check_alive() {
    local name
    bench_pid_alive "$BENCH_DEMO_PID" || bench_die "the demo (PostgreSQL, lockbox) has stopped"
    for name in "${!BENCH_SERVE_PID[@]}"; do
        bench_pid_alive "${BENCH_SERVE_PID[$name]}" ||
            bench_die "lockbox serve ($name) has stopped: $(tail -3 "$BENCH_WORK/serve-$name.log" 2>/dev/null)"
    done
}

# Stops one process: SIGTERM (or the signal given), up to 15 s, then SIGKILL.
bench_stop_pid() {
    local pid=$1 signal=${2:-TERM}
    if bench_pid_alive "$pid"; then
        kill -s "$signal" "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            bench_pid_alive "$pid" || break
            sleep 0.1
        done
        if bench_pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    local i pidfile
    for pidfile in "${BENCH_PIDFILES[@]}"; do
        [ -s "$pidfile" ] && bench_stop_pid "$(cat "$pidfile")"
    done
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        bench_stop_pid "${BENCH_PIDS[i]}"
    done
    # The demo stops its PostgreSQL and removes its sandbox on Ctrl-C.
    [ -n "$BENCH_DEMO_PID" ] && bench_stop_pid "$BENCH_DEMO_PID" INT
    [ -n "$BENCH_WORK" ] && rm -rf "$BENCH_WORK"
    exit "$rc"
}

bench_init() {
    cd "$BENCH_ROOT"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    BENCH_WORK=$(mktemp -d /tmp/lockbox-bench.XXXXXX)
    chmod 755 "$BENCH_WORK"
    local bin=${LOCKBOX_BIN:-}
    if [ -z "$bin" ]; then
        bench_log "building lockbox (cargo build --release; set LOCKBOX_BIN to skip)"
        cargo build --release -q
        bin=$BENCH_ROOT/target/release/lockbox
    fi
    [ -x "$bin" ] || bench_die "no lockbox binary at $bin"
    cp "$bin" "$BENCH_WORK/lockbox"
    LOCKBOX=$BENCH_WORK/lockbox
    local initdb
    initdb=$(command -v initdb || printf "%s\n" /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)
    [ -x "$initdb" ] || initdb=""
    [ -n "$initdb" ] || bench_die "PostgreSQL server binaries not found (apt-get install -y postgresql)"
    PG_BIN=$(dirname "$(readlink -f "$initdb")")
    PGBENCH=$PG_BIN/pgbench
    PSQL=$PG_BIN/psql
    NPROC=$(nproc)
    export PGAPPNAME=lockbox-bench PGCONNECT_TIMEOUT=30
}

# bench_cores: "N cores", and how an idle CPU waits when the cpuidle driver says (a virtual
# machine's guest halt polling, off here by default, moves small-transaction figures by a
# factor: with it off every idle moment halts the virtual CPU, and waking it costs tens of
# µs; a run that leaves CPUs idle, such as a wait for fdatasync, pays that on each hop).
bench_cores() {
    local note="$NPROC cores" driver poll
    driver=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || true)
    poll=$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || true)
    if [ "$driver" = haltpoll ] && [ -n "$poll" ]; then
        note="$note (cpuidle haltpoll, guest_halt_poll_ns=$poll)"
    elif [ -n "$driver" ]; then
        note="$note (cpuidle $driver)"
    fi
    echo "$note"
}

# "busy_ticks context_switches all_ticks steal_ticks" of the whole machine. Steal is the time
# the hypervisor gave this machine's CPUs to someone else: on a shared host it comes and goes,
# and a run with much of it has fewer transactions for the same work.
bench_machine_counts() {
    awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8; all = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; steal = $9}
         /^ctxt / {cs = $2} END {print busy, cs, all, steal}' /proc/stat
}

# bench_steal_percent BEFORE AFTER: the share (%) of the CPU time between two
# bench_machine_counts that the hypervisor gave elsewhere.
bench_steal_percent() {
    local _b0 _c0 all0 steal0 _b1 _c1 all1 steal1
    read -r _b0 _c0 all0 steal0 <<<"$1"
    read -r _b1 _c1 all1 steal1 <<<"$2"
    awk -v s="$((steal1 - steal0))" -v a="$((all1 - all0))" 'BEGIN {printf "%.1f", (a > 0 ? 100 * s / a : 0)}'
}

bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_wait_port() {
    local port=$1
    for _ in $(seq 1 300); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Runs a command as the postgres user when we are root (PostgreSQL and pgbouncer refuse root).
bench_as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# psql as the superuser, straight to PostgreSQL.
bench_psql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$LOCKBOX_UPSTREAM_URL" "$@"; }

bench_start_demo() {
    bench_log "starting lockbox demo --keep (PostgreSQL sandbox + lockbox, audit fsync)"
    "$LOCKBOX" demo --keep --window 2s --env-file "$BENCH_WORK/env" >"$BENCH_WORK/demo.log" 2>&1 &
    BENCH_DEMO_PID=$!
    for _ in $(seq 1 1200); do
        grep -q "The sandbox keeps running" "$BENCH_WORK/demo.log" 2>/dev/null && break
        kill -0 "$BENCH_DEMO_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q "The sandbox keeps running" "$BENCH_WORK/demo.log" || [ ! -f "$BENCH_WORK/env" ]; then
        cat "$BENCH_WORK/demo.log" >&2
        bench_die "the demo did not start"
    fi
    # shellcheck disable=SC1091
    source "$BENCH_WORK/env"
    PG_PORT=$(echo "$LOCKBOX_UPSTREAM_URL" | sed -E 's|.*:([0-9]+)/.*|\1|')
    PG_DATA=$(bench_psql -At -c "SHOW data_directory")
}

bench_max_connections() { bench_psql -At -c "SHOW max_connections"; }

# The demo's cluster gets max_connections=300 on its command line (src/sandbox.rs), which
# ALTER SYSTEM cannot override: restart it with the same options and a larger value.
# BENCH_PG_OPTIONS adds settings of the caller's ("-c huge_pages=on"); the benches restart
# the cluster with them even when max_connections is large enough already.
bench_raise_max_connections() {
    local want=$1 dir
    dir=$(dirname "$PG_DATA")
    bench_log "restarting the demo's PostgreSQL with max_connections=$want (was $(bench_max_connections))"
    bench_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$dir/server.log" -w -t 120 -m fast \
        -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=$want ${BENCH_PG_OPTIONS:-}" \
        restart >/dev/null
}

# Files a request for `access` (read or write), approves it, prints the token.
bench_new_token() {
    local access=$1 id
    id=$(LOCKBOX_API_KEY=$LOCKBOX_ENGINEER_KEY "$LOCKBOX" request create --database "$LOCKBOX_DATABASE" \
        --ticket "BENCH-$access" --reason "benchmark ($access)" --access "$access" --duration 8h)
    if [ "$access" = write ]; then
        # The demo's rules send write access to a support lead first.
        LOCKBOX_API_KEY=$LOCKBOX_LEAD_KEY "$LOCKBOX" request approve "$id" --reason benchmark >/dev/null
    fi
    LOCKBOX_API_KEY=$LOCKBOX_APPROVER_KEY "$LOCKBOX" request approve "$id" --reason benchmark >/dev/null
    echo "$id" >>"$BENCH_WORK/requests"
    LOCKBOX_API_KEY=$LOCKBOX_ENGINEER_KEY "$LOCKBOX" token "$id"
}

# Makes sure lockbox process `proxy` (fsync, write, …) has a grant of `access` (read, write)
# of its own; bench_on logs in with its token.
bench_grant() {
    local proxy=$1 access=${2:-read}
    if [ -z "${BENCH_TOKEN[$proxy,$access]:-}" ]; then
        BENCH_TOKEN[$proxy,$access]=$(bench_new_token "$access")
    fi
}

# bench_grants ACCESS TARGET…: the grants those targets need.
bench_grants() {
    local access=$1 target
    shift
    for target in "$@"; do
        if [ -n "${BENCH_PROXY[$target]:-}" ]; then bench_grant "${BENCH_PROXY[$target]}" "$access"; fi
    done
}

# Starts another `lockbox serve` on the demo's state and upstream, with its own ports and
# audit file (audit/audit-NAME.jsonl), and no practical connection cap (idle.sh holds
# thousands). Sets BENCH_PROXY_PORT[NAME] and BENCH_SERVE_PID[NAME].
# The demo's proxy takes tokens over TLS only; these also take them over loopback plaintext,
# so the plain targets measure lockbox against plain PostgreSQL and pgbouncer.
bench_start_lockbox() {
    local name=$1 durability=$2 proxy_port api_port api_old config
    proxy_port=$(bench_free_port)
    api_port=$(bench_free_port)
    api_old=$(echo "$LOCKBOX_SERVER" | sed -E 's|.*:([0-9]+)$|\1|')
    config="$(dirname "$LOCKBOX_CONFIG")/lockbox-$name.toml"
    sed -e "s/^durability = .*/durability = \"$durability\"/" \
        -e "s|^path = \"audit/audit.jsonl\"|path = \"audit/audit-$name.jsonl\"|" \
        -e "s/127.0.0.1:$LOCKBOX_PROXY_PORT\"/127.0.0.1:$proxy_port\"/" \
        -e "s/127.0.0.1:$api_old\"/127.0.0.1:$api_port\"/" \
        -e "s/^allow_plaintext_loopback = false/allow_plaintext_loopback = true/" \
        -e "s/^\\[proxy\\]\$/[proxy]\\nmax_connections = 1000000\\nspare_backends = \"${BENCH_SPARES:-reconnects}\"${BENCH_THREADS:+\\nthreads = $BENCH_THREADS}/" \
        "$LOCKBOX_CONFIG" >"$config"
    "$LOCKBOX" serve --config "$config" >"$BENCH_WORK/serve-$name.log" 2>&1 &
    BENCH_SERVE_PID[$name]=$!
    BENCH_PIDS+=("$!")
    BENCH_PROXY_PORT[$name]=$proxy_port
    BENCH_API_PORT[$name]=$api_port
    bench_wait_port "$proxy_port" || {
        cat "$BENCH_WORK/serve-$name.log" >&2
        bench_die "lockbox serve ($name) did not start"
    }
}

# bench_spare_counts NAME: what became of the spare backends of the lockbox started as NAME
# (`used=… expired=… closed=… failed=…`, from its /metrics as the demo's auditor).
bench_spare_counts() {
    local name=$1
    curl -sf --cacert "$LOCKBOX_CA_CERT" -H "Authorization: Bearer $LOCKBOX_AUDITOR_KEY" \
        "${LOCKBOX_SERVER%:*}:${BENCH_API_PORT[$name]}/metrics" |
        sed -nE 's/^lockbox_spare_backends_total\{outcome="([a-z]+)"\} ([0-9]+)$/\1=\2/p' |
        tr '\n' ' '
}

# bench_fsync_buckets NAME: the cumulative buckets of lockbox_audit_fsync_seconds on the
# lockbox started as NAME, one "UPPER_BOUND COUNT" line each (read from its /metrics as the
# demo's auditor).
bench_fsync_buckets() {
    local name=$1
    curl -sf --cacert "$LOCKBOX_CA_CERT" -H "Authorization: Bearer $LOCKBOX_AUDITOR_KEY" \
        "${LOCKBOX_SERVER%:*}:${BENCH_API_PORT[$name]}/metrics" |
        sed -nE 's/^lockbox_audit_fsync_seconds_bucket\{le="([^"]+)"\} ([0-9]+)$/\1 \2/p'
}

# bench_audit_sums NAME: "FSYNC_SUM FSYNC_COUNT APPEND_SUM APPEND_COUNT" (seconds, counts) of
# lockbox_audit_fsync_seconds and lockbox_audit_append_seconds on the lockbox started as NAME:
# between two snapshots, the mean durable append minus the mean fdatasync is lockbox's own
# time around the sync, exactly (no bucket to interpolate in).
bench_audit_sums() {
    local name=$1
    curl -sf --cacert "$LOCKBOX_CA_CERT" -H "Authorization: Bearer $LOCKBOX_AUDITOR_KEY" \
        "${LOCKBOX_SERVER%:*}:${BENCH_API_PORT[$name]}/metrics" |
        awk 'BEGIN { fs = fc = as = ac = 0 }
             $1 == "lockbox_audit_fsync_seconds_sum" { fs = $2 }
             $1 == "lockbox_audit_fsync_seconds_count" { fc = $2 }
             $1 == "lockbox_audit_append_seconds_sum" { as = $2 }
             $1 == "lockbox_audit_append_seconds_count" { ac = $2 }
             END { print fs, fc, as, ac }'
}

# bench_own_ms BEFORE AFTER (two bench_audit_sums lines): the mean durable append minus the
# mean fdatasync between them, in ms; "-" without syncs.
bench_own_ms() {
    python3 - "$1" "$2" <<'PY'
import sys
(fs0, fc0, as0, ac0), (fs1, fc1, as1, ac1) = (map(float, a.split()) for a in sys.argv[1:3])
if fc1 <= fc0 or ac1 <= ac0:
    print("-")
else:
    print(f"{((as1 - as0) / (ac1 - ac0) - (fs1 - fs0) / (fc1 - fc0)) * 1000:.4f}")
PY
}

# bench_fsync_median BEFORE AFTER: the median fdatasync (ms) between two bench_fsync_buckets
# snapshots, interpolated within its bucket; "-" without syncs.
bench_fsync_median() {
    python3 - "$1" "$2" <<'PY'
import sys
def read(path):
    with open(path) as f:
        return [(float(b), int(n)) for b, n in (line.split() for line in f if line.strip())]
before, after = read(sys.argv[1]), read(sys.argv[2])
counts = [(b, n - m) for (b, n), (_, m) in zip(after, before)]
total = counts[-1][1] if counts else 0
if total <= 0:
    print("-")
    sys.exit()
lower, below = 0.0, 0
for bound, cumulative in counts:
    if cumulative >= total / 2:
        if bound == float("inf"):
            print(f"{lower * 1000:.4f}")
        else:
            share = (total / 2 - below) / max(cumulative - below, 1)
            print(f"{(lower + (bound - lower) * share) * 1000:.4f}")
        break
    lower, below = bound, cumulative
PY
}

# Stops a lockbox started by bench_start_lockbox.
bench_stop_lockbox() {
    local name=$1
    bench_stop_pid "${BENCH_SERVE_PID[$name]}"
    unset "BENCH_SERVE_PID[$name]" "BENCH_PROXY_PORT[$name]" "BENCH_API_PORT[$name]"
}

# A self-signed certificate (P-256, like lockbox's) for pgbouncer, readable by postgres.
bench_tls_cert() {
    local dir=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=localhost" -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
    chmod 600 "$dir/key.pem"
}

# Turns TLS on in the demo's PostgreSQL (a self-signed certificate in its data directory),
# for the direct-tls target; plain connections, lockbox's upstream ones among them
# (sslmode=disable), stay plain.
bench_start_pg_tls() {
    [ -n "${BENCH_PG_TLS:-}" ] && return 0
    local dir datadir
    dir=$BENCH_WORK/pg-tls
    mkdir -p "$dir"
    bench_tls_cert "$dir"
    datadir=$(bench_psql -Atc "SHOW data_directory")
    cp "$dir/cert.pem" "$datadir/bench-cert.pem"
    cp "$dir/key.pem" "$datadir/bench-key.pem"
    chown --reference="$datadir" "$datadir/bench-cert.pem" "$datadir/bench-key.pem"
    chmod 600 "$datadir/bench-key.pem"
    bench_psql -c "ALTER SYSTEM SET ssl_cert_file = 'bench-cert.pem'" \
        -c "ALTER SYSTEM SET ssl_key_file = 'bench-key.pem'" \
        -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
    BENCH_PG_TLS=1
}

# Starts pgbouncer (session pooling) in front of the demo's PostgreSQL; `tls` makes clients
# use TLS (client_tls_sslmode=require). Pool sized for `pool` clients. Sets BENCH_LAST_PORT.
bench_start_pgbouncer() {
    local name=$1 tls=$2 pool=$3 dir port
    command -v pgbouncer >/dev/null 2>&1 || {
        bench_log "installing pgbouncer"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
    }
    dir=$BENCH_WORK/$name
    mkdir -p "$dir"
    port=$(bench_free_port)
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
$LOCKBOX_DATABASE = host=127.0.0.1 port=$PG_PORT dbname=$LOCKBOX_DATABASE user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = session
max_client_conn = $((pool + 50))
default_pool_size = $pool
server_idle_timeout = 30
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    if [ "$tls" = tls ]; then
        command -v openssl >/dev/null 2>&1 || bench_die "openssl is needed for pgbouncer's certificate"
        bench_tls_cert "$dir"
        cat >>"$dir/pgbouncer.ini" <<INI
client_tls_sslmode = require
client_tls_key_file = $dir/key.pem
client_tls_cert_file = $dir/cert.pem
INI
    fi
    echo '"postgres" ""' >"$dir/users.txt"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    bench_as_postgres pgbouncer "$dir/pgbouncer.ini" >"$dir/stderr.log" 2>&1 &
    BENCH_PIDS+=("$!")
    BENCH_PIDFILES+=("$dir/pgbouncer.pid")
    bench_wait_port "$port" || {
        cat "$dir/stderr.log" "$dir/pgbouncer.log" >&2
        bench_die "pgbouncer ($name) did not start"
    }
    BENCH_LAST_PORT=$port
}

# The common start of the pgbench-driven benches: the demo, PostgreSQL's max_connections
# raised to fit the largest client count (CLIENT_COUNTS), the targets (TARGETS) started and
# granted read access, and pgbench's tables loaded at SCALE.
bench_start_pgbench_targets() {
    local scale=$1 max_clients=0 c needed
    for c in "${CLIENT_COUNTS[@]}"; do if ((c > max_clients)); then max_clients=$c; fi; done
    bench_init
    bench_start_demo
    # Two pgbouncer pools may stay open (up to max_clients server connections each, until
    # server_idle_timeout) while one run holds max_clients more.
    needed=$((3 * max_clients + 20))
    if ((needed > $(bench_max_connections))); then
        bench_raise_max_connections "$((needed + 20))"
    elif [ -n "${BENCH_PG_OPTIONS:-}" ]; then
        bench_raise_max_connections "$(bench_max_connections)"
    fi
    BENCH_POOL=$max_clients bench_targets "${TARGETS[@]}"
    bench_grants read "${TARGETS[@]}"
    bench_load_pgbench "$scale"
}

# Calls `run TARGET CLIENTS ROUND` for every round × client count (CLIENT_COUNTS) × target
# (TARGETS), the targets interleaved within a round so a noisy neighbour hits them alike.
bench_each_run() {
    local total=$((ROUNDS * ${#CLIENT_COUNTS[@]} * ${#TARGETS[@]})) n=0 round clients target
    for round in $(seq 1 "$ROUNDS"); do
        for clients in "${CLIENT_COUNTS[@]}"; do
            for target in "${TARGETS[@]}"; do
                n=$((n + 1))
                bench_log "run $n/$total: round $round, $clients clients, $target"
                run "$target" "$clients" "$round"
            done
        done
    done
}

# Declares a target: name, port, user, sslmode, lockbox process (empty: no token).
bench_target() {
    BENCH_PORT[$1]=$2
    BENCH_USER[$1]=$3
    BENCH_SSL[$1]=$4
    BENCH_PROXY[$1]=${5:-}
}

# Starts what the named targets need and declares them. `pool` sizes pgbouncer.
bench_targets() {
    local pool=${BENCH_POOL:-64} target
    for target in "$@"; do
        case $target in
        direct) bench_target direct "$PG_PORT" postgres disable ;;
        direct-tls)
            bench_start_pg_tls
            bench_target direct-tls "$PG_PORT" postgres require
            ;;
        direct-scram)
            # A password login straight to PostgreSQL (SCRAM, as lockbox's own upstream
            # login is), where `direct` logs in as the superuser on trust.
            bench_start_scram_role
            bench_target direct-scram "$PG_PORT" "$BENCH_SCRAM_ROLE" disable
            BENCH_PASSWORD[direct-scram]=$BENCH_SCRAM_PASSWORD
            ;;
        pgbouncer | pgbouncer-tls)
            if [ "$target" = pgbouncer-tls ]; then
                bench_start_pgbouncer "$target" tls "$pool"
                bench_target "$target" "$BENCH_LAST_PORT" postgres require
            else
                bench_start_pgbouncer "$target" plain "$pool"
                bench_target "$target" "$BENCH_LAST_PORT" postgres disable
            fi
            ;;
        lockbox-fsync | lockbox-fsync-tls | lockbox-write | lockbox-write-tls)
            local durability=${target#lockbox-}
            durability=${durability%-tls}
            if [ -z "${BENCH_PROXY_PORT[$durability]:-}" ]; then
                bench_start_lockbox "$durability" "$durability"
            fi
            local ssl=disable
            [ "$target" != "${target%-tls}" ] && ssl=require
            bench_target "$target" "${BENCH_PROXY_PORT[$durability]}" "$LOCKBOX_ENGINEER" "$ssl" "$durability"
            ;;
        *) bench_die "unknown target $target (direct, direct-tls, direct-scram, pgbouncer, pgbouncer-tls, lockbox-fsync, lockbox-fsync-tls, lockbox-write, lockbox-write-tls)" ;;
        esac
    done
}

# bench_on TARGET [ACCESS] -- COMMAND…: runs COMMAND with libpq's environment for TARGET
# (a lockbox target logs in with a token of its own grant of ACCESS, default read).
bench_on() {
    local target=$1 access=read password=""
    shift
    if [ "$1" != -- ]; then
        access=$1
        shift
    fi
    [ "$1" = -- ] && shift
    [ -n "${BENCH_PORT[$target]:-}" ] || bench_die "target $target was not started"
    if [ -n "${BENCH_PROXY[$target]}" ]; then
        password=${BENCH_TOKEN[${BENCH_PROXY[$target]},$access]:-}
        [ -n "$password" ] || bench_die "no $access grant for $target: call bench_grants $access $target first"
    else
        password=${BENCH_PASSWORD[$target]:-}
    fi
    PGHOST=127.0.0.1 PGPORT=${BENCH_PORT[$target]} PGUSER=${BENCH_USER[$target]} \
        PGDATABASE=$LOCKBOX_DATABASE PGSSLMODE=${BENCH_SSL[$target]} PGPASSWORD=$password "$@"
}

# A login role with a password of this run (scram-sha-256 in the sandbox's pg_hba) for the
# direct-scram target; it may read what the lockbox roles read. Sets BENCH_SCRAM_ROLE and
# BENCH_SCRAM_PASSWORD.
BENCH_SCRAM_ROLE=bench_scram
bench_start_scram_role() {
    [ -n "${BENCH_SCRAM_PASSWORD:-}" ] && return 0
    BENCH_SCRAM_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    bench_psql -c "DROP ROLE IF EXISTS $BENCH_SCRAM_ROLE" \
        -c "CREATE ROLE $BENCH_SCRAM_ROLE LOGIN PASSWORD '$BENCH_SCRAM_PASSWORD'" >/dev/null
}

# Loads pgbench's tables (scale $1) and lets the lockbox roles read them.
bench_load_pgbench() {
    local scale=$1
    bench_log "loading pgbench tables (scale $scale)"
    "$PGBENCH" -i -s "$scale" -q "$LOCKBOX_UPSTREAM_URL" >"$BENCH_WORK/pgbench-init.log" 2>&1 ||
        { cat "$BENCH_WORK/pgbench-init.log" >&2; bench_die "pgbench -i failed"; }
    bench_psql -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO lockbox_service, sales_read, sales_write"
    if [ -n "${BENCH_SCRAM_PASSWORD:-}" ]; then
        bench_psql -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO $BENCH_SCRAM_ROLE"
    fi
}

# Raises the soft limit of open files to at least $1 (up to the hard limit, or beyond as root).
bench_raise_nofile() {
    local want=$1 soft hard
    soft=$(ulimit -Sn)
    hard=$(ulimit -Hn)
    [ "$soft" = unlimited ] && return 0
    [ "$soft" -ge "$want" ] && return 0
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -Hn "$want" 2>/dev/null || want=$hard
    fi
    ulimit -Sn "$want"
}

# Statement records in the audit files of the demo's directory.
bench_audit_counts() {
    local f
    for f in "$LOCKBOX_AUDIT_DIR"/*.jsonl; do
        [ -f "$f" ] || continue
        printf "%s: %s statement records\n" "$(basename "$f")" "$(grep -c '"type":"statement"' "$f" || true)"
    done
}
