"""The researcher's side: a sweep as one labeled xarray Dataset, phase-change timing, tables and figures.

Reads the on-disk formats only (ihmodel.store, ihmodel.sweepdir, ihmodel.config); knows nothing of the backends.
"""
from analysis.open import IncompleteSweepWarning, open_sweep, open_trials

__all__ = ["IncompleteSweepWarning", "open_sweep", "open_trials"]
