"""Tiny-model clamp helpers shared by test_clamp.py and test_clamp_sets.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ihmodel.clamp import ClampSet
from ihmodel.config import ClampConfig, InterventionConfig as IV

H, DH, POS = 4, 4, 5
INNER = H * DH
SMALL_MODEL = ["model.d_model=16", "model.n_heads=4", "model.d_head=4"]


def clamps(model, *interventions: IV) -> ClampSet:
    return ClampSet(ClampConfig(name="test", interventions=list(interventions)), model)


def main_pass(clamp_set: ClampSet, batch, names=()) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The main pass's activations at `names` (as the clamps left them) and its logits."""
    seen = {}

    def record(x, *, hook):
        seen[hook.name] = x.detach().clone()

    logits = clamp_set.forward(batch, [(name, record) for name in names])
    return seen, logits.detach()


def plain(model, batch, names=()):
    return main_pass(clamps(model), batch, names)


def every_pass(model, names, run) -> dict[str, list[torch.Tensor]]:
    """Each hook point's final output in every pass (first pass, then main pass), after every hook fn."""
    outputs = {name: [] for name in names}
    handles = [model.hook_dict[name].register_forward_hook(
        lambda module, args, out, name=name: outputs[name].append(out.detach().clone())) for name in names]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def prev_token_table() -> torch.Tensor:
    table = torch.zeros(POS, POS)
    table[0, 0] = 1
    for query in range(1, POS):
        table[query, query - 1] = 1
    return table


def qkv_rows(head: int) -> dict[str, slice]:
    """Rows of a fused W_QKV weight [3*inner, d_model] that make head `head`'s q, k and v."""
    return {part: slice(i * INNER + head * DH, i * INNER + (head + 1) * DH) for i, part in enumerate("qkv")}


def gradients(clamp_set: ClampSet, batch) -> dict[str, torch.Tensor | None]:
    model = clamp_set.model
    model.zero_grad(set_to_none=True)
    F.cross_entropy(clamp_set.forward(batch), batch.query_label).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def is_zero(grad: torch.Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


def is_nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool((grad != 0).any())
