# shellcheck shell=bash
# Sourced by instructions.sh and wakeups.sh: what is missing installed, the backends
# started from run.sh's templates, the proxies' configs rendered, ports waited for, and
# everything started stopped at exit.
#
# The caller defines log and die, and sets HERE, OUT, RUN, PORT_BASE, BACKEND_BASE and
# LOADGEN_CPU (and SKIP_INSTALL, 0 or 1) before calling these.

have() { command -v "$1" >/dev/null 2>&1; }

# install_missing PACKAGE...: Debian's packages by apt-get, unless SKIP_INSTALL=1.
install_missing() {
    (($#)) || return 0
    ((${SKIP_INSTALL:-0} == 0)) || die "missing $* and SKIP_INSTALL=1"
    have apt-get || die "missing $* and no apt-get here; install them by hand"
    local sudo=() made_policy=0 ok=1
    ((EUID == 0)) || sudo=(sudo)
    log "installing $*"
    # Keep the packages' init scripts from starting a system nginx/haproxy on :80.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    "${sudo[@]}" timeout 600 apt-get update -q || ok=0
    ((ok)) && { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "$@" || ok=0; }
    ((made_policy)) && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    ((ok)) || die "apt-get failed"
}

# What was started, stopped at exit (TERM, then KILL after 5 s).
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

# render TEMPLATE LISTEN-PORT OUTPUT [ADMIN-PORT]: one of run.sh's templates, with the
# backends at BACKEND_BASE.. (the slow backend's ports are in the templates, never used).
render() {
    local b=$BACKEND_BASE user=""
    ((EUID == 0)) && user="user root root;"
    sed -e "s|@RUN@|$RUN|g" -e "s|@USER@|$user|g" -e "s|@PORT@|$2|g" \
        -e "s|@ADMIN@|${4:-$((PORT_BASE + 1))}|g" -e "s|@B1@|$b|g" -e "s|@B2@|$((b + 1))|g" \
        -e "s|@B3@|$((b + 2))|g" -e "s|@B4@|$((b + 3))|g" -e "s|@S1@|$((b + 4))|g" -e "s|@S2@|$((b + 5))|g" \
        -e "s|@S3@|$((b + 6))|g" -e "s|@S4@|$((b + 7))|g" "$HERE/$1" >"$3"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID NAME: until PORT accepts, for 60 s at the most, while PID lives.
wait_port() {
    local n=0
    until port_open "$1"; do
        [[ -d /proc/$2 ]] || die "$3 exited at start; see $OUT/$3.log"
        ((n++ < 600)) || die "$3 did not open port $1 in 60 s; see $OUT/$3.log"
        sleep 0.1
    done
}

# The four backends (one nginx worker) on core LOADGEN_CPU; BACKENDS_PID is nginx's master.
start_backends() {
    local b
    render backends-nginx.conf.in 0 "$RUN/backends-nginx.conf"
    for b in $BACKEND_BASE $((BACKEND_BASE + 1)) $((BACKEND_BASE + 2)) $((BACKEND_BASE + 3)); do
        port_open "$b" && die "port $b is in use (set BACKEND_BASE)"
    done
    taskset -c "$LOADGEN_CPU" nginx -p "$RUN" -c "$RUN/backends-nginx.conf" >"$OUT/backends.log" 2>&1 &
    BACKENDS_PID=$!
    PIDS+=("$BACKENDS_PID")
    wait_port $((BACKEND_BASE + 3)) "$BACKENDS_PID" backends
}
