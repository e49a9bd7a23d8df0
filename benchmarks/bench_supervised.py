"""Time of one Alrao training step / one plain SGD step of the supervised loop, side by side.

Both steps are :func:`alrao_rl.supervised.train.train_step` on the same network, built twice from the
same initial weights: once with one output layer and ``torch.optim.SGD`` (cross-entropy), once with
Alrao's heads and ``AlraoSGD`` (mixture loss, closed-form head gradients, switch update). They run
interleaved in one process with one torch thread; the ratio is the median over rounds of (Alrao time /
SGD time), so machine noise hits both alike.

Cases (targets from issue 13):

* VGG19 at width 1/4 (channels 16..128, BatchNorm), 32 x 32 images, batch 32, 10 classes, 10 heads: <= 1.05
* the PTB character LSTM (embedding 100, 2 x 100 LSTM, dropout 0.2), 20 streams x 70 steps, 50 symbols,
  6 heads, hidden state carried between steps: <= 1.15

    python benchmarks/bench_supervised.py             # both cases, 7 rounds
    python benchmarks/bench_supervised.py --rounds 3  # quicker
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from bench_step import interleaved_ratio  # sibling script: benchmarks/ is on sys.path
from torch import Tensor, nn


@dataclass
class Case:
    """One benchmark: a network factory, its inputs and the ratio to stay under."""

    name: str
    target: float
    build: Callable[[], tuple[nn.Module, nn.Linear]]
    heads: int
    recurrent: bool
    batch: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    steps: int


def _vgg() -> tuple[nn.Module, nn.Linear]:
    from alrao_rl.supervised.models import make_cifar_model

    return make_cifar_model("vgg19", width=0.25)


def _lstm() -> tuple[nn.Module, nn.Linear]:
    from alrao_rl.supervised.models import make_char_lstm

    return make_char_lstm(50)


CASES = [
    Case("VGG19 width 1/4, batch 32, 10 heads", 1.05, _vgg, 10, False,
         lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)), 3),
    Case("PTB char LSTM 2x100, 20x70, 50 symbols, 6 heads", 1.15, _lstm, 6, True,
         lambda g: (torch.randint(0, 50, (70, 20), generator=g), torch.randint(0, 50, (70, 20), generator=g)), 5),
]


def _stepper(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, recurrent: bool) -> Callable:
    from alrao_rl.supervised.train import train_step

    state: dict[str, tuple[Tensor, Tensor] | None] = {"hidden": None}

    def step() -> None:
        hidden = state["hidden"]
        if recurrent and hidden is not None:
            hidden = (hidden[0].detach(), hidden[1].detach())
        _, state["hidden"] = train_step(net, optimizer, x, y, hidden=hidden)

    return step


def run_case(case: Case, rounds: int) -> tuple[float, float, float]:
    """Median SGD step time, median Alrao step time and median ratio over ``rounds`` rounds."""
    from alrao_rl.supervised.train import SupervisedNet, TrainConfig, make_optimizer

    torch.manual_seed(0)
    body, head = case.build()
    plain = SupervisedNet(copy.deepcopy(body), copy.deepcopy(head), "sgd", recurrent=case.recurrent)
    alrao = SupervisedNet(body, head, "alrao", heads=case.heads, recurrent=case.recurrent)
    task = "ptb" if case.recurrent else "cifar"
    # A narrow interval keeps the benchmark numerically tame; the cost does not depend on it.
    sgd_opt = make_optimizer(plain, TrainConfig(task=task, method="sgd", lr=1e-3))
    alrao_opt = make_optimizer(alrao, TrainConfig(task=task, method="alrao", eta_min=1e-4, eta_max=1e-3,
                                                  heads=case.heads))
    plain.train()
    alrao.train()
    x, y = case.batch(torch.Generator().manual_seed(0))
    sgd_step = _stepper(plain, sgd_opt, x, y, case.recurrent)
    alrao_step = _stepper(alrao, alrao_opt, x, y, case.recurrent)
    return interleaved_ratio(sgd_step, alrao_step, rounds, case.steps, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per case")
    parser.add_argument("--only", type=str, default="", help="run only cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; ratio = median over {args.rounds} rounds of Alrao / SGD step time")
    print(f"{'case':50s} {'SGD step':>10s} {'Alrao step':>11s} {'ratio':>6s} {'target':>7s}")
    for case in CASES:
        if args.only not in case.name:
            continue
        t_sgd, t_alrao, ratio = run_case(case, args.rounds)
        ok = "ok" if ratio <= case.target else "MISS"
        print(f"{case.name:50s} {t_sgd * 1e3:8.1f}ms {t_alrao * 1e3:9.1f}ms {ratio:6.3f} {case.target:6.2f} {ok}")


if __name__ == "__main__":
    main()
