"""Backends: local (process pool), ray (Ray Tune), submitit (SLURM job arrays); see base.Backend.

This registry is the one place that names them; base.Backend knows none. Each is imported only when chosen
(ray and submitit are heavy, and absent where they are not installed).
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

from orchestrator.backends.base import Backend
from orchestrator.sweep_config import Sweep

BACKENDS = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "ray": ("orchestrator.backends.ray", "RayBackend"),
    "submitit": ("orchestrator.backends.submitit", "SubmititBackend"),
}


def make_backend(sweep: Sweep, sweep_dir: Path) -> Backend:
    """The sweep's backend (sweep.backend names one of BACKENDS), for the sweep directory sweep_dir."""
    if sweep.backend not in BACKENDS:
        raise ValueError(f"backend={sweep.backend!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[sweep.backend]
    return getattr(import_module(module), cls)(sweep, sweep_dir)
