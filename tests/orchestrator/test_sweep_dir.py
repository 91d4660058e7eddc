"""The sweep directory: manifest before any trial, stable ids, merge on rerun, refusal of a foreign directory."""
from __future__ import annotations

import json

import pytest

from ihmodel.config import trial_id
from ihmodel.sweepdir import read_manifest
from orchestrator.grid import axes_of, expand
from orchestrator.sweep import prepare
from orchestrator.sweep_config import load_sweep


def prepared(tmp_path, *overrides, name="smoke"):
    sweep = load_sweep(name, [f"out={tmp_path}", *overrides])
    trials = expand(sweep)
    return sweep, trials, prepare(sweep, trials, axes_of(sweep), tmp_path)


def test_manifest_names_every_trial_before_any_runs(tmp_path):
    sweep, trials, manifest = prepared(tmp_path)
    actual = read_manifest(tmp_path)
    assert actual.sweep == "smoke"
    assert [a.name for a in actual.axes] == ["n_labels", "clamp", "seed"]
    assert [a.key for a in actual.axes] == ["data.n_labels", "clamp", "seed"]
    assert actual.trial_ids() == [t.id for t in trials]
    assert actual.trials[0].axes == trials[0].axes
    assert "name: smoke" in actual.sweep_config_yaml
    assert not any((tmp_path / "trials").iterdir())


def test_ids_ignore_backend_resources_and_paths(tmp_path):
    ids = [t.id for t in expand(load_sweep("smoke"))]
    other = [t.id for t in expand(load_sweep("smoke", [
        "backend=ray", "out=/elsewhere", "resources.cpus_per_trial=2", "resources.gpus_per_trial=0.5",
        "base.device=cuda", "base.threads=4", "base.store=/x.zarr", "submitit.partition=p", "local.workers=3"]))]
    assert ids == other
    assert len(set(ids)) == len(ids)
    trial = expand(load_sweep("smoke"))[0]
    assert trial.id == trial_id(trial.config)
    changed = [t.id for t in expand(load_sweep("smoke", ["base.train.lr=2e-5"]))]
    assert not set(changed) & set(ids)


def test_rerun_merges_new_seeds_and_axes(tmp_path):
    _, first, _ = prepared(tmp_path)
    _, second, manifest = prepared(tmp_path, "seeds=[2,3]", "+axes.data.burstiness=[1]")
    old, new = {t.id for t in first}, {t.id for t in second}
    assert len(old & new) == 4  # seed 2 cells are the same trials; burstiness=1 is the default
    assert manifest.trial_ids()[:8] == [t.id for t in first]
    assert set(manifest.trial_ids()) == old | new
    axes = {a.name: a.values for a in manifest.axes}
    assert axes["seed"] == [1, 2, 3]
    assert axes["burstiness"] == [1]
    assert [a.name for a in manifest.axes] == ["n_labels", "burstiness", "clamp", "seed"]
    assert all(t.axes["burstiness"] == 1 for t in manifest.trials)


@pytest.mark.parametrize("overrides, match", [
    (["base.train.sequences=1234"], r"holds sweep 'smoke' with another base config \(train.sequences: 32000 -> 1234\)"),
])
def test_refuses_a_different_base(tmp_path, overrides, match):
    prepared(tmp_path)
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(ValueError, match=match):
        prepared(tmp_path, *overrides)
    assert (tmp_path / "manifest.json").read_text() == before


def test_refuses_another_sweep_and_foreign_dirs(tmp_path):
    prepared(tmp_path / "a")
    before = (tmp_path / "a" / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"holds sweep 'smoke', not 'paper_fig5b'; choose a new out=DIR"):
        prepared(tmp_path / "a", name="paper_fig5b")
    assert (tmp_path / "a" / "manifest.json").read_text() == before
    foreign = tmp_path / "b"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"is not empty \(thesis.tex\) and holds no sweep manifest"):
        prepared(foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_manifest_is_json_analysis_can_read(tmp_path):
    prepared(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert {"sweep", "sweep_config_yaml", "axes", "trials", "format_version", "extra"} <= set(raw)


def test_a_manifest_from_before_a_new_trial_key_resumes(tmp_path):
    """A key added to the trial schema since a manifest was written (train.stop_early) counts as its default."""
    prepared(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for key in [k for k in manifest["extra"]["base"] if k.startswith("train.stop_")]:
        del manifest["extra"]["base"][key]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    _, trials, merged = prepared(tmp_path)

    assert merged.trial_ids() == [t.id for t in trials]
    with pytest.raises(ValueError, match=r"train.stop_early: False -> True"):
        prepared(tmp_path, "base.train.stop_early=true")
