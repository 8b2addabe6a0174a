#!/usr/bin/env bash
# A real single-node Slurm cluster (with accounting) on this machine, for the Slurm tests.
#
#   scripts/slurm_local.sh install   apt-get the packages (quick no-op when present; needs root + apt)
#   scripts/slurm_local.sh start     write /etc/slurm configs, start munged, mariadbd, slurmdbd,
#                                    slurmctld, slurmd; wait until the node is idle and sacct works
#   scripts/slurm_local.sh stop      cancel all jobs, stop the daemons by pid file, wait for them
#   scripts/slurm_local.sh status    daemons, sinfo, sacct
#
# Needs root (daemons run as root, SlurmUser=root) and no systemd. Everything the cluster writes lives in
# $SLURM_LOCAL_STATE (state, pid files, logs). Environment knobs:
#   SLURM_LOCAL_STATE   state/log/pid directory            (default /var/lib/slurm-local)
#   SLURM_LOCAL_CLUSTER cluster name                       (default localcluster)
#   SLURM_LOCAL_CPUS    CPUs of the node                   (default: nproc)
#   SLURM_LOCAL_GPUS    fake GPUs (GRES on /dev/null...)   (default 2; 0 = no GRES)
#   SLURM_LOCAL_TIMEOUT seconds to wait for readiness       (default 90)
set -euo pipefail

STATE="${SLURM_LOCAL_STATE:-/var/lib/slurm-local}"
CLUSTER="${SLURM_LOCAL_CLUSTER:-localcluster}"
CPUS="${SLURM_LOCAL_CPUS:-$(nproc)}"
GPUS="${SLURM_LOCAL_GPUS:-2}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-90}"
CONF_DIR=/etc/slurm
RUN_DIR="$STATE/run"
LOG_DIR="$STATE/log"
DB_DIR="$STATE/mysql"
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PASS=slurm-local-test
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
# daemons in start order; stop goes in reverse
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

say() { echo "[slurm_local] $*"; }
die() {
    echo "[slurm_local] ERROR: $*" >&2
    exit 1
}

pid_file() {
    case "$1" in
    munged) echo "/run/munge/slurm-local.pid" ;;
    mariadbd) echo "/run/mysqld/slurm-local.pid" ;;
    *) echo "$RUN_DIR/$1.pid" ;;
    esac
}

daemon_pid() {
    # the pid of a running daemon, or nothing
    local f
    f="$(pid_file "$1")"
    [[ -s "$f" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"$f")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

require_root() { [[ "$(id -u)" == 0 ]] || die "must run as root (daemons run as root); current uid $(id -u)"; }

missing_binaries() {
    local b out=()
    for b in sbatch sacct sacctmgr slurmctld slurmd slurmdbd munged mariadbd mariadb; do
        command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || out+=("$b")
    done
    echo "${out[*]:-}"
}

wait_until() {
    # wait_until <what> <seconds> <command...>: poll every 0.5 s
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
    say "$what: ok"
}

cmd_install() {
    local missing
    missing="$(missing_binaries)"
    if [[ -z "$missing" ]]; then
        say "packages already installed (slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?'))"
        return 0
    fi
    require_root
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install Slurm (${PACKAGES[*]}) by hand"
    say "installing ${PACKAGES[*]} (missing: $missing)"
    apt-get update -qq || die "apt-get update failed"
    # keep the package scripts from starting services (we start our own); only if no policy exists yet
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
        >"/tmp/slurm_local_apt.log" 2>&1 || rc=$?
    ((added_policy == 0)) || rm -f "$policy"
    if ((rc != 0)); then
        tail -20 /tmp/slurm_local_apt.log >&2
        die "apt-get install failed (full log /tmp/slurm_local_apt.log)"
    fi
    missing="$(missing_binaries)"
    [[ -z "$missing" ]] || die "still missing after install: $missing"
    say "installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?')"
}

write_configs() {
    local host mem_mb gres_line="" gres_types=""
    host="$(hostname -s)"
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/slurmd" "$RUN_DIR" "$LOG_DIR"
    if ((GPUS > 0)); then
        gres_types="GresTypes=gpu"
        gres_line="Gres=gpu:$GPUS"
        # fake GPU devices: any existing character device works as a "File"
        local devs=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/ptmx /dev/console)
        ((GPUS <= ${#devs[@]})) || die "SLURM_LOCAL_GPUS=$GPUS: at most ${#devs[@]} fake GPUs"
        {
            echo "# written by scripts/slurm_local.sh: fake GPUs for tests"
            for ((i = 0; i < GPUS; i++)); do echo "NodeName=$host Name=gpu File=${devs[$i]}"; done
        } >"$CONF_DIR/gres.conf"
    else
        rm -f "$CONF_DIR/gres.conf"
    fi
    cat >"$CONF_DIR/slurm.conf" <<EOF
# written by scripts/slurm_local.sh: single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=bf_interval=2,sched_interval=2
KillWait=5
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$gres_types
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb $gres_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# written by scripts/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chown root:root "$CONF_DIR/slurmdbd.conf"
    chmod 600 "$CONF_DIR/slurmdbd.conf"
    say "configs written to $CONF_DIR (node $host, $CPUS CPUs, ${mem_mb} MB, $GPUS fake GPUs)"
}

start_munged() {
    [[ -z "$(daemon_pid munged)" ]] || {
        say "munged already running"
        return 0
    }
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged: using the one already running (not ours: stop leaves it alone)"
        return 0
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --pid-file="$(pid_file munged)" --socket=/run/munge/munge.socket.2 \
        || die "munged did not start"
    wait_until "munged" 20 bash -c 'munge -n | unmunge' || die "munge does not work"
}

start_mariadbd() {
    [[ -z "$(daemon_pid mariadbd)" ]] || {
        say "mariadbd already running"
        return 0
    }
    mkdir -p /run/mysqld "$DB_DIR"
    chown mysql:mysql /run/mysqld "$DB_DIR"
    if mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1; then
        say "mariadbd: using the server already on $DB_SOCKET (not ours: stop leaves it alone)"
        create_db_user
        return 0
    fi
    if [[ ! -d "$DB_DIR/mysql" ]]; then
        say "initialising the MariaDB data directory $DB_DIR"
        mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
            >"$LOG_DIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOG_DIR/mariadb-install.log)"
    fi
    # unix socket only; the pid file sits in /run/mysqld, which the mysql user owns
    setsid /usr/sbin/mariadbd --user=mysql --datadir="$DB_DIR" --skip-networking --socket="$DB_SOCKET" \
        --pid-file="$(pid_file mariadbd)" --log-error="$LOG_DIR/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_until "mariadbd" "$TIMEOUT" mariadb-admin --socket="$DB_SOCKET" ping \
        || die "mariadbd did not come up (see $LOG_DIR/mariadb.log)"
    create_db_user
}

create_db_user() {
    mariadb --socket="$DB_SOCKET" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
        || die "could not create the slurm database user"
}

start_slurmdbd() {
    if [[ -z "$(daemon_pid slurmdbd)" ]]; then
        /usr/sbin/slurmdbd || die "slurmdbd did not start (see $LOG_DIR/slurmdbd.log)"
    else
        say "slurmdbd already running"
    fi
    wait_until "slurmdbd" "$TIMEOUT" sacctmgr -n show cluster || die "slurmdbd does not answer (see $LOG_DIR/slurmdbd.log)"
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "could not register cluster $CLUSTER"
        say "registered cluster $CLUSTER"
    fi
}

node_idle() { sinfo -h -N -o '%t' | grep -qx 'idle'; }

start_slurm() {
    if [[ -z "$(daemon_pid slurmctld)" ]]; then
        /usr/sbin/slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
    else
        say "slurmctld already running"
    fi
    wait_until "slurmctld" "$TIMEOUT" scontrol ping || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
    if [[ -z "$(daemon_pid slurmd)" ]]; then
        /usr/sbin/slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
    else
        say "slurmd already running"
    fi
    if ! wait_until "node idle" "$TIMEOUT" node_idle; then
        sinfo -N -l >&2 || true
        die "node not idle after ${TIMEOUT}s (see $LOG_DIR/slurmd.log, $LOG_DIR/slurmctld.log)"
    fi
    wait_until "sacct" "$TIMEOUT" sacct -n -X -S now-1minutes || die "sacct does not work"
}

cmd_start() {
    require_root
    local missing
    missing="$(missing_binaries)"
    [[ -z "$missing" ]] || die "not installed (missing: $missing); run '$0 install' first"
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurm
    say "cluster $CLUSTER is up: $(sinfo -h -o '%P %D nodes %t')"
}

stop_daemon() {
    local name="$1" pid
    pid="$(daemon_pid "$name")"
    if [[ -z "$pid" ]]; then
        say "$name not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    say "$name (pid $pid) stopped"
}

cmd_stop() {
    require_root
    if [[ -n "$(daemon_pid slurmctld)" ]]; then
        local jobs
        jobs="$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')"
        if [[ -n "${jobs// /}" ]]; then
            say "cancelling leftover jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + 20))
            while [[ -n "$(squeue -h -o '%A' 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[$i]}"; done
}

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        pid="$(daemon_pid "$d")"
        if [[ -n "$pid" ]]; then say "$d: running (pid $pid)"; else
            say "$d: not running"
            rc=1
        fi
    done
    if ((rc == 0)); then
        sinfo -N -l || rc=1
        if sacct -n -X -S now-1minutes >/dev/null; then say "sacct: ok"; else
            say "sacct: failing"
            rc=1
        fi
    fi
    return "$rc"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|start|stop|status}" >&2
    exit 2
    ;;
esac
