"""How cheap can an Alrao step be? The step of ``bench_step.py`` with its safety stripped, side by side.

``bench_step.py`` divides one full Alrao step by one plain ``torch.optim.SGD`` step. This script adds a
third step between them, the *floor*: the same arithmetic through the same library pieces, and
nothing else:

* the heads as one ``nn.functional.linear`` call under ``no_grad`` and ``Tensor.gather`` for the
  selected output (no ``AlraoModel``/``AlraoOutput`` wrappers, no check that the outputs are finite);
* the loss and its closed-form Algorithm-1 gradients by the library's own ``_AlraoLoss`` function,
  called directly (no argument validation, no dead-head bookkeeping);
* the per-unit update ``p <- p - eta * g`` by one ``_foreach_addcmul_`` in a ``torch.optim.Optimizer``
  subclass (so it pays the same ``step``/``zero_grad`` wrappers as ``torch.optim.SGD``), with no
  runaway-unit guard;
* the library's ``Switch.update``.

The floor is a lower bound for any Alrao step built from these torch calls: what the full step costs
above it is the price of the issue's safety requirements (finite checks, guard, validation) and of the
public API. A target below the floor cannot be met without leaving PyTorch's per-call costs behind.

    python benchmarks/bench_floor.py            # cases (a), (b), (d) of bench_step.py
    python benchmarks/bench_floor.py --only "(a)"
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
from bench_step import CASES, Case, _alrao_step, _sgd_step, interleaved_times
from torch import Tensor, nn

from alrao_rl import AlraoModel, AlraoSGD
from alrao_rl.losses import _AlraoLoss
from alrao_rl.rates import sample_unit_rates


class _BareSGD(torch.optim.Optimizer):
    """``p <- p - lr * eta_i * g`` with the Alrao rates, one foreach call, no guard."""

    def __init__(self, params: list[nn.Parameter], rates: list[Tensor]) -> None:
        super().__init__(params, {"lr": 1.0})
        self.rates = rates

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        params = self.param_groups[0]["params"]
        torch._foreach_addcmul_(params, [p.grad for p in params], self.rates, value=-1.0)


def _floor_step(case: Case, model: AlraoModel, opt: _BareSGD) -> Callable[[tuple], None]:
    heads, switch = model.heads, model.switch
    n, n_out, n_in = heads.weight.shape
    task = case.task

    def step(batch: tuple) -> None:
        x, y, index = batch
        z = model.body(x)
        with torch.no_grad():
            values = nn.functional.linear(z, heads.weight.view(n * n_out, n_in), heads.bias.view(-1))
            values = values.view(*z.shape[:-1], n, n_out)
            if index is not None:
                values = values.gather(-1, index.view(-1, 1, 1).expand(-1, n, 1)).squeeze(-1)
        lw, _ = switch.averaging_weights(model.averaging == "filtered", values.dtype, values.device)
        loss, head_ll, _ = _AlraoLoss.apply(z, heads.weight, heads.bias, values, index, y, lw, None, task, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        switch.update(head_ll)

    return step


def measure(case: Case, rounds: int, steps: int) -> dict[str, float]:
    """Median step time of SGD, the floor and the full Alrao step, and the median ratios to SGD."""
    torch.manual_seed(0)
    body, head = case.body(), case.head()
    plain = nn.Sequential(copy.deepcopy(body), copy.deepcopy(head))
    sgd = torch.optim.SGD(plain.parameters(), lr=1e-3)
    full = AlraoModel(copy.deepcopy(body), copy.deepcopy(head), case.n_heads, case.task)
    alrao = AlraoSGD(full, eta_min=1e-4, eta_max=1e-3, seed=0)
    bare = AlraoModel(body, head, case.n_heads, case.task)
    rates = sample_unit_rates(bare, 1e-4, 1e-3, torch.Generator().manual_seed(0))
    params = dict(bare.named_parameters())
    floor = _floor_step(case, bare, _BareSGD([params[k] for k in rates], list(rates.values())))
    batch = case.make_batch(torch.Generator().manual_seed(0))
    runs: dict[str, Callable[[], None]] = {
        "sgd": lambda: _sgd_step(plain, sgd, case.task, batch),
        "floor": lambda: floor(batch),
        "alrao": lambda: _alrao_step(full, alrao, batch),
    }
    times = interleaved_times(runs, rounds, steps)
    result = {name: statistics.median(values) for name, values in times.items()}
    for name in ("floor", "alrao"):
        result[f"{name}/sgd"] = statistics.median(a / b for a, b in zip(times[name], times["sgd"], strict=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds per case")
    parser.add_argument("--only", type=str, default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; medians over {args.rounds} interleaved rounds")
    print(f"{'case':46s} {'SGD':>9s} {'floor':>9s} {'Alrao':>9s} {'floor/SGD':>10s} {'Alrao/SGD':>10s} {'target':>7s}")
    for case in CASES:
        if args.only not in case.name or "CNN" in case.name:  # (c) meets its target: no floor needed
            continue
        steps = 200 if "MLP" in case.name else 5
        r = measure(case, args.rounds, steps)
        print(
            f"{case.name:46s} {r['sgd'] * 1e6:7.0f}us {r['floor'] * 1e6:7.0f}us {r['alrao'] * 1e6:7.0f}us "
            f"{r['floor/sgd']:10.2f} {r['alrao/sgd']:10.2f} {case.target:7.2f}"
        )


if __name__ == "__main__":
    main()
