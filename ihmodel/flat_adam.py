"""One trial's Adam as one kernel over one flat buffer.

The model's parameters become views of one flat tensor and their gradients views of another (backward adds into
them in place), so torch.optim.Adam's fused update runs once over all ~70k numbers. torch.optim.Adam itself spends
most of a step's update in Python (parameter groups, per-parameter state, hooks): at this model size that cost more
than the arithmetic, about a tenth of a training step. The state is saved and loaded in torch.optim.Adam's
state_dict format, so checkpoints are the same whether a trial trains alone or packed (ihmodel.stacked).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ihmodel.config import TrainConfig


class FlatAdam:
    """Adam (no weight decay, no amsgrad) for `model`, whose parameters it re-homes into one flat buffer: create it
    after the model is on its device and before anything holds on to a parameter's storage."""

    def __init__(self, model: nn.Module, train: TrainConfig):
        self.params = list(model.parameters())
        self.train = train
        with torch.no_grad():
            self.flat = torch.cat([p.reshape(-1) for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.steps = torch.zeros((), dtype=torch.float32, device=self.flat.device)  # as torch's fused Adam keeps it
        self.moments, offset = [], 0  # per parameter: views of exp_avg and exp_avg_sq, as torch.optim.Adam has them
        for param in self.params:
            part = slice(offset, offset + param.numel())
            param.data = self.flat[part].view_as(param)
            param.grad = self.grad[part].view_as(param)
            self.moments.append((self.exp_avg[part].view_as(param), self.exp_avg_sq[part].view_as(param)))
            offset = part.stop

    def zero_grad(self):
        self.grad.zero_()

    @torch.no_grad()
    def step(self):
        """torch.optim.Adam(fused=True).step's update: the same kernel, called once (equal to float rounding: an
        element its vector loop handles here may fall in its scalar tail per parameter). A parameter no gradient
        reaches (cut off by a clamp) has a zero gradient and zero moments, so it stays exactly as it is."""
        self.steps += 1
        train = self.train
        torch._fused_adam_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [], [self.steps],
                           amsgrad=False, lr=train.lr, beta1=train.beta1, beta2=train.beta2, weight_decay=0.0,
                           eps=train.adam_eps, maximize=False)

    def grad_norm(self) -> Tensor:
        """Global L2 norm of the last step's gradient."""
        return torch.linalg.vector_norm(self.grad)

    def state_dict(self) -> dict:
        """torch.optim.Adam's state_dict for the model's parameters, as it would be after the same steps."""
        return adam_state_dict(self.params, self.train, fused=True, step=self.steps, moments=self.moments)

    @torch.no_grad()
    def load_state_dict(self, state: dict):
        """A torch.optim.Adam state_dict; a parameter without state (no gradient yet) starts from zeros."""
        load_adam_moments(state, self.moments)
        self.steps.fill_(float(next((entry["step"] for entry in state["state"].values()), 0)))


def adam_state_dict(params: list[Tensor], train: TrainConfig, fused: bool, step: Tensor,
                    moments: list[tuple[Tensor, Tensor]]) -> dict:
    """torch.optim.Adam's state_dict for `params` after `step` updates with these moments (exp_avg, exp_avg_sq per
    parameter); before the first update, torch's has no per-parameter state."""
    state = torch.optim.Adam(params, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.adam_eps,
                             **({"fused": True} if fused else {})).state_dict()
    if step.item() > 0:
        for i, (exp_avg, exp_avg_sq) in enumerate(moments):
            state["state"][i] = {"step": step.clone(), "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
    return state


@torch.no_grad()
def load_adam_moments(state: dict, moments: list[tuple[Tensor, Tensor]]):
    """Copy a torch.optim.Adam state_dict's moments into `moments` (exp_avg, exp_avg_sq per parameter); a
    parameter without state (no gradient yet) gets zeros."""
    for i, targets in enumerate(moments):
        entry = state["state"].get(i)
        for name, target in zip(("exp_avg", "exp_avg_sq"), targets):
            if entry is None:
                target.zero_()
            else:
                target.copy_(entry[name])
