# Source this file to point SLURM commands at the dev cluster of slurm/dev-cluster.sh:
#     source slurm/env.sh
# It uses the same state directory as the script: $ICSWEEP_SLURM_DIR, default /tmp/icsweep-slurm.
export SLURM_CONF="${ICSWEEP_SLURM_DIR:-/tmp/icsweep-slurm}/slurm.conf"
