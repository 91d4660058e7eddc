"""`local`: a pool of worker processes on this machine, each running one pack at a time with `cpus_per_trial`
threads.

workers = cores // cpus_per_trial by default; `local.workers=0` runs the packs one after another in this
process (the fallback tests use). Workers die with the driver (PR_SET_PDEATHSIG), so a killed driver leaves no
trial running; a rerun resumes them from their checkpoints.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from orchestrator.backends.base import Backend
from orchestrator.packs import Pack
from orchestrator.trial import PackFailed, execute_pack, set_threads

PR_SET_PDEATHSIG = 1


class LocalBackend(Backend):
    name = "local"

    @property
    def workers(self) -> int:
        workers = self.sweep.local.workers
        if workers is None:
            workers = max(1, (os.cpu_count() or 1) // self.threads)
            if self.resources.max_concurrent:
                workers = min(workers, self.resources.max_concurrent)
        return workers

    def check(self):
        if self.resources.gpus_per_trial != int(self.resources.gpus_per_trial):
            raise ValueError(f"resources.gpus_per_trial={self.resources.gpus_per_trial}: the local backend gives "
                             f"a pack a whole device or none; use backend=ray to share GPUs")

    def run(self, packs: list[Pack]):
        if self.workers == 0:
            self._run_in_process(packs)
        else:
            self._run_pool(packs)

    def _run_in_process(self, packs: list[Pack]):
        for pack in packs:
            for attempt in range(self.resources.max_failures + 1):
                try:
                    self._execute(pack, redirect=True)
                    break
                except Exception:
                    continue

    def _execute(self, pack: Pack, redirect: bool = True):
        return execute_pack(self.sweep_dir, pack.trial_ids, pack.config_yamls, threads=self.threads,
                            device=self.device, backend=self.name, redirect=redirect, pack=pack.id)

    def _run_pool(self, packs: list[Pack]):
        failures = {p.id: 0 for p in packs}
        queue = list(packs)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        pool = self._pool(min(self.workers, len(packs)))
        running: dict[Future, Pack] = {}
        finished = False

        def failed(pack: Pack, error: BaseException):
            failures[pack.id] += 1
            if failures[pack.id] <= self.resources.max_failures:
                queue.append(pack)  # its complete trials are skipped; the others resume from their checkpoints
            else:
                what = str(error) if isinstance(error, PackFailed) else f"{pack.id} failed: {error!r}"
                print(f"icsweep: {what}", file=sys.stderr, flush=True)

        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    pack = queue.pop(0)
                    running[pool.submit(execute_pack, str(self.sweep_dir), pack.trial_ids, pack.config_yamls,
                                        threads=self.threads, device=self.device, backend=self.name,
                                        pack=pack.id)] = pack
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    pack = running.pop(future)
                    error = future.exception()
                    if error is not None:
                        broken |= isinstance(error, BrokenProcessPool)
                        failed(pack, error)
                if broken:  # a worker died (killed, out of memory): every in-flight pack is lost with the pool
                    for future, pack in running.items():
                        failed(pack, BrokenProcessPool("its worker process died"))
                    running.clear()
                    _kill(pool)
                    pool = self._pool(min(self.workers, max(1, len(queue))))
            finished = True
        finally:
            if finished:  # every pack is done: the idle workers exit (about 1.5 s) while the driver goes on
                pool.shutdown(wait=False)
            else:  # interrupted (Ctrl-C, SIGTERM from icsweep cancel): stop the running packs now
                _kill(pool)
            signal.signal(signal.SIGTERM, previous)

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))


def _init_worker(threads: int):
    set_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the driver, which stops the pool
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() == 1:  # the driver died before prctl took effect
            os._exit(1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _kill(pool: ProcessPoolExecutor):
    """Stop at once: running packs are killed (they resume from their checkpoints next time)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=10)
