"""resources.pack_size: packs of trials (one process each) on the local and ray backends: grouping by pack key,
completion, a failing trial among complete pack-mates, a trial locked by another runner, bad sizes."""
from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest
import xarray as xr
from orch_helpers import TINY, attempts, icsweep

from analysis import open_sweep
from ihmodel.store import is_complete
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.backends import make_backend
from orchestrator.cli import main
from orchestrator.grid import axes_of, expand
from orchestrator.packs import make_packs
from orchestrator.run import run_sweep
from orchestrator.sweep import prepare
from orchestrator.sweep_config import load_sweep
from orchestrator.trial import execute_pack


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load().drop_attrs(deep=False)


def assert_close_statistics(expected_dir: Path, actual_dir: Path):
    """Every trial's variables and coordinates equal up to the float rounding of differently batched sums (a
    wrong seed, clamp or resume point differs by far more)."""
    for tid in read_manifest(expected_dir).trial_ids():
        try:
            xr.testing.assert_allclose(open_store(store_path(expected_dir, tid)),
                                       open_store(store_path(actual_dir, tid)), rtol=1e-3, atol=1e-4)
        except AssertionError as error:
            raise AssertionError(f"trial {tid}: packed statistics differ from one trial per process") from error


def reference(tmp_path: Path, *overrides: str) -> Path:
    """The same sweep with one trial per process, in this process."""
    out = tmp_path / "reference"
    assert run_sweep(load_sweep("smoke", [f"out={out}", "local.workers=0", *TINY, *overrides]), quiet=True) == 0
    return out


def packs_of(sweep_dir: Path) -> dict[str, list[str]]:
    """pack id -> its trials, from the attempts that ended complete."""
    packs: dict[str, list[str]] = {}
    for tid, runs in attempts(sweep_dir).items():
        for run in runs:
            if run["outcome"] == "complete":
                packs.setdefault(run["pack"], []).append(tid)
    return packs


def test_grouping_follows_pack_key_in_manifest_order(tmp_path):
    sweep = load_sweep("smoke", [f"out={tmp_path}", "seeds=[1,2,3]", "resources.pack_size=4", *TINY])
    trials = expand(sweep)
    prepare(sweep, trials, axes_of(sweep), tmp_path)
    packs = make_backend(sweep, tmp_path).packs(list(reversed(trials)))
    by_id = {t.id: t for t in trials}
    order = read_manifest(tmp_path).trial_ids()
    n_labels = [by_id[p.trial_ids[0]].axes["n_labels"] for p in packs]
    assert ([len(p.trials) for p in packs], n_labels) == ([4, 4, 2, 2], [5, 10, 5, 10])  # 6 trials per n_labels
    for value in (5, 10):  # each n_labels value's trials in manifest order
        ids = [t for p in packs for t in p.trial_ids if by_id[t].axes["n_labels"] == value]
        assert ids == [t for t in order if by_id[t].axes["n_labels"] == value]
    for pack in packs:
        assert len({by_id[t].axes["n_labels"] for t in pack.trial_ids}) == 1  # n_labels changes shapes
        assert pack.id == f"pack-{pack.trial_ids[0]}"
    first = [by_id[t].axes for t in packs[0].trial_ids]
    assert {a["clamp"] for a in first} == {"none", "perfect_match"} and {a["seed"] for a in first} == {1, 2, 3}
    ones = make_packs(trials, 1, threads=1, device="cpu")
    assert [p.id for p in ones] == [t.id for t in trials]  # a pack of one is named by its trial


def test_auto_pack_size_is_measured_per_group(tmp_path):
    """auto: K = ihmodel.pack.auto_pack_size of each group's first trial (a measurement, so not pinned here)."""
    sweep = load_sweep("smoke", [f"out={tmp_path}", "seeds=[1,2,3]", "resources.pack_size=auto", *TINY])
    trials = expand(sweep)
    packs = make_packs(trials, "auto", threads=1, device="cpu")
    assert sorted(t.id for p in packs for t in p.trials) == sorted(t.id for t in trials)
    for value in (5, 10):  # each group: packs of K, the last one of at most K
        sizes = [len(p.trials) for p in packs if p.trials[0].axes["n_labels"] == value]
        assert all(len({t.axes["n_labels"] for t in p.trials}) == 1 for p in packs)
        assert sizes[:-1] == [sizes[0]] * (len(sizes) - 1) and 1 <= sizes[-1] <= sizes[0]


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "true", "many", "[2]", "null"])
def test_bad_pack_size_is_one_line(value, capsys):
    assert main(["run", "sweep=smoke", f"resources.pack_size={value}", "out=/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("icsweep run: resources.pack_size=")
    assert "give an int >= 1" in err and "resources.pack_size=auto" in err
    assert not Path("/nonexistent/never").exists()


def test_pack_size_2_on_a_process_pool(tmp_path):
    expected = reference(tmp_path)
    out = tmp_path / "packed"
    proc = icsweep("run", "sweep=smoke", "backend=local", f"out={out}", "resources.pack_size=2", *TINY, check=True)
    assert "8 to run on local in 4 packs of 2" in proc.stdout and "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    runs = attempts(out)
    assert {tid: [a["outcome"] for a in r] for tid, r in runs.items()} == {
        tid: ["complete"] for tid in manifest.trial_ids()}
    packs = packs_of(out)
    assert sorted(len(m) for m in packs.values()) == [2, 2, 2, 2]
    assert all((out / "logs" / f"{pack}.log").is_file() for pack in packs)
    assert_close_statistics(expected, out)
    ds = open_sweep(out)
    assert dict(ds.sizes)["seed"] == 2 and dict(ds.sizes)["clamp"] == 2 and dict(ds.sizes)["n_labels"] == 2

    proc = icsweep("run", "sweep=smoke", "backend=local", f"out={out}", "resources.pack_size=2", *TINY, check=True)
    assert "8 complete, 0 to run" in proc.stdout
    assert attempts(out) == runs


def test_pack_size_4_on_local_ray(tmp_path):
    pytest.importorskip("ray.tune")
    out = tmp_path / "packed"
    proc = icsweep("run", "sweep=smoke", "backend=ray", f"out={out}", "resources.pack_size=4", "ray.num_cpus=2",
                   *TINY, check=True)
    assert "8 to run on ray in 2 packs of 4" in proc.stdout and "complete 8" in proc.stdout
    manifest = read_manifest(out)
    assert all(is_complete(store_path(out, t.id)) for t in manifest.trials)
    runs = attempts(out)
    assert all([a["outcome"] for a in runs[tid]] == ["complete"] for tid in manifest.trial_ids())
    assert {a["backend"] for r in runs.values() for a in r} == {"ray"}
    assert all(a.get("ray_node") for r in runs.values() for a in r)
    packs = packs_of(out)
    assert sorted(len(m) for m in packs.values()) == [4, 4]
    n_labels = {t.id: t.axes["n_labels"] for t in manifest.trials}
    assert all(len({n_labels[t] for t in members}) == 1 for members in packs.values())
    assert open_sweep(out).sizes["seed"] == 2


def test_a_failing_trial_leaves_its_pack_mates_complete(tmp_path):
    """perfect_match with head 9 of 8 fails when its clamps are built; the none trial of its pack completes; the
    pack's retry trains only the failed trial; its .error is one line naming the pack's log."""
    out = tmp_path / "bad"
    proc = icsweep("run", "sweep=smoke", f"out={out}", "seeds=[1]", "axes.data.n_labels=[5]", "local.workers=1",
                   "resources.pack_size=2", "resources.max_failures=1",
                   "+per_clamp.perfect_match.clamp.active_head=[1,9]", *TINY)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "in 1 packs of 2" in proc.stdout
    good, bad = read_manifest(out).trials
    assert (good.axes["clamp"], bad.axes["clamp"]) == ("none", "perfect_match")
    runs = attempts(out)
    assert [a["outcome"] for a in runs[good.id]] == ["complete"]
    assert [a["outcome"] for a in runs[bad.id]] == ["failed", "failed"]
    assert [a["pack_trials"] for a in runs[bad.id]] == [2, 1]  # the retry ran the failed trial alone
    assert is_complete(store_path(out, good.id)) and not is_complete(store_path(out, bad.id))
    log = out / "logs" / f"pack-{good.id}.log"
    error = (out / "logs" / f"{bad.id}.error").read_text()
    assert error.count("\n") == 1
    assert error.startswith("ValueError: ") and "head 9 out of range; heads are 0..7" in error
    assert error.endswith(f"(log: {log})\n")
    assert not (out / "logs" / f"{good.id}.error").exists()
    assert "Traceback" in log.read_text() and f"trial {bad.id} failed" in log.read_text()
    status = icsweep("status", str(out))
    assert status.returncode == 1
    assert "complete 1  running 0  failed 1  pending 0" in status.stdout
    assert "head 9 out of range" in status.stdout


def test_a_trial_locked_by_another_runner_is_deferred_not_raced(tmp_path):
    """A pack whose trial is held by another runner (an orphan) trains its other trial first, then waits for the
    lock and finds the held trial complete: it never runs twice at once, and only once in all."""
    sweep = load_sweep("smoke", [f"out={tmp_path}", "seeds=[1,2]", "clamps=[none]", "axes.data.n_labels=[5]", *TINY])
    held, free = trials = expand(sweep)
    prepare(sweep, trials, axes_of(sweep), tmp_path)
    lock = open(tmp_path / "logs" / f"{held.id}.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    result = {}
    runner = threading.Thread(target=lambda: result.update(results=execute_pack(
        tmp_path, [held.id, free.id], [held.config_yaml, free.config_yaml], threads=1, device="cpu",
        redirect=False)))
    runner.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not is_complete(store_path(tmp_path, free.id)):
            time.sleep(0.1)
        assert is_complete(store_path(tmp_path, free.id))
        time.sleep(0.5)
        assert runner.is_alive() and not store_path(tmp_path, held.id).exists()  # waiting, not training it
        from ihmodel import run_trial

        config = held.config
        config.device = "cpu"
        run_trial(config, store_path(tmp_path, held.id))  # the "orphan" finishes it
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        runner.join(60)
    assert [r["outcome"] for r in result["results"]] == ["already complete", "complete"]
    assert list(attempts(tmp_path)) == [free.id]
    assert [a["pack_trials"] for a in attempts(tmp_path)[free.id]] == [1]
