"""``AlraoModel``: a body, ``N`` output heads and the switch that averages them (Algorithm 1).

A training step::

    out = model(x)                        # AlraoOutput: per-head outputs and the mixture
    loss, head_ll = model.loss(out, y)    # scalar mixture NLL; its backward is Algorithm 1's
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    model.switch.update(head_ll)          # switch sees each head's minibatch-mean log-likelihood

``out.prediction`` is the averaged model's output (mixture log-probabilities, or the mixture mean
for regression). It carries no gradient on purpose: the only way to train is ``model.loss``, which
gives the body the mixture's gradient and every head the gradient of its own loss, in closed form
(see :mod:`alrao_rl.losses`). :class:`alrao_rl.AlraoStep` does the same step fused, in about as
many torch calls as a plain SGD step.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .heads import AlraoHeads
from .losses import TASKS, Task, _alrao_loss, check_target
from .switch import Switch

__all__ = ["AlraoModel", "AlraoOutput", "Averaging", "HeadStep"]

Averaging = Literal["predictive", "filtered"]
_AVERAGINGS = ("predictive", "filtered")
HeadStep = Literal["plain", "normalized"]
_HEAD_STEPS = ("plain", "normalized")


class AlraoOutput:
    """What one forward pass of an :class:`AlraoModel` returns (nothing is stored on the model).

    Pass it to :meth:`AlraoModel.loss` to train; read :attr:`prediction` to use the model.

    :param values: raw head outputs (logits for classification, means for regression), no
        gradient, heads second to last: ``[*lead, N, out]``, or ``[*lead, N]`` after
        :meth:`gather`.
    :param log_weights: the averaging weights used, ``log a_j`` (``[N]``, renormalized over the
        finite heads).
    :param finite: ``[N]`` bool, whether each head's outputs are all finite; None when all are.
    :param task: the model's task.
    :param features: the body's output ``z`` (differentiable) the heads were computed from.
    :param index: the output selected per sample by :meth:`gather`, or None.
    :param weights: ``a_j = exp(log_weights)`` if already computed (None: computed when needed).
    :param bad_input: the batch holds non-finite inputs (see :meth:`AlraoModel.output`): its loss
        trains nothing.
    :param model: the :class:`AlraoModel` whose forward made it (its :meth:`AlraoModel.loss` refuses
        the outputs of any other model); None for an output built by hand.
    """

    __slots__ = ("bad_input", "features", "finite", "index", "log_weights", "model", "task", "values", "weights")

    def __init__(
        self,
        values: Tensor,
        log_weights: Tensor,
        finite: Tensor | None,
        task: Task,
        features: Tensor,
        index: Tensor | None = None,
        weights: Tensor | None = None,
        bad_input: bool = False,
        model: AlraoModel | None = None,
    ) -> None:
        self.bad_input = bad_input
        self.model = model
        self.values = values
        self.log_weights = log_weights
        self.finite = finite
        self.task = task
        self.features = features
        self.index = index
        self.weights = weights

    @property
    def heads(self) -> Tensor:
        """Per-head outputs ``[N, *lead, out]`` (``[N, *lead]`` if gathered): log-probabilities
        (classification) or means (regression)."""
        if self.task == "classification":
            return torch.movedim(torch.log_softmax(self.values, dim=-1), -2, 0)
        return torch.movedim(self.values, -1 if self.index is not None else -2, 0)

    @property
    def prediction(self) -> Tensor:
        """The averaged model's output, no gradient: ``log sum_j a_j p_j`` ``[*lead, C]``
        (classification) or ``sum_j a_j mu_j`` (regression)."""
        values = self.values
        head_dim = -1 if self.index is not None else -2
        if self.log_weights.dim() == 2:  # members: weights [P, N] against values [P, ..., N(, C)]
            return self._member_prediction(head_dim)
        if self.finite is not None:  # rare: zero the non-finite heads (they have weight 0)
            keep = self.finite.view(-1, 1) if self.index is None else self.finite
            values = torch.where(keep, values, 0.0)
        if self.task == "classification":
            return torch.logsumexp(torch.log_softmax(values, dim=-1) + self.log_weights.unsqueeze(1), dim=head_dim)
        # sum_j a_j mu_j as one matmul; a_j = 0 for a head left out, whose outputs are finite here
        a = self.log_weights.exp() if self.weights is None else self.weights
        return values @ a if self.index is not None else torch.matmul(a, values)

    def _member_prediction(self, head_dim: int) -> Tensor:
        """:attr:`prediction` of a model with members, each member with its own weights."""
        values = self.values
        p, n = self.log_weights.shape
        shape = (p, *[1] * (values.dim() - 1 + head_dim), n) + ((1,) if head_dim == -2 else ())
        if self.finite is not None:
            values = torch.where(self.finite.view(shape), values, 0.0)
        if self.task == "classification":
            return torch.logsumexp(torch.log_softmax(values, dim=-1) + self.log_weights.view(shape), dim=head_dim)
        return (values * self.log_weights.exp().view(shape)).sum(dim=head_dim)

    def gather(self, index: Tensor) -> AlraoOutput:
        """Regression: select one output per sample (e.g. the Q-value of the action taken).

        :param index: int64 ``[*lead]``, picks along the output dimension.
        :return: an ``AlraoOutput`` whose outputs have lost their last dimension; its loss is the
            Gaussian likelihood of the selected output only.
        """
        if self.task != "regression":
            raise TypeError("gather selects regression outputs; classification losses use all classes")
        if self.index is not None:
            raise TypeError("this output was already gathered")
        lead = self.values.shape[:-2]
        if index.shape != lead:
            raise ValueError(f"index shape {tuple(index.shape)} must equal the outputs' leading shape {tuple(lead)}")
        index = index.long()
        expanded = index.reshape(*lead, 1, 1).expand(*lead, self.values.shape[-2], 1)
        selected = self.values.gather(-1, expanded).squeeze(-1)
        return AlraoOutput(
            selected, self.log_weights, self.finite, self.task, self.features, index, self.weights, self.bad_input,
            self.model,
        )


class AlraoModel(nn.Module):
    """The Alrao version of ``nn.Sequential(body, head)``: ``head`` becomes ``n_heads`` copies.

    :param body: the pre-classifier ``phi``; its output's last dimension must be
        ``head.in_features``. Its parameters get per-unit rates from the Alrao optimizers.
    :param head: the output layer (``nn.Linear``) to copy into ``n_heads`` heads.
    :param n_heads: number of heads ``N`` (the paper uses 10; 6 for its LSTM).
    :param task: ``"classification"`` (heads output log-softmax probabilities) or
        ``"regression"`` (heads are unit-variance Gaussian means).
    :param theta: the switch's prior parameter (see :class:`alrao_rl.Switch`).
    :param averaging: which switch posterior weights the heads: ``"predictive"``
        ``P(K_{t+1}=j | y_{1:t})`` (the paper) or ``"filtered"`` ``P(K_t=j | y_{1:t})``. The
        predictive posterior keeps a floor of about ``1/(t N)`` on every head (the prior mass of
        switching into it). That is harmless for classification (a head's probabilities are
        bounded) but not for a regression *mean*: one diverged head at 1e30 moves
        ``sum_j a_j mu_j`` by 1e30/(t N). The filtered posterior gives such a head weight 0, so
        the default (``None``) is ``"filtered"`` for regression, ``"predictive"`` otherwise.
    :param head_step: how a head's own gradient step is scaled. ``"plain"`` (default): Algorithm 1,
        ``theta_j <- theta_j - eta_j grad L_j``. ``"normalized"``: the step is divided by the trace
        of the curvature of ``L_j`` (its Gauss-Newton matrix for a Gaussian head),
        ``tr F = E_b ||[z_b, 1]||^2 / sigma^2`` for regression (``E_b ||[z_b, 1]||^2`` for
        classification): ``theta_j <- theta_j - eta_j grad L_j / tr F`` (normalized LMS). On a
        minibatch's quadratic the effective step of head ``j`` along the top curvature direction is
        then ``eta_j lambda_max(F) / tr F <= eta_j`` whatever the scale of the body's features, so the
        heads' log-spaced rates keep their meaning while the body learns and every head with
        ``eta_j < 2`` is stable (plain steps are ``eta_j lambda_max(F)``: a body that grows its
        features by 100 speeds every head up by 1e4). Measured on DQN (README, "What makes Alrao
        work in RL"): no head dies and the switch's winner sits inside the interval, but it is a
        slow head and the returns are lower than with plain steps, so plain steps stay the default.
    :param members: None, or the number ``P`` of members of a population trained together: the
        body then maps ``[P, ...]`` inputs to ``[P, ..., in]`` features and heads and switch hold
        ``P`` independent copies (see :class:`alrao_rl.AlraoHeads`); train it with
        :class:`alrao_rl.AlraoStep`.

    >>> model = AlraoModel(nn.Sequential(nn.Linear(3, 64), nn.ReLU()), nn.Linear(64, 5), n_heads=10,
    ...                    task="regression")
    >>> model(torch.zeros(2, 3)).prediction.shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        n_heads: int = 10,
        task: Task = "classification",
        theta: float = 0.999,
        averaging: Averaging | None = None,
        head_step: HeadStep = "plain",
        members: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"body must be an nn.Module, got {type(body).__name__}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if averaging is None:
            averaging = "filtered" if task == "regression" else "predictive"
        if averaging not in _AVERAGINGS:
            raise ValueError(f"averaging must be one of {_AVERAGINGS}, got {averaging!r}")
        if head_step not in _HEAD_STEPS:
            raise ValueError(f"head_step must be one of {_HEAD_STEPS}, got {head_step!r}")
        self.body = body
        self.heads = AlraoHeads(head, n_heads, members=members)
        self.switch = Switch(n_heads, theta=theta, members=members)
        self.task: Task = task
        self.averaging: Averaging = averaging
        self.head_step: HeadStep = head_step
        self.members = members

    @property
    def n_heads(self) -> int:
        return self.heads.n_heads

    def averaging_log_weights(self) -> Tensor:
        """``log a_j`` from the switch, as chosen by ``averaging`` (float64 ``[N]``)."""
        if self.averaging == "filtered":
            return self.switch.log_filtered_posterior
        return self.switch.log_posterior

    def forward(self, x: Tensor) -> AlraoOutput:
        """Run the body on ``x``, then :meth:`output` (told ``x``, to tell bad input from divergence).
        A recurrent body (one that returns ``(features, state)``) is run as
        ``z, state = model.body(x, state); out = model.output(z)`` to train, and predicts with
        :meth:`predict_with_state`."""
        return self.output(_features(self.body(x)), inputs=x)

    def output(
        self,
        z: Tensor,
        log_weights: Tensor | None = None,
        switch: Switch | None = None,
        inputs: Tensor | None = None,
    ) -> AlraoOutput:
        """Heads and mixture weights on the body's output ``z`` (use it when the body returns
        more than features, e.g. an LSTM's hidden state).

        Non-finite values are sorted out here, rarely and at a cost only when they occur:

        * non-finite **inputs** (NaN in a batch) are bad data, not divergence: the output is
          marked ``bad_input`` (its loss trains nothing, with a warning) and nothing is frozen;
        * a non-finite **feature** of ``z`` (finite inputs) is the body's fault: it is marked dead
          (:meth:`alrao_rl.AlraoHeads.mark_dead_features`) and replaced by 0, and no head is
          blamed for it; if every feature is non-finite the batch is treated as bad input;
        * a **head** whose outputs are not finite is left out of the average (and marked dead
          by :meth:`loss`).

        :param z: body output ``[..., in_features]`` (``[P, ..., in_features]`` with members).
        :param log_weights: averaging weights ``log a_j`` to use instead of the switch's; float ``[N]``.
        :param switch: average with this switch's posterior (as chosen by ``averaging``) instead of
            this model's own, e.g. a DQN target network with the online network's switch.
        :param inputs: the body's input, if known (to recognize non-finite inputs).
        """
        heads = self.heads
        z = heads.mask_features(z)
        values = self._head_values(z)
        if log_weights is None:
            source = self.switch if switch is None else switch
            lw, a = source.averaging_weights(self.averaging == "filtered", values.dtype, values.device)
        else:
            lw, a = log_weights.to(device=values.device, dtype=values.dtype), None
        finite, bad_input = None, False
        if not math.isfinite(float(values.sum())):  # one reduction; the exact checks are rare
            bad_input = self._sort_out_features(z, inputs)
            if not bad_input:
                z = heads.mask_features(z)
                values = self._head_values(z)
            if bad_input or not math.isfinite(float(values.sum())):
                finite = self._finite_heads(values)
                lw = torch.where(finite, lw, -math.inf)
                lw, a = lw - torch.logsumexp(lw, dim=-1, keepdim=True), None
        return AlraoOutput(values, lw, finite, self.task, z, weights=a, bad_input=bad_input, model=self)

    def _head_values(self, z: Tensor) -> Tensor:
        """The heads' outputs on ``z``, without a gradient."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.heads(z)
        return self.heads(z)

    def _finite_heads(self, values: Tensor) -> Tensor:
        """``[N]`` (``[P, N]``) bool: whether each head's outputs are all finite; warns if none is."""
        n = self.n_heads
        if self.members is None:
            finite = torch.isfinite(values).transpose(0, -2).reshape(n, -1).all(dim=1)
        else:
            p = self.members
            finite = torch.isfinite(values).reshape(p, -1, n, values.shape[-1]).all(dim=3).all(dim=1)
        if not bool(finite.any(dim=-1).all()):
            warnings.warn(
                "AlraoModel: every head's output is non-finite (the body diverged); the prediction is NaN",
                RuntimeWarning,
                stacklevel=3,
            )
        return finite

    def _sort_out_features(self, z: Tensor, inputs: Tensor | None) -> bool:
        """After non-finite head outputs: mark the body's non-finite features dead (its fault), or
        return True when the batch is bad input (non-finite inputs, or every feature non-finite)."""
        bad = ~torch.isfinite(z.detach())
        if not bool(bad.any()):
            return False  # the heads' fault
        if inputs is not None and inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            warnings.warn(
                "AlraoModel: the batch holds non-finite inputs; its loss trains nothing (nothing is frozen)",
                RuntimeWarning,
                stacklevel=4,
            )
            return True
        d = z.shape[-1]
        features = bad.reshape(-1, d).any(dim=0) if self.members is None else bad.reshape(z.shape[0], -1, d).any(1)
        if bool(features.all(dim=-1).any()):
            warnings.warn(
                "AlraoModel: every feature of the body's output is non-finite (non-finite inputs, or a "
                "hidden unit overflowed: see max_weight); the batch trains nothing",
                RuntimeWarning,
                stacklevel=4,
            )
            return True
        self.heads.mark_dead_features(features)
        return False

    def loss(self, out: AlraoOutput, target: Tensor, variance: float = 1.0) -> tuple[Tensor, Tensor]:
        """The Alrao loss of a forward pass (see :mod:`alrao_rl.losses`).

        Its backward gives the body the gradient of the mixture negative log-likelihood and each
        head the gradient of its own loss on the body's output held fixed (Algorithm 1). Heads
        left out of it (non-finite outputs or likelihood) are marked dead for good (see
        :class:`alrao_rl.AlraoHeads`), unless every head is: then the body is to blame.

        :param out: this model's output (possibly ``out.gather(actions)``); the output of another
            model, even one of the same shapes, is refused.
        :param target: class indices ``[*lead]`` (classification), or values shaped like
            ``out.prediction`` (regression).
        :param variance: regression: the heads' Gaussian variance (default 1, as in the paper).
        :return: ``(loss, head_ll)``: call ``loss.backward()`` and, after the optimizer step,
            ``model.switch.update(head_ll)``.
        """
        if not isinstance(out, AlraoOutput):
            raise TypeError(f"out must be the AlraoOutput of this model's forward, got {type(out).__name__}")
        if out.model is not None and out.model is not self:  # one identity check: the promise is kept
            raise ValueError("out comes from another model's forward; pass the AlraoOutput of this model's forward")
        if self.members is not None:
            raise TypeError("a model with members is trained by alrao_rl.AlraoStep, not by loss")
        heads = self.heads
        if out.features.shape[-1] != heads.in_features:
            raise ValueError("out does not come from this model's forward")
        if out.bad_input:  # nothing to learn from: no gradient reaches any parameter
            check_target(out.features, target, out.index, self.task, heads.out_features)
            nothing = torch.full((), math.nan, device=out.values.device, requires_grad=True)
            return nothing, torch.full((self.n_heads,), -math.inf, dtype=torch.float64)
        loss, head_ll, usable = _alrao_loss(
            out.features, heads.weight, heads.bias, out.values, out.index, target,
            out.log_weights, out.finite, self.task, variance, self.head_step == "normalized",
        )
        if usable is not None and bool(usable.any()):  # some heads diverged for good, not all
            heads.mark_dead(~usable)
        if heads.any_dead:  # dead for good: likelihood 0 for the switch, whatever they output now
            head_ll = head_ll.masked_fill(heads.dead, -math.inf)
        return loss, head_ll

    def predict(self, x: Tensor, switch: Switch | None = None) -> Tensor:
        """The averaged model's output for ``x`` (no gradient), as ``self(x).prediction``.

        Regression takes a shortcut when it can: the mixture mean of linear heads is one linear
        layer, ``sum_j a_j (W_j z + b_j) = (sum_j a_j W_j) z + sum_j a_j b_j``, so the heads are
        averaged before the product (one ``[N] x [N, out*in]`` product instead of ``N`` heads on
        every sample). If that mean is not finite, it falls back to the heads' outputs, leaving
        out the non-finite ones.

        :param x: the body's input.
        :param switch: average with this switch instead of the model's own (see :meth:`output`).
        """
        if torch.is_grad_enabled():  # (one no_grad context, not one per call in a no_grad caller)
            with torch.no_grad():
                return self.predict(x, switch)
        return self._predict_features(_features(self.body(x)), switch, x)

    def predict_with_state(self, x: Tensor, state: Any = None, switch: Switch | None = None) -> tuple[Tensor, Any]:
        """:meth:`predict` for a recurrent body, called as ``body(x, state) -> (features, state)``
        (an ``nn.LSTM``, :class:`alrao_rl.supervised.CharLSTM`): the averaged model's output and the
        body's new state, to pass to the next call (no gradient).

        >>> model = AlraoModel(nn.LSTM(3, 5), nn.Linear(5, 2), n_heads=3, task="regression")
        >>> y1, state = model.predict_with_state(torch.zeros(4, 1, 3))        # time 0..3
        >>> y2, state = model.predict_with_state(torch.zeros(2, 1, 3), state)  # time 4..5, carried on
        >>> y2.shape
        torch.Size([2, 1, 2])

        :param x: the body's input.
        :param state: the state the previous call returned, or None to let the body start afresh
            (it is then called as ``body(x)``).
        :param switch: average with this switch instead of the model's own (see :meth:`output`).
        :raises TypeError: when the body does not return a pair ``(features, state)``.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.predict_with_state(x, state, switch)
        result = self.body(x) if state is None else self.body(x, state)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Tensor)):
            raise TypeError(
                f"predict_with_state needs a recurrent body, body(x, state) -> (features, state); this body "
                f"returned a {type(result).__name__}: use predict(x)"
            )
        z, state = result
        return self._predict_features(z, switch, x), state

    def averaged(self, z: Tensor, switch: Switch | None = None, inputs: Tensor | None = None) -> Tensor:
        """Regression: the averaged model's output on the body's output ``z``, ``sum_j a_j mu_j(z)``,
        differentiable with respect to ``z`` (the heads' parameters and the weights ``a_j`` held fixed).

        What an actor needs from an Alrao critic: ``dQ/da`` through the body, ``Q(s, a) = sum_j a_j (W_j z + b_j)``
        computed as one linear layer ``(sum_j a_j W_j) z + sum_j a_j b_j``. If that is not finite (a diverged
        head), the heads' outputs without the non-finite ones, without a gradient.

        :param z: body output ``[..., in_features]`` (``[P, ..., in_features]`` with members).
        :param switch: average with this switch instead of the model's own (see :meth:`output`).
        :param inputs: the body's input, if known (see :meth:`output`).
        """
        if self.task != "regression":
            raise TypeError("averaged is the mixture mean of regression heads; classification predicts with predict")
        heads = self.heads
        z = heads.mask_features(z)
        source = self.switch if switch is None else switch
        _, a = source.averaging_weights(self.averaging == "filtered", z.dtype, z.device)
        bias = None if heads.bias is None else heads.bias.detach()
        mean = _averaged_linear(z, a, heads.weight.detach(), bias, heads.members)
        if math.isfinite(float(mean.detach().sum())):
            return mean
        return self.output(z.detach(), switch=switch, inputs=inputs).prediction

    def _predict_features(self, z: Tensor, switch: Switch | None, x: Tensor | None) -> Tensor:
        """The averaged model's output on the body's output ``z`` for the input ``x`` (see :meth:`predict`)."""
        if self.task == "regression" and z.shape[-1] == self.heads.in_features:
            return self.averaged(z, switch, inputs=x)
        return self.output(z, switch=switch, inputs=x).prediction

    def extra_repr(self) -> str:
        members = "" if self.members is None else f", members={self.members}"
        return f"task={self.task!r}, averaging={self.averaging!r}, head_step={self.head_step!r}{members}"


def _averaged_linear(z: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None, members: int | None) -> Tensor:
    """``(sum_j a_j W_j) z + sum_j a_j b_j``: the heads averaged into one linear layer, then applied."""
    n, out, d = weight.shape[-3:]
    if members is None:  # as one member (batched kernels: the numbers of a population's members)
        return _averaged_linear(z.unsqueeze(0), a.view(1, n), weight.unsqueeze(0),
                                None if bias is None else bias.unsqueeze(0), 1).squeeze(0)
    a = a.view(members, 1, n)
    w = torch.bmm(a, weight.view(members, n, out * d)).view(members, out, d).transpose(1, 2)
    z3 = z.reshape(members, -1, d)
    mean = torch.bmm(z3, w) if bias is None else torch.baddbmm(torch.bmm(a, bias), z3, w)
    return mean.view(*z.shape[:-1], out)


def _features(z: Any) -> Tensor:
    """The body's output, unless it is the ``(features, state)`` pair of a recurrent body, which needs
    the state passed explicitly (a TypeError that says how)."""
    if isinstance(z, tuple):
        raise TypeError(
            f"the body returned a tuple of {len(z)}, as a recurrent body returns (features, state): predict "
            f"with model.predict_with_state(x, state); train with z, state = model.body(x, state); "
            f"out = model.output(z)"
        )
    return z
