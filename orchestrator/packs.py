"""Packs: the unit every backend schedules. A pack is up to `resources.pack_size` pending trials that one process
trains together (ihmodel.run_pack); pack_size=1 (the default) is one trial per process.

Trials are grouped by `ihmodel.pack.pack_key` (equal shapes, schedule, statistics, device, threads), in manifest
order, and each group is cut into consecutive packs of at most K trials (seeds vary fastest in the grid, so a pack
holds seeds and clamp sets of one data cell where it can). K is the int given, or with `pack_size=auto` the
`auto_pack_size` of the group's first trial, measured here, in the driver, on the device the packs will use
(`cpu` for CPU packs; the config's device otherwise), so run the driver where that device exists or give an int.

A pack's id names its log (logs/<pack id>.log): the trial id for a pack of one (one log per trial, as without
packs), else "pack-" + its first trial's id. Nothing decides what is done by pack: the stores do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ihmodel.config import TrialConfig
from ihmodel.sweepdir import MANIFEST, read_manifest
from orchestrator.grid import Trial
from orchestrator.trial import pack_id


@dataclass
class Pack:
    id: str
    trials: list[Trial]

    @property
    def trial_ids(self) -> list[str]:
        return [t.id for t in self.trials]

    @property
    def config_yamls(self) -> list[str]:
        return [t.config_yaml for t in self.trials]


def as_run(config: TrialConfig, threads: int, device: str | None) -> TrialConfig:
    """The config as the worker runs it (threads and device are part of the pack key)."""
    return dataclasses.replace(config, threads=threads, device=device if device is not None else config.device)


def make_packs(trials: list[Trial], pack_size: int | str, threads: int, device: str | None,
               sweep_dir: Path | None = None) -> list[Pack]:
    """Group `trials` by pack key into packs of at most K, in manifest order when `sweep_dir` has one (the
    trials within a pack, and the packs by their first trial: pack_size=1 keeps the manifest's order)."""
    trials = manifest_order(trials, sweep_dir)
    if pack_size == 1:  # one trial per process: no grouping (nor torch, which ihmodel.pack imports)
        return [Pack(pack_id([t.id]), [t]) for t in trials]
    from ihmodel.pack import pack_key

    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(pack_key(as_run(trial.config, threads, device)), []).append(trial)
    packs = []
    for members in groups.values():
        size = pack_size if pack_size != "auto" else auto_size(members[0].config, threads, device)
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            packs.append(Pack(pack_id([t.id for t in chunk]), chunk))
    position = {t.id: i for i, t in enumerate(trials)}
    return sorted(packs, key=lambda p: position[p.trials[0].id])  # packs start in manifest order too


def auto_size(config: TrialConfig, threads: int, device: str | None) -> int:
    from ihmodel.pack import auto_pack_size

    run = as_run(config, threads, device)
    try:
        size = int(auto_pack_size(run))
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"resources.pack_size=auto: measuring K on device {run.device} failed ({first}); run the "
                         f"driver where that device is, or give resources.pack_size=N") from None
    return max(1, size)


def manifest_order(trials: list[Trial], sweep_dir: Path | None) -> list[Trial]:
    if sweep_dir is None or not (Path(sweep_dir) / MANIFEST).is_file():
        return list(trials)
    index = {tid: i for i, tid in enumerate(read_manifest(sweep_dir).trial_ids())}
    return sorted(trials, key=lambda t: index.get(t.id, len(index)))  # stable: unknown ids keep their order


def describe(packs: list[Pack]) -> str:
    """`4 packs of 2` / `3 packs of 1-4`, for the driver's one-line summary."""
    sizes = sorted({len(p.trials) for p in packs})
    return f"{len(packs)} packs of {sizes[0]}" + (f"-{sizes[-1]}" if len(sizes) > 1 else "")
