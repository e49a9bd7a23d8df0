"""Per-unit learning rates: one rate per *feature*, sampled log-uniformly once and for all.

Alrao (Blier, Wolinski, Ollivier 2019, Algorithm 1, lines 3-5) gives every feature ``i`` of every
layer ``l`` of the pre-classifier its own learning rate

.. math::  \\eta_{l,i} \\sim \\log\\mathcal{U}(\\eta_{\\min}, \\eta_{\\max}),
   \\qquad \\log \\eta_{l,i} = \\log\\eta_{\\min} + u_{l,i} \\log(\\eta_{\\max}/\\eta_{\\min}),
   \\quad u_{l,i} \\sim \\mathcal{U}(0, 1),

shared by all *incoming* parameters of the feature (a weight row and its bias entry). A rule per
module type says what a feature is; rates are stored as compact tensors that broadcast against the
parameter (``[out, 1]`` for a ``Linear`` weight), so memory grows with the number of units, not of
parameters.

>>> rates = sample_unit_rates(nn.Linear(3, 4), 1e-5, 10.0, torch.Generator().manual_seed(0))
>>> rates["weight"].shape, rates["bias"].shape
(torch.Size([4, 1]), torch.Size([4]))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "RateSampler",
    "UnitRule",
    "check_interval",
    "log_spaced",
    "log_uniform",
    "register_unit_rule",
    "sample_unit_rates",
]


def check_interval(eta_min: float, eta_max: float) -> None:
    """Validate an Alrao interval: ``0 < eta_min <= eta_max``, both finite numbers."""
    for name, value in (("eta_min", eta_min), ("eta_max", eta_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if eta_min > eta_max:
        raise ValueError(f"eta_min must be <= eta_max, got eta_min={eta_min} > eta_max={eta_max}")
    tiny, huge = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
    if eta_min < tiny or eta_max > huge:
        raise ValueError(
            f"the rates must be float32 numbers in [{tiny:.3g}, {huge:.3g}], got eta_min={eta_min}, eta_max={eta_max}"
        )


def log_uniform(n: int, eta_min: float, eta_max: float, generator: torch.Generator) -> Tensor:
    """Draw ``n`` rates log-uniformly in ``[eta_min, eta_max]`` from ``generator``.

    ``eta = eta_min * (eta_max / eta_min) ** u`` with ``u ~ U(0, 1)``, computed in float64; when
    ``eta_min == eta_max`` every rate is exactly ``eta_min``.

    :param n: number of rates.
    :param eta_min: lower end of the interval (> 0).
    :param eta_max: upper end of the interval (>= eta_min).
    :param generator: the seeded generator; the global RNG is never used.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (eta_min * torch.exp(u * math.log(eta_max / eta_min))).float()


def log_spaced(n: int, eta_min: float, eta_max: float) -> Tensor:
    """The output heads' deterministic rates (Algorithm 1, line 7), float32 ``[n]``.

    ``eta_j = exp(log eta_min + j/(n-1) log(eta_max/eta_min))`` for ``j = 0..n-1``; a single head
    gets the geometric mean ``sqrt(eta_min * eta_max)``.

    :param n: number of heads.
    :param eta_min: rate of head 0.
    :param eta_max: rate of head ``n - 1``.
    """
    if n == 1:
        return torch.tensor([math.sqrt(eta_min * eta_max)], dtype=torch.float32)
    j = torch.arange(n, dtype=torch.float64)
    return (eta_min * torch.exp(j / (n - 1) * math.log(eta_max / eta_min))).float()


class RateSampler:
    """What a unit rule draws rates from: ``sample(n)`` gives ``n`` log-uniform rates.

    :param eta_min: lower end of the interval.
    :param eta_max: upper end of the interval.
    :param generator: the seeded generator every draw goes through.
    """

    def __init__(self, eta_min: float, eta_max: float, generator: torch.Generator) -> None:
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.generator = generator

    def __call__(self, n: int) -> Tensor:
        """``n`` independent rates ``~ log-U(eta_min, eta_max)`` (float32 ``[n]``)."""
        return log_uniform(n, self.eta_min, self.eta_max, self.generator)

    def spaced(self, n: int) -> Tensor:
        """``n`` deterministic log-spaced rates (for output heads); draws nothing."""
        return log_spaced(n, self.eta_min, self.eta_max)


UnitRule = Callable[[nn.Module, RateSampler], dict[str, Tensor]]
"""A rule maps a module and a sampler to ``{local parameter name: rate tensor}``, each rate tensor
broadcastable to its parameter; parameters that share a feature must share its sampled values."""


# --- rules: what a feature is, per module type ---------------------------------------------------


def _rows_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """Linear / Conv: feature = output unit / channel = dim 0 of the weight; the bias shares it."""
    weight = module.weight
    rate = sample(weight.shape[0])
    rates = {"weight": rate.view(-1, *([1] * (weight.dim() - 1)))}
    if getattr(module, "bias", None) is not None:
        rates["bias"] = rate
    return rates


def _conv_transpose_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """ConvTranspose: weight is ``[in, out/groups, *k]``; output channel ``g*(out/groups)+k``.

    With one group the rate is a ``[1, out, 1, ...]`` view; with several groups input channel ``i``
    belongs to group ``i // (in/groups)``, so the rate is laid out as ``[in, out/groups, 1, ...]``.
    """
    weight = module.weight
    groups = module.groups
    in_ch, out_per_group = weight.shape[0], weight.shape[1]
    rate = sample(out_per_group * groups)
    ones = [1] * (weight.dim() - 2)
    if groups == 1:
        weight_rate = rate.view(1, -1, *ones)
    else:
        per_group = rate.view(groups, 1, out_per_group)
        weight_rate = per_group.expand(groups, in_ch // groups, out_per_group).reshape(in_ch, -1, *ones)
    rates = {"weight": weight_rate}
    if module.bias is not None:
        rates["bias"] = rate
    return rates


_N_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """LSTM/GRU/RNN: feature = hidden unit ``u`` of a layer and direction, *all gates share it*.

    The rows ``u, H+u, 2H+u, 3H+u`` of an LSTM's ``weight_ih``, ``weight_hh``, ``bias_ih`` and
    ``bias_hh`` get the same rate (the 2019 reference code sampled one per row). With
    ``proj_size > 0`` the projection ``weight_hr`` has its own features (its rows).
    """
    gates = _N_GATES[module.mode]
    hidden = module.hidden_size
    rates: dict[str, Tensor] = {}
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
            unit = sample(hidden)
            row = unit.repeat(gates)
            for kind in ("ih", "hh"):
                rates[f"weight_{kind}_l{layer}{suffix}"] = row.view(-1, 1)
                if module.bias:
                    rates[f"bias_{kind}_l{layer}{suffix}"] = row
            if getattr(module, "proj_size", 0) > 0:
                rates[f"weight_hr_l{layer}{suffix}"] = sample(module.proj_size).view(-1, 1)
    return rates


def _embedding_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """Embedding: feature = embedding dimension (a column of the ``[num, dim]`` table)."""
    return {"weight": sample(module.weight.shape[1]).view(1, -1)}


def _affine_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """BatchNorm/LayerNorm/GroupNorm affine: feature = channel (element of ``weight``)."""
    shape = module.weight.shape
    rate = sample(module.weight.numel()).view(shape)
    rates = {"weight": rate}
    if getattr(module, "bias", None) is not None:
        rates["bias"] = rate
    return rates


_RULES: dict[type[nn.Module], UnitRule] = {
    nn.Linear: _rows_rule,
    nn.Bilinear: _rows_rule,
    nn.Conv1d: _rows_rule,
    nn.Conv2d: _rows_rule,
    nn.Conv3d: _rows_rule,
    nn.ConvTranspose1d: _conv_transpose_rule,
    nn.ConvTranspose2d: _conv_transpose_rule,
    nn.ConvTranspose3d: _conv_transpose_rule,
    nn.LSTM: _rnn_rule,
    nn.GRU: _rnn_rule,
    nn.RNN: _rnn_rule,
    nn.Embedding: _embedding_rule,
    nn.BatchNorm1d: _affine_rule,
    nn.BatchNorm2d: _affine_rule,
    nn.BatchNorm3d: _affine_rule,
    nn.LayerNorm: _affine_rule,
    nn.GroupNorm: _affine_rule,
}


def register_unit_rule(module_type: type[nn.Module], rule: UnitRule) -> None:
    """Declare what a feature is for your own layer type (subclasses inherit the rule).

    :param module_type: the ``nn.Module`` subclass.
    :param rule: ``rule(module, sample) -> {local parameter name: rate}``; call ``sample(n)`` once
        per group of ``n`` features and reuse its result for every parameter of those features.

    >>> register_unit_rule(MyLayer, lambda m, sample: {"weight": sample(m.weight.shape[0]).view(-1, 1)})
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {rule!r}")
    _RULES[module_type] = rule


def _rule_for(module: nn.Module) -> UnitRule | None:
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _fallback_rule(module: nn.Module, names: list[str], sample: RateSampler) -> dict[str, Tensor]:
    """Unknown parameters: dim 0 is the feature axis (as for Linear/Conv); a scalar is one feature."""
    warnings.warn(
        f"alrao_rl has no per-unit rule for {type(module).__name__} (parameters {names}): using one "
        "rate per slice along dim 0; declare features with alrao_rl.register_unit_rule",
        stacklevel=3,
    )
    rates = {}
    for name in names:
        param = getattr(module, name)
        if param.dim() == 0:
            rates[name] = sample(1).view(())
        else:
            rates[name] = sample(param.shape[0]).view(-1, *([1] * (param.dim() - 1)))
    return rates


def sample_unit_rates(
    module: nn.Module, eta_min: float, eta_max: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """Sample one rate per feature for every trainable parameter of ``module``.

    Modules are visited in ``named_modules()`` order and each module's rule draws its features in
    a fixed order, so the same generator state gives the same rates. A parameter shared by two
    modules gets the rates of the first one.

    :param module: the network (or body) whose parameters get per-unit rates.
    :param eta_min: lower end of the log-uniform interval.
    :param eta_max: upper end of the log-uniform interval.
    :param generator: seeded ``torch.Generator``.
    :return: ``{qualified parameter name: rate tensor broadcastable to the parameter}``.
    """

    check_interval(eta_min, eta_max)
    sample = RateSampler(eta_min, eta_max, generator)
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for prefix, mod in module.named_modules():
        local = [n for n, p in mod.named_parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        if not local:
            continue
        rule = _rule_for(mod)
        rates = rule(mod, sample) if rule is not None else _fallback_rule(mod, local, sample)
        unknown = [n for n in local if n not in rates]
        if unknown:
            rates.update(_fallback_rule(mod, unknown, sample))
        for name in local:
            param = getattr(mod, name)
            rate = rates[name].to(param.device)
            if torch.broadcast_shapes(rate.shape, param.shape) != param.shape:
                raise ValueError(
                    f"rate for {prefix + '.' if prefix else ''}{name} has shape {tuple(rate.shape)}, "
                    f"which does not broadcast to the parameter's {tuple(param.shape)}"
                )
            seen.add(id(param))
            out[f"{prefix}.{name}" if prefix else name] = rate
    return out
