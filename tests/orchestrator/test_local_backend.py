"""The local backend (a process pool, and the in-process fallback): complete, skip, resume, add cells, fail."""
from __future__ import annotations

from pathlib import Path

from orch_helpers import TINY, attempts, icsweep, store_files

from ihmodel.store import is_complete
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.run import run_sweep
from orchestrator.status import counts, sweep_states
from orchestrator.sweep_config import load_sweep


def stores(sweep_dir: Path) -> dict[str, dict]:
    return {t.id: store_files(store_path(sweep_dir, t.id)) for t in read_manifest(sweep_dir).trials}


def test_smoke_on_a_process_pool_then_rerun_and_add_a_seed(tmp_path):
    out = tmp_path / "smoke"
    proc = icsweep("run", "sweep=smoke", "backend=local", f"out={out}", *TINY, check=True)
    assert "8 trials" in proc.stdout and "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert len(manifest.trials) == 8
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    first = attempts(out)
    assert {tid: [a["outcome"] for a in runs] for tid, runs in first.items()} == {
        t.id: ["complete"] for t in manifest.trials}
    assert {a["backend"] for runs in first.values() for a in runs} == {"local"}
    assert {a["threads"] for runs in first.values() for a in runs} == {1}
    assert len({a["pid"] for runs in first.values() for a in runs}) == 2  # two workers on two cores

    before = stores(out)
    proc = icsweep("run", "sweep=smoke", "backend=local", f"out={out}", *TINY, check=True)
    assert "8 complete, 0 to run" in proc.stdout
    assert stores(out) == before
    assert attempts(out) == first

    proc = icsweep("run", "sweep=smoke", "backend=local", f"out={out}", "seeds=[1,2,3]", *TINY, check=True)
    assert "12 trials" in proc.stdout and "8 complete, 4 to run" in proc.stdout
    after = attempts(out)
    new = set(after) - set(first)
    assert len(new) == 4
    assert {read_manifest(out).trials[i].axes["seed"] for i in range(8, 12)} == {3}
    assert all(after[tid] == first[tid] for tid in first)
    assert {tid: stores for tid, stores in stores(out).items() if tid in before} == before


def test_in_process_fallback(tmp_path):
    """local.workers=0 runs the trials in this process."""
    sweep = load_sweep("smoke", [f"out={tmp_path}", "local.workers=0", "seeds=[1]", "clamps=[none]",
                                 "axes.data.n_labels=[5]", *TINY])
    assert run_sweep(sweep, quiet=True) == 0
    _, states = sweep_states(tmp_path)
    assert counts(states)["complete"] == 1
    assert attempts(tmp_path)[states[0].id][0]["pid"] == __import__("os").getpid()


def test_a_failing_trial_is_retried_then_reported(tmp_path):
    out = tmp_path / "bad"
    proc = icsweep("run", "sweep=smoke", f"out={out}", "seeds=[1]", "clamps=[none]", "axes.data.n_labels=[5]",
                   "base.train.lr=1e6", "resources.max_failures=2", *TINY)  # a loss that diverges
    assert proc.returncode == 1
    assert "failed 1" in proc.stdout
    (tid, runs), = attempts(out).items()
    assert [a["outcome"] for a in runs] == ["failed"] * 3
    error = (out / "logs" / f"{tid}.error").read_text()
    assert error.startswith(f"trial {tid}: the training loss is not finite from step ")
    assert f"(log: {out / 'logs' / tid}.log)" in error
    status = icsweep("status", str(out))
    assert status.returncode == 1
    assert "failed 1" in status.stdout and "it diverged: lower train.lr (now 1e+06)" in status.stdout
