"""One Alrao step (one backward) against the literal Algorithm 1 (one backward per head)."""

import copy

import pytest
import torch
from torch import nn

from alrao_rl import AlraoModel, AlraoSGD
from alrao_rl._reference import reference_alrao_step


def _model(
    task: str, n_out: int, n_heads: int = 4, averaging: str = "predictive", head_step: str = "plain"
) -> AlraoModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
    head = nn.Linear(6, n_out)
    model = AlraoModel(body, head, n_heads=n_heads, task=task, averaging=averaging, head_step=head_step).double()
    with torch.no_grad():  # heads start as copies; make them differ to test the routing
        model.heads.weight.add_(0.3 * torch.randn_like(model.heads.weight))
        model.heads.bias.add_(0.3 * torch.randn_like(model.heads.bias))
    return model


def _reference_parts(model: AlraoModel) -> tuple[nn.Module, list[nn.Linear]]:
    body = copy.deepcopy(model.body)
    heads = []
    for j in range(model.n_heads):
        h = nn.Linear(model.heads.in_features, model.heads.out_features).double()
        with torch.no_grad():
            h.weight.copy_(model.heads.weight[j])
            h.bias.copy_(model.heads.bias[j])
        heads.append(h)
    return body, heads


def _switch_weights(model: AlraoModel, steps: int) -> None:
    for t in range(steps):  # a non-uniform posterior, so the mixture weights matter
        model.switch.update(-torch.arange(model.n_heads, dtype=torch.float64) * (t + 1) / 5)


@pytest.mark.parametrize("head_step", ["plain", "normalized"])
@pytest.mark.parametrize("averaging", ["predictive", "filtered"])
@pytest.mark.parametrize(
    "task,n_out,variance",
    [("classification", 5, 1.0), ("regression", 2, 1.0), ("regression", 1, 1.0), ("regression", 2, 0.3)],
)
def test_one_backward_gives_the_gradients_of_algorithm_1(
    task: str, n_out: int, variance: float, averaging: str, head_step: str
) -> None:
    model = _model(task, n_out, averaging=averaging, head_step=head_step)
    _switch_weights(model, 3)
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=1.0, seed=0)
    state = {p: opt.state[p]["alrao_rate"] for p in model.parameters()}
    body_rates = {name: state[p] for name, p in model.body.named_parameters()}
    head_rates = state[model.heads.weight].flatten()
    ref_body, ref_heads = _reference_parts(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    if task == "classification":
        y = torch.randint(0, n_out, (16,), generator=gen)
    else:
        y = torch.randn(16, n_out, generator=gen, dtype=torch.float64)
    a = model.switch.posterior if averaging == "predictive" else model.switch.filtered_posterior

    ref_ll = reference_alrao_step(ref_body, ref_heads, a, body_rates, head_rates, x, y, task, variance, head_step)
    out = model(x)
    loss, head_ll = model.loss(out, y, variance=variance) if task == "regression" else model.loss(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()

    torch.testing.assert_close(head_ll, ref_ll)
    for (name, p), (_, q) in zip(model.body.named_parameters(), ref_body.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    for j, h in enumerate(ref_heads):
        torch.testing.assert_close(model.heads.weight[j], h.weight)
        torch.testing.assert_close(model.heads.bias[j], h.bias)


def test_gathered_outputs_give_the_gradients_of_algorithm_1() -> None:
    """The DQN case: the likelihood is of the Q-value of the action taken only."""
    model = _model("regression", 3, head_step="plain")
    _switch_weights(model, 2)
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=1.0, seed=0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    actions = torch.randint(0, 3, (16,), generator=gen)
    y = torch.randn(16, generator=gen, dtype=torch.float64)
    # Reference: per-head Gaussian on the selected output, via a literal mask-and-sum.
    ref_body, ref_heads = _reference_parts(model)
    a = model.switch.posterior
    z = ref_body(x)
    onehot = nn.functional.one_hot(actions, 3).double()
    dens = [torch.exp(-0.5 * ((h(z) * onehot).sum(1) - y) ** 2) / (2 * torch.pi) ** 0.5 for h in ref_heads]
    mix = -torch.log(sum(a[j] * d for j, d in enumerate(dens))).mean()
    body_grads = torch.autograd.grad(mix, list(ref_body.parameters()))
    head_grads = [
        torch.autograd.grad(0.5 * (((h(z.detach()) * onehot).sum(1) - y) ** 2).mean(), [h.weight, h.bias])
        for h in ref_heads
    ]

    loss, _ = model.loss(model(x).gather(actions), y)
    opt.zero_grad()
    loss.backward()
    for p, g in zip(model.body.parameters(), body_grads, strict=True):
        torch.testing.assert_close(p.grad, g)
    for j, (gw, gb) in enumerate(head_grads):
        torch.testing.assert_close(model.heads.weight.grad[j], gw)
        torch.testing.assert_close(model.heads.bias.grad[j], gb)


def test_loss_value_is_the_mixture_negative_log_likelihood() -> None:
    model = _model("classification", 4)
    _switch_weights(model, 2)
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    out = model(x)
    loss, _ = model.loss(out, y)
    expected = nn.functional.nll_loss(out.prediction, y)
    torch.testing.assert_close(loss.detach(), expected)
