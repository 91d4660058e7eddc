"""Packed training: aggregate sequences/s against the pack size K, statistics on, at the paper's config.

    python bench/bench_pack.py [--sizes 1 4 16 64 256 1024] [--device cpu|cuda] [--threads 1] [--steps 20]

For each K: a pack of K trials (seeds 1..K, stores in a temporary directory, created and written as run_pack does:
by worker processes on CUDA) is compiled and warmed up, then its steady state is timed as a trial runs it: training
steps with per-step statistics, plus one evaluation and one flush of statistics to the K Zarr stores (as many rows
as a trial writes at once: at the defaults, a checkpoint interval's 3,125), amortized at the config's intervals.
Also printed: the seconds to set the pack up (members, stores), and the parts of the steady state. The same is
timed for one unpacked trial (run_trial's runner). Printed as ratios from this one run (the machine is shared and
noisy): aggregate rate to K=1 and to the unpacked trial, and the achieved GFLOP/s of the training steps (FLOPs
counted by torch's FlopCounterMode) against a large float32 matmul measured in the same run.

Targets (issue 5): on this CPU, aggregate per core >= 1.3x the unpacked single-thread rate; on one H100, >= 1,000
trials in a pack at >= 50x the aggregate rate of one unpacked trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ihmodel.compose import compose_trial
from ihmodel.features import load_features
from ihmodel.model import Transformer
from ihmodel.pack import Pack, open_members, store_pool, sync
from ihmodel.train import Trial

CPU_TARGET_PER_CORE = 1.3
GPU_TARGET = (1000, 50.0)


def steady_state(runner, device, steps: int, rows_per_flush: int) -> dict:
    """Seconds per training step, per evaluation and per flush of `rows_per_flush` rows of a compiled, warmed-up
    runner."""
    for _ in range(3):  # compile and warm up
        runner.train_step()
    runner.evaluate()
    runner.flush()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        runner.train_step()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    runner.evaluate()
    sync(device)
    eval_s = time.perf_counter() - start
    # A trial's flush writes a whole interval's rows: the timed steps' rows, repeated to that many (their step
    # coordinates are wrong, which costs nothing more to write).
    stats = runner.stats
    stats.settle_grad_norm()
    stats.kept = (stats.kept * rows_per_flush)[:rows_per_flush]
    stats.grad_norms = (stats.grad_norms * rows_per_flush)[:rows_per_flush]
    stats.rows = rows_per_flush
    start = time.perf_counter()
    runner.flush()
    flush_s = time.perf_counter() - start
    return {"step_s": step_s, "eval_s": eval_s, "flush_s": flush_s}


def sequences_per_s(times: dict, config, trials: int) -> float:
    """The steady rate of a trial's schedule: a step, plus an evaluation every eval_every sequences and a flush
    every train.steps_per_write steps."""
    train = config.train
    steps_per_eval = train.eval_every / train.batch_size
    step_s = times["step_s"] + times["eval_s"] / steps_per_eval + times["flush_s"] / train.steps_per_write
    return trials * train.batch_size / step_s


def flops_per_step(pack: Pack) -> float:
    """FLOPs of one training forward and backward (counted eagerly: compiled code hides its ops from counters)."""
    batch = pack.stream(pack.step)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = pack.forward_all(pack.params.by_name(prefix="model."), *batch)
        loss.sum().backward()
    return counter.get_total_flops()


def matmul_gflops(device, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    overrides = [f"device={args.device}", f"threads={args.threads}", "train.compile=true"]
    config = compose_trial(overrides)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{args.threads} thread(s), paper config, statistics on (eval every {config.train.eval_every} sequences)")
    peak = matmul_gflops(device)
    print(f"float32 matmul 2048^3: {peak:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(dataclasses.replace(config, seed=1), Path(tmp) / "alone.zarr")
        trial.start_or_resume()
        alone = sequences_per_s(steady_state(trial, device, args.steps, config.train.steps_per_write), config, 1)
        del trial
        print(f"unpacked trial: {alone:9.0f} seq/s")
        features = torch.from_numpy(load_features(config.data)).to(device)
        template = Transformer(config.model, features.shape[-1], config.data.n_labels, config.data.n_ctx,
                               seed=0).to(device)
        header = ("K", "seq/s", "x K=1", "x unpacked", "per trial", "GFLOP/s", "x matmul", "writers", "setup s",
                  "step ms", "eval s", "flush s")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 10, 7, 11, 10, 8, 9, 8, 8, 8, 7, 8))))
        rate_1 = None
        for k in args.sizes:
            torch._dynamo.reset()  # compile for this K alone, as a pack's own process does (static shapes)
            with store_pool(device, k) as pool:  # as run_pack creates and writes a pack's stores
                workers = len(pool.processes) if pool else 0
                start = time.perf_counter()
                configs = [dataclasses.replace(config, seed=i + 1) for i in range(k)]
                paths = [Path(tmp) / f"K{k}" / f"t{i}.zarr" for i in range(k)]
                members = open_members(configs, paths, list(range(k)), features, template, device, pool, [None] * k)
                setup_s = time.perf_counter() - start
                pack = Pack(members, template, device, pool)
                times = steady_state(pack, device, args.steps, config.train.steps_per_write)
                rate = sequences_per_s(times, config, k)
                rate_1 = rate_1 or rate
                gflops = flops_per_step(pack) / times["step_s"] / 1e9
                print(f"{k:5d} {rate:10.0f} {rate / rate_1:7.2f} {rate / alone:11.2f} {rate / k:10.0f} "
                      f"{gflops:8.1f} {gflops / peak:9.3f} {workers:8d} {setup_s:8.1f} {1e3 * times['step_s']:8.2f} "
                      f"{times['eval_s']:7.2f} {times['flush_s']:8.2f}", flush=True)
                del pack, members
        print(f"peak memory of this process (every pack above, and the unpacked trial): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
        if device.type == "cpu":
            print(f"target: aggregate per core >= {CPU_TARGET_PER_CORE}x the unpacked single-thread rate")
        else:
            print(f"target: >= {GPU_TARGET[0]} trials in a pack at >= {GPU_TARGET[1]:.0f}x one unpacked trial")


if __name__ == "__main__":
    main()
