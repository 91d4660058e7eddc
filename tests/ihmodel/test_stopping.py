"""train.stop_early: the rule on known curves, a trial that stops (its store, its attrs, its prefix equal to a
full-budget run), kill-and-resume stopping at the same step, and a pack that drops its stopped members."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from ihmodel import pack, train
from ihmodel.compose import compose_trial
from ihmodel.config import TrainConfig, TrialConfig, trial_id
from ihmodel.pack import run_pack
from ihmodel.stopping import PHASE_CHANGE_LOSS, crossing_index, stop_index
from ihmodel.store import checkpoint_path, is_complete
from ihmodel.train import run_trial
from stall_helpers import run_copying_mid_run

LN2 = math.log(2)
RULE = TrainConfig(stop_early=True, stop_patience=30_000, stop_tolerance=0.1, stop_floor=0.01)
EVERY = 10_000


def history(*losses: float) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(len(losses)) * EVERY, np.array(losses, dtype=np.float32)


# ---- the rule on known curves ------------------------------------------------------------------------------------

def test_crossed_then_below_the_floor_stops_at_the_floor():
    sequences, loss = history(2.0, LN2, LN2, 0.25, 0.1, 0.009, 0.005)
    assert stop_index(sequences, loss, RULE) == 5


def test_crossed_then_flat_for_a_whole_window_stops_when_the_window_is_flat():
    # crosses at 3 (0.2); 0.2 -> 0.15 over 3 evaluations is a 25 % drop; from 4 on the loss holds at 0.15
    sequences, loss = history(2.0, LN2, LN2, 0.2, 0.15, 0.15, 0.15, 0.149, 0.149)
    # at 6: window back to 3 (0.2 -> 0.15, 25 %): on; at 7: back to 4 (0.15 -> 0.149, < 10 %): stop
    assert stop_index(sequences, loss, RULE) == 7


def test_crossed_but_still_falling_trains_on():
    sequences, loss = history(2.0, LN2, 0.25, 0.2, 0.15, 0.11, 0.08, 0.06, 0.045)  # ~25 % a step
    assert crossing_index(loss) == 2
    assert stop_index(sequences, loss, RULE) is None


def test_never_crossed_never_stops():
    sequences, loss = history(2.0, LN2, LN2, 0.6, 0.3, 0.29, 0.29, 0.29, 0.29)
    assert crossing_index(loss) is None
    assert stop_index(sequences, loss, RULE) is None


def test_a_flat_window_back_above_the_threshold_is_not_over():
    sequences, loss = history(2.0, 0.25, LN2, LN2, LN2, LN2, LN2)  # dipped below once, back on the plateau
    assert stop_index(sequences, loss, RULE) is None


def test_the_threshold_is_the_papers():
    assert PHASE_CHANGE_LOSS == pytest.approx(0.4 * math.log(2))


# ---- the config ----------------------------------------------------------------------------------------------

def test_the_stop_keys_leave_existing_trial_ids_unchanged():
    assert trial_id(TrialConfig()) == "a22b24b70f789ce5"  # the default trial's id before train.stop_early existed
    knobs = TrialConfig(train=TrainConfig(stop_patience=7, stop_floor=0.2))
    assert trial_id(knobs) == trial_id(TrialConfig())  # knobs of an unused rule change nothing
    assert trial_id(TrialConfig(train=TrainConfig(stop_early=True))) != trial_id(TrialConfig())


@pytest.mark.parametrize("overrides, message", [
    (["train.stop_early=true", "stats=[loss]"], "add eval to stats"),
    (["train.stop_tolerance=1.5"], "train.stop_tolerance=1.5"),
    (["train.stop_patience=0"], "train.stop_patience=0"),
    (["train.stop_floor=-1"], "train.stop_floor=-1"),
])
def test_bad_stop_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        compose_trial(overrides)


# ---- a trial that stops ----------------------------------------------------------------------------------------

# perfect_match on the tiny model at lr 3e-3: crosses at 1,600 sequences, below the 0.05 floor at 2,720 (step 85)
STOPPING = ["train.lr=3e-3", "clamp=perfect_match", "train.eval_every=160", "train.sequences=6400"]


def load(path) -> xr.Dataset:
    ds = xr.open_zarr(path, consolidated=False).load()
    ds.attrs.pop("git_sha")
    return ds


@pytest.fixture(scope="module")
def full_and_stopped(tmp_path_factory, tiny_trial_overrides):
    """The same trial run to its budget and with stop_early on."""
    directory = tmp_path_factory.mktemp("stop")
    base = list(tiny_trial_overrides) + STOPPING
    full = run_trial(compose_trial(base), directory / "full.zarr")
    stopped = run_trial(compose_trial(base + ["train.stop_early=true"]), directory / "stopped.zarr")
    return full, stopped


def test_a_stopped_store_is_complete_and_says_why_it_ended(full_and_stopped):
    full, stopped = (zarr.open_group(str(p), mode="r").attrs for p in full_and_stopped)
    assert (stopped["complete"], stopped["stopped_early"], stopped["budget_sequences"]) == (True, True, 6400)
    assert stopped["stop_sequences"] == 85 * 32
    assert (full["stopped_early"], full["stop_sequences"], full["budget_sequences"]) == (False, 6400, 6400)


def test_a_stopped_trial_records_the_full_runs_prefix_up_to_its_last_evaluation(full_and_stopped):
    full, stopped = (load(p) for p in full_and_stopped)
    steps, evals = stopped.sizes["step"], stopped.sizes["eval_step"]
    assert steps == 85 and int(stopped.eval_step[-1]) == 85  # it ends at the evaluation that stopped it
    for name in stopped.data_vars:
        prefix = full[name].isel(step=slice(steps)) if "step" in full[name].dims else \
            full[name].isel(eval_step=slice(evals))
        np.testing.assert_array_equal(stopped[name].values, prefix.values, err_msg=name)
    fsl_train = full.eval_loss.sel(evaluator="fsl_train").values
    assert crossing_index(stopped.eval_loss.sel(evaluator="fsl_train").values) == crossing_index(fsl_train)


def test_a_trial_that_never_crosses_runs_its_whole_budget(tmp_path, tiny_trial):
    config = compose_trial(tiny_trial + ["train.stop_early=true", "clamp=none"])
    path = run_trial(config, tmp_path / "never.zarr")
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert (attrs["stopped_early"], attrs["stop_sequences"]) == (False, 3200)
    assert load(path).sizes["step"] == 100


def test_resumed_mid_run_it_stops_at_the_same_step_with_the_same_statistics(full_and_stopped, tmp_path, tiny_trial):
    """A copy of store and checkpoint taken at a flush past the first checkpoint (step 50), as a kill leaves them,
    resumed: it replays the evaluations since, and stops where the uninterrupted run did."""
    config = compose_trial(tiny_trial + STOPPING + ["train.stop_early=true"])
    store, snapshot = tmp_path / "run.zarr", tmp_path / "snapshot.zarr"
    run_copying_mid_run(config, store, snapshot, at_step=66)
    assert not is_complete(snapshot) and load(snapshot).sizes["step"] == 66

    run_trial(config, snapshot)

    xr.testing.assert_identical(load(full_and_stopped[1]), load(snapshot))


def test_killed_after_its_last_checkpoint_it_only_marks_the_store_complete(full_and_stopped, tmp_path, tiny_trial):
    store = tmp_path / "trial.zarr"
    shutil.copytree(full_and_stopped[1], store)
    shutil.copy(checkpoint_path(full_and_stopped[1]), checkpoint_path(store))
    zarr.open_group(str(store), mode="r+").attrs["complete"] = False

    run_trial(compose_trial(tiny_trial + STOPPING + ["train.stop_early=true"]), store)

    xr.testing.assert_identical(load(full_and_stopped[1]), load(store))


# ---- a pack drops the members that stop --------------------------------------------------------------------------

PACKED = [["clamp=perfect_match", "seed=5"], ["clamp=none", "seed=6"], ["clamp=perfect_l1_and_copy", "seed=7"]]


def test_a_pack_trains_only_its_members_that_have_not_stopped(tiny_trial, tmp_path, monkeypatch):
    base = tiny_trial + ["train.lr=3e-3", "train.eval_every=160", "train.sequences=6400", "train.stop_early=true"]
    configs = [compose_trial(base + spec) for spec in PACKED]
    alone = [run_trial(c, tmp_path / f"alone{i}.zarr") for i, c in enumerate(configs)]
    trained: list[int] = []  # members trained at each step
    pack_step, trial_step = pack.Pack.train_step, train.Trial.train_step

    def counting_pack_step(self):
        assert len(self.members) > 1  # a member with no pack mates left trains as a trial, faster
        trained.append(len(self.members))
        pack_step(self)

    def counting_trial_step(self):  # the last member, left alone, trains as a trial
        trained.append(1)
        trial_step(self)

    monkeypatch.setattr(pack.Pack, "train_step", counting_pack_step)
    monkeypatch.setattr(train.Trial, "train_step", counting_trial_step)

    errors = run_pack(configs, [tmp_path / f"p{i}.zarr" for i in range(3)])

    assert errors == [None] * 3
    stops = [zarr.open_group(str(p), mode="r").attrs["stop_sequences"] // 32 for p in alone]
    assert stops[1] == 200 and stops[0] < 200 and stops[2] < 200  # two stop early, none never crosses
    # each step trains exactly the members not yet stopped: the compute a stopped trial saves is saved
    assert trained == [sum(step < s for s in stops) for step in range(200)]
    for i, expected in enumerate(alone):  # float32 rounding of batched products drifts over 200 steps at 3e-3
        packed = load(tmp_path / f"p{i}.zarr")
        assert packed.attrs == load(expected).attrs
        for name in packed.data_vars:
            np.testing.assert_allclose(packed[name].values, load(expected)[name].values, rtol=1e-3, atol=1e-4,
                                       err_msg=name)
