#!/usr/bin/env bash
# The work per transaction: how much CPU time and how many context switches each proxy, and the
# whole machine, spend on one `pgbench -S` transaction. Throughput on a small machine follows
# this sum (client, proxy and server share the cores), so it says where a tps gap comes from
# before any profile, and it needs nothing but /proc (no perf).
#
#   benches/cost.sh [SECONDS_PER_RUN] [CLIENTS] [ROUNDS]
#
#   SECONDS_PER_RUN  seconds of each pgbench run (env BENCH_SECONDS; default 10)
#   CLIENTS          client counts, "8,64" or "8 64" (env BENCH_CLIENTS; default 1,8,64)
#   ROUNDS           rounds; each figure is the median over them (env BENCH_ROUNDS; default 3)
#   env BENCH_PROTOCOL  pgbench -M mode (default simple)
#   env BENCH_CONNECT   1: a new connection per transaction (`pgbench -C`), so that the work
#                       per transaction is mostly a login's: the token check, the upstream
#                       login, the session's records
#   env BENCH_TARGETS   default: direct,pgbouncer,pgbouncer-tls,lockbox-fsync,lockbox-write,
#                       lockbox-write-tls
#   env LOCKBOX_BIN     use this lockbox binary instead of `cargo build --release`
#   env BENCH_PERF      a folder: also `perf record` each proxy (with stacks) during each run into it, and
#                       write each profile's top symbols beside it (TARGET-CLIENTS.txt). The
#                       profiler costs CPU: take the tps of such a run as no figure.
#                       BENCH_PERF_HZ: samples per second (default 499); BENCH_PERF_CALLGRAPH:
#                       how stacks are read (default fp; `dwarf` where the binary has no frame
#                       pointers, as a release build has not: callers of libc's memcpy, say).
#                       BENCH_PERF_EVENT: record this event's every occurrence instead of
#                       sampling the time (`syscalls:sys_enter_sched_yield`: who yields).
#                       TARGET-CLIENTS.where splits the proxy's CPU time per transaction by part
#                       (benches/where_time_goes.py): in the kernel by system call (send,
#                       receive, file write, epoll, futex), in user space by the part of lockbox
#                       (audit, statement analysis, reply tracking, runtime, tracing); needs
#                       stacks into user space (dwarf) for the user-space split.
#   env BENCH_SYSCALLS  a folder: also trace each proxy's system calls during each run
#                       (`perf trace -s`) and write the summary per thread beside it
#                       (TARGET-CLIENTS.syscalls), with the calls per transaction of each kind
#                       (TARGET-CLIENTS.per-tx). Tracing costs CPU too: no tps figure either.
#
# Around each run it reads the proxy's own CPU time (user + system, every thread:
# /proc/PID/stat), its threads' context switches (voluntary and involuntary:
# /proc/PID/task/*/status), and the machine's busy time and context switches (/proc/stat).
# Each is divided by the run's transactions. "proxy us" and "proxy cs" are empty for direct
# PostgreSQL; "machine us" includes pgbench, PostgreSQL and the proxy. "server us" is
# PostgreSQL's share (the postmaster's CPU time with its reaped children's, and each living
# backend's): with `BENCH_CONNECT=1` it shows what a login costs the server, which differs by
# who logs in and how (a superuser on trust, a grant's role with SCRAM).
# "faults" is PostgreSQL's page faults per transaction (minflt, counted as "server us" is):
# fresh backends fault in the shared memory they touch, pooled ones did so in earlier runs.
#   env BENCH_PG_OPTIONS  more settings for the sandbox PostgreSQL ("-c huge_pages=on"): it is
#                         restarted with them (lib.sh)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SECONDS_PER_RUN=${1:-${BENCH_SECONDS:-10}}
read -ra CLIENT_COUNTS <<<"$(bench_list "${2:-${BENCH_CLIENTS:-1,8,64}}")"
ROUNDS=${3:-${BENCH_ROUNDS:-3}}
PROTOCOL=${BENCH_PROTOCOL:-simple}
CONNECT_FLAG=()
if [ "${BENCH_CONNECT:-0}" = 1 ]; then CONNECT_FLAG=(-C); fi
read -ra TARGETS <<<"$(bench_list "${BENCH_TARGETS:-direct,pgbouncer,pgbouncer-tls,lockbox-fsync,lockbox-write,lockbox-write-tls}")"

bench_start_pgbench_targets "${BENCH_SCALE:-10}"

# The process that proxies TARGET's connections (empty for direct PostgreSQL).
proxy_pid() {
    local target=$1
    case $target in
    pgbouncer | pgbouncer-tls) cat "$BENCH_WORK/$target/pgbouncer.pid" ;;
    lockbox-*) echo "${BENCH_SERVE_PID[${BENCH_PROXY[$target]}]}" ;;
    *) echo "" ;;
    esac
}

# "user_ticks system_ticks context_switches" of a process, every thread (0 0 0 without one).
proc_counts() {
    local pid=$1
    if [ -z "$pid" ] || [ ! -r "/proc/$pid/stat" ]; then
        echo "0 0 0"
        return
    fi
    # Fields 14 and 15 of stat: user and system time of every thread, living or gone. The
    # command name (field 2) may hold spaces, so count from after its closing parenthesis.
    local ticks switches
    ticks=$(sed -E 's/^.*\) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    switches=$(cat "/proc/$pid"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}')
    echo "$ticks $switches"
}

# A sum over PostgreSQL's processes, from /proc/*/stat: the postmaster's fields OWN (its own
# figures and those of the children it has reaped, i.e. backends that ended) plus each living
# child's fields CHILD. Fields are counted after the command name's closing parenthesis (the
# name may hold spaces): field 4 of stat, the ppid, is $2. A backend alive at the start that
# ends during the run is counted as living then and as reaped after, so the difference of
# two sums is the run's either way.
server_sum() {
    local own=$1 child=$2 postmaster
    postmaster=$(head -1 "$PG_DATA/postmaster.pid" 2>/dev/null) || true
    # Its pid is in the data folder, which only the server's owner may read: without it
    # the column stays empty rather than show a zero.
    if [ -z "$postmaster" ] || [ ! -r "/proc/$postmaster/stat" ]; then
        echo none
        return
    fi
    { sed -E 's/^.*\) //' /proc/[0-9]*/stat 2>/dev/null || true; } |
        awk -v pm="$postmaster" -v pmstat="$(sed -E 's/^.*\) //' "/proc/$postmaster/stat")" \
            -v own="$own" -v child="$child" '
            BEGIN {
                split(pmstat, f, " ")
                k = split(own, o, ","); for (i = 1; i <= k; i++) n += f[o[i]]
                m = split(child, c, ",")
            }
            $2 == pm { for (i = 1; i <= m; i++) n += $(c[i]) }
            END { print n }'
}

# PostgreSQL's CPU ticks so far: utime $12, stime $13, cutime $14, cstime $15.
server_ticks() { server_sum 12,13,14,15 12,13; }

# PostgreSQL's page faults so far: minflt $8, cminflt $9. A backend faults in each page of
# shared memory it touches for the first time: a run on fresh backends (lockbox gives each
# session its own) pays for pages that pgbouncer's kept pool mapped in earlier runs.
server_faults() { server_sum 8,9 8; }

# Each system call's count per transaction, summed over the threads of a `perf trace -s`
# summary, most frequent first.
syscalls_per_tx() {
    local summary=$1 tps=$2
    awk -v tps="$tps" -v seconds="$SECONDS_PER_RUN" '
        BEGIN { txns = tps * seconds }
        $2 ~ /^[0-9]+$/ && $1 ~ /^[a-z_0-9]+$/ { n[$1] += $2 }
        END { if (txns > 0) for (k in n) printf "%8.2f %s\n", n[k] / txns, k }' "$summary" | sort -rn
}

results=$BENCH_WORK/results
: >"$results"

run() {
    local target=$1 clients=$2 round=$3 pid threads out tps p0 p1 m0 m1 s0 s1 f0 f1
    pid=$(proxy_pid "$target")
    threads=$((clients < NPROC ? clients : NPROC))
    p0=$(proc_counts "$pid")
    m0=$(bench_machine_counts)
    s0=$(server_ticks)
    f0=$(server_faults)
    local profiler=""
    if [ -n "${BENCH_PERF:-}" ] && [ -n "$pid" ]; then
        mkdir -p "$BENCH_PERF"
        local sampling=(-F "${BENCH_PERF_HZ:-499}")
        if [ -n "${BENCH_PERF_EVENT:-}" ]; then sampling=(-e "$BENCH_PERF_EVENT"); fi
        perf record -q "${sampling[@]}" --call-graph "${BENCH_PERF_CALLGRAPH:-fp}" \
            -p "$pid" -o "$BENCH_PERF/$target-$clients.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null &
        profiler=$!
    fi
    local tracer=""
    if [ -n "${BENCH_SYSCALLS:-}" ] && [ -n "$pid" ]; then
        mkdir -p "$BENCH_SYSCALLS"
        perf trace -s -p "$pid" -o "$BENCH_SYSCALLS/$target-$clients.syscalls" \
            -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
        tracer=$!
    fi
    if out=$(bench_on "$target" -- "$PGBENCH" -n -S ${CONNECT_FLAG[@]+"${CONNECT_FLAG[@]}"} -M "$PROTOCOL" -c "$clients" -j "$threads" -T "$SECONDS_PER_RUN" 2>"$BENCH_WORK/pgbench.err"); then
        tps=$(echo "$out" | sed -nE 's/^tps = ([0-9.]+) .*/\1/p' | head -1)
    else
        bench_log "pgbench on $target ($clients clients) failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
        bench_check_alive
    fi
    p1=$(proc_counts "$pid")
    m1=$(bench_machine_counts)
    s1=$(server_ticks)
    f1=$(server_faults)
    if [ -n "$profiler" ]; then
        wait "$profiler" || true
        perf report -q -i "$BENCH_PERF/$target-$clients.data" --stdio --no-children \
            --sort comm,dso,sym 2>/dev/null | grep -E '^ +[0-9]' | head -40 >"$BENCH_PERF/$target-$clients.txt" || true
        # Where the proxy's time per transaction went (with stacks, by part).
        local us_per_tx
        us_per_tx=$(awk -v a="$p0" -v b="$p1" -v tps="${tps:-0}" -v s="$SECONDS_PER_RUN" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { split(a, x); split(b, y); t = tps * s; print (t > 0 ? (y[1] + y[2] - x[1] - x[2]) * 1e6 / hz / t : 0) }')
        perf script -i "$BENCH_PERF/$target-$clients.data" 2>/dev/null |
            python3 "$(dirname "$0")/where_time_goes.py" "$us_per_tx" >"$BENCH_PERF/$target-$clients.where" || true
    fi
    if [ -n "$tracer" ]; then
        wait "$tracer" || true
        syscalls_per_tx "$BENCH_SYSCALLS/$target-$clients.syscalls" "${tps:-0}" \
            >"$BENCH_SYSCALLS/$target-$clients.per-tx" || true
    fi
    echo "$target $clients $round ${tps:-failed} ${pid:-none} $p0 $p1 $m0 $m1 $s0 $s1 $f0 $f1" >>"$results"
}

bench_log "warming up each target (and checking it answers)"
for target in "${TARGETS[@]}"; do
    bench_on "$target" -- "$PGBENCH" -n -S ${CONNECT_FLAG[@]+"${CONNECT_FLAG[@]}"} -M "$PROTOCOL" -c 1 -t 200 >/dev/null 2>"$BENCH_WORK/pgbench.err" ||
        bench_die "pgbench against $target failed: $(tail -3 "$BENCH_WORK/pgbench.err")"
done

bench_each_run

echo
echo "pgbench -S${CONNECT_FLAG[*]:+ ${CONNECT_FLAG[*]}} -M $PROTOCOL, ${SECONDS_PER_RUN}s per run, median of $ROUNDS round(s), $(bench_cores)"
echo "per transaction: proxy us = the proxy's CPU time (every thread, user + system), and its user and"
echo "system (kernel) parts beside it; proxy cs = its"
echo "threads' context switches; machine us / cs = the same for the whole machine (pgbench, PostgreSQL,"
echo "the proxy); server us = PostgreSQL's (postmaster and every backend, ended ones too); faults = PostgreSQL's page faults"
echo "(a fresh backend faults in each page of shared memory it touches first); steal % = the share of the run's CPU time the hypervisor gave elsewhere (runs with"
echo "much of it are slower for the same work). vs-bouncer: lockbox's figure / pgbouncer's on the same"
echo "transport (plain or TLS)"
python3 - "$results" "${TARGETS[*]}" "${CLIENT_COUNTS[*]}" "$SECONDS_PER_RUN" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, targets, clients = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
seconds, hz = float(sys.argv[4]), float(sys.argv[5])
runs = {}
for line in open(path):
    (t, c, _r, tps, pid, pu0, ps0, pc0, pu1, ps1, pc1, mt0, mc0, ma0, ms0, mt1, mc1, ma1, ms1, st0, st1, f0, f1) = line.split()
    try:
        txns = float(tps) * seconds
    except ValueError:
        continue
    if txns <= 0:
        continue
    us = lambda a, b: (float(b) - float(a)) * 1e6 / hz / txns
    per = lambda a, b: (float(b) - float(a)) / txns
    proxy = pid != "none"
    runs.setdefault((t, c), []).append({
        "tps": float(tps),
        "proxy_us": us(float(pu0) + float(ps0), float(pu1) + float(ps1)) if proxy else None,
        "proxy_user": us(pu0, pu1) if proxy else None,
        "proxy_sys": us(ps0, ps1) if proxy else None,
        "proxy_cs": per(pc0, pc1) if proxy else None,
        "machine_us": us(mt0, mt1),
        "machine_cs": per(mc0, mc1),
        "server_us": us(st0, st1) if "none" not in (st0, st1) else None,
        "faults": per(f0, f1) if "none" not in (f0, f1) else None,
        "steal": 100 * (float(ms1) - float(ms0)) / max(float(ma1) - float(ma0), 1),
    })

def median(t, c, key):
    xs = [r[key] for r in runs.get((t, c), []) if r[key] is not None]
    return statistics.median(xs) if xs else None

def cell(v, fmt, width):
    return f"{(fmt.format(v) if v is not None else '-'):>{width}}"

head = (f"{'clients':>7}  {'target':<18} {'tps':>8} {'proxy us':>9} {'user':>6} {'sys':>6} {'proxy cs':>9} "
        f"{'machine us':>10} {'machine cs':>10} {'server us':>9} {'faults':>6} {'steal %':>7} {'tps vs-bouncer':>14} {'proxy us vs-bouncer':>19}")
print(head)
print("-" * len(head))
for c in clients:
    for t in targets:
        tps = median(t, c, "tps")
        bouncer = "pgbouncer-tls" if t.endswith("-tls") else "pgbouncer"
        ratio = lambda a, b: a / b if a is not None and b else None
        lockbox = t.startswith("lockbox")
        print(f"{c:>7}  {t:<18} {cell(tps, '{:.0f}', 8)} "
              f"{cell(median(t, c, 'proxy_us'), '{:.1f}', 9)} {cell(median(t, c, 'proxy_user'), '{:.1f}', 6)} "
              f"{cell(median(t, c, 'proxy_sys'), '{:.1f}', 6)} {cell(median(t, c, 'proxy_cs'), '{:.2f}', 9)} "
              f"{cell(median(t, c, 'machine_us'), '{:.1f}', 10)} {cell(median(t, c, 'machine_cs'), '{:.2f}', 10)} "
              f"{cell(median(t, c, 'server_us'), '{:.1f}', 9)} "
              f"{cell(median(t, c, 'faults'), '{:.2f}', 6)} "
              f"{cell(median(t, c, 'steal'), '{:.0f}', 7)} "
              f"{cell(ratio(tps, median(bouncer, c, 'tps')) if lockbox else None, '{:.2f}', 14)} "
              f"{cell(ratio(median(t, c, 'proxy_us'), median(bouncer, c, 'proxy_us')) if lockbox else None, '{:.2f}', 19)}")
    print()
PY
