"""Exemplar features: an array of shape (classes, exemplars, dim), float32.

The paper uses ResNet18 features of Omniglot (1623, 5, 512), HDF5 dataset `resnet18/224/feat`, classes already in
random order; `icsweep features omniglot OUT.h5` makes that file (ihmodel/omniglot.py: needs torchvision, and the
internet or a local copy of Omniglot and the weights). Without data.features the default is synthetic features of
the same shape, seeded:

    prototype_c ~ N(0, I)                      one per class
    x_{c,e} = relu(prototype_c + s * eps),     eps ~ N(0, I), s = data.synthetic_within_class_std (0.5)

so, like post-ReLU CNN features, they are non-negative and sparse (about half zeros), exemplars of a class are
closer to each other than to other classes, and nothing about a label can be read off a feature vector.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ihmodel.config import DataConfig
from ihmodel.errors import FeaturesError


def load_features(config: DataConfig) -> np.ndarray:
    if config.features is None:
        return synthetic_features(config)
    return read_features_file(Path(config.features), config.features_key)


def check_features(configs: Iterable[DataConfig]):
    """Every features file of these trials loads and fits each trial's split (each file read once): a sweep's
    driver calls it so that a bad file is one error before anything runs, not a failure of every trial."""
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for config in configs:
        if config.features is None:
            continue  # seeded synthetic features of a checked shape (DataConfig)
        source = (config.features, config.features_key)
        if source not in shapes:
            shapes[source] = read_features_file(Path(config.features), config.features_key).shape
        check_split(config, shapes[source])


def check_split(config: DataConfig, shape: tuple[int, ...]):
    """The trial's class and exemplar split fits features of `shape` (classes, exemplars, dim)."""
    n_classes, n_exemplars = shape[:2]
    source = f"features file {config.features}" if config.features is not None else "synthetic features"
    if config.n_train_classes + config.n_test_classes > n_classes:
        raise FeaturesError(f"data.n_train_classes + data.n_test_classes = "
                            f"{config.n_train_classes + config.n_test_classes} but the features have {n_classes} "
                            f"classes ({source}); lower them or give more classes")
    if not 0 < config.n_train_exemplars < n_exemplars:
        raise FeaturesError(f"data.n_train_exemplars={config.n_train_exemplars}; the features have {n_exemplars} "
                            f"exemplars per class ({source}) and some must be held out")


def synthetic_features(config: DataConfig) -> np.ndarray:
    rng = np.random.default_rng(config.synthetic_seed)
    shape = (config.synthetic_classes, config.synthetic_exemplars, config.synthetic_dim)
    prototypes = rng.standard_normal((shape[0], 1, shape[2]), dtype=np.float32)
    spread = np.float32(config.synthetic_within_class_std) * rng.standard_normal(shape, dtype=np.float32)
    return np.maximum(prototypes + spread, 0.0)


def read_features_file(path: Path, key: str) -> np.ndarray:
    """The file's features, checked: a regular file of a known format holding one finite real array of rank 3."""
    expected = "an array of shape (classes, exemplars, dim)"
    if path.is_dir():
        raise FeaturesError(f"features file {path} is a directory; give a file holding {expected} "
                            f"(.h5/.hdf5, .npy or .npz)")
    if not path.is_file():
        raise FileNotFoundError(f"features file {path} not found; expected {expected} (.h5/.hdf5, .npy or .npz), "
                                f"or leave data.features unset for synthetic features")
    suffix = path.suffix.lower()
    readers = {".h5": _read_hdf5, ".hdf5": _read_hdf5, ".npy": _read_npy, ".npz": _read_npz}
    if suffix not in readers:
        raise FeaturesError(f"features file {path}: unknown format {suffix!r}; expected .h5/.hdf5, .npy or .npz")
    try:
        array = readers[suffix](path, key)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # not its format, truncated, or pickles
        reason = " ".join(str(error).split()) or type(error).__name__
        raise FeaturesError(f"features file {path} is not a valid {suffix} file ({reason})") from None
    if array.dtype.kind not in "fiu":
        raise FeaturesError(f"features file {path}: values of dtype {array.dtype}; expected real numbers "
                            f"(float or int) in {expected}")
    if array.ndim != 3:
        raise FeaturesError(f"features file {path}: found an array of shape {array.shape}; expected {expected}")
    features = array.astype(np.float32, copy=False)
    finite = np.isfinite(features).all(axis=2)
    if not finite.all():
        cls, exemplar = (int(i) for i in np.argwhere(~finite)[0])
        raise FeaturesError(f"features file {path}: class {cls} exemplar {exemplar} holds non-finite values "
                            f"(NaN or inf{' after conversion to float32' if array.dtype != features.dtype else ''}); "
                            f"{int((~finite).sum())} of {finite.size} vectors are; fix or drop them")
    return features


def _read_hdf5(path: Path, key: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as file:
        if not isinstance(file.get(key), h5py.Dataset):
            raise KeyError(f"features file {path} has no dataset {key!r} (found: {_h5_datasets(file)}); "
                           f"set data.features_key to one of them")
        return np.asarray(file[key][...])


def _read_npy(path: Path, key: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.keys())
        if len(names) != 1 and key not in names:
            raise KeyError(f"features file {path} holds arrays {names}; set data.features_key to one of them")
        return archive[key if key in names else names[0]]


def _h5_datasets(file) -> list[str]:
    names = []
    file.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names
