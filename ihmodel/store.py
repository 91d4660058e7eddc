"""The store schema of one trial, and its writer. This is the one place those names are defined.

One Zarr v3 store per trial. The skeleton (every variable at length 0, coords, attrs) is laid down by xarray, so
any xarray reads it: once per layout, in memory, then written for each trial as its files (`Skeleton`); rows are
then appended with zarr in whole blocks as training goes. The store attribute
`complete` is set true only after the last write: it is the completion marker every layer above relies on.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from omegaconf import OmegaConf
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore, StorePath

from ihmodel.config import EVALUATORS, TrialConfig, to_yaml, trial_id
from ihmodel.integrity import CHUNK_COMPRESSORS


@dataclass(frozen=True)
class Variable:
    dims: tuple[str, ...]
    description: str
    units: str | None = None


STEP_VARIABLES = {
    "loss": Variable(("step",), "training cross-entropy of the step's batch at the query", "nats"),
    "acc": Variable(("step",), "training accuracy of the step's batch"),
    "grad_norm": Variable(("step",), "global L2 norm of the step's gradient"),
    "prev_token_score": Variable(
        ("step", "layer", "head"), "attention from label tokens to the exemplar just before them, averaged"),
    "induction_score": Variable(
        ("step", "layer", "head"), "attention from the query to the correct label token minus to the other label"),
    "pattern_entropy": Variable(
        ("step", "layer", "head"), "entropy of the attention pattern, averaged over query positions 1..n", "nats"),
    "head_out_norm": Variable(("step", "layer", "head"), "L2 norm of the head's output in the residual, averaged"),
}
EVAL_VARIABLES = {
    "eval_loss": Variable(("eval_step", "evaluator"), "cross-entropy over the evaluator's fixed sequences", "nats"),
    "eval_acc": Variable(("eval_step", "evaluator"), "accuracy, argmax over all labels"),
    "eval_icl_acc": Variable(("eval_step", "evaluator"), "accuracy with labels absent from the context masked"),
    "eval_icl_prob": Variable(
        ("eval_step", "evaluator"), "probability of the correct label with absent labels masked"),
    "eval_context_prob": Variable(("eval_step", "evaluator"), "full-softmax mass on the two context labels"),
    "eval_induction_score": Variable(
        ("eval_step", "layer", "head"), "induction score on the induction set (eval.induction_set)"),
}
VARIABLES = {**STEP_VARIABLES, **EVAL_VARIABLES}

# Which config switch (TrialConfig.stats) records which variables.
STAT_VARIABLES = {name: (name,) for name in STEP_VARIABLES} | {
    "eval": ("eval_loss", "eval_acc", "eval_icl_acc", "eval_icl_prob", "eval_context_prob"),
    "eval_induction_score": ("eval_induction_score",),
}


def recorded_variables(config: TrialConfig) -> list[str]:
    return [var for stat in config.stats for var in STAT_VARIABLES[stat]]


def scalar_coords(config: TrialConfig) -> dict[str, object]:
    """The trial's config scalars, coordinates of every variable (they become dims once trials are combined)."""
    data = config.data
    return {
        "trial_id": trial_id(config),
        "seed_init": config.seed,
        "seed_data": config.data_seed,
        "seed_eval": config.eval_seed,
        "clamp_set": config.clamp.name,
        "n_train_classes": data.n_train_classes,
        "n_labels": data.n_labels,
        "burstiness": data.burstiness,
        "context_len": data.context_len,
        "zipf_exponent": data.zipf_exponent,
        "noise": data.noise,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
    }


def checkpoint_path(store_path: str | Path) -> Path:
    """The trial's checkpoint file, beside its store (a trial writes only these two)."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name.removesuffix(".zarr") + ".ckpt.pt")


def resumable(store_path: str | Path) -> bool:
    """A checkpoint to continue from (else the trial starts over in a fresh store)."""
    return checkpoint_path(store_path).is_file() and Path(store_path).exists()


def is_complete(store_path: str | Path) -> bool:
    try:
        return bool(zarr.open_group(str(store_path), mode="r").attrs.get("complete", False))
    except (FileNotFoundError, ValueError, TypeError, AttributeError, zarr.errors.GroupNotFoundError, OSError):
        return False


def package_version() -> str:
    try:
        return version("icsweep")
    except PackageNotFoundError:
        return "unknown"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StoreWriter:
    """Appends blocks of rows to a trial's store; `create` lays the skeleton, `open` continues one."""

    def __init__(self, path: str | Path, nodes: tuple[zarr.Group, dict[str, zarr.Array]] | None = None):
        """Open the store at `path`, or take `nodes`, its group and arrays, from whoever just made them."""
        self.path = str(path)
        # Array handles opened once: looking one up in the group re-reads its metadata (a third of a flush).
        self.group, self.arrays = nodes or self.open(self.path)

    @staticmethod
    def open(path: str) -> tuple[zarr.Group, dict[str, zarr.Array]]:
        group = zarr.open_group(path, mode="r+")
        return group, dict(group.arrays())

    @classmethod
    def create(cls, path: str | Path, config: TrialConfig) -> StoreWriter:
        """A fresh store at `path` (any store there before is replaced), stamped from its layout's skeleton."""
        return cls(path, skeleton(config).write(path, config))

    def length(self, dim: str) -> int:
        return self.arrays[dim].shape[0]

    def append(self, dim: str, index: np.ndarray, extra_coord: np.ndarray, rows: dict[str, np.ndarray]):
        """Append rows along `dim` ("step" or "eval_step"): its index coord, its sequences coord, the variables."""
        start = self.length(dim)
        stop = start + len(index)
        coord_name = "sequences" if dim == "step" else "eval_sequences"

        async def grow_and_write(array: zarr.AsyncArray, values: np.ndarray):
            await array.resize((stop,) + array.shape[1:])
            await array.setitem(slice(start, stop), values)

        async def append_all():
            columns = {dim: index, coord_name: extra_coord, **rows}
            await asyncio.gather(*(grow_and_write(self.arrays[name].async_array, values)
                                   for name, values in columns.items()))

        # One trip to zarr's event loop for every array of the block: each synchronous resize or write is a trip
        # of its own (a flush of 9 arrays 18 -> 14.5 ms).
        sync(append_all())

    def truncate(self, n_steps: int, n_evals: int):
        """Drop rows written after the checkpoint being resumed from, so a resumed run appends where it left."""
        for array in self.arrays.values():
            dims = array.metadata.dimension_names or ()
            if dims and dims[0] in ("step", "eval_step"):
                keep = n_steps if dims[0] == "step" else n_evals
                if array.shape[0] > keep:
                    array.resize((keep,) + array.shape[1:])

    def mark_complete(self, stopped_early: bool, stop_sequences: int, budget_sequences: int):
        """The completion marker, last, with how the trial ended: `stop_sequences` trained of `budget_sequences`
        (`stopped_early`: train.stop_early ended it after its phase change, ihmodel.stopping)."""
        self.group.attrs.update({"stopped_early": bool(stopped_early), "stop_sequences": int(stop_sequences),
                                 "budget_sequences": int(budget_sequences)})
        self.group.attrs["complete"] = True


def skeleton_dataset(config: TrialConfig) -> tuple[xr.Dataset, dict[str, dict]]:
    """The store as xarray lays it (every variable at length 0, coords, attrs) and its encoding."""
    n_layers, n_heads = config.model.n_layers, config.model.n_heads
    chunk = config.train.steps_per_write
    sizes = {"step": 0, "eval_step": 0, "layer": n_layers, "head": n_heads, "evaluator": len(EVALUATORS)}
    data_vars = {}
    for name in recorded_variables(config):
        var = VARIABLES[name]
        attrs = {"description": var.description} | ({"units": var.units} if var.units else {})
        data_vars[name] = (var.dims, np.zeros([sizes[d] for d in var.dims], np.float32), attrs)
    coords = {
        "step": ("step", np.zeros(0, np.int64), {"description": "optimizer updates done (0 = init)"}),
        "sequences": ("step", np.zeros(0, np.int64), {"description": "training sequences seen before the step"}),
        "eval_step": ("eval_step", np.zeros(0, np.int64), {"description": "optimizer updates done at the eval"}),
        "eval_sequences": ("eval_step", np.zeros(0, np.int64), {"description": "sequences seen at the eval"}),
        "layer": np.arange(n_layers),
        "head": np.arange(n_heads),
        "evaluator": np.array(EVALUATORS, dtype=object),
    }
    coords |= scalar_values(config)
    ds = xr.Dataset(data_vars, coords=coords, attrs=store_attrs(config))
    rows = list(ds.data_vars) + ["step", "sequences", "eval_step", "eval_sequences"]
    encoding = {name: {"compressors": CHUNK_COMPRESSORS} for name in ds.variables}  # every chunk checksummed
    for name in rows:
        encoding[name]["chunks"] = (chunk,) + tuple(sizes[d] for d in ds[name].dims[1:])
    return ds, encoding


def scalar_values(config: TrialConfig) -> dict[str, np.ndarray]:
    """The scalar coords as the store holds them (a string as a 0-d object array, as xarray writes it)."""
    return {name: np.array(value, dtype=object) if isinstance(value, str) else np.asarray(value)
            for name, value in scalar_coords(config).items()}


def store_attrs(config: TrialConfig) -> dict[str, object]:
    return {"config_yaml": to_yaml(config), "icsweep_version": package_version(), "git_sha": git_sha(),
            "complete": False}


def layout(config: TrialConfig) -> tuple:
    """What a store's files depend on besides its scalar coords' values and its attrs: stores of equal layouts
    differ in those alone."""
    return (config.model.n_layers, config.model.n_heads, config.train.steps_per_write,
            tuple(recorded_variables(config)),
            tuple((name, value.dtype.str) for name, value in scalar_values(config).items()))


class Skeleton:
    """The files of a fresh store of one layout, laid once by xarray (in memory), and written for any trial of that
    layout: its files as they are, then its scalar coords (with zarr) and its attrs. xarray takes about 150 ms to
    lay a store (33 arrays, three zarr writes each), minutes for a pack of a thousand trials."""

    def __init__(self, config: TrialConfig):
        ds, encoding = skeleton_dataset(config)
        self.config, self.node = config, OmegaConf.structured(config)
        files: dict[str, Buffer] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            ds.to_zarr(MemoryStore(files), mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        group = zarr.open_group(MemoryStore(files), mode="r")
        self.group = group.metadata
        self.arrays = {name: array.metadata for name, array in group.arrays()}
        self.scalars = list(scalar_coords(config))
        # every file but the group's (its attrs) and the scalar coords' chunks (a value equal to the fill value has
        # none: zarr writes no empty chunk, as xarray's own write would not)
        per_trial = {"zarr.json"} | {key for key in files
                                     if key.partition("/")[0] in self.scalars and not key.endswith("/zarr.json")}
        self.shared = {key: value.to_bytes() for key, value in files.items() if key not in per_trial}

    def yaml(self, config: TrialConfig) -> str:
        """to_yaml(config), from the skeleton's config node with the top-level entries that differ set anew: OmegaConf
        checks and converts an entry set on a structured node as it does one it builds (5 ms, not 13: building
        the node is most of to_yaml)."""
        node = copy.deepcopy(self.node)
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if repr(value) != repr(getattr(self.config, field.name)):  # repr: 1 and 1.0 (equal) may print apart
                node[field.name] = value
        return OmegaConf.to_yaml(node)

    def write(self, path: str | Path, config: TrialConfig) -> tuple[zarr.Group, dict[str, zarr.Array]]:
        """Write the trial's store at `path` (replacing any store there, as xarray's mode="w"); its group and array
        handles, so that its writer need not read back what was just written (13 ms a store)."""
        root = Path(path)
        if root.is_dir():
            shutil.rmtree(root)
        # plain writes: zarr's own (a thread and an atomic rename each) take 8 ms a store, these 3.5
        for key, value in self.shared.items():
            file = root / key
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(value)
        # the skeleton's attrs (xarray's among them) with this trial's config
        group = dataclasses.replace(self.group, attributes=self.group.attributes | {"config_yaml": self.yaml(config)})
        (root / "zarr.json").write_bytes(group.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
        store = StorePath(LocalStore(root))
        arrays = {name: zarr.AsyncArray(metadata, store / name) for name, metadata in self.arrays.items()}

        async def write_scalars():
            await asyncio.gather(*(arrays[name].setitem((), value) for name, value in scalar_values(config).items()))

        sync(write_scalars())
        return zarr.Group(zarr.AsyncGroup(group, store)), {name: zarr.Array(array) for name, array in arrays.items()}


_skeletons: dict[tuple, Skeleton] = {}


def skeleton(config: TrialConfig) -> Skeleton:
    """The skeleton of the config's layout, laid once per process."""
    key = layout(config)
    if key not in _skeletons:
        _skeletons[key] = Skeleton(config)
    return _skeletons[key]
