"""Clamps: each kind's effect on the tiny model, and the gradients they pass or block."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from clamp_helpers import (DH, H, INNER, POS, SMALL_MODEL, clamps, every_pass, gradients, is_nonzero, is_zero,
                           main_pass, plain, prev_token_table, qkv_rows)

from ihmodel.checkpoint import save_checkpoint
from ihmodel.clamp import LOGIT_NOT_IN_CONTEXT, ClampSet
from ihmodel.compose import compose_trial
from ihmodel.config import InterventionConfig as IV, TrialConfig
from ihmodel.model import Transformer


# ---- head kinds -----------------------------------------------------------------------------------------------

def test_prev_token_pattern_replaces_the_heads_whole_pattern(model, batch):
    name = "blocks.0.attn.hook_pattern"
    expected, _ = plain(model, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="prev_token_pattern", layer=0, heads=[1])), batch, [name])

    assert torch.equal(actual[name][:, 1], prev_token_table().expand(len(batch), -1, -1))
    for head in (0, 2, 3):
        torch.testing.assert_close(actual[name][:, head], expected[name][:, head])


def test_prev_token_pattern_on_chosen_query_rows(model, batch):
    name = "blocks.0.attn.hook_pattern"
    expected, _ = plain(model, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="prev_token_pattern", layer=0, heads=[1], positions=[2, 4])),
                          batch, [name])

    assert torch.equal(actual[name][:, 1, [2, 4]], prev_token_table()[[2, 4]].expand(len(batch), -1, -1))
    torch.testing.assert_close(actual[name][:, 1, [0, 1, 3]], expected[name][:, 1, [0, 1, 3]])


@pytest.mark.parametrize("strength", [1.0, 0.8, 0.3])
def test_induction_pattern_puts_strength_on_the_matching_label_token(model, batch, strength):
    name = "blocks.1.attn.hook_pattern"
    expected, _ = plain(model, batch, [name])
    label_token = torch.tensor([1, 3])  # tokens of the context labels y1, y2
    match_token = label_token[batch.match.long().argmax(1)]
    other_token = label_token[(~batch.match).long().argmax(1)]

    actual, _ = main_pass(clamps(model, IV(kind="induction_pattern", layer=1, heads=[2], strength=strength)),
                          batch, [name])

    query_row = torch.zeros(len(batch), POS)
    query_row[torch.arange(len(batch)), match_token] = strength
    query_row[torch.arange(len(batch)), other_token] = 1 - strength
    torch.testing.assert_close(actual[name][:, 2, -1], query_row)
    torch.testing.assert_close(actual[name][:, 2, :-1], expected[name][:, 2, :-1])  # other rows untouched
    torch.testing.assert_close(actual[name][:, [0, 1, 3]], expected[name][:, [0, 1, 3]])


def test_induction_pattern_spreads_strength_over_the_matching_label_tokens_at_burstiness_2(model_config):
    from ihmodel.config import DataConfig
    from ihmodel.data import Task

    task = Task(DataConfig(n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16,
                           burstiness=2, context_len=4), torch.device("cpu"))
    model = Transformer(model_config, task.d_in, 5, task.n_ctx, seed=0)
    batch = task.sample_train(6, seed=0)
    name = "blocks.1.attn.hook_pattern"

    seen, _ = main_pass(clamps(model, IV(kind="induction_pattern", layer=1, heads=[0], strength=0.8)), batch, [name])

    query_row = torch.zeros(len(batch), task.n_ctx)  # label tokens 1, 3, 5, 7; two match, two do not
    query_row[:, 1::2] = torch.where(batch.match, 0.8 / 2, 0.2 / 2)
    torch.testing.assert_close(seen[name][:, 0, -1], query_row)


def test_zero_value_zeroes_the_chosen_heads_values_only(model, batch):
    names = ["blocks.1.attn.hook_v", "blocks.1.attn.hook_z"]
    expected, _ = plain(model, batch, names)

    actual, _ = main_pass(clamps(model, IV(kind="zero_value", layer=1, heads=[0, 2])), batch, names)

    for name in names:
        assert (actual[name][:, :, [0, 2]] == 0).all()
        torch.testing.assert_close(actual[name][:, :, [1, 3]], expected[name][:, :, [1, 3]])


def test_zero_value_keep_heads_zeroes_every_other_head(model, batch):
    name = "blocks.1.attn.hook_v"
    expected, _ = plain(model, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="zero_value", layer=1, keep_heads=[3])), batch, [name])

    assert (actual[name][:, :, :3] == 0).all()
    torch.testing.assert_close(actual[name][:, :, 3], expected[name][:, :, 3])


def test_perfect_copy_logits_are_the_heads_scaled_scores_at_the_context_labels(model, batch):
    names = ["blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"]
    unclamped, _ = plain(model, batch, names)
    q, k = unclamped["blocks.1.attn.hook_rot_q"][:, -1, 2], unclamped["blocks.1.attn.hook_rot_k"][:, [1, 3], 2]
    scores = torch.einsum("bd,bid->bi", q, k) / DH ** 0.5  # query to label tokens 1 and 3, head 2, 1/sqrt(d_head)

    _, logits = main_pass(clamps(model, IV(kind="perfect_copy", layer=1, heads=[2])), batch)

    rows = torch.arange(len(batch))[:, None]
    torch.testing.assert_close(logits[rows, batch.context_labels], scores)
    in_context = torch.zeros_like(logits, dtype=torch.bool)
    in_context[rows, batch.context_labels] = True
    assert (logits[~in_context] == LOGIT_NOT_IN_CONTEXT).all()


def test_perfect_prev_token_input_feeds_layer_1_previous_tokens_then_removes_layer_0(model, batch):
    names = ["hook_embed", "blocks.0.hook_attn_out", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_pattern"]
    clamp_set = clamps(model, IV(kind="perfect_prev_token_input"))

    passes = every_pass(model, names, lambda: clamp_set.forward(batch))

    assert [len(outputs) for outputs in passes.values()] == [2, 2, 2, 2]  # first pass, main pass
    e = passes["hook_embed"][0]
    first_resid, main_resid = passes["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(first_resid, torch.stack([e[:, 0], e[:, 0], e[:, 1], e[:, 2], e[:, 4]], dim=1))
    assert (passes["blocks.0.hook_attn_out"][1] == 0).all()  # main pass: layer 0 writes nothing
    torch.testing.assert_close(main_resid, passes["hook_embed"][1])  # so layer 1 reads the raw embeddings
    first_pattern, main_pattern = passes["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(main_pattern, first_pattern)
    # the first pass's pattern is what layer 1 computes from the previous-token residual
    with model.hooks([("blocks.1.hook_resid_pre", lambda x, *, hook: first_resid)]):
        reference, _ = plain(model, batch, ["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(first_pattern, reference["blocks.1.attn.hook_pattern"])


def test_pattern_preserving_ablation_keeps_later_patterns(model, batch):
    names = ["blocks.0.attn.hook_v", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v"]
    unclamped, _ = plain(model, batch, names)
    ablated, _ = main_pass(clamps(model, IV(kind="zero_value", layer=0, heads=[1])), batch, names)

    preserved, _ = main_pass(clamps(model, IV(kind="pattern_preserving", layer=0, heads=[1])), batch, names)

    assert (preserved["blocks.0.attn.hook_v"][:, :, 1] == 0).all()
    assert not torch.allclose(ablated["blocks.1.attn.hook_pattern"], unclamped["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(preserved["blocks.1.attn.hook_pattern"], unclamped["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(preserved["blocks.1.attn.hook_v"], ablated["blocks.1.attn.hook_v"])


def test_value_preserving_ablation_keeps_later_values(model, batch):
    names = ["blocks.0.attn.hook_v", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v"]
    unclamped, _ = plain(model, batch, names)
    ablated, _ = main_pass(clamps(model, IV(kind="zero_value", layer=0, heads=[1])), batch, names)

    preserved, _ = main_pass(clamps(model, IV(kind="value_preserving", layer=0, heads=[1])), batch, names)

    assert (preserved["blocks.0.attn.hook_v"][:, :, 1] == 0).all()
    assert not torch.allclose(ablated["blocks.1.attn.hook_v"], unclamped["blocks.1.attn.hook_v"])
    torch.testing.assert_close(preserved["blocks.1.attn.hook_v"], unclamped["blocks.1.attn.hook_v"])
    torch.testing.assert_close(preserved["blocks.1.attn.hook_pattern"], ablated["blocks.1.attn.hook_pattern"])


# ---- generic kinds on any hook, with heads and positions masks ------------------------------------------------

def test_zero_on_chosen_heads_and_positions(model, batch):
    name = "blocks.0.attn.hook_z"
    expected, _ = plain(model, batch, [name])
    mask = torch.zeros(1, POS, H, 1, dtype=torch.bool)
    mask[:, [2, 3], 1] = True

    actual, _ = main_pass(clamps(model, IV(kind="zero", hook=name, heads=[1], positions=[2, 3])), batch, [name])

    assert (actual[name][mask.expand_as(actual[name])] == 0).all()
    torch.testing.assert_close(actual[name].masked_fill(mask, 0), expected[name].masked_fill(mask, 0))


def test_constant_on_chosen_positions(model, batch):
    name = "blocks.1.hook_resid_pre"
    expected, _ = plain(model, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="constant", hook=name, positions=[0], value=0.5)), batch, [name])

    assert (actual[name][:, 0] == 0.5).all()
    torch.testing.assert_close(actual[name][:, 1:], expected[name][:, 1:])


def test_constant_on_the_logits(model, batch):
    _, logits = main_pass(clamps(model, IV(kind="constant", hook="hook_logits", value=3.0)), batch)

    assert (logits == 3.0).all() and logits.shape == (len(batch), 5)


def test_mean_on_chosen_heads_is_the_batch_mean(model, batch):
    name = "blocks.0.attn.hook_q"
    expected, _ = plain(model, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="mean", hook=name, heads=[0])), batch, [name])

    torch.testing.assert_close(actual[name][:, :, 0], expected[name][:, :, 0].mean(0, keepdim=True).expand(
        len(batch), -1, -1))
    torch.testing.assert_close(actual[name][:, :, 1:], expected[name][:, :, 1:])


@pytest.fixture
def other_checkpoint(tmp_path, model_config, data_config, task):
    """Another trial's checkpoint: the same shape of model, another init."""
    other = Transformer(model_config, task.d_in, 5, POS, seed=1)
    path = tmp_path / "other.ckpt.pt"
    save_checkpoint(path, TrialConfig(seed=1, model=model_config, data=data_config), other,
                    torch.optim.Adam(other.parameters()), step=0, n_evals=0)
    return path, other


def test_checkpoint_sets_heads_to_another_models_values(model, batch, other_checkpoint):
    path, other = other_checkpoint
    name = "blocks.0.attn.hook_pattern"
    mine, _ = plain(model, batch, [name])
    theirs, _ = plain(other, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="checkpoint", hook=name, heads=[2], checkpoint=str(path))),
                          batch, [name])

    torch.testing.assert_close(actual[name][:, 2], theirs[name][:, 2])
    torch.testing.assert_close(actual[name][:, [0, 1, 3]], mine[name][:, [0, 1, 3]])
    assert not torch.allclose(mine[name][:, 2], theirs[name][:, 2])


def test_graft_takes_layer_0_output_from_another_model(model, batch, other_checkpoint):
    path, other = other_checkpoint
    name = "blocks.0.hook_attn_out"
    theirs, _ = plain(other, batch, [name])

    actual, _ = main_pass(clamps(model, IV(kind="graft", checkpoint=str(path))), batch, [name])

    torch.testing.assert_close(actual[name], theirs[name])


def test_graft_refuses_a_model_of_another_shape(tmp_path, model, data_config, task):
    config = TrialConfig(model=replace(model.cfg, n_heads=2, d_head=8), data=data_config)
    other = Transformer(config.model, task.d_in, 5, POS, seed=0)
    path = tmp_path / "other.ckpt.pt"
    save_checkpoint(path, config, other, torch.optim.Adam(other.parameters()), 0, 0)

    with pytest.raises(ValueError, match=r"clamp.interventions\[0\] \(graft\): checkpoint .*other.ckpt.pt holds a "
                                         r"model of another shape"):
        clamps(model, IV(kind="graft", checkpoint=str(path)))


def test_checkpoint_file_not_found_names_the_path(tmp_path, model):
    path = tmp_path / "missing.ckpt.pt"

    with pytest.raises(FileNotFoundError, match=rf"checkpoint {re.escape(str(path))} not found"):
        clamps(model, IV(kind="graft", checkpoint=str(path)))


# ---- gradients: constant clamps block them, clamps from a pass of the same model pass them ----------------------

def test_zero_value_head_gets_no_gradient_in_its_qkv_or_output(model, batch):
    grads = gradients(clamps(model, IV(kind="zero_value", layer=1, heads=[2])), batch)
    qkv, w_o = grads["blocks.1.attn.W_QKV.weight"], grads["blocks.1.attn.W_O.weight"]

    for part, rows in qkv_rows(2).items():
        assert is_zero(qkv[rows]), part
    assert is_zero(w_o[:, 2 * DH:3 * DH])
    for part, rows in qkv_rows(1).items():  # an unablated head learns
        assert is_nonzero(qkv[rows]), part
    assert is_nonzero(w_o[:, DH:2 * DH])


def test_prev_token_pattern_head_gets_no_gradient_in_its_query_and_key(model, batch):
    grads = gradients(clamps(model, IV(kind="prev_token_pattern", layer=0, heads=[1])), batch)
    qkv = grads["blocks.0.attn.W_QKV.weight"]
    rows = qkv_rows(1)

    assert is_zero(qkv[rows["q"]]) and is_zero(qkv[rows["k"]])
    assert is_nonzero(qkv[rows["v"]])
    assert is_nonzero(qkv[qkv_rows(0)["q"]])


@pytest.mark.parametrize("kind", ["zero", "constant", "mean", "checkpoint"])
def test_constant_kinds_on_the_pattern_block_every_query_and_key_of_the_layer(model, batch, other_checkpoint, kind):
    path, _ = other_checkpoint
    intervention = IV(kind=kind, hook="blocks.1.attn.hook_pattern", value=0.2, checkpoint=str(path))

    grads = gradients(clamps(model, intervention), batch)

    qkv = grads["blocks.1.attn.W_QKV.weight"]

    assert is_zero(qkv[:2 * INNER])  # every q and k row
    assert is_nonzero(qkv[2 * INNER:]) == (kind != "zero")  # values still learn, unless nothing is attended to


def test_perfect_copy_trains_the_heads_match_through_the_first_pass(model, batch):
    grads = gradients(clamps(model, IV(kind="perfect_copy", layer=1, heads=[2])), batch)
    qkv = grads["blocks.1.attn.W_QKV.weight"]

    assert is_nonzero(qkv[qkv_rows(2)["q"]]) and is_nonzero(qkv[qkv_rows(2)["k"]])
    assert is_nonzero(grads["blocks.0.attn.W_QKV.weight"])  # through the first pass into layer 0
    for head in (0, 1, 3):  # only head 2's scores reach the logits
        assert is_zero(qkv[qkv_rows(head)["q"]]) and is_zero(qkv[qkv_rows(head)["k"]])
    assert is_zero(qkv[2 * INNER:])  # no value, output or readout reaches the logits
    assert is_zero(grads["blocks.1.attn.W_O.weight"])
    assert is_zero(grads["unembed.weight"]) and is_zero(grads["unembed.bias"])


def test_perfect_prev_token_input_trains_layer_1_match_through_the_first_pass(model, batch):
    grads = gradients(clamps(model, IV(kind="perfect_prev_token_input")), batch)
    qkv = grads["blocks.1.attn.W_QKV.weight"]

    assert is_nonzero(qkv[:INNER]) and is_nonzero(qkv[INNER:2 * INNER])  # q and k, via the first pass's pattern
    assert is_nonzero(qkv[2 * INNER:])  # v, in the main pass
    assert is_nonzero(grads["embed_label"]) and is_nonzero(grads["embed_exemplar.weight"])
    for name, grad in grads.items():  # layer 0 is removed from both passes
        if name.startswith("blocks.0."):
            assert is_zero(grad), name


def adam_steps(clamp_set: ClampSet, task, steps: int = 5) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(before, after) of every parameter over a few fused-Adam steps at a large lr, as the trainer runs it."""
    model = clamp_set.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for step in range(steps):
        batch = task.sample_train(32, seed=0, step=step)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(clamp_set.forward(batch), batch.query_label).backward()
        optimizer.step()
    return {name: (before[name], p.detach()) for name, p in model.named_parameters()}


def test_clamped_parameters_never_change_under_adam(model, task):
    config = compose_trial(["clamp=perfect_prev_tok_attn_single", *SMALL_MODEL])  # 0:2 prev-token, 1:3 alone

    params = adam_steps(ClampSet(config.clamp, model), task)

    qkv0_before, qkv0_after = params["blocks.0.attn.W_QKV.weight"]
    for part in "qk":
        assert torch.equal(qkv0_before[qkv_rows(2)[part]], qkv0_after[qkv_rows(2)[part]]), part
    assert not torch.equal(qkv0_before[qkv_rows(2)["v"]], qkv0_after[qkv_rows(2)["v"]])
    assert not torch.equal(qkv0_before[qkv_rows(1)["q"]], qkv0_after[qkv_rows(1)["q"]])
    qkv1_before, qkv1_after = params["blocks.1.attn.W_QKV.weight"]
    w_o1_before, w_o1_after = params["blocks.1.attn.W_O.weight"]
    for head in (0, 1, 2):
        for part, rows in qkv_rows(head).items():
            assert torch.equal(qkv1_before[rows], qkv1_after[rows]), (head, part)
        assert torch.equal(w_o1_before[:, head * DH:(head + 1) * DH], w_o1_after[:, head * DH:(head + 1) * DH])
    for part, rows in qkv_rows(3).items():
        assert not torch.equal(qkv1_before[rows], qkv1_after[rows]), part


def test_layer_0_never_changes_under_perfect_previous_token_input(model, task):
    config = compose_trial(["clamp=perfect_l1", *SMALL_MODEL])

    params = adam_steps(ClampSet(config.clamp, model), task)

    for name, (before, after) in params.items():
        if name.startswith("blocks.0."):
            assert torch.equal(before, after), name
    qkv1_before, qkv1_after = params["blocks.1.attn.W_QKV.weight"]
    assert not torch.equal(qkv1_before[qkv_rows(3)["q"]], qkv1_after[qkv_rows(3)["q"]])
    assert torch.equal(qkv1_before[qkv_rows(0)["q"]], qkv1_after[qkv_rows(0)["q"]])
