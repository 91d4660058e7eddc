"""Runs sweeps: Hydra sweep configs (sweeps/) -> grid of trials with stable ids -> the sweep directory -> a backend
(local process pool, Ray Tune, Submitit/SLURM) that calls ihmodel.run_trial for every trial not yet complete.

Entry point: `icsweep` (orchestrator.cli). Nothing below the CLI imports `analysis`.
"""
