"""Exemplar features: an array of shape (classes, exemplars, dim), float32.

The paper uses ResNet18 features of Omniglot (1623, 5, 512), HDF5 dataset `resnet18/224/feat`, classes already in
random order. That file cannot be downloaded here, so the default is synthetic features of the same shape, seeded:

    prototype_c ~ N(0, I)                      one per class
    x_{c,e} = relu(prototype_c + s * eps),     eps ~ N(0, I), s = data.synthetic_within_class_std (0.5)

so, like post-ReLU CNN features, they are non-negative and sparse (about half zeros), exemplars of a class are
closer to each other than to other classes, and nothing about a label can be read off a feature vector.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ihmodel.config import DataConfig


def load_features(config: DataConfig) -> np.ndarray:
    if config.features is None:
        return synthetic_features(config)
    return read_features_file(Path(config.features), config.features_key)


def synthetic_features(config: DataConfig) -> np.ndarray:
    rng = np.random.default_rng(config.synthetic_seed)
    shape = (config.synthetic_classes, config.synthetic_exemplars, config.synthetic_dim)
    prototypes = rng.standard_normal((shape[0], 1, shape[2]), dtype=np.float32)
    spread = np.float32(config.synthetic_within_class_std) * rng.standard_normal(shape, dtype=np.float32)
    return np.maximum(prototypes + spread, 0.0)


def read_features_file(path: Path, key: str) -> np.ndarray:
    expected = "an array of shape (classes, exemplars, dim)"
    if not path.is_file():
        raise FileNotFoundError(f"features file {path} not found; expected {expected} (.h5/.hdf5, .npy or .npz), "
                                f"or leave data.features unset for synthetic features")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as file:
            if not isinstance(file.get(key), h5py.Dataset):
                raise KeyError(f"features file {path} has no dataset {key!r} (found: {_h5_datasets(file)}); "
                               f"set data.features_key to one of them")
            array = np.asarray(file[key][...])
    elif suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            if len(names) != 1 and key not in names:
                raise KeyError(f"features file {path} holds arrays {names}; set data.features_key to one of them")
            array = archive[key if key in names else names[0]]
    else:
        raise ValueError(f"features file {path}: unknown format {suffix!r}; expected .h5/.hdf5, .npy or .npz")
    if array.ndim != 3:
        raise ValueError(f"features file {path}: found an array of shape {array.shape}; expected {expected}")
    return array.astype(np.float32, copy=False)


def _h5_datasets(file) -> list[str]:
    names = []
    file.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names
