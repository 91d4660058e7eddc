"""The compiled training forward computes what the eager one does (to float tolerance)."""
import numpy as np
import pytest
import xarray as xr

from ihmodel.compose import compose_trial
from ihmodel.train import run_trial

TINY = ["train.sequences=640", "train.eval_every=320", "train.checkpoint_every=320", "train.flush_every=8",
        "eval.size=32", "data.n_train_classes=10"]


@pytest.mark.parametrize("clamp", ["none", "perfect_l1_and_copy"])
def test_compiled_statistics_match_eager(tmp_path, clamp):
    stores = {}
    for compile in (False, True):
        config = compose_trial(TINY + [f"clamp={clamp}", f"train.compile={compile}"])
        stores[compile] = xr.open_zarr(run_trial(config, tmp_path / f"{compile}.zarr"), consolidated=False)
    eager, compiled = stores[False], stores[True]
    for name in eager.data_vars:
        np.testing.assert_allclose(compiled[name].values, eager[name].values, rtol=2e-3, atol=2e-4, err_msg=name)


def test_default_compiles_only_long_trials():
    assert compose_trial(["train.sequences=1000000"]).train.compiled
    assert not compose_trial(["train.sequences=20000"]).train.compiled
    assert not compose_trial(["train.sequences=1000000", "train.compile=false"]).train.compiled
