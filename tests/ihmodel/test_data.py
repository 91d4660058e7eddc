"""The task: label pairs, label/class/exemplar structure of sequences, evaluators, the exhaustive training set."""
from __future__ import annotations

import math
from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ihmodel.config import DataConfig, EvalConfig, TrialConfig
from ihmodel.data import Distribution, Task, TrainingStream, label_pairs, on_distinct_rows
from ihmodel.store import EVALUATORS

CPU = torch.device("cpu")


def pair_set(pairs) -> set[tuple[int, int]]:
    return {tuple(sorted(p)) for p in np.asarray(pairs).tolist()}


def sequence_pairs(batch) -> set[tuple[int, int]]:
    """Unordered (query label, distractor label) pairs of a burstiness-1 batch."""
    distractor = batch.context_labels[~batch.match]
    return pair_set(torch.stack([batch.query_label, distractor], 1))


# ---- label pairs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_labels, n_train, n_val", [(5, 8, 2), (10, 36, 9), (15, 84, 21)])
def test_label_pair_split_sizes(n_labels, n_train, n_val):
    train, val = label_pairs(n_labels, 0.2, 20)

    assert (len(train), len(val)) == (n_train, n_val)
    assert train.shape[1] == val.shape[1] == 2


@pytest.mark.parametrize("n_labels", [5, 10, 15])
def test_label_pairs_are_the_lexicographic_pairs_permuted_by_the_split_seed(n_labels):
    lexicographic = np.array(list(combinations(range(n_labels), 2)))
    expected = lexicographic[np.random.default_rng(20).permutation(len(lexicographic))]

    train, val = label_pairs(n_labels, 0.2, 20)

    np.testing.assert_array_equal(np.concatenate([train, val]), expected)
    assert pair_set(train).isdisjoint(pair_set(val))
    assert (train[:, 0] < train[:, 1]).all() and (val[:, 0] < val[:, 1]).all()  # unordered pairs, stored sorted


def test_label_pairs_are_deterministic_and_depend_on_the_split_seed():
    first, second = label_pairs(10, 0.2, 20), label_pairs(10, 0.2, 20)
    other = label_pairs(10, 0.2, 21)

    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert pair_set(first[1]) != pair_set(other[1])


def test_task_refuses_labels_without_a_validation_pair():
    with pytest.raises(ValueError, match=r"data.n_labels=2 leaves no validation label pair; use at least 3 labels"):
        Task(DataConfig(n_labels=2, n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16), CPU)


# ---- labels of a sequence ------------------------------------------------------------------------------------

def test_exactly_one_context_item_carries_the_query_label(task):
    batch = task.sample_train(2000, seed=1)

    carries_query_label = batch.context_labels == batch.query_label[:, None]

    assert (carries_query_label.sum(1) == 1).all()
    assert torch.equal(carries_query_label, batch.match)
    assert (batch.match.sum(1) == 1).all()  # burstiness 1: one match, one distractor


def test_query_label_is_the_first_label_of_a_train_pair_and_the_distractor_gets_the_second(task):
    batch = task.sample_train(2000, seed=2)
    train_pairs = pair_set(task.train_pairs)
    distractor_label = batch.context_labels[~batch.match]

    assert (distractor_label != batch.query_label).all()
    assert sequence_pairs(batch) <= train_pairs
    assert sequence_pairs(batch) == train_pairs  # every train pair is used (8 pairs, 2000 draws)
    # the pair is ordered at random: the query gets the smaller label about half of the time
    smaller_first = (batch.query_label < distractor_label).float().mean().item()
    assert 0.4 < smaller_first < 0.6


def test_match_position_is_shuffled(task):
    batch = task.sample_train(2000, seed=3)

    match_first = batch.match[:, 0].float().mean().item()

    assert 0.4 < match_first < 0.6


@pytest.mark.parametrize("name, split", [("fsl_train", "train"), ("fsl_train_valex", "train"),
                                         ("fsl_test_class", "train"), ("fsl_val_rl", "val")])
def test_evaluator_labels_come_from_their_pair_split(task, name, split):
    evaluators = task.evaluators(EvalConfig(size=1000), seed=1)
    allowed = pair_set(task.train_pairs if split == "train" else task.val_pairs)

    batch = evaluators[name]

    assert sequence_pairs(batch) == allowed
    assert (batch.context_labels == batch.query_label[:, None]).sum(1).eq(1).all()


def test_burstiness_2_has_two_query_class_items_with_the_query_label():
    config = DataConfig(n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16,
                        burstiness=2, context_len=4)
    task = Task(config, CPU)

    batch = task.sample_train(500, seed=0)

    assert task.n_ctx == 9 and batch.x.shape == (500, 5, 16) and batch.context_labels.shape == (500, 4)
    assert (batch.match.sum(1) == 2).all()
    assert torch.equal(batch.context_labels == batch.query_label[:, None], batch.match)
    distractor = batch.context_labels[~batch.match].reshape(500, 2)
    assert (distractor[:, 0] == distractor[:, 1]).all()  # one distractor class, one distractor label


# ---- classes and exemplars -----------------------------------------------------------------------------------

def test_training_classes_are_the_first_n_train_classes_and_query_differs_from_distractor(task, identify):
    batch = task.sample_train(2000, seed=4)

    classes, exemplars = identify(task, batch.x)  # [batch, item]
    query_class = classes[:, -1]
    matched_class = classes[:, :-1][batch.match]
    distractor_class = classes[:, :-1][~batch.match]

    assert set(classes.unique().tolist()) == set(range(10))
    assert torch.equal(matched_class, query_class)
    assert (distractor_class != query_class).all()
    assert (exemplars == 0).all()  # one train exemplar: the query equals its in-context match
    assert torch.equal(batch.x[:, -1], batch.x[:, :-1][batch.match])


@pytest.mark.parametrize("name", ["fsl_train", "fsl_val_rl", "fsl_train_valex"])
def test_train_class_evaluators_use_train_classes(task, identify, name):
    batch = task.evaluators(EvalConfig(size=1000), seed=1)[name]

    classes, _ = identify(task, batch.x)

    assert set(classes.unique().tolist()) == set(range(10))
    assert (classes[:, :-1][~batch.match] != classes[:, -1]).all()


def test_fsl_test_class_uses_the_last_n_test_classes(task, identify):
    batch = task.evaluators(EvalConfig(size=1000), seed=1)["fsl_test_class"]

    classes, exemplars = identify(task, batch.x)

    assert set(classes.unique().tolist()) == set(range(40, 60))  # 60 classes, the last 20 are test classes
    assert (classes[:, :-1][~batch.match] != classes[:, -1]).all()
    assert (exemplars == 0).all()


@pytest.mark.parametrize("name", ["fsl_train", "fsl_val_rl", "fsl_test_class"])
def test_evaluators_other_than_valex_use_exemplar_0(task, identify, name):
    batch = task.evaluators(EvalConfig(size=500), seed=1)[name]

    _, exemplars = identify(task, batch.x)

    assert (exemplars == 0).all()


def test_fsl_train_valex_draws_heldout_exemplars_independently_per_position(task, identify):
    batch = task.evaluators(EvalConfig(size=1000), seed=1)["fsl_train_valex"]

    _, exemplars = identify(task, batch.x)  # [batch, item]
    matched_exemplar = exemplars[:, :-1][batch.match]

    for position in range(exemplars.shape[1]):
        assert set(exemplars[:, position].unique().tolist()) == {1, 2, 3, 4}
    # independent draws: the query's exemplar equals its match's about 1/4 of the time, not always
    same = (matched_exemplar == exemplars[:, -1]).float().mean().item()
    assert 0.18 < same < 0.32


def test_two_train_exemplars_are_drawn_from_the_first_two(identify):
    task = Task(DataConfig(n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16,
                           n_train_exemplars=2), CPU)

    batch = task.sample_train(1000, seed=0)
    _, exemplars = identify(task, batch.x)

    assert set(exemplars.unique().tolist()) == {0, 1}
    valex = task.evaluators(EvalConfig(size=500), seed=1)["fsl_train_valex"]
    assert set(identify(task, valex.x)[1].unique().tolist()) == {2, 3, 4}


def test_task_refuses_holding_out_no_exemplar():
    config = DataConfig(n_train_classes=10, n_test_classes=20, synthetic_classes=60, synthetic_dim=16,
                        n_train_exemplars=5)

    with pytest.raises(ValueError, match=r"data.n_train_exemplars=5; the features have 5 exemplars per class"):
        Task(config, CPU)


def test_zipf_exponent_skews_class_frequencies(data_config, identify):
    uniform_task = Task(data_config, CPU)
    zipf_task = Task(replace(data_config, zipf_exponent=1.0), CPU)

    def query_class_counts(task):
        batch = task.sample_train(5000, seed=5)
        return torch.bincount(identify(task, batch.x[:, -1])[0], minlength=10).float()

    uniform, zipf = query_class_counts(uniform_task), query_class_counts(zipf_task)

    assert uniform.max() / uniform.min() < 1.45  # 500 expected per class
    # p(c) ~ 1/(c+1): class 0 is 10x as likely as class 9 and takes 1/H_10 = 34% of the queries
    assert 6 < (zipf[0] / zipf[9]).item() < 16
    assert 0.31 < (zipf[0] / zipf.sum()).item() < 0.37
    assert (zipf[:-1] >= zipf[1:] * 0.7).all()  # decreasing, up to noise


def test_query_and_distractor_classes_follow_the_class_distribution(data_config, identify):
    task = Task(replace(data_config, zipf_exponent=1.0), CPU)
    p = 1 / torch.arange(1, 11, dtype=torch.float64)
    p /= p.sum()
    # the distractor is drawn from the same distribution, the query's class excluded
    distractor_p = torch.stack([(p * p[c] / (1 - p)).sum() - p[c] * p[c] / (1 - p[c]) for c in range(10)])

    batch = task.sample_train(20000, seed=11)
    classes, _ = identify(task, batch.x)
    query = torch.bincount(classes[:, -1], minlength=10).double() / 20000
    distractor = torch.bincount(classes[:, :-1][~batch.match], minlength=10).double() / 20000

    assert distractor_p.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(query, p, atol=0.016, rtol=0)
    torch.testing.assert_close(distractor, distractor_p, atol=0.016, rtol=0)


def test_noise_changes_x_but_not_the_sequence(data_config):
    clean_task = Task(data_config, CPU)
    noisy_task = Task(replace(data_config, noise=0.1), CPU)

    clean = clean_task.sample_train(500, seed=6)
    noisy = noisy_task.sample_train(500, seed=6)

    assert torch.equal(clean.context_labels, noisy.context_labels)
    assert torch.equal(clean.match, noisy.match)
    difference = noisy.x - clean.x
    assert (difference != 0).all()
    assert difference.std().item() == pytest.approx(0.1, rel=0.05)
    assert not torch.equal(noisy.x[:, -1], noisy.x[:, :-1][noisy.match])  # the query no longer equals its match


# ---- evaluators ----------------------------------------------------------------------------------------------

def assert_batches_equal(expected, actual):
    for field in ("x", "context_labels", "query_label", "match"):
        assert torch.equal(getattr(expected, field), getattr(actual, field)), field


def test_evaluators_are_the_four_named_sets_of_eval_size(task):
    evaluators = task.evaluators(EvalConfig(size=123), seed=1)

    assert tuple(evaluators) == EVALUATORS
    assert all(len(batch) == 123 and batch.x.shape == (123, 3, 16) for batch in evaluators.values())


def test_evaluators_are_deterministic_from_the_eval_seed(task):
    first = task.evaluators(EvalConfig(size=200), seed=1)
    task.sample_train(100, seed=9)  # training draws in between change nothing
    second = task.evaluators(EvalConfig(size=200), seed=1)
    other = task.evaluators(EvalConfig(size=200), seed=2)

    for name in EVALUATORS:
        assert_batches_equal(first[name], second[name])
        assert not torch.equal(first[name].x, other[name].x)


def test_evaluators_of_a_trial_do_not_depend_on_its_data_seed(tmp_path, data_config, model_config):
    from ihmodel.train import Trial

    configs = [TrialConfig(device="cpu", seed_data=seed_data, data=data_config, model=model_config,
                           eval=EvalConfig(size=100)) for seed_data in (0, 7)]

    first, second = (Trial(config, tmp_path / "t.zarr") for config in configs)

    assert configs[0].eval_seed == configs[1].eval_seed
    for name in EVALUATORS:
        assert_batches_equal(first.evaluation.evaluators[name], second.evaluation.evaluators[name])
    a, b = (trial.task.sample_train(50, trial.config.data_seed) for trial in (first, second))
    assert not torch.equal(a.context_labels, b.context_labels)  # ...while the training streams differ


# ---- the training stream -------------------------------------------------------------------------------------

def test_a_batch_is_a_function_of_the_seed_and_the_step(task):
    again = Task(task.config, CPU)

    assert_batches_equal(task.sample_train(64, seed=3, step=17), again.sample_train(64, seed=3, step=17))
    assert not torch.equal(task.sample_train(64, seed=3, step=17).x, task.sample_train(64, seed=3, step=18).x)
    assert not torch.equal(task.sample_train(64, seed=3, step=17).x, task.sample_train(64, seed=4, step=17).x)


def test_evaluation_sets_are_no_training_batch_even_with_the_same_seed(task):
    fsl_train = task.evaluators(EvalConfig(size=32), seed=7)["fsl_train"]
    first_batches = [task.sample_train(32, seed=7, step=step) for step in range(3)]

    assert all(not torch.equal(fsl_train.x, batch.x) for batch in first_batches)


def test_trials_drawn_together_get_the_batches_they_draw_alone(data_config):
    """A pack draws K trials' batches at once, padded to the widest trial: each gets exactly its own stream."""
    variants = [data_config, replace(data_config, n_train_classes=7, zipf_exponent=1.5),
                replace(data_config, n_train_exemplars=3, seed_split=4, val_pair_fraction=0.4),
                replace(data_config, noise=0.2)]
    tasks = [Task(config, CPU) for config in variants]
    seeds = [5, 6, 7, 8]
    stream = TrainingStream(Distribution.stack([t.train_distribution for t in tasks]), seeds, batch_size=40,
                            burstiness=1, features=tasks[0].features)

    together = stream(step=12)

    for k, (task, seed) in enumerate(zip(tasks, seeds)):
        alone = task.sample_train(40, seed, step=12)
        for field, value in zip(("context_labels", "query_label", "match"), together[1:]):
            assert torch.equal(value[k], getattr(alone, field)), (k, field)
        if variants[k].noise > 0:  # the noise is float arithmetic: equal up to rounding
            torch.testing.assert_close(together[0][k], alone.x, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(together[0][k], alone.x)


def test_a_trial_without_noise_packed_with_a_noisy_one_gets_exact_features(data_config, identify):
    tasks = [Task(data_config, CPU), Task(replace(data_config, noise=0.3), CPU)]
    stream = TrainingStream(Distribution.stack([t.train_distribution for t in tasks]), [1, 2], batch_size=50,
                            burstiness=1, features=tasks[0].features)

    x = stream(step=0)[0]

    identify(tasks[0], x[0])  # every item is exactly a feature-table row
    with pytest.raises(AssertionError, match="not exactly one exemplar"):
        identify(tasks[1], x[1])


# ---- the exhaustive training set -----------------------------------------------------------------------------

def test_all_train_sequences_has_78400_sequences_at_the_defaults():
    task = Task(DataConfig(), CPU)

    batch = task.all_train_sequences()

    assert len(batch) == 50 * 49 * 16 * 2 == 78_400
    assert batch.x.shape == (78_400, 3, 512)
    assert batch.match[:, 0].sum().item() == batch.match[:, 1].sum().item() == 39_200  # both match positions
    assert (batch.match.sum(1) == 1).all()


def test_all_train_sequences_enumerates_every_combination_once(task, identify):
    batch = task.all_train_sequences()
    classes, exemplars = identify(task, batch.x)
    query_class = classes[:, -1]
    distractor_class = classes[:, :-1][~batch.match]
    distractor_label = batch.context_labels[~batch.match]
    match_position = batch.match[:, 1].long()

    rows = torch.stack([query_class, distractor_class, batch.query_label, distractor_label, match_position], 1)

    assert len(batch) == 10 * 9 * 16 * 2
    assert len(rows.unique(dim=0)) == len(batch)  # no sequence twice
    assert (exemplars == 0).all() and (query_class != distractor_class).all()
    assert torch.equal(classes[:, :-1][batch.match], query_class)
    assert sequence_pairs(batch) == pair_set(task.train_pairs)


def test_all_train_sequences_needs_burstiness_1():
    task = Task(DataConfig(burstiness=2, context_len=4, n_train_classes=10, n_test_classes=20,
                           synthetic_classes=60, synthetic_dim=16), CPU)

    with pytest.raises(ValueError, match=r"eval.induction_set=all_train enumerates burstiness-1 sequences"):
        task.all_train_sequences()


# ---- the loss scale: ln 2 plateau, ln L without context --------------------------------------------------------

def test_guessing_between_the_two_context_labels_costs_ln_2(task):
    batch = task.sample_train(1000, seed=7)
    logits = torch.full((1000, 5), float("-inf"))
    logits.scatter_(1, batch.context_labels, 0.0)  # equal on the two context labels, -inf elsewhere

    loss = F.cross_entropy(logits, batch.query_label)

    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_uniform_logits_cost_ln_L(task):
    batch = task.sample_train(1000, seed=7)

    loss = F.cross_entropy(torch.zeros(1000, 5), batch.query_label)

    assert loss.item() == pytest.approx(math.log(5), abs=1e-6)


def test_best_context_free_loss_is_the_label_marginal_entropy_just_below_ln_L(task):
    """Without context, the best a model can do is the marginal over query labels. It is not exactly uniform:
    the 2 held-out pairs remove some labels' occurrences, so its entropy sits slightly below ln L (1.602 vs 1.609
    at L=5). "Cannot beat ln L" holds to 0.01 nats, not exactly."""
    counts = torch.bincount(task.train_pairs.flatten(), minlength=5).double()
    marginal = counts / counts.sum()  # each train pair is drawn uniformly and either label is first
    entropy = -(marginal * marginal.log()).sum().item()
    batch = task.sample_train(20000, seed=8)
    observed = torch.bincount(batch.query_label, minlength=5).double() / 20000

    assert torch.allclose(observed, marginal, atol=0.015)
    assert math.log(5) - 0.01 < entropy <= math.log(5)
    marginal_loss = F.cross_entropy(marginal.log().float().expand(20000, -1), batch.query_label).item()
    assert marginal_loss == pytest.approx(entropy, abs=0.01)


def test_sets_on_their_distinct_rows_hold_the_same_sequences(task):
    sets = task.evaluators(EvalConfig(size=200), seed=1)

    compact = on_distinct_rows(sets)

    rows = compact["fsl_train"].rows
    assert torch.equal(rows, torch.unique(torch.cat([s.items.reshape(-1) for s in sets.values()])))
    for name, seqs in sets.items():
        assert compact[name].rows is rows  # one table of rows for every set
        assert torch.equal(compact[name].x, seqs.x)
        assert torch.equal(compact[name][10:20].x, seqs[10:20].x)
        exemplars = compact[name].exemplars()
        assert exemplars.table.shape == (len(rows), task.d_in) and torch.equal(exemplars.index, compact[name].items)
