"""Training throughput of one trial at the paper's config on one CPU thread, statistics on versus off.

    python bench/bench_train.py [--sequences 640000] [--rounds 3]

Prints sequences/s with statistics + Zarr writing on (the default stats, evals every 10,000 sequences), with
evaluations only (stats=[eval,eval_induction_score]) and off (stats=[]: nothing recorded, nothing written), the
overhead of on against off split into its two parts, and the peak memory of one trial (run in a child process).
The machine is shared and noisy, so the three alternate over several rounds and ratios are taken within each
round; targets: >= 15,000 sequences/s on, overhead <= 10%, peak memory <= 1 GB.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SEQ_PER_S = 15_000
TARGET_OVERHEAD = 0.10
TARGET_PEAK_GB = 1.0


def timed_trial(overrides: list[str], directory: Path) -> float:
    """Sequences/s of one whole run_trial: setup, compilation (from a warm cache), training, evaluations and
    writes."""
    from ihmodel.compose import compose_trial
    from ihmodel.train import run_trial

    config = compose_trial(overrides + [f"store={directory / 'trial.zarr'}"])
    started = time.perf_counter()
    run_trial(config, progress=False)
    return config.train.sequences / (time.perf_counter() - started)


def peak_memory_gb(overrides: list[str], directory: Path) -> float:
    code = ("import sys; from ihmodel.train import main; sys.exit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, *overrides, f"store={directory / 'mem.zarr'}"], check=True,
                   stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=640_000)  # 20,000 steps: compiled, as real trials are
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = [f"train.sequences={args.sequences}", "train.eval_every=10000", "threads=1", "device=cpu"]
    variants = {"on": [], "evals_only": ["stats=[eval,eval_induction_score]"], "off": ["stats=[]"]}
    rates = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        # Imports, and torch.compile's on-disk cache warmed for every graph, as after a sweep's first trial.
        for name, stats in variants.items():
            timed_trial(base + ["train.sequences=3200", "train.compile=true"] + stats, Path(tmp) / f"warm_{name}")
        for round_ in range(args.rounds):
            for name, stats in variants.items():
                rates[name].append(timed_trial(base + stats, Path(tmp) / f"{name}_{round_}"))
            on, evals, off = (rates[name][-1] for name in variants)
            print(f"round {round_}: on {on:6.0f} seq/s   evals only {evals:6.0f}   off {off:6.0f}   overhead "
                  f"{off / on - 1:+.1%} (evaluations {off / evals - 1:+.1%}, per-step statistics and writes "
                  f"{evals / on - 1:+.1%})")
        peak = peak_memory_gb(base, Path(tmp))
    on = statistics.median(rates["on"])
    overhead = statistics.median([off / on - 1 for on, off in zip(rates["on"], rates["off"])])
    print(f"training, stats on (median):  {on:8.0f} seq/s   target >= {TARGET_SEQ_PER_S}   "
          f"ratio to target {on / TARGET_SEQ_PER_S:.2f}")
    print(f"statistics + Zarr overhead:   {overhead:+8.1%}        target <= {TARGET_OVERHEAD:.0%}")
    print(f"peak memory of one trial:     {peak:8.2f} GB     target <= {TARGET_PEAK_GB} GB")


if __name__ == "__main__":
    main()
