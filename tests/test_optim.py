"""AlraoSGD / AlraoAdam: torch semantics per feature, state_dict, multiplier, runaway guard."""

import copy
import math

import pytest
import torch
from torch import nn

from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD
from alrao_rl._reference import reference_adam_update, reference_sgd_update

SGD_CONFIGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.5, "weight_decay": 0.01},
    {"weight_decay": 0.1},
]
ADAM_CONFIGS = [{}, {"betas": (0.8, 0.99)}, {"weight_decay": 0.01}, {"eps": 1e-3}]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LSTM(8, 3), nn.Identity())


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 8)
        self.conv = nn.Conv1d(1, 3, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(24, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.fc(x)))
        return self.out(self.conv(h.unsqueeze(1)).flatten(1))


def _loss(net: nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=gen)
    return (net(x) - torch.randn(16, 2, generator=gen)).square().mean()


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        opt.zero_grad()
        _loss(net, t).backward()
        opt.step()


@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_alrao_sgd_with_equal_ends_matches_torch_sgd(config: dict) -> None:
    a, b = _Net(), _Net()
    _train(a, AlraoSGD(a, eta_min=0.05, eta_max=0.05, seed=0, **config), range(20))
    _train(b, torch.optim.SGD(b.parameters(), lr=0.05, **config), range(20))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_alrao_adam_with_equal_ends_matches_torch_adam(config: dict) -> None:
    a, b = _Net(), _Net()
    _train(a, AlraoAdam(a, eta_min=1e-2, eta_max=1e-2, seed=0, **config), range(20))
    _train(b, torch.optim.Adam(b.parameters(), lr=1e-2, **config), range(20))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_alrao_model_with_one_head_and_equal_ends_is_plain_sgd() -> None:
    torch.manual_seed(0)
    body, head = nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 3)
    plain = nn.Sequential(copy.deepcopy(body), copy.deepcopy(head))
    model = AlraoModel(body, head, n_heads=1, task="classification")
    opt_a = AlraoSGD(model, eta_min=0.1, eta_max=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    for t in range(10):
        gen = torch.Generator().manual_seed(t)
        x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        loss, ll = model.loss(model(x), y)
        opt_a.zero_grad()
        loss.backward()
        opt_a.step()
        model.switch.update(ll)
        opt_b.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        opt_b.step()
    torch.testing.assert_close(model.heads.weight[0], plain[1].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.body[0].weight, plain[0][0].weight, rtol=1e-5, atol=1e-6)


def _reference_run(net: nn.Module, opt: torch.optim.Optimizer, kind: str, config: dict, steps: int) -> list:
    """Run the literal per-element reference from the optimizer's own rates."""
    params = list(net.parameters())
    rates = [opt.state[p]["alrao_rate"].clone() for p in params]
    ref = [p.detach().clone() for p in params]
    bufs: list = [None] * len(params)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    lr = opt.param_groups[0]["lr"]
    for t in range(steps):
        with torch.no_grad():
            for p, r in zip(params, ref, strict=True):
                p.copy_(r)
        net.zero_grad()
        _loss(net, t).backward()
        for i, p in enumerate(params):
            if kind == "sgd":
                ref[i], bufs[i] = reference_sgd_update(
                    ref[i], p.grad, rates[i], bufs[i], lr=lr, momentum=config.get("momentum", 0.0),
                    dampening=config.get("dampening", 0.0), weight_decay=config.get("weight_decay", 0.0),
                    nesterov=config.get("nesterov", False),
                )
            else:
                ref[i], m[i], v[i] = reference_adam_update(
                    ref[i], p.grad, rates[i], m[i], v[i], t + 1, lr=lr, betas=config.get("betas", (0.9, 0.999)),
                    eps=config.get("eps", 1e-8), weight_decay=config.get("weight_decay", 0.0),
                )
    return ref


@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_alrao_sgd_matches_the_per_feature_reference(config: dict) -> None:
    net, ref_net = _Net(), _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.3, seed=3, lr=0.7, **config)
    ref_opt = AlraoSGD(ref_net, eta_min=1e-3, eta_max=0.3, seed=3, lr=0.7, **config)
    expected = _reference_run(ref_net, ref_opt, "sgd", config, 8)
    _train(net, opt, range(8))
    for p, q in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_alrao_adam_matches_the_per_feature_reference(config: dict) -> None:
    net, ref_net = _Net(), _Net()
    opt = AlraoAdam(net, eta_min=1e-4, eta_max=0.1, seed=3, lr=0.7, **config)
    ref_opt = AlraoAdam(ref_net, eta_min=1e-4, eta_max=0.1, seed=3, lr=0.7, **config)
    expected = _reference_run(ref_net, ref_opt, "adam", config, 8)
    _train(net, opt, range(8))
    for p, q in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_rates_live_in_the_optimizer_state() -> None:
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-5, eta_max=10.0, seed=0)
    assert opt.state[net.fc.weight]["alrao_rate"].shape == (8, 1)
    assert opt.state[net.conv.weight]["alrao_rate"].shape == (3, 1, 1)
    assert all("alrao_rate" in s for s in opt.state_dict()["state"].values())


@pytest.mark.parametrize("cls,config", [(AlraoSGD, {"momentum": 0.9}), (AlraoAdam, {})])
def test_state_dict_round_trip_continues_bit_identically(cls: type, config: dict) -> None:
    a = _Net()
    opt_a = cls(a, eta_min=1e-4, eta_max=1.0, seed=0, **config)
    _train(a, opt_a, range(10))
    b = copy.deepcopy(a)
    opt_b = cls(b, eta_min=1e-4, eta_max=1.0, seed=99, **config)  # other rates until loaded
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no shared tensors
    _train(a, opt_a, range(10, 20))
    _train(b, opt_b, range(10, 20))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


def test_lr_is_a_multiplier_on_every_rate_and_schedulers_work() -> None:
    a, b = _Net(), _Net()
    opt_a = AlraoSGD(a, eta_min=1e-3, eta_max=1.0, seed=0, lr=0.5)
    opt_b = AlraoSGD(b, eta_min=1e-3, eta_max=1.0, seed=0)
    for s in opt_b.state.values():
        s["alrao_rate"].mul_(0.5)
    _train(a, opt_a, range(3))
    _train(b, opt_b, range(3))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.0)
    opt_a.zero_grad()
    opt_a.step()  # no grads: a no-op, so the scheduler sees the usual order
    sched.step()
    before = [p.clone() for p in a.parameters()]
    _train(a, opt_a, range(3, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before, strict=True))


def test_plain_module_without_heads_is_accepted() -> None:
    net = _net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1)
    assert len(opt.param_groups[0]["params"]) == len(list(net.parameters()))


def test_nonfinite_unit_is_zeroed_and_frozen_without_touching_the_others() -> None:
    net, twin = _Net(), _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, momentum=0.9)
    opt_twin = AlraoSGD(twin, eta_min=1e-3, eta_max=0.1, momentum=0.9)
    _train(net, opt, range(2))
    _train(twin, opt_twin, range(2))
    for model in (net, twin):  # the same gradients for both, so only the NaN differs
        model.zero_grad()
        _loss(net, 5).backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    with torch.no_grad():
        net.fc.weight[3, 1] = math.nan
    opt.step()
    opt_twin.step()
    rate = opt.state[net.fc.weight]["alrao_rate"]
    assert torch.all(net.fc.weight[3] == 0) and rate[3] == 0 and rate.count_nonzero() == 7
    assert torch.all(opt.state[net.fc.weight]["momentum_buffer"][3] == 0)
    keep = torch.arange(8) != 3
    assert torch.equal(net.fc.weight[keep], twin.fc.weight[keep])
    assert opt.frozen_units() == 1
    _train(net, opt, range(6, 10))
    assert torch.all(net.fc.weight[3] == 0) and torch.isfinite(net.fc.weight).all()


def test_max_weight_freezes_runaway_units() -> None:
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
    with torch.no_grad():
        net.out.weight[1, 0] = 50.0
    _train(net, opt, range(1))
    assert torch.all(net.out.weight[1] == 0) and net.out.bias[1] != 0
    assert opt.state[net.out.weight]["alrao_rate"][1] == 0


def test_max_weight_does_not_bound_the_output_heads() -> None:
    """Heads must reach the scale of the targets (e.g. Q-values of -600); only non-finite ones freeze."""
    torch.manual_seed(0)
    model = AlraoModel(nn.Sequential(nn.Linear(2, 4), nn.ReLU()), nn.Linear(4, 1), n_heads=3, task="regression")
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
    with torch.no_grad():
        model.heads.bias.fill_(-600.0)
    loss, _ = model.loss(model(torch.randn(8, 2)), torch.full((8, 1), -600.0))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.all(model.heads.bias.abs() > 500) and opt.frozen_units() == 0
    assert [g["max_weight"] for g in opt.param_groups] == [5.0, None]


@pytest.mark.parametrize("max_weight", [None, 5.0])
def test_an_infinite_weight_is_frozen_with_or_without_a_bound(max_weight: float | None) -> None:
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, max_weight=max_weight)
    with torch.no_grad():
        net.fc.weight[2, 1] = math.inf  # its 2-norm is inf, not NaN: the guard must not take it for large
    _train(net, opt, range(1))
    assert torch.all(net.fc.weight[2] == 0) and opt.state[net.fc.weight]["alrao_rate"][2] == 0
    assert opt.frozen_units() == 1


def _regression_model(n_heads: int = 4) -> AlraoModel:
    torch.manual_seed(0)
    return AlraoModel(nn.Sequential(nn.Linear(2, 6), nn.ReLU()), nn.Linear(6, 3), n_heads=n_heads, task="regression")


def _alrao_step(model: AlraoModel, opt: torch.optim.Optimizer, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    loss, head_ll = model.loss(model(torch.randn(8, 2, generator=gen)), torch.randn(8, 3, generator=gen))
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.switch.update(head_ll)
    return head_ll


@pytest.mark.parametrize("cls", [AlraoSGD, AlraoAdam])
def test_a_head_whose_likelihood_overflows_is_zeroed_and_frozen(cls: type) -> None:
    """Its squared error overflows (mean ~1e30): the loss leaves it out and the optimizer freezes it."""
    model = _regression_model()
    opt = cls(model, eta_min=1e-3, eta_max=0.1, **({"momentum": 0.9} if cls is AlraoSGD else {}))
    _alrao_step(model, opt, 0)
    with torch.no_grad():
        model.heads.bias[2, 0] = 1e30
    head_ll = _alrao_step(model, opt, 1)
    assert head_ll[2] == -math.inf and torch.isfinite(head_ll[[0, 1, 3]]).all()
    state_w, state_b = opt.state[model.heads.weight], opt.state[model.heads.bias]
    assert torch.all(model.heads.weight[2] == 0) and torch.all(model.heads.bias[2] == 0)
    assert state_w["alrao_rate"][2] == 0 and state_b["alrao_rate"][2] == 0
    assert torch.count_nonzero(state_w["alrao_rate"]) == 3
    buffers = ["momentum_buffer"] if cls is AlraoSGD else ["exp_avg", "exp_avg_sq"]
    assert all(torch.all(state_w[k][2] == 0) for k in buffers)
    assert opt.frozen_units() == 2  # the head's weight row-block and its bias
    # from now on it outputs 0 and never moves again, and the switch keeps it at weight 0
    assert model.heads.dead.tolist() == [False, False, True, False]
    for seed in range(2, 5):
        head_ll = _alrao_step(model, opt, seed)
        assert head_ll[2] == -math.inf and torch.isfinite(head_ll[[0, 1, 3]]).all()
        assert model.switch.filtered_posterior[2] == 0
    assert torch.all(model.heads.weight[2] == 0) and torch.all(model.heads.bias[2] == 0)
    out = model(torch.randn(4, 2))
    assert out.finite is None and torch.isfinite(out.prediction).all()
    # dead heads are saved with the model; a model saved before they existed loads with none
    twin = _regression_model()
    twin.load_state_dict(model.state_dict())
    assert twin.heads.dead.tolist() == [False, False, True, False] and twin.heads.any_dead
    old_format = {k: v for k, v in model.state_dict().items() if k != "heads.dead"}
    twin.load_state_dict(old_format)
    assert not twin.heads.dead.any() and not twin.heads.any_dead


@pytest.mark.filterwarnings("ignore:Switch.update:RuntimeWarning")
def test_no_head_is_frozen_when_every_head_diverged() -> None:
    """Then the body is to blame: freezing every head would kill the model for good."""
    model = _regression_model()
    opt = AlraoSGD(model, eta_min=1e-3, eta_max=0.1)
    with torch.no_grad():
        model.heads.bias.fill_(1e30)
    with pytest.warns(RuntimeWarning, match="no head has a finite likelihood"):
        _alrao_step(model, opt, 0)
    assert opt.frozen_units() == 0 and torch.all(model.heads.bias == 1e30)


def test_a_dead_head_with_a_plain_torch_optimizer_is_only_left_out() -> None:
    model = _regression_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with torch.no_grad():
        model.heads.bias[1, 0] = 1e30
    head_ll = _alrao_step(model, opt, 0)
    assert head_ll[1] == -math.inf and model.heads.bias[1, 0] == 1e30


def test_frozen_units_survive_a_state_dict_round_trip() -> None:
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
    with torch.no_grad():
        net.out.weight[1, 0] = 50.0
    _train(net, opt, range(1))
    opt2 = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, seed=5)
    assert opt2.frozen_units() == 0
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.frozen_units() == opt.frozen_units() > 0


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        (AlraoSGD, {"eta_min": 0.0}, ValueError, "eta_min must be a finite number > 0, got 0.0"),
        (AlraoSGD, {"eta_min": 1.0, "eta_max": 0.1}, ValueError, "eta_min must be <= eta_max"),
        (AlraoSGD, {"momentum": -0.1}, ValueError, "Invalid momentum value: -0.1"),
        (AlraoSGD, {"lr": -1.0}, ValueError, "Invalid lr multiplier: -1.0"),
        (AlraoSGD, {"nesterov": True}, ValueError, "Nesterov momentum requires"),
        (AlraoSGD, {"seed": 1.5}, TypeError, "seed must be an int"),
        (AlraoSGD, {"max_weight": 0.0}, ValueError, "max_weight must be > 0"),
        (AlraoAdam, {"betas": (1.0, 0.9)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
        (AlraoAdam, {"eps": -1.0}, ValueError, "Invalid epsilon value: -1.0"),
        (AlraoAdam, {"weight_decay": -1.0}, ValueError, "Invalid weight_decay value: -1.0"),
    ],
)
def test_bad_optimizer_arguments_are_refused(cls: type, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cls(_Net(), **kwargs)


def test_optimizer_refuses_a_parameter_list() -> None:
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        AlraoSGD(list(_Net().parameters()))  # type: ignore[arg-type]


def test_a_parameter_whose_norm_exceeds_max_weight_but_no_weight_does_is_left_alone() -> None:
    """The guard's first check is on the 2-norm; the bound is on each weight."""
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
    with torch.no_grad():
        net.fc.weight.fill_(4.0)  # 2-norm 22.6 > 5, every weight 4 < 5
        net.fc.weight[5, 2] = -4.9
    _train(net, opt, range(1))
    assert opt.frozen_units() == 0 and torch.all(net.fc.weight.abs() > 3.9)
    with torch.no_grad():
        net.fc.weight[5, 2] = -5.5
    _train(net, opt, range(1, 2))
    assert opt.frozen_units() == 1 and torch.all(net.fc.weight[5] == 0)


# --- the parameters' flat buffer (one reduction clears the guard) ---------------------------------------


def test_parameters_live_in_one_flat_buffer_and_keep_their_identity() -> None:
    net = _Net()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    ids = [id(p) for p in net.parameters()]
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
    flat = opt._flat
    assert flat is not None and flat.flat.numel() == sum(p.numel() for p in net.parameters())
    assert [id(p) for p in net.parameters()] == ids  # the same Parameters, their data now views of the buffer
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]) and p.untyped_storage().data_ptr() == flat.flat.untyped_storage().data_ptr()
    assert flat.clear()


@pytest.mark.parametrize("where", ["body", "heads"])
def test_the_flat_check_and_the_exact_check_freeze_the_same_units(where: str) -> None:
    """A weight above max_weight in the body (or a NaN in a head) is found through the flat buffer as the
    exact per-parameter check finds it; after model.double() (the buffer no longer holds the weights) the
    exact check alone still finds it."""
    results = []
    for move in (False, True):
        torch.manual_seed(0)
        model = AlraoModel(nn.Sequential(nn.Linear(2, 4), nn.ReLU()), nn.Linear(4, 1), n_heads=3, task="regression")
        opt = AlraoSGD(model, eta_min=1e-3, eta_max=0.1, max_weight=5.0)
        if move:
            model.double()
            assert not opt._flat.clear()  # moved: the buffer defers to the exact path
        with torch.no_grad():
            if where == "body":
                model.body[0].weight[2, 1] = 50.0
            else:
                model.heads.weight[1, 0, 2] = math.nan
        opt.step()
        results.append((opt.frozen_units(), model.heads.dead.tolist()))
    assert results[0] == results[1]
    assert results[0] == ((1, [False, False, False]) if where == "body" else (2, [False, True, False]))


def test_zero_grad_sets_every_gradient_to_none_or_zero() -> None:
    net = _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1)
    _loss(net, 0).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_the_rates_follow_a_loaded_state() -> None:
    """The optimizer's table of rates is rebuilt when load_state_dict replaces the state (a frozen unit in the
    loaded state stays frozen)."""
    net, other = _Net(), _Net()
    opt = AlraoSGD(net, eta_min=1e-3, eta_max=0.1)
    opt_other = AlraoSGD(other, eta_min=1e-3, eta_max=0.1, seed=1)
    _train(net, opt, range(1))  # builds the table
    with torch.no_grad():
        opt_other.state[other.fc.weight]["alrao_rate"][0] = 0.0
    opt.load_state_dict(opt_other.state_dict())
    with torch.no_grad():
        net.fc.weight[0].fill_(1.0)
    _train(net, opt, range(1, 2))
    assert torch.all(net.fc.weight[0] == 1.0)  # rate 0: it did not move
    assert torch.equal(opt._rates([net.fc.weight])[0], opt_other.state[other.fc.weight]["alrao_rate"])
