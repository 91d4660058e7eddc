"""Another commit's code beside the checkout's, for benchmarks that compare the two in one run (`--baseline REV`):
the machine is shared and noisy, so a before/after figure comes from runs that alternate on the same day."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path) -> Path:
    """The tree of commit `rev` written to `dest` (git archive: tracked files only) for a process to import
    from, with PYTHONPATH and the working directory set to it; returns `dest`."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest
