"""`icsweep cancel DIR`: stop whatever runs the sweep (its driver, its SLURM jobs). Stores and checkpoints stay, so
`icsweep run` resumes every trial where it stopped.
"""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from ihmodel.sweepdir import read_manifest
from orchestrator.driver import live_driver


def cancel(sweep_dir: Path) -> list[str]:
    """Cancel the sweep's live driver and queued/running SLURM jobs; returns what was done, one line each."""
    read_manifest(sweep_dir)  # a clear error if this is no sweep directory
    done = []
    driver = live_driver(sweep_dir)
    if driver is not None:
        if driver.get("slurm_job"):
            done.append(_scancel([driver["slurm_job"]], f"driver job {driver['slurm_job']}"))
        elif driver.get("host") == socket.gethostname():
            os.kill(int(driver["pid"]), signal.SIGTERM)
            done.append(f"sent SIGTERM to the driver, pid {driver['pid']} ({driver.get('backend')})")
        else:
            done.append(f"the driver runs on {driver.get('host')} (pid {driver.get('pid')}): stop it there")
    jobs_file = Path(sweep_dir) / "logs" / "submitit" / "jobs.json"
    if jobs_file.is_file():
        from orchestrator.backends.submitit import active_jobs

        active = sorted(active_jobs(sweep_dir))
        if active:
            done.append(_scancel(active, f"{len(active)} SLURM array tasks"))
    return done or ["nothing is running"]


def _scancel(job_ids: list[str], what: str) -> str:
    from orchestrator.backends.submitit import scancel

    out = scancel(job_ids)
    if out.returncode != 0:
        return f"scancel of {what} failed: {out.stderr.strip() or out.returncode}"
    return f"cancelled {what} ({', '.join(job_ids[:6])}{' ...' if len(job_ids) > 6 else ''})"
