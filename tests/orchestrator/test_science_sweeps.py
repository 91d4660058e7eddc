"""Sweeps that know their trials are about when the phase change happens: early stop over a whole sweep (the
phase-change table equal to a full-budget sweep's, the compute saved) and adaptive refinement of a numeric axis
(decided on stores with known phase changes; run end to end, resumed, never re-added)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from orch_helpers import icsweep

from analysis.synthetic import write_trial
from analysis import open_sweep, phase_change
from ihmodel.sweepdir import read_manifest, store_path
from orchestrator.cli import main
from orchestrator.grid import axes_of, expand
from orchestrator.refine import next_round
from orchestrator.sweep import add_refinement, prepare
from orchestrator.sweep_config import load_sweep
from orchestrator.refine import record

# ---- refinement decided on synthetic stores (known phase changes, no training) ------------------------------------


def synthetic_sweep(tmp_path, change_at, overrides=()):
    """The smoke sweep's grid with each trial's store written synthetically: `change_at(axes)` sequences."""
    sweep = load_sweep("smoke", [f"out={tmp_path / 'sweep'}", "axes.data.n_labels=[5,10]",
                                 "refine.axes=[data.n_labels]", *overrides])
    trials = expand(sweep)
    prepare(sweep, trials, axes_of(sweep), sweep.out)
    for trial in trials:
        write_trial(store_path(sweep.out, trial.id), trial.config, change_at(trial.axes), seed=trial.axes["seed"])
    return sweep


def test_a_jump_gets_its_midpoint_for_every_seed_and_only_for_its_clamp_set(tmp_path):
    # none: 8,000 vs 20,000 sequences (2.5x); perfect_match: 8,000 vs 9,000 (1.1x)
    times = {("none", 5): 8_000, ("none", 10): 20_000, ("perfect_match", 5): 8_000, ("perfect_match", 10): 9_000}
    sweep = synthetic_sweep(tmp_path, lambda axes: times[axes["clamp"], axes["n_labels"]])

    number, cells, trials = next_round(sweep, sweep.out)

    assert number == 1 and [(c.axis, c.value, c.clamp, c.pair) for c in cells] == [("data.n_labels", 7, "none", (5, 10))]
    assert sorted((t.axes["n_labels"], t.axes["clamp"], t.axes["seed"]) for t in trials) == [
        (7, "none", 1), (7, "none", 2)]
    assert {t.config.data.n_labels for t in trials} == {7}


def test_one_cell_crossed_and_its_neighbour_never_did(tmp_path):
    sweep = synthetic_sweep(tmp_path, lambda axes: None if axes["n_labels"] == 10 else 8_000,
                            ["clamps=[none]", "refine.min_ratio=100"])

    _, cells, trials = next_round(sweep, sweep.out)

    assert [(c.value, c.times[1]) for c in cells] == [(7, None)] and cells[0].times[0] > 8_000
    assert len(trials) == 2


def test_no_integer_lies_between_neighbours(tmp_path):
    sweep = synthetic_sweep(tmp_path, lambda axes: 8_000 if axes["n_labels"] == 5 else 30_000,
                            ["clamps=[none]", "axes.data.n_labels=[5,6]"])

    number, cells, trials = next_round(sweep, sweep.out)

    assert (number, cells, trials) == (1, [], [])


def test_a_float_axis_gets_the_exact_midpoint_and_recorded_rounds_are_not_decided_again(tmp_path):
    sweep = synthetic_sweep(tmp_path, lambda axes: 8_000 if axes["lr"] == 0.001 else 30_000,
                            ["clamps=[none]", "axes.data.n_labels=[5]", "+axes.train.lr=[0.001,0.002]",
                             "refine.axes=[train.lr]", "refine.rounds=1"])
    number, cells, trials = next_round(sweep, sweep.out)
    assert [c.value for c in cells] == [0.0015]

    add_refinement(sweep, trials, axes_of(sweep), sweep.out, record(cells, trials, number))

    manifest = read_manifest(sweep.out)
    assert [a.values for a in manifest.axes if a.name == "lr"] == [[0.001, 0.0015, 0.002]]  # sorted
    assert manifest.extra["refine"][0]["trials"] == [t.id for t in trials]
    assert next_round(sweep, sweep.out) is None  # refine.rounds=1 is recorded: nothing more, ever


def test_a_cell_with_a_trial_not_complete_decides_nothing(tmp_path):
    sweep = synthetic_sweep(tmp_path, lambda axes: 8_000 if axes["n_labels"] == 5 else 30_000, ["clamps=[none]"])
    trial = next(t for t in expand(sweep) if t.axes["n_labels"] == 10)
    write_trial(store_path(sweep.out, trial.id), trial.config, 30_000, fraction=0.5)  # a failed, partial trial

    assert next_round(sweep, sweep.out)[1] == []


@pytest.mark.parametrize("overrides, message", [
    (["refine.axes=[data.n_train_classes]"], "refine.axes names data.n_train_classes, not an axis of this sweep"),
    (["+axes.data.features_key=[a,b]", "refine.axes=[data.features_key]"], "has non-numeric values"),
    (["refine.axes=[data.n_labels]", "refine.min_ratio=1"], "refine.min_ratio=1.0; must be above 1"),
    (["refine.axes=[data.n_labels]", "refine.rounds=-1"], "refine.rounds=-1; give 0 or more rounds"),
])
def test_bad_refinement_is_one_line_before_any_work(tmp_path, capsys, overrides, message):
    out = tmp_path / "sweep"
    assert main(["run", "sweep=smoke", f"out={out}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


# ---- end to end, real training ----------------------------------------------------------------------------------

# A small model at a large lr: perfect_match crosses near 1,400 sequences, `none` not within 6,400.
SMALL = ["base.model.d_model=16", "base.model.n_heads=4", "base.model.d_head=4", "base.train.lr=3e-3",
         "base.train.sequences=6400", "base.train.eval_every=160", "base.train.checkpoint_every=1600",
         "base.train.flush_every=16", "base.eval.size=64", "base.data.n_train_classes=10", "local.workers=2"]


def test_a_sweep_with_early_stop_has_the_phase_change_table_of_the_full_sweep(tmp_path):
    grid = ["sweep=smoke", "axes.data.n_labels=[5]", "seeds=[1,2]", *SMALL]
    icsweep("run", *grid, f"out={tmp_path / 'full'}", check=True)
    icsweep("run", *grid, f"out={tmp_path / 'stop'}", "base.train.stop_early=true", "resources.pack_size=2",
            check=True)

    # the table the run printed and wrote (DIR/phase_change.csv), and the per-trial times behind it
    full, stopped = ((tmp_path / d / "phase_change.csv").read_text() for d in ("full", "stop"))
    assert full == stopped
    per_trial = [phase_change(open_sweep(tmp_path / d))["change_sequences"].values for d in ("full", "stop")]
    np.testing.assert_array_equal(per_trial[0], per_trial[1])  # perfect_match crosses, none does not
    assert np.isfinite(per_trial[0]).sum() == 2
    view = json.loads(icsweep("status", str(tmp_path / "stop"), "--json", check=True).stdout)
    totals = view["totals"]
    assert totals["states"]["complete"] == 4 and totals["budget"] == 4 * 6400
    assert 0 < totals["saved_sequences"] == totals["budget"] - totals["sequences"]
    assert sum(t["stopped_early"] for t in view["trials"]) >= 2


def test_refinement_end_to_end_then_a_rerun_adds_and_trains_nothing(tmp_path):
    """lr 1e-4 never crosses within 6,400 sequences, 3e-3 does: round 1 adds lr 1.55e-3 for both seeds, in a pack."""
    args = ["run", "sweep=smoke", f"out={tmp_path / 'refine'}", "clamps=[perfect_match]", "axes.data.n_labels=[5]",
            "+axes.train.lr=[0.0001,0.003]", "refine.axes=[train.lr]", "refine.rounds=1", "resources.pack_size=2",
            *[o for o in SMALL if not o.startswith("base.train.lr")]]
    first = icsweep(*args, check=True)
    assert "refine round 1: train.lr=0.00155 for perfect_match (between 0.0001 at never and 0.003 at" in first.stdout
    assert "round 1: 2 to run on local" in first.stdout

    again = icsweep(*args, check=True)

    assert "6 trials" in again.stdout and "6 complete, 0 to run" in again.stdout and "refine round" not in again.stdout
    ds = open_sweep(tmp_path / "refine")
    assert ds["lr"].values.tolist() == [0.0001, 0.00155, 0.003] and bool(ds["complete"].all())
    assert read_manifest(tmp_path / "refine").extra["refine"][0]["round"] == 1
