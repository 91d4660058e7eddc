"""Scheduling efficiency of each backend: a 16-trial sweep of short trials, wall time versus ideal.

    python bench/bench_sweep.py [--backends local,ray,submitit] [--sequences 96000]

For each backend, one `icsweep run` (a real command, as a user types it) of the smoke sweep widened to 16 trials
(2 label counts x 2 clamp sets x 4 seeds), one CPU thread per trial. Efficiency = (sum of the trials' own compute
time, from logs/<id>.attempts.jsonl / cores) / wall time of the command, Python start and Ray start included.
Cores = this machine's cores (the dev SLURM cluster's two nodes share them). Targets: >= 85% for local and ray;
submitit is reported (each array task starts its own Python and imports torch, which the trial time leaves out).
The submitit run needs the dev cluster (slurm/dev-cluster.sh start; SLURM_CONF set) and is skipped otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.85
REPO = Path(__file__).resolve().parents[1]


def sweep_args(sequences: int) -> list[str]:
    return ["sweep=smoke", "seeds=[1,2,3,4]", "axes.data.n_labels=[5,10]", "clamps=[none,perfect_match]",
            f"base.train.sequences={sequences}", f"base.train.eval_every={sequences // 4}",
            f"base.train.checkpoint_every={sequences // 2}", "base.train.flush_every=256", "base.eval.size=256",
            "resources.cpus_per_trial=1"]


def backend_args(backend: str, cores: int) -> list[str]:
    return {
        "local": ["backend=local", f"local.workers={cores}"],
        "ray": ["backend=ray", f"ray.num_cpus={cores}"],
        "submitit": ["backend=submitit", f"submitit.array_parallelism={cores}", "submitit.mem_gb=1"],
    }[backend]


def run(backend: str, sequences: int, cores: int, directory: Path) -> dict:
    out = directory / backend
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", *sweep_args(sequences),
                           *backend_args(backend, cores), f"out={out}"], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{backend}: icsweep run exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    runs = [json.loads(line) for p in (out / "logs").glob("*.attempts.jsonl") for line in p.read_text().split("\n")
            if line]
    complete = [r for r in runs if r["outcome"] == "complete"]
    assert len(complete) == 16, f"{backend}: {len(complete)} complete attempts"
    compute = sum(r["seconds"] for r in complete)
    return {"backend": backend, "wall_s": wall, "trial_s": compute, "mean_trial_s": compute / 16,
            "efficiency": compute / cores / wall, "load_before": load}


def slurm_available() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="local,ray,submitit")
    parser.add_argument("--sequences", type=int, default=96_000, help="per trial (96,000 = 3,000 steps)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for backend in args.backends.split(","):
            if backend == "submitit" and not slurm_available():
                print("submitit: skipped (no reachable SLURM; slurm/dev-cluster.sh start and export SLURM_CONF)")
                continue
            results.append(run(backend, args.sequences, args.cores, Path(tmp)))
            r = results[-1]
            print(f"{backend}: wall {r['wall_s']:.1f} s, trials {r['trial_s']:.1f} s in all "
                  f"({r['mean_trial_s']:.1f} s each), efficiency {r['efficiency']:.0%}", flush=True)
    print(f"\n16 trials x {args.sequences} sequences, {args.cores} cores; efficiency = sum(trial s) / cores / wall s")
    print(f"{'backend':9s} {'wall s':>7s} {'sum trial s':>11s} {'efficiency':>10s} {'target':>7s} {'load':>5s}")
    failed = False
    for r in results:
        target = f"{TARGET:.0%}" if r["backend"] != "submitit" else "-"
        ok = r["backend"] == "submitit" or r["efficiency"] >= TARGET
        failed |= not ok
        print(f"{r['backend']:9s} {r['wall_s']:7.1f} {r['trial_s']:11.1f} {r['efficiency']:10.0%} {target:>7s} "
              f"{r['load_before']:5.1f}{'' if ok else '  BELOW TARGET'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
