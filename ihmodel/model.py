"""The paper's transformer: 2 layers x 8 heads, d_model 64, attention-only, pre-LayerNorm, interleaved RoPE.

Every intermediate passes through a named `HookPoint` (TransformerLens names, STYLE.md), so clamps and statistics
are hook functions `fn(x, *, hook) -> Tensor | None` added with `model.hooks([...])` and removed after. The
default forward runs no hook function at all.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ihmodel.config import ModelConfig

HookFn = Callable[..., Tensor | None]

# JAX's lecun_normal draws from a normal truncated at +-2 sigma and rescales so the variance is exactly 1/fan_in.
TRUNCATED_STD_CORRECTION = 0.87962566103423978


class HookPoint(nn.Module):
    """Identity, unless hook functions are attached: each sees the value and may return a replacement."""

    def __init__(self):
        super().__init__()
        self.name: str = ""
        self.fns: list[HookFn] = []

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fns:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        return x


class Keep:
    """A hook function that keeps the last value it sees until taken (observers: statistics, clamps that read
    another model). An object made once: a closure made inside a compiled forward pass cannot be traced."""

    def __init__(self):
        self.value: Tensor | None = None

    def __call__(self, x: Tensor, hook: HookPoint) -> None:
        self.value = x

    def take(self) -> Tensor | None:
        value, self.value = self.value, None  # under vmap it must not outlive the forward
        return value


def lecun_normal_(weight: Tensor, generator: torch.Generator) -> Tensor:
    std = math.sqrt(1.0 / weight.shape[1]) / TRUNCATED_STD_CORRECTION
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std, generator=generator)


def rope_tables(n_ctx: int, d_head: int, base: float) -> tuple[Tensor, Tensor]:
    """Rotary embedding on interleaved pairs (2i, 2i+1) at angle p * base^(-2i/d_head), as tables for
    `rotate_pairs` laid out [d_head, pos, 1]: cos, and sin with the sign of each pair's first element flipped."""
    angle = torch.arange(n_ctx)[:, None] * base ** (-torch.arange(0, d_head, 2) / d_head)  # [pos, d_head/2]
    cos = angle.cos().repeat_interleave(2, dim=-1)
    signed_sin = (angle.sin()[..., None] * torch.tensor([-1.0, 1.0])).flatten(-2)
    return cos.T[:, :, None].contiguous(), signed_sin.T[:, :, None].contiguous()


def rotate_pairs(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x [head, d_head, pos, batch]: (a, b) -> (a cos - b sin, b cos + a sin) on each pair, elementwise only."""
    swapped = x.unflatten(1, (-1, 2)).flip(2).flatten(1, 2)  # (a, b) -> (b, a)
    return x * cos + swapped * signed_sin


def batch_last(hook: HookPoint, x: Tensor, *order: int) -> Tensor:
    """Pass a batch-last tensor through `hook` in its public layout (`x.permute(*order)`) and return it
    batch-last again: a permuted view both ways, so a hook sees the usual shapes at no cost."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return hook(x.permute(*order)).permute(*inverse)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ctx: int):
        super().__init__()
        self.cfg = cfg
        inner = cfg.n_heads * cfg.d_head
        self.W_QKV = nn.Linear(cfg.d_model, 3 * inner, bias=False)  # head h = dims d_head*h.. of each third
        self.W_O = nn.Linear(inner, cfg.d_model, bias=False)
        for name in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.positional == "rope":
            for name, table in zip(("rope_cos", "rope_sin"), rope_tables(n_ctx, cfg.d_head, cfg.rope_base)):
                self.register_buffer(name, table, persistent=False)
        causal = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()  # a token sees itself and the past
        self.register_buffer("mask_bias", torch.zeros(n_ctx, n_ctx).masked_fill(~causal, float("-inf")),
                             persistent=False)

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        """x [batch, pos, d_model] -> [batch, queries, d_model]: the attention output at the last `queries`
        positions (None: every position). Keys and values are every position's either way."""
        # Inside, every per-head tensor is laid out batch-last ([head, ..., pos, batch]) and hooks see permuted
        # views in the public layout ([batch, pos, head, d_head], [batch, head, query, key]). With pos 5 and
        # d_head 8, batch-first loops ran scalar over the tiny last axes; batch-last, the compiled kernels run
        # vector-wide over the batch (3x faster attention on CPU). Per-head products are broadcast
        # multiply-and-sum rather than batched matmuls (one tiny GEMM per batch x head), which compile into
        # single loops. The residual stream stays [batch, pos, d_model]: the projections in and out take it as
        # position-major rows ([pos * batch, d_model], d_model contiguous) and let the matmul transpose. Moving
        # d_model to the front instead made the layer norm and residual add around every attention read one
        # layout and write the other, which compiled into scalar loops (a fifth of an evaluation).
        batch, pos, _ = x.shape
        cfg = self.cfg
        n_q = pos if queries is None else queries
        rows = x.transpose(0, 1).reshape(pos * batch, cfg.d_model)
        if n_q == pos:
            q, k, v = (self.W_QKV.weight @ rows.T).view(3, cfg.n_heads, cfg.d_head, pos, batch).unbind(0)
        else:  # queries from the last positions' rows only (position-major: the last n_q * batch rows)
            W_Q, W_KV = self.W_QKV.weight.split([cfg.n_heads * cfg.d_head, 2 * cfg.n_heads * cfg.d_head])
            q = (W_Q @ rows[(pos - n_q) * batch:].T).view(cfg.n_heads, cfg.d_head, n_q, batch)
            k, v = (W_KV @ rows.T).view(2, cfg.n_heads, cfg.d_head, pos, batch).unbind(0)
        q, k, v = (batch_last(hook, t, 3, 2, 0, 1) for hook, t in zip((self.hook_q, self.hook_k, self.hook_v),
                                                                     (q, k, v)))  # [head, d_head, pos or n_q, batch]
        if cfg.positional == "rope":
            cos, sin = self.rope_cos[:, :pos], self.rope_sin[:, :pos]
            q = batch_last(self.hook_rot_q, rotate_pairs(q, cos[:, pos - n_q:], sin[:, pos - n_q:]), 3, 2, 0, 1)
            k = batch_last(self.hook_rot_k, rotate_pairs(k, cos, sin), 3, 2, 0, 1)
        scores = (q[:, :, :, None] * k[:, :, None]).sum(1) * cfg.d_head ** -0.5  # [head, query, key, batch]
        # The causal mask comes after the hook, so no clamp on the scores can let a token see the future.
        scores = batch_last(self.hook_attn_scores, scores, 3, 0, 1, 2) + self.mask_bias[pos - n_q:pos, :pos, None]
        exp = (scores - scores.amax(dim=2, keepdim=True)).exp()  # the library softmax is slow for rows of 5 on CPU
        pattern = batch_last(self.hook_pattern, exp / exp.sum(dim=2, keepdim=True), 3, 0, 1, 2)
        z = (pattern[:, None] * v[:, :, None]).sum(3)  # [head, d_head, query, batch]
        z = batch_last(self.hook_z, z, 3, 2, 0, 1)
        if cfg.use_hook_result:
            W_O = self.W_O.weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
            return self.hook_result(torch.einsum("bqhd,hdm->bqhm", z.permute(3, 2, 0, 1), W_O)).sum(dim=2)
        out = z.reshape(cfg.n_heads * cfg.d_head, n_q * batch).T @ self.W_O.weight.T  # [n_q * batch, d_model]
        return out.view(n_q, batch, cfg.d_model).transpose(0, 1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, n_ctx: int):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg, n_ctx)
        self.hook_attn_out = HookPoint()
        if cfg.d_mlp is not None:
            self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, queries: int | None = None) -> Tensor:
        """[batch, pos, d_model] -> the residual stream after the block at the last `queries` positions (None:
        every position)."""
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), queries))
        resid = (resid if queries is None else resid[:, -queries:]) + attn_out
        if hasattr(self, "mlp"):
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


@dataclass
class TableRows:
    """Exemplar features given as rows of a table: item j of sequence i is table[index[i, j]] (+ noise[i, j])."""

    table: Tensor  # [rows, d_in]
    index: Tensor  # [batch, item]
    noise: Tensor | None = None  # [batch, item, d_in]


class Transformer(nn.Module):
    """Tokens [E(x1), L(y1), E(x2), L(y2), ..., E(xq)] -> logits over the labels at the query position."""

    def __init__(self, cfg: ModelConfig, d_in: int, d_vocab: int, n_ctx: int, seed: int):
        super().__init__()
        self.cfg, self.d_vocab, self.n_ctx = cfg, d_vocab, n_ctx
        self.embed_exemplar = nn.Linear(d_in, cfg.d_model)
        self.embed_label = nn.Parameter(torch.empty(d_vocab, cfg.d_model))  # one-hot(L) -> d_model, no bias
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = nn.Parameter(torch.empty(n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, n_ctx) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.unembed = nn.Linear(cfg.d_model, d_vocab)
        self.hook_logits = HookPoint()
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        self.reset_parameters(torch.Generator().manual_seed(seed))

    def reset_parameters(self, generator: torch.Generator):
        """The paper's init: lecun-normal linears, zero biases, label embedding 0.02 x N(0,1) truncated at +-2."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                lecun_normal_(module.weight, generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embed_label, std=0.02, a=-0.04, b=0.04, generator=generator)
        if self.cfg.positional == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04, generator=generator)

    def forward(self, x: Tensor | TableRows, context_labels: Tensor, query_only: bool = False) -> Tensor:
        """x: [batch, item, d_in] exemplar features (query last), or the same as TableRows; context_labels:
        [batch, item-1] -> logits [batch, d_vocab]. `query_only`: the last layer computes the query position
        alone, all the logits read (an evaluation takes about a fifth less time); its hooks see that one position
        on their position or query axis, so nothing may overwrite them."""
        exemplars = self.embed_exemplars(x)  # [batch, item, d_model]
        labels = self.embed_label[context_labels]  # [batch, item-1, d_model]
        batch, n_context, d_model = labels.shape
        pairs = torch.stack([exemplars[:, :-1], labels], dim=2).reshape(batch, 2 * n_context, d_model)
        resid = self.hook_embed(torch.cat([pairs, exemplars[:, -1:]], dim=1))  # [batch, pos, d_model]
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(self.pos_embed[: resid.shape[1]].expand_as(resid))
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            resid = block(resid, 1 if query_only and layer == last else None)
        return self.hook_logits(self.unembed(self.ln_final(resid[:, -1])))

    def embed_exemplars(self, x: Tensor | TableRows) -> Tensor:
        """[batch, item, d_model]. Table rows are embedded once each and gathered: the embedding is linear, so
        that equals embedding the gathered features (an evaluation's 12,000 items use about 350 rows: its
        largest product becomes a small one)."""
        if isinstance(x, Tensor):
            return self.embed_exemplar(x)
        exemplars = self.embed_exemplar(x.table)[x.index]
        return exemplars if x.noise is None else exemplars + x.noise @ self.embed_exemplar.weight.T

    def hook_names(self) -> list[str]:
        names = list(self.hook_dict)
        if not self.cfg.use_hook_result:  # present as a module, but never called
            names = [n for n in names if not n.endswith("attn.hook_result")]
        if self.cfg.positional != "rope":
            names = [n for n in names if not n.endswith(("hook_rot_q", "hook_rot_k"))]
        return names

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]) -> Iterator[Transformer]:
        """Attach (hook name, fn) pairs for the duration of the block, in order; always removed after."""
        attached = []
        try:
            for name, fn in fwd_hooks:
                if name not in self.hook_dict:
                    raise ValueError(f"no hook {name!r}; hooks are {', '.join(self.hook_names())}")
                self.hook_dict[name].fns.append(fn)
                attached.append((name, fn))
            yield self
        finally:
            for name, fn in attached:
                self.hook_dict[name].fns.remove(fn)
