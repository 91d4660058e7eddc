"""The transformer: hook points and their shapes, hook lifetime, the paper's init, RoPE, causal mask, sizes."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from ihmodel.config import ModelConfig
from ihmodel.model import TRUNCATED_STD_CORRECTION, TableRows, Transformer

B, POS, D, H, DH, V = 6, 5, 16, 4, 4, 5  # the fixtures: batch, tokens, d_model, heads, d_head, labels


def expected_shapes(n_layers: int = 2) -> dict[str, tuple[int, ...]]:
    """STYLE.md's hook table, plus this model's extras (rot_q/rot_k after RoPE, logits)."""
    shapes = {"hook_embed": (B, POS, D), "hook_logits": (B, V)}
    for layer in range(n_layers):
        block, attn = f"blocks.{layer}", f"blocks.{layer}.attn"
        shapes |= {f"{block}.hook_resid_pre": (B, POS, D), f"{block}.hook_resid_post": (B, POS, D),
                   f"{block}.hook_attn_out": (B, POS, D)}
        for name in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"):
            shapes[f"{attn}.{name}"] = (B, POS, H, DH)
        shapes[f"{attn}.hook_attn_scores"] = shapes[f"{attn}.hook_pattern"] = (B, H, POS, POS)
        shapes[f"{attn}.hook_result"] = (B, POS, H, D)
    return shapes


def record_all(model: Transformer, batch, query_only: bool = False) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {}

    def record(x, *, hook):
        seen.setdefault(hook.name, []).append(x.detach().clone())

    with model.hooks([(name, record) for name in model.hook_dict]):
        model(batch.x, batch.context_labels, query_only)
    return seen


def no_hooks_attached(model: Transformer) -> bool:
    return all(not point.fns for point in model.hook_dict.values())


# ---- hook points ----------------------------------------------------------------------------------------------

def test_every_hook_point_fires_once_with_its_documented_shape(model_config, task, batch):
    model = Transformer(replace(model_config, use_hook_result=True), task.d_in, V, POS, seed=0)

    seen = record_all(model, batch)

    assert sorted(model.hook_names()) == sorted(expected_shapes())
    assert {name: [tuple(x.shape) for x in xs] for name, xs in seen.items()} == {
        name: [shape] for name, shape in expected_shapes().items()}


def test_query_only_computes_the_last_layer_at_the_query_alone_with_the_same_logits(model_config, task, batch):
    model = Transformer(replace(model_config, use_hook_result=True), task.d_in, V, POS, seed=0)
    every = record_all(model, batch)
    alone = record_all(model, batch, query_only=True)

    torch.testing.assert_close(alone["hook_logits"], every["hook_logits"])
    queried = {f"blocks.1.{name}": 1 for name in ("hook_attn_out", "hook_resid_post")} | {
        f"blocks.1.attn.{name}": 1 for name in ("hook_q", "hook_rot_q", "hook_z", "hook_result")} | {
        f"blocks.1.attn.{name}": 2 for name in ("hook_attn_scores", "hook_pattern")}  # the query axis
    for name in expected_shapes():
        axis = queried.get(name)
        expected = every[name][0] if axis is None else every[name][0].narrow(axis, POS - 1, 1)
        torch.testing.assert_close(alone[name], [expected], msg=name)


def test_hook_result_is_opt_in_and_sums_to_attn_out(model_config, task, batch):
    plain = Transformer(model_config, task.d_in, V, POS, seed=0)
    with_result = Transformer(replace(model_config, use_hook_result=True), task.d_in, V, POS, seed=0)

    seen_plain, seen = record_all(plain, batch), record_all(with_result, batch)

    assert "blocks.0.attn.hook_result" not in plain.hook_names()
    assert "blocks.0.attn.hook_result" not in seen_plain
    for layer in range(2):
        result = seen[f"blocks.{layer}.attn.hook_result"][0]  # [batch, pos, head, d_model]
        torch.testing.assert_close(result.sum(2), seen[f"blocks.{layer}.hook_attn_out"][0])
    torch.testing.assert_close(seen["hook_logits"][0], seen_plain["hook_logits"][0])


def test_learned_positions_fire_hook_pos_embed_and_drop_rotary(model_config, task, batch):
    model = Transformer(replace(model_config, positional="learned"), task.d_in, V, POS, seed=0)

    seen = record_all(model, batch)

    assert "hook_pos_embed" in seen
    assert "blocks.0.attn.hook_rot_q" not in model.hook_names() and "blocks.0.attn.hook_rot_q" not in seen
    assert not hasattr(model.blocks[0].attn, "rope_cos")
    assert model.pos_embed.shape == (POS, D)
    assert model.pos_embed.abs().max() <= 0.04
    torch.testing.assert_close(seen["blocks.0.hook_resid_pre"][0],
                               seen["hook_embed"][0] + model.pos_embed.detach())


def test_hook_pos_embed_has_the_documented_shape(model_config, task, batch):
    model = Transformer(replace(model_config, positional="learned"), task.d_in, V, POS, seed=0)

    seen = record_all(model, batch)

    assert tuple(seen["hook_pos_embed"][0].shape) == (B, POS, D)


def test_no_positional_information_makes_a_one_layer_model_blind_to_item_order(model_config, task, batch):
    swapped_x, swapped_labels = batch.x[:, [1, 0, 2]], batch.context_labels[:, [1, 0]]
    logits = {}
    for positional in ("none", "rope"):
        model = Transformer(replace(model_config, n_layers=1, positional=positional), task.d_in, V, POS, seed=0)
        logits[positional] = model(batch.x, batch.context_labels), model(swapped_x, swapped_labels)

    assert not any(name.endswith(("rot_q", "pos_embed")) for name in Transformer(
        replace(model_config, positional="none"), task.d_in, V, POS, seed=0).hook_names())
    torch.testing.assert_close(*logits["none"])  # the query attends to a set of keys: order is invisible
    assert not torch.allclose(*logits["rope"])


def test_hooks_are_removed_after_the_context(model, batch):
    calls = []
    with model.hooks([("blocks.1.attn.hook_pattern", lambda x, *, hook: calls.append(hook.name))]):
        assert len(model.hook_dict["blocks.1.attn.hook_pattern"].fns) == 1
        model(batch.x, batch.context_labels)
    model(batch.x, batch.context_labels)

    assert calls == ["blocks.1.attn.hook_pattern"]
    assert no_hooks_attached(model)


def test_hooks_are_removed_when_the_block_raises(model, batch):
    def failing(x, *, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        with model.hooks([("hook_embed", lambda x, *, hook: None), ("blocks.0.attn.hook_z", failing)]):
            model(batch.x, batch.context_labels)
    with pytest.raises(RuntimeError, match="body failed"):
        with model.hooks([("hook_embed", lambda x, *, hook: None)]):
            raise RuntimeError("body failed")

    assert no_hooks_attached(model)


def test_unknown_hook_name_attaches_nothing(model):
    with pytest.raises(ValueError, match=r"no hook 'blocks.2.attn.hook_pattern'; hooks are hook_embed, "):
        with model.hooks([("hook_embed", lambda x, *, hook: None), ("blocks.2.attn.hook_pattern", print)]):
            pass

    assert no_hooks_attached(model)


def test_a_hook_returning_a_tensor_replaces_the_activation_and_none_keeps_it(model, batch):
    plain = model(batch.x, batch.context_labels)
    with model.hooks([("blocks.1.hook_resid_post", lambda x, *, hook: None)]):
        observed = model(batch.x, batch.context_labels)
    with model.hooks([("hook_logits", lambda x, *, hook: torch.zeros_like(x))]):
        replaced = model(batch.x, batch.context_labels)

    torch.testing.assert_close(observed, plain)
    assert torch.equal(replaced, torch.zeros(B, V))


# ---- the forward pass -----------------------------------------------------------------------------------------

def test_tokens_are_exemplar_and_label_embeddings_interleaved(model, batch):
    seen = record_all(model, batch)
    with torch.no_grad():
        e = model.embed_exemplar(batch.x)  # [batch, item, d_model]
        y = model.embed_label[batch.context_labels]  # [batch, context_item, d_model]

    expected = torch.stack([e[:, 0], y[:, 0], e[:, 1], y[:, 1], e[:, 2]], dim=1)

    torch.testing.assert_close(seen["hook_embed"][0], expected)
    torch.testing.assert_close(seen["blocks.0.hook_resid_pre"][0], expected)  # nothing else added (RoPE)


def test_pre_layernorm_qkv_and_final_readout(model, batch):
    seen = record_all(model, batch)
    block = model.blocks[0]
    with torch.no_grad():
        qkv = block.attn.W_QKV(block.ln1(seen["blocks.0.hook_resid_pre"][0])).view(B, POS, 3, H, DH)
        logits = model.unembed(model.ln_final(seen["blocks.1.hook_resid_post"][0][:, -1]))

    torch.testing.assert_close(seen["blocks.0.attn.hook_q"][0], qkv[:, :, 0])  # head h = dims 4h..4h+3
    torch.testing.assert_close(seen["blocks.0.attn.hook_k"][0], qkv[:, :, 1])
    torch.testing.assert_close(seen["blocks.0.attn.hook_v"][0], qkv[:, :, 2])
    torch.testing.assert_close(seen["hook_logits"][0], logits)
    torch.testing.assert_close(seen["blocks.0.hook_resid_post"][0],
                               seen["blocks.0.hook_resid_pre"][0] + seen["blocks.0.hook_attn_out"][0])


def test_rope_rotates_interleaved_pairs(model, batch):
    seen = record_all(model, batch)
    for layer in range(2):
        for which in ("q", "k"):
            x = seen[f"blocks.{layer}.attn.hook_{which}"][0].double()  # [batch, pos, head, d_head]
            expected = torch.empty_like(x)
            for p in range(POS):
                for i in range(DH // 2):
                    theta = p * 10000.0 ** (-2 * i / DH)
                    a, b = x[:, p, :, 2 * i], x[:, p, :, 2 * i + 1]
                    expected[:, p, :, 2 * i] = a * math.cos(theta) - b * math.sin(theta)
                    expected[:, p, :, 2 * i + 1] = a * math.sin(theta) + b * math.cos(theta)

            actual = seen[f"blocks.{layer}.attn.hook_rot_{which}"][0]

            torch.testing.assert_close(actual, expected.float())


def test_scores_are_rotated_dot_products_over_sqrt_d_head_masked_after_the_hook(model, batch):
    seen = record_all(model, batch)
    q, k = seen["blocks.1.attn.hook_rot_q"][0], seen["blocks.1.attn.hook_rot_k"][0]
    future = torch.ones(POS, POS, dtype=torch.bool).triu(1)

    expected = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(DH)
    scores = seen["blocks.1.attn.hook_attn_scores"][0]

    torch.testing.assert_close(scores, expected)  # the hook sees every score; the causal mask comes after it
    torch.testing.assert_close(seen["blocks.1.attn.hook_pattern"][0], scores.masked_fill(future, -math.inf).softmax(-1))


def test_a_clamp_on_the_scores_cannot_unmask_the_future(model, batch):
    with model.hooks([("blocks.0.attn.hook_attn_scores", lambda x, *, hook: torch.zeros_like(x))]):
        seen = record_all(model, batch)

    future = torch.ones(POS, POS, dtype=torch.bool).triu(1)
    pattern = seen["blocks.0.attn.hook_pattern"][0]
    assert (pattern[..., future] == 0).all()
    torch.testing.assert_close(pattern[:, :, -1], torch.full_like(pattern[:, :, -1], 1 / POS))


def test_causal_pattern_is_lower_triangular_with_rows_summing_to_one(model, batch):
    seen = record_all(model, batch)
    future = torch.ones(POS, POS, dtype=torch.bool).triu(1)

    for layer in range(2):
        pattern = seen[f"blocks.{layer}.attn.hook_pattern"][0]
        assert (pattern[..., future] == 0).all()
        assert (pattern[..., ~future] > 0).all()  # a token sees itself and everything before
        torch.testing.assert_close(pattern.sum(-1), torch.ones(B, H, POS))
        assert (pattern[:, :, 0, 0] == 1).all()


def test_later_tokens_do_not_change_earlier_positions(model, batch):
    changed_x = batch.x.clone()
    changed_x[:, -1] += 1.0  # a different query
    changed_labels = batch.context_labels.clone()
    changed_labels[:, 1] = (changed_labels[:, 1] + 1) % V  # and a different second label (token 3)

    before = record_all(model, batch)
    after = record_all(model, type(batch)(changed_x, changed_labels, batch.query_label, batch.match))

    for layer in range(2):
        resid = f"blocks.{layer}.hook_resid_post"
        torch.testing.assert_close(after[resid][0][:, :3], before[resid][0][:, :3])
        assert not torch.allclose(after[resid][0][:, 3:], before[resid][0][:, 3:])


# ---- init -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper_model() -> Transformer:
    return Transformer(ModelConfig(), d_in=512, d_vocab=5, n_ctx=5, seed=5)


def test_linear_weights_are_lecun_normal_truncated_at_two_sigma(paper_model):
    linears = {name: m for name, m in paper_model.named_modules() if isinstance(m, nn.Linear)}

    assert set(linears) == {"embed_exemplar", "blocks.0.attn.W_QKV", "blocks.0.attn.W_O", "blocks.1.attn.W_QKV",
                            "blocks.1.attn.W_O", "unembed"}
    for name, linear in linears.items():
        fan_in = linear.weight.shape[1]
        sigma = math.sqrt(1.0 / fan_in) / TRUNCATED_STD_CORRECTION  # of the normal before truncation
        weight = linear.weight.detach()
        assert weight.abs().max().item() <= 2 * sigma, name
        assert weight.abs().max().item() > 1.8 * sigma, name  # truncated, not a narrower distribution
        if weight.numel() >= 4096:  # variance 1/fan_in after truncation
            assert weight.std().item() == pytest.approx(math.sqrt(1.0 / fan_in), rel=0.05), name
        if linear.bias is not None:
            assert (linear.bias == 0).all(), name


def test_label_embedding_is_002_times_a_normal_truncated_at_two(paper_model):
    weight = paper_model.embed_label.detach()

    assert weight.shape == (5, 64)
    assert weight.abs().max().item() <= 0.04
    assert weight.std().item() == pytest.approx(0.02 * TRUNCATED_STD_CORRECTION, rel=0.15)


def test_layernorms_start_as_identity_affine(paper_model):
    norms = [m for m in paper_model.modules() if isinstance(m, nn.LayerNorm)]

    assert len(norms) == 3  # pre-LN per block and the final LN
    for norm in norms:
        assert (norm.weight == 1).all() and (norm.bias == 0).all() and norm.eps == 1e-5


def test_init_is_seeded(model_config, task):
    first, again, other = (Transformer(model_config, task.d_in, V, POS, seed=s).state_dict() for s in (0, 0, 1))

    for name in first:
        assert torch.equal(first[name], again[name]), name
    assert not torch.equal(first["blocks.0.attn.W_QKV.weight"], other["blocks.0.attn.W_QKV.weight"])


# ---- sizes and options ----------------------------------------------------------------------------------------

def test_parameter_count_of_the_paper_model(paper_model):
    embed_exemplar = 512 * 64 + 64  # linear with bias
    embed_label = 5 * 64  # one-hot(L) -> d_model, no bias
    block = 2 * 64 + 64 * 192 + 64 * 64  # LayerNorm, fused QKV and output projection (no biases)
    final = 2 * 64 + 64 * 5 + 5  # final LayerNorm, readout with bias

    count = sum(p.numel() for p in paper_model.parameters())

    assert count == embed_exemplar + embed_label + 2 * block + final == 66_629


def test_attention_only_by_default_and_an_optional_mlp(model_config, task, batch):
    attn_only = Transformer(model_config, task.d_in, V, POS, seed=0)
    with_mlp = Transformer(replace(model_config, d_mlp=32), task.d_in, V, POS, seed=0)

    seen = record_all(with_mlp, batch)
    n_attn_only = sum(p.numel() for p in attn_only.parameters())
    n_with_mlp = sum(p.numel() for p in with_mlp.parameters())

    assert not any("mlp" in name for name, _ in attn_only.named_parameters())
    assert not any("mlp" in name for name in attn_only.hook_names())
    assert n_with_mlp - n_attn_only == 2 * (2 * D + D * 32 + 32 + 32 * D + D)  # ln2 + two linears per block
    assert tuple(seen["blocks.0.hook_mlp_out"][0].shape) == (B, POS, D)
    torch.testing.assert_close(seen["blocks.0.hook_resid_post"][0], seen["blocks.0.hook_resid_pre"][0]
                               + seen["blocks.0.hook_attn_out"][0] + seen["blocks.0.hook_mlp_out"][0])


def test_attention_has_no_biases(paper_model):
    for block in paper_model.blocks:
        assert block.attn.W_QKV.bias is None and block.attn.W_O.bias is None
        assert block.attn.W_QKV.weight.shape == (192, 64) and block.attn.W_O.weight.shape == (64, 64)


# ---- exemplars as table rows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("noisy", [False, True])
def test_exemplars_given_as_table_rows_give_what_their_gathered_features_give(model, task, noisy):
    generator = torch.Generator().manual_seed(0)
    table = torch.rand(7, task.d_in, generator=generator)
    index = torch.randint(0, 7, (B, 3), generator=generator)
    noise = 0.1 * torch.randn(B, 3, task.d_in, generator=generator) if noisy else None
    dense = table[index] + (0 if noise is None else noise)
    labels = torch.randint(0, V, (B, 2), generator=generator)

    torch.testing.assert_close(model.embed_exemplars(TableRows(table, index, noise)), model.embed_exemplars(dense))
    torch.testing.assert_close(model(TableRows(table, index, noise), labels), model(dense, labels))
