"""Per-unit rates: what a feature is for every layer type, sampling, compact storage."""

import math

import pytest
import torch
from torch import nn

from alrao_rl import log_spaced, register_unit_rule, sample_unit_rates


def _rates(module: nn.Module, eta_min: float = 1e-5, eta_max: float = 10.0, seed: int = 0) -> dict:
    return sample_unit_rates(module, eta_min, eta_max, torch.Generator().manual_seed(seed))


def _full(rates: dict, module: nn.Module) -> dict:
    params = dict(module.named_parameters())
    return {name: rate.expand_as(params[name]) for name, rate in rates.items()}


def test_weight_row_and_bias_share_unit_rate() -> None:
    rates = _rates(nn.Linear(7, 5))
    assert rates["weight"].shape == (5, 1) and rates["bias"].shape == (5,)
    assert torch.equal(rates["weight"].squeeze(1), rates["bias"])
    assert rates["weight"].unique().numel() == 5


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 6, 3), nn.Conv2d(3, 6, 3), nn.Conv3d(3, 6, 3)])
def test_conv_rate_is_per_output_channel(conv: nn.Module) -> None:
    rates = _rates(conv)
    assert rates["weight"].shape == (6,) + (1,) * (conv.weight.dim() - 1)
    assert torch.equal(rates["weight"].flatten(), rates["bias"])


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_rate_is_per_output_channel(groups: int) -> None:
    conv = nn.ConvTranspose2d(4, 6, 3, groups=groups)  # weight [in=4, out/groups, 3, 3]
    rates = _rates(conv)
    full = rates["weight"].expand_as(conv.weight)
    out_per_group = 6 // groups
    for i in range(4):
        for k in range(out_per_group):
            channel = (i // (4 // groups)) * out_per_group + k
            assert torch.all(full[i, k] == rates["bias"][channel])
    assert rates["bias"].unique().numel() == 6


@pytest.mark.parametrize(("cls", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_all_gates_of_a_recurrent_unit_share_its_rate(cls: type, gates: int) -> None:
    hidden = 5
    rnn = cls(3, hidden, num_layers=2, bidirectional=True)
    rates = _full(_rates(rnn), rnn)
    for layer in range(2):
        for suffix in ("", "_reverse"):
            per_unit = rates[f"weight_ih_l{layer}{suffix}"][:hidden, 0]
            assert per_unit.unique().numel() == hidden
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                r = rates[f"{name}_l{layer}{suffix}"]
                rows = r if r.dim() == 1 else r[:, 0]
                assert torch.equal(rows.view(gates, hidden), per_unit.expand(gates, hidden))
                if r.dim() == 2:  # every column of a unit's row shares the rate
                    assert torch.equal(r, r[:, :1].expand_as(r))
    layer0 = rates["weight_ih_l0"][:hidden, 0]
    assert not torch.equal(layer0, rates["weight_ih_l1"][:hidden, 0])
    assert not torch.equal(layer0, rates["weight_ih_l0_reverse"][:hidden, 0])


def test_lstm_projection_gets_its_own_rates() -> None:
    lstm = nn.LSTM(3, 6, proj_size=2)
    rates = _rates(lstm)
    assert rates["weight_hr_l0"].shape == (2, 1)


def test_embedding_rate_is_per_dimension() -> None:
    rates = _rates(nn.Embedding(11, 4))
    assert rates["weight"].shape == (1, 4)


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(6), nn.LayerNorm(6), nn.GroupNorm(2, 6), nn.BatchNorm1d(6)])
def test_norm_affine_rate_is_per_channel(norm: nn.Module) -> None:
    rates = _rates(norm)
    assert rates["weight"].shape == (6,) and torch.equal(rates["weight"], rates["bias"])


def test_rates_are_log_uniform_in_the_interval() -> None:
    rates = _rates(nn.Linear(2, 20000), 1e-5, 10.0)["bias"]
    assert rates.min() >= 1e-5 and rates.max() <= 10.0
    u = (rates.double().log() - math.log(1e-5)) / math.log(1e6)
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert (counts - 2000).abs().max() < 200  # uniform in log space (~4.5 sigma)


def test_same_seed_same_rates_and_global_rng_untouched() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    state = torch.get_rng_state()
    a, b, c = _rates(net, seed=1), _rates(net, seed=1), _rates(net, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_equal_ends_give_exactly_that_rate() -> None:
    rates = _rates(nn.Linear(3, 4), 0.01, 0.01)
    assert torch.all(rates["weight"] == torch.tensor(0.01))


def test_rate_memory_grows_with_units_not_parameters() -> None:
    net = nn.Sequential(nn.Linear(1000, 1000), nn.Conv2d(64, 128, 3))
    rates = _rates(net)
    assert sum(r.numel() for r in rates.values()) == 2 * 1000 + 2 * 128


def test_head_rates_are_deterministically_log_spaced() -> None:
    rates = log_spaced(10, 1e-5, 10.0)
    expected = torch.tensor([math.exp(math.log(1e-5) + j / 9 * math.log(1e6)) for j in range(10)])
    torch.testing.assert_close(rates, expected)


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(3, 2))


def test_unknown_layer_warns_and_falls_back_to_dim0_units() -> None:
    with pytest.warns(UserWarning, match="no per-unit rule for _Scale"):
        rates = _rates(_Scale())
    assert rates["gain"].shape == (3, 1)


def test_registered_rule_is_used_for_a_custom_layer() -> None:
    class Custom(_Scale):
        pass

    register_unit_rule(Custom, lambda m, sample: {"gain": sample(m.gain.shape[1]).view(1, -1)})
    rates = _rates(Custom())
    assert rates["gain"].shape == (1, 2)


def test_shared_parameter_gets_one_rate() -> None:
    a = nn.Linear(3, 3)
    net = nn.Sequential(a, nn.ReLU(), a)
    assert list(_rates(net)) == ["0.weight", "0.bias"]


def test_frozen_parameters_get_no_rate() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    assert list(_rates(net)) == ["1.weight", "1.bias"]


@pytest.mark.parametrize(
    ("eta_min", "eta_max", "error", "match"),
    [
        (0.0, 1.0, ValueError, "eta_min must be a finite number > 0, got 0.0"),
        (-1.0, 1.0, ValueError, "eta_min must be a finite number > 0"),
        (1.0, 0.1, ValueError, "eta_min must be <= eta_max, got eta_min=1.0 > eta_max=0.1"),
        (1e-5, math.inf, ValueError, "eta_max must be a finite number > 0, got inf"),
        ("1e-5", 1.0, TypeError, "eta_min must be a number"),
    ],
)
def test_bad_interval_is_refused(eta_min: object, eta_max: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _rates(nn.Linear(2, 2), eta_min, eta_max)  # type: ignore[arg-type]


def test_register_rule_refuses_non_module_types() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_unit_rule(int, lambda m, s: {})  # type: ignore[arg-type]
