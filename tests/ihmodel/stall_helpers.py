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
