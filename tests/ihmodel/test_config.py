"""The trial config: trial id, derived seeds, YAML round trip, validation, Hydra composition."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from ihmodel.compose import clamp_set_names, compose_trial
from ihmodel.config import (STAT_NAMES, ClampConfig, DataConfig, EvalConfig, InterventionConfig, ModelConfig,
                            TrainConfig, TrialConfig, derive_seed, from_dict, from_yaml, to_yaml, trial_id)

# ---- trial id ---------------------------------------------------------------------------------------------------

ID_SCRIPT = """
import json, sys
from ihmodel.compose import compose_trial
from ihmodel.config import TrialConfig, trial_id
print(json.dumps([trial_id(TrialConfig()), trial_id(compose_trial(sys.argv[1:]))]))
"""


def test_trial_id_is_stable_across_processes():
    overrides = ["clamp=perfect_match", "data.n_labels=10", "seed=7"]
    expected = [trial_id(TrialConfig()), trial_id(compose_trial(overrides))]

    ids = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", ID_SCRIPT, *overrides], capture_output=True, text=True,
                              env=env, timeout=120, check=True)
        ids.append(json.loads(done.stdout))

    assert ids == [expected, expected]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in expected)


def test_trial_id_ignores_where_and_how_a_trial_runs():
    base = TrialConfig()

    for changed in (replace(base, device="cpu"), replace(base, threads=4), replace(base, store="/x/t.zarr")):
        assert trial_id(changed) == trial_id(base)


@pytest.mark.parametrize("overrides", [
    ["seed=6"], ["seed_data=1"], ["seed_eval=2"],
    ["clamp=noclamp"], ["clamp=perfect_match"], ["clamp=perfect_match", "clamp.active_head=[1,5]"],
    ["data.n_labels=10"], ["data.n_train_classes=100"], ["data.zipf_exponent=1.0"], ["data.noise=0.1"],
    ["data.burstiness=2", "data.context_len=4"], ["data.seed_split=21"],
    ["model.d_model=32"], ["model.positional=learned"], ["train.lr=1e-4"], ["train.sequences=600000"],
    ["eval.size=500"], ["stats=[loss,acc]"],
])
def test_trial_id_changes_with_what_a_trial_computes(overrides):
    assert trial_id(compose_trial(overrides)) != trial_id(compose_trial([]))


def test_trial_id_of_derived_seeds_equals_the_same_seeds_given():
    derived = TrialConfig(seed=5)
    explicit = TrialConfig(seed=5, seed_data=derived.data_seed, seed_eval=derived.eval_seed)

    assert trial_id(explicit) == trial_id(derived)


def test_composed_defaults_equal_the_dataclass_defaults():
    assert compose_trial([]) == TrialConfig()
    assert trial_id(compose_trial([])) == trial_id(TrialConfig())


# ---- seeds ------------------------------------------------------------------------------------------------------

def test_derived_seeds_differ_by_purpose_and_by_init_seed():
    seeds = {(seed, purpose): derive_seed(seed, purpose) for seed in (0, 5, 6) for purpose in ("data", "eval")}

    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2 ** 31 for s in seeds.values())
    assert derive_seed(5, "data") == derive_seed(5, "data")


def test_data_and_eval_seeds_are_derived_unless_given():
    config = TrialConfig(seed=5)

    assert (config.data_seed, config.eval_seed) == (derive_seed(5, "data"), derive_seed(5, "eval"))
    assert config.data_seed != config.eval_seed != config.seed
    assert (TrialConfig(seed_data=0, seed_eval=1).data_seed, TrialConfig(seed_data=0, seed_eval=1).eval_seed) == (0, 1)
    assert TrialConfig(seed=6).data_seed != config.data_seed


# ---- YAML -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", clamp_set_names())
def test_yaml_round_trip_of_each_clamp_set(name):
    config = compose_trial([f"clamp={name}"])

    assert from_yaml(to_yaml(config)) == config


def test_yaml_round_trip_of_non_default_values():
    config = TrialConfig(
        seed=6, seed_data=1, seed_eval=2, device="cpu", threads=2, store="/tmp/t.zarr",
        data=DataConfig(features="/data/omniglot.h5", n_labels=10, burstiness=2, context_len=4, zipf_exponent=0.5,
                        noise=0.1),
        model=ModelConfig(d_mlp=128, positional="learned", use_hook_result=True),
        train=TrainConfig(sequences=1000, lr=1e-4, flush_every=8),
        eval=EvalConfig(size=10, induction_set="all_train"),
        clamp=ClampConfig(name="custom", active_head=[1, 5], interventions=[
            InterventionConfig(kind="constant", hook="blocks.0.attn.hook_z", heads=[1, 2], positions=[0, 4], value=0.5),
            InterventionConfig(kind="graft", checkpoint="/x/other.ckpt.pt")]),
        stats=["loss", "eval"],
    )

    again = from_yaml(to_yaml(config))

    assert again == config
    assert trial_id(again) == trial_id(config)
    assert isinstance(again.clamp.interventions[0], InterventionConfig)


def test_from_dict_fills_defaults_and_checks_the_schema():
    config = from_dict({"data": {"n_labels": 10}, "clamp": {"interventions": [{"kind": "zero_value", "layer": 1}]}})

    assert config.data.n_labels == 10 and config.data.n_train_classes == 50
    assert config.clamp.interventions == [InterventionConfig(kind="zero_value", layer=1)]
    with pytest.raises(KeyError, match=r"Key 'bogus' not in 'DataConfig'"):
        from_dict({"data": {"bogus": 1}})


# ---- validation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: DataConfig(n_labels=1), r"data.n_labels=1; needs at least 2 labels to form a pair"),
    (lambda: DataConfig(burstiness=2), r"data.context_len=2, data.burstiness=2; .* set context_len = 2\*burstiness"),
    (lambda: DataConfig(context_len=3), r"data.context_len=3, data.burstiness=1"),
    (lambda: DataConfig(burstiness=0, context_len=0), r"data.context_len=0, data.burstiness=0"),
    (lambda: DataConfig(val_pair_fraction=1.0), r"data.val_pair_fraction=1.0; must lie in \(0, 1\)"),
    (lambda: DataConfig(n_train_classes=1), r"data.n_train_classes=1; needs at least 2"),
    (lambda: DataConfig(n_train_classes=1600), r"exceed data.synthetic_classes=1623"),
    (lambda: ModelConfig(positional="alibi"), r"model.positional='alibi'; choose one of rope, learned, none"),
    (lambda: ModelConfig(d_head=7), r"model.d_head=7; rotary embedding needs an even head dimension"),
    (lambda: TrainConfig(batch_size=0), r"train.batch_size=0; must be positive"),
    (lambda: TrainConfig(eval_every=-1), r"train.eval_every=-1; must be positive"),
    (lambda: EvalConfig(size=0), r"eval.size=0; must be positive"),
    (lambda: TrialConfig(stats=["loss", "bogus"]), r"stats: unknown \['bogus'\]; choose from " + ", ".join(STAT_NAMES)),
    (lambda: TrialConfig(threads=0), r"threads=0; must be at least 1"),
])
def test_bad_values_are_one_line_value_errors(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()

    assert "\n" not in str(error.value)


def test_odd_head_dimension_is_fine_without_rotary():
    assert ModelConfig(d_head=7, positional="learned").d_head == 7


@pytest.mark.parametrize("overrides, message", [
    (["data.n_labels=1"], r"data.n_labels=1; needs at least 2 labels"),
    (["data.burstiness=2"], r"set context_len = 2\*burstiness"),
    (["stats=[loss,bogus]"], r"stats: unknown \['bogus'\]"),
    (["data.bogus=1"], r"bad override: Key 'bogus' not in 'DataConfig'"),
    (["train.lr=fast"], r"bad override: Value 'fast' of type 'str' could not be converted to Float"),
    (["clamp=bogus"], r"Could not find 'clamp/bogus'; clamp sets: " + ", ".join(clamp_set_names())),
])
def test_bad_overrides_are_one_line_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        compose_trial(overrides)

    assert "\n" not in str(error.value)


def test_unknown_induction_set_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"eval.induction_set='bogus'; choose one of fsl_train, fsl_val_rl, "
                                         r"fsl_train_valex, fsl_test_class, all_train"):
        EvalConfig(induction_set="bogus")
