#!/usr/bin/env bash
# The GPU checks of one device session, as one call within TOTAL_TIMEOUT seconds (default 360, so that a 15-minute
# session can run it twice): the CUDA tests, the setup of a 1,024-trial pack (bench_setup.py), then bench_pack.py
# on the GPU with whatever time is left.
#
#   bash bench/device_check.sh [pack sizes ...]        (default: 1 64 1024)
#
# Logs go to $OUT (or /tmp/device_check): device.log, tests.log, setup.log, bench.log. A machine without the
# project's dependencies gets them from wheels in .whl/ when that folder exists (made by
# bench/fetch_device_wheels.sh; carry it with the call); the project itself runs from the checkout (PYTHONPATH).
set -uo pipefail
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
deadline=$((SECONDS + ${TOTAL_TIMEOUT:-360}))
# seconds for the next stage: at most $1, and never past the deadline (less a margin for the logs to be written)
budget() { local left=$((deadline - SECONDS - 5)); echo $((left < $1 ? (left > 1 ? left : 1) : $1)); }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    nproc
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    git log -1 --format='commit %h %s' 2>/dev/null
} 2>&1 | tee "$out/device.log"
timeout "$(budget "${TESTS_TIMEOUT:-150}")" python3 -m pytest -q -p no:cacheprovider -m requires_cuda tests/ihmodel \
    2>&1 | tee "$out/tests.log"
timeout "$(budget "${SETUP_TIMEOUT:-60}")" python3 bench/bench_setup.py --device cuda --sizes 1024 2>&1 \
    | tee "$out/setup.log"
sizes=${*:-1 64 1024}
# shellcheck disable=SC2086
timeout "$(budget 600)" python3 bench/bench_pack.py --device cuda --sizes $sizes 2>&1 | tee "$out/bench.log"
