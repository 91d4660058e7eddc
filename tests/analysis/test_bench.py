"""The benchmark runs (on a few trials here; `python bench/bench_analysis.py` for the 1,000-trial figure)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_runs_and_reports_time_and_memory_against_the_targets(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_analysis.py"), "--trials", "6",
                          "--repeats", "1", "--cache", str(tmp_path)], capture_output=True, text=True, check=True)

    lines = out.stdout.splitlines()
    assert lines[0].startswith("generated 6 trial stores")
    assert lines[1].startswith("run 1: open ")
    assert lines[-1].startswith("best ") and "of target 10 s (ratio" in lines[-1] and "of target 2 GiB" in lines[-1]
    rerun = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_analysis.py"), "--trials", "6",
                            "--repeats", "1", "--cache", str(tmp_path)], capture_output=True, text=True, check=True)
    assert rerun.stdout.startswith("using the cached sweep")
