"""The compiled training forward computes what the eager one does (to float tolerance)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

from ihmodel.compose import compose_trial
from ihmodel.config import ClampConfig, InterventionConfig
from ihmodel.store import checkpoint_path
from ihmodel.train import compiled, run_trial

TINY = ["train.sequences=640", "train.eval_every=320", "train.checkpoint_every=320", "train.flush_every=8",
        "eval.size=32", "data.n_train_classes=10"]


def graft_from(tmp_path) -> ClampConfig:
    """Layer 1's output taken from another trial's checkpoint: a clamp that runs a second model in the forward."""
    donor = run_trial(compose_trial(TINY + ["seed=9"]), tmp_path / "donor.zarr")
    return ClampConfig(name="graft", interventions=[InterventionConfig(kind="graft",
                                                                       checkpoint=str(checkpoint_path(donor)))])


@pytest.mark.parametrize("clamp", ["none", "perfect_l1_and_copy", graft_from])
def test_compiled_statistics_match_eager(tmp_path, clamp):
    stores = {}
    for compile in (False, True):
        if callable(clamp):
            config = replace(compose_trial(TINY + [f"train.compile={compile}"]), clamp=clamp(tmp_path))
        else:
            config = compose_trial(TINY + [f"clamp={clamp}", f"train.compile={compile}"])
        stores[compile] = xr.open_zarr(run_trial(config, tmp_path / f"{compile}.zarr"), consolidated=False)
    eager, compiled = stores[False], stores[True]
    for name in eager.data_vars:
        np.testing.assert_allclose(compiled[name].values, eager[name].values, rtol=2e-3, atol=2e-4, err_msg=name)


def test_default_compiles_only_long_trials():
    assert compose_trial(["train.sequences=1000000"]).train.compiled
    assert not compose_trial(["train.sequences=20000"]).train.compiled
    assert not compose_trial(["train.sequences=1000000", "train.compile=false"]).train.compiled


def test_compiled_functions_keep_compiling_new_configs_past_torchs_default_limit():
    """A reused Ray actor trains trial after trial in one process, each distinct config adding a compiled entry:
    past torch's default of 8 a function would silently run eagerly, about 3x slower, for every later trial."""
    class Config:
        name = ""

    config = Config()

    def step(x):
        return x * 2 if config.name else x  # guarded on the name's value, as a trial's forward is on its config

    fn = compiled(step, torch.device("cpu"))
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # an error rather than a silent fallback
        for i in range(12):
            config.name = f"config {i}"
            assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
