"""The sweep directory format: its layout and its manifest (read and write).

    DIR/manifest.json          sweep name and config, the grid axes, every trial's id, axis values and config
    DIR/trials/<id>.zarr       one store per trial (ihmodel.store); DIR/trials/<id>.ckpt.pt its checkpoint
    DIR/logs/                  backend logs

It lives beside the store schema so that `analysis` reads sweeps without importing `orchestrator`. The manifest
is written before any trial starts, so whatever is missing can be named; what is done is decided by the stores'
completion markers alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Axis:
    name: str  # dimension name in the combined Dataset: the key's last part (n_labels), or clamp, or seed
    key: str  # trial config key it sets (data.n_labels, clamp, seed)
    values: list[Any]


@dataclass
class TrialEntry:
    id: str
    axes: dict[str, Any]  # axis name -> this trial's value
    config_yaml: str  # the resolved trial config (ihmodel.config.to_yaml)


@dataclass
class Manifest:
    sweep: str  # the sweep's name; a directory belongs to one sweep
    sweep_config_yaml: str
    axes: list[Axis]
    trials: list[TrialEntry]
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # backend-independent notes (e.g. creation time)

    def trial_ids(self) -> list[str]:
        return [t.id for t in self.trials]


def trials_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "trials"


def logs_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "logs"


def store_path(sweep_dir: str | Path, trial_id: str) -> Path:
    return trials_dir(sweep_dir) / f"{trial_id}.zarr"


def write_manifest(sweep_dir: str | Path, manifest: Manifest):
    """Atomically (write then rename), so a reader never sees half a manifest."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(manifest), indent=1, default=str))
    os.replace(tmp, sweep_dir / MANIFEST)


def read_manifest(sweep_dir: str | Path) -> Manifest:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep manifest; is {sweep_dir} a sweep directory "
                                f"(icsweep run ... out=DIR)?")
    try:
        raw = json.loads(path.read_text())
        return Manifest(
            sweep=raw["sweep"], sweep_config_yaml=raw["sweep_config_yaml"],
            axes=[Axis(**a) for a in raw["axes"]], trials=[TrialEntry(**t) for t in raw["trials"]],
            format_version=raw.get("format_version", FORMAT_VERSION), extra=raw.get("extra", {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: corrupt sweep manifest ({error}); delete it and rerun `icsweep run` "
                         f"to rewrite it") from error
