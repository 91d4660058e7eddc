"""Helpers for the orchestrator tests: tiny trials (about a second each) through the real backends.

A plain module (not conftest.py), so that `from orch_helpers import ...` cannot pick up another directory's conftest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Overrides that shrink the smoke sweep's trials to 20 steps with evals and checkpoints at 10 and 20.
TINY = [
    "base.train.sequences=640", "base.train.eval_every=320", "base.train.checkpoint_every=320",
    "base.train.flush_every=10", "base.eval.size=64", "base.data.n_train_classes=10",
]


def icsweep(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (as a user runs it)."""
    proc = subprocess.run([PYTHON, "-m", "orchestrator.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"icsweep {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def attempts(sweep_dir: Path) -> dict[str, list[dict]]:
    """Every ended attempt of every trial, from logs/<id>.attempts.jsonl."""
    out = {}
    for path in (Path(sweep_dir) / "logs").glob("*.attempts.jsonl"):
        out[path.name.split(".")[0]] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def store_files(store: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a store with its mtime and bytes: 'untouched' means equal."""
    return {str(p.relative_to(store)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(store.rglob("*"))
            if p.is_file()}
