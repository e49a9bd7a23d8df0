"""The floor of ``benchmarks/bench_floor.py`` does the full Alrao step's arithmetic (so its time bounds it)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType

import pytest
import torch

from alrao_rl import AlraoModel, AlraoSGD
from alrao_rl.rates import sample_unit_rates

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as top-level modules
    import bench_floor
    import bench_step

    return bench_floor, bench_step


@pytest.mark.parametrize("which", [0, 3])  # (a) gathered regression, (d) LSTM classification
def test_floor_step_updates_like_the_full_step(bench: tuple[ModuleType, ModuleType], which: int) -> None:
    bench_floor, bench_step = bench
    case = bench_step.CASES[which]
    torch.manual_seed(0)
    body, head = case.body(), case.head()
    full = AlraoModel(copy.deepcopy(body), copy.deepcopy(head), case.n_heads, case.task)
    opt = AlraoSGD(full, eta_min=1e-4, eta_max=1e-1, seed=3)
    bare = AlraoModel(body, head, case.n_heads, case.task)
    rates = sample_unit_rates(bare, 1e-4, 1e-1, torch.Generator().manual_seed(3))
    params = dict(bare.named_parameters())
    floor = bench_floor._floor_step(case, bare, bench_floor._BareSGD([params[k] for k in rates], list(rates.values())))
    before = copy.deepcopy(full.state_dict())
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = case.make_batch(gen)
        bench_step._alrao_step(full, opt, batch)
        floor(batch)
    for (name, a), b in zip(full.state_dict().items(), bare.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert int(full.switch.steps) == 3
    assert not torch.equal(before["heads.weight"], full.heads.weight.detach())
