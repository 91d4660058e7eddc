"""The tidy table: phase-change time per data property x clamp set, over seeds (mean, sem, counts)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from analysis.phase import phase_change

SEED_DIMS = ("seed",)  # grid dims that are replicates, averaged over
TRIAL_IDENTITY = ("trial_id", "store", "seed_init", "seed_data", "seed_eval")  # never a group of a flat table
COLUMNS = ("mean_sequences", "sem_sequences", "mean_step", "sem_step", "n_seeds", "n_never", "n_pending")


def _groups(pc: xr.Dataset) -> list[str]:
    """What the table is per: the grid dims but seeds; for a flat `trial` dim, the scalars that vary."""
    if "trial" in pc.dims:
        return [name for name, coord in pc.coords.items()
                if coord.dims == ("trial",) and name not in (*TRIAL_IDENTITY, "trial")
                and len(np.unique(coord.values.astype(str))) > 1]
    return [dim for dim in pc["change_step"].dims if dim not in SEED_DIMS]


def phase_change_table(ds: xr.Dataset, method: str = "threshold", **options) -> pd.DataFrame:
    """Phase-change time per data property x clamp set: mean and sem over seeds, in sequences and in steps.

    `ds` is an opened sweep (or `open_trials` Dataset), or the result of `phase_change`; `method` and `options`
    go to `phase_change`. Columns: the group keys (e.g. n_labels, clamp), then `mean_sequences`, `sem_sequences`
    (training sequences), `mean_step`, `sem_step` (optimizer steps), `n_seeds` (seeds with a change, the
    mean's n), `n_never` (complete trials without one), `n_pending` (missing or running trials without one yet).
    sem = sample std / sqrt(n), NaN for n < 2. Mean and sem are NaN where no seed has a change.
    """
    pc = ds if "change_step" in ds else phase_change(ds, method, **options)
    groups = _groups(pc)
    frame = pd.DataFrame({
        "step": pc["change_step"].values.reshape(-1),
        "sequences": pc["change_sequences"].values.reshape(-1),
        "never": pc["never"].values.reshape(-1),
    })
    for name in groups:
        frame[name] = pc[name].broadcast_like(pc["change_step"]).transpose(*pc["change_step"].dims).values.reshape(-1)

    def summarise(rows: pd.DataFrame) -> pd.Series:
        hit = rows[rows["step"].notna()]
        n = len(hit)
        sem = (lambda col: hit[col].std(ddof=1) / np.sqrt(n) if n >= 2 else np.nan)
        return pd.Series({
            "mean_sequences": hit["sequences"].mean() if n else np.nan, "sem_sequences": sem("sequences"),
            "mean_step": hit["step"].mean() if n else np.nan, "sem_step": sem("step"),
            "n_seeds": n, "n_never": int(rows["never"].sum()),
            "n_pending": int((~rows["never"] & rows["step"].isna()).sum()),
        })

    if groups:
        table = frame.groupby(groups, sort="trial" in pc.dims)[["step", "sequences", "never"]].apply(summarise).reset_index()
    else:
        table = summarise(frame).to_frame().T
    for name in ("n_seeds", "n_never", "n_pending"):
        table[name] = table[name].astype(int)
    table.attrs = {"method": pc.attrs.get("method", method), "definition": pc.attrs.get("definition", ""),
                   "units": "mean/sem_sequences: training sequences; mean/sem_step: optimizer steps"}
    return table


def format_table(table: pd.DataFrame) -> str:
    """The table as text for a terminal: sequences in scientific notation, steps as integers."""
    formatters = {
        "mean_sequences": "{:.3g}".format, "sem_sequences": "{:.2g}".format,
        "mean_step": "{:.0f}".format, "sem_step": "{:.0f}".format,
    }
    header = f"phase change ({table.attrs.get('method', '')}: {table.attrs.get('definition', '')})"
    return header + "\n" + table.to_string(index=False, formatters=formatters, na_rep="-")
