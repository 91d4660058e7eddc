"""The compiled training forward computes what the eager one does (to float tolerance)."""
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from ihmodel.compose import compose_trial
from ihmodel.config import ClampConfig, InterventionConfig
from ihmodel.store import checkpoint_path
from ihmodel.train import run_trial

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
