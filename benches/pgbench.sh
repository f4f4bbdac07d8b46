#!/usr/bin/env bash
# Throughput and latency of lockbox against direct PostgreSQL and pgbouncer, as one table.
#
#   benches/pgbench.sh [SECONDS_PER_RUN] [CLIENTS] [ROUNDS]
#
#   SECONDS_PER_RUN  seconds of each pgbench run (env BENCH_SECONDS; default 10)
#   CLIENTS          client counts, "1,8,64" or "1 8 64" (env BENCH_CLIENTS; default 1,8,64)
#   ROUNDS           rounds; each figure is the median over them (env BENCH_ROUNDS; default 3)
#   env BENCH_PROTOCOLS  pgbench -M modes (default: simple,extended,prepared)
#   env BENCH_TARGETS    default: direct,pgbouncer,pgbouncer-tls,lockbox-fsync,
#                        lockbox-fsync-tls,lockbox-write,lockbox-write-tls
#   env BENCH_SCALE      pgbench scale (default 10)
#   env LOCKBOX_BIN      use this lockbox binary instead of `cargo build --release`
#
# Starts the demo sandbox (`lockbox demo --keep`), loads pgbench's tables, starts pgbouncer
# (session pooling; one plain, one with client_tls_sslmode=require) and a second
# `lockbox serve` auditing in write mode, then runs `pgbench -S` (select-only) for each
# round × client count × protocol × target, the targets interleaved so that a noisy neighbour
# hits them alike. One run at a time holds connections. At 1 client, pgbench's
# per-transaction log gives p50/p99 latency.
#
# Ratios: lockbox against pgbouncer on the same transport (plain vs plain, TLS vs TLS) and
# against direct PostgreSQL (plain); "+p50"/"+p99" is the latency lockbox adds over pgbouncer.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SECONDS_PER_RUN=${1:-${BENCH_SECONDS:-10}}
read -ra CLIENT_COUNTS <<<"$(bench_list "${2:-${BENCH_CLIENTS:-1,8,64}}")"
ROUNDS=${3:-${BENCH_ROUNDS:-3}}
read -ra PROTOCOLS <<<"$(bench_list "${BENCH_PROTOCOLS:-simple,extended,prepared}")"
read -ra TARGETS <<<"$(bench_list "${BENCH_TARGETS:-direct,pgbouncer,pgbouncer-tls,lockbox-fsync,lockbox-fsync-tls,lockbox-write,lockbox-write-tls}")"
SCALE=${BENCH_SCALE:-10}

bench_start_pgbench_targets "$SCALE"

results=$BENCH_WORK/results
: >"$results"
mkdir -p "$BENCH_WORK/lat"

# p50 and p99 (ms) of the per-transaction logs with this prefix (latency: 3rd column, µs).
percentiles() {
    python3 - "$@" <<'PY'
import sys
lat = []
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, max(0, int(round(p / 100 * len(lat))) - 1))] / 1000
print(f"{pct(50):.4f} {pct(99):.4f}" if lat else "failed failed")
PY
}

# run TARGET CLIENTS PROTOCOL ROUND: one pgbench run, appends a line to $results.
run() {
    local target=$1 clients=$2 mode=$3 round=$4 threads out tps p50=- p99=- prefix
    local fsync=- own=- proxy=${BENCH_PROXY[$target]:-} syncs="" sums="" before steal=-
    threads=$((clients < NPROC ? clients : NPROC))
    local args=(-n -S -M "$mode" -c "$clients" -j "$threads" -T "$SECONDS_PER_RUN")
    prefix=$BENCH_WORK/lat/$target.$mode.$round
    if ((clients == 1)); then args+=(-l --log-prefix "$prefix"); fi
    # At 1 client in fsync mode, the disk's share: the run's median fdatasync.
    if ((clients == 1)) && [ "$proxy" = fsync ]; then
        syncs=$BENCH_WORK/fsync-buckets
        bench_fsync_buckets "$proxy" >"$syncs.before"
        sums=$(bench_audit_sums "$proxy")
    fi
    before=$(bench_machine_counts)
    if out=$(bench_on "$target" -- "$PGBENCH" "${args[@]}" 2>"$BENCH_WORK/pgbench.err"); then
        steal=$(bench_steal_percent "$before" "$(bench_machine_counts)")
        tps=$(echo "$out" | sed -nE 's/^tps = ([0-9.]+) .*/\1/p' | head -1)
        if ((clients == 1)); then
            read -r p50 p99 <<<"$(percentiles "$prefix".*)"
            rm -f "$prefix".*
        fi
        if [ -n "$syncs" ]; then
            bench_fsync_buckets "$proxy" >"$syncs.after"
            fsync=$(bench_fsync_median "$syncs.before" "$syncs.after")
            own=$(bench_own_ms "$sums" "$(bench_audit_sums "$proxy")")
        fi
    else
        bench_log "pgbench on $target ($clients clients, $mode) failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
        bench_check_alive
        tps=failed
    fi
    echo "$target $clients $mode $round ${tps:-failed} $p50 $p99 $fsync $own $steal" >>"$results"
}

bench_log "warming up each target (and checking it answers)"
for target in "${TARGETS[@]}"; do
    bench_on "$target" -- "$PGBENCH" -n -S -c 1 -t 200 >/dev/null 2>"$BENCH_WORK/pgbench.err" ||
        bench_die "pgbench against $target failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
done

total=$((ROUNDS * ${#CLIENT_COUNTS[@]} * ${#PROTOCOLS[@]} * ${#TARGETS[@]}))
bench_log "$total runs of ${SECONDS_PER_RUN}s: about $((total * (SECONDS_PER_RUN + 1) / 60 + 1)) minutes"
n=0
for round in $(seq 1 "$ROUNDS"); do
    for clients in "${CLIENT_COUNTS[@]}"; do
        for mode in "${PROTOCOLS[@]}"; do
            for target in "${TARGETS[@]}"; do
                n=$((n + 1))
                bench_log "run $n/$total: round $round, $clients clients, $mode, $target"
                run "$target" "$clients" "$mode" "$round"
            done
        done
    done
done

echo
echo "pgbench -S (select-only, scale $SCALE), ${SECONDS_PER_RUN}s per run, median of $ROUNDS round(s), $(bench_cores)"
echo "lockbox-fsync: audit durability fsync (each statement waits for its fsync'd record); lockbox-write: durability write"
echo "vs-direct: tps / direct PostgreSQL; vs-bouncer: tps / pgbouncer on the same transport (plain or TLS);"
echo "latency at 1 client from pgbench's per-transaction log; +p50/+p99: lockbox minus pgbouncer, same transport"
echo "fsync ms: lockbox-fsync's median fdatasync during the run (lockbox_audit_fsync_seconds, interpolated in its bucket); +p50-fsync: +p50 minus it"
echo "own ms: lockbox-fsync's mean durable append minus its mean fdatasync (exact sums): its own time around the sync"
echo "steal %: the share of the machine's CPU time the hypervisor gave elsewhere during the run (median over rounds);"
echo "  a ratio between rows whose steal differs much says more about the neighbours than about the proxy"
python3 - "$results" "${TARGETS[*]}" "${CLIENT_COUNTS[*]}" "${PROTOCOLS[*]}" <<'PY'
import statistics, sys
path, targets, clients, modes = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
runs = {}
for line in open(path):
    t, c, m, _r, tps, p50, p99, fsync, own, steal = line.split()
    runs.setdefault((t, c, m), []).append((tps, p50, p99, fsync, own, steal))

def median(values):
    xs = []
    for v in values:
        try:
            xs.append(float(v))
        except ValueError:
            pass
    return statistics.median(xs) if xs else None

def figures(t, c, m):
    rs = runs.get((t, c, m), [])
    return tuple(median(r[i] for r in rs) for i in range(6))

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

def ms(v):
    return f"{v:.3f}" if v is not None else "-"

def plus(a, b):
    return f"{a - b:+.3f}" if a is not None and b is not None else "-"

head = f"{'clients':>7}  {'protocol':<9} {'target':<18} {'tps':>10} {'vs-direct':>9} {'vs-bouncer':>10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'fsync ms':>8} {'+p50-fsync':>10} {'own ms':>7} {'steal %':>7}"
print(head)
print("-" * len(head))
for c in clients:
    for m in modes:
        direct = figures("direct", c, m)[0]
        for t in targets:
            tps, p50, p99, fsync, own, steal = figures(t, c, m)
            bouncer = "pgbouncer-tls" if t.endswith("-tls") else "pgbouncer"
            b_tps, b_p50, b_p99, _, _, _ = figures(bouncer, c, m)
            added = p50 - b_p50 if p50 is not None and b_p50 is not None else None
            is_lockbox = t.startswith("lockbox")
            print(f"{c:>7}  {m:<9} {t:<18} {(f'{tps:.0f}' if tps is not None else 'failed'):>10} "
                  f"{(ratio(tps, direct) if t != 'direct' else ''):>9} "
                  f"{(ratio(tps, b_tps) if is_lockbox else ''):>10} "
                  f"{(ms(p50) if c == '1' else ''):>8} {(ms(p99) if c == '1' else ''):>8} "
                  f"{(plus(p50, b_p50) if c == '1' and is_lockbox else ''):>8} "
                  f"{(plus(p99, b_p99) if c == '1' and is_lockbox else ''):>8} "
                  f"{(ms(fsync) if fsync is not None else ''):>8} "
                  f"{(plus(added, fsync) if fsync is not None else ''):>10} "
                  f"{(ms(own) if own is not None else ''):>7} "
                  f"{(f'{steal:.1f}' if steal is not None else '-'):>7}")
        print()
PY
echo "audit files (statements recorded by lockbox during the run, warm-up included):"
bench_audit_counts
