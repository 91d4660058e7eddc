"""Reading many trial stores fast: metadata straight from their `zarr.json` documents, data in batched async reads.

Through zarr's synchronous API, looking up the ~30 arrays of one store costs ~10 ms, so 1,000 stores would spend
10 s before reading a number. The metadata documents are small JSON files defined by the Zarr v3 spec, so they
are parsed directly (a store is a directory: ihmodel.sweepdir lays stores out as such); every array read of a
batch goes through zarr's asynchronous API in one gather, which costs ~0.5 ms a read.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from zarr.api import asynchronous as zarr_async
from zarr.core.sync import sync

from ihmodel.config import (ClampConfig, DataConfig, EvalConfig, InterventionConfig, ModelConfig, TrainConfig,
                            TrialConfig, from_yaml)

ROW_DIMS = ("step", "eval_step")  # dims along which rows are appended during training
ROW_COORDS = {"step": "sequences", "eval_step": "eval_sequences"}  # each row dim's second coordinate
MAX_CONCURRENT_READS = 64


class CorruptStoreError(ValueError):
    """A store whose metadata cannot be read or does not follow ihmodel.store's schema."""


@dataclass
class ArrayMeta:
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any]


@dataclass
class StoreInfo:
    """One store's metadata: attrs and every array's dims and shape (no array data)."""

    path: Path
    attrs: dict[str, Any]
    arrays: dict[str, ArrayMeta] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    def rows(self, dim: str) -> int:
        """Rows written along `dim` in every array that has it (a reader may land between two arrays' appends)."""
        lengths = [meta.shape[0] for meta in self.arrays.values() if meta.dims[:1] == (dim,)]
        return min(lengths, default=0)

    def variables(self) -> list[str]:
        """The statistics recorded: arrays along a row dim that are not its coordinates."""
        coords = set(ROW_DIMS) | set(ROW_COORDS.values())
        return [name for name, meta in self.arrays.items()
                if meta.dims[:1] in ((d,) for d in ROW_DIMS) and name not in coords]


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def read_info(path: str | Path) -> StoreInfo | None:
    """The store's metadata; None if nothing is there. Raises CorruptStoreError for an unreadable store."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        raise CorruptStoreError(f"{path}: not a Zarr store directory")
    try:
        group = _load_json(path / "zarr.json")
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: no zarr.json (an empty or half-created store)") from None
    except (OSError, ValueError) as error:
        raise CorruptStoreError(f"{path}: unreadable zarr.json ({error})") from None
    if group.get("zarr_format") != 3 or group.get("node_type") != "group":
        raise CorruptStoreError(f"{path}: zarr.json is not a Zarr v3 group")
    info = StoreInfo(path, group.get("attributes", {}))
    for entry in os.scandir(path):
        meta_path = Path(entry.path) / "zarr.json"
        if not entry.is_dir() or not meta_path.is_file():
            continue
        try:
            meta = _load_json(meta_path)
            dims = tuple(meta.get("dimension_names") or ())
            info.arrays[entry.name] = ArrayMeta(dims, tuple(meta["shape"]), str(meta["data_type"]),
                                                meta.get("attributes", {}))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptStoreError(f"{path}: unreadable metadata of array {entry.name!r} ({error})") from None
    missing = [name for name in ("step", "eval_step", "layer", "head") if name not in info.arrays]
    if missing:
        raise CorruptStoreError(f"{path}: no {', '.join(missing)} coordinate; not an ihmodel trial store")
    return info


@dataclass
class Read:
    """One array read: `selections` of array `name` in the store at `path` (orthogonal: slices or int arrays)."""

    path: Path
    name: str
    selections: Sequence[tuple]


def read_many(reads: Sequence[Read]) -> list[list[np.ndarray]]:
    """Every read's selections, all in one async gather (order kept)."""
    if not reads:
        return []

    async def gather():
        limit = asyncio.Semaphore(MAX_CONCURRENT_READS)

        async def one(read: Read):
            async with limit:
                array = await zarr_async.open_array(store=str(read.path), path=read.name, mode="r", zarr_format=3)
                return [np.asarray(await array.get_orthogonal_selection(sel)) for sel in read.selections]

        return await asyncio.gather(*(one(read) for read in reads))

    try:
        return sync(gather())
    except (FileNotFoundError, KeyError, ValueError, OSError) as error:
        raise CorruptStoreError(f"unreadable array in a trial store ({type(error).__name__}: {error})") from error


# --- trial configs, parsed fast ---------------------------------------------------------------------------------
# ihmodel.config.from_yaml goes through OmegaConf (~20 ms a config); 1,000 trials would take 20 s. The YAML that
# to_yaml writes is plain, so the dataclasses are built from it directly; anything unusual falls back to from_yaml.

_NESTED = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
_FLOAT_FIELDS = {cls: {f.name for f in cls.__dataclass_fields__.values() if f.type in ("float", "float | None")}
                 for cls in (DataConfig, ModelConfig, TrainConfig, EvalConfig, InterventionConfig, TrialConfig)}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _build(cls, values: dict[str, Any]):
    floats = _FLOAT_FIELDS[cls]
    return cls(**{key: float(value) if key in floats and isinstance(value, int) else value
                  for key, value in values.items()})


def config_from_yaml(text: str) -> TrialConfig:
    """The TrialConfig of a store's or manifest's `config_yaml` (as ihmodel.config.from_yaml, but fast)."""
    try:
        raw = yaml.load(text, Loader=_LOADER)
        top = {key: value for key, value in raw.items() if key not in (*_NESTED, "clamp")}
        nested = {key: _build(cls, raw[key]) for key, cls in _NESTED.items() if key in raw}
        if "clamp" in raw:
            clamp = dict(raw["clamp"])
            clamp["interventions"] = [_build(InterventionConfig, i) for i in clamp.get("interventions") or []]
            nested["clamp"] = ClampConfig(**clamp)
        return _build(TrialConfig, top | nested)
    except (TypeError, AttributeError, yaml.YAMLError):
        return from_yaml(text)  # slow but exact, with the schema's own error for a bad config
