"""Reading many trial stores fast: metadata straight from their `zarr.json` documents, data in batched async reads.

Through zarr's synchronous API, looking up the ~30 arrays of one store costs ~10 ms, so 1,000 stores would spend
10 s before reading a number. The metadata documents are small JSON files defined by the Zarr v3 spec, so they
are parsed directly (a store is a directory: ihmodel.sweepdir lays stores out as such); every array read of a
batch goes through zarr's asynchronous API in one gather, which costs ~0.5 ms a read.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import yaml
from zarr.api import asynchronous as zarr_async
from zarr.core.sync import sync

from ihmodel.errors import DamagedStoreError
from ihmodel.integrity import checksummed, chunk_intact
from ihmodel.store import scalar_coords
from ihmodel.config import (ClampConfig, DataConfig, EvalConfig, InterventionConfig, ModelConfig, TrainConfig,
                            TrialConfig, from_yaml)

ROW_DIMS = ("step", "eval_step")  # dims along which rows are appended during training
ROW_COORDS = {"step": "sequences", "eval_step": "eval_sequences"}  # each row dim's second coordinate
MAX_CONCURRENT_READS = 64
SCALAR_NAMES = frozenset(scalar_coords(TrialConfig()))  # the config scalars' 0-d arrays: not read


class CorruptStoreError(DamagedStoreError):
    """A store whose metadata cannot be read or does not follow ihmodel.store's schema."""


class DamagedChunkError(CorruptStoreError):
    """A chunk whose bytes fail their checksum."""


class DamagedStoreWarning(UserWarning):
    """A trial store is damaged: its cells are NaN where the damage lies (and `complete` is False)."""


@dataclass
class ArrayMeta:
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any]
    plan: FastPlan | None = None  # how to read its chunks directly; None: through zarr


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


def _load_json(path: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def read_info(path: str | Path) -> StoreInfo | None:
    """The store's metadata; None if nothing is there. Raises CorruptStoreError for an unreadable store.

    The config scalars' 0-d arrays are skipped (they follow from the config_yaml attribute).
    """
    root = os.fspath(path)
    if not os.path.exists(root):
        return None
    if not os.path.isdir(root):
        raise CorruptStoreError(f"{path}: not a Zarr store directory")
    try:
        group = _load_json(f"{root}/zarr.json")
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: no zarr.json (an empty or half-created store)") from None
    except (OSError, ValueError) as error:
        raise CorruptStoreError(f"{path}: unreadable zarr.json ({error})") from None
    if group.get("zarr_format") != 3 or group.get("node_type") != "group":
        raise CorruptStoreError(f"{path}: zarr.json is not a Zarr v3 group")
    info = StoreInfo(Path(path), group.get("attributes", {}))
    for entry in os.scandir(root):
        if entry.name in SCALAR_NAMES or not entry.is_dir():
            continue
        try:
            meta = _load_json(f"{entry.path}/zarr.json")
        except FileNotFoundError:
            continue  # not an array (or not yet one)
        except (OSError, ValueError) as error:
            raise CorruptStoreError(f"{path}: unreadable metadata of array {entry.name!r} ({error})") from None
        try:
            dims = tuple(meta.get("dimension_names") or ())
            info.arrays[entry.name] = ArrayMeta(dims, tuple(meta["shape"]), str(meta["data_type"]),
                                                meta.get("attributes", {}), _fast_plan(meta))
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptStoreError(f"{path}: unreadable metadata of array {entry.name!r} ({error})") from None
    missing = [name for name in ("step", "eval_step", "layer", "head") if name not in info.arrays]
    if missing:
        raise CorruptStoreError(f"{path}: no {', '.join(missing)} coordinate; not an ihmodel trial store")
    return info


# --- reading arrays --------------------------------------------------------------------------------------------
# The stores this project writes use one layout: regular chunks, the default "c/i/j" chunk keys, little-endian
# bytes and zstd. Such chunks are read and decoded here directly (~50 us a read, against ~1 ms through zarr's
# codec pipeline); any other layout goes through zarr. tests/analysis/test_storeio.py checks both agree.

_ZSTD = numcodecs.Zstd()
_SPECIAL_FILLS = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}


@dataclass(frozen=True)
class FastPlan:
    dtype: np.dtype
    chunks: tuple[int, ...]
    fill: Any
    zstd: bool
    crc32c: bool  # each chunk ends in a CRC-32C of the bytes before it (ihmodel.integrity)


def _fast_plan(meta: dict[str, Any]) -> FastPlan | None:
    """How to read this array's chunks directly, or None if its layout needs zarr."""
    try:
        codecs = meta["codecs"]
        dtype = np.dtype(meta["data_type"])
        if (dtype.kind not in "biuf" or meta.get("storage_transformers")
                or meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}
                or meta["chunk_grid"]["name"] != "regular"
                or not codecs or codecs[0].get("name") != "bytes"
                or (codecs[0].get("configuration") or {}).get("endian", "little") != "little"):
            return None
        crc32c = checksummed(codecs)
        compressors = codecs[1:-1] if crc32c else codecs[1:]
        if any(c.get("name") != "zstd" for c in compressors) or len(compressors) > 1:
            return None
        fill = meta["fill_value"]
        fill = _SPECIAL_FILLS[fill] if isinstance(fill, str) else fill
        if not isinstance(fill, (int, float, bool)):
            return None
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        return FastPlan(dtype.newbyteorder("<"), chunks, fill, bool(compressors), crc32c)
    except (KeyError, TypeError, ValueError):
        return None


def _read_direct(root: str, shape: tuple[int, ...], plan: FastPlan, selection: tuple) -> np.ndarray:
    """An orthogonal selection (slices and int arrays, one per dim) read chunk by chunk from the files."""
    picks = [np.arange(*k.indices(n)) if isinstance(k, slice) else np.asarray(k, dtype=np.int64)
             for k, n in zip(selection, shape)]
    low = [int(p.min()) if p.size else 0 for p in picks]
    high = [int(p.max()) + 1 if p.size else 0 for p in picks]
    box = np.full([h - l for l, h in zip(low, high)], plan.fill, plan.dtype)
    if box.size:
        ranges = [range(l // c, (h - 1) // c + 1) for l, h, c in zip(low, high, plan.chunks)]
        for index in itertools.product(*ranges):
            name = f"{root}/c/" + "/".join(map(str, index)) if index else f"{root}/c"
            try:
                with open(name, "rb") as handle:
                    raw = handle.read()
            except FileNotFoundError:
                continue  # never written: the fill value
            if plan.crc32c:
                if not chunk_intact(raw):
                    raise DamagedChunkError(f"chunk {name.removeprefix(root + '/')} fails its checksum")
                raw = raw[:-4]
            data = _ZSTD.decode(raw) if plan.zstd else raw
            chunk = np.frombuffer(data, plan.dtype).reshape(plan.chunks)
            starts = [i * c for i, c in zip(index, plan.chunks)]
            src = tuple(slice(max(l, s) - s, min(h, s + c) - s) for l, h, s, c in zip(low, high, starts, plan.chunks))
            dst = tuple(slice(max(l, s) - l, min(h, s + c) - l) for l, h, s, c in zip(low, high, starts, plan.chunks))
            box[dst] = chunk[src]
    return box[np.ix_(*[p - l for p, l in zip(picks, low)])] if picks else box


@dataclass
class Read:
    """One array read: `selections` of array `name` in the store at `path` (orthogonal: slices or int arrays, one
    per dim); with the array's `meta`, a plain layout is read directly."""

    path: Path
    name: str
    selections: Sequence[tuple]
    meta: ArrayMeta | None = None


def read_many(reads: Sequence[Read], damaged: dict[int, str] | None = None) -> list[list[np.ndarray] | None]:
    """Every read's selections (order kept): plain layouts directly, the rest in one zarr async gather.

    A read of damaged data (a chunk failing its checksum, an undecodable file) raises CorruptStoreError, or, given
    `damaged`, yields None and says why in damaged[index]: its numbers are never returned."""
    results: list[list[np.ndarray] | None] = [None] * len(reads)
    slow = []
    for i, read in enumerate(reads):
        plan = read.meta.plan if read.meta is not None else None
        if plan is None:
            slow.append(i)
            continue
        try:
            root = f"{os.fspath(read.path)}/{read.name}"
            results[i] = [_read_direct(root, read.meta.shape, plan, sel) for sel in read.selections]
        except (OSError, ValueError, RuntimeError) as error:
            reason = f"array {read.name!r}: {error}"
            if damaged is None:
                raise CorruptStoreError(f"{read.path}: {reason}; `icsweep run` sets the store aside and trains "
                                        f"the trial again") from error
            damaged[i] = reason
    if not slow:
        return results

    async def gather():
        limit = asyncio.Semaphore(MAX_CONCURRENT_READS)

        async def one(read: Read):
            async with limit:
                array = await zarr_async.open_array(store=str(read.path), path=read.name, mode="r", zarr_format=3)
                return [np.asarray(await array.get_orthogonal_selection(sel)) for sel in read.selections]

        return await asyncio.gather(*(one(reads[i]) for i in slow))

    try:
        for i, value in zip(slow, sync(gather())):
            results[i] = value
    except (FileNotFoundError, KeyError, ValueError, OSError) as error:
        raise CorruptStoreError(f"unreadable array in a trial store ({type(error).__name__}: {error})") from error
    return results


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
