"""`submitit`: the pending trials as one SLURM job array (capped by `submitit.array_parallelism`).

Each array task runs `TrialJob`, a submitit Checkpointable: on timeout or preemption submitit calls its
`checkpoint()`, which resubmits the same call, and run_trial continues from the trial's own checkpoint; an outside
`scontrol requeue` restarts the task, which does the same. `submitit.wait=false` submits and exits.

The job ids go to logs/submitit/jobs.json, only so that a rerun does not submit a trial whose job is still queued
or running, and so that `icsweep cancel` can scancel them; what is done is decided by the stores.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

from orchestrator.backends.base import Backend
from orchestrator.grid import Trial
from orchestrator.trial import THREAD_ENV, execute

POLL_S = 3.0


class TrialJob(submitit.helpers.Checkpointable):
    """One trial as a SLURM array task; requeue (timeout, preemption, scontrol requeue) resumes it."""

    def __init__(self, sweep_dir: str, threads: int, device: str | None):
        self.sweep_dir = sweep_dir
        self.threads = threads
        self.device = device

    def __call__(self, trial_id: str, config_yaml: str) -> dict:
        return execute(self.sweep_dir, trial_id, config_yaml, threads=self.threads, device=self.device,
                       backend="submitit")

    def checkpoint(self, trial_id: str, config_yaml: str) -> submitit.helpers.DelayedSubmission:
        # The trial's state is its own checkpoint file (run_trial resumes from it): resubmit the same call.
        return submitit.helpers.DelayedSubmission(self, trial_id, config_yaml)


def jobs_file(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "logs" / "submitit" / "jobs.json"


def read_jobs(sweep_dir: Path) -> list[dict]:
    try:
        return json.loads(jobs_file(sweep_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return []


def job_name(sweep_name: str, sweep_dir: Path) -> str:
    """Names this directory's jobs, so squeue finds them without any other state."""
    return f"icsweep-{sweep_name}-{hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:6]}"


def active_jobs(sweep_dir: Path) -> dict[str, str]:
    """{array task id (123_4): SLURM state} of this directory's jobs that are still queued or running."""
    array_ids = sorted({j["array_job_id"] for j in read_jobs(sweep_dir)})
    if not array_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(array_ids)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:  # every id gone from the controller (squeue: Invalid job id)
        return {}
    states = {}
    for line in out.stdout.split():
        job, _, state = line.partition("|")
        states[job] = state
    return states


def scancel(job_ids: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


class SubmititBackend(Backend):
    name = "submitit"

    @property
    def detached(self) -> bool:
        return not self.sweep.submitit.wait

    def check(self):
        missing = [c for c in ("sbatch", "squeue", "sinfo") if shutil.which(c) is None]
        if missing:
            raise ValueError(f"submitit: SLURM commands not found ({', '.join(missing)}); run on a SLURM login node "
                             f"(or start the dev cluster: slurm/dev-cluster.sh start) or use backend=local|ray")
        conf = os.environ.get("SLURM_CONF")
        if conf and not Path(conf).is_file():  # sinfo would retry reading it for a minute
            raise ValueError(f"submitit: SLURM is not reachable (SLURM_CONF={conf} does not exist); start the cluster "
                             f"(slurm/dev-cluster.sh start) or fix SLURM_CONF, or use backend=local|ray")
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            out = subprocess.CompletedProcess([], 1, "", "sinfo timed out")
        if out.returncode != 0 or not out.stdout.strip():
            first = (out.stderr.strip().splitlines() or ["no partitions"])[0]
            raise ValueError(f"submitit: SLURM is not reachable (sinfo: {first}); start it (slurm/dev-cluster.sh "
                             f"start; export SLURM_CONF=...) or use backend=local|ray")
        gpus = self.resources.gpus_per_trial
        if gpus != int(gpus):
            raise ValueError(f"resources.gpus_per_trial={gpus}: SLURM gives whole GPUs; use backend=ray to share one")

    def executor(self) -> submitit.AutoExecutor:
        opts = self.sweep.submitit
        folder = self.sweep_dir / "logs" / "submitit" / "%j"
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_num_timeout)
        params = dict(
            name=job_name(self.sweep.name, self.sweep_dir), timeout_min=opts.timeout_min, mem_gb=opts.mem_gb,
            cpus_per_task=self.threads, tasks_per_node=1, nodes=1,
            slurm_array_parallelism=opts.array_parallelism,
            slurm_setup=[f"export {name}={self.threads}" for name in THREAD_ENV],
            slurm_additional_parameters={"requeue": True, **dict(opts.additional)},
        )
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.account:
            params["slurm_account"] = opts.account
        if opts.qos:
            params["slurm_qos"] = opts.qos
        if opts.gres:
            params["slurm_gres"] = opts.gres
        elif self.resources.gpus_per_trial:
            params["gpus_per_node"] = int(self.resources.gpus_per_trial)
        executor.update_parameters(**params)
        return executor

    def submit(self, trials: list[Trial]) -> list:
        """One array job for `trials`; its task ids recorded in logs/submitit/jobs.json."""
        executor = self.executor()
        job = TrialJob(str(self.sweep_dir), self.threads, self.device)
        try:
            jobs = executor.map_array(job, [t.id for t in trials], [t.config_yaml for t in trials])
        except Exception as error:  # sbatch refused: bad partition, gres, memory...
            first = str(error).strip().splitlines()
            raise ValueError(f"submitit: sbatch refused the array ({first[-1] if first else error}); "
                             f"check submitit.partition/gres/mem_gb and resources") from None
        records = read_jobs(self.sweep_dir)
        now = time.time()
        records += [{"job_id": j.job_id, "array_job_id": j.job_id.split("_")[0], "trial_id": t.id,
                     "submitted": now} for j, t in zip(jobs, trials)]
        path = jobs_file(self.sweep_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=0))
        tmp.replace(path)
        print(f"icsweep: submitted array job {jobs[0].job_id.split('_')[0]} ({len(jobs)} trials, at most "
              f"{self.sweep.submitit.array_parallelism} at once); logs in {self.sweep_dir / 'logs' / 'submitit'}",
              flush=True)
        return jobs

    def in_flight(self) -> dict[str, str]:
        """{trial id: SLURM state} of trials whose job (from an earlier run too) is still queued or running."""
        active = active_jobs(self.sweep_dir)
        return {j["trial_id"]: active[j["job_id"]] for j in read_jobs(self.sweep_dir) if j["job_id"] in active}

    def run(self, trials: list[Trial]):
        from orchestrator.sweep import pending

        queued = self.in_flight()
        fresh = [t for t in trials if t.id not in queued]
        if len(fresh) < len(trials):
            print(f"icsweep: {len(trials) - len(fresh)} trials already queued or running in SLURM; not resubmitted",
                  flush=True)
        failures = {t.id: 0 for t in trials}
        if fresh:
            self.submit(fresh)
        if self.detached:
            return
        while True:
            self._wait()
            retry = [t for t in pending(trials, self.sweep_dir) if failures[t.id] < self.resources.max_failures]
            if not retry:
                return
            for t in retry:
                failures[t.id] += 1
            print(f"icsweep: {len(retry)} trials ended incomplete; resubmitting them (retry "
                  f"{max(failures[t.id] for t in retry)} of {self.resources.max_failures})", file=sys.stderr, flush=True)
            self.submit(retry)

    def _wait(self):
        """Until none of this directory's jobs is queued or running."""
        while active_jobs(self.sweep_dir):
            time.sleep(POLL_S)
