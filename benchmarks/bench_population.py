"""Environment steps per second per core: DQN runs trained as one population vs each run alone.

The same members (DQN configurations that differ in seed, method and learning rate), trained for
``--steps`` environment steps each (learning from step 1,000, one evaluation of 10 greedy episodes at
the end, as a run of ``scripts/compare.py``), one torch thread, in one process:

* ``population``: ``agents.population.PopulationDQN(members).train()``;
* ``alone``: ``agents.dqn.train(member)`` for every member in turn (what the process backend runs on
  each core).

Both are timed in turn for ``--rounds`` rounds (machine noise hits them alike); the ratio is the median
over rounds of (population member-steps/s) / (alone member-steps/s). Cases: M=21 (SGD at the paper's
7 rates x 3 seeds), M=27 (the default comparison for 3 seeds: Alrao, SGD x 7, Adam) and M=1 (one Alrao
run), on CartPole-v1 and Pendulum-v1. ``--scaling`` also measures the population alone for M = 1 to
128 (members like the default comparison's: per seed one Alrao, seven SGD and one Adam) and plots it.

    python benchmarks/bench_population.py                        # the cases, 2 rounds
    python benchmarks/bench_population.py --scaling --out docs/results/population
    python benchmarks/bench_population.py --json                 # one JSON object
    python benchmarks/bench_population.py --small                # the 64-64 network, trained every step

With the default DQN network (256-256, batch 128, a gradient step every 4 env steps) a run alone is
already bound by its matmuls, which a population cannot shrink; with ``--small`` a run is bound by
per-call overhead, which a population shares among its members.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

from agents.dqn import DQNConfig, train
from agents.population import PopulationDQN

GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


NETWORK: dict[str, object] = {}
"""DQNConfig overrides of every member (``--small``: the 64-64 network trained at every step)."""


def members(env: str, kind: str, seeds: int, steps: int) -> list[DQNConfig]:
    """``kind``: ``"sgd"`` (the grid), ``"all"`` (Alrao, the SGD grid, Adam) or ``"alrao"``, for each seed."""
    common = {"env": env, "total_steps": steps, "eval_every": steps, "checkpoint_every": 10**9, **NETWORK}
    out = []
    for seed in range(seeds):
        if kind in ("all", "alrao"):
            out.append(DQNConfig(method="alrao", seed=seed, **common))
        if kind in ("all", "sgd"):
            out += [DQNConfig(method="sgd", lr=lr, seed=seed, **common) for lr in GRID]
        if kind == "all":
            out.append(DQNConfig(method="adam", seed=seed, **common))
    return out


def time_population(configs: list[DQNConfig]) -> float:
    """Member-steps per second of the members trained as one population."""
    start = time.perf_counter()
    PopulationDQN(configs).train(None, None, progress=False)
    return len(configs) * configs[0].total_steps / (time.perf_counter() - start)


def time_alone(configs: list[DQNConfig]) -> float:
    """Member-steps per second of the members trained one after the other, each alone."""
    start = time.perf_counter()
    for config in configs:
        train(config, None, progress=False)
    return len(configs) * configs[0].total_steps / (time.perf_counter() - start)


def run_case(env: str, kind: str, seeds: int, steps: int, rounds: int) -> dict[str, float]:
    configs = members(env, kind, seeds, steps)
    pop, alone = [], []
    for _ in range(rounds):
        pop.append(time_population(configs))
        alone.append(time_alone(configs))
    return {
        "members": len(configs),
        "population_steps_per_s": statistics.median(pop),
        "alone_steps_per_s": statistics.median(alone),
        "ratio": statistics.median(p / a for p, a in zip(pop, alone, strict=True)),
    }


def scaling(env: str, steps: int, sizes: list[int], out: str | None) -> dict[int, float]:
    """Population member-steps/s for each size (members dealt like the default comparison)."""
    pool = members(env, "all", max(1, -(-max(sizes) // 9)), steps)
    order = sorted(range(len(pool)), key=lambda i: (i % 9, i // 9))  # Alrao, SGD, Adam spread over sizes
    result = {m: time_population([pool[i] for i in sorted(order[:m])]) for m in sizes}
    alone = time_alone([members(env, "alrao", 1, steps)[0]])
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(list(result), list(result.values()), marker="o", label="population (one process)")
        ax.axhline(alone, color="gray", linestyle="--", label="one Alrao run alone")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("members M")
        ax.set_ylabel("member env steps per second (one core)")
        ax.set_title(f"{env}: throughput against population size")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        os.makedirs(out, exist_ok=True)
        fig.savefig(os.path.join(out, f"scaling-{env}.png"), dpi=120)
        plt.close(fig)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="environment steps per member (default: 3000)")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (default: 2)")
    parser.add_argument("--envs", default="CartPole-v1,Pendulum-v1", help="comma-separated envs")
    parser.add_argument("--scaling", action="store_true", help="also measure M = 1 .. 128 and plot it")
    parser.add_argument("--out", default=None, help="folder of the scaling plot")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--small", action="store_true",
                        help="members with the 64-64 network, batch 64, a gradient step every env step (the "
                             "defaults before LunarLander's: a step costs calls, not arithmetic)")
    args = parser.parse_args()
    if args.small:
        NETWORK.update(hidden=(64, 64), batch_size=64, train_freq=1)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # diverging SGD members
    cases = (("M=21: SGD x 7 rates x 3 seeds", "sgd", 3, 5.0), ("M=27: the default comparison, 3 seeds", "all", 3, 5.0),
             ("M=1: one Alrao run", "alrao", 1, 0.9))
    results: dict[str, dict] = {}
    for env in args.envs.split(","):
        for name, kind, seeds, target in cases:
            r = results[f"{env} {name}"] = {**run_case(env, kind, seeds, args.steps, args.rounds), "target": target}
            if not args.json:
                ok = "ok" if r["ratio"] >= target else "MISS"
                print(f"{env:12s} {name:40s} population {r['population_steps_per_s']:7.0f} steps/s, alone "
                      f"{r['alone_steps_per_s']:6.0f} steps/s: x{r['ratio']:.2f} (target >= {target}) {ok}", flush=True)
        if args.scaling:
            sizes = [1, 2, 4, 8, 16, 32, 64, 128]
            results[f"{env} scaling"] = scaling(env, args.steps, sizes, args.out)
            if not args.json:
                print(f"{env} population member-steps/s by M: {results[f'{env} scaling']}", flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
