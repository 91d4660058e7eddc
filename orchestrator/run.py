"""`icsweep run`: compose the sweep, expand the grid, write the manifest, group the pending trials into packs
(orchestrator.packs) and run them on a backend.

The same on every backend: damaged stores and checkpoints are set aside (orchestrator.verify), complete trials
are skipped, partial ones resume from their checkpoints (run_trial does that), new cells run. Nothing here reads
backend state to decide what is done.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ihmodel.features import check_features
from orchestrator.backends.base import make_backend
from orchestrator.driver import Monitor, driver_record, live_driver
from orchestrator.grid import axes_of, expand
from orchestrator.packs import describe
from orchestrator.status import counts, format_counts, report, sweep_states
from orchestrator.sweep import pending, prepare
from orchestrator.sweep_config import Sweep
from orchestrator.verify import set_aside


def run_sweep(sweep: Sweep, quiet: bool = False) -> int:
    """Launch or resume; 0 when every trial of this run's grid is complete (or submitted, when detached)."""
    sweep_dir = sweep.out.resolve()
    trials = expand(sweep)
    axes = axes_of(sweep)
    if not trials:
        raise ValueError("empty grid: no trials; give every axis, clamps and seeds at least one value")
    check_features(t.config.data for t in trials)
    backend = make_backend(sweep, sweep_dir)
    backend.check()  # before anything is written: an unreachable cluster changes nothing
    other = live_driver(sweep_dir) if sweep_dir.is_dir() else None
    if other is not None:
        raise ValueError(f"{sweep_dir} is being run by another driver (pid {other.get('pid')} on "
                         f"{other.get('host')}); wait for it, or `icsweep cancel {sweep_dir}` and rerun")
    prepare(sweep, trials, axes, sweep_dir)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    for line in set_aside(sweep_dir, [t.id for t in trials], [t.config_yaml for t in trials]):
        say(f"icsweep: {line}")
    todo = pending(trials, sweep_dir)
    done = len(trials) - len(todo)
    packs = backend.packs(todo) if todo else []
    say(f"icsweep: sweep {sweep.name}: {len(trials)} trials in {sweep_dir}; {done} complete, "
        f"{len(todo)} to run on {backend.name}" + (f" in {describe(packs)}" if len(packs) < len(todo) else ""))
    if todo:
        with driver_record(sweep_dir, backend.name):
            if backend.detached:
                backend.run(packs)
                say(f"icsweep: submitted; follow with `icsweep status {sweep_dir}`; rerun the same command to "
                    f"resume after failures")
                return 0
            with Monitor(sweep_dir, [t.id for t in todo], done_before=done, total=len(trials)):
                backend.run(packs)
    _, states = sweep_states(sweep_dir, detail=False, ids=[t.id for t in trials])
    c = counts(states)
    say(f"icsweep: {format_counts(c)}")
    if c["complete"] < len(trials):
        if not quiet:
            report(sweep_dir, out=sys.stdout)
        return 1
    return 0
