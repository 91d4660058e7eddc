"""The named clamp sets (compose, run, mean the paper's sets) and bad clamp input (one line, at build)."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from clamp_helpers import POS, SMALL_MODEL, clamps, main_pass

from ihmodel.clamp import KINDS, ClampSet
from ihmodel.compose import clamp_set_names, compose_trial
from ihmodel.config import InterventionConfig as IV
from ihmodel.model import Transformer


# ---- the named clamp sets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", clamp_set_names())
def test_every_named_clamp_set_composes_and_runs_a_forward(model, batch, name):
    config = compose_trial([f"clamp={name}", *SMALL_MODEL])
    clamp_set = ClampSet(config.clamp, model)

    _, logits = main_pass(clamp_set, batch)

    assert config.clamp.name == clamp_set.name == name
    assert logits.shape == (len(batch), 5) and torch.isfinite(logits).all()
    assert (len(clamp_set.writes) == 0) == (name == "none")


def test_the_named_clamp_sets_are_the_papers():
    assert set(clamp_set_names()) == {"none", "noclamp", "perfect_prev_tok_attn_single", "perfect_l1",
                                      "perfect_match", "perfect_copy", "perfect_l1_and_copy"}


@pytest.mark.parametrize("name, kinds", [
    ("noclamp", ["zero_value"]),
    ("perfect_prev_tok_attn_single", ["prev_token_pattern", "zero_value"]),
    ("perfect_l1", ["perfect_prev_token_input", "zero_value"]),
    ("perfect_match", ["induction_pattern", "zero_value"]),
    ("perfect_copy", ["perfect_copy"]),
    ("perfect_l1_and_copy", ["perfect_prev_token_input", "perfect_copy"]),
])
def test_named_clamp_set_interventions(name, kinds):
    clamp = compose_trial([f"clamp={name}"]).clamp

    assert [iv.kind for iv in clamp.interventions] == kinds
    for iv in clamp.interventions:
        if iv.kind == "zero_value":
            assert (iv.layer, iv.heads, iv.keep_heads) == (1, None, [3])  # REST: every layer-2 head but 1:3
        if iv.kind in ("induction_pattern", "perfect_copy"):
            assert (iv.layer, iv.heads) == (1, [3])
        if iv.kind == "prev_token_pattern":
            assert (iv.layer, iv.heads) == (0, [2])


def test_active_head_override_moves_the_active_head(task, batch):
    config = compose_trial(["clamp=perfect_match", "clamp.active_head=[1,5]"])  # the paper's 8 heads
    model = Transformer(config.model, task.d_in, 5, POS, seed=0)
    names = ["blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern"]

    seen, _ = main_pass(ClampSet(config.clamp, model), batch, names)

    v = seen["blocks.1.attn.hook_v"]
    assert (v[:, :, [0, 1, 2, 3, 4, 6, 7]] == 0).all() and (v[:, :, 5] != 0).any()
    query_row = seen["blocks.1.attn.hook_pattern"][:, 5, -1]
    label_token = torch.tensor([1, 3])[batch.match.long().argmax(1)]
    assert torch.equal(query_row, F.one_hot(label_token, POS).float())


def test_prev_token_head_override_moves_the_previous_token_head():
    clamp = compose_trial(["clamp=perfect_prev_tok_attn_single", "clamp.prev_token_head=[0,6]",
                           "clamp.active_head=[1,1]"]).clamp

    assert [(iv.kind, iv.layer, iv.heads, iv.keep_heads) for iv in clamp.interventions] == [
        ("prev_token_pattern", 0, [6], None), ("zero_value", 1, None, [1])]


# ---- bad input: one-line ValueError naming the fix, raised when the ClampSet is built --------------------------

BAD = [
    ([IV(kind="bogus")],
     r"clamp.interventions\[0\] \(bogus\): unknown clamp kind 'bogus'; choose one of " + re.escape(", ".join(KINDS))),
    ([IV(kind="zero", hook="blocks.2.attn.hook_pattern")],
     r"no hook 'blocks.2.attn.hook_pattern'; hooks are hook_embed, blocks.0.hook_resid_pre, .*blocks.1.attn.hook_pattern"),
    ([IV(kind="zero")], r"clamp.interventions\[0\] \(zero\): no hook None; hooks are hook_embed"),
    ([IV(kind="zero_value", layer=1, heads=[4])], r"clamp.interventions\[0\] \(zero_value\): head 4 out of range; "
                                                  r"heads are 0..3"),
    ([IV(kind="zero_value", layer=1, keep_heads=[-1])], r"head -1 out of range; heads are 0..3"),
    ([IV(kind="zero", hook="blocks.0.attn.hook_z", heads=[7])], r"head 7 out of range; heads are 0..3"),
    ([IV(kind="zero_value", layer=2, heads=[0])], r"clamp.interventions\[0\] \(zero_value\): layer=2; layers are 0..1"),
    ([IV(kind="prev_token_pattern", heads=[0])], r"layer=None; layers are 0..1"),
    ([IV(kind="prev_token_pattern", layer=0, positions=[5])], r"position 5 out of range; positions are 0..4"),
    ([IV(kind="constant", hook="hook_embed", value=1.0, positions=[-1])], r"position -1 out of range; positions are 0..4"),
    ([IV(kind="zero_value", layer=1, heads=[0]), IV(kind="zero_value", layer=1, keep_heads=[3])],
     r"contradictory interventions: clamp.interventions\[0\] \(zero_value\) and clamp.interventions\[1\] "
     r"\(zero_value\) both overwrite blocks.1.attn.hook_v .*; give them disjoint heads or positions"),
    ([IV(kind="prev_token_pattern", layer=1, heads=[3]), IV(kind="induction_pattern", layer=1, heads=[3])],
     r"contradictory interventions: .* both overwrite blocks.1.attn.hook_pattern"),
    ([IV(kind="perfect_copy", layer=1, heads=[1], ), IV(kind="perfect_copy", layer=1, heads=[2])],
     r"contradictory interventions: .* both overwrite hook_logits"),
    ([IV(kind="perfect_copy", layer=1, heads=[1, 2])],
     r"clamp.interventions\[0\] \(perfect_copy\): perfect_copy copies from exactly one head; give heads: \[h\]"),
    ([IV(kind="perfect_copy", layer=1)], r"perfect_copy copies from exactly one head"),
    ([IV(kind="constant", hook="hook_embed")], r"clamp.interventions\[0\] \(constant\): kind constant needs a value"),
    ([IV(kind="checkpoint", hook="hook_embed")], r"clamp.interventions\[0\] \(checkpoint\): needs checkpoint: PATH"),
    ([IV(kind="graft")], r"\(graft\): needs checkpoint: PATH"),
    ([IV(kind="zero_value", layer=1, heads=[0], keep_heads=[1])], r"give heads or keep_heads, not both"),
    ([IV(kind="zero", hook="blocks.0.hook_attn_out", heads=[0])],
     r"hook 'blocks.0.hook_attn_out' has no head axis; drop heads/keep_heads"),
    ([IV(kind="induction_pattern", layer=1, heads=[0], strength=1.5)], r"strength=1.5; must lie in \[0, 1\]"),
    ([IV(kind="perfect_prev_token_input", layer=0)], r"perfect_prev_token_input feeds a layer after the first; "
                                                     r"layer must be 1..1"),
    ([IV(kind="zero_value", layer=1, heads=[0]), IV(kind="bogus")], r"clamp.interventions\[1\] \(bogus\)"),
]


@pytest.mark.parametrize("interventions, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_clamp_is_a_one_line_value_error_at_build(model, interventions, message):
    with pytest.raises(ValueError, match=message) as error:
        clamps(model, *interventions)

    assert "\n" not in str(error.value)


def test_positions_on_the_logits_are_refused(model):
    with pytest.raises(ValueError, match=r"hook_logits"):
        clamps(model, IV(kind="zero", hook="hook_logits", positions=[0]))
