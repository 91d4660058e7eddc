import shutil
import warnings

import numpy as np
import pytest
import xarray as xr

from analysis import IncompleteSweepWarning, open_sweep, open_trials
from analysis.grid import GridArray
from analysis.storeio import DamagedStoreWarning
from analysis.synthetic import small_config, with_value, write_trial
from ihmodel.config import trial_id
from ihmodel.store import EVALUATORS
from ihmodel.sweepdir import read_manifest, store_path, write_manifest

GRID = {"n_labels": [5, 10], "clamp": ["noclamp", "perfect_match"], "seed": [0, 1]}
SCALARS = ["seed_init", "seed_data", "seed_eval", "clamp_set", "n_train_classes", "burstiness", "context_len",
           "zipf_exponent", "noise", "batch_size", "lr"]


def open_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteSweepWarning)
        return open_sweep(path)


def test_dims_coords_and_variables_exactly(sweep_dir):
    ds = open_quietly(sweep_dir)

    assert dict(ds.sizes) == {"n_labels": 2, "clamp": 2, "seed": 2, "step": 2000, "layer": 2, "head": 8,
                              "eval_step": 33, "evaluator": 4}
    grid = ("n_labels", "clamp", "seed")
    expected_vars = {
        "loss": (*grid, "step"), "acc": (*grid, "step"), "grad_norm": (*grid, "step"),
        "prev_token_score": (*grid, "step", "layer", "head"), "induction_score": (*grid, "step", "layer", "head"),
        "pattern_entropy": (*grid, "step", "layer", "head"), "head_out_norm": (*grid, "step", "layer", "head"),
        "eval_loss": (*grid, "eval_step", "evaluator"), "eval_acc": (*grid, "eval_step", "evaluator"),
        "eval_icl_acc": (*grid, "eval_step", "evaluator"), "eval_icl_prob": (*grid, "eval_step", "evaluator"),
        "eval_context_prob": (*grid, "eval_step", "evaluator"),
        "eval_induction_score": (*grid, "eval_step", "layer", "head"), "complete": grid, "stopped_early": grid,
    }
    assert {name: ds[name].dims for name in ds.data_vars} == expected_vars
    assert set(ds.coords) == {*GRID, "step", "sequences", "eval_step", "eval_sequences", "layer", "head",
                              "evaluator", "trial_id", *SCALARS}
    for dim, values in GRID.items():
        assert ds[dim].values.tolist() == values
    np.testing.assert_array_equal(ds["step"].values, np.arange(2000))
    np.testing.assert_array_equal(ds["sequences"].values, np.arange(2000) * 32)
    assert ds["sequences"].dims == ("step",)
    np.testing.assert_array_equal(ds["eval_sequences"].values, np.arange(0, 64_001, 2_000))
    np.testing.assert_array_equal(ds["eval_step"].values, np.arange(0, 64_001, 2_000) // 32)
    assert ds["evaluator"].values.tolist() == list(EVALUATORS)
    assert ds["layer"].values.tolist() == [0, 1] and ds["head"].values.tolist() == list(range(8))
    # Config scalars on the grid dims they vary along, constants as 0-d coordinates.
    assert ds["seed_init"].dims == ("seed",) and ds["clamp_set"].dims == ("clamp",)
    assert ds["lr"].dims == () and float(ds["lr"]) == 1e-5
    assert ds["trial_id"].dims == grid
    manifest = read_manifest(sweep_dir)
    for entry in manifest.trials:
        assert ds["trial_id"].sel(entry.axes).item() == entry.id
    assert ds["eval_loss"].attrs == {"description": "cross-entropy over the evaluator's fixed sequences",
                                     "units": "nats"}
    assert ds.attrs["sweep"] == "synthetic"


def test_cell_is_identical_to_its_store(full_sweep_dir):
    ds = open_sweep(full_sweep_dir)
    cell = {"n_labels": 10, "clamp": "perfect_match", "seed": 1}
    path = store_path(full_sweep_dir, ds["trial_id"].sel(cell).item())
    expected = xr.open_zarr(path, consolidated=False).load()

    for name, units in [("step", "steps"), ("eval_step", "steps"), ("sequences", "sequences"),
                        ("eval_sequences", "sequences")]:
        expected[name].attrs["units"] = units  # the combined Dataset adds units
    actual = ds.sel(cell).drop_vars(["clamp", "seed", "complete", "stopped_early"]).load()
    actual["n_labels"].attrs = {}  # an axis: attrs name its config key
    actual.attrs = expected.attrs
    xr.testing.assert_identical(expected, actual)


def test_missing_and_incomplete_trials_are_nan_flagged_and_warned(sweep_dir, layout):
    MISSING, RUNNING = layout.MISSING, layout.RUNNING
    with pytest.warns(IncompleteSweepWarning, match=r"1 of 8 trials have no store .*1 are incomplete"):
        ds = open_sweep(sweep_dir)

    expected_complete = np.ones((2, 2, 2), bool)
    expected_complete[1, 0, 1] = False  # MISSING
    expected_complete[0, 1, 1] = False  # RUNNING
    np.testing.assert_array_equal(ds["complete"].values, expected_complete)
    assert np.isnan(ds["loss"].sel(MISSING).values).all()
    assert np.isnan(ds["eval_loss"].sel(MISSING).values).all()
    running = ds["loss"].sel(RUNNING).values
    assert np.isfinite(running[:1000]).all() and np.isnan(running[1000:]).all()
    evals = ds["eval_loss"].sel(RUNNING | {"evaluator": "fsl_train"}).values
    assert np.isfinite(evals[:17]).all() and np.isnan(evals[17:]).all()  # evals at steps 0..1000


def test_opening_reads_no_data_and_selection_reads_only_its_cells(sweep_dir, monkeypatch):
    reads = []
    original = GridArray._read
    monkeypatch.setattr(GridArray, "_read", lambda self, key: reads.append(key) or original(self, key))
    ds = open_quietly(sweep_dir)
    assert reads == []

    values = ds["loss"].sel(n_labels=5, clamp="noclamp", seed=0).isel(step=slice(10, 20)).values

    assert values.shape == (10,) and np.isfinite(values).all()
    assert len(reads) == 1
    assert [np.size(np.arange(n)[k]) for k, n in zip(reads[0], (2, 2, 2, 2000))] == [1, 1, 1, 10]


def test_stores_of_different_lengths_align_on_the_union_of_steps(tmp_path):
    base = small_config()
    short, long = with_value(base, "train.sequences", 32_000), base
    write_trial(tmp_path / "short.zarr", short, 10_000.0)
    write_trial(tmp_path / "long.zarr", long, 10_000.0)

    ds = open_trials([tmp_path / "short.zarr", tmp_path / "long.zarr"])

    assert ds.sizes["step"] == 2000 and ds.sizes["eval_step"] == 33
    assert np.isnan(ds["loss"].isel(trial=0, step=slice(1000, None)).values).all()
    assert np.isfinite(ds["loss"].isel(trial=0, step=slice(0, 1000)).values).all()
    np.testing.assert_array_equal(ds["eval_sequences"].values, np.arange(0, 64_001, 2_000))


def test_stores_with_different_batch_sizes_get_per_trial_sequences(tmp_path):
    a, b = small_config(), small_config(batch_size=64)
    write_trial(tmp_path / "a.zarr", a, 10_000.0)
    write_trial(tmp_path / "b.zarr", b, 10_000.0)

    ds = open_trials([tmp_path / "a.zarr", tmp_path / "b.zarr"])

    assert ds["sequences"].dims == ("trial", "step")
    np.testing.assert_array_equal(ds["sequences"].isel(trial=1, step=slice(0, 3)).values, [0, 64, 128])
    assert np.isnan(ds["sequences"].isel(trial=1, step=-1).item())  # b has half the steps
    assert ds["eval_sequences"].dims == ("trial", "eval_step")
    assert ds["batch_size"].values.tolist() == [32, 64]


def test_open_trials_has_a_flat_trial_dim_with_config_coords(sweep_dir):
    paths = sorted((sweep_dir / "trials").glob("*.zarr"))
    with pytest.warns(IncompleteSweepWarning, match="1 are incomplete"):
        ds = open_trials(paths)

    assert ds["loss"].dims == ("trial", "step")
    assert ds["trial"].values.tolist() == list(range(7))
    assert ds["store"].values.tolist() == [str(p) for p in paths]
    assert ds["trial_id"].values.tolist() == [p.name.removesuffix(".zarr") for p in paths]
    for name in ["seed_init", "clamp_set", "n_labels", "lr"]:
        assert ds[name].dims == ("trial",)
    assert ds["complete"].values.sum() == 6


def test_open_trials_refuses_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr: no trial store there"):
        open_trials([tmp_path / "nothing.zarr"])


def test_a_store_of_another_sweep_is_refused(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    other = with_value(small_config(), "seed", 99)
    write_trial(tmp_path / "sweep" / "trials" / f"{trial_id(other)}.zarr", other, 10_000.0)

    with pytest.raises(ValueError, match=rf"{trial_id(other)}.zarr: not a trial of sweep 'synthetic'.*move it out"):
        open_sweep(tmp_path / "sweep")


def test_a_store_under_another_trials_name_is_refused(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    manifest = read_manifest(tmp_path / "sweep")
    first, second = manifest.trials[0].id, manifest.trials[1].id
    shutil.rmtree(store_path(tmp_path / "sweep", first))
    shutil.copytree(store_path(tmp_path / "sweep", second), store_path(tmp_path / "sweep", first))

    with pytest.raises(ValueError, match=rf"holds trial {second}, not {first} of sweep 'synthetic'"):
        open_sweep(tmp_path / "sweep")


def damage_chunk(store, array: str, chunk: str = "c/0"):
    """Random bytes over the middle of one chunk file, as a failing disk or a stray write leaves it."""
    path = store / array / chunk
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 8] = np.random.default_rng(0).bytes(8)
    path.write_bytes(bytes(raw))


def test_a_store_with_unreadable_metadata_is_a_nan_cell_named_in_a_warning(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    entry = read_manifest(tmp_path / "sweep").trials[0]
    (store_path(tmp_path / "sweep", entry.id) / "eval_loss" / "zarr.json").write_text("{not json")

    with pytest.warns(DamagedStoreWarning, match=rf"1 damaged trial stores.*{entry.id} \(unreadable metadata of "
                                                 r"array 'eval_loss'"):
        ds = open_quietly(tmp_path / "sweep")
    cell = ds.sel(entry.axes)
    assert not cell["complete"].item()
    assert np.isnan(cell["loss"].values).all() and np.isnan(cell["eval_loss"].values).all()


def test_an_eval_chunk_failing_its_checksum_makes_the_cell_nan_and_incomplete(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    entry = read_manifest(tmp_path / "sweep").trials[0]
    damage_chunk(store_path(tmp_path / "sweep", entry.id), "eval_loss", "c/0/0")

    with pytest.warns(DamagedStoreWarning, match=rf"{entry.id} \(array 'eval_loss' chunk c/0/0 fails its checksum"):
        ds = open_quietly(tmp_path / "sweep")
    cell = ds.sel(entry.axes)
    assert not cell["complete"].item()
    assert np.isnan(cell["eval_loss"].values).all()


def test_a_step_chunk_failing_its_checksum_reads_as_nan_with_a_warning(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    entry = read_manifest(tmp_path / "sweep").trials[0]
    intact = open_quietly(tmp_path / "sweep").sel(entry.axes)["loss"].values
    damage_chunk(store_path(tmp_path / "sweep", entry.id), "loss", "c/0")
    ds = open_quietly(tmp_path / "sweep")  # per-step chunks are verified as they are read

    with pytest.warns(DamagedStoreWarning, match=rf"trial {entry.id} is damaged \(array 'loss': chunk c/0 fails "
                                                 r"its checksum\)"):
        actual = ds.sel(entry.axes)["loss"].values
    assert not np.isnan(intact).any()
    assert np.isnan(actual).all()  # the cell's read met the damaged chunk: none of its numbers are returned
    other = read_manifest(tmp_path / "sweep").trials[1]
    assert not np.isnan(ds.sel(other.axes)["loss"].values).any()  # the other cells read as before


def test_a_store_still_being_created_counts_as_missing(tmp_path, sweep_dir, layout):
    shutil.copytree(sweep_dir, tmp_path / "sweep")
    missing = next(t.id for t in read_manifest(tmp_path / "sweep").trials if t.axes == layout.MISSING)
    path = store_path(tmp_path / "sweep", missing)
    path.mkdir(parents=True)  # an empty directory: the skeleton not yet written

    with pytest.warns(IncompleteSweepWarning, match="1 of 8 trials have no store"):
        ds = open_sweep(tmp_path / "sweep")
    assert not ds["complete"].sel(layout.MISSING).item()


def test_not_a_sweep_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sweep manifest; is .* a sweep directory"):
        open_sweep(tmp_path)


def test_manifest_trial_off_the_grid_is_refused(tmp_path, layout):
    manifest = layout.build_sweep(tmp_path, axes={"data.n_labels": [5], "seed": [0]}, with_gaps=False)
    manifest.trials[0].axes["n_labels"] = 7
    write_manifest(tmp_path, manifest)

    with pytest.raises(ValueError, match=r"axis values \{'n_labels': 7, 'seed': 0\}, not on the grid"):
        open_sweep(tmp_path)
