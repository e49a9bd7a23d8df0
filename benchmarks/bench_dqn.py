"""Environment steps per second of DQN *including learning*: this project's DQN vs Stable-Baselines3's.

Four agents per environment, all with the same work per step: one env step, epsilon-greedy action
(epsilon fixed at 0.05 so that 95% of steps run the Q-network), one gradient step on a minibatch of
64 from a 100k replay buffer, a soft target update (tau = 0.01); MLP 64-64, one torch thread:

* ``project-adam``: ``agents.dqn.DQNAgent`` with ``torch.optim.Adam`` (lr 1e-3, Huber loss);
* ``project-alrao``: ``agents.dqn.DQNAgent`` with Alrao (10 heads, ``AlraoSGD``);
* ``sb3-dqn``: ``stable_baselines3.DQN`` with Adam (lr 1e-3, its default gradient clipping at 10);
* ``alrao-dqn``: ``agents.sb3.AlraoDQN``.

The project agents run a loop that does what :func:`agents.dqn.train` does per step, without its
evaluations, logging and checkpoints; the SB3 agents run ``learn(steps, reset_num_timesteps=False)``.
Every agent first runs ``learning_starts + 500`` steps untimed (learning starts at 1,000), then the
agents are timed in turn, ``--steps`` steps each, for ``--rounds`` rounds; machine noise hits them
alike. Reported: the median steps/s and the median over rounds of each round's ratio.

    python benchmarks/bench_dqn.py                 # CartPole-v1 and discretized Pendulum-v1
    python benchmarks/bench_dqn.py --steps 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

LEARNING_STARTS = 1_000
BUFFER_SIZE = 100_000
BATCH_SIZE = 64
EPSILON = 0.05
TAU = 0.01
GAMMA = 0.99
HIDDEN = (64, 64)

# (numerator, denominator, target): numerator steps/s / denominator steps/s should be >= target.
RATIOS: tuple[tuple[str, str, float], ...] = (
    ("project-adam", "sb3-dqn", 1.5),
    ("project-alrao", "project-adam", 0.95),
    ("alrao-dqn", "sb3-dqn", 0.95),
)


class ProjectRunner:
    """This project's DQN agent in a loop doing :func:`agents.dqn.train`'s per-step work.

    :param env_id: gymnasium id (continuous actions are discretized with 5 bins).
    :param method: ``"adam"`` or ``"alrao"``.
    :param seed: seed of the env, network, rates, exploration and replay sampling.
    """

    def __init__(self, env_id: str, method: str, seed: int) -> None:
        from agents.dqn import DQNAgent, DQNConfig
        from agents.replay_buffer import ReplayBuffer
        from envs import make_env

        self.config = DQNConfig(
            env=env_id, method=method, seed=seed, hidden=HIDDEN, batch_size=BATCH_SIZE, gamma=GAMMA, tau=TAU,
            buffer_size=BUFFER_SIZE, learning_starts=LEARNING_STARTS, train_freq=1, eps_start=EPSILON,
            eps_end=EPSILON,
        )
        self.env = make_env(env_id, seed, n_bins=5)
        obs_shape = self.env.observation_space.shape
        self.n_actions = int(self.env.action_space.n)
        self.agent = DQNAgent(int(np.prod(obs_shape)), self.n_actions, self.config)
        self.buffer = ReplayBuffer(obs_shape, BUFFER_SIZE, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.step = 0

    def run(self, steps: int) -> None:
        """Run ``steps`` environment steps, learning from step ``learning_starts + 1`` on."""
        config, agent, buffer, env = self.config, self.agent, self.buffer, self.env
        for _ in range(steps):
            if self.rng.random() < EPSILON:
                action = int(self.rng.integers(self.n_actions))
            else:
                action = agent.greedy_action(self.obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(self.obs, action, float(reward), next_obs, bool(terminated))
            self.obs = next_obs
            self.step += 1
            if self.step > config.learning_starts:
                agent.train_step(buffer.sample(config.batch_size).to_torch())
            if terminated or truncated:
                self.obs, _ = env.reset()


class SB3Runner:
    """An SB3 algorithm (``DQN`` or ``AlraoDQN``) learning ``steps`` more steps per call.

    :param env_id: gymnasium id (continuous actions are discretized with 5 bins).
    :param alrao: ``agents.sb3.AlraoDQN`` if True, else ``stable_baselines3.DQN`` with Adam.
    :param seed: the algorithm's seed.
    """

    def __init__(self, env_id: str, alrao: bool, seed: int) -> None:
        from stable_baselines3 import DQN

        from agents.sb3 import AlraoDQN, AlraoDQNPolicy
        from envs import make_env

        common: dict[str, Any] = dict(
            buffer_size=BUFFER_SIZE, learning_starts=LEARNING_STARTS, batch_size=BATCH_SIZE, tau=TAU, gamma=GAMMA,
            train_freq=1, gradient_steps=1, target_update_interval=1, exploration_initial_eps=EPSILON,
            exploration_final_eps=EPSILON, seed=seed, device="cpu",
        )
        env = make_env(env_id, seed, n_bins=5)
        if alrao:
            self.model: Any = AlraoDQN(AlraoDQNPolicy, env, policy_kwargs=dict(net_arch=list(HIDDEN), n_heads=10),
                                       **common)
        else:
            self.model = DQN("MlpPolicy", env, learning_rate=1e-3, policy_kwargs=dict(net_arch=list(HIDDEN)), **common)
        self.started = False

    def run(self, steps: int) -> None:
        """Run ``steps`` environment steps (learning as SB3 schedules it)."""
        self.model.learn(steps, reset_num_timesteps=not self.started)
        self.started = True


def measure(env_id: str, steps: int, rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Steps/s of every agent on ``env_id``, one value per round (agents timed in turn)."""
    runners: dict[str, Callable[[int], None]] = {
        "project-adam": ProjectRunner(env_id, "adam", seed).run,
        "project-alrao": ProjectRunner(env_id, "alrao", seed).run,
        "sb3-dqn": SB3Runner(env_id, False, seed).run,
        "alrao-dqn": SB3Runner(env_id, True, seed).run,
    }
    for run in runners.values():
        run(LEARNING_STARTS + 500)
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(steps)
            speeds[name].append(steps / (time.perf_counter() - start))
    return speeds


def report(env_id: str, speeds: dict[str, list[float]]) -> None:
    """Print the steps/s table and the target ratios of one environment."""
    print(f"\n{env_id}")
    print(f"  {'agent':<14} {'steps/s (median)':>17} {'min':>8} {'max':>8}")
    for name, values in speeds.items():
        print(f"  {name:<14} {statistics.median(values):>17.0f} {min(values):>8.0f} {max(values):>8.0f}")
    for num, den, target in RATIOS:
        ratio = statistics.median(a / b for a, b in zip(speeds[num], speeds[den], strict=True))
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"  {num + ' / ' + den:<30} {ratio:5.2f}   (target >= {target:.2f}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6_000, help="timed steps per agent per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each agent timed once per round)")
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"], help="gymnasium ids")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"DQN env steps/s incl. learning: batch {BATCH_SIZE}, MLP {HIDDEN}, 1 torch thread, "
          f"{args.steps} steps x {args.rounds} rounds per agent")
    for env_id in args.envs:
        report(env_id, measure(env_id, args.steps, args.rounds))


if __name__ == "__main__":
    main()
