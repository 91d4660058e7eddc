"""K copies of one model's parameters as one tensor, and K Adam optimizers as a handful of tensor ops.

The parameters of K trials live in one leaf `flat` [K, n_params]; each named parameter is a view of it with a
leading trial axis, so a forward over the views (torch.func.vmap over functional_call) gives, in one backward,
every trial's gradient in `flat.grad`. Adam is elementwise, so K optimizers with their own lr, betas and eps are
the same few ops on [K, n_params] with per-trial scalars as [K, 1] columns. Each trial's model and optimizer state
can be read out and loaded in torch's own formats, so a trial's checkpoint resumes alone or in any pack.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ihmodel.config import TrainConfig


class StackedParameters:
    def __init__(self, template: nn.Module, states: list[dict[str, Tensor]], device):
        """`template` gives names and shapes; `states` each trial's initial state_dict."""
        self.template = template
        self.names = [name for name, _ in template.named_parameters()]
        self.shapes = [p.shape for _, p in template.named_parameters()]
        sizes = [p.numel() for _, p in template.named_parameters()]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.flat = torch.zeros(len(states), self.offsets[-1], device=device)
        for k, state in enumerate(states):
            self.load(k, state)
        self.flat.requires_grad_(True)

    def views(self, flat: Tensor, prefix: str = "") -> dict[str, Tensor]:
        """name -> [K, *shape] views of `flat` (call inside the forward, so gradients reach `flat`)."""
        return {prefix + name: flat[:, start:stop].unflatten(1, shape)
                for name, shape, start, stop in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}

    def columns(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    @torch.no_grad()
    def load(self, k: int, state: dict[str, Tensor]):
        for name, shape in zip(self.names, self.shapes):
            self.flat[k, self.columns(name)] = state[name].reshape(-1).to(self.flat.device)

    @torch.no_grad()
    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Trial k's model state_dict, as the template's `state_dict()` would give it."""
        state = {name: value.clone() for name, value in self.template.state_dict().items()}
        for name, shape in zip(self.names, self.shapes):
            state[name] = self.flat[k, self.columns(name)].reshape(shape).clone()
        return state


class StackedAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) for every trial of a StackedParameters at once."""

    def __init__(self, params: StackedParameters, trains: list[TrainConfig], fused: bool):
        self.params = params
        flat = params.flat
        self.exp_avg = torch.zeros_like(flat, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(flat, requires_grad=False)
        self.steps = 0  # the trials of a pack step together

        def column(values: list[float]) -> Tensor:  # [K, 1], float64 like the Python floats torch's Adam uses
            return torch.tensor(values, dtype=torch.float64, device=flat.device)[:, None]

        self.lr = column([t.lr for t in trains])
        self.beta1 = column([t.beta1 for t in trains])
        self.beta2 = column([t.beta2 for t in trains])
        self.eps = column([t.adam_eps for t in trains]).float()
        self.trains, self.fused = trains, fused

    @torch.no_grad()
    def step(self, grad: Tensor) -> Tensor:
        """One update of every trial from `grad` [K, n_params]; returns each trial's gradient norm [K]."""
        self.steps += 1
        step_size = (self.lr / (1 - self.beta1 ** self.steps)).float()
        bias_correction2_sqrt = ((1 - self.beta2 ** self.steps) ** 0.5).float()
        return self.update(self.params.flat, grad, self.exp_avg, self.exp_avg_sq, self.beta1.float(),
                           self.beta2.float(), step_size, bias_correction2_sqrt, self.eps)

    @staticmethod
    @torch.no_grad()
    def update(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias_correction2_sqrt, eps) -> Tensor:
        """torch.optim.Adam's arithmetic, with [K, 1] settings; compiled, it is one pass over the parameters."""
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.sub_(exp_avg / denom * step_size)
        return torch.linalg.vector_norm(grad, dim=1)

    def state_dict(self, k: int) -> dict:
        """Trial k's optimizer state in torch.optim.Adam's state_dict format (what a trial alone would save)."""
        template = torch.optim.Adam(self.params.template.parameters(), lr=self.trains[k].lr,
                                    betas=(self.trains[k].beta1, self.trains[k].beta2), eps=self.trains[k].adam_eps,
                                    **({"fused": True} if self.fused else {}))
        state = template.state_dict()
        step = torch.tensor(float(self.steps), dtype=torch.float32,
                            device=self.exp_avg.device if self.fused else "cpu")
        for i, (name, shape) in enumerate(zip(self.params.names, self.params.shapes)):
            columns = self.params.columns(name)
            state["state"][i] = {"step": step.clone(), "exp_avg": self.exp_avg[k, columns].reshape(shape).clone(),
                                 "exp_avg_sq": self.exp_avg_sq[k, columns].reshape(shape).clone()}
        return state

    @torch.no_grad()
    def load_state_dict(self, k: int, state: dict, steps: int):
        """Trial k's torch.optim.Adam state; a parameter without state (no gradient yet) starts from zeros."""
        self.steps = steps
        for i, name in enumerate(self.params.names):
            columns = self.params.columns(name)
            entry = state["state"].get(i)
            for moment, target in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                target[k, columns] = 0.0 if entry is None else entry[moment].reshape(-1).to(target.device)
