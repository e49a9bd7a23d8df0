"""Multi-process (data-parallel) training: process groups, batch shards and the Alrao switch across ranks.

Every rank holds the same network, the same Alrao per-unit rates (the optimizer is seeded with the
run's seed on every rank) and the same switch. A *global* batch of ``B x W`` examples (``B`` per rank,
``W`` ranks) is cut into ``W`` shards; each rank runs forward and backward on its shard,
``DistributedDataParallel`` averages the gradients, and :func:`average_across_ranks` averages each
head's minibatch log-likelihood before ``switch.update``, so the switch sees the global batch's
log-likelihoods and every rank's posterior stays identical. The result is the single-process step on
the global batch (up to floating-point summation order).

**DDP and Alrao outputs.** ``DDP(net)(x)`` returns whatever ``net`` returns; with
``find_unused_parameters=False`` (the default, used here) DDP neither inspects nor rewraps the output,
so an :class:`alrao_rl.AlraoOutput` passes through untouched. The heads' gradients are produced by the
Alrao loss's ``autograd.Function`` (their ``AccumulateGrad`` hooks fire as for any parameter), so DDP
all-reduces them with the body's. ``find_unused_parameters=True`` must *not* be used: DDP would look for
tensors in the output, find none inside the custom ``AlraoOutput`` object and treat every parameter as
unused.

**BatchNorm.** A BatchNorm layer normalizes with the mean and variance of the batch it sees; under DDP
each rank would see only its shard, and a 2-process run would no longer be the 1-process run on the
global batch. :func:`wrap_ddp` therefore synchronizes every BatchNorm layer first
(:func:`sync_batch_norm`): the statistics (and the running averages) are those of the global batch,
and the backward pass all-reduces the two sums that couple the samples. On GPU that is torch's
``nn.SyncBatchNorm``; torch's runs on GPUs only (on CPU it raises "SyncBatchNorm expected input tensor
to be on GPU"), so on CPU (gloo) the layers become :class:`CpuSyncBatchNorm`, which computes the same
thing with ``all_gather``/``all_reduce``.

Launch with ``torchrun --nproc-per-node W script.py ...`` (:func:`context_from_env`) or spawn ``W``
processes from one (:func:`spawn`). The backend is gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

__all__ = [
    "CpuSyncBatchNorm",
    "DistContext",
    "all_reduce_sum",
    "average_across_ranks",
    "backend_for",
    "broadcast_buffers",
    "close_process_group",
    "context_from_env",
    "init_process_group",
    "resolve_device",
    "shard_bounds",
    "spawn",
    "sync_batch_norm",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and its device.

    :param rank: global rank, ``0 <= rank < world_size``.
    :param world_size: number of processes (1: no process group).
    :param device: the device this rank computes on.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """Whether collectives are needed (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and shows the progress bar."""
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The device a rank computes on.

    :param device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` (the rank's
        local GPU) or an explicit ``"cuda:K"``.
    :param local_rank: rank on this machine; picks the GPU for ``"auto"`` and ``"cuda"``.
    :raises ValueError: for an unknown device string or CUDA asked but unavailable.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {device!r}")


def backend_for(device: torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(rank: int, world_size: int, init_method: str, device: str = "auto",
                       local_rank: int | None = None) -> DistContext:
    """Join a process group (when ``world_size > 1``) and return this rank's context.

    :param rank: this process's rank.
    :param world_size: number of processes.
    :param init_method: torch rendezvous URL (``"file:///tmp/x"``, ``"tcp://host:port"``, ``"env://"``).
    :param device: see :func:`resolve_device`.
    :param local_rank: rank on this machine (default: ``rank``).
    """
    local = rank if local_rank is None else local_rank
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1:
        kwargs: dict[str, Any] = {}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(backend_for(dev), init_method=init_method, rank=rank, world_size=world_size,
                                **kwargs)
    return DistContext(rank, world_size, dev)


def context_from_env(device: str = "auto") -> DistContext | None:
    """The context of a process started by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``
    set), after joining its process group; ``None`` when not launched that way.

    :param device: see :func:`resolve_device`.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return init_process_group(rank, world_size, "env://", device, local_rank)


def close_process_group() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(net: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(net)`` when ``ctx`` has several ranks, else ``net`` itself.

    With several ranks, the BatchNorm layers inside ``net`` are first synchronized in place
    (:func:`sync_batch_norm`; same parameters and buffers, so an optimizer built before keeps them).
    ``find_unused_parameters`` stays False (see the module docstring: an ``AlraoOutput`` must pass
    through DDP untouched).

    :param net: the network, already on ``ctx.device``.
    :param ctx: this rank's context.
    """
    if not ctx.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    net = sync_batch_norm(net, ctx)
    device_ids = [ctx.device] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=False)


def sync_batch_norm(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Make the BatchNorm layers of ``module`` normalize with the statistics of the global batch.

    Each ``BatchNorm1d/2d/3d`` becomes ``nn.SyncBatchNorm`` on GPU and :class:`CpuSyncBatchNorm` on CPU
    (torch's runs on GPUs only), holding the very same parameters and buffers; the replacement is done
    in place in ``module``'s children. One process: ``module`` unchanged.

    :param module: the network.
    :param ctx: this rank's context.
    :return: ``module`` (or the new layer, if ``module`` itself is a BatchNorm layer).
    """
    if not ctx.distributed:
        return module
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cpu_sync(module)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                        CpuSyncBatchNorm)):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameter objects
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, for CPU process groups (gloo), where torch's
    ``nn.SyncBatchNorm`` does not run. Same parameters, buffers and results as ``nn.BatchNorm*d`` applied
    to the concatenation of the ranks' batches (up to summation order).

    Training with several ranks: each rank's count, mean and sum of squared deviations per channel are
    gathered and merged (``mean = sum_r n_r mean_r / N``, ``M2 = sum_r M2_r + n_r (mean_r - mean)^2``),
    the output is ``(x - mean) / sqrt(M2 / N + eps) * weight + bias`` and the running variance takes the
    unbiased ``M2 / (N - 1)``. Backward all-reduces ``sum dy`` and ``sum dy * x_hat`` per channel (the
    gradient of the sum of the ranks' losses, which DDP then averages, like the other gradients). In
    evaluation mode, or in one process, it is ``F.batch_norm``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        running = self.training and self.track_running_stats
        if not (use_batch and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return nn.functional.batch_norm(
                input,
                self.running_mean if not self.training or self.track_running_stats else None,
                self.running_var if not self.training or self.track_running_stats else None,
                self.weight, self.bias, use_batch, factor, self.eps,
            )
        return _SyncBatchNorm.apply(input, self.weight, self.bias, self.running_mean if running else None,
                                    self.running_var if running else None, self.eps, factor)


class _SyncBatchNorm(torch.autograd.Function):
    """The training-mode forward and backward of :class:`CpuSyncBatchNorm` over the default process group."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, eps: float, momentum: float) -> Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xd = x.detach().double()
        n = x.numel() // c
        local_mean = xd.mean(dims) if n > 0 else xd.new_zeros(c)
        local_m2 = ((xd - local_mean.view(shape)) ** 2).sum(dims) if n > 0 else xd.new_zeros(c)
        local = torch.stack([local_mean.new_full((c,), float(n)), local_mean, local_m2])
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        counts, means, m2s = torch.stack(parts).unbind(1)  # each [world, C]
        total = counts.sum(0)
        if bool((total < 1).any()):
            raise ValueError("CpuSyncBatchNorm: the global batch is empty")
        mean = (counts * means).sum(0) / total
        m2 = (m2s + counts * (means - mean) ** 2).sum(0)
        invstd = torch.rsqrt(m2 / total + eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = m2 / (total - 1).clamp(min=1)
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        mean_x, invstd_x = mean.to(x.dtype).view(shape), invstd.to(x.dtype).view(shape)
        x_hat = (x - mean_x) * invstd_x
        ctx.save_for_backward(x_hat, weight, invstd_x)
        ctx.total, ctx.dims, ctx.shape = float(total[0]), dims, shape
        out = x_hat
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x_hat, weight, invstd_x = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = (grad_out * x_hat).sum(dims)
        totals = torch.stack([sum_dy, sum_dy_xhat]).double()
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        mean_dy, mean_dy_xhat = (totals / ctx.total).to(grad_out.dtype).unbind(0)
        scale = invstd_x if weight is None else invstd_x * weight.view(shape)
        grad_x = scale * (grad_out - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape))
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None


def shard_bounds(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's part ``[start, stop)`` of ``n`` examples: ``W`` contiguous parts whose sizes differ
    by at most one (``torch.tensor_split``'s), rank ``r`` taking part ``r``.

    :param n: size of the global batch (or evaluation set).
    :param ctx: this rank's context.
    """
    w, r = ctx.world_size, ctx.rank
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def average_across_ranks(values: Tensor, ctx: DistContext, weight: float = 1.0) -> Tensor:
    """``sum_r weight_r * values_r / W`` over the ranks (a new tensor; the input is kept).

    With ``weight_r = n_r W / n`` (rank ``r`` holding ``n_r`` of the global batch's ``n`` examples)
    this turns per-rank minibatch means into the global batch's mean; equal shards have weight 1.

    :param values: this rank's values (e.g. each head's minibatch-mean log-likelihood, ``[N]``).
    :param ctx: this rank's context.
    :param weight: this rank's weight.
    """
    if not ctx.distributed:
        return values if weight == 1.0 else values * weight
    total = values.detach().clone() if weight == 1.0 else values.detach() * weight
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.div_(ctx.world_size)


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics, switch state), in place.

    DDP broadcasts them at the start of each forward; after the last training step of an epoch each
    rank's BatchNorm statistics include its own shard, so call this before evaluating.

    :param module: the (unwrapped) network.
    :param ctx: this rank's context.
    """
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum plain numbers over the ranks (float64; identity for one process).

    :param values: this rank's numbers.
    :param ctx: this rank's context.
    """
    if not ctx.distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.tolist()


def _spawned(rank: int, fn: Callable[..., Any], world_size: int, init_method: str, device: str,
             args: tuple[Any, ...]) -> None:
    """Entry point of a spawned rank: join the group, run ``fn(ctx, *args)``, leave the group."""
    ctx = init_process_group(rank, world_size, init_method, device)
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        fn(ctx, *args)
        if ctx.distributed:  # no rank tears the group down while another one still talks to it
            dist.barrier()
    finally:
        close_process_group()


def spawn(fn: Callable[..., Any], nproc: int, args: tuple[Any, ...] = (), device: str = "auto") -> None:
    """Run ``fn(ctx, *args)`` in ``nproc`` new processes forming one process group.

    The rendezvous is a ``file://`` URL in a fresh temporary folder. Tensors in ``args`` reach the
    children through shared memory (torch's multiprocessing pickler). On CPU each rank uses
    ``cpu_count // nproc`` threads.

    :param fn: an importable (module-level) function taking the :class:`DistContext` first.
    :param nproc: number of processes (>= 1).
    :param args: further arguments of ``fn``.
    :param device: see :func:`resolve_device`.
    :raises torch.multiprocessing.ProcessRaisedException: when a rank raised (its traceback is in
        the message).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    with tempfile.TemporaryDirectory(prefix="alrao-dist-") as folder:
        init_method = "file://" + os.path.join(folder, "rendezvous")
        mp.spawn(_spawned, args=(fn, nproc, init_method, device, args), nprocs=nproc, join=True)
