"""Train a CIFAR-10 classifier with Alrao (no learning rate to tune), SGD or Adam (paper, Section 5).

    python scripts/run_cifar.py --data-dir data/cifar-10-batches-py --alrao
    python scripts/run_cifar.py --data-dir DIR --optimizer sgd --lr 0.1 --model resnet18
    python scripts/run_cifar.py --data-dir DIR --optimizer adam --width 0.25 --epochs 5 --limit-train 2000
    python scripts/run_cifar.py --data-dir DIR --alrao --logdir runs/a --resume     # continue a run
    python scripts/run_cifar.py --data-dir DIR --alrao --nproc 2                     # 2 processes (DDP)
    torchrun --nproc-per-node 2 scripts/run_cifar.py --data-dir DIR --alrao          # same, via torchrun

Protocol: 40,000 / 10,000 train / validation split of the official training set, per-channel
normalisation with training statistics, random 4-pixel-padded crops and horizontal flips, minibatches
of 32, early stopping after --patience epochs without a better validation loss, test of the best
validation epoch. With several processes --batch-size is per process (global batch = batch x processes).

Writes to --logdir: evals.csv (epoch,train_loss,valid_loss,valid_accuracy; losses in nats), summary.json,
checkpoint.pt, best.pt and TensorBoard events. Ctrl-C (SIGTERM) stops at the end of the epoch after saving
a checkpoint and exits with status 130 (143); --resume continues (a larger --epochs or --patience extends
the run). Installed as the command alrao-cifar (same flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from alrao_cli.common import (
    HeldWarnings,
    OneLineParser,
    add_config_arguments,
    add_method_arguments,
    as_flags,
    check_logdir,
    config_from_args,
    describe_os_error,
    fail,
    flag_fields,
    make_logdir,
    program,
    stopped_status,
)

# --- shared with run_ptb.py ------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Method, output and launch options common to the supervised scripts."""
    add_method_arguments(parser, "runs/<task>-<model>-<method>-seed<seed>")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train in this many processes (DistributedDataParallel; default 1)")


def _torchrun_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def check_run_arguments(args: argparse.Namespace, default_name: str) -> str:
    """Refuse bad launch options or a --logdir that cannot take this run (before anything is written).

    :return: the logdir to use.
    """
    if args.nproc < 1:
        fail(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and _torchrun_world_size() > 1:
        fail("--nproc cannot be combined with torchrun (torchrun already starts the processes)")
    logdir = args.logdir or os.path.join("runs", default_name)
    check_logdir(logdir, args.resume)
    return logdir


def run(args: argparse.Namespace, config: Any, data: Any, logdir: str, held: HeldWarnings | None = None) -> int:
    """Train in one process, in ``--nproc`` spawned processes, or as one torchrun rank; print the
    summary as one JSON line.

    :param held: the warnings held while the input was checked, printed once it is accepted.
    """
    import torch.multiprocessing as mp

    from alrao_rl.checkpoint import CheckpointError
    from alrao_rl.supervised.distributed import close_process_group, context_from_env
    from alrao_rl.supervised.train import TrainConfig, check_data, spawn_train_classifier, train_classifier

    flags = flag_fields(args, TrainConfig)
    world = max(args.nproc, _torchrun_world_size())
    try:
        check_data(config, data, world)
    except ValueError as e:
        fail(as_flags(str(e), flags))
    make_logdir(logdir)
    if held is not None:
        held.release()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    progress = not args.no_progress
    rank = 0
    try:
        if args.nproc > 1:
            summary = spawn_train_classifier(args.nproc, config, data, logdir, resume=args.resume, progress=progress)
        elif world > 1:
            ctx = context_from_env(config.device)
            rank = ctx.rank if ctx is not None else 0
            try:
                summary = train_classifier(config, data, logdir, resume=args.resume, progress=progress, ctx=ctx)
            finally:
                close_process_group()
        else:
            summary = train_classifier(config, data, logdir, resume=args.resume, progress=progress)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(as_flags(str(e), flags))
    except OSError as e:  # an unreadable or full file system
        fail(describe_os_error(e))
    except mp.ProcessRaisedException as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        fail(f"a training process failed: {lines[-1] if lines else e}")
    except KeyboardInterrupt:  # a second signal: stopped at once
        print(f"{program()}: stopped at once; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return stopped_status(default=130)
    if rank == 0:
        print(json.dumps(summary if summary is not None else {"interrupted": True, "logdir": logdir}))
    return 0 if summary is not None else stopped_status()


# --- CIFAR ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from alrao_rl.supervised.models import CIFAR_MODELS
    from alrao_rl.supervised.train import TrainConfig

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding the CIFAR-10 batch files (python or binary)")
    parser.add_argument("--model", choices=sorted(CIFAR_MODELS), default="vgg19", help="network (default: vgg19)")
    add_run_arguments(parser)
    add_config_arguments(parser, TrainConfig, skip=("task", "method", "model", "level", "bptt"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with HeldWarnings() as held:  # a refused input prints its error line alone
        return _main(args, held)


def _main(args: argparse.Namespace, held: HeldWarnings) -> int:
    from alrao_rl.supervised.train import TrainConfig, prepare_cifar

    config = config_from_args(TrainConfig, args, task="cifar", method=args.optimizer or "alrao")
    logdir = check_run_arguments(args, f"cifar10-{config.model}-{config.method}-seed{config.seed}")
    if not os.path.exists(args.data_dir):
        fail(f"--data-dir {args.data_dir!r} does not exist")
    if not os.path.isdir(args.data_dir):
        fail(f"--data-dir {args.data_dir!r} is not a folder")
    try:
        data = prepare_cifar(args.data_dir, config.valid_size, config.limit_train)
    except (FileNotFoundError, ValueError) as e:
        fail(as_flags(str(e), flag_fields(args, TrainConfig)))
    return run(args, config, data, logdir, held)


if __name__ == "__main__":
    sys.exit(main())
