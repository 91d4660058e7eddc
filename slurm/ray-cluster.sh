# Source inside a SLURM batch script: a Ray cluster over the job's nodes, for the job's lifetime only.
#
#     source slurm/ray-cluster.sh
#     ray_cluster_start            # head on the first node, one worker per other node; exports RAY_ADDRESS
#     trap ray_cluster_stop EXIT   # kills exactly the srun steps it started (never `ray stop`)
#     python my_driver.py          # ray.init(address=$RAY_ADDRESS)
#
# Per job and node: a block of 100 ports from SLURM_JOB_ID and the node's index (GCS, node manager, object
# manager, agents, workers; distinct per node too, since nodes may share a host as in the dev cluster), a short
# temp dir per node (Unix socket paths over 107 characters crash Ray), and a fresh auth token shared by head,
# workers and driver (Ray >= 2.5x turns token authentication on by default). Node addresses come from
# `scontrol show node` (NodeAddr), never from `hostname`, which can repeat across nodes.
#
# Settings (environment): ICSWEEP_PYTHON (the Python with ray installed; default: python3 on PATH),
# ICSWEEP_RAY_PORT_BASE (default 20000), ICSWEEP_RAY_OBJECT_STORE_MB (default 1024), ICSWEEP_RAY_WAIT_S (60).

_ray_log() { echo "ray-cluster.sh: $*" >&2; }

_ray_node_addr() {  # the NodeAddr of SLURM node $1, as an IP address
    local addr
    addr=$(scontrol show node "$1" -o | grep -oE 'NodeAddr=[^ ]+' | cut -d= -f2)
    [[ -n $addr ]] || addr=$1
    if [[ ! $addr =~ ^[0-9.]+$ ]]; then
        addr=$(getent hosts "$addr" | awk '{print $1; exit}')
    fi
    echo "$addr"
}

_ray_cpus_on() {  # CPUs the job holds on its $1-th node (0-based), from SLURM_JOB_CPUS_PER_NODE like "2(x2),4"
    local want=$1 i=0 part count reps
    IFS=, read -ra parts <<<"${SLURM_JOB_CPUS_PER_NODE:-1}"
    for part in "${parts[@]}"; do
        count=${part%%(*}
        reps=1
        [[ $part == *"(x"* ]] && reps=${part##*(x} && reps=${reps%)}
        if (( want < i + reps )); then echo "$count"; return; fi
        i=$((i + reps))
    done
    echo 1
}

_ray_port_block() {  # first port of node $1's block of 100 (8 nodes per job before blocks repeat)
    echo $(( ${ICSWEEP_RAY_PORT_BASE:-20000} + ((SLURM_JOB_ID * 8 + $1) % 400) * 100 ))
}

_ray_wait_port() {  # wait until host $1 accepts TCP connections on port $2 (while pid $4 lives), at most $3 s
    local deadline=$((SECONDS + $3))
    while (( SECONDS < deadline )); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.3
    done
    return 1
}

ray_cluster_start() {
    [[ -n ${SLURM_JOB_ID:-} ]] || { _ray_log "not inside a SLURM job (no SLURM_JOB_ID)"; return 1; }
    local py=${ICSWEEP_PYTHON:-python3}
    local ray_bin
    ray_bin=$(dirname "$(command -v "$py")")/ray
    [[ -x $ray_bin ]] || ray_bin=ray
    mapfile -t RAY_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    local head=${RAY_NODES[0]} head_ip
    head_ip=$(_ray_node_addr "$head")
    local store=$(( ${ICSWEEP_RAY_OBJECT_STORE_MB:-1024} * 1024 * 1024 ))
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$("$py" -c 'import secrets; print(secrets.token_hex(32))')}
    export RAY_ADDRESS="$head_ip:$(_ray_port_block 0)"
    export RAY_DISABLE_USAGE_STATS=1
    RAY_PIDS=()
    local i node ip cpus args base
    for i in "${!RAY_NODES[@]}"; do
        node=${RAY_NODES[$i]}
        base=$(_ray_port_block "$i")
        ip=$(_ray_node_addr "$node")
        cpus=$(_ray_cpus_on "$i")
        # Ports: base = the GCS on the head; the rest per node; workers in base+10..base+99.
        args=(--block --node-ip-address="$ip" --num-cpus="$cpus" --object-store-memory="$store"
              --node-manager-port=$((base + 1)) --object-manager-port=$((base + 2))
              --metrics-export-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4))
              --dashboard-agent-listen-port=$((base + 5)) --runtime-env-agent-port=$((base + 6))
              --min-worker-port=$((base + 10)) --max-worker-port=$((base + 99))
              --temp-dir="/tmp/ray$SLURM_JOB_ID$node" --disable-usage-stats)
        if (( i == 0 )); then
            args+=(--head --port="$base" --include-dashboard=false)
        else
            args+=(--address="$RAY_ADDRESS")
        fi
        # GPUs: those SLURM gave this step (CUDA_VISIBLE_DEVICES), else none.
        srun --overlap -N1 -n1 -w "$node" --kill-on-bad-exit=0 bash -c \
            'n=0; [[ -n ${CUDA_VISIBLE_DEVICES:-} ]] && n=$(tr , "\n" <<<"$CUDA_VISIBLE_DEVICES" | grep -c .);
             exec "$0" start "$@" --num-gpus="$n"' "$ray_bin" "${args[@]}" &
        RAY_PIDS+=($!)
        if (( i == 0 )); then
            _ray_wait_port "$head_ip" "$base" "${ICSWEEP_RAY_WAIT_S:-60}" "${RAY_PIDS[0]}" || {
                _ray_log "the Ray head on $head ($RAY_ADDRESS) did not come up"; ray_cluster_stop; return 1; }
        fi
    done
    # Wait until every node has joined, so work is spread over the whole allocation from the start.
    "$py" - "${#RAY_NODES[@]}" "${ICSWEEP_RAY_WAIT_S:-60}" <<'EOF' || { _ray_log "not every node joined"; ray_cluster_stop; return 1; }
import sys, time, ray
want, wait = int(sys.argv[1]), float(sys.argv[2])
ray.init(logging_level="ERROR", log_to_driver=False)  # RAY_ADDRESS, RAY_AUTH_* from the environment
deadline = time.time() + wait
while len([n for n in ray.nodes() if n["Alive"]]) < want:
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.5)
EOF
    _ray_log "Ray cluster up at $RAY_ADDRESS: ${RAY_NODES[*]} (srun pids ${RAY_PIDS[*]})"
}

ray_cluster_stop() {
    local pid
    for pid in "${RAY_PIDS[@]:-}"; do
        [[ -z $pid ]] || kill "$pid" 2>/dev/null || true
    done
    for pid in "${RAY_PIDS[@]:-}"; do
        [[ -z $pid ]] || wait "$pid" 2>/dev/null || true
    done
    RAY_PIDS=()
    if [[ -z ${ICSWEEP_RAY_KEEP_TMP:-} ]]; then
        local node
        for node in "${RAY_NODES[@]:-}"; do
            [[ -z $node ]] || rm -rf "/tmp/ray$SLURM_JOB_ID$node" || true
        done
    fi
}
