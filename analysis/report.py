"""`icsweep analyze <sweep-dir>`: print the phase-change table, write it as CSV, and optionally the figures.

The orchestrator's CLI calls `main(argv)` with the arguments after `analyze`; `python -m analysis.report` works too.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from ihmodel.errors import report_errors
from analysis.open import open_sweep
from analysis.phase import METHODS
from analysis.table import format_table, phase_change_table


def csv_name(method: str) -> str:
    """phase_change.csv for the paper's definition; phase_change_<method>.csv for the others."""
    return "phase_change.csv" if method == "threshold" else f"phase_change_{method}.csv"


def analyze(sweep_dir: str | Path, figures: bool = False, out_dir: str | Path | None = None,
            method: str = "threshold") -> pd.DataFrame:
    """The phase-change table of a sweep, written to `<out_dir or sweep_dir>/phase_change.csv`; with `figures`,
    the figures to `<out_dir or sweep_dir>/figures/*.png|pdf`."""
    if method not in METHODS or method == "induction":
        raise ValueError(f"unknown method {method!r} for the table; choose one of threshold, steepest, sigmoid")
    ds = open_sweep(sweep_dir)
    table = phase_change_table(ds, method)
    out_dir = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / csv_name(method), index=False)
    if figures:
        from analysis.figures import save_figures  # matplotlib only when asked for

        table.attrs["figures"] = [str(p) for p in save_figures(ds, table, out_dir / "figures")]
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icsweep analyze",
                                description="Phase-change time per data property x clamp set of a sweep directory.")
    p.add_argument("sweep_dir", help="the sweep directory (holds manifest.json and trials/)")
    p.add_argument("--figures", action="store_true", help="also write figures/*.png and *.pdf")
    p.add_argument("--out", default=None, help="write the CSV and figures here instead of the sweep directory")
    p.add_argument("--method", default="threshold", choices=[m for m in METHODS if m != "induction"],
                   help="phase-change definition (default: the paper's, first eval with loss < 0.4 ln 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run `icsweep analyze`; returns the exit status (0 ok, 2 for a bad sweep directory or store)."""
    args = parser().parse_args(argv)
    return report_errors("icsweep analyze", lambda: _analyze_and_print(args))


def _analyze_and_print(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = analyze(args.sweep_dir, figures=args.figures, out_dir=args.out, method=args.method)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    print(format_table(table))
    out_dir = Path(args.out) if args.out is not None else Path(args.sweep_dir)
    print(f"wrote {out_dir / csv_name(args.method)}")
    for path in table.attrs.get("figures", []):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
