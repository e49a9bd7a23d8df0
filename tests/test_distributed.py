"""Data-parallel Alrao: 2 gloo processes agree with each other and with 1 process on the same global batches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from alrao_rl.supervised.distributed import (
    DistContext,
    average_across_ranks,
    close_process_group,
    init_process_group,
    shard_bounds,
    wrap_ddp,
)
from alrao_rl.supervised.models import CharLSTM
from alrao_rl.supervised.train import SupervisedNet, TrainConfig, make_optimizer, train_step

STEPS_BATCHES = (8, 8, 7, 6)  # global batch sizes; 7 gives uneven shards (4 + 3)
LSTM_SEGMENTS = 3


def _mlp_run(ctx: DistContext) -> dict[str, Any]:
    """Alrao on a tiny conv + MLP body (no BatchNorm), global batches cut into this rank's shards."""
    config = TrainConfig(task="cifar", method="alrao", eta_min=1e-3, eta_max=0.3, heads=4, seed=3)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 2 * 2, 16), nn.Tanh())
    net = SupervisedNet(body, nn.Linear(16, 5), "alrao", heads=4)
    optimizer = make_optimizer(net, config)
    runner = wrap_ddp(net, ctx)
    gen = torch.Generator().manual_seed(1)
    for n in STEPS_BATCHES:
        x, y = torch.randn(n, 3, 3, 3, generator=gen), torch.randint(0, 5, (n,), generator=gen)
        a, b = shard_bounds(n, ctx)
        train_step(net, optimizer, x[a:b], y[a:b], runner=runner, ctx=ctx, weight=(b - a) * ctx.world_size / n)
    return _result(net, optimizer)


def _bn_body() -> nn.Module:
    # no bias before a BatchNorm (its gradient is zero there: the test checks that every parameter moves)
    return nn.Sequential(nn.Conv2d(3, 4, 2, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.Tanh())


def _bn_run(ctx: DistContext) -> dict[str, Any]:
    """Alrao on a conv body with BatchNorm (as every CIFAR model has): under DDP its statistics must be
    those of the global batch, not of this rank's shard; then evaluation on rank 0's running statistics."""
    config = TrainConfig(task="cifar", method="alrao", eta_min=1e-3, eta_max=0.3, heads=4, seed=3)
    torch.manual_seed(0)
    net = SupervisedNet(_bn_body(), nn.Linear(16, 5), "alrao", heads=4)
    optimizer = make_optimizer(net, config)
    runner = wrap_ddp(net, ctx)
    gen = torch.Generator().manual_seed(1)
    for n in STEPS_BATCHES:
        x, y = torch.randn(n, 3, 3, 3, generator=gen), torch.randint(0, 5, (n,), generator=gen)
        a, b = shard_bounds(n, ctx)
        train_step(net, optimizer, x[a:b], y[a:b], runner=runner, ctx=ctx, weight=(b - a) * ctx.world_size / n)
    result = _result(net, optimizer)
    net.eval()
    result["eval"] = net(torch.randn(5, 3, 3, 3, generator=gen))[0].prediction
    return result


def _lstm_run(ctx: DistContext) -> dict[str, Any]:
    """Alrao on a tiny LSTM (no dropout): 4 global streams, each rank 2, hidden state carried."""
    config = TrainConfig(task="ptb", method="alrao", eta_min=1e-2, eta_max=1.0, heads=3, seed=5)
    torch.manual_seed(0)
    body = CharLSTM(7, embedding_dim=6, hidden_size=8, num_layers=1, dropout=0.0)
    net = SupervisedNet(body, nn.Linear(8, 7), "alrao", heads=3, recurrent=True)
    optimizer = make_optimizer(net, config)
    runner = wrap_ddp(net, ctx)
    data = torch.randint(0, 7, (LSTM_SEGMENTS * 5 + 1, 4), generator=torch.Generator().manual_seed(2))
    a, b = shard_bounds(4, ctx)
    hidden = None
    for k in range(LSTM_SEGMENTS):
        x, y = data[5 * k : 5 * k + 5, a:b], data[5 * k + 1 : 5 * k + 6, a:b]
        if hidden is not None:
            hidden = (hidden[0].detach(), hidden[1].detach())
        _, hidden = train_step(net, optimizer, x, y, runner=runner, hidden=hidden, ctx=ctx)
    return _result(net, optimizer)


def _dead_head_run(ctx: DistContext) -> dict[str, Any]:
    """Head 1's logits overflow on the second half of the batch only (rank 1's shard with 2 ranks)."""
    config = TrainConfig(task="cifar", method="alrao", eta_min=1e-3, eta_max=0.3, heads=4, seed=3)
    torch.manual_seed(0)
    net = SupervisedNet(nn.Identity(), nn.Linear(4, 3), "alrao", heads=4)
    with torch.no_grad():
        net.model.heads.weight[1, :, 0] = 1e37  # finite, but times 100 it is inf
    optimizer = make_optimizer(net, config)
    runner = wrap_ddp(net, ctx)
    x = torch.zeros(4, 4)
    x[:2, 0], x[2:, 0] = 1e-3, 100.0
    y = torch.tensor([0, 1, 2, 0])
    a, b = shard_bounds(4, ctx)
    train_step(net, optimizer, x[a:b], y[a:b], runner=runner, ctx=ctx)
    return _result(net, optimizer)


def _result(net: SupervisedNet, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in net.named_parameters()},
        "statistics": {k: v.clone() for k, v in net.named_buffers() if k.endswith(("running_mean", "running_var"))},
        "rates": {k: optimizer.state[p]["alrao_rate"].clone() for k, p in net.named_parameters()},
        "posterior": net.model.switch.posterior.clone(),
    }


def _worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_process_group(rank, world_size, init_method, device="cpu")
    try:
        runs: dict[str, Any] = {"mlp": _mlp_run(ctx), "lstm": _lstm_run(ctx), "dead": _dead_head_run(ctx),
                                "bn": _bn_run(ctx)}
        try:  # what CpuSyncBatchNorm is for
            nn.SyncBatchNorm(4).train()(torch.randn(4, 4, 2, 2))
            runs["torch_sync_bn_on_cpu"] = "ran"
        except ValueError as e:
            runs["torch_sync_bn_on_cpu"] = str(e)
        torch.save(runs, Path(out_dir) / f"rank{rank}.pt")
    finally:
        close_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ddp")
    init = f"file://{folder / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    torch.set_num_threads(1)
    return {"mlp": _mlp_run(DistContext()), "lstm": _lstm_run(DistContext()), "bn": _bn_run(DistContext())}


def test_a_head_dead_on_one_rank_only_keeps_the_ranks_weights_identical(two_ranks: list[dict[str, Any]]) -> None:
    """Rank 1 alone sees head 1 overflow: it is left out of the loss there, not zeroed there only."""
    a, b = two_ranks[0]["dead"], two_ranks[1]["dead"]
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert torch.all(a["params"]["model.heads.weight"][1, :, 0] > 1e36)  # not frozen at 0
    assert torch.equal(a["posterior"], b["posterior"])


@pytest.mark.parametrize("case", ["mlp", "lstm", "bn"])
def test_ranks_have_identical_unit_rates_and_switch_posteriors(two_ranks: list[dict[str, Any]], case: str) -> None:
    a, b = two_ranks[0][case], two_ranks[1][case]
    for name in a["rates"]:
        assert torch.equal(a["rates"][name], b["rates"][name]), name
    assert torch.equal(a["posterior"], b["posterior"])
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert not torch.allclose(a["posterior"], torch.full_like(a["posterior"], 1 / len(a["posterior"])))  # it moved


@pytest.mark.parametrize("case", ["mlp", "lstm", "bn"])
def test_two_processes_match_one_process_on_the_same_global_batches(
    two_ranks: list[dict[str, Any]], one_process: dict[str, Any], case: str
) -> None:
    """With BatchNorm too: its layers are synchronized under DDP (statistics of the global batch)."""
    ddp, single = two_ranks[0][case], one_process[case]
    for name in single["rates"]:
        assert torch.equal(ddp["rates"][name], single["rates"][name]), name
    initial = _initial_params(case)
    for name, value in single["params"].items():
        assert not torch.equal(value, initial[name]), f"{name} did not move"
        torch.testing.assert_close(ddp["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(ddp["posterior"], single["posterior"], rtol=1e-5, atol=1e-9)
    assert ddp["statistics"].keys() == single["statistics"].keys() and (case != "bn" or single["statistics"])
    for name, value in single["statistics"].items():
        torch.testing.assert_close(ddp["statistics"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    if case == "bn":
        torch.testing.assert_close(two_ranks[1]["bn"]["statistics"], ddp["statistics"])
        torch.testing.assert_close(ddp["eval"], single["eval"], rtol=1e-5, atol=1e-6)


def _initial_params(case: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    if case == "mlp":
        body = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(16, 16), nn.Tanh())
        net = SupervisedNet(body, nn.Linear(16, 5), "alrao", heads=4)
    elif case == "bn":
        net = SupervisedNet(_bn_body(), nn.Linear(16, 5), "alrao", heads=4)
    else:
        body = CharLSTM(7, embedding_dim=6, hidden_size=8, num_layers=1, dropout=0.0)
        net = SupervisedNet(body, nn.Linear(8, 7), "alrao", heads=3, recurrent=True)
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def test_torch_sync_batch_norm_does_not_run_on_cpu_hence_the_own_one(two_ranks: list[dict[str, Any]]) -> None:
    """If a torch release runs nn.SyncBatchNorm on CPU, sync_batch_norm can use it there too (and the README
    can drop its exception)."""
    assert "expected input tensor to be on GPU" in two_ranks[0]["torch_sync_bn_on_cpu"]


def test_cpu_sync_batch_norm_in_one_process_is_batch_norm() -> None:
    from alrao_rl.supervised.distributed import CpuSyncBatchNorm, sync_batch_norm

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 2), nn.BatchNorm2d(4))
    params = {id(p) for p in plain.parameters()}
    assert sync_batch_norm(plain, DistContext()) is plain and isinstance(plain[1], nn.BatchNorm2d)
    synced = sync_batch_norm(plain, DistContext(rank=0, world_size=2))  # no process group needed to convert
    assert synced is plain and isinstance(plain[1], CpuSyncBatchNorm)
    assert {id(p) for p in plain.parameters()} == params  # an optimizer built before keeps its parameters
    reference = nn.BatchNorm2d(4)
    reference.load_state_dict(plain[1].state_dict())
    x = torch.randn(6, 4, 3, 3)
    for mode in (True, False):
        plain[1].train(mode)
        reference.train(mode)
        torch.testing.assert_close(plain[1](x), reference(x))
    torch.testing.assert_close(plain[1].running_var, reference.running_var)


@pytest.mark.parametrize(
    ("n", "world", "parts"),
    [(8, 2, [(0, 4), (4, 8)]), (7, 2, [(0, 4), (4, 7)]), (5, 3, [(0, 2), (2, 4), (4, 5)]), (3, 1, [(0, 3)])],
)
def test_shards_are_contiguous_cover_the_batch_and_differ_by_at_most_one(
    n: int, world: int, parts: list[tuple[int, int]]
) -> None:
    assert [shard_bounds(n, DistContext(rank=r, world_size=world)) for r in range(world)] == parts


def test_one_process_average_is_the_weighted_values() -> None:
    values = torch.tensor([-1.0, -2.0])
    assert average_across_ranks(values, DistContext()) is values
    torch.testing.assert_close(average_across_ranks(values, DistContext(), weight=0.5), values * 0.5)


def test_uneven_shard_weights_turn_rank_means_into_the_global_mean() -> None:
    x = torch.randn(7)
    world = 2
    means = []
    for r in range(world):
        a, b = shard_bounds(7, DistContext(rank=r, world_size=world))
        means.append(x[a:b].mean() * (b - a) * world / 7)
    assert math.isclose(float(sum(means) / world), float(x.mean()), rel_tol=1e-6)
