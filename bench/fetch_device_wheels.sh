#!/usr/bin/env bash
# Wheels of the project's dependencies that a lent GPU machine lacks (its image has torch, xarray, numpy, pytest,
# tqdm, h5py; not zarr or hydra), for Python 3.12 on x86-64, into .whl/ (git-ignored; bench/device_check.sh
# installs them there). Run here, where pip can download; versions as in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
pin() { .venv/bin/python -c "from importlib.metadata import version; print('$1==' + version('$1'))"; }
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$(pin zarr)" "$(pin numcodecs)" "$(pin google-crc32c)" "$(pin donfig)" "$(pin hydra-core)" "$(pin omegaconf)"
.venv/bin/python -m pip wheel -q --no-deps -w .whl "$(pin antlr4-python3-runtime)"  # published as an sdist only
ls .whl
