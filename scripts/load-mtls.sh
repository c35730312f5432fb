#!/usr/bin/env bash
# Load run for issue #2, section 7 (results and method: docs/benchmarks.md, "Load run").
#
#   bash scripts/load-mtls.sh
#
# 1. Throughput: the axum example (`examples/axum_mtls.rs`, release build) as a TLS-only
#    server (`--client-auth-optional`: no client certificate, no RequireIdentityLayer)
#    against the same example as an mTLS server (client certificate required, identity
#    parsed per connection, RequireIdentityLayer checking the trust domain per request).
#    Both are driven with keep-alive HTTP/1.1 by `examples/mtls_loadgen.rs`, alternating
#    A B / B A over ROUNDS rounds; wrk drives the TLS-only server in each round as well, to
#    show the load generator's figures are comparable to wrk's. (wrk cannot present a
#    client certificate, so it cannot drive the mTLS server; the script shows that too.)
#    Target: mTLS median >= 95 % of the TLS-only median.
# 2. Memory: a fresh mTLS server, IDLE connections each served one request and then left
#    idle; the server's VmRSS before and after. Target: <= 64 KiB per connection. The same
#    is measured for a fresh TLS-only server for comparison.
#
# Knobs (environment): ROUNDS (5), DURATION (10 s), WARMUP (2 s), CONNS (50), THREADS (2),
# IDLE (10000), PIN (split: server on CPU 0, load generators on CPU 1; none: no pinning),
# CARGO_TARGET_DIR (default: target). Installs nothing; needs wrk (Debian: apt-get install wrk).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
IDLE=${IDLE:-10000}
PIN=${PIN:-split}

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

die() { echo "load-mtls: $*" >&2; exit 1; }

command -v wrk >/dev/null ||
    die "wrk not found; install it (Debian/Ubuntu: apt-get install wrk), then run again"
command -v cargo >/dev/null || die "cargo not found"
case "$PIN" in
split)
    command -v taskset >/dev/null ||
        die "taskset not found (util-linux); install it or run with PIN=none"
    [ "$(nproc)" -ge 2 ] || die "PIN=split needs 2 CPUs; run with PIN=none"
    SERVER_PIN=(taskset -c 0)
    CLIENT_PIN=(taskset -c 1)
    ;;
none)
    SERVER_PIN=()
    CLIENT_PIN=()
    ;;
*) die "PIN must be split or none, not $PIN" ;;
esac

# Every connection is a file descriptor on both sides.
want_fds=$((IDLE + 1024))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
    ulimit -n "$want_fds" 2>/dev/null ||
        die "cannot raise the open-file limit to $want_fds (ulimit -n); raise it or lower IDLE"
fi

echo "== building (release)"
cargo build --release --example axum_mtls --example mtls_loadgen
SERVER="$TARGET_DIR/release/examples/axum_mtls"
LOADGEN="$TARGET_DIR/release/examples/mtls_loadgen"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$LOADGEN" --gen-pki "$WORK/pki" >/dev/null
PKI=$WORK/pki

# start_server NAME PORT [extra flags...]: starts axum_mtls, waits for its
# `listening on ADDR` line, sets SERVER_PID.
declare -A SERVER_FD
start_server() {
    local name=$1 port=$2
    shift 2
    local fifo=$WORK/$name.fifo fd
    mkfifo "$fifo"
    RUST_LOG=warn "${SERVER_PIN[@]}" "$SERVER" --cert "$PKI/server.crt" --key "$PKI/server.key" \
        --client-ca "$PKI/ca.pem" --listen "127.0.0.1:$port" "$@" \
        >"$fifo" 2>"$WORK/$name.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # Held open until the server stops, so the server never writes into a closed pipe.
    exec {fd}<"$fifo"
    rm -f "$fifo"
    SERVER_FD[$SERVER_PID]=$fd
    local line=
    if ! IFS= read -r -t 60 -u "$fd" line; then
        cat "$WORK/$name.err" >&2
        die "$name did not start"
    fi
    case "$line" in
    "listening on "*) ;;
    *) die "$name: unexpected first line: $line" ;;
    esac
}

stop_server() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local fd=${SERVER_FD[$1]:-}
    if [ -n "$fd" ]; then
        exec {fd}<&-
        unset "SERVER_FD[$1]"
    fi
}

TLS_PORT=18443
MTLS_PORT=18444
start_server tls-only $TLS_PORT --client-auth-optional
TLS_PID=$SERVER_PID
start_server mtls $MTLS_PORT --allow-trust-domain example.org
MTLS_PID=$SERVER_PID

CERT_ARGS=(--cert "$PKI/client.crt" --key "$PKI/client.key")
loadgen() { "${CLIENT_PIN[@]}" "$LOADGEN" --ca "$PKI/ca.pem" "$@"; }

echo "== sanity"
loadgen --addr 127.0.0.1:$MTLS_PORT "${CERT_ARGS[@]}" -c 1 -t 1 -d 0.2 --warmup 0 >/dev/null ||
    die "mTLS server refused the client certificate"
if loadgen --addr 127.0.0.1:$MTLS_PORT -c 1 -t 1 -d 0.2 --warmup 0 >/dev/null 2>&1; then
    die "mTLS server served a client without a certificate"
fi
echo "mTLS server: client certificate accepted, no certificate refused"
wrk_check=$(wrk -t1 -c1 -d1s "https://127.0.0.1:$MTLS_PORT/" 2>&1 || true)
wrk_ok=$(awk '/requests in/ {print $1}' <<<"$wrk_check")
if [ "${wrk_ok:-0}" != 0 ]; then
    die "wrk got answers from the mTLS server without a client certificate: $wrk_check"
fi
echo "wrk against the mTLS server: 0 requests (it has no way to present a client certificate)"

# rps_of FILE: the rps= field of the loadgen's RESULT line.
rps_of() { sed -n 's/^RESULT .* rps=\([0-9]*\).*/\1/p' "$1"; }
field_of() { sed -n "s/^RESULT .* $2=\([0-9]*\).*/\1/p" "$1"; }

run_loadgen() { # label port [cert args...]
    local label=$1 port=$2
    shift 2
    local f=$WORK/$label.$round.txt
    loadgen --addr "127.0.0.1:$port" "$@" -c "$CONNS" -t "$THREADS" -d "$DURATION" \
        --warmup "$WARMUP" --label "$label" >"$f" || {
        cat "$f" >&2
        die "$label round $round failed"
    }
    echo "$(rps_of "$f") $(field_of "$f" p50_us) $(field_of "$f" p99_us)"
}

run_wrk() {
    local f=$WORK/wrk.$round.txt
    # wrk has no warm-up option: a short run first, not counted.
    "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "https://127.0.0.1:$TLS_PORT/" >/dev/null
    "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        "https://127.0.0.1:$TLS_PORT/" >"$f"
    if grep -q "Non-2xx\|Socket errors" "$f"; then
        cat "$f" >&2
        die "wrk round $round had errors"
    fi
    awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$f"
}

echo "== throughput: $ROUNDS rounds, $CONNS connections, $THREADS client threads," \
    "${WARMUP} s warm-up + ${DURATION} s each, PIN=$PIN"
printf '%-6s %-30s %-30s %-10s %-8s\n' round "TLS-only loadgen (rps p50 p99)" \
    "mTLS loadgen (rps p50 p99)" "TLS wrk" "mTLS/TLS"
A_ALL=()
B_ALL=()
W_ALL=()
R_ALL=()
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
        a=$(run_loadgen tls-only $TLS_PORT)
        b=$(run_loadgen mtls $MTLS_PORT "${CERT_ARGS[@]}")
    else
        b=$(run_loadgen mtls $MTLS_PORT "${CERT_ARGS[@]}")
        a=$(run_loadgen tls-only $TLS_PORT)
    fi
    w=$(run_wrk)
    a_rps=${a%% *}
    b_rps=${b%% *}
    ratio=$(awk -v a="$a_rps" -v b="$b_rps" 'BEGIN { printf "%.1f%%", 100 * b / a }')
    A_ALL+=("$a_rps")
    B_ALL+=("$b_rps")
    W_ALL+=("$w")
    R_ALL+=("$(awk -v a="$a_rps" -v b="$b_rps" 'BEGIN { printf "%.4f", b / a }')")
    printf '%-6s %-30s %-30s %-10s %-8s\n' "$round" "$a" "$b" "$w" "$ratio"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.0f", v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
median_ratio() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", 100 * m }'; }

A_MED=$(median "${A_ALL[@]}")
B_MED=$(median "${B_ALL[@]}")
W_MED=$(median "${W_ALL[@]}")
RATIO=$(awk -v a="$A_MED" -v b="$B_MED" 'BEGIN { printf "%.1f", 100 * b / a }')
PAIRED=$(median_ratio "${R_ALL[@]}")
LG_VS_WRK=$(awk -v a="$A_MED" -v w="$W_MED" 'BEGIN { printf "%.1f", 100 * a / w }')
echo "medians: TLS-only $A_MED req/s, mTLS $B_MED req/s, wrk TLS-only $W_MED req/s"
echo "mTLS / TLS-only: $RATIO % of medians (median of per-round ratios: $PAIRED %); target >= 95 %"
echo "loadgen / wrk on the TLS-only server: $LG_VS_WRK %"
stop_server "$TLS_PID"
stop_server "$MTLS_PID"

echo "== memory: $IDLE idle connections, one request served on each"
# idle_run NAME PORT [server flags...] -- [loadgen flags...]: a fresh server, IDLE
# connections; sets MEM_BEFORE, MEM_AFTER (KiB) and MEM_PER (KiB per connection).
idle_run() {
    local name=$1 port=$2
    shift 2
    local flags=()
    while [ "$1" != -- ]; do
        flags+=("$1")
        shift
    done
    shift
    start_server "$name-idle" "$port" "${flags[@]}"
    local f=$WORK/$name-idle.txt
    loadgen --addr "127.0.0.1:$port" "$@" --idle "$IDLE" --server-pid "$SERVER_PID" >"$f" || {
        cat "$f" >&2
        die "$name idle run failed"
    }
    stop_server "$SERVER_PID"
    sed -n 's/^MEMORY .* rss_before_kib=\([0-9]*\) rss_after_kib=\([0-9]*\) per_conn_kib=\([0-9.]*\).*/\1 \2 \3/p' "$f" >"$f.fields"
    read -r MEM_BEFORE MEM_AFTER MEM_PER <"$f.fields" || die "$name idle run: no MEMORY line"
}
idle_run mtls 18445 --allow-trust-domain example.org -- "${CERT_ARGS[@]}"
m_before=$MEM_BEFORE m_after=$MEM_AFTER m_per=$MEM_PER
idle_run tls-only 18446 --client-auth-optional --
t_before=$MEM_BEFORE t_after=$MEM_AFTER t_per=$MEM_PER
echo "mTLS server:     VmRSS $m_before KiB -> $m_after KiB: $m_per KiB per connection (target <= 64 KiB)"
echo "TLS-only server: VmRSS $t_before KiB -> $t_after KiB: $t_per KiB per connection"

echo "== summary"
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "met" : "NOT met" }'; }
echo "throughput: mTLS $B_MED / TLS-only $A_MED req/s = $RATIO % (target >= 95 %: $(verdict "$RATIO" 95 '>='))"
echo "memory: $m_per KiB per idle mTLS connection (target <= 64 KiB: $(verdict "$m_per" 64 '<='))"
