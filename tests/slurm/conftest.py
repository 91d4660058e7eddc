"""Fixtures for tests that submit real jobs to the two-node dev SLURM cluster of slurm/dev-cluster.sh.

`slurm_cluster` (session scope) starts the cluster once (a no-op when it already runs) and returns the
environment to pass to subprocesses: `{**os.environ, "SLURM_CONF": ...}`. The cluster is left running after the
session so that the next run is fast; stop it with `slurm/dev-cluster.sh stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO / "slurm" / "dev-cluster.sh"

# Exit statuses of dev-cluster.sh that mean "this machine cannot host the dev cluster" rather than a bug.
_NOT_ROOT = 2
_CANNOT_INSTALL = 3


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """Start (or reuse) the dev SLURM cluster; return the env dict (with SLURM_CONF) for subprocess calls."""
    if os.geteuid() != 0:
        pytest.skip("the dev SLURM cluster needs root (slurm/dev-cluster.sh installs packages and starts daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it (slurm/dev-cluster.sh needs Debian)")
    try:
        proc = subprocess.run(
            [str(DEV_CLUSTER), "start"], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        pytest.fail("slurm/dev-cluster.sh start took more than 15 minutes")
    message = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode in (_NOT_ROOT, _CANNOT_INSTALL):
        pytest.skip(f"dev SLURM cluster unavailable: {message}")
    if proc.returncode != 0:
        pytest.fail(f"slurm/dev-cluster.sh start failed (exit {proc.returncode}): {message}\n{proc.stdout}")
    export = [line for line in proc.stdout.splitlines() if line.startswith("export SLURM_CONF=")]
    assert export, f"dev-cluster.sh start printed no 'export SLURM_CONF=' line:\n{proc.stdout}"
    slurm_conf = export[-1].split("=", 1)[1]
    return {**os.environ, "SLURM_CONF": slurm_conf}
