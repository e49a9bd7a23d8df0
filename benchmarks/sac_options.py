"""AlraoSAC's options on Pendulum-v1: the critics' optimizer and an Alrao actor (README, "Continuous actions").

One run per seed of ``AlraoSAC`` with SB3's defaults but ``learning_starts=1000`` (as ``compare.py --algo sac``),
20,000 steps, then the final policy on 10 deterministic test episodes seeded ``2,000,000 + 1000 seed + k``; prints
one JSON line per run: the test return, each critic's winning head and dead heads.

* ``adam-critic``: ``critic_optimizer_class=AlraoAdam, eta_min=1e-6, eta_max=0.1`` (DQN's default interval);
* ``alrao-actor``: ``actor_alrao=True`` (the actor stepped by AlraoSGD's per-unit rates too).

    python benchmarks/sac_options.py --variant adam-critic --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import torch

VARIANTS = ("adam-critic", "alrao-actor")


def run(variant: str, seed: int, steps: int = 20_000) -> dict:
    """One run of ``variant`` (module docstring)."""
    from agents.continuous import evaluate
    from agents.sb3 import AlraoSAC
    from alrao_rl import AlraoAdam

    torch.set_num_threads(1)
    policy_kwargs: dict = {"adam-critic": {"critic_optimizer_class": AlraoAdam, "eta_min": 1e-6, "eta_max": 0.1},
                           "alrao-actor": {"actor_alrao": True}}[variant]
    model = AlraoSAC("MlpPolicy", "Pendulum-v1", seed=seed, learning_starts=1000, device="cpu",
                     policy_kwargs=policy_kwargs)
    model.learn(steps)
    env = gym.make("Pendulum-v1")
    mean, _ = evaluate(model, env, [2_000_000 + 1000 * seed + k for k in range(10)])
    q = model.critic.q_model
    return {"variant": variant, "seed": seed, "test": mean, "winners": q.averaging_log_weights().argmax(dim=1).tolist(),
            "dead": q.heads.dead.sum(dim=1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run(args.variant, seed)), flush=True)


if __name__ == "__main__":
    main()
