"""Adaptive refinement of numeric axes (`refine.axes`, `refine.rounds`, `refine.min_ratio`): once the grid's cells
are done, add cells where the phase-change time jumps, run them, and repeat.

A round looks, for each refined axis, clamp set and combination of the other data axes' values, at each pair of
neighbouring values a < b of the axis. A cell's time is the mean over its seeds that crossed of the sequences at
its phase change (first fsl_train evaluation below 0.4 ln 2, ihmodel.stopping); a cell none of whose seeds crossed
never did. The pair gets the midpoint (a + b) / 2 (rounded for an integer axis; none when no value lies between)
when both crossed and their times differ by more than `min_ratio`, or when one crossed and the other never did.
The midpoint is added for that clamp set, every seed and every value of the other data axes, so the new value is a
whole slice of the grid. Rounds go on until `rounds` are done or one adds nothing.

The manifest records each round (`extra.refine`: the round, each added cell with the pair and times that called
for it, and its trial ids), so rerunning the same command resumes a round's trials and goes on with the next
round; it never decides a recorded round again. The driver decides; backends only run trials.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihmodel.config import from_yaml
from ihmodel.stopping import store_crossing
from ihmodel.store import is_complete
from ihmodel.sweepdir import Manifest, read_manifest, store_path
from orchestrator.grid import Trial, axis_name, expand
from orchestrator.sweep_config import Sweep

RECORD = "refine"  # manifest.extra key: the rounds done, in order


@dataclass
class Cell:
    """What one round adds: `axis` (its config key) at `value`, for clamp set `clamp`, between `pair`."""

    axis: str
    value: Any
    clamp: str
    pair: tuple[Any, Any]
    times: tuple[float | None, float | None]  # seed-mean phase-change sequences of the pair (None: never)

    def describe(self) -> str:
        shown = ["never" if t is None else f"{t:,.0f}" for t in self.times]
        return (f"{self.axis}={self.value} for {self.clamp} (between {self.pair[0]} at {shown[0]} and "
                f"{self.pair[1]} at {shown[1]} sequences)")


def rounds_done(manifest: Manifest) -> list[dict]:
    return list(manifest.extra.get(RECORD, []))


def refined_trials(sweep_dir: Path, known: set[str]) -> list[Trial]:
    """The trials that earlier rounds added (not in `known`), so a rerun resumes them like the grid's."""
    manifest = read_manifest(sweep_dir)
    added = {tid for record in rounds_done(manifest) for tid in record["trials"]} - known
    return [Trial(e.id, from_yaml(e.config_yaml), dict(e.axes)) for e in manifest.trials if e.id in added]


def next_round(sweep: Sweep, sweep_dir: Path) -> tuple[int, list[Cell], list[Trial]] | None:
    """The next round's number, cells and new trials, decided from the stores; None when refinement is over (all
    rounds recorded, or the last one added nothing)."""
    manifest = read_manifest(sweep_dir)
    done = rounds_done(manifest)
    if len(done) >= sweep.refine.rounds or (done and not done[-1]["cells"]):
        return None
    cells = [cell for key in sweep.refine.axes for cell in _jumps(sweep, manifest, sweep_dir, key)]
    known = set(manifest.trial_ids())
    trials = []
    for cell in cells:
        narrowed = dataclasses.replace(sweep, axes={**sweep.axes, cell.axis: [cell.value]}, clamps=[cell.clamp])
        trials += [t for t in expand(narrowed) if t.id not in known]
    return len(done) + 1, cells, trials


def record(cells: list[Cell], trials: list[Trial], round_number: int) -> dict:
    """A round as the manifest keeps it."""
    return {"round": round_number, "cells": [dataclasses.asdict(c) for c in cells], "trials": [t.id for t in trials]}


def _jumps(sweep: Sweep, manifest: Manifest, sweep_dir: Path, key: str) -> list[Cell]:
    """The midpoints one axis needs, over clamp sets and the other data axes' values of this sweep."""
    name = axis_name(key)
    others = {axis_name(k): values for k, values in sweep.axes.items() if k != key}
    integer = all(isinstance(v, int) for v in sweep.axes[key])
    cells = []
    for clamp in sweep.clamps:
        for combo in itertools.product(*others.values()):
            fixed = {**dict(zip(others, combo)), "clamp": clamp}
            entries = [e for e in manifest.trials if e.axes.get("seed") in sweep.seeds
                       and all(e.axes.get(k) == v for k, v in fixed.items())]
            values = sorted({e.axes[name] for e in entries})
            times = {v: _cell_time(sweep_dir, [e.id for e in entries if e.axes[name] == v]) for v in values}
            for a, b in zip(values, values[1:]):
                if times[a] is _UNDECIDED or times[b] is _UNDECIDED or not _jump(times[a], times[b], sweep):
                    continue
                middle = (a + b) / 2
                middle = math.floor(middle) if integer else middle
                if a < middle < b:
                    cells.append(Cell(key, middle, clamp, (a, b), (times[a], times[b])))
    return cells


_UNDECIDED = object()  # a cell with a trial not complete (failed): no jump is read off it


def _cell_time(sweep_dir: Path, ids: list[str]) -> float | None | object:
    """Mean phase-change sequences over the seeds that crossed; None if none did."""
    paths = [store_path(sweep_dir, tid) for tid in ids]
    if not paths or not all(is_complete(p) for p in paths):
        return _UNDECIDED
    crossings = [c for c in (store_crossing(p) for p in paths) if c is not None]
    return sum(crossings) / len(crossings) if crossings else None


def _jump(a: float | None, b: float | None, sweep: Sweep) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    low, high = sorted((a, b))
    return high > sweep.refine.min_ratio * max(low, 1.0)
