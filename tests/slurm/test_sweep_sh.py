"""`sbatch slurm/sweep.sh` on the real two-node dev cluster, in both modes: a driver job that submits the smoke
sweep as a Submitit job array, and a Ray cluster over a two-node allocation running the ray backend."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ihmodel.store import is_complete
from ihmodel.sweepdir import read_manifest, store_path

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "base.train.sequences=640", "base.train.eval_every=320", "base.train.checkpoint_every=320",
    "base.train.flush_every=10", "base.eval.size=64", "base.data.n_train_classes=10",
]


def sbatch(env: dict, tmp_path: Path, *args: str, timeout: float = 480) -> tuple[str, str]:
    """Submit and wait; returns (job id, driver output)."""
    log = tmp_path / "driver-%j.out"
    proc = subprocess.run(["sbatch", "--wait", "--parsable", f"--output={log}", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL)
    job = proc.stdout.strip().split(";")[0]
    output = Path(str(log).replace("%j", job)).read_text() if job else ""
    assert proc.returncode == 0, f"sbatch exited {proc.returncode}: {proc.stderr}\n{output}"
    return job, output


def sacct(env: dict, job: str, fields: str = "JobID,JobName,State,NNodes") -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", fields, "-j", job], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    return [line.split("|") for line in out.split("\n") if line]


def attempts(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for p in (sweep_dir / "logs").glob("*.attempts.jsonl")
            for line in p.read_text().splitlines()]


def all_complete(sweep_dir: Path) -> bool:
    return all(is_complete(store_path(sweep_dir, t.id)) for t in read_manifest(sweep_dir).trials)


def test_driver_job_submits_the_array(slurm_cluster, tmp_path):
    out = tmp_path / "smoke"
    job, output = sbatch(slurm_cluster, tmp_path, str(REPO / "slurm" / "sweep.sh"), "sweep=smoke", f"out={out}",
                         "submitit.array_parallelism=2", "submitit.mem_gb=1", *TINY)
    assert "submitted array job" in output and "complete 8" in output
    assert "phase change" in output or "complete 8" in output
    assert all_complete(out)
    assert sacct(slurm_cluster, job)[0][2] == "COMPLETED"
    array = json.loads((out / "logs/submitit/jobs.json").read_text())[0]["array_job_id"]
    rows = sacct(slurm_cluster, array)
    assert len(rows) == 8 and {r[2] for r in rows} == {"COMPLETED"}
    assert {a["backend"] for a in attempts(out)} == {"submitit"}


def test_ray_mode_spans_both_nodes(slurm_cluster, tmp_path):
    out = tmp_path / "smoke"
    job, output = sbatch(slurm_cluster, tmp_path, "-N2", "--cpus-per-task=2", str(REPO / "slurm" / "sweep.sh"),
                         "sweep=smoke", "backend=ray", f"out={out}", *TINY)
    assert "Ray cluster up at" in output and "complete 8" in output
    assert all_complete(out)
    (row,) = sacct(slurm_cluster, job)
    assert row[2] == "COMPLETED" and row[3] == "2"
    runs = attempts(out)
    assert {a["backend"] for a in runs} == {"ray"}
    assert {a["node"] for a in runs} == {"n1", "n2"}  # trials ran on both SLURM nodes...
    assert len({a["ray_node"] for a in runs}) == 2  # ...which were two Ray nodes of one cluster
    leftovers = subprocess.run(["pgrep", "-f", f"/tmp/ray{job}"], capture_output=True, text=True)
    assert leftovers.stdout == "", "Ray processes outlived the job"
    assert not list(Path("/tmp").glob(f"ray{job}n*"))
