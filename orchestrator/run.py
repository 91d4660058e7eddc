"""`icsweep run`: compose the sweep, expand the grid, write the manifest, group the pending trials into packs
(orchestrator.packs) and run them on a backend; then, with `refine.axes`, refinement rounds (orchestrator.refine).

The same on every backend: damaged stores and checkpoints are set aside (orchestrator.verify), complete trials
are skipped, partial ones resume from their checkpoints (run_trial does that), new cells run. Nothing here reads
backend state to decide what is done.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ihmodel.features import check_features
from orchestrator.backends import make_backend
from orchestrator.driver import Monitor, driver_record, live_driver
from orchestrator.grid import Trial, axes_of, expand
from orchestrator.packs import describe
from orchestrator.refine import next_round, record, refined_trials
from orchestrator.status import counts, format_counts, report, sweep_states
from orchestrator.sweep import add_refinement, pending, prepare
from orchestrator.sweep_config import Sweep
from orchestrator.verify import set_aside


def run_sweep(sweep: Sweep, quiet: bool = False) -> int:
    """Launch or resume; 0 when every trial of this run's grid and refinement is complete (or submitted, when
    detached)."""
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
    if sweep.refine.axes:  # earlier rounds' cells are this run's too: resumed like the grid's
        trials += refined_trials(sweep_dir, {t.id for t in trials})
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    for line in set_aside(sweep_dir, [t.id for t in trials], [t.config_yaml for t in trials]):
        say(f"icsweep: {line}")
    todo = pending(trials, sweep_dir)
    headline = f"icsweep: sweep {sweep.name}: {len(trials)} trials in {sweep_dir}; {len(trials) - len(todo)} complete, "
    if not (todo or sweep.refine.axes):
        say(f"{headline}0 to run on {backend.name}")
    else:
        with driver_record(sweep_dir, backend.name):
            if not run_trials(backend, trials, todo, sweep_dir, say, headline):
                return 0  # detached: submitted
            while sweep.refine.axes and all_complete(trials, sweep_dir):
                decided = next_round(sweep, sweep_dir)
                if decided is None:
                    break
                number, cells, added = decided
                add_refinement(sweep, added, axes, sweep_dir, record(cells, added, number))
                say(f"icsweep: refine round {number}: " + ("; ".join(c.describe() for c in cells) or
                                                           "no neighbouring values differ enough; done"))
                trials += added
                if added and not run_trials(backend, trials, added, sweep_dir, say, f"icsweep: round {number}: "):
                    return 0
    _, states = sweep_states(sweep_dir, detail=False, ids=[t.id for t in trials])
    c = counts(states)
    say(f"icsweep: {format_counts(c)}")
    if c["complete"] < len(trials):
        if not quiet:
            report(sweep_dir, out=sys.stdout)
        return 1
    return 0


def run_trials(backend, trials: list[Trial], todo: list[Trial], sweep_dir: Path, say, headline: str) -> bool:
    """Run `todo` (some of `trials`) in packs on the backend, with a progress monitor; False when the backend only
    submitted them (detached: a later rerun of the command goes on from there)."""
    packs = backend.packs(todo) if todo else []
    say(f"{headline}{len(todo)} to run on {backend.name}" + (f" in {describe(packs)}" if len(packs) < len(todo) else ""))
    if not todo:
        return True
    if backend.detached:
        backend.run(packs)
        say(f"icsweep: submitted; follow with `icsweep status {sweep_dir}`; rerun the same command to resume after "
            f"failures" + (" and to go on refining" if len(trials) > len(todo) else ""))
        return False
    done = len(trials) - len(todo)
    with Monitor(sweep_dir, [t.id for t in todo], done_before=done, total=len(trials)):
        backend.run(packs)
    return True


def all_complete(trials: list[Trial], sweep_dir: Path) -> bool:
    return not pending(trials, sweep_dir)
