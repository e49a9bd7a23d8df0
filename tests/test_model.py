"""AlraoModel: mixture outputs, divergent heads, API errors."""

import math

import pytest
import torch
from torch import nn

from alrao_rl import AlraoModel, AlraoSGD


def _model(task: str = "regression", n_out: int = 3, n_heads: int = 4, **kwargs: object) -> AlraoModel:
    torch.manual_seed(0)
    return AlraoModel(nn.Sequential(nn.Linear(2, 5), nn.ReLU()), nn.Linear(5, n_out), n_heads, task, **kwargs)


def test_heads_start_as_copies_of_the_given_layer() -> None:
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    model = AlraoModel(nn.Identity(), head, n_heads=4, task="regression")
    assert model.heads.weight.shape == (4, 3, 5) and model.heads.bias.shape == (4, 3)
    assert all(torch.equal(model.heads.weight[j], head.weight) for j in range(4))


def test_all_heads_computed_by_one_batched_parameter() -> None:
    model = _model()
    names = [n for n, _ in model.heads.named_parameters()]
    assert names == ["weight", "bias"]


def test_regression_prediction_is_the_posterior_mean_of_the_heads() -> None:
    model = _model(averaging="predictive")
    with torch.no_grad():
        model.heads.weight.normal_()
    model.switch.update(torch.tensor([-1.0, -0.5, -3.0, -0.1]))
    x = torch.randn(7, 2)
    out = model(x)
    a = model.switch.posterior.float()
    expected = sum(a[j] * out.heads[j] for j in range(4))
    torch.testing.assert_close(out.prediction, expected)
    assert not out.prediction.requires_grad


def test_classification_prediction_is_the_log_of_the_mixture_probability() -> None:
    model = _model("classification", 4)
    with torch.no_grad():
        model.heads.weight.normal_()
    model.switch.update(torch.tensor([-1.0, -0.5, -3.0, -0.1]))
    out = model(torch.randn(7, 2))
    a = model.switch.posterior.float()
    probs = sum(a[j] * out.heads[j].exp() for j in range(4))
    torch.testing.assert_close(out.prediction.exp(), probs)
    torch.testing.assert_close(out.prediction.exp().sum(-1), torch.ones(7))


def test_filtered_averaging_uses_the_filtered_posterior() -> None:
    model = _model(averaging="filtered")
    model.switch.update(torch.tensor([-1.0, -0.5, -math.inf, -0.1]))
    out = model(torch.randn(3, 2))
    torch.testing.assert_close(out.log_weights.exp(), model.switch.filtered_posterior.float())
    assert out.log_weights[2] == -math.inf


def test_leading_dimensions_are_kept() -> None:
    model = _model("classification", 4)
    z = torch.randn(6, 2, 5)  # e.g. an LSTM's [T, B, H]
    out = model.output(z)
    assert out.heads.shape == (4, 6, 2, 4) and out.prediction.shape == (6, 2, 4)
    loss, head_ll = model.loss(out, torch.randint(0, 4, (6, 2)))
    assert loss.shape == () and head_ll.shape == (4,)


def test_a_diverged_head_is_left_out_of_output_loss_and_gradients() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.weight[2] = math.nan
        model.heads.bias[1] = 1e3
    x = torch.randn(8, 2) + 1
    out = model(x)
    assert out.finite.tolist() == [True, True, False, True]
    assert torch.isfinite(out.prediction).all()
    assert out.log_weights[2] == -math.inf
    torch.testing.assert_close(out.log_weights.exp().sum(), torch.tensor(1.0))
    loss, head_ll = model.loss(out, torch.zeros(8, 3))
    loss.backward()
    assert torch.isfinite(loss)
    assert head_ll[2] == -math.inf and torch.isfinite(head_ll[[0, 1, 3]]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.body.parameters())
    assert model.heads.weight.grad[2].abs().sum() == 0
    model.switch.update(head_ll)
    assert torch.isfinite(model.switch.log_posterior).all()


def test_a_head_whose_likelihood_underflows_gets_no_weight_and_no_nan_gradient() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.bias[1] = 1e30  # finite outputs, squared error overflows to inf
    out = model(torch.randn(8, 2))
    assert out.finite is None  # all outputs finite
    loss, head_ll = model.loss(out, torch.zeros(8, 3))
    loss.backward()
    assert torch.isfinite(loss) and head_ll[1] == -math.inf
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_regression_averages_with_the_filtered_posterior_by_default() -> None:
    """A diverged head keeps a predictive floor ~1/(tN): its 1e30 mean would poison the average."""
    model = _model()
    assert model.averaging == "filtered" and _model("classification").averaging == "predictive"
    with torch.no_grad():
        model.heads.bias[1] = 1e30
    _loss, head_ll = model.loss(model(torch.randn(8, 2)), torch.zeros(8, 3))
    model.switch.update(head_ll)
    assert model.switch.posterior[1] > 0 and model.switch.filtered_posterior[1] == 0
    assert model.predict(torch.randn(4, 2)).abs().max() < 10


def test_overflowing_outputs_are_masked_like_nan() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.weight[0] = 3e38
        model.heads.bias[0] = 3e38
    out = model(torch.ones(4, 2))
    assert not out.finite[0] and torch.isfinite(out.prediction).all()


def test_every_head_diverged_warns() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.weight.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="every head"):
        model(torch.randn(2, 2))


def test_log_weights_override_is_used() -> None:
    model = _model()
    lw = torch.log(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    out = model.output(torch.randn(3, 5), log_weights=lw)
    torch.testing.assert_close(out.prediction, out.heads[0].detach())


def test_gathered_prediction_is_the_posterior_mean_of_the_selected_outputs() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.weight.normal_()
        model.heads.weight[1] = math.nan
    model.switch.update(torch.tensor([-1.0, -0.5, -3.0, -0.1]))
    index = torch.tensor([0, 2, 1])
    out = model(torch.randn(3, 2))
    gathered = out.gather(index)
    torch.testing.assert_close(gathered.prediction, out.prediction.gather(1, index.unsqueeze(1)).squeeze(1))
    assert torch.isfinite(gathered.prediction).all()


def test_training_on_the_prediction_is_impossible() -> None:
    model = _model()
    out = model(torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="does not require grad"):
        nn.functional.mse_loss(out.prediction, torch.zeros(3, 3)).backward()


def test_alrao_regression_fits_a_linear_target() -> None:
    torch.manual_seed(0)
    model = AlraoModel(nn.Sequential(nn.Linear(4, 32), nn.ReLU()), nn.Linear(32, 1), 10, "regression")
    opt = AlraoSGD(model, eta_min=1e-5, eta_max=10.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, generator=gen)
    for _ in range(1500):
        x = torch.randn(64, 4, generator=gen)
        loss, ll = model.loss(model(x), x @ w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.switch.update(ll)
    x = torch.randn(256, 4, generator=gen)
    mse = (model.predict(x) - x @ w).square().mean().item()
    assert mse < 0.05 * (x @ w).var().item()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "ranking"}, ValueError, "task must be one of .* got 'ranking'"),
        ({"n_heads": 0}, ValueError, "n_heads must be >= 1, got 0"),
        ({"n_heads": 2.5}, TypeError, "n_heads must be an int"),
        ({"theta": 1.5}, ValueError, "theta must be in"),
        ({"averaging": "mean"}, ValueError, "averaging must be one of"),
        ({"head": nn.Conv1d(5, 3, 1)}, TypeError, "head must be an nn.Linear, got Conv1d"),
        ({"body": "mlp"}, TypeError, "body must be an nn.Module, got str"),
    ],
)
def test_bad_model_arguments_are_refused(kwargs: dict, error: type, match: str) -> None:
    args = {"body": nn.Identity(), "head": nn.Linear(5, 3), "n_heads": 3, "task": "regression", **kwargs}
    with pytest.raises(error, match=match):
        AlraoModel(**args)


@pytest.mark.parametrize(
    ("task", "target", "error", "match"),
    [
        ("regression", torch.zeros(4), ValueError, "regression target shape"),
        ("classification", torch.zeros(4, 3, dtype=torch.long), ValueError, "classification target shape"),
        ("classification", torch.zeros(4), TypeError, "class indices"),
    ],
)
def test_bad_targets_are_refused(task: str, target: torch.Tensor, error: type, match: str) -> None:
    model = _model(task)
    with pytest.raises(error, match=match):
        model.loss(model(torch.randn(4, 2)), target)


def test_loss_refuses_a_plain_tensor() -> None:
    model = _model()
    with pytest.raises(TypeError, match="AlraoOutput"):
        model.loss(torch.zeros(4, 3), torch.zeros(4, 3))  # type: ignore[arg-type]


def test_body_width_mismatch_is_a_clear_error() -> None:
    model = AlraoModel(nn.Linear(2, 7), nn.Linear(5, 3), 2, "regression")
    with pytest.raises(ValueError, match="body output has 7 features, the heads expect 5"):
        model(torch.randn(1, 2))


def test_predict_averages_the_heads_before_the_product_and_falls_back_when_not_finite() -> None:
    model = _model()
    with torch.no_grad():
        model.heads.weight.normal_()
        model.heads.bias.normal_()
    for ll in ([-1.0, -0.2, -3.0, -0.5], [-9.0, -0.1, -0.3, -7.0]):
        model.switch.update(torch.tensor(ll))
        x = torch.randn(6, 2)
        torch.testing.assert_close(model.predict(x), model(x).prediction)
    other = _model()
    other.switch.update(torch.tensor([-0.1, -9.0, -9.0, -9.0]))
    expected = model.output(model.body(x), switch=other.switch).prediction
    torch.testing.assert_close(model.predict(x, switch=other.switch), expected)
    with torch.no_grad():  # a NaN head (weight 0 or not) makes the averaged layer NaN: the heads' path leaves it out
        model.heads.weight[1] = math.nan
    prediction = model.predict(x)
    assert torch.isfinite(prediction).all()
    torch.testing.assert_close(prediction, model(x).prediction)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("opt_cls", ["sgd", "adam"])
def test_a_nan_input_trains_nothing_and_freezes_nothing_in_the_users_loop(task: str, opt_cls: str) -> None:
    """Issue 13, bug 4, with model.loss + backward + step: bad data is not divergence."""
    from alrao_rl import AlraoAdam

    torch.manual_seed(0)
    m = AlraoModel(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), nn.Linear(16, 2), task=task)
    o = AlraoSGD(m) if opt_cls == "sgd" else AlraoAdam(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(8, 4)
    x[0, 0] = math.nan
    y = torch.zeros(8, 2) if task == "regression" else torch.zeros(8, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="non-finite inputs"):
        loss, _ = m.loss(m(x), y)
    o.zero_grad()
    loss.backward()
    o.step()
    assert o.frozen_units() == 0 and all(p.grad is None for p in m.parameters())
    for name, value in m.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)
    x[0, 0] = 0.0
    loss, _ = m.loss(m(x), y)
    loss.backward()
    o.step()
    assert o.frozen_units() == 0 and torch.isfinite(m.predict(x)).all()


def test_a_body_unit_that_overflows_kills_no_head_in_the_users_loop() -> None:
    """Issue 13, bug 3, with model.loss + backward + step."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    m = AlraoModel(body, nn.Linear(64, 5), 10, "regression")
    o = AlraoSGD(m, eta_min=1e-3, eta_max=1e-1, seed=0)
    gen = torch.Generator().manual_seed(0)
    for t in range(4):
        if t == 3:
            with torch.no_grad():
                body[2].weight[7] = 3e38
        x, y, i = torch.randn(64, 3, generator=gen), torch.randn(64, generator=gen), torch.randint(0, 5, (64,))
        loss, head_ll = m.loss(m(x).gather(i), y)
        o.zero_grad()
        loss.backward()
        o.step()
        m.switch.update(head_ll)
    assert not m.heads.dead.any() and m.heads.dead_features.nonzero().flatten().tolist() == [7]
    assert (o.state[m.heads.weight]["alrao_rate"] > 0).all() and (o.state[m.heads.bias]["alrao_rate"] > 0).all()
    assert torch.isfinite(m.heads.weight).all() and torch.isfinite(m.predict(x)).all()


# --- recurrent bodies -----------------------------------------------------------------------------------------


def _recurrent(task: str) -> AlraoModel:
    torch.manual_seed(0)
    model = AlraoModel(nn.LSTM(3, 5), nn.Linear(5, 4), n_heads=3, task=task)  # body(x, (h, c)) -> (z, (h, c))
    with torch.no_grad():
        model.heads.weight.normal_()
    model.switch.update(torch.tensor([-1.0, -0.2, -3.0]))
    return model


@pytest.mark.parametrize("call", ["forward", "predict"])
def test_a_recurrent_body_called_without_state_points_to_predict_with_state(call: str) -> None:
    model = _recurrent("regression")
    with pytest.raises(TypeError, match=r"returned a tuple.*predict_with_state"):
        getattr(model, call)(torch.randn(6, 2, 3))


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predict_with_state_carries_the_state_like_one_pass_over_the_sequence(task: str) -> None:
    model = _recurrent(task)
    x = torch.randn(6, 2, 3)  # [time, batch, features]
    whole, (h, c) = model.predict_with_state(x)
    z, _ = model.body(x)
    torch.testing.assert_close(whole, model.output(z).prediction)
    first, state = model.predict_with_state(x[:4])
    second, last = model.predict_with_state(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(last[0], h)
    torch.testing.assert_close(last[1], c)
    assert not whole.requires_grad


def test_predict_with_state_refuses_a_body_that_returns_no_state() -> None:
    with pytest.raises(TypeError, match=r"body\(x, state\) -> \(features, state\)"):
        _model().predict_with_state(torch.randn(4, 2))


@pytest.mark.parametrize("gathered", [False, True])
def test_loss_refuses_the_output_of_another_model_of_the_same_shape(gathered: bool) -> None:
    m1, m2 = _model(), _model()
    x, y = torch.randn(4, 2), torch.randn(4, 3)
    out = m2(x)
    if gathered:
        out, y = out.gather(torch.zeros(4, dtype=torch.long)), y[:, 0]
    with pytest.raises(ValueError, match="another model's forward"):
        m1.loss(out, y)
    loss, _ = m2.loss(out, y)  # its own model takes it
    assert torch.isfinite(loss)


def test_averaged_is_the_mixture_mean_differentiable_in_the_features_only() -> None:
    """What an actor needs from an Alrao critic: sum_j a_j (W_j z + b_j), a gradient for z, none for the heads."""
    model = _model()
    with torch.no_grad():
        model.heads.weight.normal_()
    model.switch.update(torch.tensor([-1.0, -0.5, -3.0, -0.1]))
    z = torch.randn(6, 5, requires_grad=True)
    mean = model.averaged(z)
    a = model.averaging_log_weights().exp().float()
    expected = sum(a[j] * (z @ model.heads.weight[j].T + model.heads.bias[j]) for j in range(4))
    torch.testing.assert_close(mean, expected)
    (grad,) = torch.autograd.grad(mean.sum(), z)
    torch.testing.assert_close(grad, (a[:, None, None] * model.heads.weight.detach()).sum(0).sum(0).expand(6, 5))
    model.averaged(z).sum().backward()
    assert model.heads.weight.grad is None
    with torch.no_grad():  # a diverged head: the finite heads' mean, without it
        model.heads.weight[3] = math.inf
    fallback = model.averaged(z)
    assert torch.isfinite(fallback).all()
    torch.testing.assert_close(fallback, model.output(z.detach()).prediction)
    with pytest.raises(TypeError, match="regression"):
        _model(task="classification").averaged(z)
