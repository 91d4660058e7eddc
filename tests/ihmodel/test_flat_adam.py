"""FlatAdam is torch.optim.Adam(fused=True) as one kernel over a flat buffer: the same updates (to float rounding:
an element the kernel's vector loop handles in one layout can fall in its scalar tail in the other) and the same
state_dict format."""
import copy

import torch
from torch import nn

from ihmodel.config import TrainConfig
from ihmodel.flat_adam import FlatAdam

TRAIN = TrainConfig(lr=1e-2, beta1=0.8, beta2=0.99, adam_eps=1e-6)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3)
        self.unused = nn.Parameter(torch.randn(4, generator=generator))  # no gradient ever reaches it
        for p in (self.first.weight, self.first.bias, self.second.weight, self.second.bias):
            nn.init.normal_(p, generator=generator)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
    return model(x).square().mean()


def torch_adam(model: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=TRAIN.lr, betas=(TRAIN.beta1, TRAIN.beta2), eps=TRAIN.adam_eps,
                            fused=True)


def flat_step(model: nn.Module, adam: FlatAdam, step: int):
    adam.zero_grad()
    loss_of(model, step).backward()
    adam.step()


def torch_step(model: nn.Module, adam: torch.optim.Adam, step: int):
    adam.zero_grad(set_to_none=True)
    loss_of(model, step).backward()
    adam.step()


def test_updates_equal_torch_fused_adam():
    flat_model, reference = Net(), Net()
    flat, adam = FlatAdam(flat_model, TRAIN), torch_adam(reference)
    for step in range(25):
        flat_step(flat_model, flat, step)
        torch_step(reference, adam, step)
    for (name, mine), theirs in zip(flat_model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(flat_model.unused, Net().unused)  # untouched: zero gradient, zero moments
    state, reference_state = flat.state_dict(), adam.state_dict()
    assert state["param_groups"] == reference_state["param_groups"]
    for i, entry in reference_state["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state["state"][i][key], entry[key], rtol=1e-6, atol=1e-9, msg=(i, key))


def test_grad_norm_is_the_global_norm_of_the_gradients():
    model = Net()
    flat = FlatAdam(model, TRAIN)
    flat.zero_grad()
    loss_of(model, 0).backward()
    grads = [p.grad for p in model.parameters()]
    torch.testing.assert_close(flat.grad_norm(), torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))


def test_state_dict_round_trips_through_torch_adam_both_ways():
    """A checkpoint written by either optimizer resumes in the other with the same updates."""
    model = Net()
    flat = FlatAdam(model, TRAIN)
    for step in range(5):
        flat_step(model, flat, step)

    resumed = copy.deepcopy(model)
    resumed_adam = torch_adam(resumed)
    resumed_adam.load_state_dict(flat.state_dict())
    again = Net()
    again.load_state_dict(model.state_dict())
    again_flat = FlatAdam(again, TRAIN)
    again_flat.load_state_dict(resumed_adam.state_dict())
    for step in range(5, 10):
        flat_step(model, flat, step)
        torch_step(resumed, resumed_adam, step)
        flat_step(again, again_flat, step)
    for mine, theirs, back in zip(model.parameters(), resumed.parameters(), again.parameters()):
        torch.testing.assert_close(theirs, mine, rtol=1e-6, atol=1e-7)
        assert torch.equal(back, mine)  # FlatAdam resumed from torch's format: the same kernel on the same layout


def test_a_fresh_state_dict_is_torch_adams_before_any_step():
    model = Net()
    assert FlatAdam(model, TRAIN).state_dict() == torch_adam(copy.deepcopy(model)).state_dict()
