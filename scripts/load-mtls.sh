#!/usr/bin/env bash
# Load run for issue #2, section 7 (results and method: docs/benchmarks.md, "Load run").
#
#   bash scripts/load-mtls.sh
#
# 1. Throughput: the axum example (`examples/axum_mtls.rs`, release build) as a TLS-only
#    server (`--allow-unauthenticated`: no client certificate asked of the client, no
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
# Knobs (environment): ROUNDS (9), DURATION (5 s), WARMUP (1 s), CONNS (50), THREADS (2),
# IDLE (10000), PIN (split: server on CPU 0, clients on CPU 1; none: no pinning),
# NICE (0; e.g. -10 as root: servers and clients alike run at that priority, and with
# autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled) the script's session
# group is given that nice value for the length of the run, because with autogroups a
# process nice value does not count against other sessions; so that other work on a shared
# machine disturbs the run less), CARGO_TARGET_DIR (default: target).
# Installs nothing. Needs wrk (Debian: apt-get install wrk) and, for the wrk mTLS runs, cc
# (Debian: apt-get install gcc).
set -euo pipefail

ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
IDLE=${IDLE:-10000}
PIN=${PIN:-split}
NICE=${NICE:-0}

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
    if [ -n "${AUTOGROUP_NICE_BEFORE:-}" ]; then
        echo "$AUTOGROUP_NICE_BEFORE" >"/proc/$$/autogroup" || true
    fi
}
trap cleanup EXIT

AUTOGROUP_NICE_BEFORE=
if [ "$NICE" != 0 ]; then
    [ "$NICE" -ge 0 ] || [ "$(id -u)" = 0 ] || die "NICE=$NICE needs root"
    SERVER_PIN=(nice -n "$NICE" "${SERVER_PIN[@]}")
    CLIENT_PIN=(nice -n "$NICE" "${CLIENT_PIN[@]}")
    if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] &&
        [ -w "/proc/$$/autogroup" ]; then
        # "/autogroup-N nice V": put back at exit (the group is the caller's session).
        AUTOGROUP_NICE_BEFORE=$(awk '{ print $3 }' "/proc/$$/autogroup")
        echo "$NICE" >"/proc/$$/autogroup" || die "cannot set the session's autogroup nice"
    fi
fi

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
start_server tls-only $TLS_PORT --allow-unauthenticated
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

# A RESULT line field of the loadgen's output.
result_field() { sed -n "s/^RESULT .* $2=\([0-9.]*\).*/\1/p" "$1"; }
# User + system CPU time of a process, microseconds (clock ticks from /proc/PID/stat).
cpu_us() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.0f", ($12 + $13) * 1e6 / hz }' \
        "/proc/$1/stat"
}

# run_loadgen SERVER PORT PID [cert args...] -> "rps p50 p99 server-CPU-us-per-request"
run_loadgen() {
    local server=$1 port=$2 pid=$3
    shift 3
    local f=$WORK/loadgen-$server.$round.txt
    loadgen --addr "127.0.0.1:$port" "$@" -c "$CONNS" -t "$THREADS" -d "$DURATION" \
        --warmup "$WARMUP" --label "$server" --server-pid "$pid" >"$f" || {
        cat "$f" >&2
        die "loadgen $server round $round failed"
    }
    echo "$(result_field "$f" rps) $(result_field "$f" p50_us)us" \
        "$(result_field "$f" p99_us)us $(result_field "$f" server_cpu_us_per_req)"
}

# run_wrk SERVER PORT PID [wrapper...] -> "rps p50 p99 server-CPU-us-per-request"
run_wrk() {
    local server=$1 port=$2 pid=$3
    shift 3
    local f=$WORK/wrk-$server.$round.txt c0 c1
    # wrk has no warm-up option: a short run first, not counted.
    "$@" "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
        "https://127.0.0.1:$port/" >/dev/null
    c0=$(cpu_us "$pid")
    "$@" "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        "https://127.0.0.1:$port/" >"$f"
    c1=$(cpu_us "$pid")
    if grep -q "Non-2xx\|Socket errors" "$f" || ! grep -q "^Requests/sec:" "$f"; then
        cat "$f" >&2
        die "wrk $server round $round had errors"
    fi
    awk -v cpu=$((c1 - c0)) '
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { n = $1 }
        $1 == "50%" { p50 = $2 }
        $1 == "99%" { p99 = $2 }
        END { printf "%.0f %s %s %.2f\n", rps, p50, p99, cpu / n }' "$f"
}

median() { # FORMAT VALUES...
    local fmt=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v fmt="$fmt" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf fmt, m }'
}
div() { awk -v a="$1" -v b="$2" -v fmt="$3" 'BEGIN { printf fmt, a / b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }

CLIENTS=(loadgen)
[ "$HAVE_CC" = 0 ] || CLIENTS+=(wrk)
declare -A RPS CPU RATIO
measure() { # CLIENT SERVER -> one result
    local client=$1 server=$2
    case "$client/$server" in
    loadgen/tls) run_loadgen tls $TLS_PORT "$TLS_PID" ;;
    loadgen/mtls) run_loadgen mtls $MTLS_PORT "$MTLS_PID" "${CERT_ARGS[@]}" ;;
    wrk/tls) run_wrk tls $TLS_PORT "$TLS_PID" ;;
    wrk/mtls) run_wrk mtls $MTLS_PORT "$MTLS_PID" wrk_mtls ;;
    esac
}

echo "== throughput: $ROUNDS rounds, $CONNS keep-alive connections, $THREADS client threads," \
    "${WARMUP} s warm-up + ${DURATION} s measured per run, PIN=$PIN NICE=$NICE" \
    "(session autogroup: $(cat /proc/$$/autogroup 2>/dev/null || echo none))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ROW='%-5s %-7s | %-9s %-9s %-9s %-7s | %-9s %-9s %-9s %-7s | %-6s %-6s\n'
# shellcheck disable=SC2059
printf "$ROW" round client "TLS req/s" p50 p99 "CPU/req" "mTLS r/s" p50 p99 "CPU/req" "req/s" "CPU"
# shellcheck disable=SC2059
printf "$ROW" "" "" "" "" "" "(us)" "" "" "" "(us)" "mTLS/" "TLS/"
# shellcheck disable=SC2059
printf "$ROW" "" "" "" "" "" "" "" "" "" "" "TLS" "mTLS"
for round in $(seq 1 "$ROUNDS"); do
    for client in "${CLIENTS[@]}"; do
        # Alternate which server goes first: A B, B A, ...
        if [ $((round % 2)) = 1 ]; then
            a=$(measure "$client" tls)
            b=$(measure "$client" mtls)
        else
            b=$(measure "$client" mtls)
            a=$(measure "$client" tls)
        fi
        read -r a_rps a_p50 a_p99 a_cpu <<<"$a"
        read -r b_rps b_p50 b_p99 b_cpu <<<"$b"
        RPS[$client/tls]+=" $a_rps"
        RPS[$client/mtls]+=" $b_rps"
        CPU[$client/tls]+=" $a_cpu"
        CPU[$client/mtls]+=" $b_cpu"
        RATIO[$client/rps]+=" $(div "$b_rps" "$a_rps" %.4f)"
        RATIO[$client/cpu]+=" $(div "$a_cpu" "$b_cpu" %.4f)"
        # shellcheck disable=SC2059
        printf "$ROW" "$round" "$client" "$a_rps" "$a_p50" "$a_p99" "$a_cpu" \
            "$b_rps" "$b_p50" "$b_p99" "$b_cpu" \
            "$(pct "$b_rps" "$a_rps")%" "$(div "$a_cpu" "$b_cpu" %.3f)"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
stop_server "$TLS_PID"
stop_server "$MTLS_PID"

echo "== medians over $ROUNDS rounds"
declare -A MED
for client in "${CLIENTS[@]}"; do
    for key in tls mtls; do
        # shellcheck disable=SC2086
        MED[$client/$key/rps]=$(median %.0f ${RPS[$client/$key]})
        # shellcheck disable=SC2086
        MED[$client/$key/cpu]=$(median %.2f ${CPU[$client/$key]})
    done
    # shellcheck disable=SC2086
    MED[$client/paired]=$(median %.4f ${RATIO[$client/rps]})
    # shellcheck disable=SC2086
    MED[$client/cpu_paired]=$(median %.4f ${RATIO[$client/cpu]})
    MED[$client/ratio]=$(pct "${MED[$client/mtls/rps]}" "${MED[$client/tls/rps]}")
    echo "$client: TLS-only ${MED[$client/tls/rps]} req/s (${MED[$client/tls/cpu]} us server" \
        "CPU per request), mTLS ${MED[$client/mtls/rps]} req/s (${MED[$client/mtls/cpu]} us)"
    echo "  mTLS/TLS-only: ${MED[$client/ratio]} % of the medians;" \
        "median of the per-round ratios $(div "${MED[$client/paired]}" 0.01 %.1f) %;" \
        "server CPU per request TLS-only/mTLS $(div "${MED[$client/cpu_paired]}" 1 %.3f)"
done
if [ "$HAVE_CC" = 1 ]; then
    echo "loadgen/wrk: $(pct "${MED[loadgen/tls/rps]}" "${MED[wrk/tls/rps]}") % on the" \
        "TLS-only server, $(pct "${MED[loadgen/mtls/rps]}" "${MED[wrk/mtls/rps]}") % on the mTLS server"
fi

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
idle_run tls-only 18446 --allow-unauthenticated --
t_before=$MEM_BEFORE t_after=$MEM_AFTER t_per=$MEM_PER
echo "mTLS server:     VmRSS $m_before KiB -> $m_after KiB: $m_per KiB per connection (target <= 64 KiB)"
echo "TLS-only server: VmRSS $t_before KiB -> $t_after KiB: $t_per KiB per connection"

echo "== summary"
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "met" : "NOT met" }'; }
for client in "${CLIENTS[@]}"; do
    printf 'throughput (%s): mTLS %s / TLS-only %s req/s = %s %% (target >= 95 %%: %s)\n' \
        "$client" "${MED[$client/mtls/rps]}" "${MED[$client/tls/rps]}" "${MED[$client/ratio]}" \
        "$(verdict "${MED[$client/ratio]}" 95 '>=')"
done
echo "memory: $m_per KiB per idle mTLS connection (target <= 64 KiB: $(verdict "$m_per" 64 '<='))"
