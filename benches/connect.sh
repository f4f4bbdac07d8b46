#!/usr/bin/env bash
# New connections per second: `pgbench -C -S` (a new connection for every transaction: connect,
# one primary-key SELECT, disconnect) against direct PostgreSQL, pgbouncer and lockbox.
#
#   benches/connect.sh [SECONDS_PER_RUN] [CLIENTS] [ROUNDS]
#
#   SECONDS_PER_RUN  seconds of each run (env BENCH_SECONDS; default 10)
#   CLIENTS          client counts, "1,8" or "1 8" (env BENCH_CLIENTS; default 1,8)
#   ROUNDS           rounds; each figure is the median over them (env BENCH_ROUNDS; default 3)
#   env BENCH_TARGETS  default: direct,direct-tls,direct-scram,pgbouncer,pgbouncer-tls,
#                      lockbox-fsync,lockbox-fsync-tls,lockbox-write,lockbox-write-tls
#   env LOCKBOX_BIN    use this lockbox binary instead of `cargo build --release`
#   env BENCH_SPARES   "off": lockbox without spare backends (default "reconnects")
#
# Direct: PostgreSQL forks a backend per connection (trust login, as the superuser);
# direct-tls: the same over TLS (PostgreSQL's own handshake, like lockbox's -tls targets);
# direct-scram: the same with a password login (SCRAM, the client deriving its key from the
# password each time, as libpq does), which is what lockbox's upstream login is and what a
# direct login of an engineer would be. pgbouncer: the client login
# only, server connections stay pooled. lockbox: TLS handshake (the -tls targets), token check
# (signature, admission against the stored request), a `connected` record (made durable by the
# statement's fsync), and a fresh
# upstream login (SCRAM) as the grant's role, then the statement and its record, and the
# session's end record.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SECONDS_PER_RUN=${1:-${BENCH_SECONDS:-10}}
read -ra CLIENT_COUNTS <<<"$(bench_list "${2:-${BENCH_CLIENTS:-1,8}}")"
ROUNDS=${3:-${BENCH_ROUNDS:-3}}
read -ra TARGETS <<<"$(bench_list "${BENCH_TARGETS:-direct,direct-tls,direct-scram,pgbouncer,pgbouncer-tls,lockbox-fsync,lockbox-fsync-tls,lockbox-write,lockbox-write-tls}")"

bench_start_pgbench_targets 1

results=$BENCH_WORK/results
: >"$results"

run() {
    local target=$1 clients=$2 round=$3 threads out tps conn before steal=-
    threads=$((clients < NPROC ? clients : NPROC))
    before=$(bench_machine_counts)
    if out=$(bench_on "$target" -- "$PGBENCH" -n -C -S -c "$clients" -j "$threads" -T "$SECONDS_PER_RUN" 2>"$BENCH_WORK/pgbench.err"); then
        steal=$(bench_steal_percent "$before" "$(bench_machine_counts)")
        tps=$(echo "$out" | sed -nE 's/^tps = ([0-9.]+) .*/\1/p' | head -1)
        conn=$(echo "$out" | sed -nE 's/^average connection time = ([0-9.]+) ms.*/\1/p' | head -1)
    else
        bench_log "pgbench -C on $target ($clients clients) failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
        bench_check_alive
    fi
    echo "$target $clients $round ${tps:-failed} ${conn:-failed} $steal" >>"$results"
}

bench_log "warming up each target (and checking it answers)"
for target in "${TARGETS[@]}"; do
    bench_on "$target" -- "$PGBENCH" -n -C -S -c 1 -t 20 >/dev/null 2>"$BENCH_WORK/pgbench.err" ||
        bench_die "pgbench against $target failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
done

bench_each_run

echo
echo "pgbench -C -S: one new connection per transaction, ${SECONDS_PER_RUN}s per run, median of $ROUNDS round(s), $(bench_cores)"
echo "conn/s: connections (= transactions) per second; connect ms: pgbench's average connection time"
echo "vs-direct: conn/s / direct PostgreSQL (trust) on the same transport (TLS targets / direct-tls when it ran);"
echo "vs-scram: / direct PostgreSQL with a password login (plain);"
echo "vs-bouncer: conn/s / pgbouncer on the same transport (plain or TLS)"
echo "steal %: the share of the machine's CPU time the hypervisor gave elsewhere during the run (median over rounds)"
python3 - "$results" "${TARGETS[*]}" "${CLIENT_COUNTS[*]}" <<'PY'
import statistics, sys
path, targets, clients = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
runs = {}
for line in open(path):
    t, c, _r, tps, conn, steal = line.split()
    runs.setdefault((t, c), []).append((tps, conn, steal))

def median(values):
    xs = []
    for v in values:
        try:
            xs.append(float(v))
        except ValueError:
            pass
    return statistics.median(xs) if xs else None

def figures(t, c):
    rs = runs.get((t, c), [])
    return median(r[0] for r in rs), median(r[1] for r in rs), median(r[2] for r in rs)

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

head = f"{'clients':>7}  {'target':<18} {'conn/s':>9} {'connect ms':>10} {'vs-direct':>9} {'vs-scram':>9} {'vs-bouncer':>10} {'steal %':>7}"
print(head)
print("-" * len(head))
for c in clients:
    direct = figures("direct", c)[0]
    direct_tls = figures("direct-tls", c)[0] if "direct-tls" in targets else None
    scram = figures("direct-scram", c)[0]
    for t in targets:
        tps, conn, steal = figures(t, c)
        bouncer = "pgbouncer-tls" if t.endswith("-tls") else "pgbouncer"
        same = direct_tls if t.endswith("-tls") and t != "direct-tls" and direct_tls else direct
        print(f"{c:>7}  {t:<18} {(f'{tps:.0f}' if tps is not None else 'failed'):>9} "
              f"{(f'{conn:.3f}' if conn is not None else '-'):>10} "
              f"{(ratio(tps, same) if t != 'direct' else ''):>9} "
              f"{(ratio(tps, scram) if t.startswith('lockbox') else ''):>9} "
              f"{(ratio(tps, figures(bouncer, c)[0]) if t.startswith('lockbox') else ''):>10} "
              f"{(f'{steal:.1f}' if steal is not None else '-'):>7}")
    print()
PY
# Whether the logins ran on spare backends (a grant that reconnects, as pgbench -C does, has
# its next session's backend logged in ahead; BENCH_SPARES=off compares without).
for name in fsync write; do
    [ -n "${BENCH_API_PORT[$name]:-}" ] || continue
    echo "lockbox-$name spare backends (spare_backends = \"${BENCH_SPARES:-reconnects}\"): $(bench_spare_counts "$name")"
done
