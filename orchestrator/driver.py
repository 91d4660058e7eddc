"""The driver's own traces in a sweep directory: `logs/driver.json` (pid, host, backend, SLURM job; its mtime is a
heartbeat, so `icsweep cancel` and a second `icsweep run` know whether a driver is alive) and the progress monitor
that watches the stores while a backend runs.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from ihmodel.store import is_complete
from ihmodel.sweepdir import logs_dir, store_path
from orchestrator.status import counts, format_counts, live_record, sweep_states

POLL_S = 2.0


def driver_file(sweep_dir: Path) -> Path:
    return logs_dir(sweep_dir) / "driver.json"


def live_driver(sweep_dir: Path) -> dict | None:
    return live_record(driver_file(sweep_dir))


@contextmanager
def driver_record(sweep_dir: Path, backend: str):
    """Claim the sweep directory for this driver; refuse if another live driver holds it."""
    other = live_driver(sweep_dir)
    if other is not None and other.get("pid") != os.getpid():
        where = f"pid {other.get('pid')} on {other.get('host')}" + (
            f" (SLURM job {other['slurm_job']})" if other.get("slurm_job") else "")
        raise ValueError(f"{sweep_dir} is being run by another driver, {where}; wait for it, or stop it with "
                         f"`icsweep cancel {sweep_dir}` and rerun")
    path = driver_file(sweep_dir)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "backend": backend, "started": time.time()}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
    path.write_text(json.dumps(record))
    stop = threading.Event()
    beat = threading.Thread(target=_touch, args=(path, stop), daemon=True)
    beat.start()
    try:
        yield record
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)


def _touch(path: Path, stop: threading.Event):
    while not stop.wait(POLL_S):
        try:
            os.utime(path)
        except OSError:
            pass


class Monitor:
    """Progress of the trials a run asked for, from their stores: a live bar on a terminal, lines in a log."""

    def __init__(self, sweep_dir: Path, ids: list[str], done_before: int = 0, total: int | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.ids = list(ids)
        self.done_before = done_before
        self.total = total if total is not None else len(ids) + done_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tty = sys.stderr.isatty()
        self._last = None

    def __enter__(self):
        self._bar = tqdm(total=self.total, initial=self.done_before, desc="trials", unit="trial",
                         file=sys.stderr, disable=not self._tty, dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()
        self._bar.close()

    def _loop(self):
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # a half-written file: try again next time
                pass

    def poll(self):
        _, states = sweep_states(self.sweep_dir, detail=False, ids=self.ids)
        c = counts(states)
        c["complete"] += self.done_before
        self.ids = [t.id for t in states if t.state != "complete"]  # complete is final: stop looking at those
        self.done_before = c["complete"]
        if self._tty:
            self._bar.n = c["complete"]
            self._bar.set_postfix(running=c["running"], failed=c["failed"], refresh=False)
            self._bar.refresh()
        elif c != self._last:
            print(f"icsweep: {format_counts(c)} (of {self.total})", file=sys.stderr, flush=True)
        self._last = c


def n_complete(sweep_dir: Path, ids: list[str]) -> int:
    return sum(is_complete(store_path(sweep_dir, i)) for i in ids)
