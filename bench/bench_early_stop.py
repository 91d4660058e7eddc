"""What early stop saves on a real sweep: the paper's Fig 5b end to end, stop off against stop on, in one run.

    python bench/bench_early_stop.py [--sequences 600000] [--pack-size 1] [--workers 2] [--rounds 1] [--baseline REV]

Each variant is one `icsweep run sweep=paper_fig5b backend=local` (six clamp sets, seed 5, the paper's 6e5
sequences, synthetic features), a real command as a user types it: Python start, compiling, evaluations, writes
and the closing phase-change table included. The variants alternate in each round (off, on, off, on, ...), so
both see the same machine. Printed per variant: wall time, sequences trained (from the stores' attrs) against
the budget, and the ratio on/off; then the compute saved and whether the two phase-change tables are equal (they
must be). Target: Fig 5b with early stop in at most 48 s end to end on two cores, one fifth of the 240 s the
paper's reference JAX code needs for these six trials there (6 x 6e5 sequences / 7,500 seq/s = 480 core-s).
With `--baseline REV`, each round first runs stop on with the code of commit REV (bench/baseline.py), so a change's
before and after come from the same run; the attempts' core-seconds and the trials' span are printed for each.
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

import zarr

from baseline import REPO, export
from ihmodel.sweepdir import read_manifest, store_path

TARGET_S = 48.0


def run(out: Path, stop: bool, args, code: Path = REPO) -> dict:
    """One `icsweep run` of the package at `code` (the checkout, or an exported baseline)."""
    command = [sys.executable, "-m", "orchestrator.cli", "run", "sweep=paper_fig5b", "backend=local", f"out={out}",
               f"base.train.sequences={args.sequences}", f"local.workers={args.workers}",
               f"resources.pack_size={args.pack_size}", f"base.train.stop_early={str(stop).lower()}"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=code, env=os.environ | {"PYTHONPATH": str(code)})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"icsweep run exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    trials, attempts = {}, []  # clamp set -> (sequences trained, budget, stopped, seconds of its attempts)
    for entry in read_manifest(out).trials:
        attrs = zarr.open_group(str(store_path(out, entry.id)), mode="r").attrs
        log = out / "logs" / f"{entry.id}.attempts.jsonl"
        own = [json.loads(line) for line in log.read_text().splitlines()]
        trials[entry.axes["clamp"]] = (attrs["stop_sequences"], attrs["budget_sequences"], attrs["stopped_early"],
                                       sum(a["seconds"] for a in own))
        attempts += own
    return {"wall_s": wall, "trials": trials, "trained": sum(t[0] for t in trials.values()),
            "budget": sum(t[1] for t in trials.values()), "stopped": sum(t[2] for t in trials.values()),
            "attempt_s": sum(a["seconds"] for a in attempts),  # the trials' own compute, core-seconds
            "span_s": max(a["ended"] for a in attempts) - min(a["started"] for a in attempts),
            "table": (out / "phase_change.csv").read_text()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=600_000, help="budget per trial (the paper's Fig 5b: 6e5)")
    parser.add_argument("--pack-size", type=int, default=1, help="resources.pack_size of both variants")
    parser.add_argument("--workers", type=int, default=2, help="local.workers (one CPU thread each)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two variants")
    parser.add_argument("--baseline", metavar="REV", help="also run stop on with commit REV's code, each round")
    args = parser.parse_args()
    results: dict[bool, list[dict]] = {False: [], True: []}
    baseline: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_early_stop_") as tmp:
        base_code = export(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        for round_index in range(args.rounds):
            if base_code:
                baseline.append(run(Path(tmp) / f"base{round_index}", True, args, base_code))
            for stop in (False, True):
                out = Path(tmp) / f"{'on' if stop else 'off'}{round_index}"
                results[stop].append(run(out, stop, args))
                shutil.rmtree(out)
    print(f"paper_fig5b, 6 trials x {args.sequences:,} sequences, local.workers={args.workers}, "
          f"resources.pack_size={args.pack_size}, {args.rounds} round(s)")
    print(f"{'code':>10} {'stop_early':>10} {'wall s':>8} {'trials s':>8} {'span s':>7} {'trained':>11} "
          f"{'budget':>11} {'stopped':>8}")
    rows = [(args.baseline, True, r) for r in baseline]
    rows += [("checkout", stop, r) for stop, runs in results.items() for r in runs]
    for code, stop, r in rows:
        print(f"{code[:10]:>10} {str(stop).lower():>10} {r['wall_s']:8.1f} {r['attempt_s']:8.1f} {r['span_s']:7.1f} "
              f"{r['trained']:11,} {r['budget']:11,} {r['stopped']:8d}")
    if baseline:
        before = min(r["wall_s"] for r in baseline)
        after = min(r["wall_s"] for r in results[True])
        print(f"stop on, checkout against {args.baseline}: {after:.1f} / {before:.1f} s = {after / before:.2f} "
              f"(best of each)")
    print("per trial (first round): sequences trained, seconds its attempt took")
    for clamp, (trained, _, stopped, seconds) in results[True][0]["trials"].items():
        full = results[False][0]["trials"][clamp]
        print(f"  {clamp:30s} off {full[0]:9,} {full[3]:6.1f} s   on {trained:9,} {seconds:6.1f} s"
              + ("  stopped early" if stopped else ""))
    best = {stop: min(r["wall_s"] for r in runs) for stop, runs in results.items()}
    on, off = results[True][0], results[False][0]
    saved = off["trained"] - on["trained"]
    print(f"wall time on/off: {best[True] / best[False]:.2f} (best of each: {best[True]:.1f} s / {best[False]:.1f} s)")
    print(f"compute saved: {saved:,} of {off['trained']:,} sequences ({100 * saved / off['trained']:.1f} %)")
    equal = all(r["table"] == off["table"] for r in results[True] + results[False])
    print(f"phase-change tables equal: {equal}")
    print(f"target: stop on <= {TARGET_S:.0f} s end to end: {'met' if best[True] <= TARGET_S else 'missed'} "
          f"({best[True]:.1f} s)")
    print(off["table"].rstrip())
    if not equal:
        raise SystemExit("the phase-change tables differ between stop off and stop on")


if __name__ == "__main__":
    main()
