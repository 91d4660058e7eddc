"""What each trial of a sweep directory is doing, from the directory alone (no backend state).

complete: the store's completion marker. running: a `.running` heartbeat newer than STALE_S (and, on this host,
a live pid); every trial of a running pack has one, so each shows running, with its pack. failed: an `.error`
file (the last attempt failed). pending: anything else (`partial` when a store or checkpoint exists, so a rerun
resumes it).

Sequences trained against the budget (and so the compute saved by trials that stopped early) come from each store:
a trial that stops early records `stopped_early`, `stop_sequences` and `budget_sequences` as store attrs when it
completes; without them the budget is the config's `train.sequences` and a complete trial trained all of it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
import zarr

from ihmodel.store import checkpoint_path, is_complete
from ihmodel.sweepdir import Manifest, TrialEntry, read_manifest, store_path
from orchestrator.trial import STALE_S, trial_files

STATES = ("complete", "running", "failed", "pending")


@dataclass
class TrialState:
    id: str
    axes: dict[str, Any]
    state: str  # one of STATES
    partial: bool = False  # a store or checkpoint exists: a rerun resumes it
    sequences: int | None = None  # training sequences done so far (None: not read, detail=False)
    budget: int | None = None  # training sequences it may take (None: not read)
    stopped_early: bool = False  # it completed before its budget
    where: dict[str, Any] = field(default_factory=dict)  # host/node/pid of a running trial
    error: str | None = None  # the failed attempt's one-line error


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_record(path: Path, stale_s: float = STALE_S) -> dict[str, Any] | None:
    """A heartbeat record (JSON with pid and host) if its mtime is recent and, on this host, its pid lives."""
    try:
        age = time.time() - path.stat().st_mtime
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if age > stale_s:
        return None
    if record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", 0))):
        return None
    return record


def trial_state(sweep_dir: Path, entry: TrialEntry, detail: bool = True) -> TrialState:
    store = store_path(sweep_dir, entry.id)
    files = trial_files(sweep_dir, entry.id)
    trained = training(store, entry) if detail else {}
    if is_complete(store):
        return TrialState(entry.id, entry.axes, "complete", **trained)
    running = live_record(files["running"])
    partial = store.exists() or checkpoint_path(store).exists()
    if running is not None:
        return TrialState(entry.id, entry.axes, "running", partial, where=running, **trained)
    if files["error"].is_file():
        error = files["error"].read_text().strip()
        return TrialState(entry.id, entry.axes, "failed", partial, error=error, **trained)
    return TrialState(entry.id, entry.axes, "pending", partial, **trained)


def sweep_states(sweep_dir: Path, detail: bool = True, ids: list[str] | None = None
                 ) -> tuple[Manifest, list[TrialState]]:
    manifest = read_manifest(sweep_dir)
    entries = manifest.trials if ids is None else [t for t in manifest.trials if t.id in set(ids)]
    return manifest, [trial_state(Path(sweep_dir), e, detail) for e in entries]


def counts(states: list[TrialState]) -> dict[str, int]:
    return {s: sum(t.state == s for t in states) for s in STATES}


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def training(store: Path, entry: TrialEntry) -> dict[str, Any]:
    """The trial's `sequences` trained so far, `budget` and whether it `stopped_early` (TrialState's fields).

    Without the early-stop attrs, n step rows are n batches: row i is optimizer step i, trained on sequences
    i*b..(i+1)*b, so n*b is the last row's `sequences` plus one batch. The rows are counted from the metadata, not
    read: a reader may see a row that is being appended before its values land.
    """
    # The manifest's config is ihmodel.config.to_yaml's plain YAML: read as such, not built through OmegaConf
    # (~20 ms a trial, which a sweep of 1,000 would pay at every refresh of `status --watch`).
    train = yaml.load(entry.config_yaml, Loader=_YAML_LOADER)["train"]
    budget, batch_size = int(train["sequences"]), int(train["batch_size"])
    try:
        group = zarr.open_group(str(store), mode="r")
        attrs = dict(group.attrs)
        rows = group["step"].shape[0]
    except Exception:  # no store yet, or one still being laid down: nothing trained shows
        return {"sequences": 0, "budget": budget, "stopped_early": False}
    budget = int(attrs.get("budget_sequences", budget))
    if "stop_sequences" in attrs:
        trained = int(attrs["stop_sequences"])
    elif attrs.get("complete"):
        trained = budget
    else:
        trained = min(budget, rows * batch_size)
    return {"sequences": trained, "budget": budget, "stopped_early": bool(attrs.get("stopped_early", False))}


def training_totals(states: list[TrialState]) -> dict[str, Any]:
    """Sequences trained and budgeted over `states` (read with detail), and the compute saved by early stops: the
    sequences left untrained, and their share of the budget in percent."""
    budget = sum(t.budget for t in states)
    saved = sum(t.budget - t.sequences for t in states if t.stopped_early)
    return {"sequences": sum(t.sequences for t in states), "budget": budget, "saved_sequences": saved,
            "saved_percent": round(100 * saved / budget, 2) if budget else 0.0}


def format_training(totals: dict[str, Any]) -> str:
    return (f"sequences {totals['sequences']:,} of {totals['budget']:,} budget; compute saved "
            f"{totals['saved_sequences']:,} sequences ({totals['saved_percent']:.1f}%)")


def format_axes(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in axes.items())


def format_counts(c: dict[str, int]) -> str:
    return "  ".join(f"{s} {c[s]}" for s in STATES)


def report(sweep_dir: Path, out=None) -> dict[str, int]:
    """`icsweep status DIR`: counts, sequences trained and saved, running trials' sequences, each failed trial's
    error."""
    out = out or sys.stdout
    manifest, states = sweep_states(sweep_dir)
    c = counts(states)
    print(f"sweep {manifest.sweep} in {sweep_dir}: {len(states)} trials", file=out)
    print(f"  {format_counts(c)}", file=out)
    print(f"  {format_training(training_totals(states))}", file=out)
    running = [t for t in states if t.state == "running"]
    if running:
        print("running:", file=out)
        for t in running:
            node = t.where.get("node") or t.where.get("host")
            pack = t.where.get("pack")
            within = f"  in {pack}" if pack and pack != t.id else ""
            print(f"  {t.id} {t.sequences}/{t.budget}  {format_axes(t.axes)}{within}  on {node} "
                  f"pid {t.where.get('pid')}", file=out)
    failed = [t for t in states if t.state == "failed"]
    if failed:
        print("failed (rerun `icsweep run` to retry; each resumes from its checkpoint):", file=out)
        for t in failed:
            print(f"  {t.id} {format_axes(t.axes)}: {t.error}", file=out)
    partial = sum(t.partial for t in states if t.state == "pending")
    if partial:
        print(f"  ({partial} pending trials have a checkpoint and will resume)", file=out)
    queued = slurm_queue(sweep_dir)
    if queued:
        states_seen = ", ".join(f"{n} {s.lower()}" for s, n in sorted(queued.items()))
        print(f"  SLURM: {states_seen} array tasks of this sweep", file=out)
    return c


def slurm_queue(sweep_dir: Path) -> dict[str, int]:
    """{SLURM state: count} of this sweep's array tasks still in the queue (display only; stores decide)."""
    if not (Path(sweep_dir) / "logs" / "submitit" / "jobs.json").is_file():
        return {}
    from orchestrator.backends.submitit import active_jobs

    try:
        active = active_jobs(sweep_dir)
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, int] = {}
    for state in active.values():
        found[state] = found.get(state, 0) + 1
    return found


def listing(sweep_dir: Path, out=None):
    """`icsweep list DIR`: one line per trial: id, state, sequences trained/budget, axis values."""
    out = out or sys.stdout
    _, states = sweep_states(sweep_dir)
    width = max((len(f"{t.sequences}/{t.budget}") for t in states), default=0)
    for t in states:
        state = t.state + ("*" if t.partial and t.state == "pending" else "")
        early = "  stopped early" if t.stopped_early else ""
        print(f"{t.id}  {state:9s} {f'{t.sequences}/{t.budget}':>{width}}  {format_axes(t.axes)}{early}", file=out)
