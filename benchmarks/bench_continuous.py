"""Environment steps per second of SAC and TD3 *including learning*: Alrao critics vs Stable-Baselines3's own.

Four agents, each with SB3's default settings (one gradient step per environment step, batch 256, MLP 256-256
for SAC and 400-300 for TD3, twin critics), one torch thread, on Pendulum-v1:

* ``sb3-sac`` / ``sb3-td3``: ``stable_baselines3.SAC`` / ``TD3`` (Adam everywhere);
* ``alrao-sac`` / ``alrao-td3``: ``agents.sb3.AlraoSAC`` / ``AlraoTD3`` (the critics trained by one fused Alrao
  step, 10 heads each; the actor by Adam).

Every agent first runs ``learning_starts + 200`` steps untimed (learning starts at 1,000), then the agents are
timed in turn, ``learn(--steps, reset_num_timesteps=False)`` each, for ``--rounds`` rounds: machine noise hits
them alike. Reported: the median steps/s and the median over rounds of each round's ratio (target >= 0.9).

    python benchmarks/bench_continuous.py                 # --steps 1000 --rounds 5
    python benchmarks/bench_continuous.py --json          # one JSON object with every ratio
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

LEARNING_STARTS = 1_000
TARGET = 0.9
PAIRS: tuple[tuple[str, str], ...] = (("alrao-sac", "sb3-sac"), ("alrao-td3", "sb3-td3"))


def make(name: str, env_id: str, seed: int) -> Any:
    """The agent ``name`` (module docstring) on ``env_id``."""
    from stable_baselines3 import SAC, TD3

    from agents.sb3 import AlraoSAC, AlraoTD3

    cls = {"sb3-sac": SAC, "sb3-td3": TD3, "alrao-sac": AlraoSAC, "alrao-td3": AlraoTD3}[name]
    return cls("MlpPolicy", env_id, seed=seed, learning_starts=LEARNING_STARTS, buffer_size=100_000, device="cpu")


def measure(env_id: str, steps: int, rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Steps per second of every agent, round by round."""
    torch.set_num_threads(1)
    agents = {name: make(name, env_id, seed) for pair in PAIRS for name in pair}
    for agent in agents.values():
        agent.learn(LEARNING_STARTS + 200)
    speeds: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(rounds):
        for name, agent in agents.items():
            start = time.perf_counter()
            agent.learn(steps, reset_num_timesteps=False)
            speeds[name].append(steps / (time.perf_counter() - start))
    return speeds


def ratios(speeds: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of each pair's ratio of steps/s."""
    return {f"{a}/{b}": statistics.median(x / y for x, y in zip(speeds[a], speeds[b], strict=True))
            for a, b in PAIRS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=1000, help="timed environment steps per agent and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object with every ratio")
    args = parser.parse_args()
    speeds = measure(args.env, args.steps, args.rounds)
    result = ratios(speeds)
    if args.json:
        print(json.dumps({"env": args.env, **result, "steps_per_s": {k: statistics.median(v)
                                                                     for k, v in speeds.items()}}))
        return
    print(f"{args.env}: {args.steps} steps x {args.rounds} rounds, one torch thread, SB3 defaults")
    for name, values in speeds.items():
        print(f"  {name:10s} {statistics.median(values):7.1f} steps/s (median)")
    for name, value in result.items():
        verdict = "ok" if value >= TARGET else "below"
        print(f"  {name:18s} {value:.3f}  (target >= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
