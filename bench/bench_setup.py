"""Setting up a pack: the seconds `open_members` takes for K trials, split into members and stores.

    python bench/bench_setup.py [--sizes 64 1024] [--device cpu|cuda] [--baseline REV] [--rounds 1]

Members: each trial's Task, evaluation sets, clamp set and initial model state (`Member`). Stores: creating and
opening each trial's store (`Member.open`: `StoreWriter.create` and the writer's handles; by worker processes on
CUDA, as run_pack does). Each K runs in a fresh process, as a pack's own process sets up once. With `--baseline`,
the same measurement runs on the code of commit REV (exported with `git archive`), alternating with the checkout's
code K by K and round by round (the machine is shared and noisy: compare the two within one run).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import REPO, export


def measure(k: int, device_name: str) -> dict:
    """Seconds to set up a pack of K trials of the paper config (seeds 1..K) in this process."""
    import dataclasses

    import torch

    from ihmodel.compose import compose_trial
    from ihmodel.features import load_features
    from ihmodel.model import Transformer
    from ihmodel.pack import Member, open_members, store_pool

    torch.set_num_threads(1)
    device = torch.device(device_name)
    config = compose_trial([f"device={device_name}", "threads=1", "train.compile=true"])
    features = torch.from_numpy(load_features(config.data)).to(device)
    template = Transformer(config.model, features.shape[-1], config.data.n_labels, config.data.n_ctx,
                           seed=0).to(device)
    opening = 0.0
    open_member = Member.open

    def timed_open(self, *args, **kwargs):
        nonlocal opening
        start = time.perf_counter()
        open_member(self, *args, **kwargs)
        opening += time.perf_counter() - start

    Member.open = timed_open
    with tempfile.TemporaryDirectory() as tmp, store_pool(device, k) as pool:
        configs = [dataclasses.replace(config, seed=i + 1) for i in range(k)]
        paths = [Path(tmp) / f"t{i}.zarr" for i in range(k)]
        start = time.perf_counter()
        creating = 0.0
        if pool:  # the workers create the stores inside open_members: time that call as the stores' part
            create = pool.create

            def timed_create(stores):
                nonlocal creating
                begin = time.perf_counter()
                try:
                    return create(stores)
                finally:
                    creating += time.perf_counter() - begin

            pool.create = timed_create
        members = open_members(configs, paths, list(range(k)), features, template, device, pool, [None] * k)
        total = time.perf_counter() - start
        assert len(members) == k
        workers = len(pool.processes) if pool else 0
    stores = opening + creating
    return {"k": k, "total_s": total, "members_s": total - stores, "stores_s": stores, "workers": workers}


def run_one(code: Path, k: int, device: str) -> dict:
    """`measure` in a fresh process on the package at `code`."""
    env = os.environ | {"PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, __file__, "--one", str(k), "--device", device], env=env, cwd=code,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", help="a commit to measure against, alternating with the checkout")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single measurement, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"checkout": REPO}
        if args.baseline:
            codes = {f"baseline {args.baseline}": export(args.baseline, Path(tmp) / "baseline")} | codes
        print(f"device {args.device}; setting up a pack of the paper config, each K in a fresh process")
        print(f"{'code':>20} {'round':>5} {'K':>5} {'total s':>8} {'members s':>9} {'stores s':>8} "
              f"{'ms/trial':>8} {'workers':>7}")
        for round_ in range(args.rounds):
            for k in args.sizes:
                order = list(codes.items())
                for name, code in order[::-1] if round_ % 2 else order:
                    r = run_one(code, k, args.device)
                    print(f"{name:>20} {round_ + 1:5d} {k:5d} {r['total_s']:8.2f} {r['members_s']:9.2f} "
                          f"{r['stores_s']:8.2f} {1e3 * r['total_s'] / k:8.2f} {r['workers']:7d}", flush=True)


if __name__ == "__main__":
    main()
