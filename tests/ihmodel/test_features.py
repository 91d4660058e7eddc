"""Exemplar features: the seeded synthetic default and user files (.npy, .npz, .h5), with one-line errors."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from ihmodel.config import DataConfig, EvalConfig
from ihmodel.data import Task
from ihmodel.features import load_features, synthetic_features


def file_config(path, **kwargs) -> DataConfig:
    return DataConfig(features=str(path), n_train_classes=3, n_test_classes=2, **kwargs)


@pytest.fixture
def array() -> np.ndarray:
    return np.random.default_rng(0).random((6, 3, 4))  # float64: loading makes it float32


def assert_one_line(error: pytest.ExceptionInfo):
    assert "\n" not in str(error.value)


# ---- synthetic ------------------------------------------------------------------------------------------------

def test_synthetic_features_have_the_paper_shape_and_are_non_negative_and_sparse():
    features = synthetic_features(DataConfig())

    assert features.shape == (1623, 5, 512)
    assert features.dtype == np.float32
    assert (features >= 0).all()
    assert 0.4 < (features == 0).mean() < 0.6  # post-ReLU: about half zeros


def test_synthetic_features_are_seeded():
    small = dict(synthetic_classes=200, synthetic_dim=8, n_train_classes=10, n_test_classes=20)

    first = synthetic_features(DataConfig(**small))
    again = synthetic_features(DataConfig(**small))
    other = synthetic_features(DataConfig(synthetic_seed=1, **small))

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_synthetic_exemplars_are_closer_within_a_class_than_across():
    features = synthetic_features(DataConfig(synthetic_classes=200, n_train_classes=10, n_test_classes=20))

    within = np.linalg.norm(features[:, 0] - features[:, 1], axis=-1).mean()
    across = np.linalg.norm(features[:-1, 0] - features[1:, 0], axis=-1).mean()

    assert within < 0.7 * across


# ---- files ------------------------------------------------------------------------------------------------------

def test_npy_file_loads_as_float32(tmp_path, array):
    path = tmp_path / "features.npy"
    np.save(path, array)

    features = load_features(file_config(path))

    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, array.astype(np.float32))


def test_npz_file_with_one_array_loads_whatever_its_name(tmp_path, array):
    path = tmp_path / "features.npz"
    np.savez(path, anything=array)

    np.testing.assert_array_equal(load_features(file_config(path)), array.astype(np.float32))


def test_npz_file_with_several_arrays_loads_features_key(tmp_path, array):
    path = tmp_path / "features.npz"
    np.savez(path, feat=array, other=np.zeros(3))

    np.testing.assert_array_equal(load_features(file_config(path, features_key="feat")), array.astype(np.float32))


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_hdf5_file_loads_the_paper_dataset(tmp_path, array, suffix):
    path = tmp_path / f"features{suffix}"
    with h5py.File(path, "w") as file:
        file["resnet18/224/feat"] = array
        file["other"] = np.zeros(2)

    np.testing.assert_array_equal(load_features(file_config(path)), array.astype(np.float32))


def test_hdf5_file_loads_another_key(tmp_path, array):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as file:
        file["my/feats"] = array

    np.testing.assert_array_equal(load_features(file_config(path, features_key="my/feats")), array.astype(np.float32))


def test_task_uses_the_file_classes_and_dimension(tmp_path, array, identify):
    path = tmp_path / "features.npy"
    np.save(path, array)

    task = Task(file_config(path), torch.device("cpu"))
    batch = task.sample_train(200, seed=0)
    test_batch = task.evaluators(EvalConfig(size=200), seed=1)["fsl_test_class"]

    assert task.d_in == 4 and batch.x.shape == (200, 3, 4)
    assert set(identify(task, batch.x)[0].unique().tolist()) == {0, 1, 2}
    assert set(identify(task, test_batch.x)[0].unique().tolist()) == {4, 5}


def test_task_refuses_a_file_with_too_few_classes(tmp_path, array):
    path = tmp_path / "features.npy"
    np.save(path, array)

    with pytest.raises(ValueError, match=r"data.n_train_classes \+ data.n_test_classes = 7 but the features have 6 "
                                         r"classes"):
        Task(DataConfig(features=str(path), n_train_classes=5, n_test_classes=2), torch.device("cpu"))


# ---- errors: one line naming the path, what was found, what is expected ---------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.h5"

    with pytest.raises(FileNotFoundError, match=rf"features file {re.escape(str(path))} not found; expected an array "
                                                r"of shape \(classes, exemplars, dim\) \(.h5/.hdf5, .npy or .npz\)") as error:
        load_features(file_config(path))
    assert_one_line(error)


def test_missing_hdf5_key_lists_the_datasets_found(tmp_path, array):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as file:
        file["feats/a"] = array
        file["b"] = array

    with pytest.raises(KeyError, match=rf"features file {re.escape(str(path))} has no dataset 'resnet18/224/feat' "
                                       r"\(found: \['b', 'feats/a'\]\); set data.features_key to one of them") as error:
        load_features(file_config(path))
    assert_one_line(error)


def test_hdf5_key_naming_a_group_is_a_missing_dataset(tmp_path, array):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as file:
        file["resnet18/224/feat"] = array

    with pytest.raises(KeyError, match=r"has no dataset 'resnet18/224' \(found: \['resnet18/224/feat'\]\)"):
        load_features(file_config(path, features_key="resnet18/224"))


def test_npz_with_several_arrays_and_no_features_key(tmp_path, array):
    path = tmp_path / "features.npz"
    np.savez(path, a=array, b=array)

    with pytest.raises(KeyError, match=rf"features file {re.escape(str(path))} holds arrays \['a', 'b'\]; set "
                                       r"data.features_key to one of them") as error:
        load_features(file_config(path))
    assert_one_line(error)


@pytest.mark.parametrize("shape", [(6, 4), (6, 3, 4, 1), (24,)])
def test_wrong_rank_names_the_shape_found_and_expected(tmp_path, shape):
    path = tmp_path / "features.npy"
    np.save(path, np.zeros(shape))

    with pytest.raises(ValueError, match=rf"features file {re.escape(str(path))}: found an array of shape "
                                         rf"{re.escape(str(shape))}; expected an array of shape "
                                         r"\(classes, exemplars, dim\)") as error:
        load_features(file_config(path))
    assert_one_line(error)


def test_unknown_suffix_names_it_and_the_known_ones(tmp_path, array):
    path = tmp_path / "features.txt"
    path.write_text("1 2 3\n")

    with pytest.raises(ValueError, match=rf"features file {re.escape(str(path))}: unknown format '.txt'; expected "
                                         r".h5/.hdf5, .npy or .npz") as error:
        load_features(file_config(path))
    assert_one_line(error)
