"""The trial store: schema (dims, coords, variables, attrs), the completion marker, append and truncate."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype

from ihmodel.append_pool import AppendPool
from ihmodel.compose import compose_trial
from ihmodel.config import from_yaml, to_yaml, trial_id
from ihmodel.store import (EVALUATORS, VARIABLES, StoreWriter, checkpoint_path, is_complete, recorded_variables,
                           scalar_coords, skeleton, skeleton_dataset)

REPO = Path(__file__).resolve().parents[2]


def open_store(path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


def test_completed_store_has_the_schema_of_ihmodel_store(completed_trial):
    config, path = completed_trial

    ds = open_store(path)

    assert set(ds.data_vars) == set(VARIABLES)
    for name, var in VARIABLES.items():
        assert ds[name].dims == var.dims, name
        assert ds[name].dtype == np.float32, name
        assert ds[name].attrs["description"] == var.description, name
        assert ds[name].attrs.get("units") == var.units, name
    assert dict(ds.sizes) == {"step": 100, "eval_step": 5, "layer": 2, "head": 4, "evaluator": 4}
    assert set(ds.coords) == {"step", "sequences", "eval_step", "eval_sequences", "layer", "head", "evaluator",
                              *scalar_coords(config)}
    assert ds.sequences.dims == ("step",) and ds.eval_sequences.dims == ("eval_step",)
    assert ds["layer"].values.tolist() == [0, 1] and ds["head"].values.tolist() == [0, 1, 2, 3]
    assert ds.evaluator.values.tolist() == list(EVALUATORS)
    for name in ("step", "sequences", "eval_step", "eval_sequences", "layer", "head"):
        assert np.issubdtype(ds[name].dtype, np.integer), name


def test_trial_scalars_are_scalar_coords(completed_trial):
    config, path = completed_trial

    ds = open_store(path)

    assert {"trial_id", "seed_init", "seed_data", "clamp_set", "n_train_classes", "n_labels"} <= set(ds.coords)
    for name, value in scalar_coords(config).items():
        assert ds[name].dims == (), name
        assert ds[name].item() == value, name
    assert ds.trial_id.item() == trial_id(config)
    assert (ds.seed_init.item(), ds.clamp_set.item(), ds.n_train_classes.item()) == (5, "none", 10)
    assert ds.seed_data.item() == config.data_seed and ds.seed_eval.item() == config.eval_seed


def test_store_attrs(completed_trial):
    config, path = completed_trial
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()

    attrs = open_store(path).attrs

    assert from_yaml(attrs["config_yaml"]) == config
    assert trial_id(from_yaml(attrs["config_yaml"])) == trial_id(config)
    assert attrs["icsweep_version"] == version("icsweep")
    assert re.fullmatch(r"[0-9a-f]{40}", attrs["git_sha"]) and attrs["git_sha"] == head
    assert attrs["complete"] is True
    assert is_complete(path)


def test_completion_marker_is_false_until_marked(tmp_path, tiny_trial):
    config = compose_trial(tiny_trial)
    path = tmp_path / "trial.zarr"

    writer = StoreWriter.create(path, config)
    assert is_complete(path) is False

    writer.mark_complete(stopped_early=False, stop_sequences=64, budget_sequences=64)

    assert is_complete(path) is True
    assert open_store(path).attrs["complete"] is True


def test_new_store_is_empty_along_step_and_readable(tmp_path, tiny_trial):
    config = compose_trial(tiny_trial)

    StoreWriter.create(tmp_path / "trial.zarr", config)
    ds = open_store(tmp_path / "trial.zarr")

    assert not is_complete(tmp_path / "trial.zarr")
    assert ds.attrs["complete"] is False
    assert dict(ds.sizes) == {"step": 0, "eval_step": 0, "layer": 2, "head": 4, "evaluator": 4}
    assert set(ds.data_vars) == set(VARIABLES)


def test_stats_choose_the_recorded_variables(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "stats=[loss,acc]"])

    StoreWriter.create(tmp_path / "trial.zarr", config)
    ds = open_store(tmp_path / "trial.zarr")

    assert recorded_variables(config) == ["loss", "acc"]
    assert set(ds.data_vars) == {"loss", "acc"}
    assert {"step", "eval_step", "layer", "head", "evaluator", "trial_id"} <= set(ds.coords)


def test_eval_switch_records_the_five_evaluator_metrics(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "stats=[eval]"])

    StoreWriter.create(tmp_path / "trial.zarr", config)

    assert set(open_store(tmp_path / "trial.zarr").data_vars) == {
        "eval_loss", "eval_acc", "eval_icl_acc", "eval_icl_prob", "eval_context_prob"}


@pytest.mark.parametrize("flush_every, expected", [(4096, 3125), (1000, 1000)])
def test_a_store_chunks_steps_by_the_rows_of_one_write(tmp_path, flush_every, expected):
    """Every checkpoint writes, so a write holds flush_every steps or a checkpoint's interval, whichever is less."""
    config = compose_trial([f"train.flush_every={flush_every}"])  # checkpoints every 100,000 / 32 = 3,125 steps
    writer = StoreWriter.create(tmp_path / "t.zarr", config)

    assert config.train.steps_per_write == expected
    assert writer.arrays["loss"].chunks == (expected,)
    assert writer.arrays["prev_token_score"].chunks == (expected, 2, 8)


def files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("stats", [[], ["stats=[loss,acc]"]])
def test_a_store_stamped_from_another_trials_skeleton_is_the_store_xarray_lays(tmp_path, tiny_trial, stats):
    """StoreWriter.create writes a trial's store from a skeleton laid once for its layout (another trial's, here):
    every file is what xarray writes for the trial itself (values, attrs, codecs, the checksums included)."""
    first = compose_trial([*tiny_trial, *stats])
    # seed 0: seed_init equals its fill value, so it has no chunk; the rest differs from the first trial
    other = compose_trial([*tiny_trial, *stats, "seed=0", "clamp=perfect_match", "train.lr=3e-4",
                           "data.zipf_exponent=1.0", "data.noise=0.1", "data.n_train_classes=40"])
    StoreWriter.create(tmp_path / "first.zarr", first)
    actual = StoreWriter.create(tmp_path / "actual.zarr", other)
    ds, encoding = skeleton_dataset(other)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(tmp_path / "expected.zarr", mode="w", zarr_format=3, consolidated=False, encoding=encoding)

    assert files(tmp_path / "actual.zarr") == files(tmp_path / "expected.zarr")
    assert "seed_init/c" not in files(tmp_path / "actual.zarr")
    xr.testing.assert_identical(open_store(tmp_path / "expected.zarr").load(),
                                open_store(tmp_path / "actual.zarr").load())
    # the writer's handles, made without reading the store back, are the ones reading it gives
    opened = StoreWriter(tmp_path / "actual.zarr")
    assert metadata(actual.group) == metadata(opened.group)
    assert {name: metadata(a) for name, a in actual.arrays.items()} == {name: metadata(a)
                                                                         for name, a in opened.arrays.items()}
    assert all(array.metadata.codecs[-1].to_dict() == {"name": "crc32c"} for array in opened.arrays.values())


def metadata(node: zarr.Array | zarr.Group) -> bytes:
    """A node's zarr.json as it would write it."""
    return node.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def test_a_skeleton_writes_each_trials_config_as_to_yaml_does(tiny_trial):
    first = compose_trial(tiny_trial)
    others = [["seed=9"], ["seed_data=3", "seed_eval=4"], ["clamp=perfect_l1_and_copy"], ["train.lr=1"],
              ["data.zipf_exponent=1", "data.noise=0.25"], ["device=cpu", "threads=2"]]
    for overrides in others:
        config = compose_trial([*tiny_trial, *overrides])
        assert skeleton(first).yaml(config) == to_yaml(config), overrides
    unconverted = dataclasses.replace(first, seed=7, train=dataclasses.replace(first.train, lr=1))  # an int lr
    assert skeleton(first).yaml(unconverted) == to_yaml(unconverted)


def test_creating_a_store_replaces_the_store_there(tmp_path, tiny_trial):
    config = compose_trial(tiny_trial)
    writer = StoreWriter.create(tmp_path / "t.zarr", config)
    writer.append("step", np.arange(3), np.arange(3) * 32, {})
    writer.mark_complete(stopped_early=False, stop_sequences=96, budget_sequences=96)

    StoreWriter.create(tmp_path / "t.zarr", config)

    ds = open_store(tmp_path / "t.zarr")
    assert ds.sizes["step"] == 0 and ds.attrs["complete"] is False


def test_append_and_truncate(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "stats=[loss,prev_token_score]"])
    path = tmp_path / "trial.zarr"
    writer = StoreWriter.create(path, config)
    steps = np.arange(5)
    head_rows = np.arange(5 * 2 * 4, dtype=np.float32).reshape(5, 2, 4)

    writer.append("step", steps, steps * 32, {"loss": steps.astype(np.float32), "prev_token_score": head_rows})
    writer.truncate(3, 0)  # resume from a checkpoint taken after 3 steps
    writer.append("step", np.array([3, 4]), np.array([96, 128]),
                  {"loss": np.array([30.0, 40.0], np.float32), "prev_token_score": -head_rows[:2]})
    ds = open_store(path)

    assert ds.step.values.tolist() == [0, 1, 2, 3, 4]
    assert ds.sequences.values.tolist() == [0, 32, 64, 96, 128]
    assert ds.loss.values.tolist() == [0.0, 1.0, 2.0, 30.0, 40.0]
    np.testing.assert_array_equal(ds.prev_token_score.values, np.concatenate([head_rows[:3], -head_rows[:2]]))
    assert writer.length("step") == 5 and writer.length("eval_step") == 0


@contextmanager
def pooled_stores(tmp_path, tiny_trial, n: int):
    """n fresh loss-only stores written through an AppendPool of 2 workers: (pool, paths, writers)."""
    config = compose_trial([*tiny_trial, "stats=[loss]"])
    paths = [tmp_path / f"t{i}.zarr" for i in range(n)]
    pool = AppendPool(workers=2)
    try:
        yield pool, paths, [pool.writer(StoreWriter.create(path, config)) for path in paths]
    finally:
        pool.close()


def test_an_append_pool_writes_each_store_in_order_and_fails_only_the_store_that_failed(tmp_path, tiny_trial):
    with pooled_stores(tmp_path, tiny_trial, 3) as (pool, paths, writers):
        for start in (0, 4):  # two flushes' worth, queued before one run
            steps = np.arange(start, start + 4)
            for i, writer in enumerate(writers):
                writer.append("step", steps, steps * 32, {"loss": (steps + 100 * i).astype(np.float32)})
        shutil.rmtree(paths[1] / "loss")  # this store is damaged before the pool writes

        failed = pool.run()

    assert list(failed) == [str(paths[1])]
    for i in (0, 2):
        ds = open_store(paths[i])
        assert ds.step.values.tolist() == list(range(8))
        assert ds.loss.values.tolist() == [float(s + 100 * i) for s in range(8)]


def test_an_append_pool_fails_the_stores_of_a_dead_worker_and_writes_the_others(tmp_path, tiny_trial):
    with pooled_stores(tmp_path, tiny_trial, 4) as (pool, paths, writers):
        pool.processes[0].kill()  # owns stores 0 and 2
        pool.processes[0].wait()
        steps = np.arange(4)
        for writer in writers:
            writer.append("step", steps, steps * 32, {"loss": steps.astype(np.float32)})

        failed = pool.run()

    assert sorted(failed) == [str(paths[0]), str(paths[2])]
    assert "exited with" in str(failed[str(paths[0])])
    for i in (1, 3):
        assert open_store(paths[i]).loss.values.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_checkpoint_path_sits_beside_the_store():
    assert checkpoint_path("sweep/trials/0123abcd.zarr") == Path("sweep/trials/0123abcd.ckpt.pt")
    assert checkpoint_path(Path("/x/t.zarr")) == Path("/x/t.ckpt.pt")


def corrupt_stores(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.zarr" for name in ("missing", "empty", "file", "bad_json", "torn", "array",
                                                         "no_node_type")}
    paths["empty"].mkdir()
    paths["file"].write_text("not a store")
    for name, text in (("bad_json", "{not json"), ("torn", ""), ("no_node_type", json.dumps({"zarr_format": 3}))):
        paths[name].mkdir()
        (paths[name] / "zarr.json").write_text(text)
    zarr.create_array(str(paths["array"]), shape=(3,), dtype="f4")
    return paths


@pytest.mark.parametrize("case", ["missing", "empty", "file", "bad_json", "torn", "array", "no_node_type"])
def test_is_complete_is_false_for_a_missing_or_corrupt_store(tmp_path, case):
    assert is_complete(corrupt_stores(tmp_path)[case]) is False
