"""The supervised training loop of the Alrao paper (Section 5), shared by CIFAR-10 and Penn Treebank.

One epoch::

    for each minibatch (x, y) of the training set (CIFAR: shuffled, augmented; PTB: BPTT segments):
        out = net(x)                       # Alrao: N heads + switch; baselines: one output layer
        loss = Alrao mixture NLL, or cross-entropy
        gradient step (AlraoSGD, SGD or Adam); Alrao: switch update with each head's log-likelihood
    validation loss and accuracy (Alrao: of the switch's mixture, ``out.prediction``)
    early stopping: stop once the validation loss has not improved for ``patience`` epochs

The weights of the epoch with the best validation loss are then evaluated on the test set.

**Methods.** ``alrao``: :class:`alrao_rl.AlraoSGD` with per-unit rates log-uniform in
``[eta_min, eta_max]`` and ``heads`` output layers averaged by the switch (CIFAR defaults
``[1e-5, 10]``, 10 heads; PTB ``[1e-3, 100]``, 6 heads, as in the paper). ``sgd``: ``torch.optim.SGD``
at ``lr`` (required). ``adam``: ``torch.optim.Adam`` with its defaults (``lr`` 1e-3). Baselines have
one output layer: ``head(body(x))``.

**Metrics.** CIFAR losses are in nats per image; PTB losses in bits per symbol (nats / ln 2), bits
per character at character level. Accuracy is the fraction of correct argmax predictions.

**Outputs** in ``logdir``: ``evals.csv`` (``epoch,train_loss,valid_loss,valid_accuracy``),
``summary.json``, ``checkpoint.pt`` (every epoch end, atomic), ``best.pt`` (weights of the best
validation epoch) and TensorBoard events. ``resume=True`` continues from ``checkpoint.pt`` exactly:
the data order, augmentation and dropout of each epoch are drawn from seeds derived from
``(seed, epoch)``, so no random state has to be saved.

**Several processes.** Pass a :class:`~alrao_rl.supervised.distributed.DistContext` (or use
:func:`spawn_train_classifier`): ``batch_size`` is then per rank and the global batch is
``batch_size x world_size`` (see :mod:`alrao_rl.supervised.distributed`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from alrao_rl import AlraoAdam, AlraoModel, AlraoOutput, AlraoSGD, AlraoStep
from alrao_rl.checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    stop_requests,
    write_text_atomic,
)
from alrao_rl.rates import check_interval
from alrao_rl.supervised.cifar import CifarBatches, channel_stats, load_cifar10, normalize, split_train_valid
from alrao_rl.supervised.distributed import (
    DistContext,
    all_reduce_sum,
    average_across_ranks,
    broadcast_buffers,
    shard_bounds,
    spawn,
    wrap_ddp,
)
from alrao_rl.supervised.models import CIFAR_MODELS, CharLSTM, make_char_lstm, make_cifar_model
from alrao_rl.supervised.ptb import Vocabulary, batchify, bptt_segments, load_ptb

__all__ = [
    "EVALS_COLUMNS",
    "METHODS",
    "SUMMARY_KEYS",
    "TASK_DEFAULTS",
    "CifarData",
    "Classifier",
    "PtbData",
    "SupervisedNet",
    "TrainConfig",
    "build_network",
    "check_data",
    "evaluate",
    "load_resumable",
    "make_optimizer",
    "prepare_cifar",
    "prepare_ptb",
    "spawn_train_classifier",
    "train_classifier",
    "train_step",
]

logger = logging.getLogger(__name__)

Hidden = tuple[Tensor, Tensor]

METHODS: tuple[str, ...] = ("alrao", "sgd", "adam")
TASKS: tuple[str, ...] = ("cifar", "ptb")
LEVELS: tuple[str, ...] = ("char", "word")
PTB_MODELS: tuple[str, ...] = ("lstm",)

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar": {"model": "vgg19", "eta_min": 1e-5, "eta_max": 10.0, "heads": 10, "batch_size": 32},
    "ptb": {"model": "lstm", "eta_min": 1e-3, "eta_max": 100.0, "heads": 6, "batch_size": 20},
}
"""The paper's settings per task, filled in for the config fields left at None."""

EVALS_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "valid_loss", "valid_accuracy")
"""Header of ``evals.csv``."""
SUMMARY_KEYS: tuple[str, ...] = (
    "task", "model", "method", "lr", "eta_min", "eta_max", "heads", "seed", "epochs", "best_epoch",
    "test_loss", "test_accuracy", "wall_seconds",
)
"""Keys of ``summary.json``, in order."""

COMPATIBLE_KEYS: tuple[str, ...] = (
    "task", "model", "method", "lr", "eta_min", "eta_max", "heads", "seed", "batch_size", "width",
    "valid_size", "limit_train", "level", "bptt", "max_weight",
)
"""Config values a resumed run must share with the checkpoint (``epochs`` and ``patience`` may grow)."""

_CIFAR_VALID = 10_000
_SPLIT_SEED = 0  # the train/valid split is the same for every run seed, so runs compare on one set


@dataclass
class TrainConfig:
    """Everything a supervised run depends on; fields left at None take the task's paper default
    (:data:`TASK_DEFAULTS`)."""

    task: str = "cifar"
    """'cifar' (CIFAR-10 image classification) or 'ptb' (Penn Treebank next-symbol prediction)."""
    model: str | None = None
    """CIFAR: vgg19, mobilenetv2, googlenet or resnet18 (default vgg19); PTB: lstm (2 x 100 LSTM)."""
    method: str = "alrao"
    """'alrao' (AlraoSGD, N heads + switch), 'sgd' (torch SGD at lr) or 'adam' (torch Adam)."""
    lr: float | None = None
    """learning rate for sgd (required) and adam (default 1e-3); for alrao a multiplier on every
    Alrao rate (default 1.0)."""
    eta_min: float | None = None
    """Alrao: lower end of the log-uniform interval of per-unit rates (CIFAR 1e-5, PTB 1e-3)."""
    eta_max: float | None = None
    """Alrao: upper end of the interval (CIFAR 10, PTB 100)."""
    heads: int | None = None
    """Alrao: number of output layers averaged by the switch (CIFAR 10, PTB 6)."""
    epochs: int = 200
    """maximum number of epochs."""
    patience: int = 20
    """early stopping: stop after this many epochs without a better validation loss."""
    seed: int = 0
    """seeds the initial weights, the Alrao rates, the data order, augmentation and dropout."""
    batch_size: int | None = None
    """minibatch per process: images (CIFAR, default 32) or parallel text streams (PTB, default 20)."""
    width: float = 1.0
    """CIFAR: channel multiplier of the model (0.25: VGG19 with 16 to 128 channels)."""
    valid_size: int | None = None
    """CIFAR: validation images taken from the official training set (None: 10,000, or a fifth of
    that set when it is smaller)."""
    limit_train: int | None = None
    """CIFAR: train on only this many of the remaining training images (smoke runs; None: all)."""
    level: str = "char"
    """PTB: 'char' (the paper) or 'word' symbols."""
    bptt: int = 70
    """PTB: truncated backpropagation through time every this many symbols."""
    max_weight: float | None = None
    """Alrao: also freeze a unit once one of its weights exceeds this (None: only non-finite ones)."""
    eval_batch_size: int = 500
    """CIFAR: images per evaluation batch (does not change the results)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:K'."""
    log_every: int = 100
    """training steps between TensorBoard minibatch scalars."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if isinstance(self.model, str):
            self.model = self.model.lower()
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and value."""
        models = tuple(sorted(CIFAR_MODELS)) if self.task == "cifar" else PTB_MODELS
        if self.model not in models:
            raise ValueError(f"model must be one of {models} for task {self.task!r}, got {self.model!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        if self.method == "sgd" and self.lr is None:
            raise ValueError("method 'sgd' needs a learning rate (lr)")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        check_interval(self.eta_min, self.eta_max)
        for name in ("heads", "epochs", "patience", "batch_size", "bptt", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("valid_size", "limit_train"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a finite number > 0, got {self.width}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.max_weight is not None and not self.max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {self.device!r}")

    @property
    def effective_lr(self) -> float:
        """The learning rate (or Alrao multiplier) actually used."""
        if self.lr is not None:
            return self.lr
        return 1.0 if self.method == "alrao" else 1e-3

    @property
    def task_name(self) -> str:
        """``"cifar10"``, ``"ptb-char"`` or ``"ptb-word"`` (the summary's ``task``)."""
        return "cifar10" if self.task == "cifar" else f"ptb-{self.level}"


# --- data ---------------------------------------------------------------------------------------------


class CifarData(NamedTuple):
    """CIFAR-10 as the paper uses it: training / validation / test parts and the normalisation.

    :param train_images: ``uint8 [N, 3, 32, 32]``.
    :param train_labels: ``int64 [N]``.
    :param valid_images: ``uint8 [V, 3, 32, 32]``.
    :param valid_labels: ``int64 [V]``.
    :param test_images: ``uint8 [M, 3, 32, 32]``.
    :param test_labels: ``int64 [M]``.
    :param mean: per-channel mean of the training images (``[0, 1]`` scale).
    :param std: per-channel standard deviation of the training images.
    """

    train_images: Tensor
    train_labels: Tensor
    valid_images: Tensor
    valid_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor
    std: Tensor


class PtbData(NamedTuple):
    """Penn Treebank as symbol ids.

    :param vocab: the training vocabulary.
    :param train_ids: ``int64 [N]``.
    :param valid_ids: ``int64 [V]``.
    :param test_ids: ``int64 [M]``.
    """

    vocab: Vocabulary
    train_ids: Tensor
    valid_ids: Tensor
    test_ids: Tensor


def prepare_cifar(data_dir: str | Path, valid_size: int | None = None, limit_train: int | None = None) -> CifarData:
    """Load CIFAR-10 (either file format), split it and compute the normalisation (paper, Appendix D).

    :param data_dir: folder holding the batch files.
    :param valid_size: validation images (None: 10,000, or a fifth of the official training set
        when it holds fewer than 50,000 images).
    :param limit_train: keep only the first this many training images (after the split).
    :raises FileNotFoundError: when the files are missing.
    :raises ValueError: for malformed files or impossible sizes.
    """
    data = load_cifar10(data_dir)
    n = data.train_images.shape[0]
    if valid_size is None:
        valid_size = min(_CIFAR_VALID, n // 5)
    if not 0 < valid_size < n:
        raise ValueError(f"valid_size must lie in 1..{n - 1} (the official training set has {n} images), "
                         f"got {valid_size}")
    train_x, train_y, valid_x, valid_y = split_train_valid(data.train_images, data.train_labels, valid_size,
                                                           seed=_SPLIT_SEED)
    if limit_train is not None:
        if limit_train > train_x.shape[0]:
            warnings.warn(f"limit_train={limit_train} exceeds the {train_x.shape[0]} training images; using all",
                          stacklevel=2)
        train_x, train_y = train_x[:limit_train], train_y[:limit_train]
    mean, std = channel_stats(train_x)
    if bool((std <= 0).any()):
        raise ValueError(f"training images have a constant channel (std {std.tolist()}); cannot normalise")
    return CifarData(train_x, train_y, valid_x, valid_y, data.test_images, data.test_labels, mean, std)


def prepare_ptb(train_file: str | Path, valid_file: str | Path, test_file: str | Path, level: str = "char",
                char_files: bool = False) -> PtbData:
    """Read the three PTB files (see :func:`alrao_rl.supervised.ptb.load_ptb`).

    :param train_file: training text.
    :param valid_file: validation text.
    :param test_file: test text.
    :param level: ``"char"`` or ``"word"``.
    :param char_files: the files are standard ``ptb.char.*`` files (characters separated by spaces).
    """
    vocab, train, valid, test = load_ptb(train_file, valid_file, test_file, level, char_files=char_files)  # type: ignore[arg-type]
    return PtbData(vocab, train, valid, test)


def check_data(config: TrainConfig, data: CifarData | PtbData, world_size: int = 1) -> None:
    """Refuse data too small for the configuration, before any process starts.

    :param config: the run's configuration.
    :param data: what :func:`prepare_cifar` or :func:`prepare_ptb` returned.
    :param world_size: number of processes.
    :raises ValueError: naming the split that is too small.
    """
    if config.task == "cifar":
        if not isinstance(data, CifarData):
            raise TypeError(f"task 'cifar' needs CifarData, got {type(data).__name__}")
        if data.train_images.shape[0] < world_size:
            raise ValueError(f"{data.train_images.shape[0]} training images cannot feed {world_size} processes")
        return
    if not isinstance(data, PtbData):
        raise TypeError(f"task 'ptb' needs PtbData, got {type(data).__name__}")
    streams = config.batch_size * world_size
    for name, ids in (("training", data.train_ids), ("validation", data.valid_ids), ("test", data.test_ids)):
        if ids.shape[0] < 2 * streams:
            raise ValueError(f"the {name} text has {ids.shape[0]} symbols, too few for {streams} streams of at "
                             f"least 2 symbols (batch_size x processes)")


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence): distinct streams per (seed, epoch, use, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _CifarTask:
    """CIFAR batches for one rank: augmented shards of global batches, evaluation shards."""

    recurrent = False
    loss_scale = 1.0

    def __init__(self, data: CifarData, config: TrainConfig, ctx: DistContext) -> None:
        self.data, self.config, self.ctx = data, config, ctx
        self.batches = CifarBatches(data.train_images, data.train_labels, config.batch_size * ctx.world_size,
                                    data.mean, data.std, augment=True, shuffle=True, seed=config.seed)
        n, global_batch = data.train_images.shape[0], config.batch_size * ctx.world_size
        full, rest = divmod(n, global_batch)
        self.steps_per_epoch = full + (1 if rest >= ctx.world_size else 0)  # a tail smaller than W is skipped

    def n_classes(self) -> int:
        return 10

    def train_epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        """This rank's shard of each global batch and its weight ``n_r W / n``."""
        self.batches.generator.manual_seed(_derive_seed(self.config.seed, epoch, 0))
        w, dev = self.ctx.world_size, self.ctx.device
        for x, y in self.batches:
            n = y.shape[0]
            if n < w:
                continue
            a, b = shard_bounds(n, self.ctx)
            yield x[a:b].to(dev), y[a:b].to(dev), (b - a) * w / n

    def eval_batches(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's contiguous part of the validation or test set, normalised, in batches."""
        images = self.data.valid_images if split == "valid" else self.data.test_images
        labels = self.data.valid_labels if split == "valid" else self.data.test_labels
        a, b = shard_bounds(labels.shape[0], self.ctx)
        size = self.config.eval_batch_size
        for start in range(a, b, size):
            stop = min(start + size, b)
            x = normalize(images[start:stop], self.data.mean, self.data.std)
            yield x.to(self.ctx.device), labels[start:stop].to(self.ctx.device)


class _PtbTask:
    """PTB streams for one rank: ``batch_size`` of the ``batch_size x W`` parallel streams."""

    recurrent = True
    loss_scale = 1.0 / math.log(2.0)

    def __init__(self, data: PtbData, config: TrainConfig, ctx: DistContext) -> None:
        self.data, self.config, self.ctx = data, config, ctx
        streams = config.batch_size * ctx.world_size
        a, b = shard_bounds(streams, ctx)
        self.splits = {
            name: batchify(ids, streams)[:, a:b].contiguous()
            for name, ids in (("train", data.train_ids), ("valid", data.valid_ids), ("test", data.test_ids))
        }
        self.steps_per_epoch = math.ceil((self.splits["train"].shape[0] - 1) / config.bptt)

    def n_classes(self) -> int:
        return len(self.data.vocab)

    def _segments(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in bptt_segments(self.splits[split], self.config.bptt):
            yield x.to(self.ctx.device), y.to(self.ctx.device)

    def train_epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, float]]:
        """Consecutive BPTT segments of this rank's streams (equal shards: weight 1)."""
        del epoch  # the text is read in order every epoch
        for x, y in self._segments("train"):
            yield x, y, 1.0

    def eval_batches(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """Consecutive BPTT segments of the split (the hidden state is carried by :func:`evaluate`)."""
        return self._segments(split)


def _make_task(config: TrainConfig, data: CifarData | PtbData, ctx: DistContext) -> _CifarTask | _PtbTask:
    check_data(config, data, ctx.world_size)
    if config.task == "cifar":
        return _CifarTask(data, config, ctx)  # type: ignore[arg-type]
    return _PtbTask(data, config, ctx)  # type: ignore[arg-type]


# --- network, optimizer, one step ----------------------------------------------------------------------


class Classifier(nn.Module):
    """The baselines' network: ``head(body(x))`` with one output layer (an ``nn.Sequential`` that also
    accepts recurrent bodies through :class:`SupervisedNet`).

    :param body: the pre-classifier.
    :param head: the output layer.
    """

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``head(body(x))`` (non-recurrent bodies)."""
        return self.head(self.body(x))


class SupervisedNet(nn.Module):
    """A body and its output: Alrao heads + switch (``method="alrao"``) or one output layer.

    ``forward(x, hidden)`` returns ``(out, hidden)``: ``out`` is an :class:`alrao_rl.AlraoOutput`
    (Alrao) or logits; ``hidden`` is the recurrent body's new state (``None`` otherwise). This single
    forward is what ``DistributedDataParallel`` wraps (it needs the whole forward, body and heads,
    to run through it).

    :param body: the pre-classifier; recurrent bodies take and return a hidden state.
    :param head: the output layer (copied ``heads`` times for Alrao).
    :param method: ``"alrao"``, ``"sgd"`` or ``"adam"``.
    :param heads: number of Alrao heads.
    :param recurrent: the body is called as ``body(x, hidden) -> (features, hidden)``.
    """

    def __init__(self, body: nn.Module, head: nn.Linear, method: str = "alrao", heads: int = 10,
                 recurrent: bool = False) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.alrao = method == "alrao"
        self.recurrent = recurrent
        self.model: nn.Module = (
            AlraoModel(body, head, n_heads=heads, task="classification") if self.alrao else Classifier(body, head)
        )

    def forward(self, x: Tensor, hidden: Hidden | None = None) -> tuple[AlraoOutput | Tensor, Hidden | None]:
        """``(out, hidden)`` for a batch ``x`` (see the class docstring)."""
        if self.recurrent:
            z, hidden = self.model.body(x, hidden)
        else:
            z = self.model.body(x)
        out = self.model.output(z) if self.alrao else self.model.head(z)
        return out, hidden

    def loss(self, out: AlraoOutput | Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(loss, head_ll)``: Alrao's mixture NLL and each head's log-likelihood (for the switch), or
        the cross-entropy and None. Both in nats, averaged over the samples."""
        if self.alrao:
            return self.model.loss(out, y)  # type: ignore[arg-type]
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)), None  # type: ignore[union-attr]

    @staticmethod
    def log_probs(out: AlraoOutput | Tensor) -> Tensor:
        """Predicted log-probabilities: Alrao's mixture ``out.prediction``, or ``log_softmax``."""
        if isinstance(out, AlraoOutput):
            return out.prediction
        return torch.log_softmax(out, dim=-1)


def build_network(config: TrainConfig, n_classes: int) -> SupervisedNet:
    """The paper's model for ``config.task``, seeded with ``config.seed``.

    :param config: the run's configuration.
    :param n_classes: output classes (10 for CIFAR, the vocabulary size for PTB).
    """
    torch.manual_seed(config.seed)
    if config.task == "cifar":
        body, head = make_cifar_model(config.model, config.width, n_classes)  # type: ignore[arg-type]
    else:
        body, head = make_char_lstm(n_classes)
    return SupervisedNet(body, head, config.method, config.heads, recurrent=isinstance(body, CharLSTM))  # type: ignore[arg-type]


def make_optimizer(net: SupervisedNet, config: TrainConfig) -> torch.optim.Optimizer:
    """AlraoSGD (rates seeded with ``config.seed``: identical on every rank), SGD or Adam.

    :param net: the network (on its device).
    :param config: the run's configuration.
    """
    if config.method == "alrao":
        return AlraoSGD(net.model, config.eta_min, config.eta_max, seed=config.seed,  # type: ignore[arg-type]
                        lr=config.effective_lr, max_weight=config.max_weight)
    if config.method == "sgd":
        return torch.optim.SGD(net.parameters(), lr=config.effective_lr)
    return torch.optim.Adam(net.parameters(), lr=config.effective_lr)


def train_step(
    net: SupervisedNet,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    runner: nn.Module | None = None,
    hidden: Hidden | None = None,
    ctx: DistContext | None = None,
    weight: float = 1.0,
) -> tuple[Tensor, Hidden | None]:
    """One gradient step on this rank's shard; Alrao: the switch update with the global batch's
    head log-likelihoods (averaged across ranks).

    :param net: the network.
    :param optimizer: its optimizer.
    :param x: inputs (this rank's shard).
    :param y: targets.
    :param runner: what runs the forward: ``DistributedDataParallel(net)`` or ``net`` (default).
    :param hidden: recurrent state carried from the previous segment (detached by the caller).
    :param ctx: this rank's context (default: one process).
    :param weight: this rank's share ``n_r W / n`` of an uneven global batch (1 for equal shards).
    :return: the (unweighted, detached) minibatch loss in nats and the new hidden state.
    """
    ctx = ctx or DistContext(device=x.device)
    if net.alrao and not ctx.distributed and isinstance(optimizer, (AlraoSGD, AlraoAdam)):
        # the fused step (DDP all-reduces gradients only through backward(), so it keeps the loss path)
        if net.recurrent:
            z, hidden = net.model.body(x, hidden)
        else:
            z = net.model.body(x)
        result = AlraoStep(net.model, optimizer)(x, y, features=z)  # type: ignore[arg-type]
        return torch.tensor(result.loss), hidden
    out, hidden = (runner or net)(x, hidden)
    loss, head_ll = net.loss(out, y)
    if net.alrao and ctx.distributed:
        # A head found dead on this rank's shard alone must not be zeroed here only (the ranks'
        # weights would part): under DDP a dead head is left out of the loss, not frozen.
        net.model.heads.take_dead()  # type: ignore[union-attr]
    optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    optimizer.step()
    if head_ll is not None:
        net.model.switch.update(average_across_ranks(head_ll, ctx, weight))
    return loss.detach(), hidden


@torch.no_grad()
def evaluate(net: SupervisedNet, batches: Iterator[tuple[Tensor, Tensor]], ctx: DistContext | None = None,
             loss_scale: float = 1.0) -> tuple[float, float]:
    """Mean loss and accuracy of the network's predictions (Alrao: the switch's mixture) over the batches
    of every rank; the hidden state of a recurrent body is carried from batch to batch.

    :param net: the network (put in eval mode here, and left so).
    :param batches: this rank's ``(x, y)`` batches.
    :param ctx: this rank's context (default: one process).
    :param loss_scale: multiplies the mean negative log-likelihood (1 / ln 2 for bits).
    :return: ``(loss, accuracy)``; NaN when no rank had any example.
    """
    ctx = ctx or DistContext()
    net.eval()
    hidden = None
    nll = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = 0
    for x, y in batches:
        out, hidden = net(x, hidden)
        log_p = net.log_probs(out)
        picked = log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nll -= picked.double().sum()
        correct += (log_p.argmax(dim=-1) == y).double().sum()
        count += y.numel()
    total_nll, total_correct, total = all_reduce_sum([float(nll), float(correct), float(count)], ctx)
    if total == 0:
        return math.nan, math.nan
    return total_nll / total * loss_scale, total_correct / total


# --- files ---------------------------------------------------------------------------------------------


def _write_evals(path: str, rows: list[list[float]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EVALS_COLUMNS)
    writer.writerows([[int(r[0]), *r[1:]] for r in rows])

    write_text_atomic(path, buffer.getvalue())


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class _Progress:
    """What a checkpoint saves besides the weights, so that a resumed run continues exactly."""

    epoch: int = 0
    steps: int = 0
    best_epoch: int | None = None
    best_valid_loss: float = math.inf
    bad_epochs: int = 0
    diverged: bool = False
    evals: list[list[float]] = field(default_factory=list)
    wall_seconds: float = 0.0


def _as_used(state: dict[str, Any]) -> dict[str, Any]:
    """A config state with ``lr`` as used (its method's default when None, as :attr:`TrainConfig.effective_lr`):
    a run started with the default and resumed with it written out is the same run."""
    if isinstance(state, dict) and state.get("lr") is None and state.get("method") in METHODS:
        return {**state, "lr": 1.0 if state["method"] == "alrao" else 1e-3}
    return state


def load_resumable(config: TrainConfig, logdir: str | os.PathLike[str] | None, world_size: int = 1) -> dict[str, Any]:
    """The checkpoint of ``logdir``, after checking that this run may continue it.

    :param config: the configuration of the run that resumes.
    :param logdir: the run's folder.
    :param world_size: number of processes of the run that resumes.
    :raises FileNotFoundError: when there is no ``checkpoint.pt``.
    :raises alrao_rl.checkpoint.CheckpointError: for an unreadable checkpoint, another configuration
        (:data:`COMPATIBLE_KEYS`) or another number of processes.
    """

    path = os.path.join(os.fspath(logdir), "checkpoint.pt") if logdir is not None else None
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    saved = load_checkpoint(path)
    check_compatible(_as_used(saved["config"]), _as_used(asdict(config)), COMPATIBLE_KEYS)
    if saved["world_size"] != world_size:
        raise CheckpointError(f"the checkpoint was written by {saved['world_size']} process(es), this run has "
                              f"{world_size}; the global batch would differ")
    return saved


# --- the loop ------------------------------------------------------------------------------------------


def train_classifier(
    config: TrainConfig,
    data: CifarData | PtbData,
    logdir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    ctx: DistContext | None = None,
    optimizer_factory: Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> dict[str, Any] | None:
    """Train with early stopping, then test the best-validation epoch's weights (module docstring).

    :param config: the run's configuration.
    :param data: :func:`prepare_cifar` or :func:`prepare_ptb` output, matching ``config.task``.
    :param logdir: output folder (must exist); None writes nothing.
    :param resume: continue from ``logdir/checkpoint.pt`` (same configuration and number of processes;
        ``epochs`` and ``patience`` may differ).
    :param progress: show a progress bar (rank 0).
    :param ctx: this rank's context when running in several processes (default: one process on
        ``config.device``).
    :param optimizer_factory: builds the optimizer from the network's parameters instead of
        ``config.method``'s (e.g. a tuning-free peer in ``scripts/compare.py``).
    :return: the summary (keys :data:`SUMMARY_KEYS`, also written to ``logdir/summary.json``), or None
        when a signal stopped the run early (a checkpoint is saved; continue with ``resume=True``).
    :raises FileNotFoundError: ``resume`` without a checkpoint.
    :raises alrao_rl.checkpoint.CheckpointError: a checkpoint from another configuration
        (see :func:`load_resumable`).

    The global torch RNG is reseeded (from ``config.seed``) to build the network and at every epoch.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm


    if ctx is None:
        from alrao_rl.supervised.distributed import resolve_device

        ctx = DistContext(device=resolve_device(config.device))
    logdir = os.fspath(logdir) if logdir is not None else None
    main = ctx.is_main and logdir is not None
    task = _make_task(config, data, ctx)
    net = build_network(config, task.n_classes()).to(ctx.device)
    optimizer = make_optimizer(net, config) if optimizer_factory is None else optimizer_factory(net.parameters())
    state = _Progress()
    best_weights: dict[str, Tensor] | None = None

    ckpt_path = os.path.join(logdir, "checkpoint.pt") if logdir is not None else None
    best_path = os.path.join(logdir, "best.pt") if logdir is not None else None
    if resume:
        saved = load_resumable(config, logdir, ctx.world_size)
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        state = _Progress(**saved["progress"])
        if state.best_epoch is not None and best_path is not None:
            if os.path.exists(best_path):
                best_weights = {k: v.to(ctx.device) for k, v in load_checkpoint(best_path)["net"].items()}
            elif ctx.is_main:
                warnings.warn(f"resume: {best_path} is missing; the test set will be evaluated with the last "
                              f"weights unless a better epoch comes", RuntimeWarning, stacklevel=2)
    runner = wrap_ddp(net, ctx)

    # A resumed run redoes the steps after its checkpoint: the events a killed run wrote for them are purged.
    writer = SummaryWriter(logdir, purge_step=state.steps + 1 if resume else None) if main else None
    if writer is not None and net.alrao and state.epoch == 0:
        body = {id(p) for p in net.model.body.parameters()}
        rates = [s["alrao_rate"].flatten() for p, s in optimizer.state.items() if id(p) in body]
        writer.add_histogram("alrao/log10_unit_rates", torch.cat(rates).log10().cpu(), 0)

    def checkpoint() -> None:
        if main and ckpt_path is not None:
            save_checkpoint(ckpt_path, {"config": asdict(config), "world_size": ctx.world_size,
                                        "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                                        "progress": asdict(state)})

    def log_posterior(step: int) -> None:
        if writer is not None and net.alrao:
            for j, a_j in enumerate(net.model.switch.posterior.tolist()):
                writer.add_scalar(f"alrao/posterior/head_{j}", a_j, step)

    scale = task.loss_scale
    session_start, previous_seconds = time.perf_counter(), state.wall_seconds
    interrupted = False
    with stop_requests("epoch") as stop:
        while state.epoch < config.epochs and state.bad_epochs < config.patience and not state.diverged:
            epoch = state.epoch + 1
            runner.train()
            torch.manual_seed(_derive_seed(config.seed, epoch, 1, ctx.rank))  # dropout of this epoch
            weighted_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
            steps, hidden = 0, None
            bar = tqdm(total=task.steps_per_epoch, disable=not (progress and ctx.is_main), leave=False,
                       dynamic_ncols=True, unit="step", desc=f"{config.method} epoch {epoch}/{config.epochs}")
            for x, y, weight in task.train_epoch(epoch):
                if hidden is not None:
                    hidden = (hidden[0].detach(), hidden[1].detach())
                loss, hidden = train_step(net, optimizer, x, y, runner=runner, hidden=hidden, ctx=ctx,
                                          weight=weight)
                weighted_sum += loss.double() * weight
                steps += 1
                state.steps += 1
                bar.update(1)
                if steps % 20 == 0 and ctx.is_main:
                    bar.set_postfix(loss=f"{float(loss) * scale:.4f}", refresh=False)
                if writer is not None and state.steps % config.log_every == 0:
                    writer.add_scalar("train/batch_loss", float(loss) * scale, state.steps)
                    log_posterior(state.steps)
            bar.close()
            (total,) = all_reduce_sum([float(weighted_sum)], ctx)
            train_loss = total / (ctx.world_size * max(steps, 1)) * scale
            broadcast_buffers(net, ctx)  # every rank evaluates (and keeps) rank 0's BatchNorm statistics
            valid_loss, valid_accuracy = evaluate(net, task.eval_batches("valid"), ctx, scale)
            state.epoch = epoch
            state.evals.append([epoch, train_loss, valid_loss, valid_accuracy])
            if math.isfinite(valid_loss) and valid_loss < state.best_valid_loss:
                state.best_valid_loss, state.best_epoch, state.bad_epochs = valid_loss, epoch, 0
                best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
                if main and best_path is not None:
                    save_checkpoint(best_path, {"net": net.state_dict(), "epoch": epoch})
            else:
                state.bad_epochs += 1
            if not math.isfinite(train_loss) and not math.isfinite(valid_loss):
                state.diverged = True
                if ctx.is_main:
                    warnings.warn(f"{config.method}: training and validation losses are not finite at epoch "
                                  f"{epoch}; stopping (diverged)", RuntimeWarning, stacklevel=2)
            state.wall_seconds = previous_seconds + time.perf_counter() - session_start
            if writer is not None:
                writer.add_scalar("train/loss", train_loss, epoch)
                writer.add_scalar("valid/loss", valid_loss, epoch)
                writer.add_scalar("valid/accuracy", valid_accuracy, epoch)
                if net.alrao:
                    writer.add_scalar("alrao/frozen_units", optimizer.frozen_units(), epoch)  # type: ignore[attr-defined]
                    for j, a_j in enumerate(net.model.switch.posterior.tolist()):
                        writer.add_scalar(f"alrao/epoch_posterior/head_{j}", a_j, epoch)
                writer.flush()
            if ctx.is_main:
                logger.info("epoch %d: train %.4f valid %.4f accuracy %.4f (best epoch %s)", epoch, train_loss,
                            valid_loss, valid_accuracy, state.best_epoch)
            if main and logdir is not None:
                _write_evals(os.path.join(logdir, "evals.csv"), state.evals)
            checkpoint()
            (stops,) = all_reduce_sum([1.0 if stop["stop"] else 0.0], ctx)
            finished = state.epoch >= config.epochs or state.bad_epochs >= config.patience or state.diverged
            if stops > 0 and not finished:
                interrupted = True
                break
    state.wall_seconds = previous_seconds + time.perf_counter() - session_start
    if interrupted:
        if ctx.is_main:
            logger.warning("stopped after epoch %d; continue with --resume", state.epoch)
        if writer is not None:
            writer.close()
        return None

    if best_weights is not None:
        net.load_state_dict(best_weights)
    test_loss, test_accuracy = evaluate(net, task.eval_batches("test"), ctx, scale)
    if writer is not None:
        writer.add_scalar("test/loss", test_loss, state.best_epoch or state.epoch)
        writer.add_scalar("test/accuracy", test_accuracy, state.best_epoch or state.epoch)
        writer.close()
    summary = {
        "task": config.task_name,
        "model": config.model,
        "method": config.method,
        "lr": config.effective_lr,
        "eta_min": config.eta_min if net.alrao else None,
        "eta_max": config.eta_max if net.alrao else None,
        "heads": config.heads if net.alrao else 1,
        "seed": config.seed,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "test_loss": _finite_or_none(test_loss),
        "test_accuracy": _finite_or_none(test_accuracy),
        "wall_seconds": round(state.wall_seconds, 3),
    }
    if main and logdir is not None:
        write_text_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def _spawned_worker(ctx: DistContext, config: TrainConfig, data: CifarData | PtbData, logdir: str, resume: bool,
                    progress: bool) -> None:
    """One rank of :func:`spawn_train_classifier` (module level, so that spawned processes import it)."""
    if ctx.is_main:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with warnings.catch_warnings():
        if not ctx.is_main:
            warnings.simplefilter("ignore")
        train_classifier(config, data, logdir, resume=resume, progress=progress, ctx=ctx)


def spawn_train_classifier(
    nproc: int,
    config: TrainConfig,
    data: CifarData | PtbData,
    logdir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """:func:`train_classifier` in ``nproc`` processes (DistributedDataParallel, gloo on CPU, nccl on
    GPU); the data reach the processes through shared memory.

    A first Ctrl-C is left to the workers (they stop at the end of the epoch and save a checkpoint).

    :param nproc: number of processes.
    :param config: the run's configuration (``batch_size`` is per process).
    :param data: prepared data.
    :param logdir: output folder (must exist); the summary is read back from it.
    :param resume: continue from ``logdir/checkpoint.pt`` (written by as many processes).
    :param progress: show rank 0's progress bar.
    :return: the summary, or None when the run was stopped early.
    """
    check_data(config, data, nproc)
    if resume:
        load_resumable(config, logdir, nproc)  # refuse here rather than in every process
    logdir = os.fspath(logdir)
    summary_path = os.path.join(logdir, "summary.json")
    before = os.stat(summary_path).st_mtime_ns if os.path.exists(summary_path) else None

    with stop_requests("epoch"):  # the parent ignores a first signal: the workers stop at the epoch's end
        spawn(_spawned_worker, nproc, (config, data, logdir, resume, progress), device=config.device)
    if not os.path.exists(summary_path) or os.stat(summary_path).st_mtime_ns == before:
        return None
    with open(summary_path) as f:
        return json.load(f)
