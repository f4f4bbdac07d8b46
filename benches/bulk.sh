#!/usr/bin/env bash
# Bulk transfer through lockbox against direct PostgreSQL: COPY … TO STDOUT, a SELECT of the
# same rows, and COPY … FROM STDIN, each moving BYTES of table data.
#
#   benches/bulk.sh [BYTES] [ROUNDS]
#
#   BYTES    size of the data, with an optional K/M/G suffix (powers of 1024)
#            (env BULK_BYTES; default 1G); e.g. `benches/bulk.sh 20M 1` for a quick check
#   ROUNDS   rounds; each figure is the median over them (env BENCH_ROUNDS; default 3)
#   env BENCH_TARGETS  default: direct,direct-tls,lockbox-fsync,lockbox-fsync-tls (any target
#                      of benches/lib.sh works, pgbouncer included)
#   env LOCKBOX_BIN    use this lockbox binary instead of `cargo build --release`
#
# The table holds rows of about 1,000 bytes (an int and 992 characters of text). The clients
# are psql: `COPY bulk_src TO STDOUT` into /dev/null; `SELECT id, payload FROM bulk_src` with
# FETCH_COUNT=10000 (psql then reads through a cursor, 10,000 rows per FETCH, instead of
# holding the whole result in memory), unaligned into /dev/null; `COPY bulk_dst FROM STDIN`
# from a file made once by COPY TO (bulk_dst is emptied directly before each run). Lockbox
# reads with a read grant and writes with a write grant, each its own per-grant role. MB/s
# counts the COPY text size for all three. Like for like: a -tls target is compared with
# direct-tls (PostgreSQL's own TLS, so both sides pay for encryption), a plain one with direct.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

BYTES=$(numfmt --from=iec "${1:-${BULK_BYTES:-1G}}")
ROUNDS=${2:-${BENCH_ROUNDS:-3}}
read -ra TARGETS <<<"$(bench_list "${BENCH_TARGETS:-direct,direct-tls,lockbox-fsync,lockbox-fsync-tls}")"
OPS=(copy-out select copy-in)

bench_init
bench_start_demo
BENCH_POOL=4 bench_targets "${TARGETS[@]}"
bench_grants read "${TARGETS[@]}"
bench_grants write "${TARGETS[@]}"

rows=$(((BYTES + 999) / 1000))
bench_log "creating bulk_src: $rows rows of about 1,000 bytes"
bench_psql -c "CREATE TABLE bulk_src (id int, payload text)" \
    -c "INSERT INTO bulk_src SELECT g, repeat(md5(g::text), 31) FROM generate_series(1, $rows) g" \
    -c "CREATE TABLE bulk_dst (LIKE bulk_src)" \
    -c "GRANT SELECT ON bulk_src TO sales_read, sales_write" \
    -c "GRANT SELECT, INSERT ON bulk_dst TO sales_write" \
    -c "VACUUM ANALYZE bulk_src"
data=$BENCH_WORK/bulk.copy
bench_psql -c "COPY bulk_src TO STDOUT" >"$data"
size=$(stat -c %s "$data")

results=$BENCH_WORK/results
: >"$results"

# run OP TARGET ROUND: times one transfer, appends "op target round seconds" to $results.
run() {
    local op=$1 target=$2 round=$3 start end ok=1 count
    [ "$op" = copy-in ] && bench_psql -c "TRUNCATE bulk_dst"
    start=$EPOCHREALTIME
    case $op in
    copy-out)
        bench_on "$target" read -- "$PSQL" -X -q -v ON_ERROR_STOP=1 \
            -c "COPY bulk_src TO STDOUT" >/dev/null 2>"$BENCH_WORK/psql.err" || ok=0
        ;;
    select)
        bench_on "$target" read -- "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -v FETCH_COUNT=10000 \
            -c "SELECT id, payload FROM bulk_src" -o /dev/null 2>"$BENCH_WORK/psql.err" || ok=0
        ;;
    copy-in)
        bench_on "$target" write -- "$PSQL" -X -q -v ON_ERROR_STOP=1 \
            -c "COPY bulk_dst FROM STDIN" <"$data" 2>"$BENCH_WORK/psql.err" || ok=0
        ;;
    esac
    end=$EPOCHREALTIME
    if [ "$op" = copy-in ] && [ "$ok" = 1 ]; then
        count=$(bench_psql -At -c "SELECT count(*) FROM bulk_dst")
        [ "$count" = "$rows" ] || {
            echo "bulk_dst holds $count rows, not $rows" >"$BENCH_WORK/psql.err"
            ok=0
        }
    fi
    if [ "$ok" = 1 ]; then
        echo "$op $target $round $(python3 -c "print(f'{$end - $start:.4f}')")" >>"$results"
    else
        bench_log "$op on $target failed: $(tail -3 "$BENCH_WORK/psql.err")"
        bench_check_alive
        echo "$op $target $round failed" >>"$results"
    fi
}

total=$((ROUNDS * ${#OPS[@]} * ${#TARGETS[@]}))
n=0
for round in $(seq 1 "$ROUNDS"); do
    for op in "${OPS[@]}"; do
        for target in "${TARGETS[@]}"; do
            n=$((n + 1))
            bench_log "run $n/$total: round $round, $op, $target"
            run "$op" "$target" "$round"
        done
    done
done

echo
echo "bulk transfer of $size bytes ($rows rows) with psql, median of $ROUNDS round(s), $(bench_cores)"
echo "copy-out: COPY TO STDOUT; select: SELECT through a cursor (FETCH_COUNT=10000); copy-in: COPY FROM STDIN"
echo "MB/s: COPY text bytes (10^6) per second; vs-direct: MB/s / direct PostgreSQL on the same transport"
echo "(a -tls target against direct-tls when it ran, else against plain direct)"
python3 - "$results" "${TARGETS[*]}" "${OPS[*]}" "$size" <<'PY'
import statistics, sys
path, targets, ops, size = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
runs = {}
for line in open(path):
    op, t, _r, secs = line.split()
    runs.setdefault((op, t), []).append(secs)

def seconds(op, t):
    xs = []
    for v in runs.get((op, t), []):
        try:
            xs.append(float(v))
        except ValueError:
            pass
    return statistics.median(xs) if xs else None

head = f"{'operation':<9} {'target':<18} {'seconds':>8} {'MB/s':>8} {'vs-direct':>9}"
print(head)
print("-" * len(head))
for op in ops:
    for t in targets:
        base = "direct-tls" if t.endswith("-tls") and "direct-tls" in targets else "direct"
        direct = seconds(op, base)
        s = seconds(op, t)
        rate = f"{size / s / 1e6:.1f}" if s else "failed"
        ratio = f"{direct / s:.2f}" if s and direct and t != base else ""
        print(f"{op:<9} {t:<18} {(f'{s:.3f}' if s else 'failed'):>8} {rate:>8} {ratio:>9}")
    print()
PY
