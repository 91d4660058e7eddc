"""When did the phase change happen? Detectors on loss curves, and when each head's induction score formed.

Methods (`phase_change(ds, method=...)`), all on a loss curve, by default the `fsl_train` evaluator's eval loss:
- `threshold` (the paper's): the first eval at which the loss is below 0.4 ln 2.
- `steepest`: where the smoothed loss falls fastest (the rate-weighted centre of its steepest stretch).
- `sigmoid`: the midpoint of a sigmoid fitted by least squares (grid search over midpoint and width, with the
  levels solved in closed form), then refined on a finer grid.
The fall from the initial loss (~2 nats) to the ln 2 plateau is not the phase change: `steepest` and `sigmoid` see
the loss capped at `cap` (ln 2), so they find the fall from the plateau, or the first fall below it when a clamp
removes the plateau. A change is accepted only if the (smoothed or fitted) loss falls by `min_drop`.

Results are a Dataset over the grid: `change_step` (optimizer steps), `change_sequences` (training sequences),
both NaN where no change was found, and `never`: True where a complete trial has no change. An incomplete trial
without a change yet, or a missing one, is NaN with `never` False (see the `complete` variable).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ihmodel.stopping import PHASE_CHANGE_LOSS

LN2 = float(np.log(2))
THRESHOLD = PHASE_CHANGE_LOSS  # nats: the paper's phase-change threshold on the fsl_train eval loss (0.4 ln 2)
METHODS = ("threshold", "steepest", "sigmoid", "induction")
MAX_POINTS = 512  # longer curves (per-step losses) are averaged into this many bins before smoothing and fitting


# --- detectors on plain arrays: y (cells, time) with NaN where absent, t (time,) ---------------------------------

def first_crossing(y: np.ndarray, level, *, below: bool = True) -> np.ndarray:
    """Index of the first sample below (or at/above) `level` per row (level per row or scalar); -1 if none."""
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), y.shape[:1])[:, None]
    with np.errstate(invalid="ignore"):
        hit = (y < level) if below else (y >= level)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along the last axis, in samples, ignoring NaN (edges use the samples they have)."""
    if not sigma or y.shape[-1] < 2:
        return y.astype(np.float64)
    n = y.shape[-1]
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)  # (time, time)
    kernel[np.abs(offsets) > 4 * sigma] = 0.0
    valid = np.isfinite(y)
    weight = valid.astype(np.float64) @ kernel
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid, y, 0.0) @ kernel / weight
    return np.where(valid, out, np.nan)


def bin_curve(y: np.ndarray, t: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Curves longer than `max_points` as NaN-aware means over equal bins (and the bins' mean times)."""
    n = y.shape[-1]
    if n <= max_points:
        return y, t.astype(np.float64)
    edges = np.linspace(0, n, max_points + 1).astype(int)
    valid = np.isfinite(y)
    sums = np.add.reduceat(np.where(valid, y, 0.0), edges[:-1], axis=-1)
    counts = np.add.reduceat(valid, edges[:-1], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.where(counts, counts, np.nan), np.add.reduceat(t.astype(np.float64), edges[:-1]) / np.diff(edges)


def steepest_descent(y: np.ndarray, t: np.ndarray, *, sigma: float, min_drop: float) -> np.ndarray:
    """Time of the fastest fall of the smoothed curve, NaN where it never falls by `min_drop`.

    The peak of the descent rate is located as the rate-weighted mean time of the contiguous stretch, around the
    steepest interval, that falls at least half as fast: for a symmetric fall that is its midpoint, and averaging
    over the stretch keeps eval noise from moving the answer by whole evals.
    """
    s = smooth(y, sigma)
    slope = np.diff(s, axis=1) / np.diff(t)  # (cells, time - 1), NaN where either end is absent
    mid = (t[1:] + t[:-1]) / 2
    out = np.full(len(y), np.nan)
    for i in np.flatnonzero(np.isfinite(slope).any(axis=1)):
        d = slope[i]
        j = int(np.nanargmin(d))
        if not d[j] < 0 or not np.nanmax(s[i, :j + 1]) - np.nanmin(s[i, j + 1:]) >= min_drop:
            continue
        steep = np.nan_to_num(d, nan=0.0) <= 0.5 * d[j]
        lo, hi = j, j
        while lo > 0 and steep[lo - 1]:
            lo -= 1
        while hi < len(d) - 1 and steep[hi + 1]:
            hi += 1
        out[i] = np.sum(mid[lo:hi + 1] * d[lo:hi + 1]) / np.sum(d[lo:hi + 1])
    return out


def _sigmoid_search(y, valid, u, centers, widths):
    """Best least-squares falling sigmoid lo + drop / (1 + exp((u - center) / width)) per row, over candidates.

    centers: (K,) shared or (cells, K) per row; widths: scalars, or with per-row centers (cells,) arrays.
    Returns sse, center, width, drop (each (cells,)).
    """
    m = valid.astype(np.float64)
    y0 = np.where(valid, y, 0.0)
    n = m.sum(1)
    sy, syy = y0.sum(1), (y0 * y0).sum(1)
    best = [np.full(len(y), np.inf), np.full(len(y), np.nan), np.full(len(y), np.nan), np.full(len(y), np.nan)]
    per_row = centers.ndim == 2
    for width in widths:
        width = np.asarray(width, dtype=np.float64)
        z = (u - centers[..., None]) / (width[:, None, None] if width.ndim else width)
        s = 1.0 / (1.0 + np.exp(np.clip(z, -60, 60)))  # (K, T) or (cells, K, T)
        if per_row:
            sx, sxx, sxy = (np.einsum("ct,ckt->ck", m, s), np.einsum("ct,ckt->ck", m, s * s),
                            np.einsum("ct,ckt->ck", y0, s))
        else:
            sx, sxx, sxy = m @ s.T, m @ (s * s).T, y0 @ s.T
        with np.errstate(invalid="ignore", divide="ignore"):
            var = sxx - sx * sx / n[:, None]
            cov = sxy - sx * sy[:, None] / n[:, None]
            drop = cov / var
            sse = (syy - sy * sy / n)[:, None] - drop * cov
        sse = np.where((drop > 0) & (var > 1e-12), sse, np.inf)
        k = np.argmin(sse, axis=1)
        rows = np.arange(len(y))
        better = sse[rows, k] < best[0]
        cand = centers[rows, k] if per_row else centers[k]
        w = width[rows] if width.ndim else np.full(len(y), float(width))
        for slot, value in enumerate((sse[rows, k], cand, w, drop[rows, k])):
            best[slot] = np.where(better, value, best[slot])
    return best


def sigmoid_midpoint(y: np.ndarray, t: np.ndarray, *, min_drop: float) -> np.ndarray:
    """Midpoint time of a fitted falling sigmoid, NaN where the fitted fall is under `min_drop` (or no fit)."""
    valid = np.isfinite(y)
    span = float(t[-1] - t[0]) or 1.0
    u = (t - t[0]) / span
    n_time = max(len(t), 2)
    coarse = np.linspace(0.0, 1.0, 97)
    widths = np.geomspace(0.25 / n_time, 0.5, 14)
    _, center, width, _ = _sigmoid_search(y, valid, u, coarse, widths)
    ok = np.isfinite(center)
    center, width = np.where(ok, center, 0.5), np.where(ok, width, 0.1)
    fine = center[:, None] + np.linspace(-1.0, 1.0, 41) * (coarse[1] - coarse[0])  # (cells, 41)
    best = [np.full(len(y), np.inf)] + [np.full(len(y), np.nan)] * 3
    for factor in np.geomspace(0.6, 1.6, 9):
        sse, c, w, drop = _sigmoid_search(y, valid, u, fine, [width * factor])
        better = sse < best[0]
        best = [np.where(better, new, old) for new, old in zip((sse, c, w, drop), best)]
    _, center, _, drop = best
    # a midpoint past a curve's last finite point (a running trial) is an extrapolation, not an observation
    last = np.where(valid.any(1), u[len(u) - 1 - np.argmax(valid[:, ::-1], axis=1)], -np.inf)
    found = ok & (valid.sum(1) >= 4) & (drop >= min_drop) & (center <= last)
    return np.where(found, t[0] + center * span, np.nan)


def induction_rise(y: np.ndarray, *, fraction: float, min_rise: float, sigma: float) -> np.ndarray:
    """Index of the first sample where the smoothed score has covered `fraction` of its rise; -1 if the rise from
    the first sample to the maximum is under `min_rise`."""
    s = smooth(y, sigma)
    has = np.isfinite(s).any(axis=1)
    start = np.where(has, s[np.arange(len(s)), np.where(has, np.isfinite(s).argmax(axis=1), 0)], np.nan)
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(np.where(has[:, None], s, 0.0), axis=1)
    rise = peak - start
    index = first_crossing(s, start + fraction * rise, below=False)
    return np.where(has & (rise >= min_rise), index, -1)


# --- on the Dataset ------------------------------------------------------------------------------------------------

def _curve(ds: xr.Dataset, variable: str, evaluator: str | None) -> tuple[xr.DataArray, str]:
    if variable not in ds:
        raise KeyError(f"no variable {variable!r} in the Dataset; it has {', '.join(map(str, ds.data_vars))}")
    curve = ds[variable]
    if "evaluator" in curve.dims:
        if evaluator not in curve["evaluator"].values:
            raise KeyError(f"no evaluator {evaluator!r}; evaluators are {', '.join(curve['evaluator'].values)}")
        curve = curve.sel(evaluator=evaluator, drop=True)
    time_dim = "eval_step" if "eval_step" in curve.dims else "step"
    if time_dim not in curve.dims:
        raise ValueError(f"{variable!r} has dims {curve.dims}; a curve needs a step or eval_step dim")
    return curve.transpose(..., time_dim), time_dim


def _to_sequences(ds: xr.Dataset, template: xr.DataArray, time_dim: str, steps: np.ndarray) -> np.ndarray:
    """Steps (per cell, fractional) as training sequences, interpolating the cell's own sequences coordinate."""
    seq = ds.coords.get("eval_sequences" if time_dim == "eval_step" else "sequences")
    t = ds[time_dim].values.astype(np.float64)
    if seq is None:
        return np.full(steps.shape, np.nan)
    if seq.dims == (time_dim,):
        return np.interp(steps, t, seq.values.astype(np.float64), left=np.nan, right=np.nan)
    table = seq.broadcast_like(template).transpose(*template.dims, time_dim).values.reshape(-1, len(t))
    flat, out = steps.reshape(-1), np.full(steps.size, np.nan)
    for i in np.flatnonzero(np.isfinite(flat)):
        ok = np.isfinite(table[i])
        out[i] = np.interp(flat[i], t[ok], table[i, ok], left=np.nan, right=np.nan)
    return out.reshape(steps.shape)


def _result(ds: xr.Dataset, curve: xr.DataArray, time_dim: str, values: np.ndarray, steps: np.ndarray,
            attrs: dict) -> xr.Dataset:
    cell_dims = curve.dims[:-1]
    shape = curve.shape[:-1]
    template = curve.isel({time_dim: 0}, drop=True)
    coords = {name: c for name, c in template.coords.items() if time_dim not in c.dims}
    steps = steps.reshape(shape)
    has_data = np.isfinite(values).any(axis=-1).reshape(shape)
    complete = ds["complete"].broadcast_like(template).transpose(*cell_dims).values if "complete" in ds \
        else np.ones(shape, bool)
    sequences = _to_sequences(ds, template, time_dim, steps)
    unit_note = "NaN where no change was found (see `never`)"
    out = xr.Dataset(
        {"change_step": (cell_dims, steps, {"units": "steps", "description": f"optimizer steps at the change; "
                                                                              f"{unit_note}"}),
         "change_sequences": (cell_dims, sequences, {"units": "sequences",
                                                     "description": f"training sequences at the change; {unit_note}"}),
         "never": (cell_dims, np.isnan(steps) & has_data & complete,
                   {"description": "a complete trial without a change (NaN time); False for missing or running "
                                   "trials that have none yet"})},
        coords=coords, attrs=attrs)
    return out


def phase_change(ds: xr.Dataset, method: str = "threshold", *, variable: str = "eval_loss",
                 evaluator: str = "fsl_train", threshold: float = THRESHOLD, sigma: float = 1.0,
                 cap: float | None = LN2, min_drop: float = 0.5 * LN2, **induction) -> xr.Dataset:
    """Phase-change time per grid cell (see the module docstring for the methods).

    `variable` picks the curve (`eval_loss` over eval_step, or the per-step training `loss`); `evaluator` the eval
    set; `threshold` (nats) is for `threshold`; `sigma` is the smoothing of `steepest`, in samples (evals, or bins
    of a per-step curve); `cap` (nats) clips the curve for `steepest` and `sigmoid`; `min_drop` (nats) is the fall
    they need. `method="induction"` is `induction_formation(ds, **induction)`.
    """
    if method == "induction":
        return induction_formation(ds, **induction)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if induction:
        raise TypeError(f"unexpected arguments {sorted(induction)} for method {method!r}")
    curve, time_dim = _curve(ds, variable, evaluator)
    values = np.asarray(curve.values, dtype=np.float64)
    y = values.reshape(-1, values.shape[-1])
    t = curve[time_dim].values.astype(np.float64)
    attrs = {"method": method, "variable": variable, "evaluator": evaluator if "evaluator" in ds[variable].dims
             else "", "time_dim": time_dim}
    if method == "threshold":
        index = first_crossing(y, threshold)
        steps = np.where(index >= 0, t[np.maximum(index, 0)], np.nan)
        attrs |= {"threshold": threshold,
                  "definition": f"first eval with {variable} < {threshold:.4g} nats (0.4 ln 2 is the paper's)"}
    else:
        yb, tb = bin_curve(y, t)
        if cap is not None:
            yb = np.minimum(yb, cap)
        if method == "steepest":
            steps = steepest_descent(yb, tb, sigma=sigma, min_drop=min_drop)
            attrs |= {"sigma_samples": sigma, "definition": "fastest fall of the smoothed, capped loss"}
        else:
            steps = sigmoid_midpoint(yb, tb, min_drop=min_drop)
            attrs |= {"definition": "midpoint of a least-squares falling sigmoid fitted to the capped loss"}
        attrs |= {"cap": cap if cap is not None else "none", "min_drop": min_drop}
    return _result(ds, curve, time_dim, values, steps, attrs)


def induction_formation(ds: xr.Dataset, *, variable: str = "eval_induction_score", fraction: float = 0.5,
                        min_rise: float = 0.1, sigma: float = 1.0) -> xr.Dataset:
    """When each head's induction score formed: the first eval at which its smoothed score has covered `fraction`
    of its rise from the first eval to its maximum. Heads that rise by less than `min_rise` never form one.

    Same variables as `phase_change`, over the grid and `layer`, `head`.
    """
    curve, time_dim = _curve(ds, variable, None)
    values = np.asarray(curve.values, dtype=np.float64)
    y = values.reshape(-1, values.shape[-1])
    t = curve[time_dim].values.astype(np.float64)
    y, t = bin_curve(y, t)
    index = induction_rise(y, fraction=fraction, min_rise=min_rise, sigma=sigma)
    steps = np.where(index >= 0, t[np.maximum(index, 0)], np.nan)
    attrs = {"method": "induction", "variable": variable, "time_dim": time_dim, "fraction": fraction,
             "min_rise": min_rise, "sigma_samples": sigma,
             "definition": f"first eval at which the smoothed {variable} covered {fraction:g} of its rise"}
    return _result(ds, curve, time_dim, values, steps, attrs)
