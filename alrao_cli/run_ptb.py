"""Train the Penn Treebank character LSTM with Alrao (no learning rate to tune), SGD or Adam (paper, Section 5).

    python scripts/run_ptb.py --data-dir data/ptb --alrao                      # ptb.{train,valid,test}.txt
    python scripts/run_ptb.py --train-file T --valid-file V --test-file X --optimizer sgd --lr 1
    python scripts/run_ptb.py --data-dir data/ptb --level word --optimizer adam
    python scripts/run_ptb.py --data-dir data/ptb --alrao --logdir runs/p --resume     # continue a run
    torchrun --nproc-per-node 2 scripts/run_ptb.py --data-dir data/ptb --alrao        # 2 processes (DDP)

Model: embedding 100, two-layer LSTM with 100 units, dropout 0.2 before the output layer (Alrao: 6
output layers, rates in [1e-3, 100]). 20 parallel streams, truncated backpropagation every 70 symbols,
the hidden state carried (detached) from one segment to the next. Losses are in bits per symbol (bits
per character at --level char). With several processes --batch-size (streams) is per process.

--data-dir reads ptb.char.{train,valid,test}.txt when all three exist (character level), else the
word-level ptb.{train,valid,test}.txt: Mikolov's files, in the data/ folder of
http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz. With only the validation and test files,
train on ptb.valid.txt and use the halves of ptb.test.txt as validation and test (see the README).

Writes to --logdir: evals.csv (epoch,train_loss,valid_loss,valid_accuracy), summary.json,
checkpoint.pt, best.pt and TensorBoard events; --resume continues a run. Ctrl-C (SIGTERM) stops at the
end of the epoch after saving a checkpoint and exits with status 130 (143). Installed as the command
alrao-ptb (same flags).
"""

from __future__ import annotations

import argparse
import os
import sys

from alrao_cli.common import HeldWarnings, OneLineParser, add_config_arguments, config_from_args, fail
from alrao_cli.run_cifar import add_run_arguments, check_run_arguments, run


def build_parser() -> argparse.ArgumentParser:
    from alrao_rl.supervised.train import TrainConfig

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with the standard PTB file names")
    parser.add_argument("--train-file", default=None, help="training text (word-level PTB format)")
    parser.add_argument("--valid-file", default=None, help="validation text")
    parser.add_argument("--test-file", default=None, help="test text")
    parser.add_argument("--level", choices=["char", "word"], default="char", help="symbols (default: char)")
    add_run_arguments(parser)
    add_config_arguments(parser, TrainConfig,
                         skip=("task", "method", "model", "level", "width", "valid_size", "limit_train",
                               "eval_batch_size"))
    return parser


def _data_files(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The three files to read and whether they are ``ptb.char.*`` files."""
    from alrao_rl.supervised.ptb import CHAR_FILES, WORD_FILES

    files = [args.train_file, args.valid_file, args.test_file]
    if args.data_dir is not None:
        if any(f is not None for f in files):
            fail("give either --data-dir or --train-file/--valid-file/--test-file, not both")
        if not os.path.isdir(args.data_dir):
            fail(f"--data-dir {args.data_dir!r} is not a folder")
        char_paths = [os.path.join(args.data_dir, n) for n in CHAR_FILES]
        if args.level == "char" and all(os.path.isfile(p) for p in char_paths):
            return char_paths, True
        return [os.path.join(args.data_dir, n) for n in WORD_FILES], False
    if any(f is None for f in files):
        fail("give --data-dir, or all three of --train-file, --valid-file and --test-file")
    return files, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with HeldWarnings() as held:  # a refused input prints its error line alone
        return _main(args, held)


def _main(args: argparse.Namespace, held: HeldWarnings) -> int:
    from alrao_rl.supervised.train import TrainConfig, prepare_ptb

    config = config_from_args(TrainConfig, args, task="ptb", method=args.optimizer or "alrao", level=args.level)
    files, char_files = _data_files(args)
    logdir = check_run_arguments(args, f"ptb-{config.level}-{config.model}-{config.method}-seed{config.seed}")
    try:
        data = prepare_ptb(*files, level=config.level, char_files=char_files)
    except (FileNotFoundError, ValueError) as e:
        fail(_name_the_flag(str(e), args, files))
    return run(args, config, data, logdir, held)


def _name_the_flag(message: str, args: argparse.Namespace, files: list[str]) -> str:
    """A message that begins with one of the files, prefixed with the flag that gave it."""
    flags = ("--train-file", "--valid-file", "--test-file")
    for flag, path in zip(flags, files, strict=True):
        if message.startswith(f"{path}:"):
            return f"{flag if args.data_dir is None else '--data-dir'} {message}"
    return message


if __name__ == "__main__":
    sys.exit(main())
