"""kill -9 of the driver mid-sweep, then rerun: every trial complete exactly once, finished stores untouched, and
the interrupted trial's statistics equal an uninterrupted run's."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import xarray as xr
from orch_helpers import PYTHON, TINY, attempts, icsweep, store_files

from ihmodel.store import checkpoint_path, is_complete
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.run import run_sweep
from orchestrator.status import pid_alive
from orchestrator.sweep_config import load_sweep

# Three trials of 200 steps, checkpoints every 20 steps: long enough to kill one between checkpoint and end.
SWEEP = ["sweep=smoke", "seeds=[1,2,3]", "clamps=[none]", "axes.data.n_labels=[5]", *TINY,
         "base.train.sequences=6400", "base.train.checkpoint_every=640", "base.train.eval_every=640"]


@contextlib.contextmanager
def driver_running(args: list[str], out: Path):
    """`icsweep run ARGS out=OUT` in the background with one local worker; yields (the driver, the trial ids once
    its manifest is written); the driver is killed on the way out if it still runs."""
    driver = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "run", *args, f"out={out}", "local.workers=1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / "manifest.json").is_file(), 60, "the manifest")
        yield driver, read_manifest(out).trial_ids()
    finally:
        if driver.poll() is None:
            driver.kill()


def kill_driver_while_running(driver: subprocess.Popen, out, trial_id: str) -> int:
    """SIGKILL the sweep driver while `trial_id` runs; returns the pid of the worker that runs it."""
    worker = int(json.loads((out / "logs" / f"{trial_id}.running").read_text())["pid"])
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(10)
    return worker


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load()


def assert_same_statistics(expected: xr.Dataset, actual: xr.Dataset):
    """Every variable and coordinate identical (store attrs like git_sha may differ)."""
    xr.testing.assert_identical(expected.drop_attrs(deep=False), actual.drop_attrs(deep=False))


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_driver_then_rerun(tmp_path):
    reference = tmp_path / "reference"
    sweep = load_sweep(SWEEP[0].split("=")[1], [*SWEEP[1:], f"out={reference}", "local.workers=0"])
    assert run_sweep(sweep, quiet=True) == 0

    out = tmp_path / "killed"
    with driver_running(SWEEP, out) as (driver, (first, second, third)):
        wait_for(lambda: is_complete(store_path(out, first)) and checkpoint_path(store_path(out, second)).exists()
                 and not is_complete(store_path(out, second)), 120, "trial 1 complete and trial 2 checkpointed")
        worker = kill_driver_while_running(driver, out, second)
    wait_for(lambda: not pid_alive(worker), 10, "the worker to die with its driver")
    assert not is_complete(store_path(out, second))
    finished = store_files(store_path(out, first))

    proc = icsweep("run", *SWEEP, f"out={out}", "local.workers=1", check=True)
    assert "1 complete, 2 to run" in proc.stdout
    assert store_files(store_path(out, first)) == finished
    runs = attempts(out)
    for name, tid in (("first", first), ("second", second), ("third", third)):
        assert [a["outcome"] for a in runs[tid]] == ["complete"], name
        try:
            assert_same_statistics(open_store(store_path(reference, tid)), open_store(store_path(out, tid)))
        except AssertionError as error:
            raise AssertionError(f"the {name} trial's statistics differ from the reference") from error
    log = (out / "logs" / f"{second}.log").read_text()
    assert log.count("--- icsweep trial") == 2  # killed once, resumed once


@pytest.mark.slow
def test_kill_driver_mid_pack_then_rerun(tmp_path):
    """pack_size=2: the driver is killed while its first pack runs (status shows both of its trials running); the
    rerun packs what is left and every trial completes exactly once, resumed ones from their checkpoints, with the
    statistics of an uninterrupted run (up to float rounding: trials resumed at different steps train in packs
    of other members, whose batched sums round otherwise)."""
    packed = [*SWEEP, "resources.pack_size=2"]
    reference = tmp_path / "reference"
    assert run_sweep(load_sweep("smoke", [*packed[1:], f"out={reference}", "local.workers=0"]), quiet=True) == 0

    out = tmp_path / "killed"

    def mid_run(tid):
        return checkpoint_path(store_path(out, tid)).exists() and not is_complete(store_path(out, tid))

    with driver_running(packed, out) as (driver, (first, second, third)):
        wait_for(lambda: "running 2" in icsweep("status", str(out)).stdout, 120, "the first pack running")
        status = icsweep("status", str(out)).stdout
        wait_for(lambda: mid_run(first) or mid_run(second), 120, "the first pack past a checkpoint")
        worker = kill_driver_while_running(driver, out, second)
    assert "running 2" in status and f"in pack-{first}" in status, status
    wait_for(lambda: not pid_alive(worker), 10, "the worker to die with its driver")
    interrupted = [tid for tid in (first, second) if mid_run(tid)]
    assert interrupted
    assert not is_complete(store_path(out, second)) and not is_complete(store_path(out, third))
    done = [tid for tid in (first, second) if is_complete(store_path(out, tid))]
    finished = {tid: store_files(store_path(out, tid)) for tid in done}

    proc = icsweep("run", *packed, f"out={out}", "local.workers=1", check=True)
    assert f"{len(done)} complete, {3 - len(done)} to run" in proc.stdout
    assert {tid: store_files(store_path(out, tid)) for tid in done} == finished
    runs = attempts(out)
    for tid in (first, second, third):
        assert [a["outcome"] for a in runs[tid]] == ["complete"], tid
        xr.testing.assert_allclose(open_store(store_path(reference, tid)).drop_attrs(deep=False),
                                   open_store(store_path(out, tid)).drop_attrs(deep=False), rtol=1e-3, atol=1e-4)
    assert all(runs[tid][0]["resumed"] for tid in interrupted)


def test_a_second_runner_waits_for_the_first(tmp_path):
    """Two runners of one trial (an orphan and a rerun): the second waits on the lock, then finds it complete."""
    from orchestrator.trial import execute

    sweep = load_sweep("smoke", [f"out={tmp_path}", "local.workers=0", "seeds=[1]", "clamps=[none]",
                                 "axes.data.n_labels=[5]", *TINY])
    from orchestrator.grid import axes_of, expand
    from orchestrator.sweep import prepare

    trial, = expand(sweep)
    prepare(sweep, [trial], axes_of(sweep), tmp_path)
    lock = open(tmp_path / "logs" / f"{trial.id}.lock", "a")
    import fcntl
    import threading

    fcntl.flock(lock, fcntl.LOCK_EX)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        execute(tmp_path, trial.id, trial.config_yaml, threads=1, device="cpu", redirect=False)))
    waiter.start()
    time.sleep(1)
    assert waiter.is_alive()  # blocked on the lock
    from ihmodel import run_trial

    config = trial.config
    config.device = "cpu"
    run_trial(config, store_path(tmp_path, trial.id))  # the "orphan" finishes it
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    waiter.join(30)
    assert result["outcome"] == "already complete"
    assert trial.id not in attempts(tmp_path)
