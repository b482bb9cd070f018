#!/usr/bin/env bash
# How often a proxy's peers wake up per request, and what each side's CPU costs per
# request, from many short runs that alternate the proxies (medians are printed: on a
# shared 2-vCPU machine a single run moves 10-15% with the neighbours).
#
#   benches/proxy/wakeups.sh                                  # lb-proxy and HAProxy
#   LB_PROXY_BEFORE=old/lb-proxy benches/proxy/wakeups.sh     # + the binary from before a change
#   C=256 ROUNDS=8 DURATION=3 benches/proxy/wakeups.sh
#
# The setup is run.sh's (same templates: four nginx backends in one worker on core
# $LOADGEN_CPU, each proxy alone on core $PROXY_CPU with one thread, wrk -t1 beside the
# backends). Each run: a 2 s warm-up, then $DURATION s of wrk under `perf stat`, with a
# second `perf stat` on the backends' nginx worker, counting epoll_wait calls. Per
# request:
#   - proxy us: the proxy's utime + stime (/proc/PID/stat) / requests
#   - load us: the load core's work, wrk's task-clock + the backend worker's utime +
#     stime / requests (the same work with every proxy, unless the proxy makes its
#     peers wake and wait more often)
#   - backend and wrk epoll_wait: how often each peer found nothing left to do and asked
#     the kernel again (a peer fed several messages per wake-up calls it less)
#
# Output: benches/proxy/out/wakeups-<timestamp>/: runs.tsv, summary.md (also printed).
#
# Knobs (defaults in brackets): C [64] connections, DURATION [3] seconds measured per
# run, ROUNDS [8], PROXIES [lbproxy haproxy], LB_PROXY [target/release/lb-proxy],
# LB_PROXY_BEFORE [] (adds "lbbefore"), SKIP_BUILD [0], SKIP_INSTALL [0], PROXY_CPU [0],
# LOADGEN_CPU [1], PORT_BASE [18280], BACKEND_BASE [19201].
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

C=${C:-64}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-8}
PROXIES=${PROXIES:-"lbproxy haproxy"}
LB_PROXY=${LB_PROXY:-$ROOT/target/release/lb-proxy}
LB_PROXY_BEFORE=${LB_PROXY_BEFORE:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PROXY_CPU=${PROXY_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT_BASE=${PORT_BASE:-18280}
BACKEND_BASE=${BACKEND_BASE:-19201}

log() { printf '[proxy-wakeups %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in C DURATION ROUNDS PROXY_CPU LOADGEN_CPU PORT_BASE BACKEND_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((C > 0 && DURATION > 0 && ROUNDS > 0)) || die "C, DURATION and ROUNDS must be above 0"
[[ -n $LB_PROXY_BEFORE ]] && PROXIES="lbbefore $PROXIES"
for p in $PROXIES; do
    case $p in lbproxy | lbbefore | haproxy) ;; *) die "unknown proxy '$p' (lbproxy, lbbefore, haproxy)" ;; esac
done

# shellcheck source=benches/proxy/common.sh
. "$HERE/common.sh"

need=()
have wrk || need+=(wrk)
have haproxy || need+=(haproxy)
have nginx || need+=(nginx)
have perf || need+=(linux-perf)
have taskset || need+=(util-linux)
have python3 || need+=(python3)
install_missing "${need[@]}"
perf stat -e syscalls:sys_enter_epoll_wait true >/dev/null 2>&1 ||
    die "perf cannot count syscalls:sys_enter_epoll_wait here (tracepoints need root or perf_event_paranoid <= -1)"

if [[ " $PROXIES " == *" lbproxy "* ]] && ((SKIP_BUILD == 0)); then
    log "building lb-proxy (release)"
    (cd "$ROOT" && cargo build --release -p lb-proxy-bin) || die "build failed"
fi

OUT=$HERE/out/wakeups-$(date +%Y%m%d-%H%M%S)
RUN=$OUT/run
mkdir -p "$RUN/tmp"
ln -sfn "$OUT" "$HERE/out/wakeups-latest"
log "output in $OUT"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
counted() { awk -F, -v e="$2" '$3 ~ e { print $1; exit }' "$1"; } # perf stat -x, output

start_backends
worker=$(pgrep -P "$BACKENDS_PID" | head -1)
[[ -n $worker ]] || die "no nginx worker under the backends' master $BACKENDS_PID"
HZ=$(getconf CLK_TCK)

port=$PORT_BASE
declare -A PORT
for p in $PROXIES; do
    port=$((port + 2))
    port_open "$port" && die "port $port is in use (set PORT_BASE)"
    PORT[$p]=$port
    case $p in
        lbproxy | lbbefore)
            bin=$LB_PROXY
            [[ $p == lbbefore ]] && bin=$LB_PROXY_BEFORE
            [[ -x $bin ]] || die "$p: no binary at $bin"
            render lb-proxy.toml.in "$port" "$RUN/$p.toml" "$((port + 1))"
            ;;
        haproxy) render haproxy.cfg.in "$port" "$RUN/haproxy.cfg" ;;
    esac
done

printf 'round\tproxy\treq_s\tproxy_us\tload_us\tbackend_epoll\twrk_epoll\n' >"$OUT/runs.tsv"
for round in $(seq "$ROUNDS"); do
    for p in $PROXIES; do
        port=${PORT[$p]}
        case $p in
            lbproxy) cmd=(env TOKIO_WORKER_THREADS=1 "$LB_PROXY" run --config "$RUN/$p.toml") ;;
            lbbefore) cmd=(env TOKIO_WORKER_THREADS=1 "$LB_PROXY_BEFORE" run --config "$RUN/$p.toml") ;;
            haproxy) cmd=(haproxy -db -f "$RUN/haproxy.cfg") ;;
        esac
        taskset -c "$PROXY_CPU" "${cmd[@]}" >"$OUT/$p.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_port "$port" "$pid" "$p"
        timeout 60 taskset -c "$LOADGEN_CPU" wrk -t1 -c"$C" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
        p0=$(cpu_ticks "$pid") w0=$(cpu_ticks "$worker")
        taskset -c "$LOADGEN_CPU" perf stat -x, -e syscalls:sys_enter_epoll_wait -p "$worker" -o "$OUT/perf-backend.csv" &
        perf_pid=$!
        timeout $((DURATION + 60)) taskset -c "$LOADGEN_CPU" perf stat -x, -e syscalls:sys_enter_epoll_wait,task-clock \
            -o "$OUT/perf-wrk.csv" wrk -t1 -c"$C" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$OUT/wrk.txt" 2>&1 ||
            die "$p: wrk failed; see $OUT/wrk.txt"
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        p1=$(cpu_ticks "$pid") w1=$(cpu_ticks "$worker")
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        grep -q "Non-2xx\|Socket errors" "$OUT/wrk.txt" && die "$p: errors in the run; see $OUT/wrk.txt"
        req=$(awk '/requests in/ { print $1; exit }' "$OUT/wrk.txt")
        { [[ $req =~ ^[0-9]+$ ]] && ((req > 0)); } || die "$p: no request count in $OUT/wrk.txt"
        awk -v r="$round" -v p="$p" -v req="$req" -v d="$DURATION" -v hz="$HZ" \
            -v pc=$((p1 - p0)) -v wc=$((w1 - w0)) -v wrk_ms="$(counted "$OUT/perf-wrk.csv" task-clock)" \
            -v be="$(counted "$OUT/perf-backend.csv" epoll_wait)" -v we="$(counted "$OUT/perf-wrk.csv" epoll_wait)" \
            'BEGIN { printf "%d\t%s\t%.0f\t%.2f\t%.2f\t%.3f\t%.3f\n", r, p, req / d, pc / hz * 1e6 / req,
                (wc / hz * 1e3 + wrk_ms) * 1e3 / req, be / req, we / req }' >>"$OUT/runs.tsv"
        log "round $round $p: $(tail -1 "$OUT/runs.tsv" | cut -f3) req/s"
    done
done

{
    echo "# Peer wake-ups per request ($C connections, $ROUNDS rounds of $DURATION s)"
    echo
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "command: C=$C DURATION=$DURATION ROUNDS=$ROUNDS PROXIES=\"$PROXIES\" benches/proxy/wakeups.sh"
    echo
    echo "Medians over the rounds (req/s per round in the last column):"
    echo
    echo "| proxy | req/s | proxy CPU us per request | load core CPU us per request | backend epoll_wait per request | wrk epoll_wait per request | req/s per round |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    python3 - "$OUT/runs.tsv" <<'EOF'
import collections, statistics, sys
rows = collections.OrderedDict()
for line in list(open(sys.argv[1]))[1:]:
    f = line.split("\t")
    rows.setdefault(f[1], []).append([float(x) for x in f[2:7]])
names = {"lbproxy": "lb-proxy", "lbbefore": "lb-proxy (before)", "haproxy": "HAProxy"}
for p, runs in rows.items():
    med = [statistics.median(r[i] for r in runs) for i in range(5)]
    print("| %s | %.0f | %.2f | %.2f | %.3f | %.3f | %s |" % (
        names[p], med[0], med[1], med[2], med[3], med[4], ", ".join("%.0f" % r[0] for r in runs)))
EOF
} >"$OUT/summary.md"
cat "$OUT/summary.md"
