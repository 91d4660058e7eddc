"""A damaged store or checkpoint is never a dead end: it is set aside (kept, never deleted) and the trial trains
again, from its checkpoint where that and the store's rows up to it verify, otherwise from the start.

    trials/<id>.zarr.damaged-<n>     a damaged store, moved (or copied, when only rows past the checkpoint are
    trials/<id>.ckpt.pt.damaged-<n>  damaged, so the trial resumes)    a damaged checkpoint, or one whose store's
                                     rows are damaged (it cannot be resumed without them)

run_trial and run_pack call it before opening a store; `icsweep run` calls it for every trial of the grid, so a
finished store that was damaged afterwards is found and trained again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ihmodel.errors import DamagedStoreError
from ihmodel.integrity import store_damage
from ihmodel.store import checkpoint_path, is_complete


def set_aside_damaged(store_path: str | Path) -> list[str]:
    """Set aside what is damaged of one trial; one line for each thing set aside (empty: all intact)."""
    store = Path(store_path)
    ckpt = checkpoint_path(store)
    trial = store.name.removesuffix(".zarr")
    state, ckpt_damage = None, None
    if ckpt.is_file():
        from ihmodel.checkpoint import damage_phrase, load_checkpoint  # torch: only when there is one to read

        try:
            state = load_checkpoint(ckpt, map_location="cpu")
        except DamagedStoreError as error:
            ckpt_damage = damage_phrase(error, ckpt)
    damage = store_damage(store) if store.is_dir() else []
    if not damage and not ckpt_damage:
        return []
    n = _free_index(store, ckpt)
    lines = []
    if ckpt_damage:
        aside = _move(ckpt, n)
        after = "its store is complete" if is_complete(store) and not damage else "it trains again from the start"
        lines.append(f"trial {trial}: checkpoint {ckpt_damage}: moved to {aside.name}; {after}")
    if damage:
        what = damage[0] + (f" and {len(damage) - 1} more" if len(damage) > 1 else "")
        rows = {"step": state["step"], "eval_step": state["n_evals"]} if state is not None else None
        if rows is not None and not store_damage(store, rows=rows):
            # the damage lies past the checkpoint's rows, which resuming drops: keep a copy of the store as it was
            copy = store.with_name(f"{store.name}.damaged-{n}")
            shutil.copytree(store, copy)
            lines.append(f"trial {trial}: store damaged past its checkpoint at step {rows['step']} ({what}): copied "
                         f"to {copy.name}; it resumes from the checkpoint")
        else:
            aside = _move(store, n)
            if state is not None:
                _move(ckpt, n)  # it continues rows that are gone
            lines.append(f"trial {trial}: store damaged ({what}): moved to {aside.name}; it trains again from the "
                         f"start")
    return lines


def _free_index(*paths: Path) -> int:
    """The smallest n for which no `<path>.damaged-<n>` exists (one n names what one check set aside)."""
    n = 1
    while any(path.with_name(f"{path.name}.damaged-{n}").exists() for path in paths):
        n += 1
    return n


def _move(path: Path, n: int) -> Path:
    aside = path.with_name(f"{path.name}.damaged-{n}")
    path.rename(aside)
    return aside
