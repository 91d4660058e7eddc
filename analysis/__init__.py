"""The researcher's side: a sweep as one labeled xarray Dataset, phase-change timing, tables and figures.

    import analysis
    ds = analysis.open_sweep("runs/labels")              # lazy; dims n_labels, clamp, seed, step, eval_step, ...
    pc = analysis.phase_change(ds, method="threshold")   # change_step, change_sequences, never over the grid
    analysis.phase_change_table(ds)                      # pandas: mean, sem, n_seeds per n_labels x clamp

Reads the on-disk formats only (ihmodel.store, ihmodel.sweepdir, ihmodel.config); knows nothing of the backends.
"""
from analysis.open import IncompleteSweepWarning, open_sweep, open_trials
from analysis.phase import induction_formation, phase_change
from analysis.table import phase_change_table

__all__ = ["IncompleteSweepWarning", "induction_formation", "open_sweep", "open_trials", "phase_change",
           "phase_change_table"]
