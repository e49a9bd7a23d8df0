"""The fused step (AlraoStep) against the literal Algorithm 1 and the model.loss + backward path."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD, AlraoStep, RunningVariance, register_unit_rule
from alrao_rl._reference import reference_alrao_step


def _model(task: str, n_out: int, head_step: str, averaging: str = "filtered", n_heads: int = 4) -> AlraoModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
    model = AlraoModel(body, nn.Linear(6, n_out), n_heads, task, averaging=averaging, head_step=head_step).double()
    with torch.no_grad():  # heads start as copies; make them differ to test the routing
        model.heads.weight.add_(0.3 * torch.randn_like(model.heads.weight))
        model.heads.bias.add_(0.3 * torch.randn_like(model.heads.bias))
    return model


def _batches(task: str, n_out: int, index: bool, steps: int, seed: int = 1) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        if task == "classification":
            y, i = torch.randint(0, n_out, (16,), generator=gen), None
        elif index:
            y = 3 * torch.randn(16, generator=gen, dtype=torch.float64)
            i = torch.randint(0, n_out, (16,), generator=gen)
        else:
            y, i = 3 * torch.randn(16, n_out, generator=gen, dtype=torch.float64), None
        out.append((x, y, i))
    return out


def _user_step(model: AlraoModel, opt: torch.optim.Optimizer, x, y, index, variance) -> None:
    out = model(x)
    if index is not None:
        out = out.gather(index)
    if isinstance(variance, RunningVariance) and model.task == "regression":
        variance = variance.update(float(nn.functional.mse_loss(out.prediction, y)))
    loss, head_ll = model.loss(out, y, variance=variance) if model.task == "regression" else model.loss(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.switch.update(head_ll)


CASES = [
    ("classification", 5, False),
    ("regression", 2, False),
    ("regression", 3, True),
]
OPTIMIZERS = [
    (AlraoSGD, {}),
    (AlraoSGD, {"momentum": 0.9, "weight_decay": 1e-3}),
    (AlraoAdam, {}),
]


@pytest.mark.parametrize("opt_cls,opt_kwargs", OPTIMIZERS)
@pytest.mark.parametrize("head_step", ["plain", "normalized"])
@pytest.mark.parametrize("task,n_out,index", CASES)
def test_fused_step_equals_loss_backward_step_and_switch_update(
    task: str, n_out: int, index: bool, head_step: str, opt_cls: type, opt_kwargs: dict
) -> None:
    fused_model = _model(task, n_out, head_step)
    user_model = copy.deepcopy(fused_model)
    fused_opt = opt_cls(fused_model, eta_min=1e-3, eta_max=1.0, seed=0, lr=0.7, **opt_kwargs)
    user_opt = opt_cls(user_model, eta_min=1e-3, eta_max=1.0, seed=0, lr=0.7, **opt_kwargs)
    step = AlraoStep(fused_model, fused_opt)
    fused_var, user_var = RunningVariance(), RunningVariance()
    for x, y, i in _batches(task, n_out, index, steps=6):
        result = step(x, y, index=i, variance=fused_var)
        _user_step(user_model, user_opt, x, y, i, user_var)
        assert result.skipped is False and math.isfinite(float(result.loss))
    for (name, p), q in zip(fused_model.state_dict().items(), user_model.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)
    if task == "regression":
        assert fused_var.value == pytest.approx(user_var.value, rel=1e-12)


@pytest.mark.parametrize("head_step", ["plain", "normalized"])
@pytest.mark.parametrize("task,n_out", [("classification", 5), ("regression", 2)])
def test_fused_steps_follow_the_literal_algorithm_1(task: str, n_out: int, head_step: str) -> None:
    """Several fused steps (switch updates between them) against the reference's one backward per head."""
    model = _model(task, n_out, head_step, averaging="predictive")
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=1.0, seed=0)
    state = {p: opt.state[p]["alrao_rate"] for p in model.parameters()}
    body_rates = {name: state[p] for name, p in model.body.named_parameters()}
    head_rates = state[model.heads.weight].flatten()
    ref_body = copy.deepcopy(model.body)
    ref_heads = []
    for j in range(model.n_heads):
        h = nn.Linear(6, n_out).double()
        with torch.no_grad():
            h.weight.copy_(model.heads.weight[j])
            h.bias.copy_(model.heads.bias[j])
        ref_heads.append(h)
    ref_switch = copy.deepcopy(model.switch)
    step = AlraoStep(model, opt)
    for x, y, _ in _batches(task, n_out, False, steps=4):
        ref_ll = reference_alrao_step(ref_body, ref_heads, ref_switch.posterior, body_rates, head_rates, x, y, task,
                                      0.5, head_step)
        ref_switch.update(ref_ll)
        result = step(x, y, variance=0.5)
        np.testing.assert_allclose(result.head_ll, ref_ll.numpy(), rtol=1e-10)
    for (name, p), (_, q) in zip(model.body.named_parameters(), ref_body.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    for j, h in enumerate(ref_heads):
        torch.testing.assert_close(model.heads.weight[j], h.weight)
        torch.testing.assert_close(model.heads.bias[j], h.bias)
    torch.testing.assert_close(model.switch.log_weights, ref_switch.log_weights)


def test_normalized_heads_stay_stable_when_the_features_grow() -> None:
    """A head's normalized step moves its outputs by at most eta_j times the residual, whatever the
    scale of z: heads with eta_j < 2 fit a linear target on features 1000x larger; plain steps on
    the same features blow every head up."""
    losses = {}
    for head_step in ("normalized", "plain"):
        torch.manual_seed(0)
        model = AlraoModel(nn.Identity(), nn.Linear(8, 1), 3, "regression", head_step=head_step)
        step = AlraoStep(model, AlraoSGD(model, eta_min=0.1, eta_max=1.5, seed=0))
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(8, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # plain: every head diverges
            for _ in range(200):
                x = 1000 * torch.randn(32, 8, generator=gen)
                losses[head_step] = step(x, (x @ w).unsqueeze(1), variance=1.0).loss
    assert losses["normalized"] < 0.5 * math.log(2 * math.pi) + 0.01  # the Gaussian NLL of a perfect fit
    assert not math.isfinite(losses["plain"])


def test_members_are_independent_runs() -> None:
    """A model with members trains each member exactly as its own single-member run."""
    singles, opts = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        m = AlraoModel(nn.Sequential(nn.Linear(3, 5), nn.ReLU()), nn.Linear(5, 2), 4, "regression")
        singles.append(m)
        opts.append(AlraoSGD(m, eta_min=1e-3, eta_max=1.0, seed=seed))
    population = AlraoModel(_StackedLinearReLU(3, 5, 3), nn.Linear(5, 2), 4, "regression", members=3)
    pop_opt = AlraoSGD(population, eta_min=1e-3, eta_max=1.0, seed=0)
    with torch.no_grad():
        for k, m in enumerate(singles):
            population.body.weight[k] = m.body[0].weight
            population.body.bias[k] = m.body[0].bias
            population.heads.weight[k] = m.heads.weight
            population.heads.bias[k] = m.heads.bias
            pop_opt.state[population.body.weight]["alrao_rate"][k] = opts[k].state[m.body[0].weight]["alrao_rate"]
            pop_opt.state[population.body.bias]["alrao_rate"][k] = opts[k].state[m.body[0].bias]["alrao_rate"]
    pop_step = AlraoStep(population, pop_opt)
    steps = [AlraoStep(m, o) for m, o in zip(singles, opts, strict=True)]
    variances = [RunningVariance() for _ in singles]
    pop_var = RunningVariance(members=3)
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        x = torch.randn(3, 16, 3, generator=gen)
        y = torch.randn(3, 16, generator=gen)
        i = torch.randint(0, 2, (3, 16), generator=gen)
        pop_step(x, y, index=i, variance=pop_var)
        for k, (s, v) in enumerate(zip(steps, variances, strict=True)):
            s(x[k], y[k], index=i[k], variance=v)
    for k, m in enumerate(singles):
        torch.testing.assert_close(population.body.weight[k], m.body[0].weight)
        torch.testing.assert_close(population.heads.weight[k], m.heads.weight)
        torch.testing.assert_close(population.heads.bias[k], m.heads.bias)
        torch.testing.assert_close(population.switch.log_weights[k], m.switch.log_weights)
        assert pop_var.values[k] == pytest.approx(variances[k].value)


class _StackedLinearReLU(nn.Module):
    """``relu(x W_k^T + b_k)`` for each of ``P`` members (the test's population body)."""

    def __init__(self, n_in: int, n_out: int, members: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(members, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2)))


register_unit_rule(  # member k's unit i: rates [P, out, 1] (weight) and [P, out] (bias)
    _StackedLinearReLU,
    lambda m, sample: {"weight": sample(m.bias.numel()).view(*m.bias.shape, 1),
                       "bias": sample(m.bias.numel()).view(m.bias.shape)},
)


def test_one_body_unit_that_overflows_is_its_fault_not_the_heads() -> None:
    """Issue 13, bug 3: a finite 3e38 weight makes one feature inf; that feature is dropped for
    good, no head is marked dead, and every head keeps its weights and keeps learning."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    model = AlraoModel(body, nn.Linear(64, 5), 10, "regression")
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=1e-1, seed=0)
    step = AlraoStep(model, opt)
    gen = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(64, 3, generator=gen), torch.randn(64, generator=gen),  # noqa: E731
                     torch.randint(0, 5, (64,), generator=gen))
    for _ in range(3):
        x, y, i = batch()
        step(x, y, index=i)
    with torch.no_grad():
        body[2].weight[7] = 3e38
    x, y, i = batch()
    before = model.heads.weight.clone()
    result = step(x, y, index=i)
    assert not result.skipped and not model.heads.dead.any()
    assert model.heads.dead_features.nonzero().flatten().tolist() == [7]
    assert torch.isfinite(model.heads.weight).all() and not torch.equal(model.heads.weight, before)
    assert (opt.state[model.heads.weight]["alrao_rate"] > 0).all()
    assert torch.isfinite(model.predict(x)).all()


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("opt_cls", [AlraoSGD, AlraoAdam])
def test_a_nan_in_the_batch_skips_the_step_and_freezes_nothing(task: str, opt_cls: type) -> None:
    """Issue 13, bug 4: bad data is not divergence."""
    torch.manual_seed(0)
    model = AlraoModel(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), nn.Linear(16, 2), task=task)
    opt = opt_cls(model)
    step = AlraoStep(model, opt)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 4)
    x[0, 0] = math.nan
    y = torch.zeros(8, 2) if task == "regression" else torch.zeros(8, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="non-finite inputs"):
        result = step(x, y)
    assert result.skipped is True
    assert opt.frozen_units() == 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name, equal_nan=True)
    x[0, 0] = 0.0
    assert not step(x, y).skipped and opt.frozen_units() == 0


def test_the_body_gradients_are_autograd_grads() -> None:
    """The fused step calls the autograd engine directly: the gradients are torch.autograd.grad's."""
    from alrao_rl.step import _body_gradients

    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh())
    unused = nn.Parameter(torch.ones(2))
    params = [*body.parameters(), unused]
    x, g = torch.randn(7, 3), torch.randn(7, 5)
    fast = _body_gradients(body(x), params, g)
    slow = torch.autograd.grad(body(x), params, g, allow_unused=True)
    assert fast[-1] is None and slow[-1] is None
    for a, b in zip(fast[:-1], slow[:-1], strict=True):
        assert torch.equal(a, b)


def test_a_batch_whose_member_has_every_head_dead_trains_nothing() -> None:
    """Dead heads are zeroed, so they output finite zeros; with every head dead the batch trains nothing."""
    model = _model("regression", 2, "plain")
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=1.0, seed=0)
    step = AlraoStep(model, opt)
    model.heads.mark_dead(torch.ones(model.n_heads, dtype=torch.bool))
    with torch.no_grad():
        opt.guard([])  # zero and freeze them
    body = copy.deepcopy(model.body.state_dict())
    x, y, _ = _batches("regression", 2, False, steps=1)[0]
    with pytest.warns(RuntimeWarning, match="every head is dead"):
        result = step(x, y)
    assert result.skipped and math.isnan(result.loss) and np.isneginf(result.head_ll).all()
    for name, value in model.body.state_dict().items():
        assert torch.equal(value, body[name]), name


@pytest.mark.parametrize("index", [False, True])
def test_a_switch_variance_changes_what_the_switch_sees_and_nothing_the_loss_trains(index: bool) -> None:
    """``switch_variance``: the loss (gradients, responsibilities) at ``variance``, the switch fed each head's
    mean Gaussian log-likelihood at ``switch_variance`` (here a running one, started by the step)."""
    a = _model("regression", 3, "plain")
    b = copy.deepcopy(a)
    step_a, step_b = AlraoStep(a, AlraoSGD(a, seed=0)), AlraoStep(b, AlraoSGD(b, seed=0))
    running = RunningVariance()
    x, y, i = _batches("regression", 3, index, steps=1)[0]
    with torch.no_grad():
        out = a(x).gather(i) if index else a(x)
    var = float(((out.prediction - y) ** 2).mean())  # the running variance starts at the first minibatch's
    result = step_a(x, y, index=i, variance=1.0, switch_variance=running)
    step_b(x, y, index=i, variance=1.0)
    assert running.value == pytest.approx(var, rel=1e-12)
    sq = (out.heads - y) ** 2 if index else ((out.heads - y) ** 2).sum(dim=-1)  # [N, B]
    dim = 1 if index else 3
    ll = (-0.5 * sq / var).mean(dim=1) - 0.5 * dim * math.log(2 * math.pi * var)
    np.testing.assert_allclose(result.head_ll, ll.numpy(), rtol=1e-10)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):  # the loss trained both alike
        assert torch.equal(p, q)
    assert not torch.equal(a.switch.log_weights, b.switch.log_weights)  # the switches saw different likelihoods
