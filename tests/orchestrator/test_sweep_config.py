"""Sweep configs: the shipped sweeps compose, overrides reach every part, bad input fails in one line."""
from __future__ import annotations

import pytest

from ihmodel.compose import clamp_set_names
from orchestrator.grid import axes_of, expand
from orchestrator.sweep_config import expand_ranges, load_sweep, parse_seeds, sweep_names

FIG5B = ["noclamp", "perfect_prev_tok_attn_single", "perfect_l1", "perfect_match", "perfect_copy",
         "perfect_l1_and_copy"]


def axis_values(sweep):
    return {a.name: a.values for a in axes_of(sweep)}


def test_shipped_sweeps():
    assert {"smoke", "paper_fig5b", "paper_fig6", "paper_seeds"} <= set(sweep_names())
    smoke = load_sweep("smoke")
    values = axis_values(smoke)
    assert len(expand(smoke)) >= 8
    assert [len(v) for v in values.values()] == [2, 2, 2]
    assert axis_values(load_sweep("paper_fig5b"))["clamp"] == FIG5B
    fig6 = load_sweep("paper_fig6")
    values = axis_values(fig6)
    assert values["n_train_classes"] == [50, 100, 200]
    assert values["n_labels"] == [5, 10, 15]
    assert values["clamp"] == ["noclamp", "perfect_l1", "perfect_match", "perfect_l1_and_copy"]
    assert len(expand(fig6)) == 36 * len(values["seed"])
    seeds = load_sweep("paper_seeds")
    assert axis_values(seeds)["clamp"] == ["none"] and len(seeds.seeds) >= 10


def test_fig6_budgets_per_clamp_set():
    trials = expand(load_sweep("paper_fig6", ["seeds=[5]"]))
    budgets = {t.axes["clamp"]: t.config.train.sequences for t in trials}
    assert budgets == {"noclamp": 2_000_000, "perfect_l1": 300_000, "perfect_match": 300_000,
                       "perfect_l1_and_copy": 300_000}


def test_overrides_reach_axes_base_seeds_and_resources():
    sweep = load_sweep("smoke", [
        "axes.data.n_labels=[5,10,15]", "+axes.data.n_train_classes=[10,20]", "clamps=[noclamp]",
        "seeds=range(0,3)", "base.train.sequences=999", "backend=ray", "resources.cpus_per_trial=2",
        "resources.gpus_per_trial=0.25", "resources.max_concurrent=3", "out=somewhere", "submitit.partition=gpu",
    ])
    assert axis_values(sweep) == {"n_labels": [5, 10, 15], "n_train_classes": [10, 20], "clamp": ["noclamp"],
                                  "seed": [0, 1, 2]}
    trials = expand(sweep)
    assert len(trials) == 18
    assert {t.config.train.sequences for t in trials} == {999}
    assert (sweep.backend, str(sweep.out), sweep.submitit.partition) == ("ray", "somewhere", "gpu")
    assert (sweep.resources.cpus_per_trial, sweep.resources.gpus_per_trial, sweep.resources.max_concurrent) == (
        2, 0.25, 3)


def test_seed_forms():
    assert parse_seeds([3, 1]) == [3, 1]
    assert parse_seeds("2:5") == [2, 3, 4]
    assert parse_seeds(7) == [7]
    assert expand_ranges("seeds=range(0,6,2)") == "seeds=[0,2,4]"
    assert load_sweep("smoke", ["seeds=0:3"]).seeds == [0, 1, 2]


def test_clamp_sets_mean_what_train_means():
    """A clamp set in a sweep is the same composed config as `icsweep train clamp=<name>`."""
    from ihmodel.compose import compose_trial

    sweep = load_sweep("smoke", ["clamps=[noclamp,perfect_l1_and_copy]", "seeds=[5]", "axes.data.n_labels=[5]"])
    for trial in expand(sweep):
        base = sweep.cfg.base
        expected = compose_trial([
            f"clamp={trial.axes['clamp']}", "seed=5", "data.n_labels=5",
            f"data.n_train_classes={base.data.n_train_classes}", f"train.sequences={base.train.sequences}",
            f"train.lr={base.train.lr}",
            f"train.eval_every={base.train.eval_every}", f"train.checkpoint_every={base.train.checkpoint_every}",
            f"train.flush_every={base.train.flush_every}", f"eval.size={base.eval.size}",
        ])
        assert trial.config == expected


@pytest.mark.parametrize("sweep, overrides, match", [
    ("nope", [], r"unknown sweep 'nope'; sweeps: .*smoke"),
    ("smoke", ["clamps=[perfect_lol]"], r"unknown clamp set perfect_lol; clamp sets: .*perfect_match"),
    ("smoke", ["+axes.data.n_label=[1,2]"], r"unknown axis key 'data.n_label'; keys there: .*data.n_labels"),
    ("smoke", ["+axes.train.lrr=[1]"], r"unknown axis key 'train.lrr'"),
    ("smoke", ["+axes.threads=[1,2]"], r"not a data-property axis"),
    ("smoke", ["seeds=[]"], r"empty grid: seeds has no values"),
    ("smoke", ["axes.data.n_labels=[]"], r"empty grid: axes.data.n_labels has no values"),
    ("smoke", ["clamps=[]"], r"empty grid: clamps has no values"),
    ("smoke", ["seeds=[1,1]"], r"seeds lists 1 twice"),
    ("smoke", ["backend=slurm"], r"backend='slurm'; choose one of local, ray, submitit"),
    ("smoke", ["base.train.sequencs=3"], r"bad sweep override: Key 'sequencs' not in 'TrainConfig'"),
    ("smoke", ["bogus=1"], r"bad sweep override: .*bogus"),
    ("smoke", ["axes.data.n_labels=[1,5]"], r"n_labels=1; needs at least 2"),
    ("smoke", ["seeds=abc"], r"seeds='abc'; give a list"),
])
def test_bad_input_is_one_line(sweep, overrides, match):
    with pytest.raises(ValueError, match=match) as info:
        sweep_obj = load_sweep(sweep, overrides)
        expand(sweep_obj)
    assert "\n" not in str(info.value)


def test_clamp_sets_listed_match_ihmodel():
    assert set(FIG5B) | {"none"} <= set(clamp_set_names())


def test_a_sweep_yaml_of_ones_own(tmp_path):
    """sweep=path/to/file.yaml: the user's own sweep, composed like the shipped ones (clamp group included); a key
    tied to an axis (context_len = 2 x burstiness) through the icsweep.mul resolver."""
    path = tmp_path / "mine.yaml"
    text = ("defaults:\n  - sweep_schema\n  - _self_\n"
            "name: mine\nbase:\n  train: {sequences: 640}\n  data: {context_len: CONTEXT}\n"
            "axes:\n  data:\n    burstiness: [1, 2]\n"
            "clamps: [noclamp, perfect_copy]\nseeds: '0:2'\n")
    path.write_text(text.replace("CONTEXT", "'${icsweep.mul:2,${data.burstiness}}'"))
    sweep = load_sweep(str(path))
    assert sweep.name == "mine"
    assert axis_values(sweep) == {"burstiness": [1, 2], "clamp": ["noclamp", "perfect_copy"], "seed": [0, 1]}
    trials = expand(sweep)
    assert {(t.config.data.burstiness, t.config.data.context_len) for t in trials} == {(1, 2), (2, 4)}
    assert all(t.config.clamp.name == t.axes["clamp"] for t in trials)

    path.write_text(text.replace("CONTEXT", "2"))
    with pytest.raises(ValueError, match=r"data.context_len=2, data.burstiness=2"):
        expand(load_sweep(str(path)))  # the trial schema's own check, one line
    with pytest.raises(ValueError, match=r"sweep=.*nope.yaml: no such file"):
        load_sweep(str(tmp_path / "nope.yaml"))
