"""The dev SLURM cluster (slurm/dev-cluster.sh) runs real jobs: two nodes, accounting, job arrays, fake GPUs, requeue.

About 30 s when the cluster already runs (the requeue test waits out the cluster's 10 s requeue delay).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

DEV_CLUSTER = Path(__file__).resolve().parents[2] / "slurm" / "dev-cluster.sh"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def run(args: list[str], env: dict[str, str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def sbatch(env: dict[str, str], *args: str) -> str:
    """Submit; return the job id."""
    return run(["sbatch", "--parsable", *args], env).stdout.strip().split(";")[0]


def wait_gone(env: dict[str, str], job_id: str, timeout: float = 30) -> None:
    """Wait until the job (all its array tasks) left the queue: finished, failed or cancelled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["squeue", "-h", "-j", job_id, "-o", "%T"], env, check=False).stdout.split()
        if not out:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still queued after {timeout} s: {out}")


def sacct_states(env: dict[str, str], job_id: str, expect: int, timeout: float = 20) -> dict[str, str]:
    """JobID -> State of the job's allocations in sacct, once `expect` of them are recorded as finished."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"], env).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        finished = {k: v for k, v in states.items() if v.split()[0] in FINISHED}
        if len(finished) >= expect:
            return states
        time.sleep(0.3)
    raise AssertionError(f"sacct shows {states} for job {job_id} after {timeout} s, expected {expect} finished")


def test_sinfo_shows_two_idle_nodes(slurm_cluster):
    deadline = time.monotonic() + 20  # jobs of an earlier test module may still be finishing
    while True:
        out = run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %t %c %G"], slurm_cluster).stdout
        nodes = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
        if {state for state, *_ in nodes.values()} == {"idle"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(nodes) == ["n1", "n2"], out
    for name, (state, cpus, gres) in nodes.items():
        assert state == "idle", out
        assert int(cpus) >= 2, out
        assert gres.startswith("gpu:2"), out


def test_status_reports_running(slurm_cluster):
    proc = run([str(DEV_CLUSTER), "status"], slurm_cluster)
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd-n1", "slurmd-n2"):
        assert any(line.startswith(daemon) and "running" in line for line in proc.stdout.splitlines()), proc.stdout


def test_start_again_is_a_noop(slurm_cluster):
    proc = run([str(DEV_CLUSTER), "start"], slurm_cluster)
    assert "already running" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={slurm_cluster['SLURM_CONF']}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_non_root_gets_one_line_error(slurm_cluster):
    proc = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", str(DEV_CLUSTER), "start"],
        capture_output=True, text=True, timeout=30, env=slurm_cluster,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "needs root" in proc.stderr and "SLURM_CONF" in proc.stderr


def test_trivial_job_completes_and_is_in_sacct(slurm_cluster, tmp_path: Path):
    out = tmp_path / "trivial.out"
    job_id = sbatch(slurm_cluster, "--wait", "-o", str(out), "--wrap", "echo hello from $SLURMD_NODENAME")
    assert out.read_text().strip() in {"hello from n1", "hello from n2"}
    assert sacct_states(slurm_cluster, job_id, 1) == {job_id: "COMPLETED"}


def test_job_array_shows_in_sacct(slurm_cluster, tmp_path: Path):
    job_id = sbatch(
        slurm_cluster, "-a", "0-1", "-o", str(tmp_path / "task-%a.out"),
        "--wrap", "echo $SLURM_ARRAY_TASK_ID",
    )
    wait_gone(slurm_cluster, job_id)
    assert sacct_states(slurm_cluster, job_id, 2) == {f"{job_id}_0": "COMPLETED", f"{job_id}_1": "COMPLETED"}
    assert [(tmp_path / f"task-{i}.out").read_text().strip() for i in (0, 1)] == ["0", "1"]


def test_two_node_job_runs_steps_on_both_nodes(slurm_cluster, tmp_path: Path):
    script = tmp_path / "two_nodes.sh"
    script.write_text(
        "#!/bin/bash\n"
        "srun -N2 --ntasks-per-node=1 bash -c 'echo $SLURM_PROCID $SLURMD_NODENAME'\n"
    )
    out = tmp_path / "two_nodes.out"
    job_id = sbatch(slurm_cluster, "-N2", "--ntasks-per-node=1", "-o", str(out), str(script))
    wait_gone(slurm_cluster, job_id)
    assert sorted(out.read_text().split("\n")[:2]) == ["0 n1", "1 n2"], out.read_text()
    assert sacct_states(slurm_cluster, job_id, 1) == {job_id: "COMPLETED"}


def test_gres_gpu_job_sees_cuda_visible_devices(slurm_cluster, tmp_path: Path):
    out = tmp_path / "gpu.out"
    job_id = sbatch(slurm_cluster, "--gres=gpu:1", "-o", str(out), "--wrap", "echo $CUDA_VISIBLE_DEVICES")
    wait_gone(slurm_cluster, job_id)
    assert out.read_text().strip() in {"0", "1"}
    # more GPUs than a node has: refused at submission
    refused = run(["sbatch", "--gres=gpu:3", "--wrap", "true"], slurm_cluster, check=False)
    assert refused.returncode != 0


def test_requeue_of_running_job_runs_it_again(slurm_cluster, tmp_path: Path):
    counts = tmp_path / "restart_counts"
    # First run: record restart count 0 and sleep until requeued; second run: record 1 and finish.
    job_id = sbatch(
        slurm_cluster, "-o", str(tmp_path / "requeue.out"), "--wrap",
        f'echo "${{SLURM_RESTART_COUNT:-0}}" >> {counts}; [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ] || sleep 300',
    )
    try:
        deadline = time.monotonic() + 20
        while not (counts.exists() and counts.read_text().split()):
            assert time.monotonic() < deadline, "job did not start within 20 s"
            time.sleep(0.2)
        run(["scontrol", "requeue", job_id], slurm_cluster)
        deadline = time.monotonic() + 45  # the cluster holds a requeued job back for cred_expire (10 s)
        while counts.read_text().split() != ["0", "1"]:
            assert time.monotonic() < deadline, f"requeued job did not run again: {counts.read_text()!r}"
            time.sleep(0.3)
        wait_gone(slurm_cluster, job_id)
        show = run(["scontrol", "show", "job", job_id, "-o"], slurm_cluster).stdout
        assert "Restarts=1" in show and "JobState=COMPLETED" in show, show
    finally:
        run(["scancel", job_id], slurm_cluster, check=False)
