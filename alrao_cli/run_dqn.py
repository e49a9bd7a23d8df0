"""Train a DQN agent with Alrao (no learning rate to tune), SGD or Adam, or as AdaQN, on a gymnasium task.

    python scripts/run_dqn.py --env Pendulum-v1 --alrao
    python scripts/run_dqn.py --env CartPole-v1 --optimizer adam --total-steps 50000
    python scripts/run_dqn.py --env Pendulum-v1 --optimizer sgd --lr 1e-3 --logdir runs/sgd
    python scripts/run_dqn.py --env CartPole-v1 --method adaqn    # 4 Adam networks, 1e-5..1e-2, best as target
    python scripts/run_dqn.py --env Pendulum-v1 --alrao --logdir runs/a --resume   # continue a run
    python scripts/run_dqn.py --env CartPole-v1 --alrao --seeds 0,1,2               # three seeds at once

Writes to --logdir: evals.csv (step,eval_return_mean,eval_return_std), summary.json, checkpoint.pt
and TensorBoard events (tensorboard --logdir runs). Ctrl-C (SIGTERM) stops at the end of the current
episode after saving a checkpoint and exits with status 130 (143); --resume continues exactly where it
stopped. --seeds trains several seeds of one configuration as one population (agents.population: one
batched network in this process, each seed exactly its run alone), into --logdir/seed<k> (default
runs/<env>-<method>-seed<k>), with the population's checkpoint in --logdir (default
runs/<env>-<method>-seeds<list>). Installed as the command alrao-dqn (same flags).
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


def build_parser() -> argparse.ArgumentParser:
    from agents.dqn import METHODS, DQNConfig

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_method_arguments(parser, "runs/<env>-<method>-seed<seed>", METHODS)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds trained together as one population, e.g. 0,1,2 (replaces --seed)")
    add_config_arguments(parser, DQNConfig, skip=("method",))
    return parser


def check_buffer_memory(config: Any, obs_shape: tuple[int, ...]) -> None:
    """Exit 2 when the replay buffer at ``--buffer-size`` transitions needs more bytes than the
    memory available (it is allocated at full capacity; pages are committed as it fills)."""
    from agents.replay_buffer import ReplayBuffer, available_memory

    needed = ReplayBuffer.bytes_needed(obs_shape, config.buffer_size)
    available = available_memory()
    if available is not None and needed > available:
        fail(f"--buffer-size {config.buffer_size} needs {needed:,} bytes for the replay buffer of {config.env} "
             f"({needed // config.buffer_size} bytes per transition); only {available:,} bytes of memory are "
             f"available")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with HeldWarnings() as held:  # a refused input prints its error line alone
        return _run(args, held)


def _run(args: argparse.Namespace, held: HeldWarnings) -> int:
    from agents.dqn import DQNConfig, train
    from alrao_rl.checkpoint import CheckpointError
    from envs import make_env

    method = args.method or args.optimizer or "alrao"
    config = config_from_args(DQNConfig, args, method=method)
    flags = flag_fields(args, DQNConfig)
    try:  # check the env before anything is written
        env = make_env(config.env, n_bins=config.n_bins)
    except (ValueError, TypeError) as e:
        fail(as_flags(str(e), flags))
    obs_shape = env.observation_space.shape
    env.close()
    check_buffer_memory(config, obs_shape)
    if args.seeds is not None:
        return _run_population(args, config, obs_shape, held, flags)
    logdir = args.logdir or os.path.join("runs", f"{config.env}-{method}-seed{config.seed}")
    check_logdir(logdir, args.resume)
    make_logdir(logdir)
    held.release()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)  # faster for DQN-sized networks (see benchmarks/bench_dqn.py)
    try:
        summary = train(config, logdir, resume=args.resume, progress=not args.no_progress)
    except (CheckpointError, ValueError) as e:
        fail(as_flags(str(e), flags))
    except OSError as e:  # a missing, unreadable or full file system
        fail(describe_os_error(e))
    except MemoryError:  # the memory went elsewhere since check_buffer_memory
        check_buffer_memory(config, obs_shape)
        fail(f"out of memory for --buffer-size {config.buffer_size} (try a smaller one)")
    except KeyboardInterrupt:
        print(f"{program()}: stopped at once; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return stopped_status(default=130)
    keys = ("env", "method", "total_steps", "final_eval_return_mean", "steps_per_second", "interrupted")
    print(json.dumps({k: summary[k] for k in keys}))
    return stopped_status() if summary["interrupted"] else 0


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds must be comma-separated integers, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        fail(f"--seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def _run_population(args: argparse.Namespace, config: Any, obs_shape: tuple[int, ...], held: HeldWarnings,
                    flags: dict[str, str]) -> int:
    """``--seeds``: the seeds of ``config`` trained as one population."""
    import dataclasses

    from agents.population import PopulationDQN
    from alrao_rl.checkpoint import CheckpointError

    seeds = _parse_seeds(args.seeds)
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    joined = ",".join(map(str, seeds))
    base = args.logdir or os.path.join("runs", f"{config.env}-{config.method}-seeds{joined}")
    logdirs = [os.path.join(base, f"seed{s}") if args.logdir else
               os.path.join("runs", f"{config.env}-{config.method}-seed{s}") for s in seeds]
    check_logdir(base, args.resume)
    for logdir in logdirs:
        if os.path.exists(os.path.join(logdir, "summary.json")) and not args.resume:
            fail(f"{logdir!r} already holds a run (summary.json); use --resume or another --logdir")
    try:
        population = PopulationDQN(configs)
    except ValueError as e:  # the replay buffers do not fit
        fail(as_flags(str(e), flags))
    for logdir in (base, *logdirs):
        make_logdir(logdir)
    held.release()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(f"population of {len(seeds)} ({config.method}, seeds {joined}): replay buffers "
          f"{population.memory_bytes / 2**20:.1f} MiB; checkpoint in {base}", file=sys.stderr)
    import torch

    torch.set_num_threads(1)
    try:
        summaries = population.train(logdirs, base, resume=args.resume, progress=not args.no_progress)
    except (CheckpointError, ValueError) as e:
        fail(as_flags(str(e), flags))
    except OSError as e:
        fail(describe_os_error(e))
    except KeyboardInterrupt:
        print(f"{program()}: stopped at once; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return stopped_status(default=130)
    keys = ("env", "method", "seed", "total_steps", "final_eval_return_mean", "steps_per_second", "interrupted")
    for summary in summaries:
        print(json.dumps({k: summary[k] for k in keys}))
    return stopped_status() if summaries[0]["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
