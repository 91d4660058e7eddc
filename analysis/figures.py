"""The paper's figures from a sweep: loss curves per clamp set (Fig 5b), phase-change time versus each data
property (Fig 6), and per-head induction score over training (Fig 3b).

Each function returns a matplotlib Figure (made without pyplot, so nothing here needs a display);
`save_figures` writes them all as PNG and PDF.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from analysis.phase import LN2
from analysis.table import SEED_DIMS

PANEL = (3.6, 2.8)  # inches per panel


def _data_dims(ds: xr.Dataset) -> list[str]:
    """Grid dims that are data properties: neither the clamp set nor seeds."""
    return [dim for dim in ds["complete"].dims if dim not in ("clamp", *SEED_DIMS)]


def _cells(ds: xr.Dataset) -> list[dict]:
    dims = _data_dims(ds)
    return [dict(zip(dims, values)) for values in itertools.product(*(ds[d].values.tolist() for d in dims))]


def _label(cell: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items()) or "all trials"


def _grid(n: int, rows: int | None = None) -> tuple[Figure, np.ndarray]:
    cols = min(n, 3) if rows is None else -(-n // rows)
    rows = rows or -(-n // cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def _x(da: xr.DataArray, time_dim: str, seq_name: str) -> np.ndarray:
    seq = da.coords.get(seq_name)
    if seq is not None and seq.dims == (time_dim,):
        return seq.values
    if seq is not None:  # per-cell sequences: their mean over the cell's seeds
        return seq.mean([d for d in seq.dims if d != time_dim]).values
    return da[time_dim].values


def loss_curves(ds: xr.Dataset, *, evaluator: str = "fsl_train", variable: str = "eval_loss") -> Figure:
    """Fig 5b style: eval loss against training sequences, a line per clamp set (mean over seeds, seeds faint),
    a panel per combination of data properties."""
    curve = ds[variable].sel(evaluator=evaluator) if "evaluator" in ds[variable].dims else ds[variable]
    curve = curve.load()
    cells = _cells(ds)
    fig, axes = _grid(len(cells))
    clamps = ds["clamp"].values.tolist() if "clamp" in ds.dims else [None]
    colors = [f"C{i % 10}" for i in range(len(clamps))]
    stopped_any = False
    for ax, cell in zip(axes.ravel(), cells):
        sub, stops = curve.sel(cell), ds["stopped_early"].sel(cell)
        x = _x(sub, "eval_step", "eval_sequences")
        for clamp, color in zip(clamps, colors):
            lines = sub.sel(clamp=clamp) if clamp is not None else sub
            stopped = (stops.sel(clamp=clamp) if clamp is not None else stops).values.reshape(-1)
            seeds = lines.transpose(..., "eval_step").values.reshape(-1, lines.sizes["eval_step"])
            for seed_line, stop in zip(seeds, stopped):
                ax.plot(x, seed_line, color=color, alpha=0.25, lw=0.7)
                if stop:  # where train.stop_early ended it: the curve stops there, it does not go missing
                    last = np.flatnonzero(np.isfinite(seed_line))[-1]
                    ax.plot(x[last], seed_line[last], marker="x", color=color, ms=6, mew=1.5)
                    stopped_any = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an eval no seed has reached: NaN is right
                mean = np.nanmean(seeds, axis=0)
            # the mean of seeds that all still train: past a seed's end a mean of the others would jump
            mean[np.arange(len(x)) > _last_common(seeds)] = np.nan
            ax.plot(x, mean, color=color, lw=1.8, label=str(clamp) if clamp is not None else None)
        ax.axhline(LN2, color="0.5", ls=":", lw=1)
        ax.axhline(0.4 * LN2, color="0.5", ls="--", lw=1)
        ax.set(title=_label(cell), xlabel="training sequences", ylabel=f"{evaluator} loss (nats)")
        ax.set_ylim(bottom=0)
    if clamps != [None]:
        axes.ravel()[0].legend(fontsize="small", title="clamp set")
    fig.suptitle(f"{variable} ({evaluator})\ndotted: ln 2, dashed: 0.4 ln 2"
                 + ("\nx: stopped early (phase change over)" if stopped_any else ""))
    return fig


def _last_common(seeds: np.ndarray) -> int:
    """The last evaluation every seed with a curve has reached (seeds without a store yet are left out)."""
    ends = [int(r[-1]) for r in (np.flatnonzero(np.isfinite(line)) for line in seeds) if len(r)]
    return min(ends, default=-1)


def phase_change_vs_property(table: pd.DataFrame) -> dict[str, Figure]:
    """Fig 6 style: mean phase-change time (± sem over seeds) against each data property, a line per clamp set
    (and per value of the other data properties). Keyed by the property's name."""
    groups = [c for c in table.columns if c not in
              ("mean_sequences", "sem_sequences", "mean_step", "sem_step", "n_seeds", "n_never", "n_pending")]
    properties = [c for c in groups if c not in ("clamp", "clamp_set")]
    figures = {}
    for prop in properties:
        fig = Figure(figsize=(PANEL[0] * 1.4, PANEL[1] * 1.2), layout="constrained")
        ax = fig.subplots()
        lines = [c for c in groups if c != prop]
        for i, (key, rows) in enumerate(table.groupby(lines, sort=False) if lines else [((), table)]):
            rows = rows.sort_values(prop)
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{v}" if n in ("clamp", "clamp_set") else f"{n}={v}" for n, v in zip(lines, key))
            ax.errorbar(rows[prop], rows["mean_sequences"], yerr=rows["sem_sequences"].fillna(0.0),
                        marker="o", capsize=3, label=label or None, color=f"C{i % 10}")
        ax.set(xlabel=prop, ylabel="phase change (training sequences)",
               title=f"phase change vs {prop} ({table.attrs.get('method', '')})")
        if lines:
            ax.legend(fontsize="small")
        figures[prop] = fig
    return figures


def induction_heads(ds: xr.Dataset, cell: Mapping | None = None) -> Figure:
    """Fig 3b style: each head's induction score over training (mean over seeds), a row per layer and a column per
    clamp set, for one combination of data properties (default: each property's first value)."""
    name = "eval_induction_score" if "eval_induction_score" in ds else "induction_score"
    time_dim = "eval_step" if name.startswith("eval") else "step"
    cell = dict(cell) if cell is not None else {d: ds[d].values[0] for d in _data_dims(ds)}
    score = ds[name].sel(cell).load()
    clamps = ds["clamp"].values.tolist() if "clamp" in ds.dims else [None]
    layers = ds["layer"].values.tolist()
    fig, axes = _grid(len(layers) * len(clamps), rows=len(layers))
    x = _x(score, time_dim, "eval_sequences" if time_dim == "eval_step" else "sequences")
    for col, clamp in enumerate(clamps):
        sub = score.sel(clamp=clamp) if clamp is not None else score
        seed_dims = [d for d in sub.dims if d in SEED_DIMS]
        mean = sub.mean(seed_dims) if seed_dims else sub
        for row, layer in enumerate(layers):
            ax = axes[row, col]
            for head in ds["head"].values.tolist():
                ax.plot(x, mean.sel(layer=layer, head=head).values, lw=1.2, label=f"L{layer}H{head}")
            ax.set(title=f"{clamp if clamp is not None else ''} layer {layer}".strip(),
                   xlabel="training sequences", ylabel="induction score")
            ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle(f"{name} per head ({_label(cell)})")
    return fig


def save_figures(ds: xr.Dataset, table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Every figure as PNG and PDF in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"loss_curves": loss_curves(ds)}
    figures |= {f"phase_change_vs_{prop}": fig for prop, fig in phase_change_vs_property(table).items()}
    if "eval_induction_score" in ds or "induction_score" in ds:
        figures["induction_heads"] = induction_heads(ds)
    written = []
    for stem, fig in figures.items():
        for suffix in ("png", "pdf"):
            path = out_dir / f"{stem}.{suffix}"
            fig.savefig(path, dpi=120)
            written.append(path)
    return written
