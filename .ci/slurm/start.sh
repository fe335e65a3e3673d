#!/usr/bin/env bash
# Start a Slurm cluster on this machine for CI (munge + slurmctld + one slurmd per node, no accounting).
#
# DINOLITE_SLURM_NODES (default 2) nodes, all on this host: node 1 is named after the host (the first host of
# a job's node list is its rendezvous address, so it must resolve), node i > 1 is "<host>-n<i>", reached at
# 127.0.0.1 on its own slurmd port with its own spool, pid and log files (a copy of slurm.conf that differs
# only in those). Debian's slurmd is not built with --enable-multiple-slurmd; this works without it because
# each daemon is started with -N for its node and owns its port and files. A real multi-node job runs here.
#
#   eval "$(.ci/slurm/start.sh)"     # stdout is only the `export SLURM_CONF=...` line
#
# Idempotent: a second call finds the daemons answering and only re-checks them. Bounded: every wait
# has a deadline (DINOLITE_SLURM_TIMEOUT seconds for the whole start, apt-get excluded). Loud: any
# failure exits non-zero with the reason and the tail of the daemon logs on stderr.
# The same export line is written to $DINOLITE_SLURM_DIR/env.sh for scripts that prefer `source`.
# Needs root (installs Debian's slurmctld slurmd slurm-client munge when they are missing).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${DINOLITE_SLURM_DIR:-/var/lib/dinolite-slurm}"
CONF="${DINOLITE_SLURM_CONF:-/etc/slurm/slurm.conf}"
PARTITION="${DINOLITE_SLURM_PARTITION:-debug}"
TIMEOUT="${DINOLITE_SLURM_TIMEOUT:-120}"
NODES="${DINOLITE_SLURM_NODES:-2}"
D_PORT="${DINOLITE_SLURMD_PORT:-6818}"
MARKER="# dinolite-ci:"
HOST="$(hostname -s)"
DEADLINE=$(( $(date +%s) + TIMEOUT ))

log() { echo "[slurm-ci] $*" >&2; }
die() {
    echo "[slurm-ci] ERROR: $*" >&2
    for f in "$STATE_DIR/slurmctld.log" "$STATE_DIR"/slurmd*.log /var/log/munge/munged.log; do
        if [[ -f "$f" ]]; then echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; fi
    done
    exit 1
}
time_left() { (( $(date +%s) < DEADLINE )); }
# wait_for DESCRIPTION COMMAND...: retry COMMAND every second until it succeeds or the deadline passes.
wait_for() {
    local what="$1"; shift
    until "$@" >/dev/null 2>&1; do
        time_left || die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 1
    done
}
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons)"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "DINOLITE_SLURM_NODES=$NODES is not a positive node count"
node_name() { if (( $1 == 1 )); then echo "$HOST"; else echo "$HOST-n$1"; fi; }
node_names="$(for i in $(seq 1 "$NODES"); do node_name "$i"; done | paste -sd, -)"

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
    timeout 900 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install of slurmctld slurmd slurm-client munge failed"
fi

# 2. Munge: a key, its runtime directory, the daemon running as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
munge_ok() { { munge -n | unmunge; } >/dev/null 2>&1; }
if ! munge_ok; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start"
    wait_for "munge to answer" munge_ok
fi

# 3. slurm.conf from the template (never overwrite a slurm.conf that this script did not write).
mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d" "$(dirname "$CONF")"
if [[ -f "$CONF" ]] && ! head -n 1 "$CONF" | grep -q "^$MARKER"; then
    die "$CONF exists and was not written by $0; refusing to overwrite a real cluster's configuration"
fi
cpus="$(nproc)"
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
node_lines="NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
for i in $(seq 2 "$NODES"); do
    node_lines+="\\nNodeName=$(node_name "$i") NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$(( D_PORT + i - 1 ))"
    node_lines+=" CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
done
new_conf="$(sed -e "s|@HOST@|$HOST|g" -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@NODE_COUNT@|$NODES|g" \
    -e "s|@NODE_LINES@|$node_lines|" -e "s|@NODE_NAMES@|$node_names|g" -e "s|@PARTITION@|$PARTITION|g" \
    -e "s|@CTLD_PORT@|${DINOLITE_SLURMCTLD_PORT:-6817}|g" -e "s|@D_PORT@|$D_PORT|g" \
    "$HERE/slurm.conf.template")"
conf_changed=1
if [[ -f "$CONF" ]] && [[ "$(cat "$CONF")" == "$new_conf" ]]; then conf_changed=0; fi
if (( conf_changed )); then
    printf '%s\n' "$new_conf" > "$CONF.tmp.$$"
    mv "$CONF.tmp.$$" "$CONF"
    log "wrote $CONF (nodes $node_names, $cpus CPUs and ${mem_mb} MB each, partition $PARTITION)"
fi
# The configuration node i's slurmd reads: node 1 the real one, the others a copy with their own files.
node_conf() {
    if (( $1 == 1 )); then echo "$CONF"; return; fi
    local copy="$STATE_DIR/slurm.n$1.conf"
    sed -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$STATE_DIR/d$1|" -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$STATE_DIR/slurmd.n$1.pid|" \
        -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$STATE_DIR/slurmd.n$1.log|" "$CONF" > "$copy.tmp.$$"
    mv "$copy.tmp.$$" "$copy"
    mkdir -p "$STATE_DIR/d$1"
    echo "$copy"
}
node_pid() { if (( $1 == 1 )); then echo "$STATE_DIR/slurmd.pid"; else echo "$STATE_DIR/slurmd.n$1.pid"; fi; }
export SLURM_CONF="$CONF"

# 4. Daemons: (re)start those that are not running, or all of them when the configuration changed.
stop_daemon() {  # stop_daemon PIDFILE: the daemon this script started, by its pid
    if pid_alive "$1"; then
        local pid; pid="$(cat "$1")"
        kill "$pid"
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
        die "daemon with pid $pid ($1) did not stop"
    fi
}
if (( conf_changed )); then
    for pidfile in "$STATE_DIR"/slurmd*.pid; do stop_daemon "$pidfile"; done
    stop_daemon "$STATE_DIR/slurmctld.pid"
fi
if ! pid_alive "$STATE_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld -f "$CONF" || die "slurmctld failed to start"
fi
wait_for "slurmctld to answer 'scontrol ping'" bash -c "scontrol ping | grep -q 'is UP'"
for i in $(seq 1 "$NODES"); do
    if ! pid_alive "$(node_pid "$i")"; then
        log "starting slurmd for node $(node_name "$i")"
        slurmd -f "$(node_conf "$i")" -N "$(node_name "$i")" || die "slurmd for node $(node_name "$i") failed to start"
    fi
done

# 5. Every node must be schedulable: idle (or busy with jobs already), never down/drained.
node_state() { sinfo -h -n "$1" -o %t 2>/dev/null | head -n 1; }
for i in $(seq 1 "$NODES"); do
    node="$(node_name "$i")"
    until [[ "$(node_state "$node")" =~ ^(idle|mix|alloc|comp)$ ]]; do
        state="$(node_state "$node")"
        if [[ "$state" =~ ^(down|drain|drng|fail)  ]]; then
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        fi
        time_left || die "timed out after ${TIMEOUT}s: node $node is '${state:-unknown}' in sinfo"
        sleep 1
    done
done
log "nodes $node_names are up; partition $PARTITION is up"

printf 'export SLURM_CONF=%s\n' "$CONF" > "$STATE_DIR/env.sh.tmp"
mv "$STATE_DIR/env.sh.tmp" "$STATE_DIR/env.sh"
echo "export SLURM_CONF=$CONF"
