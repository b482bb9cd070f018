#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a measure that the
# same binary repeats within about 0.5% on a machine whose timings move 10-15% between
# rounds, so a change to the request path can be judged alone.
#
#   benches/proxy/instructions.sh                              # lb-proxy and HAProxy
#   LB_PROXY_BEFORE=old/lb-proxy benches/proxy/instructions.sh # + the binary from before a change
#
# Each proxy in turn runs under `valgrind --tool=callgrind` on CPU $PROXY_CPU, in front of
# the four nginx backends of run.sh (same templates). count.py sends $WARM requests
# (connections open, pools fill; not counted), callgrind's counters are zeroed, count.py
# sends $N requests over $C keep-alive connections, and the counters are dumped: per
# request = the dump's total / $N, everything the process ran in user space included
# (the runtime, the allocator, libc).
#
# What it does not count: the kernel (syscalls, the network stack), cache misses, and
# what batching is worth: under callgrind every proxy runs some 30x slower, so each
# epoll_wait returns more events than in run.sh's runs. Compare it with run.sh's
# figures, not instead of them.
#
# Output: benches/proxy/out/instr-<timestamp>/: summary.md (also printed), the callgrind
# files (`callgrind_annotate --inclusive=yes FILE` lists where the instructions went).
#
# Knobs (defaults in brackets): N [10000] requests counted, C [64] connections,
# WARM [2000] requests before counting, PROXIES [lbproxy haproxy], LB_PROXY
# [target/release/lb-proxy], LB_PROXY_BEFORE [] (adds "lbbefore"), SKIP_BUILD [0],
# SKIP_INSTALL [0], PROXY_CPU [0], LOADGEN_CPU [1], PORT_BASE [18180],
# BACKEND_BASE [19101].
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

N=${N:-10000}
C=${C:-64}
WARM=${WARM:-2000}
PROXIES=${PROXIES:-"lbproxy haproxy"}
LB_PROXY=${LB_PROXY:-$ROOT/target/release/lb-proxy}
LB_PROXY_BEFORE=${LB_PROXY_BEFORE:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PROXY_CPU=${PROXY_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT_BASE=${PORT_BASE:-18180}
BACKEND_BASE=${BACKEND_BASE:-19101}

log() { printf '[proxy-instructions %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in N C WARM PROXY_CPU LOADGEN_CPU PORT_BASE BACKEND_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((C > 0 && N >= C && WARM >= C)) || die "need 0 < C <= N and C <= WARM"
[[ -n $LB_PROXY_BEFORE ]] && PROXIES="lbbefore $PROXIES"
for p in $PROXIES; do
    case $p in lbproxy | lbbefore | haproxy) ;; *) die "unknown proxy '$p' (lbproxy, lbbefore, haproxy)" ;; esac
done

# shellcheck source=benches/proxy/common.sh
. "$HERE/common.sh"

need=()
have valgrind || need+=(valgrind)
have callgrind_control || need+=(valgrind)
have haproxy || need+=(haproxy)
have nginx || need+=(nginx)
have taskset || need+=(util-linux)
have python3 || need+=(python3)
install_missing "${need[@]}"

if [[ " $PROXIES " == *" lbproxy "* ]] && ((SKIP_BUILD == 0)); then
    log "building lb-proxy (release)"
    (cd "$ROOT" && cargo build --release -p lb-proxy-bin) || die "build failed"
fi

OUT=$HERE/out/instr-$(date +%Y%m%d-%H%M%S)
RUN=$OUT/run
mkdir -p "$RUN/tmp"
ln -sfn "$OUT" "$HERE/out/instr-latest"
log "output in $OUT"

start_backends

{
    echo "# User-space instructions per request (callgrind)"
    echo
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "command: N=$N C=$C WARM=$WARM PROXIES=\"$PROXIES\" benches/proxy/instructions.sh"
    echo "$(valgrind --version); $(haproxy -v 2>&1 | head -1)"
    echo
    echo "| proxy | instructions per request | vs HAProxy |"
    echo "|---|---:|---:|"
} >"$OUT/summary.md"

declare -A PER
port=$PORT_BASE
for p in $PROXIES; do
    port=$((port + 2))
    port_open "$port" && die "port $port is in use (set PORT_BASE)"
    case $p in
        lbproxy | lbbefore)
            bin=$LB_PROXY
            [[ $p == lbbefore ]] && bin=$LB_PROXY_BEFORE
            [[ -x $bin ]] || die "$p: no binary at $bin"
            render lb-proxy.toml.in "$port" "$RUN/$p.toml" "$((port + 1))"
            cmd=("$bin" run --config "$RUN/$p.toml")
            ;;
        haproxy)
            render haproxy.cfg.in "$port" "$RUN/haproxy.cfg"
            cmd=(haproxy -db -f "$RUN/haproxy.cfg")
            ;;
    esac
    # The environment is set outside valgrind: it instruments what it starts, not what
    # that execs.
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$p.%p" \
        "${cmd[@]}" >"$OUT/$p.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" "$p"
    load() { timeout 900 taskset -c "$LOADGEN_CPU" python3 "$HERE/count.py" "$port" "$C" "$1"; }
    load "$WARM" >/dev/null || die "$p: the warm-up load failed"
    callgrind_control -z "$pid" >/dev/null || die "$p: callgrind_control -z failed"
    done_line=$(load "$N") || die "$p: the counted load failed: $done_line"
    callgrind_control -d "$pid" >/dev/null || die "$p: callgrind_control -d failed"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The dump made after zeroing is part 1 (one process per proxy: one file).
    file=$OUT/callgrind.$p.$pid.1
    [[ -f $file ]] || die "$p: no callgrind dump $file"
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
    [[ $total =~ ^[0-9]+$ ]] || die "$p: no total in $file"
    PER[$p]=$((total / N))
    log "$p: $total instructions over $N requests (${done_line#done "$N" }s under callgrind): ${PER[$p]} per request"
done

for p in $PROXIES; do
    ratio="-"
    [[ -n ${PER[haproxy]:-} ]] && ratio=$(awk -v a="${PER[$p]}" -v b="${PER[haproxy]}" 'BEGIN { printf "%.2fx", a / b }')
    name=$p
    case $p in lbproxy) name=lb-proxy ;; lbbefore) name="lb-proxy (before)" ;; haproxy) name=HAProxy ;; esac
    echo "| $name | ${PER[$p]} | $ratio |" >>"$OUT/summary.md"
done
cat "$OUT/summary.md"
