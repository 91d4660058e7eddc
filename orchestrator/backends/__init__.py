"""Backends: local (process pool), ray (Ray Tune), submitit (SLURM job arrays); see base.Backend."""
