"""Evaluate (and watch) a trained agent: greedy episodes of the policy saved by a run, mean +/- std.

    python scripts/evaluate.py --logdir runs/CartPole-v1-alrao-seed0                   # a run_dqn.py run
    python scripts/evaluate.py --logdir runs/a --episodes 20 --seed 100
    python scripts/evaluate.py --logdir alrao_dqn.zip --env Acrobot-v1                 # an SB3 AlraoDQN save
    python scripts/evaluate.py --logdir runs/a --episodes 3 --record-video videos/a    # needs moviepy

--logdir is a scripts/run_dqn.py output folder (its checkpoint.pt holds the config and the Q-network;
a finished or a stopped run), a Stable-Baselines3 AlraoDQN zip (AlraoDQN.save), or a folder holding
exactly one such zip and no checkpoint.pt. An SB3 zip does not record its environment: give --env (and
--n-bins if it was trained on a discretized continuous task). Nothing is unpickled: the checkpoint is
read with torch.load(weights_only=True); from a zip only its JSON policy_kwargs and its weights.

Episode k (k = 0..N-1) is reset with seed S + k (--seed S, default 0); actions are argmax_a Q(s, a).
run_dqn.py evaluated on seeds 1,000,000 + 1000 seed + k: --seed 1000000 --episodes 10 repeats the final
evaluation of a finished seed-0 run. Prints one line, "ENV: MEAN +/- STD over N greedy episodes";
writes nothing, except the videos with --record-video DIR (gymnasium's RecordVideo, one mp4 per
episode, ENV-episode-K.mp4, into a new or empty folder; needs the optional package moviepy:
pip install 'alrao-rl[video]').
Installed as the command alrao-evaluate (same flags).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from alrao_cli.common import HeldWarnings, OneLineParser, describe_os_error, fail, program

MAX_EPISODES = 100_000


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", required=True,
                        help="a run_dqn.py output folder, an SB3 AlraoDQN .zip, or a folder holding one zip")
    parser.add_argument("--episodes", type=int, default=10, help="greedy episodes (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode k is reset with seed SEED + k (default: 0)")
    parser.add_argument("--env", default=None, help="gymnasium id of an SB3 zip's environment (required for a zip)")
    parser.add_argument("--n-bins", type=int, default=None,
                        help="an SB3 zip's discretization of continuous actions (default: 5)")
    parser.add_argument("--record-video", default=None, metavar="DIR",
                        help="write one mp4 per episode to this new or empty folder (needs moviepy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with HeldWarnings() as held:  # a refused input prints its error line alone
        return _run(args, held)


def _check_arguments(args: argparse.Namespace) -> None:
    if not 1 <= args.episodes <= MAX_EPISODES:
        fail(f"--episodes must be in 1..{MAX_EPISODES}, got {args.episodes}")
    if not (args.seed >= 0 and args.seed + args.episodes <= 2**32):
        fail(f"--seed must be in [0, 2**32 - episodes], got {args.seed}")
    if args.record_video is not None:
        if importlib.util.find_spec("moviepy") is None:
            fail("--record-video needs the package 'moviepy' (gymnasium's RecordVideo writes the videos with it), "
                 "which is not installed: pip install 'alrao-rl[video]' (or pip install moviepy)")
        folder = args.record_video
        if os.path.exists(folder) and not os.path.isdir(folder):
            fail(f"--record-video {folder!r} is a file, not a folder")
        if os.path.isdir(folder) and os.listdir(folder):
            fail(f"--record-video {folder!r} is not empty; give a new or empty folder (nothing is overwritten)")


def _run(args: argparse.Namespace, held: HeldWarnings) -> int:
    _check_arguments(args)
    from agents.dqn import evaluate
    from agents.saved_policy import find_saved_run, load_policy
    from envs import make_env

    try:
        file, kind = find_saved_run(args.logdir)
    except FileNotFoundError as e:
        fail(f"--logdir {e}")
    except ValueError as e:  # CheckpointError: several zips
        fail(f"--logdir {e}")
    if kind == "sb3" and args.env is None:
        fail(f"--logdir {file!r} is a Stable-Baselines3 zip, which does not record its environment: give --env")
    if kind == "run_dqn" and (args.env is not None or args.n_bins is not None):
        fail(f"--logdir {file!r} is a run_dqn.py checkpoint, which names its own environment: drop --env and "
             f"--n-bins")
    try:
        policy = load_policy(file, env_id=args.env, n_bins=args.n_bins)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError included
        fail(str(e))
    except OSError as e:
        fail(describe_os_error(e))
    render = None
    if args.record_video is not None:
        render = "rgb_array"
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # frames are drawn off screen: no display wanted
    try:
        env = make_env(policy.env_id, n_bins=policy.n_bins, render_mode=render)
    except ValueError as e:
        fail(str(e))
    if args.record_video is not None:
        import warnings

        from gymnasium.wrappers import RecordVideo

        try:
            with warnings.catch_warnings():  # the folder is new or empty (checked): nothing is overwritten
                warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
                env = RecordVideo(env, args.record_video, episode_trigger=lambda _: True, name_prefix=policy.env_id)
        except OSError as e:
            fail(f"--record-video {args.record_video!r}: {e.strerror}")
    held.release()
    seeds = [args.seed + k for k in range(args.episodes)]
    try:
        mean, std = evaluate(policy, env, seeds)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print(f"{program()}: interrupted", file=sys.stderr)
        return 130
    finally:
        env.close()
    last = seeds[-1]
    print(f"{policy.env_id}: {mean:.2f} +/- {std:.2f} over {args.episodes} greedy episodes "
          f"(seeds {args.seed}..{last}; {policy.description})")
    return 0
