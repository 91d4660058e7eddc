"""run_pack: each trial of a pack (mixed clamp sets, seeds, lr) records what it records alone, to float tolerance;
a killed pack resumes identically; a failing trial fails alone; checkpoints interchange with run_trial."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

from ihmodel.compose import compose_trial
from ihmodel import pack
from ihmodel.model import Transformer
from ihmodel.pack import Shared, pack_key, run_pack
from ihmodel.stacked import StackedAdam, StackedParameters
from ihmodel.store import checkpoint_path, is_complete
from ihmodel.train import run_trial
from stall_helpers import kill_when_stalled

# Four trials that share a pack: two clamp sets (one needing a first pass), four seeds, two learning rates.
MIXED = [["seed=1", "clamp=none"], ["seed=2", "clamp=perfect_match"], ["seed=3", "clamp=none", "train.lr=3e-4"],
         ["seed=4", "clamp=perfect_l1_and_copy"]]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding of batched versus single products over 100 steps


def load(path) -> xr.Dataset:
    ds = xr.open_zarr(path, consolidated=False).load()
    ds.attrs.pop("git_sha")
    return ds


def configs(tiny_trial, specs=MIXED, extra=()):
    return [compose_trial(tiny_trial + ["train.lr=1e-3", *extra, *spec]) for spec in specs]


@pytest.fixture(scope="module")
def alone(tmp_path_factory, tiny_trial_overrides):
    """The MIXED trials, each run alone once per module: path of trial i."""
    directory = tmp_path_factory.mktemp("alone")
    paths = []
    for i, config in enumerate(configs(list(tiny_trial_overrides))):
        paths.append(run_trial(config, directory / f"t{i}.zarr"))
    return paths


def assert_same_statistics(expected: xr.Dataset, actual: xr.Dataset, exact: bool = False):
    assert set(expected.data_vars) == set(actual.data_vars)
    for name in expected.data_vars:
        if exact:
            np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)
        else:
            np.testing.assert_allclose(actual[name].values, expected[name].values, err_msg=name, **TOLERANCE)
    for coord in ("step", "sequences", "eval_step", "trial_id", "clamp_set", "seed_init", "seed_data"):
        np.testing.assert_array_equal(actual[coord].values, expected[coord].values)


def test_each_trial_of_a_mixed_pack_records_what_it_records_alone(alone, tiny_trial, tmp_path):
    paths = [tmp_path / f"p{i}.zarr" for i in range(4)]

    errors = run_pack(configs(tiny_trial), paths)

    assert errors == [None] * 4
    for expected, actual in zip(alone, paths):
        assert is_complete(actual)
        packed, single = load(actual), load(expected)
        assert packed.attrs == single.attrs  # the same config, trial id and version: nothing says "packed"
        assert_same_statistics(single, packed)


def test_a_pack_writing_through_store_processes_records_what_it_writes_in_process(tiny_trial, tmp_path,
                                                                                    monkeypatch):
    in_process = [tmp_path / f"a{i}.zarr" for i in range(4)]
    pooled = [tmp_path / f"b{i}.zarr" for i in range(4)]
    assert run_pack(configs(tiny_trial), in_process) == [None] * 4

    monkeypatch.setattr(pack, "store_workers", lambda device, trials: 2)
    assert run_pack(configs(tiny_trial), pooled) == [None] * 4

    for expected, actual in zip(in_process, pooled):
        assert is_complete(actual)
        assert_same_statistics(load(expected), load(actual), exact=True)


def test_a_pack_is_idempotent_and_skips_complete_trials(alone, tiny_trial, tmp_path):
    paths = [tmp_path / f"p{i}.zarr" for i in range(4)]
    trials = configs(tiny_trial)
    run_pack(trials[:1], paths[:1])
    first = load(paths[0])

    errors = run_pack(trials, paths)  # trial 0 is complete: the other three train, trial 0 is untouched

    assert errors == [None] * 4
    xr.testing.assert_identical(load(paths[0]), first)
    assert all(is_complete(p) for p in paths)


STALLING_PACK = """
import sys, time
import ihmodel.pack as pack
from ihmodel.compose import compose_trial
from ihmodel.store import checkpoint_path

directory, overrides, specs = sys.argv[1], sys.argv[2].split(), [s.split(",") for s in sys.argv[3:]]
flush = pack.Pack.flush

def flush_then_stall(self):
    rows = flush(self)
    if checkpoint_path(self.members[0].store.store_path).is_file() and self.step > 60:
        print("stalled at step", self.step, flush=True)
        time.sleep(600)
    return rows

pack.Pack.flush = flush_then_stall
configs = [compose_trial(overrides + spec) for spec in specs]
print(pack.run_pack(configs, [f"{directory}/p{i}.zarr" for i in range(len(configs))]), flush=True)
"""


def kill_pack_after_a_checkpoint(tmp_path, tiny_trial) -> list:
    overrides = " ".join(tiny_trial + ["train.lr=1e-3"])
    kill_when_stalled(STALLING_PACK, [str(tmp_path), overrides, *[",".join(spec) for spec in MIXED]],
                      "stalled at step", tmp_path)
    return [tmp_path / f"p{i}.zarr" for i in range(len(MIXED))]


def test_a_killed_pack_resumes_to_what_an_uninterrupted_pack_records(alone, tiny_trial, tmp_path):
    uninterrupted = [tmp_path / "whole" / f"p{i}.zarr" for i in range(4)]
    run_pack(configs(tiny_trial), uninterrupted)
    paths = kill_pack_after_a_checkpoint(tmp_path, tiny_trial)
    assert not any(is_complete(p) for p in paths) and all(checkpoint_path(p).is_file() for p in paths)

    errors = run_pack(configs(tiny_trial), paths)

    assert errors == [None] * 4
    for expected, actual in zip(uninterrupted, paths):
        assert_same_statistics(load(expected), load(actual), exact=True)


def test_a_packed_trials_checkpoint_resumes_alone(alone, tiny_trial, tmp_path):
    paths = kill_pack_after_a_checkpoint(tmp_path, tiny_trial)

    for config, path, expected in zip(configs(tiny_trial), paths, alone):
        run_trial(config, path)  # the pack's checkpoint (torch.optim.Adam's format) continues alone

        assert_same_statistics(load(expected), load(path))


def test_a_trial_with_a_bad_clamp_fails_alone_before_training(tiny_trial, tmp_path):
    specs = [MIXED[0], ["seed=2", "clamp=noclamp", "clamp.active_head=[1,9]"], MIXED[2]]
    paths = [tmp_path / f"p{i}.zarr" for i in range(3)]

    errors = run_pack(configs(tiny_trial, specs), paths)

    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], ValueError) and "head 9 out of range" in str(errors[1])
    assert is_complete(paths[0]) and is_complete(paths[2]) and not paths[1].exists()


def test_a_diverging_trial_fails_without_touching_its_pack_mates(alone, tiny_trial, tmp_path):
    # Infinite within-class noise makes trial 1's inputs, then its loss, non-finite from the first step.
    specs = [MIXED[0], ["seed=2", "clamp=perfect_match", "data.noise=inf"], MIXED[2]]
    paths = [tmp_path / f"p{i}.zarr" for i in range(3)]

    errors = run_pack(configs(tiny_trial, specs), paths)

    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], FloatingPointError) and "not finite from step 0" in str(errors[1])
    assert not is_complete(paths[1]) and load(paths[1]).sizes["step"] == 16  # its first flush, kept for diagnosis
    assert_same_statistics(load(alone[0]), load(paths[0]))
    assert_same_statistics(load(alone[2]), load(paths[2]))


def test_a_diverging_trial_alone_fails_the_same_way(tiny_trial, tmp_path):
    config = compose_trial(tiny_trial + ["data.noise=inf"])

    with pytest.raises(FloatingPointError, match="not finite from step 0; it diverged: lower train.lr"):
        run_trial(config, tmp_path / "t.zarr")


def test_pack_key_groups_trials_that_keep_shapes(tiny_trial):
    base = pack_key(compose_trial(tiny_trial))
    for same in (["seed=9"], ["clamp=perfect_match"], ["train.lr=1e-2"], ["data.n_train_classes=20"],
                 ["data.zipf_exponent=1"]):
        assert pack_key(compose_trial(tiny_trial + same)) == base, same
    for other in (["data.n_labels=7"], ["data.burstiness=2", "data.context_len=4"], ["train.sequences=6400"],
                  ["model.d_model=32"], ["threads=2"], ["stats=[loss]"]):
        assert pack_key(compose_trial(tiny_trial + other)) != base, other


def test_trials_that_cannot_share_a_pack_are_refused_before_any_work(tiny_trial, tmp_path):
    trials = [compose_trial(tiny_trial), compose_trial(tiny_trial + ["data.n_labels=7"])]

    with pytest.raises(ValueError, match="cannot share a pack"):
        run_pack(trials, [tmp_path / "a.zarr", tmp_path / "b.zarr"])
    with pytest.raises(ValueError, match="2 configs but 1 store paths"):
        run_pack(trials, [tmp_path / "a.zarr"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_a_members_initial_state_is_the_one_its_own_transformer_starts_with(model_config, task, positional):
    cfg = dataclasses.replace(model_config, positional=positional)
    template = Transformer(cfg, d_in=task.d_in, d_vocab=task.config.n_labels, n_ctx=task.n_ctx, seed=0)
    shared = Shared()

    for seed in (1, 7, 1):
        expected = Transformer(cfg, d_in=task.d_in, d_vocab=task.config.n_labels, n_ctx=task.n_ctx,
                               seed=seed).state_dict()
        actual = shared.initial_state(template, seed)
        assert actual.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_stacked_adam_steps_like_torch_adam_for_each_trial(model):
    settings = [(1e-3, 0.9, 0.999, 1e-8), (3e-2, 0.8, 0.99, 1e-6)]
    models = [model, type(model)(model.cfg, model.embed_exemplar.in_features, model.d_vocab, model.n_ctx, seed=1)]
    trains = [compose_trial([f"train.lr={lr}", f"train.beta1={b1}", f"train.beta2={b2}", f"train.adam_eps={eps}"]).train
              for lr, b1, b2, eps in settings]
    params = StackedParameters(model, [m.state_dict() for m in models], torch.device("cpu"))
    stacked = StackedAdam(params, trains, fused=False)
    references = [torch.optim.Adam(m.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps)
                  for m, t in zip(models, trains)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for name, tensor in params.tensors.items():
            tensor.grad = torch.randn(tensor.shape, generator=generator)
        norms = stacked.step()
        for k, (m, optimizer) in enumerate(zip(models, references)):
            for name, p in m.named_parameters():
                p.grad = params.tensors[name].grad[k].clone()
            optimizer.step()
            grads = [p.grad for p in m.parameters()]
            torch.testing.assert_close(norms[k], torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))

    for k, (m, optimizer) in enumerate(zip(models, references)):
        for name, value in params.state_dict(k).items():
            torch.testing.assert_close(value, m.state_dict()[name], rtol=1e-5, atol=1e-7)
        exported, reference = stacked.state_dict(k), optimizer.state_dict()
        assert exported["param_groups"][0]["lr"] == reference["param_groups"][0]["lr"]
        for i, entry in reference["state"].items():
            assert float(exported["state"][i]["step"]) == float(entry["step"]) == 3
            torch.testing.assert_close(exported["state"][i]["exp_avg"], entry["exp_avg"])
            torch.testing.assert_close(exported["state"][i]["exp_avg_sq"], entry["exp_avg_sq"])


def test_auto_pack_size_measures_a_power_of_two_within_the_limit(tiny_trial, tmp_path):
    from ihmodel.pack import auto_pack_size

    k = auto_pack_size(compose_trial(tiny_trial), limit=8)

    assert k in (1, 2, 4, 8)
    assert not any(tmp_path.iterdir())  # measuring writes no store


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_trial_of_a_mixed_pack_on_cuda_records_what_it_records_alone_on_cuda(tiny_trial, tmp_path):
    trials = configs(tiny_trial, extra=["device=cuda"])
    alone_on_cuda = [run_trial(config, tmp_path / f"alone{i}.zarr") for i, config in enumerate(trials)]
    packed = [tmp_path / f"pack{i}.zarr" for i in range(4)]

    errors = run_pack(trials, packed)

    assert errors == [None] * 4
    for expected, actual in zip(alone_on_cuda, packed):
        assert_same_statistics(load(expected), load(actual))
