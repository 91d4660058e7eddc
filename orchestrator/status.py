"""What each trial of a sweep directory is doing, from the directory alone (no backend state).

complete: the store's completion marker. running: a `.running` heartbeat newer than STALE_S (and, on this host,
a live pid); every trial of a running pack has one, so each shows running, with its pack. failed: an `.error`
file (the last attempt failed). pending: anything else (`partial` when a store or checkpoint exists, so a rerun
resumes it).
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

import zarr

from ihmodel.config import from_yaml
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
    progress: float | None = None  # fraction of training steps written to the store
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
    if is_complete(store):
        return TrialState(entry.id, entry.axes, "complete", progress=1.0 if detail else None)
    running = live_record(files["running"])
    partial = store.exists() or checkpoint_path(store).exists()
    progress = _progress(store, entry) if detail and partial else None
    if running is not None:
        return TrialState(entry.id, entry.axes, "running", partial, progress, where=running)
    if files["error"].is_file():
        error = files["error"].read_text().strip()
        return TrialState(entry.id, entry.axes, "failed", partial, progress, error=error)
    return TrialState(entry.id, entry.axes, "pending", partial, progress)


def sweep_states(sweep_dir: Path, detail: bool = True, ids: list[str] | None = None
                 ) -> tuple[Manifest, list[TrialState]]:
    manifest = read_manifest(sweep_dir)
    entries = manifest.trials if ids is None else [t for t in manifest.trials if t.id in set(ids)]
    return manifest, [trial_state(Path(sweep_dir), e, detail) for e in entries]


def counts(states: list[TrialState]) -> dict[str, int]:
    return {s: sum(t.state == s for t in states) for s in STATES}


def _progress(store: Path, entry: TrialEntry) -> float | None:
    try:
        steps = from_yaml(entry.config_yaml).train.steps
        done = zarr.open_group(str(store), mode="r")["step"].shape[0]
    except Exception:  # no store yet, or mid-write: progress is best effort
        return None
    return min(1.0, max(0, done - 1) / steps)


def format_axes(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in axes.items())


def format_counts(c: dict[str, int]) -> str:
    return "  ".join(f"{s} {c[s]}" for s in STATES)


def report(sweep_dir: Path, out=None) -> dict[str, int]:
    """`icsweep status DIR`: counts, running trials with progress, the error of each failed trial."""
    out = out or sys.stdout
    manifest, states = sweep_states(sweep_dir)
    c = counts(states)
    print(f"sweep {manifest.sweep} in {sweep_dir}: {len(states)} trials", file=out)
    print(f"  {format_counts(c)}", file=out)
    running = [t for t in states if t.state == "running"]
    if running:
        print("running:", file=out)
        for t in running:
            node = t.where.get("node") or t.where.get("host")
            pct = f"{100 * t.progress:3.0f}%" if t.progress is not None else "  ?%"
            pack = t.where.get("pack")
            within = f"  in {pack}" if pack and pack != t.id else ""
            print(f"  {t.id} {pct}  {format_axes(t.axes)}{within}  on {node} pid {t.where.get('pid')}", file=out)
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
    """`icsweep list DIR`: one line per trial: id, state, progress, axis values."""
    out = out or sys.stdout
    _, states = sweep_states(sweep_dir)
    for t in states:
        pct = f"{100 * t.progress:3.0f}%" if t.progress is not None else "    "
        state = t.state + ("*" if t.partial and t.state == "pending" else "")
        print(f"{t.id}  {state:9s} {pct}  {format_axes(t.axes)}", file=out)
