"""When a trial may stop: its phase change is over (train.stop_early).

The phase change is the paper's: the first evaluation at which the mean `fsl_train` loss is below 0.4 ln 2. It
is over once the loss has also converged, judged at each later evaluation i (sequences s_i, loss l_i), still
below the threshold, by either of:

    floor:  l_i <= stop_floor                                    nothing left for the loss to show
    flat:   s_i - s_crossed >= stop_patience  and                a whole window after the crossing, in which
            l_j - l_i < stop_tolerance * l_j                     the loss fell by less than that fraction of itself

where j is the last evaluation at least `stop_patience` sequences before i. A trial that never crosses runs its
whole budget. The rule reads only the evaluation history, so a resumed trial that replays it stops at the same
evaluation as an uninterrupted one; and since the crossing evaluation is always kept, the threshold phase-change
time of a stopped trial is that of the same trial run to its budget.
"""
from __future__ import annotations

import math

import numpy as np
import zarr

from ihmodel.config import EVALUATORS, TrainConfig

PHASE_CHANGE_LOSS = 0.4 * math.log(2)  # PAPER.md: the phase-change threshold on the fsl_train loss
STOP_EVALUATOR = "fsl_train"


def crossing_index(loss: np.ndarray) -> int | None:
    """The first evaluation below the phase-change threshold, or None."""
    below = np.flatnonzero(np.asarray(loss) < PHASE_CHANGE_LOSS)
    return int(below[0]) if len(below) else None


def stop_index(sequences: np.ndarray, loss: np.ndarray, train: TrainConfig) -> int | None:
    """The evaluation at which a trial with this fsl_train history stops (None: it trains on)."""
    sequences, loss = np.asarray(sequences), np.asarray(loss)
    crossed = crossing_index(loss)
    if crossed is None:
        return None
    for i in range(crossed, len(loss)):
        if not loss[i] < PHASE_CHANGE_LOSS:
            continue
        if loss[i] <= train.stop_floor:
            return i
        if sequences[i] - sequences[crossed] >= train.stop_patience:
            j = int(np.flatnonzero(sequences <= sequences[i] - train.stop_patience)[-1])
            if loss[j] - loss[i] < train.stop_tolerance * loss[j]:
                return i
    return None


def store_crossing(store_path) -> int | None:
    """Sequences at a trial store's phase change (its first fsl_train evaluation below the threshold), or None."""
    group = zarr.open_group(str(store_path), mode="r")
    loss = group["eval_loss"][:, EVALUATORS.index(STOP_EVALUATOR)]
    index = crossing_index(loss)
    return None if index is None else int(group["eval_sequences"][index])
