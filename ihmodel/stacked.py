"""K copies of one model's parameters, stacked, and K Adam optimizers as a handful of tensor ops.

Each named parameter of K trials is one leaf tensor [K, *shape], so a forward over them (torch.func.vmap over
functional_call) gives, in one backward, every trial's gradient. (One flat [K, n_params] leaf sliced into views
would be simpler to update, but each slice's backward fills a zero tensor of the whole flat size: that was a
quarter of a packed step.) Adam is elementwise, so K optimizers with their own lr, betas and eps are the same ops
on the stacked tensors with per-trial scalars broadcast along the trial axis. Each trial's model and optimizer
state can be read out and loaded in torch's own formats, so a trial's checkpoint resumes alone or in any pack.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ihmodel.config import TrainConfig
from ihmodel.flat_adam import adam_state_dict, load_adam_moments


class StackedParameters:
    def __init__(self, template: nn.Module, states: list[dict[str, Tensor]], device):
        """`template` gives names and shapes; `states` each trial's initial state_dict."""
        self.template = template
        self.names = [name for name, _ in template.named_parameters()]
        self.tensors = {name: torch.stack([state[name] for state in states]).to(device).requires_grad_(True)
                        for name in self.names}

    def by_name(self, prefix: str = "") -> dict[str, Tensor]:
        """name -> [K, *shape] leaf, the names prefixed for functional_call."""
        return {prefix + name: tensor for name, tensor in self.tensors.items()}

    @torch.no_grad()
    def load(self, k: int, state: dict[str, Tensor]):
        for name, tensor in self.tensors.items():
            tensor[k] = state[name].to(tensor.device)

    @torch.no_grad()
    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Trial k's model state_dict, as the template's `state_dict()` would give it."""
        state = {name: value.clone() for name, value in self.template.state_dict().items()}
        for name, tensor in self.tensors.items():
            state[name] = tensor[k].clone()
        return state


class StackedAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) for every trial of a StackedParameters at once."""

    def __init__(self, params: StackedParameters, trains: list[TrainConfig], fused: bool):
        self.params = params
        tensors = list(params.tensors.values())
        self.exp_avg = [torch.zeros_like(t, requires_grad=False) for t in tensors]
        self.exp_avg_sq = [torch.zeros_like(t, requires_grad=False) for t in tensors]
        self.steps = 0  # the trials of a pack step together
        device = tensors[0].device

        def column(values: list[float]) -> Tensor:  # [K], float64 like the Python floats torch's Adam uses
            return torch.tensor(values, dtype=torch.float64, device=device)

        self.lr = column([t.lr for t in trains])
        self.beta1 = column([t.beta1 for t in trains])
        self.beta2 = column([t.beta2 for t in trains])
        self.eps = column([t.adam_eps for t in trains]).float()
        self.trains, self.fused = trains, fused

    @torch.no_grad()
    def step(self) -> Tensor:
        """One update of every trial from the parameters' gradients; returns each trial's gradient norm [K]
        (a parameter without a gradient, cut off by every trial's clamps, is left as it is)."""
        self.steps += 1
        step_size = (self.lr / (1 - self.beta1 ** self.steps)).float()
        bias_correction2_sqrt = ((1 - self.beta2 ** self.steps) ** 0.5).float()
        tensors = list(self.params.tensors.values())
        chosen = [i for i, p in enumerate(tensors) if p.grad is not None]
        return self.update([tensors[i] for i in chosen], [tensors[i].grad for i in chosen],
                           [self.exp_avg[i] for i in chosen], [self.exp_avg_sq[i] for i in chosen],
                           self.beta1.float(), self.beta2.float(), step_size, bias_correction2_sqrt, self.eps)

    @staticmethod
    @torch.no_grad()
    def update(params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, step_size, bias_correction2_sqrt, eps) -> Tensor:
        """torch.optim.Adam's arithmetic with [K] settings; compiled, one pass over each parameter."""
        squared_norm = torch.zeros_like(beta1)
        for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
            shape = (-1,) + (1,) * (param.ndim - 1)  # per-trial settings broadcast along the trial axis
            exp_avg.lerp_(grad, (1 - beta1).view(shape))
            exp_avg_sq.mul_(beta2.view(shape)).add_(grad * grad * (1 - beta2).view(shape))
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(eps.view(shape))
            param.sub_(exp_avg / denom * step_size.view(shape))
            squared_norm = squared_norm + grad.square().flatten(1).sum(1)
        return squared_norm.sqrt()

    def state_dict(self, k: int) -> dict:
        """Trial k's optimizer state in torch.optim.Adam's state_dict format (what a trial alone would save)."""
        step = torch.tensor(float(self.steps), dtype=torch.float32,
                            device=self.exp_avg[0].device if self.fused else "cpu")
        return adam_state_dict(list(self.params.template.parameters()), self.trains[k], self.fused, step,
                               self.moments(k))

    @torch.no_grad()
    def load_state_dict(self, k: int, state: dict, steps: int):
        """Trial k's torch.optim.Adam state; a parameter without state (no gradient yet) starts from zeros."""
        self.steps = steps
        load_adam_moments(state, self.moments(k))

    def moments(self, k: int) -> list[tuple[Tensor, Tensor]]:
        """Trial k's exp_avg and exp_avg_sq per parameter (views)."""
        return [(exp_avg[k], exp_avg_sq[k]) for exp_avg, exp_avg_sq in zip(self.exp_avg, self.exp_avg_sq)]
