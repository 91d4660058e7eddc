"""Many trial stores as one lazy xarray Dataset: rows aligned on the union of their steps, cells NaN where absent.

A grid is a set of dims (a sweep's axes, or one `trial` dim) and, at some of its cells, a store. Each variable of
the combined Dataset is a `GridArray`: an xarray backend array that, when indexed, reads only the selected cells'
selected rows (all of them in one batched read) and fills the rest with NaN. Nothing but coordinates is read when
the Dataset is made.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from ihmodel.store import EVALUATORS, VARIABLES
from analysis.storeio import ArrayMeta, DamagedStoreWarning, Read, StoreInfo, read_many

INNER_DIMS = ("layer", "head", "evaluator")


@dataclass
class RowMap:
    """Where a store's rows sit on the union of row coordinates: position p is local row p - offset, or table[p]."""

    n: int  # rows in the store
    offset: int | None = None
    table: np.ndarray | None = None  # union position -> local row, -1 where the store has none

    def local(self, positions: np.ndarray) -> np.ndarray:
        rows = positions - self.offset if self.table is None else self.table[positions]
        return np.where((rows >= 0) & (rows < self.n), rows, -1)


@dataclass
class Source:
    path: Path
    name: str
    rows: RowMap
    meta: ArrayMeta  # the store array's metadata: its shape[1:] are its own sizes along the inner dims

    @property
    def inner(self) -> tuple[int, ...]:
        return self.meta.shape[1:]


class GridArray(BackendArray):
    """A (*grid, row, *inner) array assembled from per-store arrays on demand, NaN where no store has data."""

    def __init__(self, grid_shape: tuple[int, ...], n_rows: int, inner_shape: tuple[int, ...],
                 sources: Mapping[int, Source], dtype=np.float32):
        self.grid_shape = tuple(grid_shape)
        self.shape = (*self.grid_shape, n_rows, *inner_shape)
        self.dtype = np.dtype(dtype)
        self.sources = dict(sources)  # flat grid index -> Source

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        picks, keep = [], []
        for k, size in zip(key, self.shape):
            scalar = isinstance(k, (int, np.integer))
            picks.append(np.array([k]) if scalar else np.arange(size)[k])
            keep.append(not scalar)
        out = np.full([len(p) for p in picks], np.nan, self.dtype)
        g = len(self.grid_shape)
        plans = []
        for out_cell in np.ndindex(*(len(p) for p in picks[:g])):
            flat = int(np.ravel_multi_index(tuple(picks[d][i] for d, i in enumerate(out_cell)), self.grid_shape)) \
                if g else 0
            source = self.sources.get(flat)
            if source is None:
                continue
            local = source.rows.local(picks[g])
            have = np.flatnonzero(local >= 0)
            inner_have = [np.flatnonzero(p < n) for p, n in zip(picks[g + 1:], source.inner)]
            if not len(have) or any(not len(h) for h in inner_have):
                continue
            rows = local[have]
            row_sel = slice(rows[0], rows[-1] + 1) if np.all(np.diff(rows) == 1) else rows
            sel = (row_sel, *(p[h] for p, h in zip(picks[g + 1:], inner_have)))
            plans.append((out_cell, have, inner_have, Read(source.path, source.name, [sel], source.meta)))
        damaged: dict[int, str] = {}
        for i, ((out_cell, have, inner_have, read), blocks) in enumerate(
                zip(plans, read_many([plan[3] for plan in plans], damaged))):
            if i in damaged:  # left NaN: a damaged chunk's numbers are never returned
                warnings.warn(f"trial {read.path.name.removesuffix('.zarr')} is damaged ({damaged[i]}); its cells "
                              f"are NaN there: `icsweep run` sets the store aside and trains the trial again",
                              DamagedStoreWarning, stacklevel=2)
                continue
            out[out_cell][np.ix_(have, *inner_have)] = blocks[0]
        return out[tuple(slice(None) if k else 0 for k in keep)]


def lazy(array: GridArray) -> indexing.ExplicitlyIndexed:
    """Wrapped as xarray's own backends wrap theirs: lazily indexed, cached once loaded whole."""
    return indexing.MemoryCachedArray(indexing.LazilyIndexedArray(array))


@dataclass
class RowAxis:
    """The union of one row dim's coordinate over all stores, each store's RowMap onto it, and the second coord."""

    values: np.ndarray  # union of the dim's coordinate (steps)
    maps: dict[int, RowMap]  # flat grid index -> RowMap
    extra: np.ndarray | None  # sequences per union position, when every store agrees; else None
    extra_grid: dict[int, np.ndarray] | None = None  # per store, NaN-filled, when stores disagree (eval)


def _union_maps(values_by_cell: Mapping[int, np.ndarray]) -> tuple[np.ndarray, dict[int, RowMap]]:
    union = np.unique(np.concatenate(list(values_by_cell.values()))) if values_by_cell else np.zeros(0, np.int64)
    maps = {}
    for cell, values in values_by_cell.items():
        table = np.full(len(union), -1, np.int64)
        table[np.searchsorted(union, values)] = np.arange(len(values))
        maps[cell] = RowMap(len(values), table=table)
    return union, maps


def align_rows(infos: Mapping[int, StoreInfo]) -> dict[str, RowAxis]:
    """The `step` and `eval_step` RowAxes of a grid of stores.

    Eval coordinates (~100 rows a store) are read whole. Of the per-step coordinates only the first and last rows
    are read: a store whose steps run contiguously (last - first = rows - 1, as training writes them) needs no
    more; any other store has its whole step and sequences coordinates read.
    """
    n_step = {cell: info.rows("step") for cell, info in infos.items()}
    n_eval = {cell: info.rows("eval_step") for cell, info in infos.items()}
    reads, keys = [], []
    for cell, info in infos.items():
        if n := n_step[cell]:
            ends = [(slice(0, 1),), (slice(n - 1, n),)]
            reads += [Read(info.path, name, ends, info.arrays[name]) for name in ("step", "sequences")]
            keys += [(cell, "step"), (cell, "sequences")]
        if m := n_eval[cell]:
            reads += [Read(info.path, name, [(slice(0, m),)], info.arrays[name])
                      for name in ("eval_step", "eval_sequences")]
            keys += [(cell, "eval_step"), (cell, "eval_sequences")]
    got = {key: [np.asarray(part).reshape(-1) for part in value] for key, value in zip(keys, read_many(reads))}

    # step: contiguous stores map by offset; any other by a table over the union.
    ends = {cell: (int(got[cell, "step"][0][0]), int(got[cell, "step"][1][0])) for cell in infos if n_step[cell]}
    gappy = [cell for cell, (first, last) in ends.items() if last - first != n_step[cell] - 1]
    if gappy:
        whole = read_many([Read(infos[cell].path, "step", [(slice(0, n_step[cell]),)], infos[cell].arrays["step"])
                           for cell in gappy])
        whole = {cell: values.astype(np.int64) for cell, (values,) in zip(gappy, whole)}
        union, maps = _union_maps({cell: whole.get(cell, np.arange(first, last + 1))
                                   for cell, (first, last) in ends.items()})
    else:
        first = min((e[0] for e in ends.values()), default=0)
        last = max((e[1] for e in ends.values()), default=-1)
        union = np.arange(first, last + 1, dtype=np.int64)
        maps = {cell: RowMap(n_step[cell], offset=ends[cell][0] - first) for cell in ends}
    # sequences along step: one coordinate if every store's sequences are one linear function of its steps.
    lines, singles = set(), set()
    for cell, (first, last) in ends.items():
        seq_first, seq_last = int(got[cell, "sequences"][0][0]), int(got[cell, "sequences"][1][0])
        if last > first:
            slope = (seq_last - seq_first) / (last - first)
            lines.add((seq_first - slope * first, slope))
        else:
            singles.add((first, seq_first))
    step_extra = None
    if not ends:
        step_extra = np.zeros(0, np.int64)
    elif not gappy and len(lines) == 1:
        intercept, slope = next(iter(lines))
        if all(intercept + slope * step == seq for step, seq in singles):
            step_extra = np.round(intercept + slope * union).astype(np.int64)
    elif not gappy and not lines and len(singles) == 1:
        step_extra = np.array([next(iter(singles))[1]], np.int64)
    step_axis = RowAxis(union, maps, step_extra)

    # eval_step: read whole; the union may interleave (different eval schedules).
    eval_values = {cell: got[cell, "eval_step"][0].astype(np.int64) for cell in infos if n_eval[cell]}
    eval_union, eval_maps = _union_maps(eval_values)
    seqs = {cell: np.full(len(eval_union), np.nan) for cell in eval_values}
    for cell, values in eval_values.items():
        seqs[cell][np.searchsorted(eval_union, values)] = got[cell, "eval_sequences"][0]
    stacked = np.stack(list(seqs.values())) if seqs else np.zeros((1, 0))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
    if np.all(low == high):
        eval_axis = RowAxis(eval_union, eval_maps, high.astype(np.int64))
    else:
        eval_axis = RowAxis(eval_union, eval_maps, None, seqs)
    return {"step": step_axis, "eval_step": eval_axis}


def evaluator_names(infos: Mapping[int, StoreInfo]) -> np.ndarray:
    """The evaluator coordinate; every store must have the same evaluators."""
    sizes = {info.arrays["evaluator"].shape[0] for info in infos.values() if "evaluator" in info.arrays}
    if not sizes:
        return np.array(EVALUATORS, dtype=object)
    if len(sizes) > 1:
        raise ValueError(f"stores disagree on the number of evaluators ({sorted(sizes)}); open them separately")
    first = next(info for info in infos.values() if "evaluator" in info.arrays)
    (names,), = read_many([Read(first.path, "evaluator", [(slice(None),)])])
    return np.asarray(names, dtype=object)


def grid_variables(grid_dims: Sequence[str], grid_shape: tuple[int, ...], infos: Mapping[int, StoreInfo],
                   axes: Mapping[str, RowAxis]) -> tuple[dict, dict]:
    """The lazy data variables and the row coordinates of the combined Dataset."""
    inner_sizes = {dim: 0 for dim in INNER_DIMS}
    for info in infos.values():
        for name, meta in info.arrays.items():
            for dim, size in zip(meta.dims, meta.shape):
                if dim in inner_sizes:
                    inner_sizes[dim] = max(inner_sizes[dim], size)
    names = sorted({name for info in infos.values() for name in info.variables()},
                   key=lambda n: (list(VARIABLES).index(n) if n in VARIABLES else len(VARIABLES), n))
    data_vars = {}
    for name in names:
        metas = [info.arrays[name] for info in infos.values() if name in info.arrays]
        dims = metas[0].dims
        if any(meta.dims != dims for meta in metas):
            raise ValueError(f"stores disagree on the dims of {name!r}: {sorted({m.dims for m in metas})}")
        row_dim, inner_dims = dims[0], dims[1:]
        sources = {cell: Source(info.path, name, axes[row_dim].maps[cell], info.arrays[name])
                   for cell, info in infos.items() if name in info.arrays and cell in axes[row_dim].maps}
        array = GridArray(grid_shape, len(axes[row_dim].values), tuple(inner_sizes[d] for d in inner_dims),
                          sources, np.float32)
        attrs = {k: v for k, v in metas[0].attrs.items() if k in ("description", "units")}
        data_vars[name] = xr.Variable((*grid_dims, *dims), lazy(array), attrs)

    def attrs(name: str, units: str) -> dict:
        """The coordinate's attrs as the stores have them, with its units."""
        found = next((info.arrays[name].attrs for info in infos.values() if name in info.arrays), {})
        return {k: v for k, v in found.items() if k == "description"} | {"units": units}

    coords = {
        "step": ("step", axes["step"].values, attrs("step", "steps")),
        "eval_step": ("eval_step", axes["eval_step"].values, attrs("eval_step", "steps")),
        "layer": ("layer", np.arange(inner_sizes["layer"])),
        "head": ("head", np.arange(inner_sizes["head"])),
    }
    seq_attrs = attrs("sequences", "sequences")
    if axes["step"].extra is not None:
        coords["sequences"] = ("step", axes["step"].extra, seq_attrs)
    else:  # stores disagree (e.g. a batch-size axis): a coordinate per cell, read lazily
        sources = {cell: Source(info.path, "sequences", axes["step"].maps[cell], info.arrays["sequences"])
                   for cell, info in infos.items() if cell in axes["step"].maps}
        array = GridArray(grid_shape, len(axes["step"].values), (), sources, np.float64)
        coords["sequences"] = xr.Variable((*grid_dims, "step"), lazy(array), seq_attrs)
    eval_attrs = attrs("eval_sequences", "sequences")
    if axes["eval_step"].extra is not None:
        coords["eval_sequences"] = ("eval_step", axes["eval_step"].extra, eval_attrs)
    else:
        full = np.full((int(np.prod(grid_shape)), len(axes["eval_step"].values)), np.nan)
        for cell, values in axes["eval_step"].extra_grid.items():
            full[cell] = values
        coords["eval_sequences"] = ((*grid_dims, "eval_step"), full.reshape(*grid_shape, -1), eval_attrs)
    return data_vars, coords
