"""Checksums of a whole sweep directory: `icsweep verify DIR` (and `status --verify`), and the driver's pass that
sets damaged stores and checkpoints aside before `icsweep run` decides what is pending.

Both read every chunk of every store and every checkpoint (ihmodel.integrity, ihmodel.checkpoint): the cost is
one read of the sweep's bytes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ihmodel.integrity import store_damage
from ihmodel.set_aside import set_aside_damaged
from ihmodel.store import checkpoint_path
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.trial import Member, _locks, trial_files


def verify(sweep_dir: Path, out=None) -> int:
    """Print each damaged trial with what is damaged, then a summary; returns the number of damaged trials."""
    from ihmodel.checkpoint import checkpoint_damage  # torch: here, so that `icsweep run` starts without it

    out = out or sys.stdout
    manifest = read_manifest(sweep_dir)
    stores = checkpoints = damaged = 0
    for entry in manifest.trials:
        store = store_path(sweep_dir, entry.id)
        ckpt = checkpoint_path(store)
        found = []
        if store.is_dir():
            stores += 1
            found += [f"store: {what}" for what in store_damage(store)]
        if ckpt.is_file():
            checkpoints += 1
            problem = checkpoint_damage(ckpt)
            if problem:
                found.append(f"checkpoint {problem}")
        if found:
            damaged += 1
            print(f"damaged: trial {entry.id}: {'; '.join(found)}", file=out)
    verdict = (f"{damaged} damaged: `icsweep run` sets them aside and trains them again" if damaged
               else "all intact")
    print(f"verified {stores} stores and {checkpoints} checkpoints of sweep {manifest.sweep} in {sweep_dir}: "
          f"{verdict}", file=out)
    return damaged


def set_aside(sweep_dir: Path, trial_ids: list[str], config_yamls: list[str]) -> list[str]:
    """Set aside the damaged stores and checkpoints of these trials; one line for each. A trial another runner
    holds (an orphan still training it) is left to that runner, which checks its own trials the same way."""
    members = [Member(tid, text, store_path(sweep_dir, tid), trial_files(sweep_dir, tid))
               for tid, text in zip(trial_ids, config_yamls)]
    lines = []
    for member in members:
        with _locks([member], wait=False) as (held, _):  # one at a time: a sweep has more trials than open files
            if held:
                lines += set_aside_damaged(member.store)
    return lines
