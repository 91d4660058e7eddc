"""The paper's few-shot classification task, which can only be solved in context.

A sequence is `x1 y1 x2 y2 ... xq`: `burstiness` context items of the query's class and as many of one distractor
class, order shuffled. Labels are re-drawn per sequence from a label pair (one of the train pairs, random order):
the query's class gets the pair's first label, the distractor the second. A label says nothing about a class, so
only the context solves it, and guessing between the two context labels costs ln 2 (the plateau).

Every draw is a pure function of a seed and a counter (ihmodel.counter_rng), on the training device: no host sync,
no generator state (a trial resumes from its step), and K trials' batches drawn at once (`Distribution.stack`)
hold exactly what each trial draws alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from ihmodel import counter_rng
from ihmodel.config import DataConfig, EvalConfig
from ihmodel.features import check_split, load_features
from ihmodel.model import TableRows


@dataclass
class Batch:
    x: Tensor | TableRows  # [batch, item, d_in] exemplar features; the last item is the query
    context_labels: Tensor  # [batch, context_item] label ids of the context items
    query_label: Tensor  # [batch]
    match: Tensor  # [batch, context_item] bool: the item has the query's class (and so its label)

    def __len__(self) -> int:
        return len(self.query_label)


@dataclass
class Sequences:
    """A fixed set of sequences held as rows of the feature table, not as copies of exemplar vectors: a few ints
    per item instead of d_in floats, so a trial keeps its evaluation sets, and a pack a thousand trials' sets, in
    little memory. `x` gathers the vectors on demand (for one chunk at a time); otherwise used like a Batch."""

    table: Tensor  # [rows, d_in] the flattened feature table (shared, never copied)
    items: Tensor  # [n, item] row of each item in the table, or in table[rows] when `rows` is given
    noise: Tensor | None  # [n, item, d_in] within-class noise drawn for these sequences (data.noise > 0)
    context_labels: Tensor
    query_label: Tensor
    match: Tensor
    rows: Tensor | None = None  # [distinct] the table rows the items use (on_distinct_rows)

    @property
    def x(self) -> Tensor:
        exemplars = self.exemplars()
        x = exemplars.table.index_select(0, self.items.reshape(-1)).view(*self.items.shape, self.table.shape[1])
        return x if self.noise is None else x + self.noise

    def exemplars(self) -> TableRows:
        """The exemplars as the model takes them without copying each item's features: the rows they use (all of
        the table, unless `rows` says which) and which row each item is."""
        table = self.table if self.rows is None else self.table.index_select(0, self.rows)
        return TableRows(table, self.items, self.noise)

    def __len__(self) -> int:
        return self.items.shape[0]

    def slice(self, start: int, stop: int) -> Sequences:
        return self[start:stop]

    def trial(self, k: int) -> Sequences:
        """Trial k's sequences of a draw for several trials (leading trial axis)."""
        return self[k]

    def __getitem__(self, index: int | slice) -> Sequences:
        """Every field but the shared table indexed along the leading axis."""
        return Sequences(self.table, self.items[index], None if self.noise is None else self.noise[index],
                         self.context_labels[index], self.query_label[index], self.match[index], self.rows)


def on_distinct_rows(sets: dict[str, Sequences]) -> dict[str, Sequences]:
    """The same sets, their items re-indexed into the table rows any of them uses (sorted, each once): a model
    embeds those rows once and gathers (TableRows). The paper's four evaluation sets, 12,000 items, use 350 rows."""
    if not sets:
        return {}
    items = [s.items.reshape(-1) for s in sets.values()]
    rows, index = torch.unique(torch.cat(items), return_inverse=True)
    out = {}
    for (name, s), part in zip(sets.items(), index.split([len(i) for i in items])):
        out[name] = dataclasses.replace(s, items=part.view_as(s.items), rows=rows)
    return out


UNIT = 1 << counter_rng.UNIT_BITS  # class weights are integers summing to UNIT: draws compare exactly


@dataclass
class Distribution:
    """What sequences are drawn from, for K trials at once (leading axis K; one trial is K=1). Classes and label
    pairs are padded to the widest trial: a padded class has zero weight, a padded pair is never indexed."""

    classes: Tensor  # [K, C] class ids (first axis of the feature table)
    thresholds: Tensor  # [K, C] int64 cumulative class weights: class c takes draws in [thresholds[c-1], thresholds[c])
    exemplar_start: Tensor  # [K] exemplars are exemplar_start + [0, exemplar_count)
    exemplar_count: Tensor  # [K]
    pairs: Tensor  # [K, P, 2] label pairs
    pair_count: Tensor  # [K]
    noise: Tensor  # [K] within-class noise std
    noisy: bool  # any noise > 0 (known without reading the device)

    @staticmethod
    def stack(distributions: list[Distribution]) -> Distribution:
        def padded(field: str, value) -> Tensor:
            tensors = [getattr(d, field)[0] for d in distributions]
            width = max(len(t) for t in tensors)
            return torch.stack([torch.cat([t, t.new_full((width - len(t), *t.shape[1:]), value)]) for t in tensors])

        def joined(field: str) -> Tensor:
            return torch.cat([getattr(d, field) for d in distributions])

        return Distribution(padded("classes", 0), padded("thresholds", UNIT), joined("exemplar_start"),
                            joined("exemplar_count"), padded("pairs", 0), joined("pair_count"), joined("noise"),
                            any(d.noisy for d in distributions))


def draw(distribution: Distribution, keys: Tensor, n: int, burstiness: int, features: Tensor) -> Sequences:
    """n sequences for each of K trials (keys [K], one per trial) as Sequences with a leading trial axis.

    Per sequence: the query's class by weight; the distractor by weight among the other classes; which `burstiness`
    of the 2*burstiness context items have the query's class; a label pair and its order; an exemplar per item.
    All are integers from one draw of random words, so a trial gets the same sequences alone or stacked."""
    d, b = distribution, burstiness
    k, items = len(keys), 2 * b + 1
    words = counter_rng.bits(keys, 0, n, 4 + 2 * b + items)  # [K, n, lane]
    query = torch.searchsorted(d.thresholds, counter_rng.units(words[..., 0]), right=True)  # [K, n]
    # the distractor: a draw over the other classes' weights, stepped over the query's interval [start, end)
    previous = torch.cat([torch.zeros_like(d.thresholds[:, :1]), d.thresholds[:, :-1]], dim=1)
    end, start = d.thresholds.gather(1, query), previous.gather(1, query)
    rest = counter_rng.below(words[..., 1], UNIT - (end - start))
    distractor = torch.searchsorted(d.thresholds, rest + (rest >= start) * (end - start), right=True)
    pair = d.pairs.gather(1, counter_rng.below(words[..., 2], d.pair_count[:, None])[..., None].expand(-1, -1, 2))
    flip = counter_rng.below(words[..., 3:4], 2)  # [K, n, 1]
    first, second = pair.gather(2, flip), pair.gather(2, 1 - flip)  # [K, n, 1] each
    # `b` query-class items and `b` distractor items in random order: the ranks of random keys below b
    match = counter_rng.units(words[..., 4:4 + 2 * b]).argsort(dim=-1, stable=True) < b
    item_class = torch.cat([torch.where(match, query[..., None], distractor[..., None]), query[..., None]], dim=2)
    item_class = d.classes.gather(1, item_class.view(k, -1)).view(k, n, items)
    item_exemplar = d.exemplar_start[:, None, None] + counter_rng.below(words[..., 4 + 2 * b:],
                                                                        d.exemplar_count[:, None, None])
    n_exemplars, d_in = features.shape[1:]
    noise = None
    if d.noisy:
        noise = counter_rng.normal(counter_rng.bits(keys, 1, n, items * d_in)).view(k, n, items, d_in)
        noise = d.noise[:, None, None, None] * noise
    return Sequences(features.view(-1, d_in), item_class * n_exemplars + item_exemplar, noise,
                     context_labels=torch.where(match, first, second), query_label=first[..., 0], match=match)


class TrainingStream:
    """The training batches of K trials (a trial alone is K=1): batch number `step` of each trial's stream, drawn at
    once as [K, batch, ...] tensors x, context_labels, query_label, match. `draw` is one function of device tensors
    (the seeds and a step counter, `at(step)`), so a caller may compile it, or a step that draws its own batch,
    once for every step."""

    def __init__(self, distribution: Distribution, seeds: list[int], batch_size: int, burstiness: int,
                 features: Tensor):
        self.distribution, self.features = distribution, features
        self.batch_size, self.burstiness = batch_size, burstiness
        self.seeds = torch.tensor(seeds, dtype=torch.int64, device=features.device)
        self.counter = torch.zeros((), dtype=torch.int64, device=features.device)

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.draw(*self.at(step))

    def at(self, step: int) -> tuple[Tensor, Tensor]:
        """The arguments of `draw` for batch `step`: the seeds and the counter, set on the device (no host sync, and
        a compiled function sees the same two tensors every step)."""
        self.counter.fill_(step)
        return self.seeds, self.counter

    def draw(self, seeds: Tensor, counter: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        seqs = draw(self.distribution, counter_rng.stream_keys(seeds, counter), self.batch_size, self.burstiness,
                    self.features)
        return seqs.x, seqs.context_labels, seqs.query_label, seqs.match


def label_pairs(n_labels: int, val_fraction: float, seed_split: int) -> tuple[np.ndarray, np.ndarray]:
    """C(L,2) unordered pairs in lexicographic order, permuted once by the split seed, split train/val."""
    pairs = np.array(list(combinations(range(n_labels), 2)), dtype=np.int64)
    pairs = pairs[np.random.default_rng(seed_split).permutation(len(pairs))]
    n_train = max(1, round((1 - val_fraction) * len(pairs)))
    return pairs[:n_train], pairs[n_train:]


class Task:
    """Features, class/exemplar/label splits, the training stream and the fixed evaluation sets of one trial."""

    def __init__(self, config: DataConfig, device: torch.device, features: Tensor | None = None):
        """`features` [class, exemplar, d_in] on `device`: a table already loaded (the trials of a pack share
        one); None = load it as `config` says."""
        self.config = config
        self.device = device
        if features is None:
            features = torch.from_numpy(load_features(config)).to(device)
        n_classes, n_exemplars, _ = features.shape
        check_split(config, features.shape)
        self.d_in = features.shape[2]
        self.features = features  # [class, exemplar, d_in]
        self.train_classes = torch.arange(config.n_train_classes, device=device)
        self.test_classes = torch.arange(n_classes - config.n_test_classes, n_classes, device=device)
        self.train_exemplars = torch.arange(config.n_train_exemplars, device=device)
        self.heldout_exemplars = torch.arange(config.n_train_exemplars, n_exemplars, device=device)
        train_pairs, val_pairs = label_pairs(config.n_labels, config.val_pair_fraction, config.seed_split)
        if len(val_pairs) == 0:
            raise ValueError(f"data.n_labels={config.n_labels} leaves no validation label pair; use at least 3 labels")
        self.train_pairs = torch.from_numpy(train_pairs).to(device)
        self.val_pairs = torch.from_numpy(val_pairs).to(device)
        ranks = torch.arange(1, config.n_train_classes + 1, dtype=torch.float64, device=device)
        weights = ranks ** -config.zipf_exponent  # unnormalized; uniform at exponent 0
        self.train_distribution = self.distribution(self.train_classes, weights, self.train_exemplars, self.train_pairs)

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    def distribution(self, classes: Tensor, class_weights: Tensor, exemplars: Tensor, pairs: Tensor) -> Distribution:
        """One trial's sequence distribution (K=1): classes drawn by weight, exemplars from a contiguous range."""
        cumulative = torch.cumsum(class_weights.double(), 0)
        thresholds = torch.round(cumulative / cumulative[-1] * UNIT).long()
        thresholds[-1] = UNIT  # exactly: every draw in [0, UNIT) lands on a class
        counts = torch.tensor([len(exemplars), len(pairs)], device=self.device)
        return Distribution(classes[None], thresholds[None], exemplars[:1], counts[:1], pairs[None], counts[1:],
                            torch.tensor([self.config.noise], device=self.device), self.config.noise > 0)

    def sample_train(self, n: int, seed: int, step: int = 0) -> Batch:
        """Training batch number `step` of the stream seeded by `seed` (the trial's data seed), n sequences."""
        seqs = self.draw(self.train_distribution, seed, step, n)
        return Batch(seqs.x, seqs.context_labels, seqs.query_label, seqs.match)

    def training_stream(self, seed: int, batch_size: int) -> TrainingStream:
        return TrainingStream(self.train_distribution, [seed], batch_size, self.config.burstiness, self.features)

    def draw(self, distribution: Distribution, seed: int, counter: int, n: int) -> Sequences:
        """Draw `counter` of the stream `seed`: n sequences of one trial."""
        keys = counter_rng.stream_keys(torch.tensor([seed], device=self.device), counter)
        return draw(distribution, keys, n, self.config.burstiness, self.features).trial(0)

    def evaluators(self, config: EvalConfig, seed: int) -> dict[str, Sequences]:
        """The fixed evaluation sets, made once from the eval seed (uniform class distribution)."""
        train_uniform = torch.ones(len(self.train_classes), device=self.device)
        test_uniform = torch.ones(len(self.test_classes), device=self.device)
        exemplar0 = self.train_exemplars[:1]
        # the keys are ihmodel.config.EVALUATORS; set i is draw -(i+1) of the eval seed's stream, which no training
        # step (draws 0, 1, ...) makes even when a user gives the data and eval seeds the same value
        specs = {
            "fsl_train": (self.train_classes, train_uniform, exemplar0, self.train_pairs),
            "fsl_val_rl": (self.train_classes, train_uniform, exemplar0, self.val_pairs),
            "fsl_train_valex": (self.train_classes, train_uniform, self.heldout_exemplars, self.train_pairs),
            "fsl_test_class": (self.test_classes, test_uniform, exemplar0, self.train_pairs),
        }
        return {name: self.draw(self.distribution(*spec), seed, -(i + 1), config.size)
                for i, (name, spec) in enumerate(specs.items())}

    def all_train_sequences(self) -> Sequences:
        """Every training sequence (burstiness 1): ordered pairs of distinct train classes x ordered train label
        pairs x both match positions, exemplar 0 (the paper's induction-strength set; 78,400 at the defaults)."""
        if self.config.burstiness != 1:
            raise ValueError("eval.induction_set=all_train enumerates burstiness-1 sequences; set data.burstiness=1 "
                             "or eval.induction_set=fsl_train")
        n, device = len(self.train_classes), self.device
        classes = torch.arange(n, device=device)
        query, distractor = torch.meshgrid(classes, classes, indexing="ij")
        keep = query != distractor
        query, distractor = query[keep], distractor[keep]  # [n(n-1)]
        ordered_pairs = torch.cat([self.train_pairs, self.train_pairs.flip(1)])  # [2P, 2]
        match_first = torch.tensor([[True, False], [False, True]], device=device)
        q, p, m = torch.meshgrid(torch.arange(len(query), device=device),
                                 torch.arange(len(ordered_pairs), device=device), torch.arange(2, device=device),
                                 indexing="ij")
        q, p, m = q.flatten(), p.flatten(), m.flatten()
        match = match_first[m]
        item_class = torch.cat([torch.where(match, query[q, None], distractor[q, None]), query[q, None]], dim=1)
        first, second = ordered_pairs[p, :1], ordered_pairs[p, 1:]
        rows = self.train_classes[item_class] * self.features.shape[1] + self.train_exemplars[0]
        return Sequences(self.features.view(-1, self.d_in), rows, None,
                         context_labels=torch.where(match, first, second), query_label=first[:, 0], match=match)
