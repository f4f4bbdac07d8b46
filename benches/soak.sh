#!/usr/bin/env bash
# Soak: SECONDS of steady load through one `lockbox serve` (audit fsync) while a grant
# expires or is revoked every few seconds (three sessions on each), driven by
# benches/soak_sessions.py. Prints the proxy's RSS (and its anonymous and file-backed parts),
# open files, threads and live sessions after the warm-up and at the end (with the quarters'
# medians and the proxy's census of its long-lived maps), and how late sessions were dropped
# after their end (expiry) or after the revoke call returned; exits non-zero on a leak or a
# late or missed drop. A leak is growth of anonymous memory, open files or threads that is a
# trend after the warm-up (every quarter of the run higher than the one before, and by more
# than an allowance overall), not a one-off step: the rule is in soak_sessions.py.
#
#   benches/soak.sh [SECONDS]      # env SOAK_SECONDS; default 1800 (30 minutes)
#   env LOCKBOX_BIN  use this lockbox binary instead of `cargo build --release`
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

SECONDS_TOTAL=${1:-${SOAK_SECONDS:-1800}}
python3 -c 'import asyncpg' 2>/dev/null || bench_die "asyncpg is needed (python3 -m pip install asyncpg)"
bench_init
bench_start_demo
# The soak's proxy logs its census (entries per long-lived map) every minute.
RUST_LOG=${RUST_LOG:-info,lockbox::census=debug} bench_start_lockbox soak fsync
CONFIG="$(dirname "$LOCKBOX_CONFIG")/lockbox-soak.toml"
# Requests go to this lockbox's own API (its sessions hear its revocations at once).
api_port=$(sed -n '/^\[api\]/,/^\[/ s/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$CONFIG" | head -1)
[ -n "$api_port" ] || bench_die "no [api] listen in $CONFIG"
export LOCKBOX_SERVER=${LOCKBOX_SERVER%:*}:$api_port LOCKBOX
bench_wait_port "$api_port" || bench_die "the API on $api_port did not start"

bench_log "soak: $SECONDS_TOTAL s, a grant expiring or revoked every 3 s"
python3 "$BENCH_ROOT/benches/soak_sessions.py" "${BENCH_SERVE_PID[soak]}" "${BENCH_PROXY_PORT[soak]}" \
    "$LOCKBOX_DATABASE" "$LOCKBOX_ENGINEER" "$SECONDS_TOTAL" "$BENCH_WORK/serve-soak.log" | tee "$BENCH_WORK/soak.json"
