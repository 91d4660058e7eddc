"""Training throughput of one trial at the paper's config on one CPU thread, statistics on versus off.

    python bench/bench_train.py [--sequences 640000] [--rounds 2] [--block 500]

Prints sequences/s with statistics + Zarr writing on (the default stats, evals every 10,000 sequences), with
evaluations only (stats=[eval,eval_induction_score]) and off (stats=[]: nothing recorded, nothing written), the
overhead of on against off split into its two parts, and the peak memory of one trial (run in a child process).
The machine is shared and noisy, and its speed drifts over tens of seconds, so the three trials of a round train
interleaved in one process: each runs `--block` steps of its schedule (ihmodel.train.schedule: steps,
evaluations, flushes, checkpoints) in turn, and each is timed from its setup to its completion marker. Targets:
>= 15,000 sequences/s on, overhead <= 10%, peak memory <= 1 GB.
"""
from __future__ import annotations

import argparse
import itertools
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


def interleaved_trials(variants: dict[str, list[str]], base: list[str], directory: Path, block: int) -> dict:
    """Sequences/s of each variant's whole trial (setup from a warm compile cache, training, evaluations, writes),
    the trials advancing `block` steps at a time in turn."""
    from ihmodel.compose import compose_trial
    from ihmodel.train import Trial, schedule

    seconds, runs = {}, {}
    for name, overrides in variants.items():
        config = compose_trial(base + overrides + [f"store={directory / name}.zarr"])
        started = time.perf_counter()
        trial = Trial(config, Path(config.store))
        trial.start_or_resume()
        seconds[name] = time.perf_counter() - started
        runs[name] = (config, schedule(trial, config.train))
    active = list(runs)
    while active:
        for name in list(active):
            started = time.perf_counter()
            if next(itertools.islice(runs[name][1], block - 1, None), None) is None:
                active.remove(name)  # (its last block ended with the final evaluation and checkpoint)
            seconds[name] += time.perf_counter() - started
    return {name: config.train.sequences / seconds[name] for name, (config, _) in runs.items()}


def peak_memory_gb(overrides: list[str], directory: Path) -> float:
    code = ("import sys; from ihmodel.train import main; sys.exit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, *overrides, f"store={directory / 'mem.zarr'}"], check=True,
                   stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=640_000)  # 20,000 steps: compiled, as real trials are
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=int, default=500)  # steps a trial runs before the next one's turn
    args = parser.parse_args()
    base = [f"train.sequences={args.sequences}", "train.eval_every=10000", "threads=1", "device=cpu"]
    variants = {"on": [], "evals_only": ["stats=[eval,eval_induction_score]"], "off": ["stats=[]"]}
    rates = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        # Imports, and torch.compile's on-disk cache warmed for every graph, as after a sweep's first trial.
        interleaved_trials({name: stats + ["train.sequences=3200", "train.compile=true"]
                            for name, stats in variants.items()}, base, Path(tmp) / "warm", args.block)
        for round_ in range(args.rounds):
            for name, rate in interleaved_trials(variants, base, Path(tmp) / f"round{round_}", args.block).items():
                rates[name].append(rate)
            on, evals, off = (rates[name][-1] for name in variants)
            print(f"round {round_}: on {on:6.0f} seq/s   evals only {evals:6.0f}   off {off:6.0f}   overhead "
                  f"{off / on - 1:+.1%} (evaluations {off / evals - 1:+.1%}, per-step statistics and writes "
                  f"{evals / on - 1:+.1%})", flush=True)
        peak = peak_memory_gb(base, Path(tmp))
    on = statistics.median(rates["on"])
    overhead = statistics.median([off / on - 1 for on, off in zip(rates["on"], rates["off"])])
    print(f"training, stats on (median):  {on:8.0f} seq/s   target >= {TARGET_SEQ_PER_S}   "
          f"ratio to target {on / TARGET_SEQ_PER_S:.2f}")
    print(f"statistics + Zarr overhead:   {overhead:+8.1%}        target <= {TARGET_OVERHEAD:.0%}")
    print(f"peak memory of one trial:     {peak:8.2f} GB     target <= {TARGET_PEAK_GB} GB")


if __name__ == "__main__":
    main()
