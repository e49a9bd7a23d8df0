"""Property-based fuzzing of the core: the switch, the per-unit rate sampler, optimizer checkpoints.

Every property runs on at most 100 generated examples (``deadline=None``: the machine may be busy);
the whole file takes well under 40 s. A failing example is printed by hypothesis and can be replayed
with ``@reproduce_failure`` or by pasting its values into a plain test.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD, Switch, log_spaced, sample_unit_rates
from alrao_rl._reference import reference_switch_posteriors

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Bit-identical comparisons and a modest CPU footprint: one intra-op thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- the switch -------------------------------------------------------------------------------------------

SPECIAL_LLS = [math.nan, math.inf, -math.inf, -1e300, 1e300, -1.7e308, 1.7e308, -5e-324, 0.0, -1e-300]
any_ll = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_LLS))
finite_ll = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-50.0, 0.0))
reference_ll = st.one_of(finite_ll, finite_ll, st.sampled_from([math.nan, math.inf, -math.inf]))
thetas = st.floats(1e-6, 1 - 1e-6)


@st.composite
def ll_sequences(draw: st.DrawFn, values: st.SearchStrategy[float], max_models: int, max_steps: int) -> Tensor:
    """A ``[T, N]`` float64 tensor of log-likelihoods, ``T >= 1``."""
    n = draw(st.integers(1, max_models))
    t = draw(st.integers(1, max_steps))
    rows = draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=t, max_size=t))
    return torch.tensor(rows, dtype=torch.float64)


def _run_switch(lls: Tensor, theta: float) -> Switch:
    switch = Switch(lls.shape[1], theta=theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows where every likelihood is 0 warn (and are skipped)
        for row in lls:
            switch.update(row)
    return switch


def _assert_probability_vector(p: Tensor) -> None:
    assert p.dtype == torch.float64
    assert torch.isfinite(p).all(), p
    assert (p >= 0).all(), p
    assert abs(float(p.sum()) - 1.0) <= 1e-9, float(p.sum())


@FUZZ_FAST
@given(lls=ll_sequences(any_ll, max_models=12, max_steps=25), theta=thetas)
def test_switch_posteriors_stay_probability_vectors_for_any_log_likelihoods(lls: Tensor, theta: float) -> None:
    switch = _run_switch(lls, theta)
    _assert_probability_vector(switch.posterior)
    _assert_probability_vector(switch.filtered_posterior)
    assert not torch.isnan(switch.log_weights).any() and not torch.isnan(switch.log_posterior).any()
    assert not torch.isnan(switch.log_filtered_posterior).any()
    informative = int(np.isfinite(lls.numpy()).any(axis=1).sum())
    assert int(switch.steps) == informative  # rows where every likelihood is 0 are skipped


@FUZZ_FAST
@given(lls=ll_sequences(any_ll, max_models=6, max_steps=10), theta=thetas)
def test_nan_and_plus_inf_log_likelihoods_are_exactly_likelihood_zero(lls: Tensor, theta: float) -> None:
    cleaned = torch.where(torch.isfinite(lls), lls, torch.tensor(-math.inf, dtype=torch.float64))
    a, b = _run_switch(lls, theta), _run_switch(cleaned, theta)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


@FUZZ
@given(lls=ll_sequences(reference_ll, max_models=3, max_steps=4), theta=thetas)
def test_switch_equals_the_brute_force_sum_over_paths(lls: Tensor, theta: float) -> None:
    """Any finite magnitudes (even 1e300): each row is shifted by its maximum, which changes neither
    posterior, so the brute force only sees likelihoods <= 1 and is well conditioned."""
    switch = _run_switch(lls, theta)
    finite = torch.isfinite(lls)
    informative = finite.any(dim=1)
    cleaned = torch.where(finite, lls, torch.tensor(-math.inf, dtype=torch.float64))[informative]
    if cleaned.shape[0] == 0:  # nothing was observed: the prior
        uniform = torch.full((lls.shape[1],), 1.0 / lls.shape[1], dtype=torch.float64)
        torch.testing.assert_close(switch.posterior, uniform, rtol=0, atol=1e-15)
        return
    shifted = cleaned - cleaned.max(dim=1, keepdim=True).values
    filtered, predictive = reference_switch_posteriors(shifted, theta)
    torch.testing.assert_close(switch.filtered_posterior, filtered, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(switch.posterior, predictive, rtol=1e-9, atol=1e-12)


# --- the per-unit rate sampler ----------------------------------------------------------------------------


@dataclass
class Layer:
    """A generated layer and, per parameter name, the number of rate entries its rule must produce."""

    module: nn.Module
    entries: dict[str, int]
    units: int


small = st.integers(1, 5)


@st.composite
def linear_layers(draw: st.DrawFn) -> Layer:
    fan_in, out, bias = draw(small), draw(small), draw(st.booleans())
    m = nn.Linear(fan_in, out, bias=bias)
    return Layer(m, {"weight": out, **({"bias": out} if bias else {})}, out)


@st.composite
def conv_layers(draw: st.DrawFn) -> Layer:
    groups = draw(st.integers(1, 3))
    in_ch, out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    cls = draw(st.sampled_from([nn.Conv1d, nn.Conv2d]))
    bias = draw(st.booleans())
    m = cls(in_ch, out, draw(st.integers(1, 3)), groups=groups, bias=bias)
    return Layer(m, {"weight": out, **({"bias": out} if bias else {})}, out)


@st.composite
def conv_transpose_layers(draw: st.DrawFn) -> Layer:
    groups = draw(st.integers(1, 3))
    in_ch, out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    bias = draw(st.booleans())
    m = nn.ConvTranspose2d(in_ch, out, draw(st.integers(1, 3)), groups=groups, bias=bias)
    # One group: a [1, out, 1, 1] view. Several: the documented [in, out/groups, 1, 1] layout (one entry
    # per input channel and output channel of its group: independent of the kernel size, not per unit).
    weight_entries = out if groups == 1 else in_ch * (out // groups)
    return Layer(m, {"weight": weight_entries, **({"bias": out} if bias else {})}, out)


@st.composite
def recurrent_layers(draw: st.DrawFn) -> Layer:
    cls = draw(st.sampled_from([nn.LSTM, nn.GRU]))
    hidden, layers, bidirectional, bias = (
        draw(st.integers(2, 5)),
        draw(st.integers(1, 2)),
        draw(st.booleans()),
        (draw(st.booleans())),
    )
    proj = draw(st.integers(0, hidden - 1)) if cls is nn.LSTM else 0
    kwargs = {"proj_size": proj} if cls is nn.LSTM else {}
    m = cls(draw(small), hidden, num_layers=layers, bidirectional=bidirectional, bias=bias, **kwargs)
    gates = 4 if cls is nn.LSTM else 3
    entries = {}
    for layer in range(layers):
        for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
            for kind in ("ih", "hh"):
                entries[f"weight_{kind}_l{layer}{suffix}"] = gates * hidden
                if bias:
                    entries[f"bias_{kind}_l{layer}{suffix}"] = gates * hidden
            if proj:
                entries[f"weight_hr_l{layer}{suffix}"] = proj
    directions = 2 if bidirectional else 1
    return Layer(m, entries, layers * directions * (hidden + proj))


@st.composite
def embedding_layers(draw: st.DrawFn) -> Layer:
    dim = draw(small)
    return Layer(nn.Embedding(draw(st.integers(1, 20)), dim), {"weight": dim}, dim)


@st.composite
def norm_layers(draw: st.DrawFn) -> Layer:
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        bias = draw(st.booleans())
        m: nn.Module = nn.LayerNorm(shape, bias=bias)
        n = math.prod(shape)
        return Layer(m, {"weight": n, **({"bias": n} if bias else {})}, n)
    groups = draw(st.integers(1, 3))
    channels = groups * draw(st.integers(1, 3))
    m = nn.GroupNorm(groups, channels)
    return Layer(m, {"weight": channels, "bias": channels}, channels)


any_layer = st.one_of(
    linear_layers(), conv_layers(), conv_transpose_layers(), recurrent_layers(), embedding_layers(), norm_layers()
)


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, list[Layer], set[str]]:
    """A container of generated layers, some parameters frozen; returns it, its layers and the frozen names."""
    layers = draw(st.lists(any_layer, min_size=1, max_size=4))
    net = nn.ModuleList([layer.module for layer in layers])
    frozen = set()
    for name, p in net.named_parameters():
        if draw(st.integers(0, 5)) == 0:
            p.requires_grad_(False)
            frozen.add(name)
    return net, layers, frozen


intervals = st.tuples(st.floats(-8, 2), st.floats(0, 6)).map(lambda t: (10.0 ** t[0], 10.0 ** (t[0] + t[1])))


@FUZZ
@given(spec=networks(), interval=intervals, seed=st.integers(0, 2**31 - 1))
def test_every_trainable_parameter_gets_compact_rates_in_the_interval(
    spec: tuple[nn.Module, list[Layer], set[str]], interval: tuple[float, float], seed: int
) -> None:
    net, layers, frozen = spec
    eta_min, eta_max = interval
    rates = sample_unit_rates(net, eta_min, eta_max, torch.Generator().manual_seed(seed))
    params = dict(net.named_parameters())
    assert set(rates) == {n for n in params if n not in frozen}
    rate_entries = 0
    for name, rate in rates.items():
        p = params[name]
        assert torch.broadcast_shapes(rate.shape, p.shape) == p.shape, (name, rate.shape, p.shape)
        assert rate.dtype == torch.float32 and torch.isfinite(rate).all()
        # float32 storage: the ends are met up to one float32 rounding
        lo, hi = float(rate.min()), float(rate.max())
        assert eta_min * (1 - 2**-23) <= lo and hi <= eta_max * (1 + 2**-23), (name, lo, hi, eta_min, eta_max)
        index, local = name.split(".", 1)
        expected = layers[int(index)].entries[local]
        assert rate.numel() == expected, (name, rate.shape)
        rate_entries += rate.numel()
    # Units, not parameters: at most one entry per row/channel of each parameter (grouped ConvTranspose: per
    # input-output channel pair), never one per weight once a unit has several incoming weights.
    trainable = sum(p.numel() for n, p in params.items() if n not in frozen)
    assert rate_entries <= trainable


@FUZZ
@given(layer=any_layer, seed=st.integers(0, 2**31 - 1))
def test_same_generator_state_same_rates_and_distinct_units_get_distinct_rates(layer: Layer, seed: int) -> None:
    a = sample_unit_rates(layer.module, 1e-5, 10.0, torch.Generator().manual_seed(seed))
    b = sample_unit_rates(layer.module, 1e-5, 10.0, torch.Generator().manual_seed(seed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    distinct = torch.cat([r.flatten() for r in a.values()]).unique().numel()
    assert distinct == layer.units  # every unit one draw; every parameter of a unit shares it


@FUZZ_FAST
@given(layer=any_layer, eta=st.floats(1e-8, 1e3))
def test_equal_ends_give_every_unit_exactly_that_rate(layer: Layer, eta: float) -> None:
    rates = sample_unit_rates(layer.module, eta, eta, torch.Generator().manual_seed(0))
    expected = torch.tensor(eta, dtype=torch.float32)
    assert all(torch.all(r == expected) for r in rates.values())


@FUZZ
@given(ends=st.tuples(st.floats(5e-324, 1.7e308), st.floats(5e-324, 1.7e308)).map(sorted), seed=st.integers(0, 9))
@example(ends=[1e-320, 10.0], seed=0)
@example(ends=[1e-5, 1e39], seed=0)
def test_any_accepted_interval_gives_finite_positive_rates(ends: list[float], seed: int) -> None:
    eta_min, eta_max = ends
    try:
        rates = sample_unit_rates(nn.Linear(3, 8), eta_min, eta_max, torch.Generator().manual_seed(seed))
    except ValueError as e:  # refused: outside float32's range
        assert "float32" in str(e) and (eta_min < 1.1754944e-38 or eta_max > 3.4028235e38), (eta_min, eta_max)
        return
    for rate in [*rates.values(), log_spaced(5, eta_min, eta_max)]:
        assert torch.isfinite(rate).all() and (rate > 0).all(), (eta_min, eta_max, rate)


@pytest.mark.xfail(
    strict=True,
    reason="bug: AlraoSGD's guard freezes rate *entries*; a grouped ConvTranspose lays its output channel's "
    "rate out over in/groups entries (alrao_rl/rates.py _conv_transpose_rule), so only the entry of the bad "
    "input channel is frozen and the rest of the unit keeps training (alrao_rl/optim.py _guard)",
)
def test_a_non_finite_weight_freezes_the_whole_unit_of_a_grouped_conv_transpose() -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight [4, 3, 3, 3]; input rows 0-1 feed channels 0-2
    opt = AlraoSGD(conv, eta_min=1e-3, eta_max=0.1, seed=0)
    conv(torch.randn(2, 4, 5, 5)).square().mean().backward()
    with torch.no_grad():
        conv.weight[0, 1, 0, 0] = math.nan  # output channel 1 (group 0)
    opt.step()
    rate = opt.state[conv.weight]["alrao_rate"]
    assert torch.all(conv.weight[:, 1][:2] == 0), "weights of output channel 1 from input channel 1 still train"
    assert torch.all(rate[:2, 1] == 0)


# --- optimizer checkpoints ------------------------------------------------------------------------------


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.conv = nn.Conv1d(1, 2, 3, padding=1, groups=1)
        self.norm = nn.LayerNorm(12)
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc(x))  # [B, 6]
        h = self.norm(self.conv(h.unsqueeze(1)).flatten(1))  # [B, 12]
        out, _ = self.gru(h.view(-1, 4, 3))  # [B, 4, 4]
        return out[:, -1]


def _model(seed: int) -> AlraoModel:
    torch.manual_seed(seed)
    return AlraoModel(_Body(), nn.Linear(4, 3), n_heads=4, task="classification")


def _step(model: AlraoModel, opt: torch.optim.Optimizer, t: int) -> None:
    gen = torch.Generator().manual_seed(1000 + t)
    x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    loss, head_ll = model.loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.switch.update(head_ll)


optimizer_configs = st.one_of(
    st.fixed_dictionaries(
        {"momentum": st.sampled_from([0.0, 0.5, 0.9]), "weight_decay": st.sampled_from([0.0, 1e-3, 0.1])},
        optional={"dampening": st.sampled_from([0.0, 0.3])},
    ).flatmap(lambda c: st.just((AlraoSGD, c)) | st.booleans().map(lambda nes: (AlraoSGD, _nesterov(c, nes)))),
    st.fixed_dictionaries(
        {
            "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
            "weight_decay": st.sampled_from([0.0, 1e-3, 0.1]),
            "eps": st.sampled_from([1e-8, 1e-3]),
        }
    ).map(lambda c: (AlraoAdam, c)),
)


def _nesterov(config: dict[str, float], nesterov: bool) -> dict[str, float | bool]:
    if nesterov and config["momentum"] > 0 and config.get("dampening", 0.0) == 0.0:
        return {**config, "nesterov": True}
    return config


@FUZZ
@given(
    spec=optimizer_configs,
    eta_max=st.sampled_from([1e-2, 1.0, 10.0, 1e3]),
    max_weight=st.sampled_from([None, 5.0]),
    before=st.integers(0, 5),
    after=st.integers(1, 5),
    poison=st.booleans(),
)
def test_optimizer_checkpoint_round_trip_through_a_weights_only_file_is_bit_identical(
    spec: tuple[type, dict[str, float | bool]],
    eta_max: float,
    max_weight: float | None,
    before: int,
    after: int,
    poison: bool,
) -> None:
    cls, config = spec
    make: Callable[[AlraoModel, int], torch.optim.Optimizer] = lambda m, seed: cls(  # noqa: E731
        m, eta_min=1e-5, eta_max=eta_max, seed=seed, max_weight=max_weight, **config
    )
    model = _model(0)
    opt = make(model, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # diverged heads / all-zero likelihoods at eta_max 1e3
        for t in range(before):
            _step(model, opt, t)
        if poison:  # a unit that has diverged: the guard freezes it at the next step, before or after saving
            with torch.no_grad():
                model.body.fc.weight[2, 1] = math.nan
        blob = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, blob)
        blob.seek(0)
        saved = torch.load(blob, weights_only=True)
        restored = _model(1)  # other initial weights and other rates until loaded
        restored_opt = make(restored, 1)
        restored.load_state_dict(saved["model"])
        restored_opt.load_state_dict(saved["optimizer"])
        for t in range(before, before + after):
            _step(model, opt, t)
            _step(restored, restored_opt, t)
    for (name, p), q in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.isfinite(p).all(), name  # the guard never lets a non-finite weight survive a step
        assert torch.equal(p, q), name
        for key, value in opt.state[p].items():
            assert _same(value, restored_opt.state[q][key]), (name, key)
    for key, value in model.switch.state_dict().items():
        assert torch.equal(value, restored.switch.state_dict()[key]), key


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit-identical, NaN included (Adam's moments of a diverging unit may hold NaN/inf)."""
    same_nan = torch.equal(torch.isnan(a), torch.isnan(b))
    return a.dtype == b.dtype and same_nan and torch.equal(a.nan_to_num(), b.nan_to_num())


# --- divergence: a huge eta_max never lets a NaN through -----------------------------------------------------


def test_alrao_dqn_with_eta_max_1e4_keeps_loss_switch_output_and_checkpoint_finite(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.dqn import DQNAgent, DQNConfig, train
    from alrao_rl.checkpoint import load_checkpoint

    config = DQNConfig(
        env="CartPole-v1", eta_max=1e4, total_steps=1500, learning_starts=100, eval_every=500, eval_episodes=2,
        buffer_size=2000, checkpoint_every=500, train_freq=1, hidden=(64, 64), batch_size=64,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # diverging heads are reported, and must be survived
        summary = train(config, str(tmp_path), progress=False)
    assert summary["total_steps"] == 1500 and all(math.isfinite(r) for _, r, _ in _evals(tmp_path))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 14 and all(math.isfinite(v) for v in losses), losses
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    for name, value in _tensors(saved):
        assert not torch.isnan(value).any(), name  # no NaN anywhere in the checkpoint
    agent = DQNAgent(4, 2, config)
    agent.load_state_dict(saved["agent"])
    _assert_probability_vector(agent.q_net.switch.posterior)
    _assert_probability_vector(agent.q_net.switch.filtered_posterior)
    observations = saved["buffer"]["observations"].float()
    assert torch.isfinite(agent.q_values(observations)).all()  # the averaged output
    assert agent.td_variance is not None and math.isfinite(agent.td_variance)
    assert agent.optimizer.frozen_units() > 0  # units did run away, and were stopped


def _evals(logdir: Path) -> list[tuple[float, float, float]]:
    lines = (logdir / "evals.csv").read_text().splitlines()[1:]
    return [tuple(float(x) for x in line.split(",")) for line in lines]  # type: ignore[misc]


def _tensors(value: object, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        if value.is_floating_point():
            yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]")
