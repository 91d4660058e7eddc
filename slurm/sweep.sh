#!/usr/bin/env bash
#SBATCH --job-name=icsweep-driver
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --output=icsweep-driver-%j.out
#
# The entry point on a SLURM cluster:
#
#   sbatch slurm/sweep.sh sweep=paper_fig6 [out=DIR] [overrides]
#       A small driver job: it writes the manifest, submits the pending trials as one job array through
#       Submitit (partition, time, memory, gres from submitit.* and resources.*), waits for it (retrying failed
#       trials) and prints the phase-change table. With submitit.wait=false it submits and ends at once.
#
#   sbatch -N2 --cpus-per-task=8 [--gpus-per-node=2] slurm/sweep.sh sweep=paper_fig6 backend=ray [overrides]
#       Ray mode: a Ray cluster over the allocation's nodes (slurm/ray-cluster.sh: head + workers with srun, a
#       per-job port block, temp dir and auth token, stopped by PID on exit), and the ray backend in it.
#
# Rerunning the same command resumes: complete trials are skipped, partial ones continue from their checkpoints.
# Relative paths (out=) are relative to the directory sbatch was called from. The Python is $ICSWEEP_PYTHON, else
# the repository's .venv, else python3 on PATH.
set -euo pipefail

# sbatch runs a copy of this script from its spool directory: find the repository from the job's command.
root=${ICSWEEP_ROOT:-}
if [[ -z $root && -n ${SLURM_JOB_ID:-} ]]; then
    command=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | grep -oE 'Command=[^ ]+' | cut -d= -f2- || true)
    [[ -n $command && -f $command ]] && root=$(cd "$(dirname "$command")/.." && pwd)
fi
if [[ -z $root ]]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -f $here/slurm/ray-cluster.sh ]]; then root=$here; else root=${SLURM_SUBMIT_DIR:-$PWD}; fi
fi
py=${ICSWEEP_PYTHON:-}
if [[ -z $py ]]; then
    if [[ -x $root/.venv/bin/python ]]; then py=$root/.venv/bin/python; else py=$(command -v python3); fi
fi
export ICSWEEP_PYTHON=$py

backend=submitit
for arg in "$@"; do
    case $arg in backend=*) backend=${arg#backend=} ;; esac
done
args=("$@")
[[ " $* " == *" backend="* ]] || args+=(backend=submitit)

echo "sweep.sh: job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}: icsweep run ${args[*]} ($py)"
case $backend in
    ray)
        # shellcheck source=slurm/ray-cluster.sh
        source "$root/slurm/ray-cluster.sh"
        trap ray_cluster_stop EXIT
        ray_cluster_start
        "$py" -m orchestrator.cli run "${args[@]}" "ray.address=$RAY_ADDRESS"
        ;;
    submitit|local)
        "$py" -m orchestrator.cli run "${args[@]}"
        ;;
    *)
        echo "sweep.sh: backend=$backend; choose submitit (default: a job array) or ray (a Ray cluster over the allocation)" >&2
        exit 2
        ;;
esac
