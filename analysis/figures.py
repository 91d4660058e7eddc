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
from matplotlib.ticker import NullLocator

from analysis.phase import LN2
from analysis.table import COLUMNS, SEED_DIMS

# Axis labels for the data properties a reader knows by name (others are labelled by their config key).
PROPERTY_LABELS = {"n_labels": "labels", "n_train_classes": "train classes", "n_test_classes": "test classes",
                   "burstiness": "burstiness", "zipf_exponent": "Zipf exponent", "context_len": "context pairs",
                   "n_train_exemplars": "train exemplars per class", "noise": "feature noise"}
PANEL = (4.2, 3.2)  # inches per panel: at 10-point text, readable on a slide


def _data_dims(ds: xr.Dataset) -> list[str]:
    """Grid dims that are data properties: neither the clamp set nor seeds."""
    return [dim for dim in ds["complete"].dims if dim not in ("clamp", *SEED_DIMS)]


def _cells(ds: xr.Dataset) -> list[dict]:
    dims = _data_dims(ds)
    return [dict(zip(dims, values)) for values in itertools.product(*(ds[d].values.tolist() for d in dims))]


def _label(cell: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items())  # empty for a sweep without data axes


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
    """Fig 5b style: eval loss against training sequences, a line per clamp set (mean over seeds) with the seeds'
    range shaded and each seed faint, a panel per combination of data properties."""
    curve = ds[variable].sel(evaluator=evaluator) if "evaluator" in ds[variable].dims else ds[variable]
    curve = curve.load()
    cells = _cells(ds)
    fig, axes = _grid(len(cells))
    clamps = ds["clamp"].values.tolist() if "clamp" in ds.dims else [None]
    colors = [f"C{i % 10}" for i in range(len(clamps))]
    stopped_any, several_seeds = False, False
    for ax, cell in zip(axes.ravel(), cells):
        sub, stops = curve.sel(cell), ds["stopped_early"].sel(cell)
        x = _x(sub, "eval_step", "eval_sequences")
        for clamp, color in zip(clamps, colors):
            lines = sub.sel(clamp=clamp) if clamp is not None else sub
            stopped = (stops.sel(clamp=clamp) if clamp is not None else stops).values.reshape(-1)
            seeds = lines.transpose(..., "eval_step").values.reshape(-1, lines.sizes["eval_step"])
            for seed_line, stop in zip(seeds, stopped):
                ax.plot(x, seed_line, color=color, alpha=0.3, lw=0.6)
                if stop:  # where train.stop_early ended it: the curve stops there, it does not go missing
                    last = np.flatnonzero(np.isfinite(seed_line))[-1]
                    ax.plot(x[last], seed_line[last], marker="x", color=color, ms=6, mew=1.5)
                    stopped_any = True
            # mean and range of the seeds that all still train: past a seed's end they would jump
            common = np.arange(len(x)) <= _last_common(seeds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an eval no seed has reached: NaN is right
                mean, low, high = (np.where(common, f(seeds, axis=0), np.nan) for f in (np.nanmean, np.nanmin,
                                                                                        np.nanmax))
            if np.isfinite(seeds).any(axis=1).sum() > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0)
                several_seeds = True
            ax.plot(x, mean, color=color, lw=2, label=str(clamp) if clamp is not None else None)
        ax.axhline(LN2, color="0.5", ls=":", lw=1)
        ax.axhline(0.4 * LN2, color="0.5", ls="--", lw=1)
        ax.set(title=_label(cell), xlabel="training sequences", ylabel=f"{evaluator} loss (nats)")
        ax.set_ylim(bottom=0)
        _sequences_axis(ax)
    if clamps != [None]:
        axes.ravel()[0].legend(fontsize="small", title="clamp set")
    notes = ["dotted: ln 2, dashed: 0.4 ln 2 (phase change)"]
    notes += ["line: mean over seeds, band: their range"] if several_seeds else []
    notes += ["x: stopped early (phase change over)"] if stopped_any else []
    fig.suptitle(f"{variable} ({evaluator})")
    fig.text(0.5, 0, "\n".join(notes), ha="center", va="top", fontsize="small", color="0.3")
    return fig


def _sequences_axis(ax):
    """Sequences in powers of ten on the axis (1e5 ... rather than digits that run into each other)."""
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0), useMathText=True)


def _last_common(seeds: np.ndarray) -> int:
    """The last evaluation every seed with a curve has reached (seeds without a store yet are left out)."""
    ends = [int(r[-1]) for r in (np.flatnonzero(np.isfinite(line)) for line in seeds) if len(r)]
    return min(ends, default=-1)


def phase_change_vs_property(table: pd.DataFrame) -> dict[str, Figure]:
    """Fig 6 style: mean phase-change time (± sem over seeds) against each data property, a panel per clamp set
    and a line per value of the other data properties, on a log axis (times span decades). A point some seeds
    never reached is hollow and says how many of them did. Keyed by the property's name."""
    groups = [c for c in table.columns if c not in COLUMNS]
    clamp_col = next((c for c in groups if c in ("clamp", "clamp_set")), None)
    properties = [c for c in groups if c != clamp_col]
    panels = list(dict.fromkeys(table[clamp_col])) if clamp_col else [None]
    figures = {}
    for prop in properties:
        fig, axes = _grid(len(panels))
        others = [c for c in properties if c != prop]
        never = []  # (axes, property values where no seed crossed, color): drawn at the top once the scale is set
        for ax, clamp in zip(axes.ravel(), panels):
            rows_of_clamp = table[table[clamp_col] == clamp] if clamp_col else table
            for i, (key, rows) in enumerate(rows_of_clamp.groupby(others, sort=True) if others
                                            else [((), rows_of_clamp)]):
                rows = rows.sort_values(prop)
                key = key if isinstance(key, tuple) else (key,)
                color = f"C{i % 10}"
                ax.errorbar(rows[prop], rows["mean_sequences"], yerr=rows["sem_sequences"].fillna(0.0), color=color,
                            marker="o", capsize=3, lw=1.5,
                            label=", ".join(f"{v} {PROPERTY_LABELS.get(n, n)}" for n, v in zip(others, key)) or None)
                partial = rows[(rows["n_never"] > 0) & rows["mean_sequences"].notna()]
                ax.scatter(partial[prop], partial["mean_sequences"], s=60, facecolors="white", edgecolors=color,
                           zorder=3)
                for _, row in partial.iterrows():
                    ax.annotate(f"{row['n_seeds']}/{row['n_seeds'] + row['n_never']}",
                                (row[prop], row["mean_sequences"]), textcoords="offset points", xytext=(4, -10),
                                fontsize="x-small", color=color)
                never.append((ax, rows[(rows["n_seeds"] == 0) & (rows["n_never"] > 0)][prop].tolist(), color))
            _property_axis(ax, sorted(table[prop].unique()))
            ax.set(xlabel=f"{PROPERTY_LABELS.get(prop, prop)} ({prop})", ylabel="phase change (training sequences)",
                   title=str(clamp) if clamp else None)
            if others:
                ax.legend(fontsize="small")
        times = pd.concat([table["mean_sequences"] - table["sem_sequences"].fillna(0.0),
                           table["mean_sequences"] + table["sem_sequences"].fillna(0.0)])
        times = times[times > 0]
        if len(times):  # one log axis for every panel, so clamp sets compare at a glance
            for ax in axes.ravel():
                ax.set_yscale("log")
                ax.set_ylim(times.min() / 1.3, times.max() * 1.3)
        for ax, values, color in never:
            top = ax.get_ylim()[1]
            ax.scatter(values, [top] * len(values), marker="^", s=60, facecolors="white", edgecolors=color,
                       clip_on=False, zorder=3)
            for value in values:
                ax.annotate("never", (value, top), textcoords="offset points", xytext=(0, -12), ha="center",
                            fontsize="x-small", color=color)
        fig.suptitle(f"phase change vs {prop} ({table.attrs.get('method', '')})")
        fig.text(0.5, 0, "mean ± sem over the seeds that crossed; hollow: some seeds never did (crossed/all); "
                 "triangle at the top: no seed crossed within the budget",
                 ha="center", va="top", fontsize="small", color="0.3")
        figures[prop] = fig
    return figures


def _property_axis(ax, values: list):
    """An x axis with a tick at each of a property's values: logarithmic where they span doublings (50, 100, 200
    evenly spaced), linear otherwise; the same limits on every panel, with or without points."""
    if min(values) > 0 and max(values) >= 4 * min(values):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(min(values) / 1.25, max(values) * 1.25)
    else:
        margin = 0.08 * (max(values) - min(values) or 1)
        ax.set_xlim(min(values) - margin, max(values) + margin)
    ax.set_xticks(values, [f"{v:g}" for v in values])


def induction_heads(ds: xr.Dataset, cell: Mapping | None = None) -> Figure:
    """Fig 3b style: each head's induction score over training (mean over seeds, while all of them train), a row
    per layer and a column per clamp set, for one combination of data properties (default: each one's first)."""
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
        if seed_dims:  # the mean of seeds that all still train, as in loss_curves
            seeds = sub.isel(layer=0, head=0).transpose(..., time_dim).values.reshape(-1, sub.sizes[time_dim])
            mean = mean.where(xr.DataArray(np.arange(sub.sizes[time_dim]) <= _last_common(seeds), dims=time_dim))
        for row, layer in enumerate(layers):
            ax = axes[row, col]
            for head in ds["head"].values.tolist():
                ax.plot(x, mean.sel(layer=layer, head=head).values, lw=1.2, label=f"L{layer}H{head}")
            ax.set(title=f"{clamp}: layer {layer}" if clamp is not None else f"layer {layer}",
                   xlabel="training sequences", ylabel="induction score")
            _sequences_axis(ax)
            ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle(f"{name} per head" + (f" ({_label(cell)})" if _label(cell) else ""))
    return fig


def write_figure(fig: Figure, path: Path):
    """PNG or PDF by the suffix, at slide resolution, the notes under the panels included."""
    fig.savefig(path, dpi=150, bbox_inches="tight")


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
            write_figure(fig, out_dir / f"{stem}.{suffix}")
            written.append(out_dir / f"{stem}.{suffix}")
    return written
