"""The switch against a brute-force sum over every hidden path (Appendix A)."""

import contextlib
import copy
import math
import pickle

import numpy as np
import pytest
import torch

from alrao_rl import Switch
from alrao_rl._reference import reference_switch_posteriors


def _run(lls: torch.Tensor, theta: float) -> Switch:
    switch = Switch(lls.shape[1], theta=theta)
    for ll in lls:
        switch.update(ll)
    return switch


@pytest.mark.parametrize("theta", [0.999, 0.9, 0.5])
@pytest.mark.parametrize("n_models,steps", [(1, 3), (2, 4), (3, 3), (4, 2)])
def test_switch_matches_brute_force(theta: float, n_models: int, steps: int) -> None:
    gen = torch.Generator().manual_seed(n_models * 10 + steps)
    lls = -3.0 * torch.rand(steps, n_models, generator=gen, dtype=torch.float64)
    switch = _run(lls, theta)
    filtered, predictive = reference_switch_posteriors(lls, theta)
    torch.testing.assert_close(switch.filtered_posterior, filtered, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(switch.posterior, predictive, rtol=1e-10, atol=1e-12)
    assert int(switch.steps) == steps


def test_switch_matches_brute_force_with_zero_likelihoods() -> None:
    lls = torch.tensor([[-1.0, -math.inf, -0.5], [-math.inf, -0.2, -2.0], [-0.3, -0.1, -math.inf]])
    switch = _run(lls, 0.99)
    filtered, predictive = reference_switch_posteriors(lls, 0.99)
    torch.testing.assert_close(switch.filtered_posterior, filtered, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(switch.posterior, predictive, rtol=1e-10, atol=1e-12)


def test_huge_log_likelihoods_keep_their_differences() -> None:
    """At -2.5e31 float64 cannot hold a difference of 5 unless the common scale is removed."""
    lls = torch.tensor([[-1.0, -3.0, -2.0], [-2.5e31, -2.5e31 - 5e16, -math.inf]], dtype=torch.float64)
    switch = _run(lls, 0.999)
    filtered, _predictive = reference_switch_posteriors(lls - lls.max(1, keepdim=True).values, 0.999)
    torch.testing.assert_close(switch.filtered_posterior, filtered)
    torch.testing.assert_close(switch.posterior.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_posterior_is_uniform_before_any_update() -> None:
    switch = Switch(4)
    torch.testing.assert_close(switch.posterior, torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(switch.filtered_posterior, torch.full((4,), 0.25, dtype=torch.float64))


def test_nan_and_inf_log_likelihoods_count_as_zero_likelihood() -> None:
    bad = _run(torch.tensor([[-1.0, float("nan"), float("inf")]]), 0.999)
    zero = _run(torch.tensor([[-1.0, -math.inf, -math.inf]]), 0.999)
    torch.testing.assert_close(bad.posterior, zero.posterior)
    assert torch.isfinite(bad.log_posterior).all()
    assert bad.filtered_posterior[1] == 0 and bad.posterior[1] > 0  # only the switch-in mass


def test_all_zero_likelihoods_keep_previous_posterior_and_warn() -> None:
    switch = _run(torch.tensor([[-1.0, -0.1]]), 0.999)
    before = {k: v.clone() for k, v in switch.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="likelihood 0"):
        switch.update(torch.tensor([float("nan"), -math.inf]))
    for key, value in switch.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_posterior_concentrates_on_the_best_model() -> None:
    switch = _run(torch.tensor([[-2.0, -0.5, -3.0]] * 200), 0.999)
    assert switch.posterior.argmax() == 1 and switch.posterior[1] > 0.99
    assert switch.posterior.sum().item() == pytest.approx(1.0)


def test_switch_state_is_in_buffers_and_round_trips() -> None:
    lls = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).abs().neg()
    a = _run(lls[:3], 0.999)
    b = Switch(3)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"log_weights", "log_predictive", "log_filtered", "steps"}
    for ll in lls[3:]:
        a.update(ll)
        b.update(ll)
    assert torch.equal(a.posterior, b.posterior) and int(b.steps) == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_models": 0}, ValueError, "n_models must be >= 1, got 0"),
        ({"n_models": 2.0}, TypeError, "n_models must be an int"),
        ({"n_models": 2, "theta": 1.0}, ValueError, r"theta must be in \(0, 1\), got 1.0"),
        ({"n_models": 2, "theta": 0.0}, ValueError, "theta must be in"),
        ({"n_models": 2, "theta": -0.5}, ValueError, "theta must be in"),
    ],
)
def test_bad_switch_arguments_are_refused(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Switch(**kwargs)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.zeros(2), ValueError, r"shape \(3,\), got \(2,\)"),
        (torch.zeros(3, 1), ValueError, "shape"),
        ((0.0, 0.0, 0.0), TypeError, "must be a Tensor"),
    ],
)
def test_bad_update_input_is_refused(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Switch(3).update(value)  # type: ignore[arg-type]


def test_averaging_weights_follow_updates_and_loaded_state() -> None:
    """The float32 copies the model averages with are cached; an update or a load refreshes them."""
    switch = Switch(3)
    for filtered, source in ((True, "log_filtered"), (False, "log_predictive")):
        log_a, a = switch.averaging_weights(filtered, torch.float32, torch.device("cpu"))
        torch.testing.assert_close(log_a, getattr(switch, source).float())
        torch.testing.assert_close(a, getattr(switch, source).exp().float())
    switch.update(torch.tensor([-1.0, -0.1, -5.0]))
    log_a, _ = switch.averaging_weights(True, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(log_a, switch.log_filtered.float())
    other = Switch(3)
    other.update(torch.tensor([-9.0, -0.1, -0.2]))
    switch.load_state_dict(other.state_dict())
    log_a, a = switch.averaging_weights(True, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(log_a, other.log_filtered.float())
    torch.testing.assert_close(a, other.filtered_posterior.float())
    assert switch.averaging_weights(True, torch.float64, torch.device("cpu"))[0].dtype == torch.float64


def test_a_copied_switch_updates_its_own_buffers() -> None:
    """The switch keeps numpy views of its buffers: a deep copy (a DQN target network) must not
    write into the original's, nor keep writing into stale views."""
    switch = Switch(3)
    switch.update(torch.tensor([-1.0, -0.1, -5.0]))
    twin = copy.deepcopy(switch)
    before = switch.log_weights.clone()
    twin.update(torch.tensor([-5.0, -0.1, -1.0]))
    assert torch.equal(switch.log_weights, before) and not torch.equal(twin.log_weights, before)
    assert int(twin.steps) == 2 and int(switch.steps) == 1
    restored = pickle.loads(pickle.dumps(twin))
    restored.update(torch.tensor([-1.0, -1.0, -1.0]))
    assert int(restored.steps) == 3 and int(twin.steps) == 2


def test_a_switch_of_members_equals_one_switch_per_member() -> None:
    """The vectorized recursion (a population's switches) against the plain-float one, member by
    member, with zero likelihoods, NaN, huge values and a member whose models all fail at one step."""
    gen = torch.Generator().manual_seed(3)
    lls = -4.0 * torch.rand(6, 3, 5, generator=gen, dtype=torch.float64)  # [steps, members, models]
    lls[1, 0, 2] = -math.inf
    lls[2, 1, :] = float("nan")  # member 1 skips step 2
    lls[3, 2] = torch.tensor([-2.5e31, -2.5e31 - 5e16, -math.inf, float("inf"), -3e31])
    together = Switch(5, theta=0.99, members=3)
    alone = [Switch(5, theta=0.99) for _ in range(3)]
    for ll in lls:
        with pytest.warns(RuntimeWarning) if not torch.isfinite(ll).any(dim=1).all() else contextlib.nullcontext():
            together.update(ll)
        for m, switch in enumerate(alone):
            if torch.isfinite(ll[m]).any():
                switch.update(ll[m])
    for m, switch in enumerate(alone):
        for name, value in switch.state_dict().items():
            torch.testing.assert_close(together.state_dict()[name][m], value, rtol=1e-12, atol=1e-12, msg=name)


def test_a_switch_of_members_round_trips_and_reads_numpy() -> None:
    a = Switch(4, members=2)
    a.update(np.array([[-1.0, -2.0, -0.5, -3.0], [-0.1, -0.2, -9.0, -1.0]]))
    b = Switch(4, members=2)
    b.load_state_dict(a.state_dict())
    assert b.posterior.shape == (2, 4) and int(b.steps[0]) == 1
    torch.testing.assert_close(b.posterior, a.posterior)
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        a.update(torch.zeros(4))
