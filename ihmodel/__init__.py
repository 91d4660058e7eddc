"""The science core: the paper's task, model with hook points, clamps, statistics, one-trial training.

Knows nothing of orchestration. Public entry points: `run_trial(config, store_path)`
and `run_pack(configs, store_paths)`.
"""
from ihmodel.config import TrialConfig, trial_id


def run_trial(config: TrialConfig, store_path=None):
    """Run one trial into its Zarr store; idempotent and resumable (see ihmodel.train.run_trial)."""
    from ihmodel.train import run_trial as _run_trial  # torch import deferred: configs load without it

    return _run_trial(config, store_path)


def run_pack(configs, store_paths, progress=None):
    """Train K trials of identical shapes as one batched computation, each into its own store as if alone;
    returns per trial None (complete) or the exception that failed it (see ihmodel.pack.run_pack)."""
    from ihmodel.pack import run_pack as _run_pack

    return _run_pack(configs, store_paths, progress)


__all__ = ["TrialConfig", "run_pack", "run_trial", "trial_id"]
