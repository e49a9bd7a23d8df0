"""Time of one Alrao training step / one plain ``torch.optim.SGD`` step, side by side.

Each case builds the same network three times: as ``body + nn.Linear`` trained with
``torch.optim.SGD`` and the usual loss (MSE on the selected output, or cross-entropy); as an
``AlraoModel`` with N heads trained by the fused step (``AlraoStep``: forward, Algorithm 1's
gradients, ``AlraoSGD``'s per-unit update, guard and switch update in one call); and as the same
model trained by the user's loop (``model.loss``, ``backward``, ``AlraoSGD.step``,
``switch.update``). All run interleaved in one process with one torch thread; a ratio is the
median over rounds of (Alrao time / SGD time), so machine noise hits both alike. ``--profile``
also counts the top-level aten calls of one step of each (torch.profiler).

    python benchmarks/bench_step.py              # all cases
    python benchmarks/bench_step.py --rounds 5   # quicker
    python benchmarks/bench_step.py --json       # one JSON object with every ratio
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alrao_rl import AlraoModel, AlraoSGD, AlraoStep
from alrao_rl.rates import sample_unit_rates


@dataclass
class Case:
    name: str
    target: float
    user_target: float | None
    body: Callable[[], nn.Module]
    head: Callable[[], nn.Linear]
    n_heads: int
    task: str
    make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 64, 128, 256]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 100)
        self.lstm = nn.LSTM(100, 100, num_layers=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.embedding(x))[0]


def _regression_batch(n_in: int, n_out: int, batch: int) -> Callable:
    def make(gen: torch.Generator) -> tuple:
        return (
            torch.randn(batch, n_in, generator=gen),
            torch.randn(batch, generator=gen),
            torch.randint(0, n_out, (batch,), generator=gen),
        )

    return make


CASES = [
    Case("(a) MLP 3-64-64-5, batch 64, 10 heads", 1.10, 1.4, lambda: _mlp([3, 64, 64]),
         lambda: nn.Linear(64, 5), 10, "regression", _regression_batch(3, 5, 64)),
    Case("(b) MLP 8-256-256-4, batch 128, 10 heads", 1.10, 1.25, lambda: _mlp([8, 256, 256]),
         lambda: nn.Linear(256, 4), 10, "regression", _regression_batch(8, 4, 128)),
    Case("(c) CNN 32-64-128-256, batch 32, 10 heads", 1.05, None, _Cnn, lambda: nn.Linear(256, 10), 10,
         "classification",
         lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g), None)),
    Case("(d) LSTM 2x100, 50 symbols, 20x70, 6 heads", 1.15, None, _Lstm, lambda: nn.Linear(100, 50), 6,
         "classification",
         lambda g: (torch.randint(0, 50, (70, 20), generator=g), torch.randint(0, 50, (70, 20), generator=g), None)),
]


def _sgd_step(net: nn.Module, opt: torch.optim.Optimizer, task: str, batch: tuple) -> None:
    x, y, index = batch
    out = net(x)
    if task == "regression":
        loss = nn.functional.mse_loss(out.gather(-1, index.unsqueeze(-1)).squeeze(-1), y)
    else:
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def _alrao_step(model: AlraoModel, opt: AlraoSGD, batch: tuple) -> None:
    """The user's loop: forward, loss, backward, optimizer step, switch update."""
    x, y, index = batch
    out = model(x)
    if index is not None:
        out = out.gather(index)
    loss, head_ll = model.loss(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.switch.update(head_ll)


def interleaved_times(
    runs: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per step of each run, one value per round: the runs are timed in turn in ``rounds``
    rounds of ``steps`` steps each (so machine noise hits them alike)."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def interleaved_ratio(
    sgd_step: Callable[[], None], alrao_step: Callable[[], None], rounds: int, steps: int, warmup: int = 3
) -> tuple[float, float, float]:
    """Median SGD step time, median Alrao step time and median ratio over the rounds of
    :func:`interleaved_times`."""
    times = interleaved_times({"sgd": sgd_step, "alrao": alrao_step}, rounds, steps, warmup)
    sgd, alrao = times["sgd"], times["alrao"]
    ratio = statistics.median(b / a for a, b in zip(sgd, alrao, strict=True))
    return statistics.median(sgd), statistics.median(alrao), ratio


def run_case(case: Case, rounds: int, steps: int) -> dict[str, float]:
    """Median step times (seconds) and ratios of the fused and the user's-loop Alrao steps to SGD."""
    torch.manual_seed(0)
    body, head = case.body(), case.head()
    plain = nn.Sequential(copy.deepcopy(body), copy.deepcopy(head))
    sgd = torch.optim.SGD(plain.parameters(), lr=1e-3)
    # A narrow interval keeps the benchmark numerically tame; the cost does not depend on it.
    fused_model = AlraoModel(copy.deepcopy(body), copy.deepcopy(head), case.n_heads, case.task)
    fused = AlraoStep(fused_model, AlraoSGD(fused_model, eta_min=1e-4, eta_max=1e-3, seed=0))
    user_model = AlraoModel(body, head, case.n_heads, case.task)
    user_opt = AlraoSGD(user_model, eta_min=1e-4, eta_max=1e-3, seed=0)
    batch = case.make_batch(torch.Generator().manual_seed(0))
    x, y, index = batch
    runs = {
        "sgd": lambda: _sgd_step(plain, sgd, case.task, batch),
        "fused": lambda: fused(x, y, index=index),
        "user": lambda: _alrao_step(user_model, user_opt, batch),
    }
    times = interleaved_times(runs, rounds, steps)
    return {
        "sgd_s": statistics.median(times["sgd"]),
        "fused_s": statistics.median(times["fused"]),
        "user_s": statistics.median(times["user"]),
        "fused_ratio": statistics.median(f / s for s, f in zip(times["sgd"], times["fused"], strict=True)),
        "user_ratio": statistics.median(u / s for s, u in zip(times["sgd"], times["user"], strict=True)),
        "aten_calls": aten_calls(runs) if PROFILE else {},
        "python_calls": python_calls(runs) if PROFILE else {},
    }


PROFILE = False


def aten_calls(runs: dict[str, Callable[[], None]]) -> dict[str, int]:
    """Top-level aten calls (not counting the ones nested in another) of one call of each run."""
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        counts[name] = sum(
            1 for e in prof.events()
            if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        )
    return counts


def python_calls(runs: dict[str, Callable[[], None]]) -> dict[str, int]:
    """Python-level calls (Python functions and the C functions Python calls, ``sys.setprofile``'s events) of
    one call of each run: what costs on a small network besides the aten calls."""
    counts = {}
    for name, run in runs.items():
        n = 0

        def count(_frame: Any, event: str, _arg: Any) -> None:
            nonlocal n
            n += event in ("call", "c_call")

        sys.setprofile(count)
        try:
            run()
        finally:
            sys.setprofile(None)
        counts[name] = n
    return counts


def rate_build_time() -> float:
    """Seconds to sample per-unit rates for a VGG19-sized CNN (20M parameters)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    vgg = nn.Sequential(*layers)
    start = time.perf_counter()
    sample_unit_rates(vgg, 1e-5, 10.0, torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main() -> None:
    global PROFILE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds per case")
    parser.add_argument("--only", type=str, default="", help="run only cases whose name contains this")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every ratio")
    parser.add_argument("--profile", action="store_true", help="also count the aten and Python calls per step")
    args = parser.parse_args()
    PROFILE = args.profile
    torch.set_num_threads(1)
    results = {}
    if not args.json:
        print(f"torch {torch.__version__}, 1 thread; ratio = median over {args.rounds} rounds")
        print(f"{'case':46s} {'SGD':>8s} {'fused':>8s} {'ratio':>6s} {'target':>6s} {'user':>8s} {'ratio':>6s} "
              f"{'target':>6s}")
    for case in CASES:
        if args.only not in case.name:
            continue
        steps = 200 if "MLP" in case.name else 5
        r = results[case.name] = run_case(case, args.rounds, steps)
        r["target"], r["user_target"] = case.target, case.user_target
        if not args.json:
            ok = "ok" if r["fused_ratio"] <= case.target else "MISS"
            user = "" if case.user_target is None else (
                f"{case.user_target:6.2f} {'ok' if r['user_ratio'] <= case.user_target else 'MISS'}")
            print(f"{case.name:46s} {r['sgd_s'] * 1e6:6.0f}us {r['fused_s'] * 1e6:6.0f}us {r['fused_ratio']:6.2f} "
                  f"{case.target:6.2f} {ok:4s} {r['user_s'] * 1e6:6.0f}us {r['user_ratio']:6.2f} {user}")
            if r["aten_calls"]:
                print(f"{'':46s} aten calls per step: {r['aten_calls']}, Python calls: {r['python_calls']}")
    build = rate_build_time()
    if args.json:
        print(json.dumps({"cases": results, "vgg19_rates_seconds": build}))
    else:
        print(f"per-unit rates for a VGG19-sized CNN built in {build * 1e3:.1f} ms (target < 200 ms)")


if __name__ == "__main__":
    main()
