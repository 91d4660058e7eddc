"""Statistics from activations the forward pass already made, computed on the device, flushed in blocks.

Per step (the training batch's own main pass): loss, acc, grad_norm and, per layer x head, prev_token_score,
induction_score, pattern_entropy, head_out_norm. Per evaluation: loss, accuracies and probabilities per evaluator,
and the induction score per head on the induction set. Every per-head statistic is one batched tensor op over
[layer, batch, head, ...]: no Python loop over heads, no host sync per step.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ihmodel.data import Batch, Sequences, on_distinct_rows
from ihmodel.model import Keep, TableRows, Transformer
from ihmodel.store import STEP_VARIABLES

HEAD_STATS = ("prev_token_score", "induction_score", "pattern_entropy", "head_out_norm")


class Collector:
    """Observer hooks that keep each layer's pattern and z from the main pass (references, no copies)."""

    def __init__(self, model: Transformer, need_z: bool):
        layers = range(model.cfg.n_layers)
        self.patterns, self.zs = [Keep() for _ in layers], [Keep() for _ in layers]
        self.hooks = [(f"blocks.{layer}.attn.hook_pattern", self.patterns[layer]) for layer in layers]
        if need_z:
            self.hooks += [(f"blocks.{layer}.attn.hook_z", self.zs[layer]) for layer in layers]

    def take(self) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """The patterns and zs of the last pass; the collector lets go of them (under vmap they must not leave
        the vmapped function)."""
        return [keep.take() for keep in self.patterns], [keep.take() for keep in self.zs]


# Each statistic takes its [layer, batch, ...] input as a tensor or as one tensor per layer (what the forward
# pass gives: stacking would copy every layer into a new batch-first buffer) and reduces each layer batch-last,
# as the model lays out its per-head tensors, so a compiled step reduces over the batch vector-wide rather than
# over axes of 5 or 8.

def prev_token_score(pattern: Tensor | list[Tensor]) -> Tensor:
    """pattern [layer, batch, head, query, key] -> [layer, head]: label tokens (1, 3, ...) to the item before."""
    labels = torch.arange(1, pattern[0].shape[-1] - 1, 2, device=pattern[0].device)
    return torch.stack([p.movedim(0, -1)[:, labels, labels - 1].mean(dim=(1, 2)) for p in pattern])


def induction_score(pattern: Tensor | list[Tensor], match: Tensor) -> Tensor:
    """[layer, head]: attention from the query to the label tokens of its class minus to the other labels."""
    sign = match.to(pattern[0].dtype).T * 2 - 1  # [item, batch]: +1 correct label token, -1 other
    return torch.stack([(p.movedim(0, -1)[:, -1, 1::2] * sign).sum(1).mean(dim=1) for p in pattern])


def pattern_entropy(pattern: Tensor | list[Tensor]) -> Tensor:
    """[layer, head]: entropy of each query row 1..n (row 0 can only see itself), averaged."""
    return torch.stack([torch.special.entr(p.movedim(0, -1)[:, 1:]).sum(2).mean(dim=(1, 2)) for p in pattern])


def head_out_norm(z: Tensor | list[Tensor], W_O: Tensor) -> Tensor:
    """z [layer, batch, pos, head, d_head], W_O [layer, head, d_head, d_model] -> [layer, head]: mean L2 norm of each
    head's write z W_O into the residual stream, as sqrt(z . (G z)) with G = W_O W_O^T: d_head x d_head per head
    instead of d_model wide products. Broadcast sums, not BLAS matmuls, whose rounding can depend on where the
    weights sit in memory: a resumed trial must record the same numbers as an uninterrupted one."""
    norms = []
    for z_layer, W_layer in zip(z, W_O):
        gram = (W_layer[:, :, None, :] * W_layer[:, None, :, :]).sum(-1)  # [head, d_head, d_head]
        z_layer = z_layer.permute(2, 1, 3, 0)  # [head, pos, d_head, batch]
        gram_z = (gram[:, None, :, :, None] * z_layer[:, :, None]).sum(3)  # [head, pos, d_head, batch]
        norms.append((z_layer * gram_z).sum(2).clamp_min(0).sqrt().mean(dim=(1, 2)))
    return torch.stack(norms)


def stacked_W_O(model: Transformer) -> Tensor:
    cfg = model.cfg
    return torch.stack([b.attn.W_O.weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model) for b in model.blocks])


class StepStats:
    """Computes each step's row of recorded statistics on the device and keeps the rows until a flush.

    `row` holds everything the forward pass gives (it may run inside a compiled forward); `record` adds the
    gradient norm after the backward pass and keeps the row. Rows are kept as the tensors the step made, stacked
    only when drained: writing each into a preallocated buffer cost two indexing ops a step, about 25 µs (2 % of
    a training step at the paper's size)."""

    def __init__(self, model: Transformer, names: list[str], block: int):
        """`block`: rows kept before `full`. In a pack every row has a leading trial axis."""
        self.model = model
        recorded = [n for n in STEP_VARIABLES if n in names]
        self.with_grad_norm = "grad_norm" in recorded
        self.names = [n for n in recorded if n != "grad_norm"] + ["grad_norm"] * self.with_grad_norm  # column order
        self.head_names = [n for n in self.names if n in HEAD_STATS]
        self.collector = Collector(model, need_z="head_out_norm" in self.names)
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        self.widths = {n: (n_layers * n_heads if n in HEAD_STATS else 1) for n in self.names}
        self.block = block
        self.kept: list[Tensor] = []  # per step: the row (without the gradient norm)
        self.grad_norms: list[Tensor] = []
        self.pending_grad_norm: Callable[[], Tensor] | None = None  # the last kept row's, not yet taken
        self.rows = 0

    @property
    def observers(self):
        return self.collector.hooks if self.head_names else []

    @torch.no_grad()
    def row(self, batch: Batch, logits: Tensor, loss: Tensor) -> Tensor:
        """The step's statistics but the gradient norm, flattened in column order."""
        compute = {
            "loss": lambda: loss.detach(),
            "acc": lambda: (logits.argmax(-1) == batch.query_label).float().mean(),
        }
        if self.head_names:
            patterns, zs = self.collector.take()  # per layer: [batch, head, query, key], [batch, pos, head, d_head]
            compute |= {
                "prev_token_score": lambda: prev_token_score(patterns),
                "induction_score": lambda: induction_score(patterns, batch.match),
                "pattern_entropy": lambda: pattern_entropy(patterns),
                "head_out_norm": lambda: head_out_norm(zs, stacked_W_O(self.model)),
            }
        return torch.cat([compute[n]().reshape(-1) for n in self.names if n != "grad_norm"] + [loss.new_zeros(0)])

    @torch.no_grad()
    def record(self, row: Tensor, grad_norm: Callable[[], Tensor]):
        """Keep the step's row. Its gradient norm is taken later, by calling `grad_norm` at `settle_grad_norm`
        (which a trial runs after its next forward pass, before clearing the gradient), at the next `record` or
        at `drain`. An eager reduction right after the backward pass costs about 15 µs more than the same one
        after the next (compiled) forward: the backward pushed the code it needs out of the caches."""
        self.settle_grad_norm()
        if self.names:
            self.kept.append(row)
            if self.with_grad_norm:
                self.pending_grad_norm = grad_norm
        self.rows += 1

    @torch.no_grad()
    def settle_grad_norm(self):
        """Take the last recorded step's gradient norm now, while its gradient is still there."""
        if self.pending_grad_norm is not None:
            self.grad_norms.append(self.pending_grad_norm())
            self.pending_grad_norm = None

    @property
    def full(self) -> bool:
        return self.rows >= self.block

    def discard(self):
        """Forget the rows kept (timing runs)."""
        self.kept, self.grad_norms, self.pending_grad_norm, self.rows = [], [], None, 0

    def drain(self) -> dict:
        """The rows so far as host arrays shaped for the store ([row, (trial,) ...]); the rows start over."""
        self.settle_grad_norm()
        columns = [torch.stack(self.kept)] if self.kept else []
        if self.grad_norms:
            columns.append(torch.stack(self.grad_norms)[..., None])
        block = torch.cat(columns, dim=-1).cpu().numpy() if columns else None
        self.discard()
        n_layers, n_heads = self.model.cfg.n_layers, self.model.cfg.n_heads
        out, start = {}, 0
        for name in self.names:
            width = self.widths[name]
            columns = block[..., start:start + width]
            head_shape = (*columns.shape[:-1], n_layers, n_heads)
            out[name] = columns.reshape(head_shape) if name in HEAD_STATS else columns[..., 0]
            start += width
        return out


class Evaluation:
    """Evaluator metrics [evaluator] and the induction score [layer, head] on the induction set, clamps active.

    One forward per chunk of an evaluation set gives both its metrics and its induction score, so the induction
    set costs nothing more when it is one of the evaluators (the default, fsl_train). `chunk` is the unit a
    compiled trial compiles. Results stay on the device."""

    def __init__(self, clamps, evaluators: dict[str, Sequences], induction_set: str, all_train: Sequences | None,
                 batch_size: int):
        self.clamps, self.batch_size = clamps, batch_size
        self.induction_set = induction_set
        sets = on_distinct_rows(evaluators | ({"all_train": all_train} if all_train is not None else {}))
        self.all_train = sets.pop("all_train", None)  # the exhaustive set, when induction_set == "all_train"
        self.evaluators = sets
        self.collector = Collector(clamps.model, need_z=False)
        # The metrics read the query position's logits and the induction score its attention: without clamps in
        # the last layer, it computes that position alone.
        self.query_only = clamps.leaves_last_layer
        self.chunk = self.chunk_sums

    @torch.no_grad()
    def chunk_sums(self, table: Tensor, items: Tensor, context_labels: Tensor, query_label: Tensor, match: Tensor,
                   noise: Tensor | None = None):
        """Sums over one chunk: the 5 classification metrics and the induction score [layer, head]."""
        batch = Batch(TableRows(table, items, noise), context_labels, query_label, match)
        logits = self.clamps.forward(batch, self.collector.hooks, self.query_only)
        induction = induction_score(self.collector.take()[0], match) * len(batch)
        return classification_metrics(logits, batch).sum(dim=0), induction

    def distinct_rows(self) -> Tensor:
        """The features of the table rows the evaluation sets use, each once: every set shares them
        (on_distinct_rows), so they are gathered once per evaluation."""
        return next(iter(self.evaluators.values())).exemplars().table

    def sums(self, data: Sequences, table: Tensor) -> tuple[Tensor, Tensor]:
        """Mean metrics and induction score over one evaluation set, a chunk at a time."""
        n = self.set_size(data)
        metrics, induction = 0.0, 0.0
        for start in range(0, n, self.batch_size):
            chunk_metrics, chunk_induction = self.chunk(*self.chunk_inputs(data, table, start, start + self.batch_size))
            metrics, induction = metrics + chunk_metrics, induction + chunk_induction
        return metrics / n, induction / n

    def set_size(self, data: Sequences) -> int:
        return len(data)

    def chunk_inputs(self, data: Sequences, table: Tensor, start: int, stop: int) -> list[Tensor]:
        """`chunk`'s arguments for sequences start..stop of a set."""
        chunk = data.slice(start, stop)
        noise = [] if chunk.noise is None else [chunk.noise]
        return [table, chunk.items, chunk.context_labels, chunk.query_label, chunk.match, *noise]

    def __call__(self) -> dict[str, Tensor]:
        metrics, induction = {}, None
        table = self.distinct_rows()
        for name, data in self.evaluators.items():
            metrics[name], chunk_induction = self.sums(data, table)
            if name == self.induction_set:
                induction = chunk_induction
        if induction is None:
            induction = self.sums(self.all_train, table)[1]
        stacked = torch.stack([metrics[name] for name in self.evaluators], dim=-1)  # [(trial,) 5, evaluator]
        names = ("eval_loss", "eval_acc", "eval_icl_acc", "eval_icl_prob", "eval_context_prob")
        return dict(zip(names, stacked.unbind(-2))) | {"eval_induction_score": induction}


def classification_metrics(logits: Tensor, batch: Batch) -> Tensor:
    """[batch, 5]: loss, acc, in-context acc, in-context prob, probability mass on in-context labels."""
    target = batch.query_label
    loss = F.cross_entropy(logits, target, reduction="none")
    in_context = torch.zeros_like(logits, dtype=torch.bool).scatter(1, batch.context_labels, True)
    icl_logits = logits.masked_fill(~in_context, float("-inf"))
    icl_prob = icl_logits.softmax(-1).gather(1, target[:, None])[:, 0]
    context_prob = (logits.softmax(-1) * in_context).sum(-1)
    return torch.stack([loss, (logits.argmax(-1) == target).float(), (icl_logits.argmax(-1) == target).float(),
                        icl_prob, context_prob], dim=1)
