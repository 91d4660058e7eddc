"""The paper's few-shot classification task, which can only be solved in context.

A sequence is `x1 y1 x2 y2 ... xq`: `burstiness` context items of the query's class and as many of one distractor
class, order shuffled. Labels are re-drawn per sequence from a label pair (one of the train pairs, random order):
the query's class gets the pair's first label, the distractor the second. A label says nothing about a class, so
only the context solves it, and guessing between the two context labels costs ln 2 (the plateau).

Everything is sampled with explicit generators on the training device: no host sync, resumable from their states.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from ihmodel.config import DataConfig, EvalConfig
from ihmodel.features import load_features


@dataclass
class Batch:
    x: Tensor  # [batch, item, d_in] exemplar features; the last item is the query
    context_labels: Tensor  # [batch, context_item] label ids of the context items
    query_label: Tensor  # [batch]
    match: Tensor  # [batch, context_item] bool: the item has the query's class (and so its label)

    def __len__(self) -> int:
        return self.x.shape[0]

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(self.x[start:stop], self.context_labels[start:stop], self.query_label[start:stop],
                     self.match[start:stop])


@dataclass
class Sequences:
    """A fixed set of sequences held as rows of the feature table, not as copies of exemplar vectors: a few ints
    per item instead of d_in floats, so a trial keeps its evaluation sets, and a pack a thousand trials' sets, in
    little memory. `x` gathers the vectors on demand (for one chunk at a time); otherwise used like a Batch."""

    table: Tensor  # [rows, d_in] the flattened feature table (shared, never copied)
    items: Tensor  # [n, item] row of each item in the table
    noise: Tensor | None  # [n, item, d_in] within-class noise drawn for these sequences (data.noise > 0)
    context_labels: Tensor
    query_label: Tensor
    match: Tensor

    @property
    def x(self) -> Tensor:
        x = self.table.index_select(0, self.items.reshape(-1)).view(*self.items.shape, self.table.shape[1])
        return x if self.noise is None else x + self.noise

    def __len__(self) -> int:
        return self.items.shape[0]

    def slice(self, start: int, stop: int) -> Sequences:
        return Sequences(self.table, self.items[start:stop], None if self.noise is None else self.noise[start:stop],
                         self.context_labels[start:stop], self.query_label[start:stop], self.match[start:stop])


def gumbel_argmax(log_weights: Tensor, generator: torch.Generator) -> Tensor:
    """One sample per row from softmax(log_weights): [n, classes] -> [n, 1]."""
    uniform = torch.rand(log_weights.shape, generator=generator, device=log_weights.device)
    return (log_weights - (-uniform.log()).log()).argmax(dim=1, keepdim=True)


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
        if config.n_train_classes + config.n_test_classes > n_classes:
            raise ValueError(f"data.n_train_classes + data.n_test_classes = "
                             f"{config.n_train_classes + config.n_test_classes} but the features have "
                             f"{n_classes} classes")
        if not 0 < config.n_train_exemplars < n_exemplars:
            raise ValueError(f"data.n_train_exemplars={config.n_train_exemplars}; the features have {n_exemplars} "
                             f"exemplars per class and some must be held out")
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
        self.train_class_probs = (ranks ** -config.zipf_exponent).float()  # unnormalized; uniform at exponent 0

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    def sample_train(self, n: int, generator: torch.Generator) -> Batch:
        seqs = self.sample(n, generator, self.train_classes, self.train_class_probs, self.train_exemplars,
                           self.train_pairs)
        return Batch(seqs.x, seqs.context_labels, seqs.query_label, seqs.match)

    def sample(self, n: int, generator: torch.Generator, classes: Tensor, class_probs: Tensor, exemplars: Tensor,
               pairs: Tensor) -> Sequences:
        b, device = self.config.burstiness, self.device
        # Gumbel-max sampling: exact, batched, and without the checks that make torch.multinomial slow (and sync
        # with the host on CUDA).
        log_probs = class_probs.log().expand(n, -1)
        query = gumbel_argmax(log_probs, generator)  # [n, 1] index into classes
        distractor = gumbel_argmax(log_probs.scatter(1, query, float("-inf")), generator)  # any other class
        # Shuffle `b` query-class items and `b` distractor items: rank of a random key < b means query class.
        match = torch.rand(n, 2 * b, generator=generator, device=device).argsort(dim=1) < b
        pair = pairs[torch.randint(len(pairs), (n,), generator=generator, device=device)]  # [n, 2]
        flip = torch.randint(2, (n, 1), generator=generator, device=device)
        first, second = pair.gather(1, flip), pair.gather(1, 1 - flip)  # [n, 1] each
        item_class = torch.cat([torch.where(match, query, distractor), query], dim=1)  # [n, 2b+1]
        item_exemplar = exemplars[torch.randint(len(exemplars), item_class.shape, generator=generator, device=device)]
        noise = None
        if self.config.noise > 0:
            shape = (*item_class.shape, self.d_in)
            noise = self.config.noise * torch.randn(shape, generator=generator, device=device)
        return self.sequences(classes[item_class], item_exemplar, noise,
                              context_labels=torch.where(match, first, second), query_label=first[:, 0], match=match)

    def sequences(self, item_class: Tensor, item_exemplar: Tensor, noise: Tensor | None, **labels) -> Sequences:
        """[n, item] class and exemplar ids -> Sequences over the flattened feature table."""
        rows = item_class * self.features.shape[1] + item_exemplar
        return Sequences(self.features.view(-1, self.d_in), rows, noise, **labels)

    def evaluators(self, config: EvalConfig, seed: int) -> dict[str, Sequences]:
        """The fixed evaluation sets, made once from the eval seed (uniform class distribution)."""
        generator = torch.Generator(self.device).manual_seed(seed)
        train_uniform = torch.ones(len(self.train_classes), device=self.device)
        test_uniform = torch.ones(len(self.test_classes), device=self.device)
        exemplar0 = self.train_exemplars[:1]
        specs = {  # the keys are ihmodel.config.EVALUATORS
            "fsl_train": (self.train_classes, train_uniform, exemplar0, self.train_pairs),
            "fsl_val_rl": (self.train_classes, train_uniform, exemplar0, self.val_pairs),
            "fsl_train_valex": (self.train_classes, train_uniform, self.heldout_exemplars, self.train_pairs),
            "fsl_test_class": (self.test_classes, test_uniform, exemplar0, self.train_pairs),
        }
        return {name: self.sample(config.size, generator, *spec) for name, spec in specs.items()}

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
        return self.sequences(self.train_classes[item_class], self.train_exemplars[0].expand_as(item_class), None,
                              context_labels=torch.where(match, first, second), query_label=first[:, 0], match=match)
