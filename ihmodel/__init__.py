"""The science core: the paper's task, model with hook points, clamps, statistics, one-trial training.

Knows nothing of orchestration. Public entry point: `run_trial(config, store_path)`.
"""
from ihmodel.config import TrialConfig, trial_id


def run_trial(config: TrialConfig, store_path=None):
    """Run one trial into its Zarr store; idempotent and resumable (see ihmodel.train.run_trial)."""
    from ihmodel.train import run_trial as _run_trial  # torch import deferred: configs load without it

    return _run_trial(config, store_path)


__all__ = ["TrialConfig", "run_trial", "trial_id"]
