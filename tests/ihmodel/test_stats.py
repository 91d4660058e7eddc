"""Statistics against hand computations on tiny hand-made patterns, z and logits; the step buffer; Evaluation."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ihmodel.clamp import ClampSet
from ihmodel.config import STAT_NAMES, ClampConfig, EvalConfig, InterventionConfig
from ihmodel.data import Batch
from ihmodel.model import Transformer
from ihmodel.stats import (Evaluation, StepStats, classification_metrics, head_out_norm, induction_score,
                           pattern_entropy, prev_token_score, stacked_W_O)

POS = 5


def uniform_causal(*leading: int) -> torch.Tensor:
    """[*leading, query, key]: each row spread evenly over the keys it may see."""
    table = torch.ones(POS, POS).tril()
    return (table / table.sum(-1, keepdim=True)).expand(*leading, POS, POS).clone()


def prev_token_table() -> torch.Tensor:
    table = torch.zeros(POS, POS)
    table[0, 0] = 1
    table[torch.arange(1, POS), torch.arange(POS - 1)] = 1
    return table


@pytest.fixture
def pattern() -> torch.Tensor:
    """[layer=1, batch=2, head=2, query, key]; head 0 hand-set rows, head 1 uniform."""
    pattern = uniform_causal(1, 2, 2)
    pattern[0, 0, 0, 1] = torch.tensor([0.6, 0.4, 0, 0, 0])
    pattern[0, 0, 0, 3] = torch.tensor([0.1, 0.2, 0.5, 0.2, 0])
    pattern[0, 0, 0, 4] = torch.tensor([0.1, 0.6, 0.0, 0.2, 0.1])
    pattern[0, 1, 0, 1] = torch.tensor([1.0, 0, 0, 0, 0])
    pattern[0, 1, 0, 3] = torch.tensor([0.0, 0.0, 0.3, 0.7, 0])
    pattern[0, 1, 0, 4] = torch.tensor([0.2, 0.3, 0.1, 0.3, 0.1])
    return pattern


MATCH = torch.tensor([[True, False], [False, True]])  # batch 0 matches item 0 (token 1), batch 1 item 1 (token 3)


def test_prev_token_score_by_hand(pattern):
    # head 0: label tokens 1 and 3 to the exemplar before them: (0.6 + 0.5 + 1.0 + 0.3) / 4
    # head 1: (1/2 + 1/4) / 2
    expected = torch.tensor([[0.6, 0.375]])

    torch.testing.assert_close(prev_token_score(pattern), expected)


def test_induction_score_by_hand(pattern):
    # head 0: batch 0: 0.6 - 0.2; batch 1: 0.3 - 0.3; mean 0.2. head 1: 1/5 - 1/5 = 0
    expected = torch.tensor([[0.2, 0.0]])

    torch.testing.assert_close(induction_score(pattern, MATCH), expected)


def test_pattern_entropy_by_hand():
    pattern = torch.stack([uniform_causal(3, 2), prev_token_table().expand(3, 2, POS, POS)])  # [layer, b, h, q, k]
    # uniform rows 1..4 see 2, 3, 4, 5 keys: (ln 2 + ln 3 + ln 4 + ln 5) / 4; one-hot rows have entropy 0
    expected = torch.tensor([[math.log(120) / 4] * 2, [0.0, 0.0]])

    torch.testing.assert_close(pattern_entropy(pattern), expected)


def test_head_out_norm_by_hand():
    z = torch.zeros(1, 1, 2, 2, 2)  # [layer, batch, pos, head, d_head]
    z[0, 0, 0, 0], z[0, 0, 1, 0] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    z[0, 0, 0, 1] = torch.tensor([1.0, 1.0])
    W_O = torch.stack([torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.eye(2)])[None]  # [layer, head, d_head, d_model]
    # head 0: |[3, 4]| = 5 and |2 * [0, 1]| = 2 -> 3.5; head 1: |[1, 1]| = sqrt 2 and 0 -> sqrt(2) / 2
    expected = torch.tensor([[3.5, math.sqrt(2) / 2]])

    torch.testing.assert_close(head_out_norm(z, W_O), expected)


def test_head_out_norm_matches_the_models_per_head_outputs(model_config, task, batch):
    model = Transformer(replace(model_config, use_hook_result=True), task.d_in, 5, POS, seed=0)
    seen = {}
    hooks = [(f"blocks.{layer}.attn.hook_{name}", lambda x, *, hook: seen.__setitem__(hook.name, x))
             for layer in range(2) for name in ("z", "result")]
    with torch.no_grad(), model.hooks(hooks):
        model(batch.x, batch.context_labels)
    z = torch.stack([seen[f"blocks.{layer}.attn.hook_z"] for layer in range(2)])
    result = torch.stack([seen[f"blocks.{layer}.attn.hook_result"] for layer in range(2)])  # [l, b, p, h, d_model]

    actual = head_out_norm(z, stacked_W_O(model))

    torch.testing.assert_close(actual, result.norm(dim=-1).mean(dim=(1, 2)))


def hand_batch() -> tuple[torch.Tensor, Batch]:
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]])
    context_labels = torch.tensor([[0, 1], [0, 1], [2, 0], [2, 1]])
    query_label = torch.tensor([0, 1, 2, 1])
    batch = Batch(x=torch.zeros(4, 3, 1), context_labels=context_labels, query_label=query_label,
                  match=context_labels == query_label[:, None])
    return probs.log(), batch


def test_classification_metrics_by_hand():
    logits, batch = hand_batch()
    expected = torch.tensor([
        # loss          acc  icl_acc  icl_prob   context_prob
        [math.log(2), 1.0, 1.0, 0.5 / 0.75, 0.75],
        [-math.log(0.3), 0.0, 1.0, 0.3 / 0.5, 0.5],  # argmax is label 2, absent from the context
        [-math.log(0.3), 0.0, 1.0, 0.3 / 0.4, 0.4],
        [-math.log(0.1), 0.0, 0.0, 0.1 / 0.5, 0.5],  # in context, 2 beats 1
    ])

    torch.testing.assert_close(classification_metrics(logits, batch), expected)


# ---- the per-step buffer ----------------------------------------------------------------------------------------

def test_step_stats_buffer_and_drain(model, task):
    stats = StepStats(model, list(STAT_NAMES), block=3)
    clamp_set = ClampSet(ClampConfig(), model)
    losses, patterns = [], []
    for step in range(3):
        batch = task.sample_train(8, seed=0, step=step)
        logits = clamp_set.forward(batch, stats.observers)
        loss = F.cross_entropy(logits, batch.query_label)
        kept = [keep.value for keep in stats.collector.patterns]  # read before row() lets go of them
        patterns.append((torch.stack(kept).clone(), batch.match))
        stats.record(stats.row(batch, logits, loss), grad_norm=lambda step=step: torch.tensor(1.5 + step))
        losses.append(loss.item())
    assert stats.full

    rows = stats.drain()

    assert stats.rows == 0 and not stats.full
    assert {name: value.shape for name, value in rows.items()} == {
        "loss": (3,), "acc": (3,), "grad_norm": (3,), "prev_token_score": (3, 2, 4), "induction_score": (3, 2, 4),
        "pattern_entropy": (3, 2, 4), "head_out_norm": (3, 2, 4)}
    torch.testing.assert_close(torch.from_numpy(rows["loss"]), torch.tensor(losses))
    torch.testing.assert_close(torch.from_numpy(rows["grad_norm"]), torch.tensor([1.5, 2.5, 3.5]))
    assert ((rows["acc"] >= 0) & (rows["acc"] <= 1)).all()
    for step, (pattern, match) in enumerate(patterns):
        torch.testing.assert_close(torch.from_numpy(rows["prev_token_score"][step]), prev_token_score(pattern))
        torch.testing.assert_close(torch.from_numpy(rows["induction_score"][step]), induction_score(pattern, match))


def test_step_stats_records_only_the_chosen_names(model, task):
    stats = StepStats(model, ["acc", "eval"], block=4)
    batch = task.sample_train(8, seed=0)
    logits = ClampSet(ClampConfig(), model).forward(batch, stats.observers)

    loss = F.cross_entropy(logits, batch.query_label)
    stats.record(stats.row(batch, logits, loss), grad_norm=lambda: pytest.fail("grad norm not recorded"))
    rows = stats.drain()

    assert stats.observers == []  # no per-head statistic: no hooks in the training step
    assert list(rows) == ["acc"] and rows["acc"].shape == (1,)
    assert rows["acc"][0] == (logits.argmax(-1) == batch.query_label).float().mean().item()


# ---- evaluation -------------------------------------------------------------------------------------------------

def test_evaluate_averages_metrics_per_evaluator_whatever_the_batch_size(model, task):
    evaluators = task.evaluators(EvalConfig(size=50), seed=1)
    induction_set = task.all_train_sequences()  # 2880 sequences
    clamp_set = ClampSet(ClampConfig(), model)

    chunked = Evaluation(clamp_set, evaluators, "all_train", induction_set, batch_size=97)()  # ragged chunks
    whole = Evaluation(clamp_set, evaluators, "all_train", induction_set, batch_size=4096)()

    assert {name: tuple(value.shape) for name, value in whole.items()} == {
        "eval_loss": (4,), "eval_acc": (4,), "eval_icl_acc": (4,), "eval_icl_prob": (4,), "eval_context_prob": (4,),
        "eval_induction_score": (2, 4)}
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name])
    with torch.no_grad():
        direct = torch.stack([classification_metrics(model(b.x, b.context_labels), b).mean(0)
                              for b in evaluators.values()])  # [evaluator, metric]
        patterns = {}
        with model.hooks([(f"blocks.{layer}.attn.hook_pattern", lambda x, *, hook: patterns.__setitem__(hook.name, x))
                          for layer in range(2)]):
            model(induction_set.x, induction_set.context_labels)
    torch.testing.assert_close(whole["eval_loss"], direct[:, 0])
    torch.testing.assert_close(whole["eval_context_prob"], direct[:, 4])
    stacked = torch.stack([patterns["blocks.0.attn.hook_pattern"], patterns["blocks.1.attn.hook_pattern"]])
    torch.testing.assert_close(whole["eval_induction_score"], induction_score(stacked, induction_set.match))


def test_step_stats_without_step_variables_records_nothing(model, task):
    stats = StepStats(model, ["eval", "eval_induction_score"], block=2)
    batch = task.sample_train(8, seed=0)
    logits = ClampSet(ClampConfig(), model).forward(batch, stats.observers)

    stats.record(stats.row(batch, logits, F.cross_entropy(logits, batch.query_label)), grad_norm=lambda: 1 / 0)

    assert stats.drain() == {}


def test_the_induction_score_of_an_evaluator_comes_from_its_own_forward(model, task):
    evaluators = task.evaluators(EvalConfig(size=50), seed=1)
    clamp_set = ClampSet(ClampConfig(), model)

    shared = Evaluation(clamp_set, evaluators, "fsl_val_rl", None, batch_size=4096)()
    separate = Evaluation(clamp_set, {"fsl_val_rl": evaluators["fsl_val_rl"]}, "fsl_val_rl", None, batch_size=16)()

    torch.testing.assert_close(shared["eval_induction_score"], separate["eval_induction_score"])


@pytest.mark.parametrize("interventions, query_only", [
    ([], True),
    ([InterventionConfig(kind="zero_value", layer=0, heads=[1])], True),
    ([InterventionConfig(kind="zero_value", layer=1, heads=[1])], False),
    ([InterventionConfig(kind="perfect_prev_token_input")], False),  # overwrites the last layer's input pattern
])
def test_evaluation_computes_the_query_position_alone_unless_clamps_touch_the_last_layer(model, task, interventions,
                                                                                         query_only):
    evaluation = Evaluation(ClampSet(ClampConfig(interventions=interventions), model),
                            task.evaluators(EvalConfig(size=50), seed=1), "fsl_train", None, batch_size=4096)
    assert evaluation.query_only == query_only

    alone = evaluation()
    evaluation.query_only = False
    every_position = evaluation()

    for name in every_position:
        torch.testing.assert_close(alone[name], every_position[name])
