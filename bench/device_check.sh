#!/usr/bin/env bash
# The GPU checks of one device session, as one call: the CUDA tests, then bench_pack.py on the GPU.
#
#   bash bench/device_check.sh [pack sizes ...]        (default: 1 16 64 256 1024)
#
# Logs go to $OUT (or /tmp/device_check). A machine without the project's dependencies gets them from wheels in
# .whl/ when that folder exists (made by bench/fetch_device_wheels.sh; carry it with the call); the project itself
# runs from the checkout (PYTHONPATH).
set -uo pipefail
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout "${TESTS_TIMEOUT:-180}" python3 -m pytest -q -p no:cacheprovider -m requires_cuda tests/ihmodel 2>&1 \
    | tee "$out/tests.log"
sizes=${*:-1 16 64 256 1024}
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-420}" python3 bench/bench_pack.py --device cuda --sizes $sizes 2>&1 | tee "$out/bench.log"
