"""PopArt: the scale is the debiased running root mean square of the targets, the heads' outputs are
preserved exactly (in float64), dead heads are left alone, members are their single runs, bad targets
change nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alrao_rl import AlraoHeads, PopArt


def _heads(members: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float64) -> AlraoHeads:
    torch.manual_seed(seed)
    heads = AlraoHeads(nn.Linear(6, 3), n_heads=4, members=members).to(dtype)
    with torch.no_grad():  # heads that differ from one another
        heads.weight.normal_()
        heads.bias.normal_()
    return heads


def test_the_scale_is_the_debiased_running_root_mean_square() -> None:
    beta = 0.1
    popart = PopArt(beta=beta)
    assert popart.scale.item() == 1.0  # before any target: the identity
    heads = _heads()
    gen = torch.Generator().manual_seed(1)
    second = 0.0
    for t in range(1, 30):
        y = 50.0 + 20.0 * torch.randn(16, generator=gen, dtype=torch.float64)
        popart.update(y, [heads])
        rate = beta / (1.0 - (1.0 - beta) ** t)  # the literal formula of the module docstring
        second = (1 - rate) * second + rate * float((y * y).mean())
        assert popart.scale.item() == pytest.approx(math.sqrt(second), rel=1e-12)


def test_the_first_batch_sets_the_scale_and_zero_targets_keep_it_finite() -> None:
    popart = PopArt(beta=1e-3)
    y_hat = popart.update(torch.full((8,), 3.0, dtype=torch.float64), [_heads()])
    assert popart.scale.item() == pytest.approx(3.0)
    torch.testing.assert_close(y_hat, torch.ones(8, dtype=torch.float64))
    zero = PopArt(beta=1.0)
    zeros = torch.zeros(4, dtype=torch.float64)
    assert torch.equal(zero.update(zeros, [_heads()]), zeros)
    assert zero.scale.item() == pytest.approx(1e-4)


@pytest.mark.parametrize("members", [None, 3])
def test_outputs_in_target_units_are_preserved_and_targets_rescaled(members: int | None) -> None:
    heads = _heads(members)
    popart = PopArt(beta=0.3, members=members)
    lead = () if members is None else (members,)
    z = torch.randn(*lead, 5, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        with torch.no_grad():
            before = popart.denormalize(heads(z))
        y = 1e3 * torch.rand(*lead, 32, generator=gen, dtype=torch.float64) - 200.0
        y_hat = popart.update(y, [heads])
        with torch.no_grad():
            after = popart.denormalize(heads(z))
        torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(y_hat, y / torch.from_numpy(popart.scale).view(*lead, 1))


def test_every_copy_of_the_heads_is_rescaled_and_the_map_commutes_with_polyak_averaging() -> None:
    online, target = _heads(seed=0), _heads(seed=1)
    twin_online, twin_target = _heads(seed=0), _heads(seed=1)
    a, b = PopArt(beta=0.2), PopArt(beta=0.2)
    y = torch.linspace(-30.0, 90.0, 16, dtype=torch.float64)
    a.update(y, [online, target])  # rescale both, then average
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 0.01)
        torch._foreach_lerp_(list(twin_target.parameters()), list(twin_online.parameters()), 0.01)
    b.update(y, [twin_online, twin_target])  # average, then rescale the average
    for p, q in zip(target.parameters(), twin_target.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_dead_heads_are_left_as_they_are() -> None:
    heads = _heads()
    with torch.no_grad():
        heads.weight[1] = 0.0
        heads.bias[1] = 0.5
    heads.mark_dead(torch.tensor([False, True, False, False]))
    alive_before = heads.weight[0].clone()
    PopArt(beta=0.5).update(torch.arange(10.0, dtype=torch.float64) * 100, [heads])
    assert torch.equal(heads.weight[1], torch.zeros_like(heads.weight[1]))
    assert torch.equal(heads.bias[1], torch.full_like(heads.bias[1], 0.5))
    assert not torch.equal(heads.weight[0], alive_before)


def test_each_member_is_its_single_run_bit_for_bit_and_bad_targets_change_nothing() -> None:
    members = _heads(members=3)
    singles = [_heads() for _ in range(3)]
    with torch.no_grad():
        for k, single in enumerate(singles):
            single.weight.copy_(members.weight[k])
            single.bias.copy_(members.bias[k])
    population = PopArt(beta=0.05, members=3)
    alone = [PopArt(beta=0.05) for _ in range(3)]
    gen = torch.Generator().manual_seed(3)
    for step in range(12):
        y = 100.0 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
        if step == 5:
            y[1, 2] = math.nan  # member 1's batch is bad: it keeps its scale and heads
        kept = (population.second[1], members.weight[1].clone())
        population.update(y, [members])
        if step == 5:
            assert population.second[1] == kept[0] and torch.equal(members.weight[1], kept[1])
        for k in range(3):
            if not (step == 5 and k == 1):
                alone[k].update(y[k], [singles[k]])
    for k in range(3):
        assert population.second[k] == alone[k].second[0] and population.decay[k] == alone[k].decay[0]
        assert torch.equal(members.weight[k], singles[k].weight)
        assert torch.equal(members.bias[k], singles[k].bias)


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5, True, "0.1"])
def test_bad_beta_is_a_value_error_naming_it(beta: object) -> None:
    with pytest.raises(ValueError, match="beta"):
        PopArt(beta=beta)  # type: ignore[arg-type]


def test_heads_of_another_population_size_are_refused() -> None:
    with pytest.raises(ValueError, match="members"):
        PopArt(members=2).update(torch.zeros(2, 4, dtype=torch.float64), [_heads(members=3)])


def test_the_state_round_trips() -> None:
    a = PopArt(beta=0.1, members=2)
    a.update(torch.randn(2, 8, dtype=torch.float64) * 10, [_heads(members=2)])
    b = PopArt(beta=0.1, members=2)
    b.load_state_dict(a.state_dict())
    assert (a.scale == b.scale).all() and (a.decay == b.decay).all()
    with pytest.raises(ValueError, match="shapes"):
        PopArt(beta=0.1).load_state_dict(a.state_dict())


def test_the_scale_read_by_denormalize_follows_every_update_and_load() -> None:
    """``denormalize`` keeps its tensor of ``s`` between updates (acting reads it at every step): a stale one
    would map the heads' outputs back with the old scale."""
    popart, heads = PopArt(beta=0.5), _heads()
    u = torch.ones(2, 3)
    assert torch.equal(popart.denormalize(u), u)
    popart.update(torch.full((4,), 10.0, dtype=torch.float64), [heads])
    assert torch.allclose(popart.denormalize(u), u * 10.0)
    popart.update(torch.full((4,), 20.0, dtype=torch.float64), [heads])
    assert torch.allclose(popart.denormalize(u), u * float(popart.scale[0]))
    popart.load_state_dict({"second": [9.0], "decay": [0.5]})
    assert torch.allclose(popart.denormalize(u), u * 3.0)
