"""Fixtures for the ihmodel tests: a 2-layer, d_model=16 CPU model, a small synthetic task, tiny trial configs.

The small task has few, low-dimensional synthetic classes so that every item of a batch can be traced back to
its (class, exemplar) by exact comparison with the feature table (`identify`).
"""
from __future__ import annotations

import pytest
import torch

from ihmodel.config import DataConfig, ModelConfig
from ihmodel.data import Task
from ihmodel.model import Transformer

CPU = torch.device("cpu")

# A trial that trains 100 steps in about a second: eval at steps 0, 25, 50, 75, 100; checkpoints at 50 and 100.
TINY_TRIAL = [
    "device=cpu",
    "train.sequences=3200", "train.batch_size=32", "train.eval_every=800", "train.checkpoint_every=1600",
    "train.flush_every=16", "eval.size=64", "eval.batch_size=4096", "data.n_train_classes=10",
    "model.d_model=16", "model.n_heads=4", "model.d_head=4",
]


@pytest.fixture
def model_config() -> ModelConfig:
    return ModelConfig(d_model=16, n_heads=4, d_head=4)


@pytest.fixture
def data_config() -> DataConfig:
    """60 synthetic classes of 5 exemplars in 16 dims: 10 train classes, 20 test classes, L=5."""
    return DataConfig(n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16)


@pytest.fixture
def task(data_config) -> Task:
    return Task(data_config, CPU)


@pytest.fixture
def model(model_config, task) -> Transformer:
    """The 2-layer, d_model=16, 4-head CPU model on the small task (5 labels, 5 tokens)."""
    return Transformer(model_config, d_in=task.d_in, d_vocab=task.config.n_labels, n_ctx=task.n_ctx, seed=0)


@pytest.fixture
def batch(task):
    return task.sample_train(6, seed=0)


@pytest.fixture
def identify():
    """identify(task, x [..., d_in]) -> (class, exemplar) index tensors [...]; fails if a row is no exemplar."""

    def identify(task: Task, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_classes, n_exemplars, d_in = task.features.shape
        table = task.features.reshape(-1, d_in)  # [class * exemplar, d_in]
        rows = x.reshape(-1, d_in)
        found = torch.empty(len(rows), dtype=torch.long)
        for start in range(0, len(rows), 1024):
            equal = (rows[start:start + 1024, None, :] == table[None]).all(-1)  # [rows, table]
            assert (equal.sum(-1) == 1).all(), "an item is not exactly one exemplar of the feature table"
            found[start:start + 1024] = equal.float().argmax(-1)
        found = found.reshape(x.shape[:-1])
        return found // n_exemplars, found % n_exemplars

    return identify


@pytest.fixture
def tiny_trial() -> list[str]:
    return list(TINY_TRIAL)


@pytest.fixture(scope="session")
def tiny_trial_overrides() -> tuple[str, ...]:
    """TINY_TRIAL for fixtures broader than a test."""
    return tuple(TINY_TRIAL)


@pytest.fixture(scope="session")
def completed_trial(tmp_path_factory):
    """(config, store path) of the tiny trial run to completion once per session. Read it, never write it."""
    from ihmodel.compose import compose_trial
    from ihmodel.train import run_trial

    config = compose_trial(TINY_TRIAL)
    path = tmp_path_factory.mktemp("completed") / "trial.zarr"
    run_trial(config, path)
    return config, path
