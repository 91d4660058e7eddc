import json

import numpy as np
import pytest
import zarr

from analysis.storeio import ArrayMeta, CorruptStoreError, Read, _fast_plan, config_from_yaml, read_info, read_many
from analysis.synthetic import small_config, with_value, write_trial
from ihmodel.config import ClampConfig, InterventionConfig, from_yaml, to_yaml, trial_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A running trial: 1,000 of 2,000 steps in 256-step chunks, the last chunk partly written."""
    path = tmp_path_factory.mktemp("store") / "trial.zarr"
    write_trial(path, small_config(), 20_000.0, fraction=0.5)
    return path


SELECTIONS = [
    (slice(None),), (slice(0, 1),), (slice(999, 1000),), (slice(250, 700),), (np.array([3, 300, 999]),),
    (np.array([999, 0, 512]),), (slice(10, 10),),
]


@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_direct_reads_agree_with_zarr(store, selection):
    info = read_info(store)
    for name in ("loss", "step", "sequences"):
        expected = zarr.open_array(str(store / name), mode="r").get_orthogonal_selection(selection)
        (actual,), = read_many([Read(store, name, [selection], info.arrays[name])])
        np.testing.assert_array_equal(actual, expected)
        assert actual.dtype == expected.dtype


def test_direct_reads_of_inner_dims_agree_with_zarr(store):
    info = read_info(store)
    selection = (slice(100, 400), np.array([1]), np.array([7, 0, 3]))
    expected = zarr.open_array(str(store / "induction_score"), mode="r").get_orthogonal_selection(selection)

    (actual,), = read_many([Read(store, "induction_score", [selection], info.arrays["induction_score"])])

    np.testing.assert_array_equal(actual, expected)


def test_unwritten_chunks_read_as_the_fill_value(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(10,), chunks=(4,), dtype="float32",
                              fill_value=np.nan, dimension_names=["step"])
    array[0:4] = np.arange(4)
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    plan = _fast_plan(meta)
    assert plan is not None

    (actual,), = read_many([Read(tmp_path, "a.zarr", [(slice(None),)], ArrayMeta(("step",), (10,), "float32", {},
                                                                                  plan))])

    np.testing.assert_array_equal(actual, [0, 1, 2, 3] + [np.nan] * 6)


def test_other_layouts_go_through_zarr(tmp_path):
    array = zarr.create_array(str(tmp_path / "b.zarr"), shape=(6,), chunks=(6,), dtype="float32",
                              compressors=[zarr.codecs.GzipCodec()])
    array[:] = np.arange(6)
    meta = json.loads((tmp_path / "b.zarr" / "zarr.json").read_text())
    assert _fast_plan(meta) is None

    (actual,), = read_many([Read(tmp_path, "b.zarr", [(slice(1, 4),)], ArrayMeta(("x",), (6,), "float32", {}))])

    np.testing.assert_array_equal(actual, [1, 2, 3])


def test_config_from_yaml_is_from_yaml(tmp_path):
    configs = [
        small_config(),
        with_value(small_config(), "data.noise", 0.1),
        with_value(small_config(), "clamp", ClampConfig(name="x", interventions=[
            InterventionConfig(kind="constant", layer=1, heads=[0, 2], value=3.0)])),
    ]
    for config in configs:
        text = to_yaml(config)
        assert config_from_yaml(text) == from_yaml(text)
        assert trial_id(config_from_yaml(text)) == trial_id(config)
    # An int where a float belongs hashes as the float, as OmegaConf makes it.
    text = to_yaml(small_config()).replace("lr: 1.0e-05", "lr: 1").replace("noise: 0.0", "noise: 0")
    assert trial_id(config_from_yaml(text)) == trial_id(from_yaml(text))


def test_read_info_names_a_store_that_is_not_one(tmp_path):
    (tmp_path / "x.zarr").write_text("")
    with pytest.raises(CorruptStoreError, match="x.zarr: not a Zarr store directory"):
        read_info(tmp_path / "x.zarr")
    assert read_info(tmp_path / "nothing.zarr") is None
