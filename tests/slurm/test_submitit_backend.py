"""The submitit backend against the real two-node dev SLURM cluster: the smoke sweep as a job array, requeue and
preemption resuming from the trial's checkpoint, submit-and-exit, and SLURM unreachable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from ihmodel.store import checkpoint_path, is_complete
from ihmodel.sweepdir import read_manifest, store_path

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "base.train.sequences=640", "base.train.eval_every=320", "base.train.checkpoint_every=320",
    "base.train.flush_every=10", "base.eval.size=64", "base.data.n_train_classes=10",
]
SLURM = ["submitit.array_parallelism=2", "submitit.mem_gb=1", "submitit.timeout_min=10"]


def icsweep(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)


def attempts(sweep_dir: Path) -> dict[str, list[dict]]:
    return {p.name.split(".")[0]: [json.loads(line) for line in p.read_text().splitlines()]
            for p in (sweep_dir / "logs").glob("*.attempts.jsonl")}


def jobs(sweep_dir: Path) -> dict[str, str]:
    """trial id -> its latest SLURM array task id."""
    return {j["trial_id"]: j["job_id"] for j in json.loads((sweep_dir / "logs/submitit/jobs.json").read_text())}


def sacct(env: dict, job: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job], capture_output=True,
                         text=True, env=env, timeout=60, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def assert_same_statistics(expected: xr.Dataset, actual: xr.Dataset):
    """Every variable and coordinate identical (store attrs like git_sha may differ)."""
    xr.testing.assert_identical(expected.drop_attrs(deep=False), actual.drop_attrs(deep=False))


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def queued(env: dict, job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job], capture_output=True, text=True, env=env, timeout=60)
    return out.returncode == 0 and bool(out.stdout.strip())


def test_smoke_as_a_job_array(slurm_cluster, tmp_path):
    out = tmp_path / "smoke"
    proc = icsweep(slurm_cluster, "run", "sweep=smoke", "backend=submitit", f"out={out}", *TINY, *SLURM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted array job" in proc.stdout and "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    runs = attempts(out)
    assert all([a["outcome"] for a in runs[t.id]] == ["complete"] for t in manifest.trials)
    assert {a["backend"] for r in runs.values() for a in r} == {"submitit"}
    array = {job.split("_")[0] for job in jobs(out).values()}
    assert len(array) == 1
    rows = sacct(slurm_cluster, array.pop())
    assert len(rows) == 8 and all(state == "COMPLETED" for _, state in rows)
    assert {job.split("_")[1] for job, _ in rows} == {str(i) for i in range(8)}

    # Rerun with one more seed: only the 4 new cells are submitted.
    proc = icsweep(slurm_cluster, "run", "sweep=smoke", "backend=submitit", f"out={out}", "seeds=[1,2,3]",
                   *TINY, *SLURM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 complete, 4 to run" in proc.stdout and "(4 trials" in proc.stdout
    after = attempts(out)
    assert all(after[tid] == runs[tid] for tid in runs)
    assert len(after) == 12


def test_packs_as_array_tasks(slurm_cluster, tmp_path):
    """resources.pack_size=2: an array task per pack of two trials (of one n_labels value), each trial complete."""
    out = tmp_path / "packed"
    proc = icsweep(slurm_cluster, "run", "sweep=smoke", "backend=submitit", f"out={out}", "resources.pack_size=2",
                   *TINY, *SLURM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 to run on submitit in 4 packs of 2" in proc.stdout and "(8 trials in 4 packs" in proc.stdout
    assert "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    runs = attempts(out)
    assert all([a["outcome"] for a in runs[t.id]] == ["complete"] for t in manifest.trials)
    tasks: dict[str, set] = {}
    for t in manifest.trials:
        run, = runs[t.id]
        assert run["backend"] == "submitit" and run["pack_trials"] == 2
        tasks.setdefault(run["pack"], set()).add((run["slurm_array_job"], run["slurm_array_task"], t.axes["n_labels"]))
    assert len(tasks) == 4 and all(len(task) == 1 for task in tasks.values())  # both trials in one task
    array = {job.split("_")[0] for job in jobs(out).values()}
    assert len(array) == 1
    rows = sacct(slurm_cluster, array.pop())
    assert len(rows) == 4 and all(state == "COMPLETED" for _, state in rows)


@pytest.mark.slow
def test_requeue_and_preemption_resume_from_checkpoint(slurm_cluster, tmp_path):
    """`scontrol requeue` of one running trial and a preemption signal (USR2, handled by Submitit's checkpoint)
    to another: both continue from their checkpoints, with the statistics of an uninterrupted run."""
    sweep = ["sweep=smoke", "seeds=[1,2]", "clamps=[none]", "axes.data.n_labels=[5]", *TINY,
             "base.train.sequences=48000", "base.train.checkpoint_every=640", "base.train.eval_every=1600"]
    reference = tmp_path / "reference"
    proc = icsweep(slurm_cluster, "run", *sweep, f"out={reference}", "backend=local", "local.workers=0")
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "requeued"
    proc = icsweep(slurm_cluster, "run", *sweep, f"out={out}", "backend=submitit", "submitit.wait=false", *SLURM)
    assert proc.returncode == 0, proc.stderr
    first, second = read_manifest(out).trial_ids()
    task = jobs(out)

    def mid_run(tid):
        return (checkpoint_path(store_path(out, tid)).exists() and not is_complete(store_path(out, tid))
                and (out / "logs" / f"{tid}.running").exists())

    wait_for(lambda: mid_run(first) and mid_run(second), 180, "both trials running past a checkpoint")
    subprocess.run(["scontrol", "requeue", task[first]], env=slurm_cluster, check=True, timeout=60)
    subprocess.run(["scancel", "--signal=USR2", task[second]], env=slurm_cluster, check=True, timeout=60)
    array = task[first].split("_")[0]
    wait_for(lambda: not queued(slurm_cluster, array), 300, "the array to finish")
    runs = attempts(out)
    for tid in (first, second):
        assert is_complete(store_path(out, tid))
        assert runs[tid][-1]["outcome"] == "complete" and runs[tid][-1]["resumed"] is True, runs[tid]
        assert [a["outcome"] for a in runs[tid][:-1]] in ([], ["interrupted"])
        expected = xr.open_zarr(store_path(reference, tid), consolidated=False).load()
        actual = xr.open_zarr(store_path(out, tid), consolidated=False).load()
        assert_same_statistics(expected, actual)
    log = (out / "logs" / f"{second}.log").read_text()
    assert log.count("--- icsweep trial") == 2


@pytest.mark.slow
def test_requeue_and_preemption_of_packs_resume_their_trials(slurm_cluster, tmp_path):
    """pack_size=2, two array tasks: `scontrol requeue` of one, a preemption signal (USR2: PackJob.checkpoint
    resubmits the pack) to the other; every trial continues from its checkpoint, with the statistics of an
    uninterrupted run of the same packs (up to float rounding: a signal between two trials' checkpoint writes
    resumes them at different steps, as packs of one, whose sums round otherwise)."""
    sweep = ["sweep=smoke", "seeds=[1,2,3,4]", "clamps=[none]", "axes.data.n_labels=[5]", *TINY,
             "base.train.sequences=48000", "base.train.checkpoint_every=640", "base.train.eval_every=1600"]
    reference = tmp_path / "reference"
    proc = icsweep(slurm_cluster, "run", *sweep, f"out={reference}", "backend=local", "local.workers=0",
                   "resources.pack_size=2")
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "requeued"
    proc = icsweep(slurm_cluster, "run", *sweep, f"out={out}", "backend=submitit", "submitit.wait=false",
                   "resources.pack_size=2", *SLURM)
    assert proc.returncode == 0, proc.stderr
    ids = read_manifest(out).trial_ids()
    task = jobs(out)
    assert task[ids[0]] == task[ids[1]] != task[ids[2]] == task[ids[3]]

    def mid_run(tid):
        return (checkpoint_path(store_path(out, tid)).exists() and not is_complete(store_path(out, tid))
                and (out / "logs" / f"{tid}.running").exists())

    wait_for(lambda: any(mid_run(t) for t in ids[:2]) and any(mid_run(t) for t in ids[2:]), 180,
             "both packs running past a checkpoint")
    interrupted = [tid for tid in ids if mid_run(tid)]
    subprocess.run(["scontrol", "requeue", task[ids[0]]], env=slurm_cluster, check=True, timeout=60)
    subprocess.run(["scancel", "--signal=USR2", task[ids[2]]], env=slurm_cluster, check=True, timeout=60)
    wait_for(lambda: not queued(slurm_cluster, task[ids[0]].split("_")[0]), 300, "the array to finish")
    runs = attempts(out)
    for tid in ids:
        assert is_complete(store_path(out, tid))
        assert [a["outcome"] for a in runs[tid]] in (["complete"], ["interrupted", "complete"]), runs[tid]
        expected = xr.open_zarr(store_path(reference, tid), consolidated=False).load()
        actual = xr.open_zarr(store_path(out, tid), consolidated=False).load()
        xr.testing.assert_allclose(expected.drop_attrs(deep=False), actual.drop_attrs(deep=False), rtol=1e-3,
                                   atol=1e-4)
    for tid in interrupted:
        assert runs[tid][-1]["resumed"] is True, runs[tid]
    log = (out / "logs" / f"pack-{ids[2]}.log").read_text()
    assert log.count("--- icsweep pack") == 2  # preempted once, resumed once


def test_slurm_unreachable_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "no-such-slurm.conf")}
    proc = icsweep(env, "run", "sweep=smoke", "backend=submitit", f"out={out}")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("icsweep run: submitit: SLURM")
    assert "use backend=local|ray" in proc.stderr
    assert not out.exists()


def test_submit_and_exit_then_status_and_cancel(slurm_cluster, tmp_path):
    """submitit.wait=false returns once the array is queued; status shows it; cancel scancels it; a rerun would
    resume (stores and checkpoints stay)."""
    out = tmp_path / "detached"
    proc = icsweep(slurm_cluster, "run", "sweep=smoke", "backend=submitit", f"out={out}", "submitit.wait=false",
                   *TINY, "base.train.sequences=64000", *SLURM)
    assert proc.returncode == 0, proc.stderr
    assert "submitted; follow with `icsweep status" in proc.stdout
    status = icsweep(slurm_cluster, "status", str(out)).stdout
    assert "SLURM: " in status and "array tasks of this sweep" in status
    proc = icsweep(slurm_cluster, "cancel", str(out))
    assert proc.returncode == 0 and "cancelled 8 SLURM array tasks" in proc.stdout, proc.stdout
    array = next(iter(jobs(out).values())).split("_")[0]
    wait_for(lambda: not queued(slurm_cluster, array), 60, "the array to leave the queue")
    wait_for(lambda: all(s.startswith(("CANCELLED", "COMPLETED")) for _, s in sacct(slurm_cluster, array)), 60,
             "sacct to record the cancellation")
    assert "SLURM:" not in icsweep(slurm_cluster, "status", str(out)).stdout
