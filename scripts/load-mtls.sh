#!/usr/bin/env bash
# Load run for issue #2, section 7 (results and method: docs/benchmarks.md, "Load run").
#
#   bash scripts/load-mtls.sh
#
# 1. Throughput: the axum example (`examples/axum_mtls.rs`, release build) as a TLS-only
#    server (`--client-auth-optional`: no client certificate asked of the client, no
#    RequireIdentityLayer) against the same example as an mTLS server (client certificate
#    required and verified, identity parsed once per connection, RequireIdentityLayer
#    checking the trust domain on every request). Keep-alive HTTP/1.1, same run, ROUNDS
#    rounds alternating the order (A B, B A, ...), medians reported.
#    Two clients drive both servers:
#    - wrk. wrk has no option for a client certificate, and OpenSSL's config file cannot
#      add one (OpenSSL 3.0 refuses `Certificate`/`PrivateKey` in the system-wide
#      `system_default` section that SSL_CTX_new applies; wrk never loads a section of its
#      own). So the script compiles a 20-line LD_PRELOAD shim (below) that loads
#      WRK_CLIENT_CERT/WRK_CLIENT_KEY into wrk's SSL_CTX right after SSL_CTX_new. Needs a C
#      compiler (cc); without one the wrk mTLS runs are skipped.
#    - examples/mtls_loadgen.rs, a wrk-like closed-loop client on rustls + hyper that can
#      present a certificate by itself (and also holds the idle connections of part 2).
#    Target: mTLS median >= 95 % of the TLS-only median.
# 2. Memory: a fresh mTLS server, IDLE connections each served one request and then left
#    idle; the server's VmRSS before and after. Target: <= 64 KiB per connection. The same
#    is measured for a fresh TLS-only server for comparison.
#
# Knobs (environment): ROUNDS (5), DURATION (10 s), WARMUP (2 s), CONNS (50), THREADS (2),
# IDLE (10000), PIN (split: server on CPU 0, clients on CPU 1; none: no pinning),
# CARGO_TARGET_DIR (default: target).
# Installs nothing. Needs wrk (Debian: apt-get install wrk) and, for the wrk mTLS runs, cc
# (Debian: apt-get install gcc).
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
HAVE_CC=1
command -v cc >/dev/null || {
    HAVE_CC=0
    echo "load-mtls: no C compiler (cc): wrk cannot be given a client certificate, so the" \
        "wrk mTLS runs are skipped (install one: apt-get install gcc)" >&2
}
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

# wrk with a client certificate: after wrk's SSL_CTX_new, load WRK_CLIENT_CERT (chain,
# PEM) and WRK_CLIENT_KEY (PEM) into the context. The OpenSSL functions resolve against
# the libssl wrk already loads, so no OpenSSL headers or -dev package are needed.
if [ "$HAVE_CC" = 1 ]; then
    cat >"$WORK/wrk-client-cert.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
int SSL_CTX_check_private_key(const SSL_CTX *ctx);

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    SSL_CTX *(*next)(const SSL_METHOD *) =
        (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = next(method);
    const char *cert = getenv("WRK_CLIENT_CERT"), *key = getenv("WRK_CLIENT_KEY");
    if (ctx != NULL && cert != NULL && key != NULL &&
        (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
         SSL_CTX_use_PrivateKey_file(ctx, key, 1 /* SSL_FILETYPE_PEM */) != 1 ||
         SSL_CTX_check_private_key(ctx) != 1)) {
        fprintf(stderr, "wrk-client-cert: cannot use %s / %s\n", cert, key);
        exit(1);
    }
    return ctx;
}
EOF
    cc -O2 -shared -fPIC -o "$WORK/wrk-client-cert.so" "$WORK/wrk-client-cert.c" -ldl ||
        die "cannot compile the wrk client-certificate shim"
fi

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
echo "plain wrk against the mTLS server: 0 requests (it cannot present a client certificate)"
wrk_mtls() {
    WRK_CLIENT_CERT=$PKI/client.crt WRK_CLIENT_KEY=$PKI/client.key \
        LD_PRELOAD=$WORK/wrk-client-cert.so "$@"
}
if [ "$HAVE_CC" = 1 ]; then
    wrk_check=$(wrk_mtls wrk -t1 -c1 -d1s "https://127.0.0.1:$MTLS_PORT/" 2>&1 || true)
    wrk_ok=$(awk '/requests in/ {print $1}' <<<"$wrk_check")
    if [ "${wrk_ok:-0}" = 0 ] || grep -q "Non-2xx\|Socket errors" <<<"$wrk_check"; then
        die "wrk with the client-certificate shim failed against the mTLS server: $wrk_check"
    fi
    echo "wrk with the client-certificate shim against the mTLS server: $wrk_ok requests, all 200"
fi

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

run_wrk() { # label port [wrapper...]
    local label=$1 port=$2
    shift 2
    local f=$WORK/wrk-$label.$round.txt
    # wrk has no warm-up option: a short run first, not counted.
    "$@" "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
        "https://127.0.0.1:$port/" >/dev/null
    "$@" "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        "https://127.0.0.1:$port/" >"$f"
    if grep -q "Non-2xx\|Socket errors" "$f" || ! grep -q "^Requests/sec:" "$f"; then
        cat "$f" >&2
        die "wrk $label round $round had errors"
    fi
    local rps p50 p99
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$f")
    p50=$(awk '$1 == "50%" {print $2}' "$f")
    p99=$(awk '$1 == "99%" {print $2}' "$f")
    echo "$rps $p50 $p99"
}

echo "== throughput: $ROUNDS rounds, $CONNS connections, $THREADS client threads," \
    "${WARMUP} s warm-up + ${DURATION} s each, PIN=$PIN"
printf '%-5s | %-24s %-24s %-7s | %-24s %-24s %-7s\n' round \
    "loadgen TLS (rps p50 p99)" "loadgen mTLS" "ratio" "wrk TLS (rps p50 p99)" "wrk mTLS" ratio
LA=()
LB=()
LR=()
WA=()
WB=()
WR=()
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b / a }'; }
pct_of() { awk -v r="$1" 'BEGIN { printf "%.1f%%", 100 * r }'; }
for round in $(seq 1 "$ROUNDS"); do
    wa="- - -" wb="- - -" wr=""
    if [ $((round % 2)) = 1 ]; then
        la=$(run_loadgen tls-only $TLS_PORT)
        lb=$(run_loadgen mtls $MTLS_PORT "${CERT_ARGS[@]}")
        wa=$(run_wrk tls-only $TLS_PORT)
        [ "$HAVE_CC" = 0 ] || wb=$(run_wrk mtls $MTLS_PORT wrk_mtls)
    else
        lb=$(run_loadgen mtls $MTLS_PORT "${CERT_ARGS[@]}")
        la=$(run_loadgen tls-only $TLS_PORT)
        [ "$HAVE_CC" = 0 ] || wb=$(run_wrk mtls $MTLS_PORT wrk_mtls)
        wa=$(run_wrk tls-only $TLS_PORT)
    fi
    LA+=("${la%% *}")
    LB+=("${lb%% *}")
    lr=$(ratio_of "${la%% *}" "${lb%% *}")
    LR+=("$lr")
    WA+=("${wa%% *}")
    if [ "$HAVE_CC" = 1 ]; then
        WB+=("${wb%% *}")
        wr=$(ratio_of "${wa%% *}" "${wb%% *}")
        WR+=("$wr")
        wr=$(pct_of "$wr")
    fi
    printf '%-5s | %-24s %-24s %-7s | %-24s %-24s %-7s\n' "$round" "$la" "$lb" \
        "$(pct_of "$lr")" "$wa" "$wb" "$wr"
done
echo "(loadgen latencies in microseconds; wrk's as wrk prints them)"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.0f", v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
median_ratio() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", 100 * m }'; }

LA_MED=$(median "${LA[@]}")
LB_MED=$(median "${LB[@]}")
L_RATIO=$(awk -v a="$LA_MED" -v b="$LB_MED" 'BEGIN { printf "%.1f", 100 * b / a }')
L_PAIRED=$(median_ratio "${LR[@]}")
WA_MED=$(median "${WA[@]}")
echo "loadgen medians: TLS-only $LA_MED req/s, mTLS $LB_MED req/s:" \
    "mTLS/TLS-only $L_RATIO % (median of the per-round ratios: $L_PAIRED %)"
if [ "$HAVE_CC" = 1 ]; then
    WB_MED=$(median "${WB[@]}")
    W_RATIO=$(awk -v a="$WA_MED" -v b="$WB_MED" 'BEGIN { printf "%.1f", 100 * b / a }')
    W_PAIRED=$(median_ratio "${WR[@]}")
    echo "wrk medians:     TLS-only $WA_MED req/s, mTLS $WB_MED req/s:" \
        "mTLS/TLS-only $W_RATIO % (median of the per-round ratios: $W_PAIRED %)"
else
    echo "wrk medians:     TLS-only $WA_MED req/s (mTLS skipped: no cc)"
fi
echo "loadgen / wrk on the TLS-only server: $(awk -v a="$LA_MED" -v w="$WA_MED" \
    'BEGIN { printf "%.1f", 100 * a / w }') %"
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
if [ "$HAVE_CC" = 1 ]; then
    echo "throughput (wrk):     mTLS $WB_MED / TLS-only $WA_MED req/s = $W_RATIO %" \
        "(target >= 95 %: $(verdict "$W_RATIO" 95 '>='))"
fi
echo "throughput (loadgen): mTLS $LB_MED / TLS-only $LA_MED req/s = $L_RATIO %" \
    "(target >= 95 %: $(verdict "$L_RATIO" 95 '>='))"
echo "memory: $m_per KiB per idle mTLS connection (target <= 64 KiB: $(verdict "$m_per" 64 '<='))"
