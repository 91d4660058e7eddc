"""The ray backend on a local Ray (a plain ray.init): the smoke sweep completes; failures are retried; an
unreachable cluster is one line and writes nothing."""
from __future__ import annotations

import pytest
from orch_helpers import TINY, attempts, icsweep

from ihmodel.store import is_complete
from ihmodel.sweepdir import read_manifest, store_path

pytest.importorskip("ray.tune")


def test_smoke_on_local_ray(tmp_path):
    out = tmp_path / "smoke"
    proc = icsweep("run", "sweep=smoke", "backend=ray", f"out={out}", *TINY, "ray.num_cpus=2", check=True)
    assert "8 to run on ray" in proc.stdout and "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    runs = attempts(out)
    assert sorted(runs) == sorted(manifest.trial_ids())
    assert all([a["outcome"] for a in r] == ["complete"] for r in runs.values())
    assert {a["backend"] for r in runs.values() for a in r} == {"ray"}
    assert {a["threads"] for r in runs.values() for a in r} == {1}
    assert all(a.get("ray_node") for r in runs.values() for a in r)
    assert len({a["pid"] for r in runs.values() for a in r}) <= 4  # actors are reused, not one per trial
    assert (out / "logs" / "ray").is_dir()  # Tune's own state, never read to decide what is done

    proc = icsweep("run", "sweep=smoke", "backend=ray", f"out={out}", *TINY, check=True)
    assert "8 complete, 0 to run" in proc.stdout
    assert attempts(out) == runs


def test_failures_are_retried_and_recorded(tmp_path):
    out = tmp_path / "bad"
    proc = icsweep("run", "sweep=smoke", "backend=ray", f"out={out}", "clamps=[none]", "seeds=[1]",
                   "axes.data.n_labels=[5]", "+axes.train.lr=[0.0003,1000000.0]",  # the second diverges
                   "resources.max_failures=1", *TINY)
    assert proc.returncode == 1, proc.stderr
    manifest = read_manifest(out)
    good, bad = manifest.trials
    assert bad.axes["lr"] == 1e6
    runs = attempts(out)
    assert [a["outcome"] for a in runs[good.id]] == ["complete"]
    assert [a["outcome"] for a in runs[bad.id]] == ["failed", "failed"]
    status = icsweep("status", str(out))
    assert "complete 1" in status.stdout and "failed 1" in status.stdout
    assert "it diverged: lower train.lr (now 1e+06)" in status.stdout


def test_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = icsweep("run", "sweep=smoke", "backend=ray", f"out={out}", "ray.address=127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("icsweep run: ray: no Ray cluster answers at 127.0.0.1:9")
    assert "drop ray.address for a local Ray" in proc.stderr
    assert not out.exists()
