"""One trial in a worker process: the only code every backend runs. It calls ihmodel.run_trial and records, in
the sweep's logs/, what `icsweep status` needs without any backend state:

    logs/<id>.lock            flock held while the trial runs: a second runner (a rerun while an orphan of a
                              killed driver still runs it) waits, then finds the store complete
    logs/<id>.running         JSON (pid, host, SLURM node, backend) whose mtime is a heartbeat
    logs/<id>.error           one line, the error of the last failed attempt and the log path; removed on success
    logs/<id>.attempts.jsonl  one JSON line per attempt that ended (outcome, seconds, host, node)
    logs/<id>.log             the trial's stdout/stderr, appended across attempts
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from ihmodel.config import from_yaml
from ihmodel.store import checkpoint_path, is_complete
from ihmodel.sweepdir import logs_dir, store_path

HEARTBEAT_S = 5.0  # how often a running trial touches its .running file
STALE_S = 30.0  # a .running file older than this belongs to a dead runner
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def trial_files(sweep_dir: str | Path, trial_id: str) -> dict[str, Path]:
    logs = logs_dir(sweep_dir)
    return {kind: logs / f"{trial_id}.{kind}" for kind in ("lock", "running", "error", "log")} | {
        "attempts": logs / f"{trial_id}.attempts.jsonl"}


def set_threads(threads: int):
    """For libraries not loaded yet; run_trial calls torch.set_num_threads(config.threads) itself."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


def where() -> dict[str, object]:
    """Where this process runs: host, SLURM node/job, Ray node (hostnames repeat across SLURM nodes on one box)."""
    info: dict[str, object] = {"pid": os.getpid(), "host": socket.gethostname()}
    for key, env in (("node", "SLURMD_NODENAME"), ("slurm_job", "SLURM_JOB_ID"),
                     ("slurm_array_job", "SLURM_ARRAY_JOB_ID"), ("slurm_array_task", "SLURM_ARRAY_TASK_ID")):
        if os.environ.get(env):
            info[key] = os.environ[env]
    if "ray" in sys.modules:
        try:
            import ray

            if ray.is_initialized():
                info["ray_node"] = ray.get_runtime_context().get_node_id()
        except Exception:  # not inside a Ray worker
            pass
    return info


def execute(sweep_dir: str | Path, trial_id: str, config_yaml: str, *, threads: int, device: str | None = None,
            backend: str = "local", redirect: bool = True) -> dict[str, object]:
    """Run trial `trial_id` of the sweep at `sweep_dir` to completion (or resume it); raise on failure."""
    set_threads(threads)
    store = store_path(sweep_dir, trial_id)
    files = trial_files(sweep_dir, trial_id)
    files["lock"].parent.mkdir(parents=True, exist_ok=True)
    if is_complete(store):
        return {"id": trial_id, "outcome": "already complete", "seconds": 0.0}
    with open(files["lock"], "a") as lock:
        _acquire(lock, files)
        try:
            if is_complete(store):  # another runner finished it while we waited
                return {"id": trial_id, "outcome": "already complete", "seconds": 0.0}
            return _run_locked(store, files, trial_id, config_yaml, threads, device, backend, redirect)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(lock, files):
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"icsweep: {files['lock']} is held by another runner; waiting for it", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as error:  # a shared filesystem without locks (ENOLCK, EOPNOTSUPP): run unguarded
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        print(f"icsweep: no file locks on {files['lock'].parent} ({error.strerror}); running unguarded",
              file=sys.stderr, flush=True)


def _run_locked(store, files, trial_id, config_yaml, threads, device, backend, redirect):
    info = where() | {"backend": backend, "threads": threads, "log": str(files["log"]), "started": time.time(),
                      "resumed": checkpoint_path(store).exists()}  # run_trial continues from that checkpoint
    files["running"].write_text(json.dumps(info))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(files["running"], stop), daemon=True)
    beat.start()
    start = time.perf_counter()
    outcome = "interrupted"  # unless it ends otherwise: a signal (cancel, requeue) is not a failure
    try:
        with _redirected(files["log"], trial_id, info) if redirect else contextlib.nullcontext():
            try:
                config = from_yaml(config_yaml)
                config.threads = threads
                if device is not None:
                    config.device = device
                config.store = str(store)
                from ihmodel import run_trial

                run_trial(config, store)
                if not is_complete(store):
                    raise RuntimeError(f"run_trial returned but {store} is not marked complete")
            except Exception as error:
                outcome = "failed"
                traceback.print_exc()
                _write_error(files, error)
                raise
        outcome = "complete"
        files["error"].unlink(missing_ok=True)
        return {"id": trial_id, "outcome": outcome, "seconds": time.perf_counter() - start} | where()
    finally:
        seconds = time.perf_counter() - start
        stop.set()
        beat.join()
        files["running"].unlink(missing_ok=True)
        with open(files["attempts"], "a") as handle:
            handle.write(json.dumps(info | {"outcome": outcome, "seconds": seconds, "ended": time.time()}) + "\n")


def _heartbeat(path: Path, stop: threading.Event):
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


def _write_error(files, error: BaseException):
    last = traceback.format_exception_only(type(error), error)[-1].strip() or type(error).__name__
    files["error"].write_text(f"{last.splitlines()[0]} (log: {files['log']})\n")


@contextlib.contextmanager
def _redirected(log: Path, trial_id: str, info: dict):
    """The trial's stdout/stderr (Python and C level) appended to its log, restored afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as handle:
        handle.write(f"--- icsweep trial {trial_id} attempt at {time.strftime('%Y-%m-%d %H:%M:%S')} on "
                     f"{info.get('node', info['host'])} pid {info['pid']} ({info['backend']})\n")
        handle.flush()
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
