"""A child process that trains until a patched flush stalls it, then SIGKILLed there: the kill-and-resume tests'
way of stopping a run at a known point (after a checkpoint, with rows past it already written)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


def kill_when_stalled(script: str, args: list[str], marker: str, directory: Path) -> str:
    """Run `script` (Python source) with `args`; its first stdout line must start with `marker` (printed once it
    stalls); SIGKILL it then. Returns that line. A child that never stalls is killed after 120 s."""
    child = directory / "child.py"
    child.write_text(script)
    with open(directory / "child.err", "w") as stderr:
        process = subprocess.Popen([sys.executable, str(child), *args], stdout=subprocess.PIPE, stderr=stderr,
                                   text=True)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()
        assert line.startswith(marker), line + (directory / "child.err").read_text()
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        process.kill()
    return line


def run_copying_mid_run(config, store: Path, snapshot: Path, at_step: int):
    """run_trial(config, store), copying store and checkpoint to `snapshot` at its first flush at or past `at_step`
    once a checkpoint exists: what a kill there leaves behind, simulated in-process."""
    import shutil

    from ihmodel.store import checkpoint_path
    from ihmodel.train import Trial, run_trial

    flush = Trial.flush

    def flush_and_copy_once(self):
        rows = flush(self)
        if checkpoint_path(self.store.store_path).is_file() and self.step >= at_step and not snapshot.exists():
            shutil.copytree(self.store.store_path, snapshot)
            shutil.copy(checkpoint_path(self.store.store_path), checkpoint_path(snapshot))
        return rows

    Trial.flush = flush_and_copy_once
    try:
        run_trial(config, store)
    finally:
        Trial.flush = flush
