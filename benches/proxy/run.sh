#!/usr/bin/env bash
# Side-by-side proxy benchmark: lb-proxy vs HAProxy vs nginx, on loopback.
#
#   benches/proxy/run.sh                      # DURATION=10 ROUNDS=2 by default
#   DURATION=30 ROUNDS=5 benches/proxy/run.sh
#   PROFILE=1 benches/proxy/run.sh            # extra lb-proxy run under `perf record`
#   LB_PROXY_BEFORE=old/lb-proxy benches/proxy/run.sh   # + the binary from before a change
#   SKIP_BUILD=1 PROXIES="haproxy nginx" DURATION=2 ROUNDS=1 IDLE_CONNS=500 \
#       UPSTREAM_IDLE=200 benches/proxy/run.sh   # a quick check of the script, no cargo
#
# Setup (all on 127.0.0.1):
#   - four backends, one nginx instance with four `server` blocks (ports 19001-19004)
#     answering `ok\n` with keep-alive, started once and shared by every proxy;
#   - a slow backend (benches/proxy/slowbackend.py, ports 19005-19008) answering `ok\n`
#     with keep-alive after $SLOW_DELAY seconds, which every proxy reaches for requests
#     with `Host: slow` (used by the idle upstream measure only);
#   - each proxy pinned to CPU $PROXY_CPU with taskset and limited to one core's worth of
#     threads: lb-proxy with TOKIO_WORKER_THREADS=1, HAProxy `nbthread 1`, nginx
#     `worker_processes 1`; all three keep connections to the backends alive;
#   - with LB_PROXY_BEFORE, a fourth proxy "lbbefore" (shown as "lb-proxy (before)"): that
#     binary with the same config, on its own ports, measured like the others, so one run
#     compares a change with what it changes (paired: same machine, same minutes);
#   - wrk (1 thread, 64 then 256 connections, --latency) and the backends pinned to
#     $LOADGEN_CPU;
#   - runs alternate lbproxy, haproxy, nginx, lbproxy, ... for $ROUNDS rounds at each
#     connection count (lbproxy and lbbefore swap places every other round), each run
#     preceded by a short unmeasured warm-up and bounded by `timeout`;
#   - then, per proxy, the memory of idle connections (RSS of the proxy's processes,
#     clients benches/proxy/idle.py):
#     * client connections: RSS before and after $IDLE_CONNS keep-alive connections each
#       send one request and stay idle, divided by their number;
#     * upstream connections: with those still open, $UPSTREAM_IDLE more clients send
#       `Host: slow` requests all at once, so the proxy opens about one connection to
#       the slow backend per request; once all are answered, clients and upstream
#       connections stay idle. U = the proxy's established connections to the slow
#       backend (ss -tnp), and per idle upstream connection = (RSS growth -
#       $UPSTREAM_IDLE x the KiB per idle client connection above) / U. U differs by
#       proxy: each keeps what its pool allows (lb-proxy 256 per endpoint, HAProxy
#       unbounded with http-reuse always, nginx `keepalive 1024`);
#   - CPU seconds of each proxy (process and children, utime+stime from /proc/PID/stat)
#     are measured around each run.
#
# Output: benches/proxy/out/<timestamp>/ (and out/latest): rendered configs, logs, raw
# wrk output, results.tsv, idle.tsv and idle.md (the memory measures), summary.md (the
# tables, also printed).
#
# Environment knobs (defaults in brackets):
#   DURATION [10]  seconds per measured run     ROUNDS [2]      rounds
#   WARMUP [2]     seconds of warm-up per run   CONNS ["64 256"] wrk connections (a list)
#   IDLE_CONNS [5000] idle client connections for the memory measure (0 skips it; the
#                  upstream measure then does not subtract the clients' share)
#   UPSTREAM_IDLE [1000] clients (requests at once) of the idle upstream measure (0 skips it)
#   SLOW_DELAY [2] seconds the slow backend takes to answer (a number, may have decimals)
#   THREADS [1]    wrk threads                  PROXIES [lbproxy haproxy nginx]
#   PROXY_CPU [0]  core for the proxies         LOADGEN_CPU [1] core for wrk + backends
#   WAIT_LOAD [1.0] wait for 1-min load below this before measuring (0 = don't wait)
#   WAIT_MAX [300]  ...for at most this many seconds
#   SKIP_INSTALL [0] SKIP_BUILD [0]  LB_PROXY [target/release/lb-proxy]
#                  (the build and LB_PROXY are needed only with lbproxy in PROXIES)
#   LB_PROXY_BEFORE []  path of another lb-proxy binary (e.g. built at the commit before a
#                  change): adds "lbbefore" to PROXIES (before lbproxy) and, to the
#                  summary, lb-proxy's ratios after vs before
#   LB_PROXY_ARGS []  extra global arguments for lb-proxy (both binaries), e.g. "--log-format json"
#   PROFILE [0]    1: after the rounds, one more lb-proxy run under `perf record --call-graph dwarf`
#   SYSCALLS [1]   1: after the rounds, one short run per proxy under `perf stat` counting
#                  syscalls and context switches per request (skipped without perf)
#   PORT_BASE [18080]  lb-proxy PORT_BASE, its admin +1, haproxy +2, nginx +3,
#                  lb-proxy (before) +4, its admin +5
#   BACKEND_BASE [19001]  backends BACKEND_BASE..BACKEND_BASE+3, slow backend +4..+7
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
CONNS_LIST=${CONNS:-"64 256"}
IDLE_CONNS=${IDLE_CONNS:-5000}
UPSTREAM_IDLE=${UPSTREAM_IDLE:-1000}
SLOW_DELAY=${SLOW_DELAY:-2}
THREADS=${THREADS:-1}
PROXIES=${PROXIES:-"lbproxy haproxy nginx"}
PROXY_CPU=${PROXY_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
WAIT_LOAD=${WAIT_LOAD:-1.0}
WAIT_MAX=${WAIT_MAX:-300}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
LB_PROXY=${LB_PROXY:-$ROOT/target/release/lb-proxy}
LB_PROXY_BEFORE=${LB_PROXY_BEFORE:-}
LB_PROXY_ARGS=${LB_PROXY_ARGS:-}
PROFILE=${PROFILE:-0}
SYSCALLS=${SYSCALLS:-1}
PORT_BASE=${PORT_BASE:-18080}
BACKEND_BASE=${BACKEND_BASE:-19001}

PORT_LB=$PORT_BASE
PORT_LB_ADMIN=$((PORT_BASE + 1))
PORT_HAPROXY=$((PORT_BASE + 2))
PORT_NGINX=$((PORT_BASE + 3))
PORT_LB_BEFORE=$((PORT_BASE + 4))
PORT_LB_BEFORE_ADMIN=$((PORT_BASE + 5))
B1=$BACKEND_BASE B2=$((BACKEND_BASE + 1)) B3=$((BACKEND_BASE + 2)) B4=$((BACKEND_BASE + 3))
# the slow backend (slowbackend.py), for the idle upstream measure
S1=$((BACKEND_BASE + 4)) S2=$((BACKEND_BASE + 5)) S3=$((BACKEND_BASE + 6)) S4=$((BACKEND_BASE + 7))

log() { printf '[proxy-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in DURATION ROUNDS WARMUP THREADS WAIT_MAX IDLE_CONNS UPSTREAM_IDLE PORT_BASE BACKEND_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ $SLOW_DELAY =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "SLOW_DELAY must be a number of seconds, got '$SLOW_DELAY'"
# whole seconds at least SLOW_DELAY, for timeouts
SLOW_DELAY_CEIL=$(awk -v d="$SLOW_DELAY" 'BEGIN { c = int(d); if (c < d) c++; print c }')
for c in $CONNS_LIST; do
    [[ $c =~ ^[0-9]+$ ]] && ((c > 0)) || die "CONNS must be whole numbers > 0, got '$CONNS_LIST'"
done
# The syscall and profile runs use the first count.
CONNS=${CONNS_LIST%% *}
((DURATION > 0 && ROUNDS > 0 && THREADS > 0)) || die "DURATION, ROUNDS, THREADS must be > 0"

has_proxy() { [[ " $PROXIES " == *" $1 "* ]]; }
if [[ -n $LB_PROXY_BEFORE ]]; then
    # The paired "before" binary runs next to lb-proxy (before it in each round's order).
    if ! has_proxy lbbefore; then
        if has_proxy lbproxy; then
            PROXIES=$(echo " $PROXIES " | sed 's/ lbproxy / lbbefore lbproxy /' | xargs)
        else
            PROXIES="lbbefore $PROXIES"
        fi
    fi
else
    has_proxy lbbefore && die "lbbefore in PROXIES needs LB_PROXY_BEFORE (the binary to run)"
fi
for proxy in $PROXIES; do
    case $proxy in lbproxy | lbbefore | haproxy | nginx) ;; *) die "unknown proxy '$proxy' (lbproxy, lbbefore, haproxy, nginx)" ;; esac
done
[[ $(echo "$PROXIES" | tr ' ' '\n' | sed '/^$/d' | sort | uniq -d) == "" ]] || die "a proxy appears twice in PROXIES='$PROXIES'"
[[ -n ${PROXIES// /} ]] || die "PROXIES is empty"
# Every port once: the proxies' and the backends' ranges must not overlap.
ALL_PORTS="$PORT_LB $PORT_LB_ADMIN $PORT_HAPROXY $PORT_NGINX $PORT_LB_BEFORE $PORT_LB_BEFORE_ADMIN $B1 $B2 $B3 $B4 $S1 $S2 $S3 $S4"
[[ $(echo "$ALL_PORTS" | tr ' ' '\n' | sort | uniq -d) == "" ]] || die "PORT_BASE..+5 and BACKEND_BASE..+7 overlap; move one of them"
for p in $ALL_PORTS; do ((p > 0 && p < 65536)) || die "port $p out of range (PORT_BASE, BACKEND_BASE)"; done
# nginx's worker_connections (8192) counts client and upstream connections; HAProxy's
# maxconn (8192) the clients. Both idle measures hold theirs at the same time.
((IDLE_CONNS + 2 * UPSTREAM_IDLE <= 8000)) || die "IDLE_CONNS + 2 x UPSTREAM_IDLE must stay within 8000 (nginx's worker_connections 8192)"

# ---------------------------------------------------------------- cleanup ----------
PIDS=()      # processes this script started (proxies, backends, perf)
NAMES=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i pid all=() p
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        [[ -d /proc/$pid ]] || continue
        # remember the children (nginx workers) before the master goes away
        all+=("$pid")
        for p in $(pgrep -P "$pid" 2>/dev/null || true); do all+=("$p"); done
        kill -TERM "$pid" 2>/dev/null || true
    done
    local n=0
    while ((n < 50)); do
        local alive=0
        for p in "${all[@]}"; do [[ -d /proc/$p ]] && alive=1; done
        ((alive)) || break
        sleep 0.1
        n=$((n + 1))
    done
    for p in "${all[@]}"; do
        [[ -d /proc/$p ]] && kill -KILL "$p" 2>/dev/null || true
    done
    ((${#PIDS[@]})) && log "stopped ${NAMES[*]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Thousands of idle connections: the proxies and the idle client need the fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && ((NOFILE < 2 * (IDLE_CONNS + UPSTREAM_IDLE) + 256)); then
    log "WARNING: open files limit $NOFILE: lb-proxy's default max_connections (half of it) may not hold $((IDLE_CONNS + UPSTREAM_IDLE)) idle clients"
fi

# ---------------------------------------------------------------- install ----------
have() { command -v "$1" >/dev/null 2>&1; }
install_missing() {
    local need=()
    have wrk || need+=(wrk)
    have haproxy || need+=(haproxy)
    have nginx || need+=(nginx)
    have curl || need+=(curl)
    have taskset || need+=(util-linux)
    have pgrep || need+=(procps)
    have timeout || need+=(coreutils)
    ((${#need[@]})) || return 0
    ((SKIP_INSTALL == 0)) || die "missing ${need[*]} and SKIP_INSTALL=1"
    local sudo=()
    if ((EUID != 0)); then
        have sudo || die "missing ${need[*]}; run as root or install them"
        sudo=(sudo)
    fi
    have apt-get || die "missing ${need[*]} and no apt-get here; install them by hand"
    log "installing ${need[*]}"
    # Keep the packages' init scripts from starting a system nginx/haproxy on :80.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local ok=1
    "${sudo[@]}" timeout 600 apt-get update -q || ok=0
    if ((ok)); then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${need[@]}" || ok=0
    fi
    ((made_policy)) && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    ((ok)) || die "apt-get failed"
}
install_missing

# ---------------------------------------------------------------- build ------------
if has_proxy lbproxy; then
    if ((SKIP_BUILD == 0)); then
        log "building lb-proxy (release)"
        (cd "$ROOT" && cargo build --release -p lb-proxy-bin) || die "cargo build failed"
    fi
    [[ -x $LB_PROXY ]] || die "no lb-proxy binary at $LB_PROXY"
fi
if has_proxy lbbefore; then
    [[ -x $LB_PROXY_BEFORE ]] || die "no lb-proxy binary at LB_PROXY_BEFORE=$LB_PROXY_BEFORE"
fi
((IDLE_CONNS + UPSTREAM_IDLE == 0)) || have python3 || die "the idle measures need python3 (IDLE_CONNS=0 UPSTREAM_IDLE=0 skip them)"

# ---------------------------------------------------------------- output dir -------
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$HERE/out/$STAMP
RUN=$OUT/run
mkdir -p "$RUN/tmp"
ln -sfn "$STAMP" "$HERE/out/latest"
log "output in $OUT"

USER_LINE=""
((EUID == 0)) && USER_LINE="user root root;"   # workers need no other user on loopback

# Private copies, so a rebuild in the shared target dir during the run changes nothing.
LB_PROXY_SRC=$LB_PROXY
if has_proxy lbproxy; then
    cp "$LB_PROXY" "$RUN/lb-proxy"
    LB_PROXY=$RUN/lb-proxy
fi
LB_PROXY_BEFORE_SRC=$LB_PROXY_BEFORE
if has_proxy lbbefore; then
    cp "$LB_PROXY_BEFORE" "$RUN/lb-proxy-before"
    LB_PROXY_BEFORE=$RUN/lb-proxy-before
fi

render() { # template listen-port output [admin-port]
    sed -e "s|@RUN@|$RUN|g" -e "s|@USER@|$USER_LINE|g" -e "s|@PORT@|$2|g" \
        -e "s|@ADMIN@|${4:-$PORT_LB_ADMIN}|g" -e "s|@B1@|$B1|g" -e "s|@B2@|$B2|g" \
        -e "s|@B3@|$B3|g" -e "s|@B4@|$B4|g" -e "s|@S1@|$S1|g" -e "s|@S2@|$S2|g" \
        -e "s|@S3@|$S3|g" -e "s|@S4@|$S4|g" "$HERE/$1" >"$3"
}
render backends-nginx.conf.in 0 "$RUN/backends-nginx.conf"
render lb-proxy.toml.in "$PORT_LB" "$RUN/lb-proxy.toml"
render lb-proxy.toml.in "$PORT_LB_BEFORE" "$RUN/lb-proxy-before.toml" "$PORT_LB_BEFORE_ADMIN"
render haproxy.cfg.in "$PORT_HAPROXY" "$RUN/haproxy.cfg"
render nginx-proxy.conf.in "$PORT_NGINX" "$RUN/nginx-proxy.conf"

if has_proxy lbproxy; then
    "$LB_PROXY" check "$RUN/lb-proxy.toml" >/dev/null || die "lb-proxy rejects $RUN/lb-proxy.toml"
fi
if has_proxy lbbefore; then
    "$LB_PROXY_BEFORE" check "$RUN/lb-proxy-before.toml" >/dev/null || die "lb-proxy (before) rejects $RUN/lb-proxy-before.toml"
fi
haproxy -c -f "$RUN/haproxy.cfg" >/dev/null || die "haproxy rejects $RUN/haproxy.cfg"
nginx -t -q -p "$RUN" -c "$RUN/backends-nginx.conf" || die "nginx rejects backends-nginx.conf"
nginx -t -q -p "$RUN" -c "$RUN/nginx-proxy.conf" || die "nginx rejects nginx-proxy.conf"

# ---------------------------------------------------------------- machine info -----
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "command: DURATION=$DURATION ROUNDS=$ROUNDS WARMUP=$WARMUP CONNS=\"$CONNS_LIST\" IDLE_CONNS=$IDLE_CONNS UPSTREAM_IDLE=$UPSTREAM_IDLE SLOW_DELAY=$SLOW_DELAY THREADS=$THREADS PROXIES=\"$PROXIES\"${LB_PROXY_BEFORE_SRC:+ LB_PROXY_BEFORE=$LB_PROXY_BEFORE_SRC} benches/proxy/run.sh"
    echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
    echo "kernel: $(uname -r)"
    if has_proxy lbproxy; then
        echo "lb-proxy: $("$LB_PROXY" --version 2>&1) from $LB_PROXY_SRC (git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- lb-core lb-proxy-bin 2>/dev/null || echo ', dirty tree'), sha256 $(sha256sum "$LB_PROXY" | cut -c1-12))"
    fi
    if has_proxy lbbefore; then
        echo "lb-proxy (before): $("$LB_PROXY_BEFORE" --version 2>&1) from $LB_PROXY_BEFORE_SRC (sha256 $(sha256sum "$LB_PROXY_BEFORE" | cut -c1-12))"
    fi
    echo "haproxy: $(haproxy -v 2>&1 | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "lb-proxy args: ${LB_PROXY_ARGS:-none}"
} >"$OUT/meta.txt"

# ---------------------------------------------------------------- helpers ----------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in $ALL_PORTS; do
    port_open "$p" && die "port $p on 127.0.0.1 is already in use (set PORT_BASE/BACKEND_BASE)"
done

start() { # name cpu port cmd...
    local name=$1 cpu=$2 port=$3
    shift 3
    taskset -c "$cpu" "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    NAMES+=("$name")
    local n=0
    until port_open "$port"; do
        [[ -d /proc/$pid ]] || die "$name exited at start; see $OUT/$name.log"
        ((n++ < 100)) || die "$name did not open port $port in 10 s; see $OUT/$name.log"
        sleep 0.1
    done
    eval "PID_$name=$pid"
    log "started $name (pid $pid, cpu $cpu, port $port)"
}

# utime and stime ticks of a process and its children (nginx: master + worker)
cpu_ticks() {
    local u=0 k=0 p s f
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        u=$((u + f[11]))
        k=$((k + f[12]))
    done
    echo "$u $k"
}
CLK_TCK=$(getconf CLK_TCK)


# busy and total jiffies of one core from /proc/stat
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; idle = $5 + $6; print t - idle, t }' /proc/stat
}

check_200() { # name port
    local i code body
    for i in 1 2 3 4; do
        code=$(curl -s -o "$RUN/curl-body" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$2/" || true)
        body=$(cat "$RUN/curl-body" 2>/dev/null || true)
        [[ $code == 200 && $body == ok ]] || die "$1 on port $2 answered '$code' '$body' (want 200 ok); see $OUT/$1.log"
    done
    log "$1 answers 200 ok from the backends"
}

# wrk latency value to milliseconds
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; printf "%.3f", n }'; }

proxy_port() { case $1 in lbproxy) echo "$PORT_LB" ;; lbbefore) echo "$PORT_LB_BEFORE" ;; haproxy) echo "$PORT_HAPROXY" ;; nginx) echo "$PORT_NGINX" ;; esac; }
proxy_pid() { local v="PID_$1"; echo "${!v}"; }
# awk: the name a proxy is shown by in the tables
AWK_NAME='function name(p) { return p == "lbproxy" ? "lb-proxy" : p == "lbbefore" ? "lb-proxy (before)" : p == "haproxy" ? "HAProxy" : p }'

# One `Host: slow` request through each proxy given (and straight to each slow backend
# port given as port:NUMBER), all at once: each takes SLOW_DELAY seconds.
check_slow() {
    local t pids=() i=0 code body port
    for t; do
        port=${t#port:}
        [[ $t == port:* ]] || port=$(proxy_port "$t")
        curl -s -o "$RUN/curl-slow-${t/:/-}" -w '%{http_code}' -H 'Host: slow' --max-time $((SLOW_DELAY_CEIL + 15)) \
            "http://127.0.0.1:$port/" >"$RUN/curl-slow-${t/:/-}.code" 2>/dev/null &
        pids+=($!)
    done
    for t; do
        wait "${pids[i]}" || true # bounded by curl's --max-time
        i=$((i + 1))
        code=$(cat "$RUN/curl-slow-${t/:/-}.code" 2>/dev/null || true)
        body=$(cat "$RUN/curl-slow-${t/:/-}" 2>/dev/null || true)
        [[ $code == 200 && $body == ok ]] || die "$t answered '$code' '$body' to Host: slow (want 200 ok); see $OUT/slowbackend.log and $OUT/*.log"
    done
    log "the slow backend answers 200 ok, through $*"
}

# ---------------------------------------------------------------- start ------------
start backends "$LOADGEN_CPU" "$B4" nginx -p "$RUN" -c "$RUN/backends-nginx.conf"
for b in "$B1" "$B2" "$B3" "$B4"; do
    [[ $(curl -s --max-time 5 "http://127.0.0.1:$b/") == ok ]] || die "backend $b does not answer ok"
done
if ((UPSTREAM_IDLE > 0)); then
    # Listens on S1..S4 in that order: S4 open means all are.
    start slowbackend "$LOADGEN_CPU" "$S4" python3 "$HERE/slowbackend.py" --delay "$SLOW_DELAY" "$S1" "$S2" "$S3" "$S4"
fi

for proxy in $PROXIES; do
    case $proxy in
        lbproxy)
            # shellcheck disable=SC2086 # LB_PROXY_ARGS is a word list on purpose
            start lbproxy "$PROXY_CPU" "$PORT_LB" env TOKIO_WORKER_THREADS=1 "$LB_PROXY" $LB_PROXY_ARGS run --config "$RUN/lb-proxy.toml"
            ;;
        lbbefore)
            # shellcheck disable=SC2086 # LB_PROXY_ARGS is a word list on purpose
            start lbbefore "$PROXY_CPU" "$PORT_LB_BEFORE" env TOKIO_WORKER_THREADS=1 "$LB_PROXY_BEFORE" $LB_PROXY_ARGS run --config "$RUN/lb-proxy-before.toml"
            ;;
        haproxy) start haproxy "$PROXY_CPU" "$PORT_HAPROXY" haproxy -db -f "$RUN/haproxy.cfg" ;;
        nginx) start nginx "$PROXY_CPU" "$PORT_NGINX" nginx -p "$RUN" -c "$RUN/nginx-proxy.conf" ;;
    esac
    check_200 "$proxy" "$(proxy_port "$proxy")"
done
# shellcheck disable=SC2086 # PROXIES is a word list on purpose
((UPSTREAM_IDLE == 0)) || check_slow "port:$S1" "port:$S2" "port:$S3" "port:$S4" $PROXIES

# ---------------------------------------------------------------- quiet machine ----
wait_quiet() {
    [[ $WAIT_LOAD == 0 ]] && return 0
    local waited=0 load
    while :; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        awk -v l="$load" -v m="$WAIT_LOAD" 'BEGIN { exit !(l < m) }' && { log "load $load < $WAIT_LOAD"; return 0; }
        ((waited < WAIT_MAX)) || { log "load still $load after ${WAIT_MAX}s; measuring anyway (noisy)"; return 0; }
        ((waited % 30 == 0)) && log "load $load >= $WAIT_LOAD; waiting (up to ${WAIT_MAX}s)"
        sleep 5
        waited=$((waited + 5))
    done
}
wait_quiet
echo "load before: $(cat /proc/loadavg)" >>"$OUT/meta.txt"

# ---------------------------------------------------------------- measure ----------
RESULTS=$OUT/results.tsv
printf 'conns\tround\tproxy\treq_s\tp50_ms\tp99_ms\trequests\tcpu_s\tcpu_pct\treq_per_cpu_s\tnon2xx\tsock_err\tcore_proxy_busy_pct\tcore_loadgen_busy_pct\twrk_rc\tuser_pct_of_cpu\n' >"$RESULTS"

run_one() { # conns round proxy
    local CONNS=$1 round=$2 proxy=$3 port pid raw rc
    port=$(proxy_port "$proxy")
    pid=$(proxy_pid "$proxy")
    raw=$OUT/wrk-$proxy-c$CONNS-r$round.txt
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    fi
    local u0 k0 u1 k1 pa pb la lb pt0 lt0 pt1 lt1
    read -r u0 k0 < <(cpu_ticks "$pid")
    read -r pa pt0 < <(core_jiffies "$PROXY_CPU")
    read -r la lt0 < <(core_jiffies "$LOADGEN_CPU")
    rc=0
    timeout $((DURATION + 30)) taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$raw" 2>&1 || rc=$?
    read -r u1 k1 < <(cpu_ticks "$pid")
    read -r pb pt1 < <(core_jiffies "$PROXY_CPU")
    read -r lb lt1 < <(core_jiffies "$LOADGEN_CPU")
    [[ -d /proc/$pid ]] || die "$proxy (pid $pid) died during the run; see $OUT/$proxy.log"

    local rps p50 p99 reqs non2xx sockerr cpu
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$raw")
    p50=$(awk '$1 == "50%" { print $2 }' "$raw")
    p99=$(awk '$1 == "99%" { print $2 }' "$raw")
    reqs=$(awk '/requests in/ { print $1 }' "$raw")
    non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$raw")
    sockerr=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$raw")
    [[ -n $rps && -n $p50 && -n $p99 && -n $reqs ]] || { log "wrk output unparseable for $proxy round $round (rc $rc): $raw"; rps=0 p50=0 p99=0 reqs=0; }
    p50=$(to_ms "$p50")
    p99=$(to_ms "$p99")
    cpu=$(awk -v a="$((u0 + k0))" -v b="$((u1 + k1))" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / h }')
    awk -v c="$CONNS" -v r="$round" -v px="$proxy" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$reqs" -v cpu="$cpu" \
        -v d="$DURATION" -v nx="${non2xx:-0}" -v se="${sockerr:-0}" -v pa="$pa" -v pb="$pb" -v pt0="$pt0" -v pt1="$pt1" \
        -v la="$la" -v lb="$lb" -v lt0="$lt0" -v lt1="$lt1" -v rc="$rc" -v du="$((u1 - u0))" -v dk="$((k1 - k0))" 'BEGIN {
        rpc = cpu > 0 ? n / cpu : 0
        pbusy = pt1 > pt0 ? 100 * (pb - pa) / (pt1 - pt0) : 0
        lbusy = lt1 > lt0 ? 100 * (lb - la) / (lt1 - lt0) : 0
        user = du + dk > 0 ? 100 * du / (du + dk) : 0
        printf "%d\t%d\t%s\t%.0f\t%.3f\t%.3f\t%d\t%.2f\t%.0f\t%.0f\t%d\t%d\t%.0f\t%.0f\t%d\t%.0f\n",
            c, r, px, rps, p50, p99, n, cpu, 100 * cpu / d, rpc, nx, se, pbusy, lbusy, rc, user }' >>"$RESULTS"
    log "c=$CONNS round $round $proxy: $(tail -1 "$RESULTS" | cut -f2- | awk -F'\t' '{ printf "%s req/s, p50 %s ms, p99 %s ms, cpu %s s (%s%%), %s req/cpu-s, non-2xx %s, socket errors %s", $3, $4, $5, $7, $8, $9, $10, $11 }')"
    ((${non2xx:-0} == 0 && ${sockerr:-0} == 0)) || log "WARNING: $proxy round $round: non-2xx ${non2xx:-0}, socket errors ${sockerr:-0} (see $raw)"
}

# The order of a round: PROXIES, with lbproxy and lbbefore swapping places every other
# round so that neither always runs first.
round_order() { # round
    local p out=()
    for p in $PROXIES; do
        if (($1 % 2 == 0)) && has_proxy lbproxy && has_proxy lbbefore; then
            case $p in lbproxy) p=lbbefore ;; lbbefore) p=lbproxy ;; esac
        fi
        out+=("$p")
    done
    echo "${out[*]}"
}
for c in $CONNS_LIST; do
    for ((round = 1; round <= ROUNDS; round++)); do
        for proxy in $(round_order "$round"); do
            run_one "$c" "$round" "$proxy"
        done
    done
done
echo "load after: $(cat /proc/loadavg)" >>"$OUT/meta.txt"

# ---------------------------------------------------------------- summary ----------
summarize() { # conns
    awk -F'\t' -v c="$1" '$1 == "conns" || $1 == c' "$RESULTS" | cut -f2- |
    awk -F'\t' -v dur="$DURATION" -v rounds="$ROUNDS" -v conns="$1" -v order="$PROXIES" '
    NR == 1 { next }
    {
        r = $1; p = $2
        rps[p] += $3; p50[p] += $4; p99[p] += $5; cpu[p] += $7; pct[p] += $8; n[p] += $6
        nx[p] += $10; se[p] += $11; cnt[p]++
        R[r, p] = $3; P50[r, p] = $4; P99[r, p] = $5; RPC[r, p] = $9; PCT[r, p] = $8
        NX[r, p] = $10; SE[r, p] = $11; CB[r, p] = $12; LB[r, p] = $13; USR[r, p] = $15
    }
    '"$AWK_NAME"'
    function ratio(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "n/a" }
    END {
        np = split(order, ps, " ")
        h = "haproxy"
        printf "Average over %d round(s) of %d s, %d connections (see meta.txt):\n\n", rounds, dur, conns
        print "| proxy | req/s | p50 ms | p99 ms | CPU s | CPU % of a core | req per CPU-s | req/s vs HAProxy | p99 vs HAProxy | non-2xx | socket errors |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= np; i++) {
            p = ps[i]; if (!(p in cnt)) continue; c = cnt[p]
            a_rps[p] = rps[p] / c; a_p99[p] = p99[p] / c
        }
        for (i = 1; i <= np; i++) {
            p = ps[i]; if (!(p in cnt)) continue; c = cnt[p]
            rpc = (cpu[p] > 0) ? n[p] / cpu[p] : 0
            hr = (h in cnt) ? ratio(a_rps[p], a_rps[h]) : "n/a"
            hp = (h in cnt) ? ratio(a_p99[p], a_p99[h]) : "n/a"
            printf "| %s | %.0f | %.3f | %.3f | %.2f | %.0f | %.0f | %s | %s | %d | %d |\n", name(p), a_rps[p], p50[p] / c, a_p99[p],
                cpu[p] / c, pct[p] / c, rpc, hr, hp, nx[p], se[p]
        }
        print ""
        print "Per round (ratios against HAProxy in the same round; core busy % = whole core incl. other processes):"
        print ""
        print "| round | proxy | req/s | p50 ms | p99 ms | req per CPU-s | CPU % | user % of CPU | req/s vs HAProxy | p99 vs HAProxy | proxy core busy % | wrk core busy % | non-2xx | socket errors |"
        print "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (r = 1; r <= rounds; r++)
            for (i = 1; i <= np; i++) {
                p = ps[i]; k = r SUBSEP p; kh = r SUBSEP h
                if (!(k in R)) continue
                hr = (kh in R) ? ratio(R[k], R[kh]) : "n/a"
                hp = (kh in R) ? ratio(P99[k], P99[kh]) : "n/a"
                printf "| %d | %s | %.0f | %.3f | %.3f | %.0f | %.0f | %.0f | %s | %s | %.0f | %.0f | %d | %d |\n", r, name(p), R[k], P50[k], P99[k], RPC[k], PCT[k], USR[k],
                    hr, hp, CB[k], LB[k], NX[k], SE[k]
            }
        a = "lbproxy"; b = "lbbefore"
        if ((a in cnt) && (b in cnt)) {
            per = ""
            for (r = 1; r <= rounds; r++)
                if (((r, a) in R) && ((r, b) in R)) per = per (per == "" ? "" : ", ") ratio(R[r, a], R[r, b])
            rpca = cpu[a] > 0 ? n[a] / cpu[a] : 0; rpcb = cpu[b] > 0 ? n[b] / cpu[b] : 0
            print ""
            printf "lb-proxy after vs before, %d connections: req/s %s (per round: %s), p99 %s, req per CPU-s %s.\n",
                conns, ratio(a_rps[a], a_rps[b]), per, ratio(a_p99[a], a_p99[b]), ratio(rpca, rpcb)
        }
    }'
}
: >"$OUT/summary.md"
for c in $CONNS_LIST; do
    summarize "$c" >>"$OUT/summary.md"
    echo >>"$OUT/summary.md"
done
{
    echo
    echo '```'
    cat "$OUT/meta.txt"
    echo '```'
} >>"$OUT/summary.md"
cat "$OUT/summary.md"

# ---------------------------------------------------------------- idle memory ------
# Per proxy, RSS of its processes (process and children):
#   - before and after IDLE_CONNS clients each send one request and stay idle: the
#     memory one idle client connection costs;
#   - then, with those still open (closed, they would leave freed memory that the next
#     step reuses, and its RSS growth would come out short), before and after
#     UPSTREAM_IDLE more clients send `Host: slow` requests all at once:
#     the proxy opens about one connection to the slow backend per request and keeps, once
#     answered, those its pool allows (U, counted with ss). Less the new clients' share
#     (UPSTREAM_IDLE x the KiB per idle client connection), over U: the memory one idle
#     upstream connection costs.
# The clients (idle.py) are stopped right after the measure; every wait is bounded.
rss_kib() {
    local t=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# established connections from the processes of a proxy (pid and children) to the slow backend
upstream_conns() { # pid
    local pids
    pids=" $1 $(pgrep -P "$1" 2>/dev/null | tr '\n' ' ')"
    { timeout 60 ss -tnpH state established "( dport = :$S1 or dport = :$S2 or dport = :$S3 or dport = :$S4 )" 2>/dev/null || true; } |
        awk -v pids="$pids" '{
            s = $0; hit = 0
            while (match(s, /pid=[0-9]+/)) {
                if (index(pids, " " substr(s, RSTART + 4, RLENGTH - 4) " ")) hit = 1
                s = substr(s, RSTART + RLENGTH)
            }
            n += hit
        } END { print n + 0 }'
}
IDLE_HOLD=900 # idle.py's own bound on holding its connections; run.sh stops it long before
start_idle() { # tag idle.py-arguments...: idle.py in the background, its pid in IDLE_PID
    local tag=$1
    shift
    : >"$OUT/$tag.out"
    # timeout(1) leads its own process group (idle.py in it): stop_idle signals the group.
    taskset -c "$LOADGEN_CPU" timeout $((IDLE_HOLD + 60)) python3 "$HERE/idle.py" "$@" >"$OUT/$tag.out" 2>"$OUT/$tag.log" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    NAMES+=("$tag")
}
wait_ready() { # tag pid n seconds: 0 once idle.py says "ready n"; 1 if it fails, dies or takes longer
    local line i=0
    while ((i < $4 * 10)); do
        [[ $(wc -l <"$OUT/$1.out") -gt 0 || ! -d /proc/$2 ]] && break
        sleep 0.1
        i=$((i + 1))
    done
    line=$(head -1 "$OUT/$1.out" 2>/dev/null || true)
    [[ $line == "ready $3" ]] && return 0
    log "$1: got '${line:-nothing in $4 s}', not 'ready $3' (see $OUT/$1.out, $OUT/$1.log)"
    return 1
}
stop_idle() { # pid...: SIGTERM to each one's process group, SIGKILL if still there after 10 s
    local p i=0 j
    for p; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
    for p; do
        while [[ -d /proc/$p ]] && ((i++ < 100)); do sleep 0.1; done
    done
    for p; do
        if [[ -d /proc/$p ]]; then
            log "idle client $p still there 10 s after SIGTERM: SIGKILL"
            kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
        else
            wait "$p" 2>/dev/null || true
            # gone: cleanup must not signal whatever gets its pid later
            for j in "${!PIDS[@]}"; do
                [[ ${PIDS[$j]} != "$p" ]] || unset "PIDS[$j]" "NAMES[$j]"
            done
        fi
    done
}
idle_tables() {
    awk -F'\t' -v ic="$IDLE_CONNS" -v ui="$UPSTREAM_IDLE" -v delay="$SLOW_DELAY" -v order="$PROXIES" '
    '"$AWK_NAME"'
    function ratio(a, b) { return (a != "NA" && b != "NA" && a >= 0 && b > 0) ? sprintf("%.2fx", a / b) : "n/a" }
    function num(v, f) { return v == "NA" ? "n/a" : sprintf(f, v) }
    function vs_haproxy(k, p) { return ((k, "haproxy") in has) ? ratio(P[k, p], P[k, "haproxy"]) : "n/a" }
    function after_before(k, what) {
        if (((k, "lbproxy") in has) && ((k, "lbbefore") in has))
            printf "\nlb-proxy after vs before: %s per idle %s connection.\n", ratio(P[k, "lbproxy"], P[k, "lbbefore"]), what
    }
    NR == 1 { next }
    { K[$1]; has[$1, $2] = 1; M[$1, $2] = $3; U[$1, $2] = $4; B[$1, $2] = $5; A[$1, $2] = $6; P[$1, $2] = $8 }
    END {
        np = split(order, ps, " ")
        if ("client" in K) {
            printf "\nMemory of idle client connections (%d keep-alive connections, one request each, then idle; RSS of the proxy processes):\n\n", ic
            print "| proxy | RSS before (MiB) | RSS with them (MiB) | KiB per idle connection | vs HAProxy |"
            print "|---|---:|---:|---:|---:|"
            for (i = 1; i <= np; i++) {
                p = ps[i]; if (!(("client", p) in has)) continue
                printf "| %s | %.1f | %.1f | %s | %s |\n", name(p), B["client", p] / 1024, A["client", p] / 1024, num(P["client", p], "%.2f"), vs_haproxy("client", p)
            }
            after_before("client", "client")
        }
        if ("upstream" in K) {
            if (ic > 0)
                printf "\nMemory of idle upstream connections (%d more clients, beside the idle ones above, send `Host: slow` requests at once to a backend answering after %s s: the proxy opens a connection to it per request and keeps those its pool allows, U, counted with ss; KiB per idle upstream connection = (RSS growth - clients x KiB per idle client connection above) / U):\n\n", ui, delay
            else
                printf "\nMemory of idle upstream connections, with their clients (%d clients send `Host: slow` requests at once to a backend answering after %s s: the proxy opens a connection to it per request and keeps those its pool allows, U, counted with ss; IDLE_CONNS=0, so the clients are not subtracted: KiB per idle upstream connection = RSS growth / U):\n\n", ui, delay
            print "| proxy | RSS before (MiB) | RSS with them (MiB) | clients | idle upstream connections (U) | KiB per idle upstream connection | vs HAProxy |"
            print "|---|---:|---:|---:|---:|---:|---:|"
            for (i = 1; i <= np; i++) {
                p = ps[i]; if (!(("upstream", p) in has)) continue
                printf "| %s | %.1f | %.1f | %d | %d | %s | %s |\n", name(p), B["upstream", p] / 1024, A["upstream", p] / 1024, M["upstream", p], U["upstream", p],
                    num(P["upstream", p], "%.2f"), vs_haproxy("upstream", p)
            }
            after_before("upstream", "upstream")
        }
    }' "$OUT/idle.tsv"
}
if ((IDLE_CONNS + UPSTREAM_IDLE > 0)); then
    printf 'kind\tproxy\tclients\tupstream_conns\trss_before_kib\trss_after_kib\tclient_kib_each\tkib_per_conn\n' >"$OUT/idle.tsv"
    for proxy in $PROXIES; do
        port=$(proxy_port "$proxy")
        pid=$(proxy_pid "$proxy")
        cpid="" per_client=0 ok=1
        if ((IDLE_CONNS > 0)); then
            before=$(rss_kib "$pid")
            start_idle "idle-$proxy" "$port" "$IDLE_CONNS" "$IDLE_HOLD"
            cpid=$IDLE_PID
            if wait_ready "idle-$proxy" "$cpid" "$IDLE_CONNS" 180; then
                sleep 0.5 # the last answers' buffers released
                after=$(rss_kib "$pid")
                per_client=$(awk -v a="$before" -v b="$after" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')
                printf 'client\t%s\t%s\t0\t%s\t%s\t%s\t%s\n' "$proxy" "$IDLE_CONNS" "$before" "$after" "$per_client" "$per_client" >>"$OUT/idle.tsv"
                log "idle memory $proxy: $before KiB -> $after KiB with $IDLE_CONNS idle clients: $per_client KiB per idle client connection"
            else
                ok=0
                log "skipping $proxy's idle upstream measure (its clients' share is unknown)"
            fi
        fi
        if ((UPSTREAM_IDLE > 0 && ok)); then
            u0=$(upstream_conns "$pid")
            before=$(rss_kib "$pid")
            start_idle "idle-upstream-$proxy" --together --host slow --timeout $((SLOW_DELAY_CEIL + 60)) "$port" "$UPSTREAM_IDLE" "$IDLE_HOLD"
            upid=$IDLE_PID
            if wait_ready "idle-upstream-$proxy" "$upid" "$UPSTREAM_IDLE" $((SLOW_DELAY_CEIL + 240)); then
                sleep 0.5 # the upstream connections back in the pool
                ua=$(upstream_conns "$pid")
                after=$(rss_kib "$pid")
                ub=$(upstream_conns "$pid")
                ((ua == ub)) || log "WARNING: $proxy's upstream connections went from $ua to $ub while its RSS was read"
                u=$(((ua + ub) / 2 - u0))
                per_up=$(awk -v a="$before" -v b="$after" -v m="$UPSTREAM_IDLE" -v c="$per_client" -v u="$u" \
                    'BEGIN { if (u > 0) printf "%.2f", (b - a - m * c) / u; else print "NA" }')
                printf 'upstream\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$UPSTREAM_IDLE" "$u" "$before" "$after" "$per_client" "$per_up" >>"$OUT/idle.tsv"
                log "idle upstream memory $proxy: $before KiB -> $after KiB with $UPSTREAM_IDLE more idle clients ($per_client KiB each) and $u idle upstream connections ($u0 before, $ub after): $per_up KiB per idle upstream connection"
                [[ $per_up != NA && $per_up != -* ]] ||
                    log "WARNING: $proxy: no usable KiB per idle upstream connection (U = $u, or the clients' estimated share exceeds the RSS growth: too few connections for RSS to resolve, raise IDLE_CONNS and UPSTREAM_IDLE)"
            fi
            stop_idle "$upid"
        fi
        [[ -z $cpid ]] || stop_idle "$cpid"
    done
    idle_tables >"$OUT/idle.md"
    [[ ! -s $OUT/idle.md ]] || tee -a "$OUT/summary.md" <"$OUT/idle.md"
fi

# ---------------------------------------------------------------- syscalls ---------
# Not part of the measured runs (counting tracepoints costs a little per syscall): one
# more short run per proxy under `perf stat`, for syscalls and context switches per
# request.
if ((SYSCALLS)); then
    if have perf && timeout 10 perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
        sdur=$((DURATION < 5 ? DURATION : 5))
        {
            echo
            echo "Syscalls and context switches per request (one extra ${sdur} s run per proxy under \`perf stat\`, not part of the numbers above):"
            echo
            echo "| proxy | req/s (under perf stat) | syscalls per req | context switches per req |"
            echo "|---|---:|---:|---:|"
        } >"$OUT/syscalls.md"
        for proxy in $PROXIES; do
            port=$(proxy_port "$proxy")
            pid=$(proxy_pid "$proxy")
            # shellcheck disable=SC2046 # the pids are words on purpose
            pids=$(echo "$pid" $(pgrep -P "$pid" || true) | tr ' ' ',')
            raw=$OUT/wrk-$proxy-syscalls.txt
            taskset -c "$LOADGEN_CPU" perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$OUT/perf-stat-$proxy.csv" &
            sp=$!
            PIDS+=("$sp")
            NAMES+=("perf-stat-$proxy")
            sleep 0.3
            timeout $((sdur + 30)) taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${sdur}s" "http://127.0.0.1:$port/" >"$raw" 2>&1 || true
            kill -INT "$sp" 2>/dev/null || true
            n=0
            while [[ -d /proc/$sp ]] && ((n++ < 100)); do sleep 0.1; done
            reqs=$(awk '/requests in/ { print $1 }' "$raw")
            rps=$(awk '/^Requests\/sec:/ { print $2 }' "$raw")
            awk -F, -v n="${reqs:-0}" -v px="$proxy" -v rps="${rps:-0}" '
                $3 == "raw_syscalls:sys_enter" { sc = $1 } $3 == "context-switches" { cs = $1 }
                '"$AWK_NAME"'
                END { if (n > 0) printf "| %s | %.0f | %.2f | %.3f |\n", name(px), rps, sc / n, cs / n }' "$OUT/perf-stat-$proxy.csv" >>"$OUT/syscalls.md"
        done
        tee -a "$OUT/summary.md" <"$OUT/syscalls.md"
    else
        log "no usable perf here: skipping the syscall counts"
    fi
fi

# ---------------------------------------------------------------- profile ----------
if ((PROFILE)) && [[ " $PROXIES " == *" lbproxy "* ]]; then
    if have perf; then
        log "profiling lb-proxy: perf record (dwarf call graphs) during one more ${DURATION}s run"
        pid=$PID_lbproxy
        taskset -c "$LOADGEN_CPU" perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -p "$pid" -o "$OUT/perf-lbproxy.data" >"$OUT/perf-record.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
        NAMES+=(perf)
        sleep 0.5
        timeout $((DURATION + 30)) taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT_LB/" >"$OUT/wrk-lbproxy-profiled.txt" 2>&1 || true
        kill -INT "$perf_pid" 2>/dev/null || true
        n=0
        while [[ -d /proc/$perf_pid ]] && ((n++ < 100)); do sleep 0.1; done
        timeout 300 perf report -i "$OUT/perf-lbproxy.data" --stdio --no-children --sort symbol --percent-limit 0.5 -g none \
            >"$OUT/perf-lbproxy-flat.txt" 2>/dev/null || true
        timeout 300 perf report -i "$OUT/perf-lbproxy.data" --stdio --children --sort symbol --percent-limit 2 -g none \
            >"$OUT/perf-lbproxy-children.txt" 2>/dev/null || true
        log "profile: $OUT/perf-lbproxy-flat.txt, $OUT/perf-lbproxy-children.txt"
        head -60 "$OUT/perf-lbproxy-flat.txt" || true
    else
        log "PROFILE=1 but no perf here (apt-get install linux-perf)"
    fi
fi
log "done: $OUT/summary.md"
