"""A store written by real training (ihmodel.run_trial) opens and analyses like the generated ones."""
import pytest
import xarray as xr

from analysis import open_trials, phase_change, phase_change_table
from ihmodel.config import DataConfig, EvalConfig, TrainConfig, TrialConfig


def test_a_trained_store_opens_with_its_own_values(tmp_path):
    pytest.importorskip("torch")
    from ihmodel import run_trial

    config = TrialConfig(train=TrainConfig(sequences=3_200, batch_size=32, eval_every=640, flush_every=32),
                         eval=EvalConfig(size=100), data=DataConfig(synthetic_classes=200))
    run_trial(config, tmp_path / "trial.zarr")

    ds = open_trials([tmp_path / "trial.zarr"])

    expected = xr.open_zarr(tmp_path / "trial.zarr", consolidated=False).load()
    assert ds["complete"].values.tolist() == [True]
    assert ds["eval_sequences"].values.tolist() == [0, 640, 1280, 1920, 2560, 3200]
    for name in expected.data_vars:
        xr.testing.assert_equal(expected[name].variable, ds[name].isel(trial=0).variable.load())
    pc = phase_change(ds)
    assert pc["never"].values.tolist() == [True]  # 3,200 sequences are far too few for a phase change
    assert phase_change_table(ds)["n_never"].tolist() == [1]
