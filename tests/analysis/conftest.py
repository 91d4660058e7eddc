"""Generated sweep directories for the analysis tests: real stores (ihmodel.store.StoreWriter), synthetic curves."""
from __future__ import annotations

import types
import warnings

import pytest

from analysis.synthetic import small_config, write_sweep

AXES = {"data.n_labels": [5, 10], "clamp": ["noclamp", "perfect_match"], "seed": [0, 1]}
MISSING = {"n_labels": 10, "clamp": "noclamp", "seed": 1}  # no store at all
RUNNING = {"n_labels": 5, "clamp": "perfect_match", "seed": 1}  # half its steps written, not complete
NEVER = {"n_labels": 10, "clamp": "perfect_match", "seed": 0}  # stays on the plateau


def change_at(cell: dict) -> float | None:
    """Well inside the 64,000-sequence budget, far from the fall to the plateau, one eval apart per seed."""
    if cell == NEVER:
        return None
    base = {5: 20_000.0, 10: 36_000.0}[cell.get("n_labels", 5)] - (6_000.0 if cell.get("clamp") == "perfect_match" else 0.0)
    return base + 2_000.0 * cell.get("seed", 0)


def build_sweep(path, *, name="synthetic", with_gaps=True, axes=AXES, **options):
    """A sweep directory like the orchestrator writes; with_gaps: one trial missing, one running."""
    if with_gaps:
        options.setdefault("skip", lambda cell: cell == MISSING)
        options.setdefault("running", lambda cell: 0.5 if cell == RUNNING else None)
    return write_sweep(path, axes, change_at=change_at, name=name, base=small_config(), **options)


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory):
    """A 2 x 2 x 2 sweep (n_labels x clamp x seed), 2,000 steps a trial, with one missing and one running trial.

    Shared by many tests: never write into it (copy it first).
    """
    path = tmp_path_factory.mktemp("sweep")
    build_sweep(path)
    return path


@pytest.fixture(scope="session")
def full_sweep_dir(tmp_path_factory):
    """The same grid with every trial complete."""
    path = tmp_path_factory.mktemp("full_sweep")
    build_sweep(path, with_gaps=False)
    return path


@pytest.fixture
def quiet():
    """Silence the incomplete-sweep warning where a test is not about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="session")
def layout():
    """The generated sweeps' layout, for tests to name cells and build variants (tests/ is not a package)."""
    return types.SimpleNamespace(AXES=AXES, MISSING=MISSING, RUNNING=RUNNING, NEVER=NEVER, change_at=change_at,
                                 build_sweep=build_sweep)
