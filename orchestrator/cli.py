"""`icsweep`: the command line.

    icsweep run sweep=smoke backend=ray out=runs/smoke [overrides]   launch or resume a sweep
    icsweep status DIR [--watch | --json] [--verify]                  counts, sequences, errors; live table; JSON
    icsweep list DIR                                                  one line per trial
    icsweep cancel DIR                                                stop the driver and SLURM jobs
    icsweep verify DIR                                                check every store's and checkpoint's checksums
    icsweep train key=value ...                                       one trial (ihmodel.train)
    icsweep analyze DIR ...                                           phase-change table and figures (analysis)
    icsweep features omniglot OUT.h5 [--images DIR] [--weights FILE]  the paper's features file (ihmodel.omniglot)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ihmodel.errors import report_errors

USAGE = __doc__.split("\n", 2)[2].rstrip()
COMMANDS = ("run", "status", "list", "cancel", "verify", "train", "analyze", "features")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage:\n{USAGE}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"icsweep: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    handler = {"run": cmd_run, "status": cmd_status, "list": cmd_list, "cancel": cmd_cancel, "verify": cmd_verify,
               "train": cmd_train, "analyze": cmd_analyze, "features": cmd_features}[command]
    try:
        return report_errors(f"icsweep {command}", lambda: handler(rest) or 0)
    except KeyboardInterrupt:
        print(f"icsweep {command}: interrupted; stores and checkpoints are kept: rerun to resume "
              f"(SLURM jobs keep running: icsweep cancel DIR stops them)", file=sys.stderr)
        return 130


def cmd_run(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        from orchestrator.sweep_config import sweep_names

        print("usage: icsweep run sweep=NAME|FILE.yaml [backend=local|ray|submitit] [out=DIR] [overrides]\n"
              f"sweeps: {', '.join(sweep_names())}\n"
              "overrides: base.train.sequences=2000 axes.data.n_labels=[5,10] +axes.data.burstiness=[1,2] "
              "clamps=[noclamp,perfect_copy] seeds=range(0,10) resources.cpus_per_trial=1 resources.pack_size=8|auto "
              "local.workers=2 "
              "ray.address=HOST:PORT submitit.partition=gpu submitit.wait=false")
        return 0
    names = [a for a in args if a.startswith("sweep=")]
    if not names:
        from orchestrator.sweep_config import sweep_names

        raise ValueError(f"give sweep=NAME (one of {', '.join(sweep_names())}) or sweep=path/to/sweep.yaml")
    overrides = [a for a in args if not a.startswith("sweep=")]
    from orchestrator.run import run_sweep
    from orchestrator.sweep_config import load_sweep

    sweep = load_sweep(names[-1].split("=", 1)[1], overrides)
    code = run_sweep(sweep)
    if code == 0 and not (sweep.backend == "submitit" and not sweep.submitit.wait):
        _summarize(sweep.out)
    return code


def _summarize(sweep_dir: Path):
    """The phase-change table (analysis.report) when it can be made, else the status summary."""
    try:
        from analysis.report import main as analyze_main
    except ImportError:
        analyze_main = None
    if analyze_main is None or analyze_main([str(sweep_dir)]) != 0:
        from orchestrator.status import report

        report(sweep_dir)


def cmd_status(args: list[str]) -> int:
    watch = "--watch" in args or "-w" in args
    paths = [a for a in args if not a.startswith("-")]
    if len(paths) != 1:
        raise ValueError("usage: icsweep status DIR [--watch | --json] [--verify]")
    from orchestrator.status import report

    sweep_dir = Path(paths[0])
    if "--json" in args:
        from orchestrator.live import sweep_view

        view = sweep_view(sweep_dir)
        print(json.dumps(view, indent=1))
        return 1 if view["totals"]["states"]["failed"] else 0
    if watch:
        from orchestrator.live import watch as watch_live

        watch_live(sweep_dir)
    c = report(sweep_dir)
    damaged = cmd_verify([str(sweep_dir)]) if "--verify" in args else 0
    return 1 if c["failed"] or damaged else 0


def cmd_list(args: list[str]) -> int:
    if len(args) != 1:
        raise ValueError("usage: icsweep list DIR")
    from orchestrator.status import listing

    listing(Path(args[0]))
    return 0


def cmd_cancel(args: list[str]) -> int:
    if len(args) != 1:
        raise ValueError("usage: icsweep cancel DIR")
    from orchestrator.cancel import cancel

    for line in cancel(Path(args[0])):
        print(f"icsweep cancel: {line}")
    return 0


def cmd_verify(args: list[str]) -> int:
    if len(args) != 1:
        raise ValueError("usage: icsweep verify DIR")
    from orchestrator.verify import verify

    return 1 if verify(Path(args[0])) else 0


def cmd_train(args: list[str]) -> int:
    from ihmodel.train import main as train_main

    return train_main(args) or 0


def cmd_analyze(args: list[str]) -> int:
    from analysis.report import main as analyze_main

    return analyze_main(args) or 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a ValueError, so that they end as one line (report_errors)."""

    def error(self, message):
        raise ValueError(f"{message}; usage: {self.usage}")


def cmd_features(args: list[str]) -> int:
    usage = ("icsweep features omniglot OUT.h5 [--images DIR] [--weights FILE] [--exemplars 5] [--seed 0] "
             "[--device auto] [--batch-size 64]")
    parser = _OneLineParser(prog="icsweep features", usage=usage, add_help=False, description=(
        "ResNet18 (ImageNet) features of Omniglot's 1623 characters, HDF5 dataset resnet18/224/feat "
        "(1623, EXEMPLARS, 512), for data.features=OUT.h5 (see ihmodel/omniglot.py). Needs torchvision: "
        "pip install 'icsweep[features]' (dev: .venv-features/bin/icsweep)."))
    parser.add_argument("dataset", choices=["omniglot"])
    parser.add_argument("out", type=Path, metavar="OUT.h5")
    parser.add_argument("--images", type=Path, metavar="DIR", help="a local Omniglot: images_background/ and "
                        "images_evaluation/, each <alphabet>/<character>/<NNNN_DD>.png (default: download)")
    parser.add_argument("--weights", type=Path, metavar="FILE", help="a local torchvision resnet18 state_dict "
                        "(torch.save) (default: download ResNet18_Weights.IMAGENET1K_V1)")
    parser.add_argument("--exemplars", type=int, default=5, metavar="E", help="drawings per character, the first "
                        "by file name (default 5)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random class order (default 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default 64)")
    if any(a in ("-h", "--help") for a in args):
        parser.print_help()
        return 0
    ns = parser.parse_args(args)
    from ihmodel.omniglot import extract

    path = extract(ns.out, images=ns.images, weights=ns.weights, exemplars=ns.exemplars, seed=ns.seed,
                   device=ns.device, batch_size=ns.batch_size)
    print(f"icsweep features: wrote {path} (dataset resnet18/224/feat); train on it with data.features={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
