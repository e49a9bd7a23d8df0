"""Compare Alrao with SGD at every rate of a grid, default Adam, AdaQN and tuning-free peers (the paper's Table 1).

    python scripts/compare.py --env Pendulum-v1 --seeds 5 --total-steps 30000 --out results/pendulum
    python scripts/compare.py --env CartPole-v1 --seeds 3 --total-steps 50000 --methods alrao,sgd,adam,prodigy
    python scripts/compare.py --env CartPole-v1 --seeds 3 --methods alrao,sgd,adam,adaqn
    python scripts/compare.py --env Pendulum-v1 --sgd-grid 1e-3,1e-2,1e-1 --backend ray
    python scripts/compare.py --task ptb --data-dir data/ptb --seeds 2 --epochs 5 --out results/ptb
    python scripts/compare.py --suite paper --out docs/results        # 4 envs x 10 seeds, summary.md across envs

For every seed: Alrao (per-unit rates in [--eta-min, --eta-max]), SGD at every rate of --sgd-grid, Adam
with its defaults, and, named in --methods, AdaQN (--task rl: 4 DQN networks with Adam at 1e-5, 1e-4,
1e-3 and 1e-2 on the same minibatches, the target following the one with the lowest TD loss; each run
alone, not in a population) and the tuning-free peers (each from the optional extra 'peers':
pip install 'alrao-rl[peers]'): prodigy (prodigyopt), dadapt-sgd and dadapt-adam (dadaptation), dog
(dog-optimizer), sf-sgd and sf-adamw (schedulefree).

Protocol. SGD's rate is selected on selection data only: the mean over seeds of each run's final
evaluation return (greedy episodes seeded 1,000,000 + 1000 seed + k), or of the validation loss of its
best epoch (--task cifar|ptb). Every method is then reported on data no choice has seen: the final
policy on --test-episodes new episodes seeded 2,000,000 + 1000 seed + k, or the test set. A run that
diverges (non-finite values), fails, or ends worse than the floor (the mean return of a random policy
over --floor-episodes episodes; the loss of the uniform prediction) counts as failed and stays in
every statistic.

Outputs in --out: runs/<method>[-lr<rate>]/seed<k>/ (each run's evals.csv, summary.json, checkpoint,
TensorBoard events and compare.json), results.csv (one row per run), report.md (the table: per method
the selected rate, mean +/- std of the test value, IQM with a 95% bootstrap CI, failed runs; the ratio
of Alrao to the best SGD rate), curves.png, rates.png and posterior.png.

Runs go in parallel (one process per core, one torch thread each). By default the DQN runs of alrao, sgd
and adam are trained as populations (one batched network per process, every member equal to its run alone,
bit for bit); --backend process trains every run alone, --backend ray sends the same units to Ray.
Finished runs are found by the hash of their configuration and not run again (--force reruns them);
an interrupted sweep continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agents.compare import Metric, RunSpec, SweepInfo

    Plan = tuple[list[RunSpec], Metric, SweepInfo]

from alrao_cli.common import HeldWarnings, OneLineParser, as_flags, fail, flag_fields, program

ALGOS = ("sac", "td3")
"""The continuous-action agents of --algo (agents.continuous)."""


def _dqn_default(name: str) -> object:
    from agents.dqn import DQNConfig

    return next(f.default for f in dataclasses.fields(DQNConfig) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    from agents.compare import DEFAULT_SGD_GRID, PEERS
    from agents.compare.backends import BACKENDS
    from agents.compare.plan import DEFAULT_CRITIC_GRID
    from agents.compare.suite import SUITES

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to compare")
    what.add_argument("--task", choices=["rl", "cifar", "ptb"], default="rl",
                      help="rl: an agent (--algo) on --env; cifar, ptb: the supervised tasks on --data-dir "
                           "(default: rl)")
    what.add_argument("--algo", choices=["dqn", *ALGOS], default="dqn",
                      help="--task rl: DQN (default), or Stable-Baselines3's SAC or TD3 on continuous actions, whose "
                           "critics are Alrao models (method alrao) against the critics' Adam rate on a grid "
                           "(method critic-adam; actor and entropy coefficient at SB3's default rate) and SB3's "
                           "defaults (method adam)")
    what.add_argument("--env", default=None, help="gymnasium id for --task rl (default: Pendulum-v1)")
    what.add_argument("--suite", choices=list(SUITES), default=None,
                      help="run a whole suite of envs, each its own sweep in --out/<env>, then write --out/summary.md "
                           "and aggregate.png across envs (paper: Pendulum, CartPole, LunarLander, MountainCar, "
                           "10 seeds; the envs, steps and methods are the suite's)")
    what.add_argument("--envs", default=None,
                      help="with --suite: only these comma-separated envs of the suite (default: all of them)")
    what.add_argument("--seeds", type=int, default=None,
                      help="number of seeds, 0..N-1, per method and rate (default: 5; --suite: 10)")
    what.add_argument("--methods", default=None,
                      help=f"comma-separated methods: alrao, sgd, adam, adaqn (--task rl), and peers "
                           f"{', '.join(PEERS)} (default: alrao,sgd,adam); --algo sac|td3: alrao, critic-adam, adam "
                           f"(default: all three)")
    what.add_argument("--sgd-grid", default=None,
                      help=f"comma-separated rates of the grid method: SGD's (default: the paper's "
                           f"{','.join(f'{x:g}' for x in DEFAULT_SGD_GRID)}); --algo sac|td3: the critics' Adam "
                           f"rates (default: {','.join(f'{x:g}' for x in DEFAULT_CRITIC_GRID)})")
    what.add_argument("--eta-min", type=float, default=None,
                      help="Alrao's lowest rate (default: DQN 1e-6 (AlraoAdam); SAC/TD3 critics and CIFAR 1e-5; "
                           "PTB 1e-3)")
    what.add_argument("--eta-max", type=float, default=None,
                      help="Alrao's highest rate (default: DQN 0.1; SAC/TD3 critics and CIFAR 10; PTB 100)")
    what.add_argument("--heads", type=int, default=None, help="Alrao's output heads (default: 10; PTB 6)")

    rl = parser.add_argument_group("reinforcement learning (--task rl)")
    rl.add_argument("--total-steps", type=int, default=30_000, help="environment steps per run (default: 30000)")
    for name, text in (("eval_every", "environment steps between evaluations on the selection episodes"),
                       ("eval_episodes", "selection episodes per evaluation"),
                       ("learning_starts", "environment steps before the first gradient step"),
                       ("exploration_steps", "steps over which epsilon decays from 1 to 0.05")):
        default = _dqn_default(name)
        rl.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=f"{text} (default: {default})")
    rl.add_argument("--test-episodes", type=int, default=10,
                    help="new greedy episodes of each final policy, for the test return (default: 10)")
    rl.add_argument("--floor-episodes", type=int, default=20,
                    help="episodes of a random policy whose mean return is the failure floor (default: 20)")

    sup = parser.add_argument_group("supervised (--task cifar|ptb)")
    sup.add_argument("--data-dir", default=None,
                     help="CIFAR-10 batch files, or PTB files with their standard names (ptb.char.* or ptb.*)")
    sup.add_argument("--model", default=None, help="CIFAR network (default: vgg19)")
    sup.add_argument("--epochs", type=int, default=200, help="maximum epochs per run (default: 200)")
    sup.add_argument("--patience", type=int, default=20,
                     help="stop after this many epochs without a better validation loss (default: 20)")
    sup.add_argument("--batch-size", type=int, default=None, help="minibatch (default: CIFAR 32, PTB 20 streams)")
    sup.add_argument("--width", type=float, default=1.0, help="CIFAR channel multiplier (default: 1)")
    sup.add_argument("--limit-train", type=int, default=None, help="CIFAR: train on this many images only")
    sup.add_argument("--valid-size", type=int, default=None, help="CIFAR validation images (default: 10000)")
    sup.add_argument("--level", choices=["char", "word"], default="char", help="PTB symbols (default: char)")
    sup.add_argument("--bptt", type=int, default=70, help="PTB truncated backpropagation length (default: 70)")

    for action in sup._group_actions:
        SUPERVISED_DEFAULTS[action.dest] = action.default

    how = parser.add_argument_group("how to run")
    how.add_argument("--out", default=None, help="output folder (default: results/<env or task>)")
    how.add_argument("--workers", type=int, default=None,
                     help="runs in parallel (default: the usable cores; 1 runs them in this process)")
    how.add_argument("--backend", choices=list(BACKENDS), default="population",
                     help="population: the DQN runs of alrao, sgd and adam trained as populations, one per "
                          "worker process (each member equals its run alone, bit for bit); process: every run "
                          "alone in a process pool; ray: the population units as Ray tasks, from the optional "
                          "extra 'ray' (default: population)")
    how.add_argument("--ray-address", default=None,
                     help="an existing Ray cluster (default: a local instance; --out must be on a shared disk)")
    how.add_argument("--force", action="store_true", help="rerun the runs already finished in --out")
    how.add_argument("--bootstrap-resamples", type=int, default=10_000,
                     help="resamples for the IQM confidence intervals (default: 10000)")
    how.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _parse_list(text: str, option: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        fail(f"{option} is empty")
    return items


def _parse_grid(text: str) -> list[float]:
    rates = []
    for item in _parse_list(text, "--sgd-grid"):
        try:
            rate = float(item)
        except ValueError:
            fail(f"--sgd-grid: {item!r} is not a number")
        if not (math.isfinite(rate) and rate > 0):
            fail(f"--sgd-grid: rates must be finite numbers > 0, got {item}")
        rates.append(rate)
    return rates


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with HeldWarnings() as held:  # a refused input prints its error line alone
        if args.suite is not None:
            return _suite(args, parser, held)
        if args.envs is not None:
            fail("--envs needs --suite")
        if args.seeds is None:
            args.seeds = 5
        return _main(args, argv, held)


SUITE_OPTIONS = ("suite", "envs", "seeds", "out", "workers", "backend", "ray_address", "force", "bootstrap_resamples",
                 "no_progress")
"""The options a suite takes; the others (env, steps, methods, ...) are the suite's."""


def _suite(args: argparse.Namespace, parser: argparse.ArgumentParser, held: HeldWarnings) -> int:
    """Each env of the suite as its own sweep (:func:`_main`), then the summary across envs."""
    from agents.compare.aggregate import write_summary
    from agents.compare.suite import SUITE_SEEDS, env_arguments, select_envs

    for action in parser._actions:
        if action.dest not in SUITE_OPTIONS and action.dest != "help" and getattr(args, action.dest) != action.default:
            fail(f"{action.option_strings[0]} cannot be used with --suite (the suite sets the envs, steps, methods "
                 f"and DQN settings)")
    try:
        entries = select_envs(args.suite, None if args.envs is None else _parse_list(args.envs, "--envs"))
    except ValueError as e:
        fail(f"--envs: {e}")
    seeds = SUITE_SEEDS if args.seeds is None else args.seeds
    _check_positive(argparse.Namespace(seeds=seeds), "seeds")
    out = args.out or os.path.join("results", args.suite)
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out!r} is a file, not a folder")
    passed = ["--backend", args.backend, "--bootstrap-resamples", str(args.bootstrap_resamples)]
    passed += [flag for flag, on in (("--force", args.force), ("--no-progress", args.no_progress)) if on]
    for flag, value in (("--workers", args.workers), ("--ray-address", args.ray_address)):
        if value is not None:
            passed += [flag, str(value)]
    command = "python scripts/compare.py" if program().endswith(".py") else program()
    command += f" --suite {args.suite} --out {shlex.quote(out)}" + ("" if args.seeds is None else f" --seeds {seeds}")
    for entry in entries:
        print(f"== {entry.env}: {entry.total_steps:,} steps, {', '.join(entry.methods)}", flush=True)
        env_argv = env_arguments(entry, seeds, out) + passed
        code = _main(parser.parse_args(env_argv), env_argv, held)
        if code != 0:
            return code
        paths = write_summary(out, args.suite, select_envs(args.suite), seeds, command)
        print("wrote " + ", ".join(paths.values()), flush=True)
    return 0


def _main(args: argparse.Namespace, argv: list[str] | None, held: HeldWarnings) -> int:
    from agents import compare

    _check_positive(args, "seeds", "total_steps", "eval_every", "eval_episodes", "test_episodes", "floor_episodes",
                    "workers", "epochs", "patience", "bootstrap_resamples")
    from agents.compare.plan import DEFAULT_CRITIC_GRID

    continuous = args.algo in ALGOS
    if continuous and args.task != "rl":
        fail(f"--algo {args.algo} is for --task rl, not --task {args.task}")
    task = args.algo if continuous else args.task
    default_methods = "alrao,critic-adam,adam" if continuous else "alrao,sgd,adam"
    methods = _parse_list(args.methods or default_methods, "--methods")
    default_grid = DEFAULT_CRITIC_GRID if continuous else compare.DEFAULT_SGD_GRID
    grid = _parse_grid(args.sgd_grid or ",".join(f"{x:g}" for x in default_grid))
    try:
        compare.check_methods(methods, task)
    except ValueError as e:
        fail(f"--methods: {e}" if continuous else str(e))
    if args.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            fail("--backend ray needs the package 'ray', which is not installed: pip install 'alrao-rl[ray]' "
                 "(the optional extra 'ray')")
    elif args.ray_address is not None:
        fail("--ray-address needs --backend ray")
    for name in ("eval_episodes", "test_episodes"):
        if getattr(args, name) > compare.MAX_EPISODES:
            fail(f"--{name.replace('_', '-')} must be <= {compare.MAX_EPISODES}, got {getattr(args, name)}")

    env_folder = (args.env or "Pendulum-v1").lower() + (f"-{args.algo}" if continuous else "")
    out = args.out or os.path.join("results", env_folder if args.task == "rl" else args.task)
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out!r} is a file, not a folder")
    alrao = {k: v for k, v in (("eta_min", args.eta_min), ("eta_max", args.eta_max), ("heads", args.heads))
             if v is not None}
    seeds = list(range(args.seeds))
    if continuous:
        plan = _plan_continuous(args, methods, grid, seeds, alrao)
    elif args.task == "rl":
        plan = _plan_rl(args, methods, grid, seeds, alrao)
    else:
        plan = _plan_supervised(args, methods, grid, seeds, alrao)
    specs, metric, info = plan
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        fail(f"--out {out!r}: {e.strerror}")
    held.release()

    start = time.perf_counter()
    command = "python scripts/compare.py" if program().endswith(".py") else program()
    info.command = f"{command} " + shlex.join(argv if argv is not None else sys.argv[1:])
    grid_name = compare.GRID_NAMES[compare.grid_method(task)]
    sgd = f"; {grid_name} at {_plural(len(grid), 'rate')}" if compare.grid_method(task) in methods else ""
    print(f"{_plural(len(specs), 'run')}: {_plural(len(seeds), 'seed')} x ({', '.join(methods)}{sgd}) in {out}",
          flush=True)
    try:
        outcome = compare.run_sweep(specs, out, backend=args.backend, workers=args.workers, force=args.force,
                                    ray_address=args.ray_address, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to continue", file=sys.stderr)
        return 130
    info.wall_seconds = time.perf_counter() - start
    info.ran = outcome.ran
    compare.record_sweep(out, info.wall_seconds, outcome.ran, args.workers or compare.usable_cores(), args.backend)
    info.history = compare.sweep_history(out)
    paths = compare.write_report(out, outcome.results, metric, info, resamples=args.bootstrap_resamples)
    print(f"ran {_plural(outcome.ran, 'run')}, reused {_plural(outcome.reused, 'finished run')}, "
          f"in {info.wall_seconds / 60:.1f} min")
    errors = [r for r in outcome.results if r.error]
    for r in errors:
        print(f"run {r.label} seed {r.seed} failed with an error: {r.error}", file=sys.stderr)
    with open(paths["report"]) as f:
        table = f.read().split("\n## ")[0]
    print(table.rstrip())
    print("wrote " + ", ".join(paths[k] for k in ("report", "results", "curves", "rates", "posterior")))
    return 0


SUPERVISED_DEFAULTS: dict[str, object] = {}
SUPERVISED_OPTIONS = ("data_dir", "model", "epochs", "patience", "batch_size", "width", "limit_train", "valid_size",
                      "level", "bptt")


def _random_floor(returns: list[float]) -> tuple[Metric, float]:
    """The return metric whose failure floor is the mean of a random policy's ``returns``, and their std."""
    from agents import compare

    floor = float(sum(returns) / len(returns))
    spread = float((sum((r - floor) ** 2 for r in returns) / len(returns)) ** 0.5)
    return compare.Metric("return", True, floor, "random policy"), spread


def _plan_rl(args: argparse.Namespace, methods: list[str], grid: list[float], seeds: list[int],
             alrao: dict[str, float]) -> Plan:
    from agents import compare
    from agents.dqn import DQNConfig
    from envs import make_env

    for dest in SUPERVISED_OPTIONS:  # refuse, rather than ignore, what only supervised runs use
        if getattr(args, dest) != SUPERVISED_DEFAULTS[dest]:
            fail(f"--{dest.replace('_', '-')} is for --task cifar or ptb, not --task rl")
    env_id = args.env or "Pendulum-v1"
    options = {"total_steps": args.total_steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
               "learning_starts": args.learning_starts, "exploration_steps": args.exploration_steps, **alrao}
    try:
        make_env(env_id).close()
        specs = compare.plan_runs("rl", env_id, methods, seeds, grid, options, args.test_episodes)
        for spec in specs:  # every configuration is valid before anything runs
            compare.dqn_config(spec)
    except (ValueError, TypeError) as e:
        fail(as_flags(str(e), flag_fields(args, DQNConfig)))
    config = DQNConfig(env=env_id, **options)
    metric, spread = _random_floor(compare.random_policy_returns(env_id, args.floor_episodes, n_bins=config.n_bins))
    info = compare.SweepInfo(
        task="rl",
        problem=env_id,
        seeds=seeds,
        methods=methods,
        sgd_grid=grid,
        eta_min=config.eta_min,
        eta_max=config.eta_max,
        heads=config.heads,
        budget=f"{args.total_steps:,} environment steps of DQN",
        selection=f"the final evaluation of each run ({args.eval_episodes} greedy episodes seeded "
                  f"1,000,000 + 1000·seed + k), averaged over seeds",
        test=f"{args.test_episodes} new greedy episodes of each run's final policy, seeded 2,000,000 + 1000·seed + k",
        floor_detail=f"the mean return of a uniformly random policy over {args.floor_episodes} episodes seeded "
                     f"3,000,000 + k (std {spread:.1f})",
        adaqn_rates=list(config.adaqn_rates),
        adaqn_window=config.adaqn_window,
        alrao=("AlraoAdam" if config.alrao_optimizer == "adam" else "AlraoSGD")
        + (", PopArt targets" if config.value_norm == "popart" else "")
        + (", variance 1" if config.td_variance == "unit" else ", running variance"),
    )
    return specs, metric, info


def _plan_continuous(args: argparse.Namespace, methods: list[str], grid: list[float], seeds: list[int],
                     alrao: dict[str, float]) -> Plan:
    import gymnasium as gym

    from agents import compare
    from agents.continuous import ContinuousConfig

    for dest in SUPERVISED_OPTIONS:
        if getattr(args, dest) != SUPERVISED_DEFAULTS[dest]:
            fail(f"--{dest.replace('_', '-')} is for --task cifar or ptb, not --algo {args.algo}")
    if args.exploration_steps != _dqn_default("exploration_steps"):
        fail(f"--exploration-steps is DQN's epsilon schedule, not --algo {args.algo}'s")
    if args.backend == "population":
        args.backend = "process"  # (SAC/TD3 runs train alone: the population engine is DQN's)
    env_id = args.env or "Pendulum-v1"
    options = {"total_steps": args.total_steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
               "learning_starts": args.learning_starts, **alrao}
    try:
        specs = compare.plan_runs(args.algo, env_id, methods, seeds, grid, options, args.test_episodes)
        configs = [compare.continuous_config(spec) for spec in specs]
        env = gym.make(env_id)
        space = env.action_space
        env.close()
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"env {env_id!r} has {type(space).__name__} actions; --algo {args.algo} needs a Box")
    except gym.error.Error as e:
        fail(f"--env {env_id!r}: {e}")
    except (ValueError, TypeError) as e:
        fail(as_flags(str(e), flag_fields(args, ContinuousConfig)))
    metric, spread = _random_floor(compare.random_policy_returns(env_id, args.floor_episodes, continuous=True))
    config = configs[0]
    info = compare.SweepInfo(
        task=args.algo,
        problem=env_id,
        seeds=seeds,
        methods=methods,
        sgd_grid=grid,
        eta_min=config.eta_min,
        eta_max=config.eta_max,
        heads=config.heads,
        budget=f"{args.total_steps:,} environment steps of {args.algo.upper()} (Stable-Baselines3's defaults)",
        selection=f"the final evaluation of each run ({args.eval_episodes} deterministic episodes seeded "
                  f"1,000,000 + 1000·seed + k), averaged over seeds",
        test=f"{args.test_episodes} new deterministic episodes of each run's final policy, seeded "
             f"2,000,000 + 1000·seed + k",
        floor_detail=f"the mean return of a uniformly random policy over {args.floor_episodes} episodes seeded "
                     f"3,000,000 + k (std {spread:.1f})",
        alrao="AlraoSGD critics, actor by Adam at SB3's default rate",
    )
    return specs, metric, info


def _plan_supervised(args: argparse.Namespace, methods: list[str], grid: list[float], seeds: list[int],
                     alrao: dict[str, float]) -> Plan:
    from agents import compare
    from alrao_rl.supervised.train import TrainConfig, check_data

    if args.env is not None:
        fail(f"--env is for --task rl, not --task {args.task}")
    if args.data_dir is None:
        fail(f"--task {args.task} needs --data-dir")
    if not os.path.isdir(args.data_dir):
        fail(f"--data-dir {args.data_dir!r} is not a folder")
    _check_positive(args, "batch_size", "limit_train", "valid_size", "bptt")
    options: dict[str, object] = {"epochs": args.epochs, "patience": args.patience, **alrao}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.task == "cifar":
        options.update(width=args.width, limit_train=args.limit_train, valid_size=args.valid_size)
        if args.model is not None:
            options["model"] = args.model
    else:
        if args.model is not None:
            fail("--model is for --task cifar")
        options.update(level=args.level, bptt=args.bptt)
    try:
        problem = "cifar10" if args.task == "cifar" else f"ptb-{args.level}"
        specs = compare.plan_runs(args.task, problem, methods, seeds, grid, options, data_dir=args.data_dir)
        configs = [compare.train_config(spec) for spec in specs]
        data = compare.load_supervised_data(args.task, args.data_dir, options)
        check_data(configs[0], data)
    except (ValueError, TypeError, FileNotFoundError) as e:
        fail(as_flags(str(e), flag_fields(args, TrainConfig)))
    floor = compare.uniform_loss(args.task, data)
    unit = "nats" if args.task == "cifar" else f"bits per {'character' if args.level == 'char' else 'word'}"
    metric = compare.Metric("loss", False, floor, "uniform prediction", unit)
    config = configs[0]
    info = compare.SweepInfo(
        task=args.task,
        problem=problem,
        seeds=seeds,
        methods=methods,
        sgd_grid=grid,
        eta_min=config.eta_min,
        eta_max=config.eta_max,
        heads=config.heads,
        budget=f"at most {args.epochs} epochs (early stopping after {args.patience} epochs without a better "
               f"validation loss)",
        selection="the validation loss of each run's best-validation epoch, averaged over seeds",
        test="the test set, with the weights of each run's best-validation epoch",
        floor_detail="the loss of the uniform prediction over the "
                     + ("10 classes" if args.task == "cifar" else f"{len(data.vocab)} symbols of the vocabulary"),
    )
    return specs, metric, info


if __name__ == "__main__":
    sys.exit(main())
