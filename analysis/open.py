"""Opening a sweep directory (or any list of trial stores) as one labeled, lazy xarray Dataset.

    ds = open_sweep("runs/labels")         # dims: n_labels, clamp, seed, step, eval_step, layer, head, evaluator
    ds.eval_loss.sel(evaluator="fsl_train", clamp="noclamp", n_labels=10)   # reads only those stores' rows

The grid comes from the manifest (ihmodel.sweepdir), the numbers from the stores (ihmodel.store). Trials without
a store, or whose store is not complete, are NaN where they have no rows, marked in the boolean `complete`
variable, and warned about. So are damaged stores (ihmodel.integrity): no number is ever read from a chunk that
fails its checksum. A store that does not belong to the sweep is refused.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ihmodel.config import TrialConfig, trial_id
from ihmodel.integrity import store_damage
from ihmodel.store import scalar_coords
from ihmodel.sweepdir import Manifest, read_manifest, store_path, trials_dir
from analysis.grid import align_rows, evaluator_names, grid_variables
from analysis.storeio import CorruptStoreError, DamagedStoreWarning, StoreInfo, config_from_yaml, read_info


class IncompleteSweepWarning(UserWarning):
    """Some trials have no store yet, or an incomplete one: their cells are NaN where they lack rows."""


def _read_store(path: Path) -> tuple[StoreInfo | None, str | None]:
    """A store's metadata, or None for no store or one still being laid down; or (None, what is damaged).

    Everything but the per-step arrays is verified here (a few small chunks a store); per-step chunks are verified
    as they are read (analysis.grid), so opening a sweep stays a read of its metadata."""
    try:
        info = read_info(path)
    except CorruptStoreError as error:
        if not (path / "zarr.json").exists():
            return None, None  # a trial that has only begun to create its store: no rows yet
        return None, str(error).removeprefix(f"{path}: ")
    damage = store_damage(path, skip_row_dims=("step",)) if info is not None else []
    return (None, "; ".join(damage)) if damage else (info, None)


def _store_config(info: StoreInfo) -> TrialConfig:
    text = info.attrs.get("config_yaml")
    if not isinstance(text, str):
        raise CorruptStoreError(f"{info.path}: no config_yaml attribute; not an ihmodel trial store "
                                f"(delete it and rerun the sweep to redo that trial)")
    return config_from_yaml(text)


def _axis_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, np.generic)) else json.dumps(value, sort_keys=True)


def _grid_coord(values: Mapping[int, Any], grid_dims: Sequence[str], grid_shape: tuple[int, ...]):
    """A per-cell value as a coordinate over only the grid dims it varies along (0-d if constant)."""
    cells = np.empty(int(np.prod(grid_shape)), dtype=object)
    for flat, value in values.items():
        cells[flat] = value
    cells = cells.reshape(grid_shape)
    dims = [dim for axis, dim in enumerate(grid_dims)
            if not np.all(cells == np.take(cells, [0], axis=axis))]
    cells = np.asarray(cells[tuple(slice(None) if dim in dims else 0 for dim in grid_dims)], dtype=object)
    present = [v for v in np.ravel(cells) if v is not None]
    if present and all(isinstance(v, str) for v in present):
        data = np.array(["" if v is None else v for v in np.ravel(cells)], dtype=object).reshape(np.shape(cells))
    elif len(present) < np.size(cells):
        data = np.array([np.nan if v is None else v for v in np.ravel(cells)], dtype=np.float64)
        data = data.reshape(np.shape(cells))
    else:
        data = np.array(cells.tolist())
    return (tuple(dims), data)


def _assemble(grid_dims: Sequence[str], grid_shape: tuple[int, ...], infos: Mapping[int, StoreInfo],
              configs: Mapping[int, TrialConfig], skip_coords: Iterable[str] = ()) -> xr.Dataset:
    """The combined Dataset of stores at cells of a grid; cells without a store are NaN."""
    axes = align_rows(infos)
    data_vars, coords = grid_variables(grid_dims, grid_shape, infos, axes)
    coords["evaluator"] = ("evaluator", evaluator_names(infos))
    scalars: dict[str, dict[int, Any]] = {}
    for cell, config in configs.items():
        for name, value in scalar_coords(config).items():
            scalars.setdefault(name, {})[cell] = value
    for name, values in scalars.items():
        if name not in grid_dims and name not in skip_coords:
            coords[name] = _grid_coord(values, grid_dims, grid_shape)
    complete, stopped = np.zeros(int(np.prod(grid_shape)), bool), np.zeros(int(np.prod(grid_shape)), bool)
    for cell, info in infos.items():
        complete[cell] = info.complete
        stopped[cell] = info.complete and bool(info.attrs.get("stopped_early", False))
    data_vars["complete"] = xr.Variable(
        tuple(grid_dims), complete.reshape(grid_shape),
        {"description": "the trial's store exists and is marked complete; otherwise it is NaN past its last row"})
    data_vars["stopped_early"] = xr.Variable(
        tuple(grid_dims), stopped.reshape(grid_shape),
        {"description": "complete before its budget: train.stop_early ended it after its phase change (NaN past "
                        "its last row)"})
    return xr.Dataset(data_vars, coords)


def _warn_incomplete(what: str, missing: Sequence[str], incomplete: Sequence[str], total: int):
    if not missing and not incomplete:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {total} trials have no store ({', '.join(missing[:5])}"
                     f"{', ...' if len(missing) > 5 else ''})")
    if incomplete:
        parts.append(f"{len(incomplete)} are incomplete ({', '.join(incomplete[:5])}"
                     f"{', ...' if len(incomplete) > 5 else ''})")
    warnings.warn(f"{what}: {'; '.join(parts)}; their cells are NaN past their last row, "
                  f"and the `complete` variable is False there", IncompleteSweepWarning, stacklevel=3)


def _cell_index(manifest: Manifest, sweep_dir: Path) -> dict[str, int]:
    """Each manifest trial's flat position on the grid of its axes."""
    shape = tuple(len(axis.values) for axis in manifest.axes)
    where, seen = {}, {}
    for entry in manifest.trials:
        try:
            position = tuple(axis.values.index(entry.axes[axis.name]) for axis in manifest.axes)
        except (KeyError, ValueError):
            raise ValueError(f"{sweep_dir}/manifest.json: trial {entry.id} has axis values {entry.axes}, not on the "
                             f"grid {[(a.name, a.values) for a in manifest.axes]}; rerun `icsweep run` to rewrite "
                             f"the manifest") from None
        flat = int(np.ravel_multi_index(position, shape)) if shape else 0
        if flat in seen:
            raise ValueError(f"{sweep_dir}/manifest.json: trials {seen[flat]} and {entry.id} share the grid cell "
                             f"{entry.axes}; rerun `icsweep run` to rewrite the manifest")
        where[entry.id], seen[flat] = flat, entry.id
    return where


def open_sweep(path: str | Path) -> xr.Dataset:
    """A sweep directory as one lazy Dataset: each grid axis a dim, beside step, eval_step, layer, head, evaluator.

    Variables are those of ihmodel.store (`loss`, `eval_loss`, `induction_score`, ...) over (*axes, their dims),
    plus `complete` over the axes. Coordinates: the axes' values; `step`, `eval_step` (optimizer steps) and
    `sequences`, `eval_sequences` (training sequences; per cell if the trials disagree); `trial_id` and the other
    config scalars (seed_data, clamp_set, ...) over the axes they vary along. Only coordinates are read here;
    values are read when selected or computed on, and only for the selected cells and rows.
    """
    sweep_dir = Path(path)
    manifest = read_manifest(sweep_dir)
    grid_dims = [axis.name for axis in manifest.axes]
    if len(set(grid_dims)) != len(grid_dims):
        raise ValueError(f"{sweep_dir}/manifest.json: repeated axis names {grid_dims}")
    grid_shape = tuple(len(axis.values) for axis in manifest.axes)
    where = _cell_index(manifest, sweep_dir)
    if trials_dir(sweep_dir).is_dir():
        for store in sorted(trials_dir(sweep_dir).glob("*.zarr")):
            if store.name.removesuffix(".zarr") not in where:
                raise ValueError(f"{store}: not a trial of sweep {manifest.sweep!r} (its manifest lists no such "
                                 f"id); a store of another sweep? move it out of {trials_dir(sweep_dir)}")
    infos, configs, missing, incomplete, damaged = {}, {}, [], [], []
    for entry in manifest.trials:
        flat = where[entry.id]
        info, damage = _read_store(store_path(sweep_dir, entry.id))
        if info is None:
            (damaged if damage else missing).append(f"{entry.id} ({damage})" if damage else entry.id)
            configs[flat] = config_from_yaml(entry.config_yaml)
            continue
        config = _store_config(info)
        # The same config text is the same trial; otherwise compare ids (resource fields may differ).
        if info.attrs["config_yaml"] != entry.config_yaml and trial_id(config) != entry.id:
            raise ValueError(f"{info.path}: holds trial {trial_id(config)}, not {entry.id} of sweep "
                             f"{manifest.sweep!r}; a store of another sweep? move it out of {trials_dir(sweep_dir)}")
        infos[flat], configs[flat] = info, config
        if not info.complete:
            incomplete.append(entry.id)
    ds = _assemble(grid_dims, grid_shape, infos, configs, skip_coords=("trial_id",))
    ds = ds.assign_coords({axis.name: (axis.name, [_axis_value(v) for v in axis.values], {"config_key": axis.key})
                           for axis in manifest.axes})
    ds = ds.assign_coords(trial_id=_grid_coord({where[e.id]: e.id for e in manifest.trials}, grid_dims, grid_shape))
    ds.attrs = {"sweep": manifest.sweep, "sweep_dir": str(sweep_dir), "sweep_config_yaml": manifest.sweep_config_yaml}
    _warn_incomplete(f"sweep {manifest.sweep!r}", missing, incomplete, len(manifest.trials))
    if damaged:
        warnings.warn(f"sweep {manifest.sweep!r}: {len(damaged)} damaged trial stores, their cells NaN and "
                      f"`complete` False: {'; '.join(damaged[:5])}{'; ...' if len(damaged) > 5 else ''}; "
                      f"`icsweep run` sets them aside and trains those trials again", DamagedStoreWarning,
                      stacklevel=2)
    return ds


def open_trials(paths: Iterable[str | Path]) -> xr.Dataset:
    """Any trial stores as one lazy Dataset with a flat `trial` dim and the config scalars as coords on it.

    `trial` counts the stores in the order given; `store` holds their paths, `trial_id`, `seed_init`,
    `clamp_set`, `n_labels`, ... their config scalars. Incomplete stores are NaN past their last row and warned of.
    """
    paths = [Path(p) for p in paths]
    infos, configs, incomplete = {}, {}, []
    for i, path in enumerate(paths):
        info = read_info(path)
        if info is None:
            raise FileNotFoundError(f"{path}: no trial store there; pass paths of <trial id>.zarr stores")
        infos[i], configs[i] = info, _store_config(info)
        if not info.complete:
            incomplete.append(path.name)
    ds = _assemble(("trial",), (len(paths),), infos, configs)
    ds = ds.assign_coords(trial=("trial", np.arange(len(paths))),
                          store=("trial", np.array([str(p) for p in paths], dtype=object)))
    constants = [name for name in (scalar_coords(configs[0]) if configs else {}) if ds[name].dims != ("trial",)]
    ds = ds.assign_coords({name: ("trial", np.repeat(ds[name].values[None], len(paths)))  # per trial here too
                           for name in constants})
    _warn_incomplete("open_trials", [], incomplete, len(paths))
    return ds
