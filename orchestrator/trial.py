"""One pack of trials in a worker process: the only code every backend runs. It calls ihmodel.run_pack (a pack
of one: ihmodel.run_trial) and records, in the sweep's logs/, what `icsweep status` needs without any backend
state. Per trial:

    logs/<id>.lock            flock held while the trial runs, so no trial ever runs twice at once (see below)
    logs/<id>.running         JSON (pid, host, SLURM node, backend, pack) whose mtime is a heartbeat
    logs/<id>.error           one line, the error of the last failed attempt and the log path; removed on success
    logs/<id>.attempts.jsonl  one JSON line per attempt that ended (outcome, seconds, host, node, pack, log)

and per pack `logs/<pack id>.log`, the pack's stdout/stderr appended across attempts (a pack of one is named by
its trial: one log per trial, as without packs).

Locks: a pack takes its trials' locks without waiting and trains those it got; a trial whose lock another runner
holds (an orphan of a killed driver, a requeued SLURM task still alive) is deferred, not raced: once the others
are done (and their locks released) the pack waits for it, in trial id order, so two runners never wait on each
other, and then finds it complete or trains it. A pack with a failed trial raises PackFailed once all its trials
have ended, so the backend retries it (resources.max_failures); a retry trains only its incomplete trials.
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
from dataclasses import dataclass
from pathlib import Path

from ihmodel.config import from_yaml
from ihmodel.errors import IcsweepError, one_line
from ihmodel.store import checkpoint_path, is_complete
from ihmodel.sweepdir import logs_dir, store_path

HEARTBEAT_S = 5.0  # how often a running trial touches its .running file
STALE_S = 30.0  # a .running file older than this belongs to a dead runner
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class PackFailed(RuntimeError):
    """Some trials of a pack failed (each has its logs/<id>.error); the backend retries the pack."""


@dataclass
class Member:
    """One trial of a pack, with its store and files."""

    id: str
    config_yaml: str
    store: Path
    files: dict[str, Path]


def trial_files(sweep_dir: str | Path, trial_id: str) -> dict[str, Path]:
    logs = logs_dir(sweep_dir)
    return {kind: logs / f"{trial_id}.{kind}" for kind in ("lock", "running", "error", "log")} | {
        "attempts": logs / f"{trial_id}.attempts.jsonl"}


def pack_id(trial_ids: list[str]) -> str:
    """Names a pack's log: the trial's id for a pack of one, else "pack-" + its first trial's id."""
    return trial_ids[0] if len(trial_ids) == 1 else f"pack-{trial_ids[0]}"


def set_threads(threads: int):
    """For libraries not loaded yet; run_trial/run_pack call torch.set_num_threads(config.threads) themselves."""
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
    """Run one trial to completion (or resume it): a pack of one. Raises PackFailed on failure."""
    return execute_pack(sweep_dir, [trial_id], [config_yaml], threads=threads, device=device, backend=backend,
                        redirect=redirect)[0]


def execute_pack(sweep_dir: str | Path, trial_ids: list[str], config_yamls: list[str], *, threads: int,
                 device: str | None = None, backend: str = "local", redirect: bool = True,
                 pack: str | None = None) -> list[dict[str, object]]:
    """Run the trials of one pack to completion (or resume them); one result per trial, in order. Raises
    PackFailed, after every trial has ended, if any failed."""
    if len(trial_ids) != len(config_yamls) or not trial_ids:
        raise ValueError(f"execute_pack: {len(trial_ids)} trial ids and {len(config_yamls)} configs")
    set_threads(threads)
    pack = pack or pack_id(list(trial_ids))
    log = logs_dir(sweep_dir) / f"{pack}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    members = [Member(tid, text, store_path(sweep_dir, tid), trial_files(sweep_dir, tid))
               for tid, text in zip(trial_ids, config_yamls)]
    results = {m.id: _already(m) for m in members if is_complete(m.store)}
    todo = [m for m in members if m.id not in results]
    run = dict(pack=pack, log=log, threads=threads, device=device, backend=backend, redirect=redirect)
    if todo:
        with _locks(todo, wait=False) as (held, busy):
            results |= _run_locked(held, **run)
        if busy:
            print(f"icsweep: {', '.join(str(m.files['lock']) for m in busy)} held by another runner; waiting",
                  file=sys.stderr, flush=True)
            with _locks(busy, wait=True) as (held, _):
                results |= _run_locked(held, **run)
    ordered = [results[tid] for tid in trial_ids]
    failed = [r for r in ordered if r["outcome"] == "failed"]
    if failed:
        what = f"trial {failed[0]['id']}" if len(ordered) == 1 else f"{len(failed)} of {len(ordered)} trials of {pack}"
        raise PackFailed(f"{what} failed: " + "; ".join(f"{r['id']}: {r['error']}" for r in failed))
    return ordered


def _already(member: Member) -> dict[str, object]:
    return {"id": member.id, "outcome": "already complete", "seconds": 0.0}


@contextlib.contextmanager
def _locks(members: list[Member], wait: bool):
    """Lock each member's trial, in id order; yield (members held, members another runner holds), in order.
    With wait=True every lock is waited for (busy is empty)."""
    with contextlib.ExitStack() as stack:
        held = set()
        for member in sorted(members, key=lambda m: m.id):
            handle = stack.enter_context(open(member.files["lock"], "a"))
            if _acquire(handle, member.files["lock"], wait):
                stack.callback(_unlock, handle)
                held.add(member.id)
        yield [m for m in members if m.id in held], [m for m in members if m.id not in held]


def _acquire(handle, path: Path, wait: bool) -> bool:
    """True when held (or when the filesystem has no locks); False when another runner holds it and not wait."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # a shared filesystem without locks (ENOLCK, EOPNOTSUPP): run unguarded
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        print(f"icsweep: no file locks on {path.parent} ({error.strerror}); running unguarded",
              file=sys.stderr, flush=True)
    return True


def _unlock(handle):
    with contextlib.suppress(OSError):
        fcntl.flock(handle, fcntl.LOCK_UN)


def _run_locked(members: list[Member], *, pack: str, log: Path, threads: int, device: str | None, backend: str,
                redirect: bool) -> dict[str, dict[str, object]]:
    """Train the locked members that are not complete, as one run_pack call; record each one's attempt."""
    results = {m.id: _already(m) for m in members if is_complete(m.store)}  # another runner finished it
    members = [m for m in members if m.id not in results]
    if not members:
        return results
    base = where() | {"backend": backend, "threads": threads, "log": str(log), "pack": pack,
                      "pack_trials": len(members), "started": time.time()}
    infos = {m.id: base | {"resumed": checkpoint_path(m.store).exists()} for m in members}  # resumes from it
    for m in members:
        m.files["running"].write_text(json.dumps(infos[m.id]))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=([m.files["running"] for m in members], stop), daemon=True)
    beat.start()
    start = time.perf_counter()
    outcomes = {m.id: "interrupted" for m in members}  # unless it ends otherwise: a signal is not a failure
    errors: dict[str, str] = {}
    try:
        header = f"trial {pack}" if [m.id for m in members] == [pack] else (
            f"pack {pack} ({len(members)} trials: {', '.join(m.id for m in members)})")
        with _redirected(log, header, base) if redirect else contextlib.nullcontext():
            for m, error in zip(members, _train(members, threads, device)):
                if error is None and not is_complete(m.store):
                    error = RuntimeError(f"training returned but {m.store} is not marked complete")
                if error is None:
                    outcomes[m.id] = "complete"
                    m.files["error"].unlink(missing_ok=True)
                    continue
                outcomes[m.id] = "failed"
                print(f"icsweep: trial {m.id} failed:", file=sys.stderr, flush=True)
                traceback.print_exception(error)
                errors[m.id] = _write_error(m.files, error, log)
    finally:
        seconds = time.perf_counter() - start
        stop.set()
        beat.join()
        for m in members:
            m.files["running"].unlink(missing_ok=True)
            with open(m.files["attempts"], "a") as handle:
                handle.write(json.dumps(infos[m.id] | {"outcome": outcomes[m.id], "seconds": seconds,
                                                       "ended": time.time()}) + "\n")
    return results | {m.id: {"id": m.id, "outcome": outcomes[m.id], "seconds": seconds, "pack": pack}
                      | ({"error": errors[m.id]} if m.id in errors else {}) | where() for m in members}


def _train(members: list[Member], threads: int, device: str | None) -> list[BaseException | None]:
    """Per member None (complete) or the exception that failed it; one trial's failure never stops the others."""
    errors: dict[str, BaseException | None] = {}
    configs = {}
    for m in members:
        try:
            config = from_yaml(m.config_yaml)
            config.threads = threads
            if device is not None:
                config.device = device
            config.store = str(m.store)
            configs[m.id] = config
        except Exception as error:
            errors[m.id] = error
    ready = [m for m in members if m.id in configs]
    if len(ready) == 1:  # one trial: run_trial itself, without the pack engine
        from ihmodel import run_trial

        try:
            run_trial(configs[ready[0].id], ready[0].store)
            errors[ready[0].id] = None
        except Exception as error:
            errors[ready[0].id] = error
    elif ready:
        from ihmodel import run_pack

        try:
            outcome = run_pack([configs[m.id] for m in ready], [m.store for m in ready])
        except Exception as error:  # the call itself refused (a bad pack): every trial failed with it
            outcome = [error] * len(ready)
        errors.update(zip([m.id for m in ready], outcome))
    return [errors[m.id] for m in members]


def _heartbeat(paths: list[Path], stop: threading.Event):
    while not stop.wait(HEARTBEAT_S):
        for path in paths:
            with contextlib.suppress(OSError):
                os.utime(path)


def _write_error(files: dict[str, Path], error: BaseException, log: Path) -> str:
    if isinstance(error, IcsweepError):  # its message is the whole story (a diverged loss, a full disk)
        last = one_line(error)
    else:
        last = traceback.format_exception_only(type(error), error)[-1].strip() or type(error).__name__
    line = f"{last.splitlines()[0]} (log: {log})"
    files["error"].write_text(line + "\n")
    return line


@contextlib.contextmanager
def _redirected(log: Path, header: str, info: dict):
    """The pack's stdout/stderr (Python and C level) appended to its log, restored afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as handle:
        handle.write(f"--- icsweep {header} attempt at {time.strftime('%Y-%m-%d %H:%M:%S')} on "
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
