"""How far each trial's evaluations have got, read from stores that trials may still be writing: the last
`fsl_train` eval loss and when it first fell below the paper's threshold (analysis.phase's `threshold` method).

For `icsweep status --watch/--json`, which rereads a sweep every few seconds while it trains. A reader never
disturbs a writer (it only reads files, which zarr replaces whole) and never fails on a store mid-write: a store
still being laid down has no evaluations yet, and rows whose shape is grown but whose values have not landed (a
writer resizes each array before writing it) are left out, so the facts only move forward.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ihmodel.stopping import STOP_EVALUATOR as EVALUATOR, crossing_index
from ihmodel.sweepdir import read_manifest, store_path
from analysis.storeio import CorruptStoreError, Read, StoreInfo, read_info, read_many


@dataclass(frozen=True)
class EvalProgress:
    evals: int = 0  # evaluations written
    eval_sequences: int | None = None  # training sequences at the last of them
    loss: float | None = None  # fsl_train eval loss at the last of them
    crossed_sequences: int | None = None  # sequences at the phase change (ihmodel.stopping); None: not yet


def _info(path: Path) -> StoreInfo | None:
    try:
        return read_info(path)
    except CorruptStoreError:  # being laid down (or broken, which status reports): no evaluations to show
        return None


def _reads(info: StoreInfo) -> list[Read]:
    rows = (slice(0, info.rows("eval_step")),)
    return [Read(info.path, "evaluator", [(slice(None),)], info.arrays["evaluator"]),
            Read(info.path, "eval_sequences", [rows], info.arrays["eval_sequences"]),
            Read(info.path, "eval_loss", [rows + (slice(None),)], info.arrays["eval_loss"])]


def _progress(evaluators: np.ndarray, sequences: np.ndarray, losses: np.ndarray) -> EvalProgress:
    if EVALUATOR not in list(evaluators):
        return EvalProgress()  # the evaluator coordinate not yet written
    loss = losses[:, list(evaluators).index(EVALUATOR)].astype(np.float64)  # (eval_step,)
    # Rows that have landed: a finite loss (its fill is NaN) and sequences that grow (their fill is 0); the
    # writer appends in order, so they are a prefix.
    landed = np.isfinite(loss) & np.concatenate([[True], np.diff(sequences) > 0])
    n = int(np.argmin(landed)) if not landed.all() else len(landed)
    if n == 0:
        return EvalProgress()
    crossing = crossing_index(loss[:n])  # the same crossing the stop rule and refinement read
    return EvalProgress(n, int(sequences[n - 1]), float(loss[n - 1]),
                        int(sequences[crossing]) if crossing is not None else None)


def _read(infos: Sequence[StoreInfo]) -> list[EvalProgress]:
    values = read_many([read for info in infos for read in _reads(info)])
    return [_progress(*(value[0] for value in values[3 * i:3 * i + 3])) for i in range(len(infos))]


def _read_alone(info: StoreInfo) -> EvalProgress:
    try:
        return _read([info])[0]
    except CorruptStoreError:  # deleted or replaced since its metadata was read (a trial restarted from scratch)
        return EvalProgress()


def eval_progress(paths: Sequence[str | Path]) -> list[EvalProgress]:
    """Each store's evaluation progress (in order; an absent store has none), in one batch of reads."""
    infos = {i: info for i, path in enumerate(paths) if (info := _info(Path(path))) is not None
             and {"evaluator", "eval_sequences", "eval_loss"} <= info.arrays.keys()}
    try:
        read = _read(list(infos.values()))
    except CorruptStoreError:  # one store changed under the batch: read each alone, so the others still show
        read = [_read_alone(info) for info in infos.values()]
    found = dict(zip(infos, read))
    return [found.get(i, EvalProgress()) for i in range(len(paths))]


def sweep_eval_progress(sweep_dir: str | Path) -> dict[str, EvalProgress]:
    """Every trial of a sweep directory's manifest: its evaluation progress, by trial id."""
    ids = read_manifest(sweep_dir).trial_ids()
    return dict(zip(ids, eval_progress([store_path(sweep_dir, i) for i in ids])))
