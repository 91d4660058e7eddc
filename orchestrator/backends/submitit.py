"""`submitit`: the packs of pending trials as one SLURM job array, an array task per pack (capped by
`submitit.array_parallelism`).

Each array task runs `PackJob`, a submitit Checkpointable: on timeout or preemption submitit calls its
`checkpoint()`, which resubmits the same call, and each trial of the pack continues from its own checkpoint; an
outside `scontrol requeue` restarts the task, which does the same. `submitit.wait=false` submits and exits.

The job ids go to logs/submitit/jobs.json (one record per trial: its array task and pack), only so that a rerun
does not submit a trial whose job is still queued or running, and so that `icsweep cancel` can scancel them; what
is done is decided by the stores.
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
from orchestrator.packs import Pack
from orchestrator.trial import THREAD_ENV, execute_pack, pack_id

POLL_S = 3.0


class PackJob(submitit.helpers.Checkpointable):
    """One pack as a SLURM array task; requeue (timeout, preemption, scontrol requeue) resumes its trials."""

    def __init__(self, sweep_dir: str, threads: int, device: str | None):
        self.sweep_dir = sweep_dir
        self.threads = threads
        self.device = device

    def __call__(self, pack: str, trial_ids: list[str], config_yamls: list[str]) -> list[dict]:
        return execute_pack(self.sweep_dir, trial_ids, config_yamls, threads=self.threads, device=self.device,
                            backend="submitit", pack=pack)

    def checkpoint(self, pack: str, trial_ids: list[str], config_yamls: list[str]
                   ) -> submitit.helpers.DelayedSubmission:
        # A trial's state is its own checkpoint file (run_pack resumes each from it): resubmit the same call.
        return submitit.helpers.DelayedSubmission(self, pack, trial_ids, config_yamls)


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

    def submit(self, packs: list[Pack]) -> list:
        """One array job for `packs`, a task per pack; task ids recorded per trial in logs/submitit/jobs.json."""
        executor = self.executor()
        job = PackJob(str(self.sweep_dir), self.threads, self.device)
        try:
            jobs = executor.map_array(job, [p.id for p in packs], [p.trial_ids for p in packs],
                                      [p.config_yamls for p in packs])
        except Exception as error:  # sbatch refused: bad partition, gres, memory...
            first = str(error).strip().splitlines()
            raise ValueError(f"submitit: sbatch refused the array ({first[-1] if first else error}); "
                             f"check submitit.partition/gres/mem_gb and resources") from None
        records = read_jobs(self.sweep_dir)
        now = time.time()
        records += [{"job_id": j.job_id, "array_job_id": j.job_id.split("_")[0], "trial_id": tid, "pack": p.id,
                     "submitted": now} for j, p in zip(jobs, packs) for tid in p.trial_ids]
        path = jobs_file(self.sweep_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=0))
        tmp.replace(path)
        trials = sum(len(p.trials) for p in packs)
        print(f"icsweep: submitted array job {jobs[0].job_id.split('_')[0]} ({trials} trials"
              + (f" in {len(jobs)} packs" if trials != len(jobs) else "") + f", at most "
              f"{self.sweep.submitit.array_parallelism} at once); logs in {self.sweep_dir / 'logs' / 'submitit'}",
              flush=True)
        return jobs

    def in_flight(self) -> dict[str, str]:
        """{trial id: SLURM state} of trials whose job (from an earlier run too) is still queued or running."""
        active = active_jobs(self.sweep_dir)
        return {j["trial_id"]: active[j["job_id"]] for j in read_jobs(self.sweep_dir) if j["job_id"] in active}

    def run(self, packs: list[Pack]):
        from orchestrator.sweep import pending

        queued = self.in_flight()
        fresh = []
        for pack in packs:  # a trial queued by an earlier run stays there; its pack-mates go without it
            trials = [t for t in pack.trials if t.id not in queued]
            if trials:
                same = len(trials) == len(pack.trials)
                fresh.append(pack if same else Pack(pack_id([t.id for t in trials]), trials))
        skipped = sum(len(p.trials) for p in packs) - sum(len(p.trials) for p in fresh)
        if skipped:
            print(f"icsweep: {skipped} trials already queued or running in SLURM; not resubmitted", flush=True)
        failures = {p.id: 0 for p in packs}
        if fresh:
            self.submit(fresh)
        if self.detached:
            return
        while True:
            self._wait()
            retry = [p for p in packs
                     if pending(p.trials, self.sweep_dir) and failures[p.id] < self.resources.max_failures]
            if not retry:
                return
            for p in retry:
                failures[p.id] += 1
            print(f"icsweep: {len(retry)} packs ended with incomplete trials; resubmitting them (retry "
                  f"{max(failures[p.id] for p in retry)} of {self.resources.max_failures})", file=sys.stderr,
                  flush=True)
            self.submit(retry)

    def _wait(self):
        """Until none of this directory's jobs is queued or running."""
        while active_jobs(self.sweep_dir):
            time.sleep(POLL_S)
