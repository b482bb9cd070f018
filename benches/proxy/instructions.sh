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

have() { command -v "$1" >/dev/null 2>&1; }
need=()
have valgrind || need+=(valgrind)
have callgrind_control || need+=(valgrind)
have haproxy || need+=(haproxy)
have nginx || need+=(nginx)
have taskset || need+=(util-linux)
have python3 || need+=(python3)
if ((${#need[@]})); then
    ((SKIP_INSTALL == 0)) || die "missing ${need[*]} and SKIP_INSTALL=1"
    have apt-get || die "missing ${need[*]} and no apt-get here; install them by hand"
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    log "installing ${need[*]}"
    # Keep the packages' init scripts from starting a system nginx/haproxy on :80.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    ok=1
    "${sudo[@]}" timeout 600 apt-get update -q || ok=0
    ((ok)) && { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${need[@]}" || ok=0; }
    ((made_policy)) && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    ((ok)) || die "apt-get failed"
fi

if [[ " $PROXIES " == *" lbproxy "* ]] && ((SKIP_BUILD == 0)); then
    log "building lb-proxy (release)"
    (cd "$ROOT" && cargo build --release -p lb-proxy-bin) || die "build failed"
fi

OUT=$HERE/out/instr-$(date +%Y%m%d-%H%M%S)
RUN=$OUT/run
mkdir -p "$RUN/tmp"
ln -sfn "$OUT" "$HERE/out/instr-latest"
log "output in $OUT"

PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do [[ -d /proc/$p ]] || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT INT TERM

B1=$BACKEND_BASE B2=$((BACKEND_BASE + 1)) B3=$((BACKEND_BASE + 2)) B4=$((BACKEND_BASE + 3))
S=$((BACKEND_BASE + 4)) # the slow backend's ports are in the templates, never used here
USER_LINE=""
((EUID == 0)) && USER_LINE="user root root;"
render() { # template listen-port output [admin-port]
    sed -e "s|@RUN@|$RUN|g" -e "s|@USER@|$USER_LINE|g" -e "s|@PORT@|$2|g" \
        -e "s|@ADMIN@|${4:-$((PORT_BASE + 1))}|g" -e "s|@B1@|$B1|g" -e "s|@B2@|$B2|g" \
        -e "s|@B3@|$B3|g" -e "s|@B4@|$B4|g" -e "s|@S1@|$S|g" -e "s|@S2@|$((S + 1))|g" \
        -e "s|@S3@|$((S + 2))|g" -e "s|@S4@|$((S + 3))|g" "$HERE/$1" >"$3"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid name
    local n=0
    until port_open "$1"; do
        [[ -d /proc/$2 ]] || die "$3 exited at start; see $OUT/$3.log"
        ((n++ < 600)) || die "$3 did not open port $1 in 60 s; see $OUT/$3.log"
        sleep 0.1
    done
}

render backends-nginx.conf.in 0 "$RUN/backends-nginx.conf"
for b in $B1 $B2 $B3 $B4; do port_open "$b" && die "port $b is in use (set BACKEND_BASE)"; done
taskset -c "$LOADGEN_CPU" nginx -p "$RUN" -c "$RUN/backends-nginx.conf" >"$OUT/backends.log" 2>&1 &
PIDS+=($!)
wait_port "$B4" "$!" backends

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
