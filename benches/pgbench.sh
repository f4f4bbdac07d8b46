#!/usr/bin/env bash
# Throughput of lockbox against direct PostgreSQL and pgbouncer, in one run, as ratios.
#
#   benches/pgbench.sh [SECONDS_PER_RUN] [CLIENTS]      (defaults: 10 s, 8 clients)
#
# Starts the demo sandbox (`lockbox demo --keep`), loads pgbench tables (scale 10),
# files and approves a lockbox request, starts pgbouncer (session pooling) in front of the
# same server, then runs `pgbench -S` (select-only) in simple and extended mode against:
# direct PostgreSQL, pgbouncer, lockbox (plaintext loopback), lockbox (TLS) — with the audit
# in fsync mode (each statement waits for its fsync'd record) — and lockbox with the audit in
# write mode (a second `lockbox serve` on the same state, its own audit file).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CLIENTS=${2:-8}

if ! command -v pgbouncer >/dev/null 2>&1; then
    echo "installing pgbouncer" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
fi
cargo build --release -q
LOCKBOX=$PWD/target/release/lockbox

work=$(mktemp -d)
chmod 755 "$work"
demo_pid=""
bouncer_pid=""
serve_pid=""
cleanup() {
    [ -n "$bouncer_pid" ] && kill "$bouncer_pid" 2>/dev/null || true
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
    if [ -n "$demo_pid" ]; then
        kill -INT "$demo_pid" 2>/dev/null || true
        wait "$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$LOCKBOX" demo --keep --window 2s --env-file "$work/env" >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 600); do [ -f "$work/env" ] && break; sleep 0.2; done
[ -f "$work/env" ] || { cat "$work/demo.log"; echo "demo did not start" >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/env"

bin=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
PGBENCH="$bin/pgbench"
PSQL="$bin/psql"
pg_port=$(echo "$LOCKBOX_UPSTREAM_URL" | sed -E 's|.*:([0-9]+)/.*|\1|')

echo "loading pgbench tables (scale 10)" >&2
"$PGBENCH" -i -s 10 -q "$LOCKBOX_UPSTREAM_URL" >/dev/null 2>&1
"$PSQL" -X -q "$LOCKBOX_UPSTREAM_URL" -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO lockbox_service, sales_read, sales_write"

id=$(LOCKBOX_API_KEY=$LOCKBOX_ENGINEER_KEY "$LOCKBOX" request create --database "$LOCKBOX_DATABASE" \
    --ticket BENCH-1 --reason "throughput benchmark" --access read --duration 2h)
LOCKBOX_API_KEY=$LOCKBOX_APPROVER_KEY "$LOCKBOX" request approve "$id" --reason "benchmark" >/dev/null
token=$(LOCKBOX_API_KEY=$LOCKBOX_ENGINEER_KEY "$LOCKBOX" token "$id")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A second lockbox on the same state and upstream, auditing in write mode.
write_proxy_port=$(free_port)
write_api_port=$(free_port)
write_config="$(dirname "$LOCKBOX_CONFIG")/lockbox-write.toml"
sed -e "s/^durability = .*/durability = \"write\"/" \
    -e "s|^path = \"audit/audit.jsonl\"|path = \"audit/audit-write.jsonl\"|" \
    -e "s/127.0.0.1:$LOCKBOX_PROXY_PORT/127.0.0.1:$write_proxy_port/" "$LOCKBOX_CONFIG" >"$write_config"
api_port=$(echo "$LOCKBOX_SERVER" | sed -E 's|.*:([0-9]+)$|\1|')
sed -i "s/127.0.0.1:$api_port/127.0.0.1:$write_api_port/" "$write_config"
"$LOCKBOX" serve --config "$write_config" >"$work/serve-write.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$write_proxy_port") 2>/dev/null && break
    sleep 0.1
done

bouncer_port=$(free_port)
cat >"$work/pgbouncer.ini" <<INI
[databases]
$LOCKBOX_DATABASE = host=127.0.0.1 port=$pg_port dbname=$LOCKBOX_DATABASE user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $work/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $work/pgbouncer.log
INI
echo '"postgres" ""' >"$work/users.txt"
touch "$work/pgbouncer.log"
chmod 644 "$work"/pgbouncer.ini "$work"/users.txt
if [ "$(id -u)" = 0 ]; then
    # pgbouncer refuses to run as root.
    chown postgres "$work/pgbouncer.log"
    runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
else
    pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
fi
bouncer_pid=$!
for _ in $(seq 1 50); do
    "$PSQL" -X -q -h 127.0.0.1 -p "$bouncer_port" -U postgres -c "select 1" "$LOCKBOX_DATABASE" >/dev/null 2>&1 && break
    sleep 0.2
done

# tps of one pgbench run ("failed" if it did not run); "$@" are connection arguments.
tps() {
    local mode=$1
    shift
    local out
    if out=$("$PGBENCH" -n -S -M "$mode" -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" "$@" 2>"$work/pgbench.err"); then
        echo "$out" | sed -nE 's/^tps = ([0-9.]+) .*/\1/p' | head -1
    else
        echo "pgbench failed: $(tail -3 "$work/pgbench.err")" >&2
        echo failed
    fi
}

declare -A result
for mode in simple extended; do
    result[direct,$mode]=$(tps "$mode" -h 127.0.0.1 -p "$pg_port" -U postgres "$LOCKBOX_DATABASE")
    result[pgbouncer,$mode]=$(tps "$mode" -h 127.0.0.1 -p "$bouncer_port" -U postgres "$LOCKBOX_DATABASE")
    result[lockbox,$mode]=$(PGPASSWORD=$token PGSSLMODE=disable tps "$mode" -h 127.0.0.1 -p "$LOCKBOX_PROXY_PORT" -U "$LOCKBOX_ENGINEER" "$LOCKBOX_DATABASE")
    result[lockbox-tls,$mode]=$(PGPASSWORD=$token PGSSLMODE=require tps "$mode" -h 127.0.0.1 -p "$LOCKBOX_PROXY_PORT" -U "$LOCKBOX_ENGINEER" "$LOCKBOX_DATABASE")
    result[lockbox-write,$mode]=$(PGPASSWORD=$token PGSSLMODE=disable tps "$mode" -h 127.0.0.1 -p "$write_proxy_port" -U "$LOCKBOX_ENGINEER" "$LOCKBOX_DATABASE")
done

echo
echo "pgbench -S, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, $(nproc) cores (tps; ratio to direct)"
echo "(lockbox, lockbox-tls: audit durability fsync; lockbox-write: durability write)"
printf "%-14s %-10s %12s %8s\n" target mode tps ratio
for mode in simple extended; do
    base=${result[direct,$mode]}
    for target in direct pgbouncer lockbox lockbox-tls lockbox-write; do
        value=${result[$target,$mode]:-0}
        ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$value" "$base" 2>/dev/null || echo "n/a")
        printf "%-14s %-10s %12s %8s\n" "$target" "$mode" "${value:-failed}" "$ratio"
    done
done
audited=$(LOCKBOX_API_KEY=$LOCKBOX_AUDITOR_KEY "$LOCKBOX" audit list --request "$id" | grep -c '"type":"statement"' || true)
echo "lockbox statement records written for the benchmark request: $audited"
