"""``AlraoModel``: a body, ``N`` output heads and the switch that averages them (Algorithm 1).

A training step::

    out = model(x)                        # AlraoOutput: per-head outputs and the mixture
    loss, head_ll = model.loss(out, y)    # scalar mixture NLL; its backward is Algorithm 1's
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    model.switch.update(head_ll)          # switch sees each head's minibatch-mean log-likelihood

``out.prediction`` is the averaged model's output (mixture log-probabilities, or the mixture mean
for regression). It carries no gradient on purpose: the only way to train is ``model.loss``, which
gives the body the mixture's gradient and every head the gradient of its own loss, in closed form
(see :mod:`alrao_rl.losses`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .heads import AlraoHeads
from .losses import TASKS, Task, _alrao_loss
from .switch import Switch

__all__ = ["AlraoModel", "AlraoOutput", "Averaging"]

Averaging = Literal["predictive", "filtered"]
_AVERAGINGS = ("predictive", "filtered")


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
    :param model: the :class:`AlraoModel` whose forward made it (its :meth:`AlraoModel.loss` refuses
        the outputs of any other model); None for an output built by hand.
    """

    __slots__ = ("features", "finite", "index", "log_weights", "model", "task", "values", "weights")

    def __init__(
        self,
        values: Tensor,
        log_weights: Tensor,
        finite: Tensor | None,
        task: Task,
        features: Tensor,
        index: Tensor | None = None,
        weights: Tensor | None = None,
        model: AlraoModel | None = None,
    ) -> None:
        self.values = values
        self.log_weights = log_weights
        self.finite = finite
        self.task = task
        self.features = features
        self.index = index
        self.weights = weights
        self.model = model

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
        if self.finite is not None:  # rare: zero the non-finite heads (they have weight 0)
            keep = self.finite.view(-1, 1) if self.index is None else self.finite
            values = torch.where(keep, values, 0.0)
        if self.task == "classification":
            return torch.logsumexp(torch.log_softmax(values, dim=-1) + self.log_weights.unsqueeze(1), dim=head_dim)
        # sum_j a_j mu_j as one matmul; a_j = 0 for a head left out, whose outputs are finite here
        a = self.log_weights.exp() if self.weights is None else self.weights
        return values @ a if self.index is not None else torch.matmul(a, values)

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
            selected, self.log_weights, self.finite, self.task, self.features, index, self.weights, self.model
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
        self.body = body
        self.heads = AlraoHeads(head, n_heads)
        self.switch = Switch(n_heads, theta=theta)
        self.task: Task = task
        self.averaging: Averaging = averaging

    @property
    def n_heads(self) -> int:
        return self.heads.n_heads

    def averaging_log_weights(self) -> Tensor:
        """``log a_j`` from the switch, as chosen by ``averaging`` (float64 ``[N]``)."""
        if self.averaging == "filtered":
            return self.switch.log_filtered_posterior
        return self.switch.log_posterior

    def forward(self, x: Tensor) -> AlraoOutput:
        """Run the body on ``x``, then :meth:`output`. A recurrent body (one that returns
        ``(features, state)``) is run as ``z, state = model.body(x, state); out = model.output(z)``
        to train, and predicts with :meth:`predict_with_state`."""
        return self.output(_features(self.body(x)))

    def output(self, z: Tensor, log_weights: Tensor | None = None, switch: Switch | None = None) -> AlraoOutput:
        """Heads and mixture weights on the body's output ``z`` (use it when the body returns
        more than features, e.g. an LSTM's hidden state).

        :param z: body output ``[..., in_features]``.
        :param log_weights: averaging weights ``log a_j`` to use instead of the switch's; float ``[N]``.
        :param switch: average with this switch's posterior (as chosen by ``averaging``) instead of
            this model's own, e.g. a DQN target network with the online network's switch.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                values = self.heads(z)
        else:
            values = self.heads(z)
        if log_weights is None:
            source = self.switch if switch is None else switch
            lw, a = source.averaging_weights(self.averaging == "filtered", values.dtype, values.device)
        else:
            lw, a = log_weights.to(device=values.device, dtype=values.dtype), None
        finite = None
        if not math.isfinite(float(values.sum())):  # one reduction; the exact check is rare
            finite = torch.isfinite(values).transpose(0, -2).reshape(self.n_heads, -1).all(dim=1)
            if not bool(finite.any()):
                warnings.warn(
                    "AlraoModel: every head's output is non-finite (the body diverged); the prediction is NaN",
                    RuntimeWarning,
                    stacklevel=2,
                )
            lw = torch.where(finite, lw, -math.inf)
            lw, a = lw - torch.logsumexp(lw, dim=0), None
        return AlraoOutput(values, lw, finite, self.task, z, weights=a, model=self)

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
        heads = self.heads
        if out.features.shape[-1] != heads.in_features:
            raise ValueError("out does not come from this model's forward")
        loss, head_ll, usable = _alrao_loss(
            out.features, heads.weight, heads.bias, out.values, out.index, target,
            out.log_weights, out.finite, self.task, variance,
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
        return self._predict_features(_features(self.body(x)), switch)

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
        return self._predict_features(z, switch), state

    def _predict_features(self, z: Tensor, switch: Switch | None) -> Tensor:
        """The averaged model's output on the body's output ``z`` (see :meth:`predict`)."""
        heads = self.heads
        if self.task == "regression" and z.shape[-1] == heads.in_features:
            source = self.switch if switch is None else switch
            _, a = source.averaging_weights(self.averaging == "filtered", z.dtype, z.device)
            a = a.view(1, -1)
            weight, bias = heads.weight, heads.bias
            weight = a.mm(weight.view(heads.n_heads, -1)).view(heads.out_features, heads.in_features)
            mean = nn.functional.linear(z, weight, None if bias is None else a.mm(bias).view(-1))
            if math.isfinite(float(mean.sum())):
                return mean
        return self.output(z, switch=switch).prediction

    def extra_repr(self) -> str:
        return f"task={self.task!r}, averaging={self.averaging!r}"


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
