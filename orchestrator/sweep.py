"""The sweep directory on the driver side: write or merge the manifest, name the pending trials.

A directory belongs to one sweep: the same name and the same base config outside the axes. Rerunning it with
more seeds or axis values (or a new axis) adds trials to the manifest; nothing is ever removed from it. What is
done is decided by the stores' completion markers alone.
"""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ihmodel.config import RESOURCE_FIELDS, TrialConfig, from_yaml, to_dict
from ihmodel.store import is_complete
from ihmodel.sweepdir import (MANIFEST, Axis, Manifest, TrialEntry, logs_dir, read_manifest, store_path,
                              trials_dir, write_manifest)
from orchestrator.grid import Trial, axis_name, axis_value
from orchestrator.refine import RECORD
from orchestrator.sweep_config import Sweep


def prepare(sweep: Sweep, trials: list[Trial], axes: list[Axis], sweep_dir: Path) -> Manifest:
    """Write the manifest (merged with the directory's existing one) before any trial starts."""
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ValueError(f"out={sweep_dir} is a file; give a directory for the sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base = base_fingerprint(trials, axes)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    _check_not_foreign(sweep_dir)
    with _locked(sweep_dir / f".{MANIFEST}.lock"):
        if (sweep_dir / MANIFEST).is_file():
            old = read_manifest(sweep_dir)
            check_same_sweep(old, sweep.name, base, axes, sweep_dir)
            manifest = merge(old, axes, trials)
            manifest.extra.setdefault("created", now)
        else:
            _check_not_foreign(sweep_dir)
            manifest = merge(Manifest(sweep=sweep.name, sweep_config_yaml="", axes=[], trials=[]), axes, trials)
            manifest.extra["created"] = now
        for sub in (trials_dir(sweep_dir), logs_dir(sweep_dir)):
            sub.mkdir(exist_ok=True)
        manifest.sweep_config_yaml = sweep.to_yaml()
        manifest.extra["base"] = base
        manifest.extra["updated"] = now
        write_manifest(sweep_dir, manifest)
    return manifest


def add_refinement(sweep: Sweep, trials: list[Trial], axes: list[Axis], sweep_dir: Path, round_record: dict):
    """Add a refinement round's trials (orchestrator.refine) to the manifest with the round's record, before any of
    them starts; a refined axis keeps its values sorted, so it reads as one ordered dimension."""
    refined = {axis_name(key) for key in sweep.refine.axes}
    with _locked(Path(sweep_dir) / f".{MANIFEST}.lock"):
        manifest = merge(read_manifest(sweep_dir), axes, trials)
        manifest.extra.setdefault(RECORD, []).append(round_record)
        manifest.extra["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for axis in manifest.axes:
            if axis.name in refined:
                axis.values = sorted(axis.values)
        write_manifest(sweep_dir, manifest)


def _check_not_foreign(sweep_dir: Path):
    """A directory without a manifest must be empty (but for our own subdirectories): never write into a stranger."""
    if (sweep_dir / MANIFEST).is_file():
        return
    stray = sorted(p.name for p in sweep_dir.iterdir()
                   if p.name not in ("trials", "logs") and not p.name.startswith(f".{MANIFEST}"))
    if stray:
        raise ValueError(f"out={sweep_dir} is not empty ({', '.join(stray[:3])}) and holds no sweep manifest; "
                         f"choose a new or empty directory")


def base_fingerprint(trials: list[Trial], axes: list[Axis]) -> dict[str, Any]:
    """The trial config outside the axes, seed and clamp set, flattened: what makes two runs one sweep.

    Keys that differ between the trials (set per clamp set) are left out."""
    skip = {a.key for a in axes} | set(RESOURCE_FIELDS) | {"seed"}
    flats = [_flatten(to_dict(t.config)) for t in trials]
    return {k: v for k, v in flats[0].items()
            if k not in skip and not k.startswith("clamp.") and all(_norm(f.get(k)) == _norm(v) for f in flats)}


def check_same_sweep(old: Manifest, name: str, base: dict[str, Any], axes: list[Axis], sweep_dir: Path):
    if old.sweep != name:
        raise ValueError(f"{sweep_dir} holds sweep {old.sweep!r}, not {name!r}; choose a new out=DIR "
                         f"(or sweep={old.sweep} to continue it); nothing was changed")
    old_base = old.extra.get("base")
    if old_base is None:
        return
    swept = {a.key for a in axes} | {a.key for a in old.axes}
    # a key one side lacks (added to the trial schema since that manifest was written) has its default there
    defaults = _flatten(to_dict(TrialConfig()))
    differ = sorted(k for k in set(old_base) | set(base)
                    if k not in swept and _norm(old_base.get(k, defaults.get(k))) != _norm(base.get(k, defaults.get(k))))
    if differ:
        shown = "; ".join(f"{k}: {old_base.get(k)!r} -> {base.get(k)!r}" for k in differ[:4])
        raise ValueError(f"{sweep_dir} holds sweep {name!r} with another base config ({shown}); "
                         f"choose a new out=DIR for it, or make it an axis; nothing was changed")
    for axis in axes:
        for prior in old.axes:
            if prior.name == axis.name and prior.key != axis.key:
                raise ValueError(f"axis {axis.name!r} was {prior.key} in {sweep_dir}, now {axis.key}; "
                                 f"choose a new out=DIR")


def merge(old: Manifest, axes: list[Axis], trials: list[Trial]) -> Manifest:
    """Union of old and new trials (old order first); every axis valued for every trial, values in order seen."""
    entries = {t.id: t for t in old.trials}
    configs = {t.id: None for t in old.trials}
    for trial in trials:
        if trial.id not in entries:
            entries[trial.id] = TrialEntry(id=trial.id, axes={}, config_yaml=trial.config_yaml)
        configs[trial.id] = trial.config
    merged_axes: list[Axis] = [Axis(a.name, a.key, []) for a in old.axes]
    for axis in axes:
        if axis.name not in [a.name for a in merged_axes]:
            merged_axes.insert(_position(merged_axes, axis), Axis(axis.name, axis.key, []))
    order = {a.name: list(a.values) for a in old.axes}
    for axis in axes:
        order.setdefault(axis.name, [])
        order[axis.name] += [v for v in axis.values if v not in order[axis.name]]
    for tid, entry in entries.items():
        config = configs[tid]
        if config is None and any(a.name not in entry.axes for a in merged_axes):
            config = from_yaml(entry.config_yaml)  # an old trial, and a new axis: read its value off its config
        entry.axes = {a.name: axis_value(config, a) if config is not None else entry.axes[a.name]
                      for a in merged_axes}
    for axis in merged_axes:
        present: dict[str, Any] = {}
        for entry in entries.values():
            present.setdefault(_norm_key(entry.axes[axis.name]), entry.axes[axis.name])
        ordered = [v for v in order.get(axis.name, []) if _norm_key(v) in present]
        known = {_norm_key(v) for v in ordered}
        axis.values = ordered + [v for k, v in present.items() if k not in known]
    return Manifest(sweep=old.sweep, sweep_config_yaml=old.sweep_config_yaml, axes=merged_axes,
                    trials=list(entries.values()), format_version=old.format_version, extra=dict(old.extra))


def _position(axes: list[Axis], axis: Axis) -> int:
    """Data-property axes go before clamp and seed."""
    if axis.name in ("clamp", "seed"):
        return len(axes) if axis.name == "seed" else len([a for a in axes if a.name != "seed"])
    return len([a for a in axes if a.name not in ("clamp", "seed")])


def pending(trials: list[Trial], sweep_dir: Path) -> list[Trial]:
    return [t for t in trials if not is_complete(store_path(sweep_dir, t.id))]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _norm_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
