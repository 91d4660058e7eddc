"""Clamps ("artificial optogenetics"): activations overwritten in every forward pass, training and evaluation.

A clamp set (ClampConfig) is data: a list of interventions. `ClampSet` checks it against the model before any
training and runs forwards with it. Every intervention is `where(mask, value, activation)` on a hook point, as in
the paper's code, so a constant value passes no gradient into what it replaces, while a value computed from a pass
of the same model (perfect copy, perfect previous-token input) passes gradient through that pass.

Interventions that need another pass declare what it must capture: the *first pass* runs with every
intervention's first-pass hooks and records those values; the *main pass* then runs with the clamps proper. The
main pass is the one that trains and that statistics read.

Kinds (layer, head from 0; `heads`/`keep_heads` select heads; `positions` select positions or query rows):
  zero, constant, mean      any hook set to 0, to `value`, or to its mean over the batch (held constant)
  checkpoint                any hook set to its value in another trial's checkpoint on the same input
  graft                     checkpoint on blocks.0.hook_attn_out: layer 1's output from another model
  zero_value                a head's value vectors zeroed (the paper's head ablation)
  prev_token_pattern        a head's pattern: position 0 attends to itself, every other row to the previous token
  induction_pattern         the query row of a head's pattern: `strength` on the query's label token(s), the
                            rest on the other label token(s)
  perfect_copy              the query's logits are one head's scaled pre-softmax scores from the query to the
                            label tokens (first pass), placed at those labels' ids; every other logit -1e9
  perfect_prev_token_input  first pass: the residual entering layer `layer` (default: the last) is
                            [e0, e0, e1, ..., e_{n-2}, e_query]; main pass: that layer's patterns are the first
                            pass's and the layers before it write nothing (their output replaced by zeros)
  pattern_preserving        heads' values zeroed while every later layer's patterns keep their unablated values
  value_preserving          heads' values zeroed while every later layer's values keep their unablated values
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from ihmodel.config import ClampConfig, InterventionConfig
from ihmodel.data import Batch
from ihmodel.model import Keep, Transformer

KINDS = ("zero", "constant", "mean", "checkpoint", "graft", "zero_value", "prev_token_pattern",
         "induction_pattern", "perfect_copy", "perfect_prev_token_input", "pattern_preserving", "value_preserving")

# Layout of each hook point: (head axis, position axis) of its tensor; None where it has no such axis.
_HEAD_POS_AXES = {
    "hook_q": (2, 1), "hook_k": (2, 1), "hook_v": (2, 1), "hook_rot_q": (2, 1), "hook_rot_k": (2, 1),
    "hook_z": (2, 1), "hook_result": (2, 1), "hook_attn_scores": (1, 2), "hook_pattern": (1, 2),
}
LOGIT_NOT_IN_CONTEXT = -1e9


def _axes(hook_name: str) -> tuple[int | None, int | None]:
    suffix = hook_name.rsplit(".", 1)[-1]
    if suffix == "hook_logits":
        return None, None
    return _HEAD_POS_AXES.get(suffix, (None, 1))


@dataclass
class Write:
    """One overwrite (in the main pass, or the first): where (hook, heads, positions), how its value is computed."""

    hook: str
    heads: tuple[int, ...] | None  # None = every head (or a hook without heads)
    positions: tuple[int, ...] | None  # None = every position
    value: Callable[[Tensor, Batch, dict], Tensor]  # (activation, batch, first-pass captures) -> value
    source: str  # the intervention, for error messages


class ClampSet:
    def __init__(self, config: ClampConfig, model: Transformer):
        self.name = config.name
        self.model = model
        self.writes: list[Write] = []
        self.captures: set[str] = set()  # hook names the first pass records
        self.first_pass_writes: list[Write] = []
        self._checkpoint_models: dict[str, Transformer] = {}
        for index, intervention in enumerate(config.interventions):
            self._add(intervention, f"clamp.interventions[{index}] ({intervention.kind})")
        self._check_no_contradiction()
        self.batch: Batch | None = None  # the batch of the forward under way
        self.captured: dict[str, Tensor] = {}  # what its first pass recorded
        self._build_hooks()

    @property
    def needs_first_pass(self) -> bool:
        return bool(self.captures)

    @property
    def leaves_last_layer(self) -> bool:
        """Nothing is overwritten or recorded in the last layer: a pass may compute its query position alone."""
        last = f"blocks.{self.model.cfg.n_layers - 1}."
        hooks = [w.hook for w in self.writes + self.first_pass_writes] + list(self.captures)
        return not any(hook.startswith(last) for hook in hooks)

    # ---- building ------------------------------------------------------------------------------------------
    def _add(self, iv: InterventionConfig, source: str):
        model, n_layers = self.model, self.model.cfg.n_layers
        if iv.kind not in KINDS:
            raise ValueError(f"{source}: unknown clamp kind {iv.kind!r}; choose one of {', '.join(KINDS)}")
        if iv.kind in ("zero", "constant", "mean", "checkpoint", "graft"):
            hook = "blocks.0.hook_attn_out" if iv.kind == "graft" else iv.hook
            if hook not in model.hook_names():
                raise ValueError(f"{source}: no hook {hook!r}; hooks are {', '.join(model.hook_names())}")
            heads = self._heads(iv, source, hook)
            if iv.positions is not None and _axes(hook)[1] is None:
                raise ValueError(f"{source}: hook {hook!r} has no position axis; drop positions")
            if iv.kind == "constant" and iv.value is None:
                raise ValueError(f"{source}: kind constant needs a value (e.g. value: 0.5)")
            value = {"zero": partial(_constant, value=0.0), "constant": partial(_constant, value=iv.value),
                     "mean": _batch_mean}.get(iv.kind)
            if value is None:
                value = self._checkpoint_value(iv.checkpoint, hook, source)
            self._write(hook, heads, self._positions(iv, source), value, source)
            return
        if iv.kind == "perfect_prev_token_input":
            layer = n_layers - 1 if iv.layer is None else self._layer(iv, source)
            if layer == 0:
                raise ValueError(f"{source}: perfect_prev_token_input feeds a layer after the first; "
                                 f"layer must be 1..{n_layers - 1}")
            self._add_perfect_prev_token_input(layer, source)
            return
        layer = self._layer(iv, source)
        heads = self._heads(iv, source)
        if iv.kind == "zero_value":
            self._write(f"blocks.{layer}.attn.hook_v", heads, None, partial(_constant, value=0.0), source)
        elif iv.kind == "prev_token_pattern":
            self._write(f"blocks.{layer}.attn.hook_pattern", heads, self._positions(iv, source),
                        _prev_token_pattern, source)
        elif iv.kind == "induction_pattern":
            if not 0.0 <= iv.strength <= 1.0:
                raise ValueError(f"{source}: strength={iv.strength}; must lie in [0, 1] (induction strength 2s-1)")
            n_query = model.n_ctx - 1
            self._write(f"blocks.{layer}.attn.hook_pattern", heads, (n_query,),
                        partial(_induction_pattern, strength=iv.strength), source)
        elif iv.kind == "perfect_copy":
            if heads is None or len(heads) != 1:
                raise ValueError(f"{source}: perfect_copy copies from exactly one head; give heads: [h]")
            scores = f"blocks.{layer}.attn.hook_attn_scores"
            self.captures.add(scores)
            self._write("hook_logits", None, None,
                        partial(_perfect_copy_logits, scores_hook=scores, head=heads[0]), source)
        elif iv.kind in ("pattern_preserving", "value_preserving"):
            self._write(f"blocks.{layer}.attn.hook_v", heads, None, partial(_constant, value=0.0), source)
            kept = "hook_pattern" if iv.kind == "pattern_preserving" else "hook_v"
            for later in range(layer + 1, n_layers):
                hook = f"blocks.{later}.attn.{kept}"
                self.captures.add(hook)
                self._write(hook, None, None, partial(_captured, name=hook, detach=True), source)

    def _add_perfect_prev_token_input(self, layer: int, source: str):
        self.captures.update({"hook_embed", f"blocks.{layer}.attn.hook_pattern"})
        self.first_pass_writes.append(
            Write(f"blocks.{layer}.hook_resid_pre", None, None, _previous_token_embeddings, source))
        for earlier in range(layer):
            self._write(f"blocks.{earlier}.hook_attn_out", None, None, partial(_constant, value=0.0), source)
        pattern = f"blocks.{layer}.attn.hook_pattern"
        self._write(pattern, None, None, partial(_captured, name=pattern, detach=False), source)

    def _write(self, hook, heads, positions, value, source):
        self.writes.append(Write(hook, heads, positions, value, source))

    def _layer(self, iv: InterventionConfig, source: str) -> int:
        n_layers = self.model.cfg.n_layers
        if iv.layer is None or not 0 <= iv.layer < n_layers:
            raise ValueError(f"{source}: layer={iv.layer}; layers are 0..{n_layers - 1}")
        return iv.layer

    def _heads(self, iv: InterventionConfig, source: str, hook: str | None = None) -> tuple[int, ...] | None:
        n_heads = self.model.cfg.n_heads
        if (iv.heads is not None or iv.keep_heads is not None) and hook is not None and _axes(hook)[0] is None:
            raise ValueError(f"{source}: hook {hook!r} has no head axis; drop heads/keep_heads")
        if iv.heads is not None and iv.keep_heads is not None:
            raise ValueError(f"{source}: give heads or keep_heads, not both")
        chosen = iv.heads if iv.heads is not None else iv.keep_heads
        if chosen is None:
            return None
        bad = [h for h in chosen if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"{source}: head {bad[0]} out of range; heads are 0..{n_heads - 1}")
        if iv.keep_heads is not None:
            return tuple(h for h in range(n_heads) if h not in chosen)
        return tuple(sorted(set(chosen)))

    def _positions(self, iv: InterventionConfig, source: str) -> tuple[int, ...] | None:
        if iv.positions is None:
            return None
        n_ctx = self.model.n_ctx
        bad = [p for p in iv.positions if not 0 <= p < n_ctx]
        if bad:
            raise ValueError(f"{source}: position {bad[0]} out of range; positions are 0..{n_ctx - 1}")
        return tuple(sorted(set(iv.positions)))

    def _checkpoint_value(self, path: str | None, hook: str, source: str):
        from ihmodel.checkpoint import load_model  # only clamp sets that graft need checkpoints

        if path is None:
            raise ValueError(f"{source}: needs checkpoint: PATH (another trial's .ckpt.pt)")
        if path not in self._checkpoint_models:
            other = load_model(path, device=next(self.model.parameters()).device)
            if (other.cfg, other.d_vocab, other.n_ctx) != (self.model.cfg, self.model.d_vocab, self.model.n_ctx):
                raise ValueError(f"{source}: checkpoint {path} holds a model of another shape; graft needs the same "
                                 f"model config, labels and context length")
            other.requires_grad_(False)
            self._checkpoint_models[path] = other
        other = self._checkpoint_models[path]
        kept = Keep()

        def value(x: Tensor, batch: Batch, captured: dict) -> Tensor:
            with torch.no_grad(), other.hooks([(hook, kept)]):
                other(batch.x, batch.context_labels)
            return kept.take()

        return value

    def _check_no_contradiction(self):
        for i, a in enumerate(self.writes):
            for b in self.writes[i + 1:]:
                if a.hook == b.hook and _overlap(a.heads, b.heads) and _overlap(a.positions, b.positions):
                    raise ValueError(f"contradictory interventions: {a.source} and {b.source} both overwrite "
                                     f"{a.hook} (heads {a.heads or 'all'}, positions {a.positions or 'all'}); "
                                     f"give them disjoint heads or positions")

    def _mask(self, write: Write) -> Tensor | None:
        """Boolean mask broadcastable to the hook's tensor; None = overwrite it whole."""
        if write.heads is None and write.positions is None:
            return None
        head_axis, pos_axis = _axes(write.hook)
        ndim = 4 if head_axis is not None else 3
        mask = torch.ones([1] * ndim, dtype=torch.bool)
        device = next(self.model.parameters()).device
        if write.heads is not None:
            sizes = [1] * ndim
            sizes[head_axis] = self.model.cfg.n_heads
            heads = torch.zeros(self.model.cfg.n_heads, dtype=torch.bool)
            heads[list(write.heads)] = True
            mask = mask & heads.view(sizes)
        if write.positions is not None:
            sizes = [1] * ndim
            sizes[pos_axis] = self.model.n_ctx
            positions = torch.zeros(self.model.n_ctx, dtype=torch.bool)
            positions[list(write.positions)] = True
            mask = mask & positions.view(sizes)
        return mask.to(device)

    # ---- running -------------------------------------------------------------------------------------------
    def forward(self, batch: Batch, observers: list[tuple[str, Callable]] = (), query_only: bool = False) -> Tensor:
        """Logits [batch, d_vocab] of the main pass with every clamp on; `observers` are hooks that only read.
        `query_only` (the model's, for the main pass) needs `leaves_last_layer`."""
        self.batch, self.captured = batch, {}
        try:
            if self.needs_first_pass:
                with self.model.hooks(self._first_pass_hooks):
                    self.model(batch.x, batch.context_labels)
            with self.model.hooks(self._main_pass_hooks + list(observers)):
                return self.model(batch.x, batch.context_labels, query_only)
        finally:  # hold no activation past the forward (under vmap they must not leave it)
            self.batch, self.captured = None, {}

    def _build_hooks(self):
        """Hook fns made once; per forward they read the batch and the first pass's captures from `self`."""
        self._first_pass_hooks = [(name, _Recorder(self, name)) for name in sorted(self.captures)]
        self._first_pass_hooks += [(w.hook, _Overwrite(self, w, self._mask(w))) for w in self.first_pass_writes]
        self._main_pass_hooks = [(w.hook, _Overwrite(self, w, self._mask(w))) for w in self.writes]


class _Overwrite:
    def __init__(self, clamps: ClampSet, write: Write, mask: Tensor | None):
        self.clamps, self.write, self.mask = clamps, write, mask

    def __call__(self, x: Tensor, hook) -> Tensor:
        value = self.write.value(x, self.clamps.batch, self.clamps.captured)
        return value.expand_as(x) if self.mask is None else torch.where(self.mask, value, x)


class _Recorder:
    def __init__(self, clamps: ClampSet, name: str):
        self.clamps, self.name = clamps, name

    def __call__(self, x: Tensor, hook) -> None:
        self.clamps.captured[self.name] = x


def _overlap(a: tuple | None, b: tuple | None) -> bool:
    return a is None or b is None or bool(set(a) & set(b))


def _constant(x: Tensor, batch: Batch, captured: dict, value: float) -> Tensor:
    return torch.full((), value, dtype=x.dtype, device=x.device)


def _batch_mean(x: Tensor, batch: Batch, captured: dict) -> Tensor:
    return x.detach().mean(dim=0, keepdim=True)


def _captured(x: Tensor, batch: Batch, captured: dict, name: str, detach: bool) -> Tensor:
    return captured[name].detach() if detach else captured[name]


def _prev_token_pattern(x: Tensor, batch: Batch, captured: dict) -> Tensor:
    n_ctx = x.shape[-1]
    table = torch.zeros(n_ctx, n_ctx, device=x.device, dtype=x.dtype)  # [query_pos, key_pos]
    table[0, 0] = 1.0
    table[torch.arange(1, n_ctx), torch.arange(n_ctx - 1)] = 1.0
    return table.expand_as(x)


def _induction_pattern(x: Tensor, batch: Batch, captured: dict, strength: float) -> Tensor:
    # x: [batch, head, query_pos, key_pos]; weights on label tokens 1, 3, ... of matching / other items.
    match = batch.match.to(x.dtype)  # [batch, item]
    n_match = match.sum(1, keepdim=True)
    weights = strength * match / n_match + (1 - strength) * (1 - match) / (match.shape[1] - n_match)
    # Interleave zeros for the item tokens and append the query's: built out of place, so it works under vmap.
    row = torch.stack([torch.zeros_like(weights), weights], dim=-1).flatten(-2)  # positions 0 .. n_ctx-2
    row = torch.cat([row, row.new_zeros(row.shape[0], x.shape[-1] - row.shape[1])], dim=1)
    return row[:, None, None, :].expand_as(x)


def _perfect_copy_logits(x: Tensor, batch: Batch, captured: dict, scores_hook: str, head: int) -> Tensor:
    scores = captured[scores_hook][:, head, -1, 1::2]  # [batch, item]: query to each label token
    logits = torch.full_like(x, LOGIT_NOT_IN_CONTEXT)
    return logits.scatter(1, batch.context_labels, scores)


def _previous_token_embeddings(x: Tensor, batch: Batch, captured: dict) -> Tensor:
    embed = captured["hook_embed"]  # [batch, pos, d_model]
    return torch.cat([embed[:, :1], embed[:, :-2], embed[:, -1:]], dim=1)  # [e0, e0, e1, ..., e_{n-2}, e_query]

