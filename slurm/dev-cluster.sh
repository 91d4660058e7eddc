#!/usr/bin/env bash
# dev-cluster.sh start|stop|status
#
# A real two-node SLURM cluster (nodes n1 and n2, partition "debug") on this one machine, for tests and
# development: munge, a private mariadb + slurmdbd (so sacct works, job arrays included), slurmctld and two
# slurmd (multiple-slurmd: `slurmd -N n1`, `slurmd -N n2` on 127.0.0.11 / 127.0.0.12), two fake GPUs per node.
#
# Everything (configs, state, logs, sockets, database) lives in one state directory, $ICSWEEP_SLURM_DIR or
# /tmp/icsweep-slurm, never in /etc. Point SLURM commands at it with
#     export SLURM_CONF=<dir>/slurm.conf        (or: source slurm/env.sh)
#
# Needs root: it installs slurm-wlm, slurmdbd, munge and mariadb-server with apt-get when they are missing, and
# starts the daemons by hand (no systemd needed). Daemons are started in the foreground under setsid; their PIDs
# (with the kernel start time, against PID reuse) are recorded in <dir>/run/*.rec and `stop` signals only those.
# Tested on Debian 12 (SLURM 22.05, munge 0.5.15, MariaDB 10.11), 2 cores, root, no systemd.
set -euo pipefail

PROG=dev-cluster.sh
D=${ICSWEEP_SLURM_DIR:-/tmp/icsweep-slurm}
case $D in /*) ;; *) D=$PWD/$D ;; esac
D=${D%/}
CLUSTER=icsweep
CTLD_PORT=6817
DBD_PORT=6819
NODES=(n1 n2)
declare -A NODE_ADDR=([n1]=127.0.0.11 [n2]=127.0.0.12)
declare -A NODE_PORT=([n1]=6818 [n2]=6828)
GPUS_PER_NODE=2
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
NEEDED_BINARIES=(slurmctld slurmd slurmdbd munged munge mariadbd mariadb-install-db mariadb-admin
                 sinfo squeue sbatch srun scontrol sacct sacctmgr)
MUNGE_SOCK=$D/munge/munged.sock
MYSQL_SOCK=$D/db/mysqld.sock
export SLURM_CONF=$D/slurm.conf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# Exit status: 0 ok, 1 a daemon or the cluster failed, 2 not root, 3 the packages cannot be installed.
die() { echo "$PROG: $*" >&2; exit 1; }
die_with() { local code=$1; shift; echo "$PROG: $*" >&2; exit "$code"; }
say() { echo "$PROG: $*"; }

need_root() {
    [[ $(id -u) == 0 ]] || die_with 2 "dev-cluster.sh needs root to install packages and start daemons;" \
        "run it as root or use an existing cluster via SLURM_CONF"
}

# ---------------------------------------------------------------- processes we started (pid + start time)
proc_field() {  # proc_field PID N: field N of /proc/PID/stat counted after the ")" of the command name (1 = state)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    local -a f=($s)
    echo "${f[$(($2 - 1))]}"
}

rec_file() { echo "$D/run/$1.rec"; }

pid_of() {  # pid_of NAME: prints the PID if the daemon we recorded is alive (not a zombie, same start time)
    local rec pid start state now
    rec=$(rec_file "$1")
    [[ -r $rec ]] || return 1
    read -r pid start <"$rec" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(proc_field "$pid" 1) || return 1
    [[ $state != Z && $state != X ]] || return 1
    now=$(proc_field "$pid" 20) || return 1
    [[ $now == "$start" ]] || return 1
    echo "$pid"
}

is_up() { pid_of "$1" >/dev/null; }

log_of() { echo "$D/log/$1.out"; }

launch() {  # launch NAME COMMAND...: start in the foreground of a new session, record its pid + start time
    local name=$1; shift
    local log
    log=$(log_of "$name")
    echo "=== $(date '+%F %T') starting: $*" >>"$log"
    setsid "$@" </dev/null >>"$log" 2>&1 9>&- &   # fd 9 is our lock: the daemon must not keep it
    local pid=$!
    local start
    start=$(proc_field "$pid" 20) || die "$name exited at once; see $log"
    echo "$pid $start" >"$(rec_file "$name")"
}

last_log_line() {
    local f
    for f in "$@"; do
        [[ -s $f ]] && { grep -v '^===' "$f" | tail -n 1 | cut -c1-200; return; }
    done
    echo "(no log)"
}

fail_daemon() {  # fail_daemon NAME LOGFILE...: one line naming the daemon, its last log line, and the fix
    local name=$1; shift
    die "$name did not come up (last log line: $(last_log_line "$@")); see $* and fix it," \
        "then run: $0 stop && $0 start"
}

wait_for() {  # wait_for NAME SECONDS LOGFILES -- COMMAND...: poll COMMAND until it succeeds or NAME dies
    local name=$1 secs=$2; shift 2
    local -a logs=()
    while [[ $1 != -- ]]; do logs+=("$1"); shift; done
    shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        is_up "$name" || fail_daemon "$name" "${logs[@]}"
        ((SECONDS < deadline)) || die "$name is running but not answering after ${secs}s" \
            "(last log line: $(last_log_line "${logs[@]}")); see ${logs[*]}; try: $0 stop && $0 start"
        sleep 0.2
    done
}

stop_daemons() {  # stop_daemons NAME...: SIGTERM the ones we started, wait on their PIDs, SIGKILL after 30 s
    local name pid
    local -a pids=() names=()
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid"); names+=("$name")
        fi
    done
    local i deadline=$((SECONDS + 30)) killed=0
    for i in "${!names[@]}"; do
        while is_up "${names[$i]}"; do
            if ((SECONDS >= deadline && !killed)); then
                say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 30 s; sending SIGKILL"
                kill -KILL "${pids[$i]}" 2>/dev/null || true
                killed=1
            fi
            sleep 0.1
        done
        killed=0
        rm -f "$(rec_file "${names[$i]}")"
        say "stopped ${names[$i]} (pid ${pids[$i]})"
    done
}

# ---------------------------------------------------------------- installation
ensure_installed() {
    local b missing=()
    for b in "${NEEDED_BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die_with 3 "missing ${missing[*]} and there is no apt-get to install" \
        "${PACKAGES[*]}; install SLURM, munge and mariadb by hand or use an existing cluster via SLURM_CONF"
    mkdir -p "$D/log"
    local alog=$D/log/apt.log
    say "installing ${PACKAGES[*]} with apt-get (missing: ${missing[*]}; log: $alog)"
    # Packages must not start their own services (they would take the default ports and /run/munge).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
                  -o Dpkg::Options::=--force-confold)
    local ok=0
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$alog" 2>&1 || true
    fi
    if DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" \
            >>"$alog" 2>&1; then
        ok=1
    elif DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$alog" 2>&1 &&
         DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" \
            >>"$alog" 2>&1; then
        ok=1
    fi
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((ok)) || die_with 3 "apt-get could not install ${PACKAGES[*]} (last line: $(tail -n 1 "$alog" | cut -c1-160));" \
        "see $alog, install them by hand, or use an existing cluster via SLURM_CONF"
    for b in "${NEEDED_BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || die_with 3 "$b is still missing after installing ${PACKAGES[*]};" \
            "install the package that provides it or use an existing cluster via SLURM_CONF"
    done
}

# ---------------------------------------------------------------- configuration
CONFIG_CHANGED=0
put_file() {  # put_file PATH MODE < content: write only when the content differs
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$1"
        CONFIG_CHANGED=1
    fi
}

node_layout() {  # the CPU layout and memory that `slurmd -C` reports for this machine
    local line
    line=$(SLURM_CONF=/dev/null slurmd -C 2>/dev/null | grep -m1 '^NodeName=') ||
        die "\`slurmd -C\` printed no node line; check the slurmd package (run: slurmd -C)"
    LAYOUT=$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$line" | tr '\n' ' ')
    NCPUS=$(grep -oE 'CPUs=[0-9]+' <<<"$line" | cut -d= -f2)
    local mem
    mem=$(grep -oE 'RealMemory=[0-9]+' <<<"$line" | cut -d= -f2)
    # Leave a few GB to the machine itself, split the rest between the two nodes.
    local reserve=3072
    ((mem < 8192)) && reserve=$((mem / 4))
    NODE_MEM=$(((mem - reserve) / ${#NODES[@]} / 100 * 100))
    ((NODE_MEM >= 256)) || die "only ${mem} MB of memory reported by slurmd -C; need at least 1 GB for two nodes"
    DEF_MEM_PER_CPU=$((NODE_MEM / NCPUS))
}

write_configs() {
    mkdir -p "$D" "$D/run" "$D/log" "$D/state" "$D/dev" "$D/spool/n1" "$D/spool/n2"
    chmod 755 "$D"
    local host
    host=$(hostname -s)
    node_layout

    # munge: its own key and socket, in a directory owned by the munge user
    install -d -o munge -g munge -m 755 "$D/munge"
    if [[ ! -s $D/munge/munge.key ]]; then
        head -c 1024 /dev/urandom >"$D/munge/munge.key"
    fi
    chown munge:munge "$D/munge/munge.key"
    chmod 400 "$D/munge/munge.key"

    # fake GPUs: character devices (like /dev/null) that gres.conf can point at
    local i
    for ((i = 0; i < GPUS_PER_NODE; i++)); do
        [[ -c $D/dev/gpu$i ]] || { rm -f "$D/dev/gpu$i"; mknod -m 666 "$D/dev/gpu$i" c 1 3; }
    done

    local proctrack=proctrack/linuxproc
    if [[ ${ICSWEEP_SLURM_PROCTRACK:-} ]]; then
        proctrack=proctrack/${ICSWEEP_SLURM_PROCTRACK#proctrack/}
    elif [[ -d /sys/fs/cgroup/freezer && -w /sys/fs/cgroup/freezer ]]; then
        proctrack=proctrack/cgroup   # cgroup v1: kills every process of a job, also daemonized ones
    fi

    local n nodelines=""
    for n in "${NODES[@]}"; do
        nodelines+="NodeName=$n NodeHostname=$host NodeAddr=${NODE_ADDR[$n]} Port=${NODE_PORT[$n]} ${LAYOUT}"
        nodelines+="RealMemory=$NODE_MEM Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"$'\n'
    done
    put_file "$D/slurm.conf" 644 <<EOF
# Written by slurm/dev-cluster.sh on every start; edits here are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also is how long a requeued job waits before it may start again (default 120 s); it must also cover the delay between creating a step and launching it, so keep it >= 10
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=$proctrack
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# Schedule often (a tiny queue): a requeued job starts soon after its 10 s hold, a submitted one at once.
SchedulerParameters=sched_interval=2,bf_interval=5,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
JobRequeue=1
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (sacct, sacctmgr, slurmctld); AuthInfo does not cover it
AccountingStoragePass=$MUNGE_SOCK
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
${nodelines}PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF

    put_file "$D/gres.conf" 644 <<EOF
# Written by slurm/dev-cluster.sh. Fake GPUs: character devices, no NVML.
AutoDetect=off
NodeName=n[1-${#NODES[@]}] Name=gpu File=$D/dev/gpu[0-$((GPUS_PER_NODE - 1))]
EOF

    put_file "$D/cgroup.conf" 644 <<EOF
# Written by slurm/dev-cluster.sh.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

    put_file "$D/slurmdbd.conf" 600 <<EOF
# Written by slurm/dev-cluster.sh. The database is the private mariadb under $D/db (socket only).
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

check_paths() {
    ((${#MUNGE_SOCK} < 100 && ${#MYSQL_SOCK} < 100)) ||
        die "state directory $D is too long for unix socket paths; set ICSWEEP_SLURM_DIR to a short path such as /tmp/icsweep-slurm"
}

# ---------------------------------------------------------------- daemons
start_munged() {
    is_up munged && return 0
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --key-file="$D/munge/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$D/munge/munged.pid" --seed-file="$D/munge/munged.seed" --log-file="$D/munge/munged.log"
    wait_for munged 20 "$D/munge/munged.log" "$(log_of munged)" -- munge --socket="$MUNGE_SOCK" -n
    say "started munged (pid $(pid_of munged))"
}

start_mariadbd() {
    is_up mariadbd && return 0
    install -d -o mysql -g mysql -m 755 "$D/db"
    if [[ ! -d $D/db/data/mysql ]]; then
        rm -rf "$D/db/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$D/db/data" --auth-root-authentication-method=socket \
            --skip-test-db >>"$D/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed (last log line: $(last_log_line "$D/log/mariadb-install.log"));" \
                "see $D/log/mariadb-install.log, then: rm -rf $D/db && $0 start"
    fi
    rm -f "$MYSQL_SOCK"
    launch mariadbd mariadbd --no-defaults --user=mysql --datadir="$D/db/data" --socket="$MYSQL_SOCK" \
        --pid-file="$D/db/mysqld.pid" --skip-networking --log-error="$D/log/mariadb.log" --skip-log-bin \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --max-connections=100
    wait_for mariadbd 60 "$D/log/mariadb.log" "$(log_of mariadbd)" -- \
        mariadb-admin --no-defaults --socket="$MYSQL_SOCK" ping
    say "started mariadbd (pid $(pid_of mariadbd))"
}

start_slurmdbd() {
    is_up slurmdbd && return 0
    launch slurmdbd env MYSQL_UNIX_PORT="$MYSQL_SOCK" slurmdbd -D
    wait_for slurmdbd 60 "$D/log/slurmdbd.log" "$(log_of slurmdbd)" -- sacctmgr -n -P list cluster
    say "started slurmdbd (pid $(pid_of slurmdbd))"
}

ensure_cluster_registered() {  # sacctmgr add cluster works only once slurm.conf names accounting_storage/slurmdbd
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >>"$D/log/sacctmgr.log" 2>&1 ||
            die "sacctmgr could not add cluster $CLUSTER (see $D/log/sacctmgr.log); try: $0 stop && $0 start"
        say "registered cluster $CLUSTER in slurmdbd"
        return 1   # slurmctld, if running, must be restarted (scontrol reconfigure is not enough)
    fi
}

start_slurmctld() {
    is_up slurmctld && return 0
    launch slurmctld slurmctld -D
    wait_for slurmctld 60 "$D/log/slurmctld.log" "$(log_of slurmctld)" -- scontrol ping
    say "started slurmctld (pid $(pid_of slurmctld))"
}

start_slurmd() {
    local n=$1
    is_up "slurmd-$n" && return 0
    launch "slurmd-$n" slurmd -D -N "$n"
    say "started slurmd -N $n (pid $(pid_of "slurmd-$n"))"
}

node_states() { sinfo -h -N -p debug -o '%N %t' 2>/dev/null | sort -u; }

wait_nodes_idle() {  # both nodes up (idle, or running jobs); resume nodes left drained or down
    local deadline=$((SECONDS + 60)) n st resumed="" ok
    while :; do
        ok=1
        for n in "${NODES[@]}"; do
            is_up "slurmd-$n" || fail_daemon "slurmd-$n" "$D/log/slurmd-$n.log" "$(log_of "slurmd-$n")"
            st=$(node_states | awk -v n="$n" '$1 == n {print $2}')
            case $st in
                idle | mix | alloc | comp | resv | plnd) ;;
                *'*' | '' | unk*) ok=0 ;;
                *drain* | *drng* | down | fail* | inval)
                    ok=0
                    if [[ " $resumed " != *" $n "* ]]; then
                        local reason
                        reason=$(scontrol show node "$n" -o 2>/dev/null | grep -oE 'Reason=.*' |
                            sed -E 's/^Reason=//; s/ [A-Za-z]+=.*$//') || true
                        scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
                        say "resumed node $n (was $st: ${reason:-no reason given})"
                        resumed+=" $n"
                    fi
                    ;;
                *) ok=0 ;;
            esac
        done
        ((ok)) && return 0
        ((SECONDS < deadline)) || die "nodes did not become idle in 60 s ($(node_states | tr '\n' ' '));" \
            "see $D/log/slurmd-n1.log, $D/log/slurmctld.log; try: $0 stop && $0 start"
        sleep 0.3
    done
}

port_busy() { timeout 2 bash -c ": >/dev/tcp/$1/$2" 2>/dev/null; }

check_ports_free() {  # before starting a daemon of ours, its port must be free (not another SLURM, not another dir)
    local -a checks=("slurmdbd 127.0.0.1 $DBD_PORT" "slurmctld 127.0.0.1 $CTLD_PORT")
    local n c name addr port
    for n in "${NODES[@]}"; do checks+=("slurmd-$n ${NODE_ADDR[$n]} ${NODE_PORT[$n]}"); done
    for c in "${checks[@]}"; do
        read -r name addr port <<<"$c"
        if ! is_up "$name" && port_busy "$addr" "$port"; then
            die "port $port (for $name) is already in use by a process this state dir ($D) did not start" \
                "(another SLURM, or a dev cluster in another ICSWEEP_SLURM_DIR); stop that one first"
        fi
    done
}

all_up() {
    local d
    for d in "${DAEMONS[@]}"; do is_up "$d" || return 1; done
}

take_lock() {  # one start/stop at a time (e.g. several pytest workers starting the cluster together)
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock -w 900 9 || die "another dev-cluster.sh holds $D/.lock for 15 minutes; wait for it or remove the lock"
}

cmd_start() {
    need_root
    check_paths
    take_lock
    local t0=$SECONDS
    ensure_installed
    local was_up=0
    all_up && was_up=1
    CONFIG_CHANGED=0
    write_configs
    if ((was_up && CONFIG_CHANGED)); then
        say "warning: the configuration changed while the cluster runs; apply it with: $0 stop && $0 start"
    fi
    check_ports_free
    start_munged
    start_mariadbd
    start_slurmdbd
    local restart_ctld=0
    ensure_cluster_registered || restart_ctld=1
    if ((restart_ctld)) && is_up slurmctld; then
        stop_daemons slurmctld
    fi
    start_slurmctld
    local n
    for n in "${NODES[@]}"; do start_slurmd "$n"; done
    wait_nodes_idle
    if ((was_up)); then
        say "already running (state dir $D)"
    else
        say "cluster $CLUSTER is up: nodes ${NODES[*]}, partition debug, state dir $D ($((SECONDS - t0)) s)"
    fi
    echo "export SLURM_CONF=$D/slurm.conf"
}

cmd_stop() {
    need_root
    take_lock
    local any=0 d
    for d in "${DAEMONS[@]}"; do is_up "$d" && any=1; done
    if ((!any)); then
        say "not running (state dir $D)"
        return 0
    fi
    if is_up slurmctld; then
        local njobs
        njobs=$(squeue -h -o %i 2>/dev/null | wc -l) || njobs=0
        ((njobs > 0)) && say "note: $njobs job(s) still queued or running; they carry on when the cluster starts" \
            "again (scancel them first to drop them)"
    fi
    stop_daemons slurmd-n1 slurmd-n2 slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd
    stop_daemons munged
    say "stopped (state dir $D kept; start again with: $0 start)"
}

cmd_status() {
    local d pid up=1
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s stopped\n' "$d"
            up=0
        fi
    done
    if is_up slurmctld; then
        echo
        sinfo -N -o '%N %P %t %c %m %G' 2>&1 || up=0
    fi
    echo "SLURM_CONF=$D/slurm.conf"
    ((up)) && return 0
    return 1
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 start|stop|status (state dir: \$ICSWEEP_SLURM_DIR, default /tmp/icsweep-slurm)" ;;
esac
