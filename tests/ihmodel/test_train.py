"""run_trial: what it writes, idempotence, kill-and-resume equal to an uninterrupted run, and the train CLI."""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
import zarr

import ihmodel.train as train
from ihmodel.checkpoint import load_checkpoint
from ihmodel.compose import clamp_set_names, compose_trial
from ihmodel.config import from_yaml, trial_id
from ihmodel.store import EVALUATORS, checkpoint_path, is_complete
from ihmodel.train import Trial, crossed, main, run_trial
from stall_helpers import kill_when_stalled, run_copying_mid_run

CPU = torch.device("cpu")


def load(path) -> xr.Dataset:
    """Every value of a store, loaded; git_sha dropped (equal anyway, unless HEAD moves during the test)."""
    ds = xr.open_zarr(path, consolidated=False).load()
    ds.attrs.pop("git_sha")
    return ds


def copy_trial(source: Path, target: Path):
    shutil.copytree(source, target)
    shutil.copy(checkpoint_path(source), checkpoint_path(target))


# ---- what a completed trial holds -------------------------------------------------------------------------------

def test_completed_trial_writes_every_step_and_the_evaluations(completed_trial):
    config, path = completed_trial

    ds = load(path)

    assert ds.step.values.tolist() == list(range(100))
    assert ds.sequences.values.tolist() == [32 * step for step in range(100)]
    assert ds.eval_step.values.tolist() == [0, 25, 50, 75, 100]  # at 0, every 800 sequences, and the end
    assert ds.eval_sequences.values.tolist() == [0, 800, 1600, 2400, 3200]
    assert np.isfinite(ds.loss).all() and (ds.loss > 0).all()
    assert ((ds.acc >= 0) & (ds.acc <= 1)).all() and ((ds.eval_acc >= 0) & (ds.eval_acc <= 1)).all()
    assert (ds.grad_norm > 0).all()
    assert ((ds.prev_token_score >= 0) & (ds.prev_token_score <= 1)).all()
    assert ((ds.pattern_entropy >= 0) & (ds.pattern_entropy <= math.log(5))).all()
    assert ds.eval_loss.sizes == {"eval_step": 5, "evaluator": 4}
    assert ds.eval_induction_score.sizes == {"eval_step": 5, "layer": 2, "head": 4}
    state = load_checkpoint(checkpoint_path(path), map_location=CPU)
    assert (state["step"], state["n_evals"], state["trial_id"]) == (100, 5, trial_id(config))


def test_step_0_is_the_initial_model_on_the_first_batch(completed_trial, tmp_path):
    config, path = completed_trial
    trial = Trial(config, tmp_path / "fresh.zarr")  # the model at init, the data stream at its start

    batch = trial.task.sample_train(config.train.batch_size, config.data_seed, trial.step)
    with torch.no_grad():
        logits = trial.clamps.forward(batch)
        evaluation = trial.evaluation()
    ds = load(path)

    assert ds.loss[0].item() == pytest.approx(F.cross_entropy(logits, batch.query_label).item(), rel=1e-6)
    assert ds.acc[0].item() == (logits.argmax(-1) == batch.query_label).float().mean().item()
    np.testing.assert_allclose(ds.eval_loss[0].values, evaluation["eval_loss"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds.eval_induction_score[0].values, evaluation["eval_induction_score"].numpy(),
                               rtol=1e-5, atol=1e-7)
    assert ds.evaluator.values.tolist() == list(EVALUATORS)


def test_each_step_records_the_norm_of_its_own_gradient(tmp_path, tiny_trial):
    # A step's norm is taken after the next step's forward pass, or at a flush: still that step's gradient.
    trial = Trial(compose_trial(tiny_trial), tmp_path / "trial.zarr")
    trial.start_or_resume()
    norms, written = [], []
    for step in range(6):
        trial.train_step()
        norms.append(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in trial.model.parameters()])))
        if step in (2, 5):
            written.extend(trial.flush()["grad_norm"])

    np.testing.assert_allclose(written, torch.stack(norms).numpy(), rtol=1e-6)


def test_a_ragged_budget_ends_with_one_final_evaluation(tmp_path, tiny_trial):
    # 100 sequences in batches of 32: 4 steps (128 sequences); evaluations every 48 sequences cross at steps 2, 3
    config = compose_trial([*tiny_trial, "train.sequences=100", "train.eval_every=48", "train.checkpoint_every=64"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert ds.step.values.tolist() == [0, 1, 2, 3]
    assert ds.eval_step.values.tolist() == [0, 2, 3, 4]
    assert ds.eval_sequences.values.tolist() == [0, 64, 96, 128]


def test_final_evaluation_is_not_repeated_when_the_end_is_a_multiple(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "train.sequences=128", "train.eval_every=64"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert ds.eval_step.values.tolist() == [0, 2, 4]


@pytest.mark.parametrize("step, expected", [(0, False), (1, False), (24, False), (25, True), (26, False),
                                            (50, True), (100, True)])
def test_crossed_marks_each_new_multiple_of_the_interval(step, expected):
    assert crossed(step, 32, 800) is expected


def test_all_train_induction_set(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "train.sequences=64", "eval.induction_set=all_train"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert ds.eval_induction_score.sizes == {"eval_step": 2, "layer": 2, "head": 4}
    assert np.isfinite(ds.eval_induction_score).all()


# ---- clamps are active in training statistics and in evaluations -------------------------------------------------

def test_perfect_match_shows_in_step_and_eval_statistics(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "train.sequences=640", "clamp=perfect_match"])  # 1:3 active, s=1

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert (ds.induction_score.sel(layer=1, head=3) == 1).all()  # all attention on the correct label token
    assert (ds.eval_induction_score.sel(layer=1, head=3) == 1).all()
    assert (ds.head_out_norm.sel(layer=1, head=[0, 1, 2]) == 0).all()  # values of every other layer-2 head zeroed
    assert (ds.head_out_norm.sel(layer=1, head=3) > 0).all()
    assert ds.clamp_set.item() == "perfect_match"


def test_perfect_copy_shows_in_evaluations(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "train.sequences=640", "clamp=perfect_copy"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    np.testing.assert_allclose(ds.eval_context_prob, 1, rtol=1e-6)  # every label outside the context has logit -1e9
    assert (ds.eval_icl_acc == ds.eval_acc).all()


def test_perfect_previous_token_pattern_shows_in_step_statistics(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "train.sequences=640", "clamp=perfect_prev_tok_attn_single"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert (ds.prev_token_score.sel(layer=0, head=2) == 1).all()
    assert (ds.pattern_entropy.sel(layer=0, head=2) == 0).all()
    assert (ds.prev_token_score.sel(layer=0, head=[0, 1, 3]) < 1).all()


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_clamped_trial_on_cuda(tmp_path, tiny_trial):
    overrides = [o for o in tiny_trial if not o.startswith("device=")]
    config = compose_trial([*overrides, "device=cuda", "clamp=perfect_l1_and_copy"])

    ds = load(run_trial(config, tmp_path / "trial.zarr"))

    assert ds.sizes["step"] == 100 and np.isfinite(ds.loss).all()
    np.testing.assert_allclose(ds.eval_context_prob, 1, rtol=1e-6)


# ---- idempotence and refusal --------------------------------------------------------------------------------------

def test_a_complete_store_returns_at_once_unchanged(completed_trial, monkeypatch):
    config, path = completed_trial
    before = load(path)

    def no_training(*args, **kwargs):
        raise AssertionError("a complete trial must not be set up again")

    monkeypatch.setattr(train, "Trial", no_training)
    returned = run_trial(config, path)

    assert Path(returned) == path
    xr.testing.assert_identical(before, load(path))


def test_resume_refuses_a_checkpoint_of_another_trial(completed_trial, tmp_path, tiny_trial):
    config, path = completed_trial
    store = tmp_path / "trial.zarr"
    copy_trial(path, store)
    zarr.open_group(str(store), mode="r+").attrs["complete"] = False
    other = compose_trial([*tiny_trial, "seed=6"])

    with pytest.raises(ValueError, match=rf"checkpoint {store.with_suffix('.ckpt.pt')} belongs to trial "
                                         rf"{trial_id(config)}, not {trial_id(other)}; use another store path or "
                                         r"delete both to restart"):
        run_trial(other, store)


def test_resume_refuses_a_checkpoint_of_the_generator_based_data_stream(completed_trial, tmp_path):
    config, path = completed_trial
    store = tmp_path / "trial.zarr"
    copy_trial(path, store)
    zarr.open_group(str(store), mode="r+").attrs["complete"] = False
    ckpt = store.with_suffix(".ckpt.pt")
    state = torch.load(ckpt, weights_only=False)
    del state["data_stream"]  # as written before the counter-based stream
    state["generator"] = torch.Generator().get_state()
    torch.save(state, ckpt)

    with pytest.raises(ValueError, match=rf"checkpoint {ckpt} was written by an icsweep that drew its data "
                                         rf"differently .* delete it and {store} to restart the trial"):
        run_trial(config, store)


def test_bad_clamp_fails_before_the_store_is_made(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "clamp=noclamp", "clamp.active_head=[1,9]"])

    with pytest.raises(ValueError, match=r"head 9 out of range; heads are 0..3"):
        run_trial(config, tmp_path / "trial.zarr")

    assert not (tmp_path / "trial.zarr").exists() and not checkpoint_path(tmp_path / "trial.zarr").exists()


def test_no_store_path(tiny_trial):
    with pytest.raises(ValueError, match=r"no store path: give store=PATH.zarr"):
        run_trial(compose_trial(tiny_trial))


# ---- kill and resume ---------------------------------------------------------------------------------------------

# Runs the tiny trial, but stops for good at the first flush that leaves rows past the first checkpoint (step 50)
# in the store, after the evaluation at step 75: the store then holds steps 0..81 and evaluations 0..75 while
# the checkpoint holds 50 steps and 3 evaluations. The parent kills it there with SIGKILL.
STALLING_CHILD = """
import sys, time
import ihmodel.train as train
from ihmodel.compose import compose_trial
from ihmodel.store import checkpoint_path

store, overrides = sys.argv[1], sys.argv[2:]
flush = train.Trial.flush

def flush_then_stall(self):
    rows = flush(self)
    if checkpoint_path(self.store.store_path).is_file() and self.store.writer.length("step") > 80:
        print("stalled at step", self.step, flush=True)
        time.sleep(600)
    return rows

train.Trial.flush = flush_then_stall
train.run_trial(compose_trial(overrides), store)
print("finished", flush=True)
"""


def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(completed_trial, tmp_path, tiny_trial):
    config, reference = completed_trial
    store = tmp_path / "trial.zarr"
    kill_when_stalled(STALLING_CHILD, [str(store), *tiny_trial], "stalled at step 82", tmp_path)
    killed = load(store)
    state = load_checkpoint(checkpoint_path(store), map_location=CPU)
    assert not is_complete(store)
    assert (killed.sizes["step"], killed.sizes["eval_step"]) == (82, 4)  # rows past the checkpoint...
    assert (state["step"], state["n_evals"]) == (50, 3)  # ...that the resumed run must drop and redo

    run_trial(config, store)

    assert is_complete(store)
    xr.testing.assert_identical(load(reference), load(store))


def test_resume_from_a_copy_taken_mid_run_equals_the_run_itself(tmp_path, tiny_trial):
    """The kill simulated in-process: copy store and checkpoint at a flush past the first checkpoint, let the run
    finish, then resume the copy."""
    config = compose_trial(tiny_trial)
    store, snapshot = tmp_path / "run.zarr", tmp_path / "snapshot.zarr"
    run_copying_mid_run(config, store, snapshot, at_step=66)
    assert not is_complete(snapshot) and load(snapshot).sizes["step"] == 66

    run_trial(config, snapshot)

    xr.testing.assert_identical(load(store), load(snapshot))


def test_resume_after_the_last_checkpoint_before_the_marker(completed_trial, tmp_path):
    """A kill between the final checkpoint and the completion marker: resuming only marks the store complete."""
    config, path = completed_trial
    store = tmp_path / "trial.zarr"
    copy_trial(path, store)
    zarr.open_group(str(store), mode="r+").attrs["complete"] = False

    run_trial(config, store)

    assert is_complete(store)
    xr.testing.assert_identical(load(path), load(store))


def test_resume_without_eval_statistics(tmp_path, tiny_trial):
    config = compose_trial([*tiny_trial, "stats=[loss,acc]"])
    store = run_trial(config, tmp_path / "trial.zarr")
    zarr.open_group(str(store), mode="r+").attrs["complete"] = False  # killed before the marker

    run_trial(config, store)

    assert is_complete(store)


@pytest.mark.parametrize("stats", ["[acc]", "[]", "[eval]"])
def test_trial_without_the_loss_statistic(tmp_path, tiny_trial, stats):
    config = compose_trial([*tiny_trial, f"stats={stats}", "train.sequences=1280"])  # 40 steps: 2 block flushes

    run_trial(config, tmp_path / "trial.zarr")

    assert is_complete(tmp_path / "trial.zarr")


@pytest.mark.slow
def test_sigkill_at_a_random_moment_after_the_first_checkpoint(tmp_path, tiny_trial):
    """No stall: the unmodified CLI is killed as soon as its first checkpoint appears, wherever it then is."""
    overrides = [*tiny_trial, "train.sequences=9600"]  # 300 steps, checkpoints every 50
    config = compose_trial(overrides)
    reference = run_trial(config, tmp_path / "reference.zarr")
    store = tmp_path / "trial.zarr"
    process = subprocess.Popen([sys.executable, "-m", "ihmodel.train", f"store={store}", *overrides],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint_path(store).is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if is_complete(store):
        pytest.skip("the trial finished before it could be killed")

    run_trial(config, store)

    expected, actual = load(reference), load(store)
    # the CLI's config names its store path (a resource field): same trial, other config_yaml
    assert trial_id(from_yaml(actual.attrs.pop("config_yaml"))) == trial_id(from_yaml(expected.attrs.pop("config_yaml")))
    xr.testing.assert_identical(expected, actual)


# ---- the command line ---------------------------------------------------------------------------------------------

def test_cli_runs_a_trial_and_prints_its_id(tmp_path, tiny_trial):
    store = tmp_path / "trial.zarr"
    overrides = [f"store={store}", *tiny_trial, "train.sequences=320"]

    done = subprocess.run([sys.executable, "-m", "ihmodel.train", *overrides], capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr
    expected_id = trial_id(compose_trial(overrides))
    assert done.stdout.startswith(f"trial {expected_id} complete in ")
    assert done.stdout.rstrip().endswith(str(store))
    assert is_complete(store)


def test_cli_bad_override_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ihmodel.train", f"store={tmp_path / 't.zarr'}", "data.bogus=1"],
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 2
    assert done.stderr.strip() == ("icsweep train: bad override: Key 'bogus' not in 'DataConfig' "
                                   "(keys: see `icsweep train --help`)")
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize("overrides, message", [
    (["data.bogus=1"], r"bad override: Key 'bogus' not in 'DataConfig'"),
    (["clamp=bogus"], r"Could not find 'clamp/bogus'; clamp sets: noclamp, none, perfect_copy, perfect_l1, "
                      r"perfect_l1_and_copy, perfect_match, perfect_prev_tok_attn_single"),
    (["data.n_labels=abc"], r"bad override: Value 'abc' of type 'str' could not be converted to Integer"),
    (["data.n_labels=1"], r"data.n_labels=1; needs at least 2 labels to form a pair"),
    (["stats=[loss,bogus]"], r"stats: unknown \['bogus'\]; choose from loss, acc"),
    (["device=cuda:7"], r"device=cuda:7 but CUDA is not available here; use device=auto or device=cpu"),
    ([], r"no store path: give store=PATH.zarr"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, overrides, message):
    if overrides == ["device=cuda:7"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    store = [f"store={tmp_path / 't.zarr'}"] if overrides else []

    code = main([*store, *overrides])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("icsweep train: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_cli_help_lists_the_clamp_sets(capsys):
    code = main(["--help"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("usage: icsweep train store=PATH.zarr")
    assert f"Clamp sets: {', '.join(clamp_set_names())}" in out
    assert all(name in out for name in ("noclamp", "perfect_l1_and_copy", "perfect_prev_tok_attn_single"))
