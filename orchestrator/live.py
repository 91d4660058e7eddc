"""`icsweep status DIR --watch` and `--json`: the grid's cells (data axes x clamp sets, seeds aggregated), each with
its sequences so far, current fsl_train eval loss and phase-change time, from the run states (orchestrator.status)
and the stores' evaluations (analysis.progress).

Only the CLI calls this module: it reads stores through `analysis`, which nothing else in the orchestrator imports.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from analysis.phase import THRESHOLD
from analysis.progress import EVALUATOR, EvalProgress, sweep_eval_progress
from orchestrator.driver import live_driver
from orchestrator.status import (STATES, TrialState, counts, format_counts, format_training, slurm_queue,
                                 sweep_states, training_totals)

SEED_AXIS = "seed"  # aggregated within a cell (orchestrator.grid names the seed axis so)


def _trial(state: TrialState, progress: EvalProgress) -> dict[str, Any]:
    return {"id": state.id, "axes": state.axes, "state": state.state, "sequences": state.sequences,
            "budget": state.budget, "stopped_early": state.stopped_early, "evals": progress.evals,
            "fsl_train_loss": progress.loss, "crossed_sequences": progress.crossed_sequences}


def _summary(trials: list[tuple[TrialState, EvalProgress]]) -> dict[str, Any]:
    """What a group of trials (a cell's seeds, or the whole sweep) adds up to."""
    states = [state for state, _ in trials]
    losses = [p.loss for _, p in trials if p.loss is not None]
    crossed = [p.crossed_sequences for _, p in trials if p.crossed_sequences is not None]
    return {"trials": len(trials), "states": counts(states), **training_totals(states),
            "stopped_early": sum(s.stopped_early for s in states),
            "fsl_train_loss": sum(losses) / len(losses) if losses else None,  # mean over trials with an eval
            "crossed": len(crossed),
            "crossed_sequences": sum(crossed) / len(crossed) if crossed else None}  # mean over those crossed


def sweep_view(sweep_dir: Path) -> dict[str, Any]:
    """The facts `--json` prints and `--watch` shows: `trials` (one row each), `cells` (seeds aggregated: counts,
    sums, the mean loss and crossing time over the seeds that have one) and `totals` (with the compute saved)."""
    manifest, states = sweep_states(sweep_dir)
    progress = sweep_eval_progress(sweep_dir)
    trials = [(state, progress[state.id]) for state in states]
    cell_axes = [axis.name for axis in manifest.axes if axis.name != SEED_AXIS]
    cells: dict[tuple, list] = {}
    for state, p in trials:
        cells.setdefault(tuple(state.axes[name] for name in cell_axes), []).append((state, p))
    return {"sweep": manifest.sweep, "dir": str(sweep_dir),
            "phase_change": f"first eval with {EVALUATOR} eval_loss < {THRESHOLD:.4f} nats (0.4 ln 2)",
            "trials": [_trial(state, p) for state, p in trials],
            "cells": [{"axes": dict(zip(cell_axes, key)), **_summary(members)} for key, members in cells.items()],
            "totals": _summary(trials)}


def _complete_cell(cell: dict[str, Any]) -> str:
    c = cell["states"]
    others = ", ".join(f"{c[s]} {s}" for s in STATES if s != "complete" and c[s])
    return f"{c['complete']}/{cell['trials']}" + (f", {others}" if others else "")


def _sequences_cell(cell: dict[str, Any]) -> str:
    share = 100 * cell["sequences"] / cell["budget"] if cell["budget"] else 0.0
    early = f", {cell['stopped_early']} stopped early" if cell["stopped_early"] else ""
    return f"{cell['sequences']:,}/{cell['budget']:,} ({share:.0f}%{early})"


def _change_cell(cell: dict[str, Any]) -> str:
    if cell["crossed"]:
        return f"{cell['crossed_sequences']:,.0f} ({cell['crossed']}/{cell['trials']})"
    return "never" if cell["states"]["complete"] == cell["trials"] else "not yet"


def render(view: dict[str, Any]) -> Table:
    """The live table of a `sweep_view`: one row per cell."""
    cell_axes = list(view["cells"][0]["axes"]) if view["cells"] else []
    table = Table(title=f"sweep {view['sweep']}: {format_counts(view['totals']['states'])}",
                  caption=f"{format_training(view['totals'])}; phase change (in sequences, mean over the seeds "
                          f"that crossed): {view['phase_change']}")
    for name in cell_axes:
        table.add_column(name, no_wrap=True)
    table.add_column("complete", no_wrap=True)
    table.add_column("sequences", justify="right", no_wrap=True)
    table.add_column(f"{EVALUATOR} loss", justify="right")
    table.add_column("phase change", justify="right")
    for cell in view["cells"]:
        loss = cell["fsl_train_loss"]
        table.add_row(*(str(cell["axes"][name]) for name in cell_axes), _complete_cell(cell), _sequences_cell(cell),
                      "-" if loss is None else f"{loss:.3f}", _change_cell(cell))
    return table


def finished(sweep_dir: Path, view: dict[str, Any]) -> bool:
    """Every trial complete, or none running with no driver alive and no SLURM task queued to start one."""
    c = view["totals"]["states"]
    return c["complete"] == view["totals"]["trials"] or (
        not c["running"] and not slurm_queue(sweep_dir) and live_driver(sweep_dir) is None)


def watch(sweep_dir: Path, console: Console | None = None, interval: float = 2.0,
          refreshes: int | None = None) -> dict[str, Any]:
    """The live table until the sweep is `finished` (or after `refreshes` refreshes, or Ctrl-C); the last view.

    On a terminal the table redraws in place; the last one is printed as plain output when the watch ends, which
    is all a pipe or a log file gets.
    """
    # a pipe or log gets rich's 80 columns by default, which wraps this table's cells: give it room
    console = console or (Console() if Console().is_terminal else Console(width=160))
    with Live(console=console, auto_refresh=False, transient=True) as live:
        shown = 0
        while True:
            view = sweep_view(sweep_dir)
            live.update(render(view), refresh=True)
            shown += 1
            if finished(sweep_dir, view) or (refreshes is not None and shown >= refreshes):
                break
            time.sleep(interval)
    console.print(render(view))
    return view
