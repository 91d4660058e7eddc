"""Creates and appends to many trials' stores at once, from worker processes (a CUDA pack's stores).

zarr-python spends about 1 ms of Python per array write, and a store has 17 arrays: a pack of 1,024 trials spends
about 35 s a flush in one process, several times the GPU's time for the 1,024 steps between flushes, and half a
minute creating the stores (about 30 ms each, ihmodel.store.Skeleton). Workers are plain subprocesses
(`python -m ihmodel.append_pool`) speaking pickle over their stdin and stdout, so they never re-import the caller's
main module (as multiprocessing's spawn does) and never fork a process holding CUDA.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from ihmodel.config import TrialConfig
from ihmodel.store import StoreWriter


class AppendPool:
    """StoreWriter.create and .append for many stores from `workers` processes. Each worker owns a fixed share of
    the stores, so a store's appends stay in order in one process; `run` returns when every queued append is
    written (a checkpoint taken after it describes the stores exactly)."""

    def __init__(self, workers: int):
        package_root = str(Path(__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.processes = [subprocess.Popen([sys.executable, "-m", "ihmodel.append_pool"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=env) for _ in range(workers)]
        self.owner: dict[str, subprocess.Popen] = {}
        self.queued: dict[subprocess.Popen, list[tuple]] = {process: [] for process in self.processes}

    def create(self, stores: dict[str, TrialConfig]) -> dict[str, BaseException]:
        """StoreWriter.create(path, config) for every store at once; returns the ones that failed, with errors."""
        for path, config in stores.items():
            self._own(path)
            self.queued[self.owner[path]].append(("create", path, config))
        return self.run()

    def writer(self, writer: StoreWriter) -> PooledWriter:
        self._own(writer.path)
        return PooledWriter(writer, self)

    def _own(self, path: str):
        if path not in self.owner:
            self.owner[path] = self.processes[len(self.owner) % len(self.processes)]

    def queue(self, path: str, *append_args):
        self.queued[self.owner[path]].append(("append", path, *append_args))

    def run(self) -> dict[str, BaseException]:
        """Do everything queued; returns the stores whose jobs failed, with their errors."""
        sent = []
        for process, jobs in self.queued.items():
            try:
                pickle.dump(jobs, process.stdin)
                process.stdin.flush()
                sent.append(process)
            except OSError:  # the worker is gone (killed, out of memory): answered below
                pass
        failed = {}
        for process, jobs in self.queued.items():
            try:
                if process not in sent:
                    raise EOFError
                failed |= pickle.load(process.stdout)
            except EOFError:  # the worker died: the stores it owns fail, their pack-mates go on
                failed |= {path: RuntimeError(f"the store writer process of {path} exited with "
                                              f"{process.wait()}") for _, path, *_ in jobs}
        self.queued = {process: [] for process in self.processes}
        return failed

    def close(self):
        for process in self.processes:
            try:
                process.stdin.close()  # end of input: the worker returns
            except OSError:
                pass  # it is gone already
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # stuck (a hung filesystem): the pack's results are already flushed
                process.kill()


class PooledWriter:
    """A StoreWriter whose appends go to an AppendPool, written at its next `run`; everything else is local."""

    def __init__(self, writer: StoreWriter, pool: AppendPool):
        self.local, self.pool = writer, pool
        self.path, self.arrays = writer.path, writer.arrays

    def append(self, dim: str, index: np.ndarray, extra_coord: np.ndarray, rows: dict[str, np.ndarray]):
        self.pool.queue(self.path, dim, index, extra_coord, rows)

    def mark_complete(self, **how_it_ended):
        self.local.mark_complete(**how_it_ended)


def serve(jobs_in, results_out):
    """A worker: for each list of jobs read, do them and answer the stores that failed."""
    writers: dict[str, StoreWriter] = {}
    while True:
        try:
            jobs = pickle.load(jobs_in)
        except EOFError:
            return
        failed: dict[str, BaseException] = {}
        for kind, path, *args in jobs:
            if path in failed:
                continue  # a store's later appends after a failed one would leave a gap
            try:
                if kind == "create":
                    writers[path] = StoreWriter.create(path, *args)
                    continue
                if path not in writers:
                    writers[path] = StoreWriter(path)
                writers[path].append(*args)
            except Exception as error:
                failed[path] = error
        pickle.dump({path: _sendable(error) for path, error in failed.items()}, results_out)
        results_out.flush()


def _sendable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print goes to stderr, not into the results
    serve(sys.stdin.buffer, results)
