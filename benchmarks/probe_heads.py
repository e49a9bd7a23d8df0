"""The heads' rate grid while the body learns: AlraoSGD's plain head steps (Algorithm 1), normalized ones,
normalized ones on PopArt-rescaled targets, and the defaults (AlraoAdam on PopArt targets).

For each environment, trains Alrao DQN runs (one population per variant, ``--seeds`` seeds, the
DQN defaults otherwise) with :class:`agents.probe.HeadProbe` and reports, per run: the final return, the
switch's winner at the end (the head with the largest averaging weight) and its ``s_j`` (the fraction
of the error its step corrects along the top curvature direction), the dead heads, and each head's
``s_j`` when it died; then draws, over training, the body's feature norm ``mean ||z||``, the top
eigenvalue ``lambda`` of the heads' input Gram matrix, the number of dead heads and the winner.

    python benchmarks/probe_heads.py --out docs/results/heads                     # 4 envs, 3 seeds
    python benchmarks/probe_heads.py --envs CartPole-v1:50000 --seeds 5 --variants popart --out /tmp/heads
    python benchmarks/probe_heads.py --out docs/results/heads --plot-only        # redraw from the CSVs
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

DEFAULT_ENVS = "CartPole-v1:50000,Pendulum-v1:30000,Acrobot-v1:50000,LunarLander-v3:250000"
_SGD = {"alrao_optimizer": "sgd", "eta_min": 1e-5, "eta_max": 10.0, "td_variance": "running"}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {**_SGD, "head_step": "plain", "value_norm": "none"},
    "normalized": {**_SGD, "head_step": "normalized", "value_norm": "none"},
    "popart": {**_SGD, "head_step": "normalized", "value_norm": "popart"},
    "popart-unit": {**_SGD, "head_step": "plain", "value_norm": "popart", "td_variance": "unit"},
    "popart-switch": {**_SGD, "head_step": "plain", "value_norm": "popart", "td_variance": "switch"},
    "default": {},
}
"""Each variant's Alrao settings: AlraoSGD (the paper's, ``agents.dqn.ALRAO_SGD``; heads' variance = the running
one) with Algorithm 1's plain head steps; head steps normalized by their curvature; normalized head steps on TD
targets rescaled by PopArt (``alrao_rl.PopArt``); plain steps on PopArt targets at the paper's variance 1
(Algorithm 1 exactly, on rescaled targets); the same with the switch scoring the heads at the running variance;
and the DQN defaults (AlraoAdam in [1e-6, 0.1] on PopArt targets at variance 1; its ``s_j`` is a plain SGD
step's and does not describe Adam's)."""
COLORS = {"plain": "tab:red", "normalized": "tab:blue", "popart": "tab:green", "popart-unit": "tab:purple",
          "popart-switch": "tab:orange", "default": "black"}


def run_variant(env: str, steps: int, variant: str, seeds: int, out: str, every: int) -> dict[str, Any]:
    """One population of Alrao runs with the probe; writes ``probe-<env>-<variant>.csv``."""
    import torch

    from agents.dqn import DQNConfig
    from agents.population import PopulationDQN
    from agents.probe import HeadProbe

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    eval_every = max(steps // 10, 1000)
    configs = [DQNConfig(env=env, method="alrao", seed=s, total_steps=steps, eval_every=eval_every,
                         **VARIANTS[variant]) for s in range(seeds)]  # type: ignore[arg-type]
    probe = HeadProbe(every=every, label=variant)
    summaries = PopulationDQN(configs).train(None, None, progress=False, on_update=probe)
    probe.write_csv(os.path.join(out, f"probe-{env}-{variant}.csv"))
    finals = [s["final_eval_return_mean"] for s in summaries]
    with open(os.path.join(out, f"returns-{env}-{variant}.json"), "w") as f:
        json.dump({"finals": finals, "evals": [s.get("best_eval_return_mean") for s in summaries]}, f)
    return {"env": env, "variant": variant, "finals": finals}


def read_probe(path: str) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: (v if k in ("label", "env", "head_step") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def deaths(rows: list[dict[str, float]]) -> list[float]:
    """``s_j`` of each head at the last record before it was first seen dead, per seed."""
    by_seed: dict[float, list[dict[str, float]]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], []).append(row)
    found = []
    for seed_rows in by_seed.values():
        seed_rows.sort(key=lambda r: r["step"])
        heads = [k[5:] for k in seed_rows[0] if k.startswith("dead_")]
        for h in heads:
            for before, after in itertools.pairwise(seed_rows):
                if not before[f"dead_{h}"] and after[f"dead_{h}"]:
                    found.append(before[f"s_{h}"])
                    break
    return found


def summarize(out: str, envs: list[tuple[str, int]]) -> list[str]:
    """The table (Markdown lines) of every env and variant found in ``out``."""
    lines = ["| env | variant | final return (mean over seeds) | winner head at the end (per seed) | "
             "winner's s_j | dead heads at the end | s_j of heads when they died (median, range) |",
             "|---|---|---|---|---|---|---|"]
    for env, _ in envs:
        for variant in VARIANTS:
            path = os.path.join(out, f"probe-{env}-{variant}.csv")
            if not os.path.exists(path):
                continue
            rows = read_probe(path)
            last_step = max(r["step"] for r in rows)
            last = sorted((r for r in rows if r["step"] == last_step), key=lambda r: r["seed"])
            with open(os.path.join(out, f"returns-{env}-{variant}.json")) as f:
                finals = json.load(f)["finals"]
            died = deaths(rows)
            died_text = f"{statistics.median(died):.2g} ({min(died):.2g}-{max(died):.2g})" if died else "none died"
            returns = ", ".join(f"{v:.0f}" for v in finals)
            winners = ", ".join(str(int(r["winner"])) for r in last)
            winner_s = ", ".join(f"{r['winner_s']:.2g}" for r in last)
            dead = ", ".join(str(int(r["dead"])) for r in last)
            lines.append(f"| {env} | {variant} | {statistics.mean(finals):.1f} ({returns}) | {winners} | "
                         f"{winner_s} | {dead} | {died_text} |")
    return lines


def plot(out: str, envs: list[tuple[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("z_norm", "mean ||z|| (body features)", True), ("lambda", "top eigenvalue of E[z~ z~^T]", True),
              ("dead", "dead heads", False), ("winner", "switch's winner (head index)", False))
    fig, axes = plt.subplots(len(envs), len(panels), figsize=(16, 3.2 * len(envs)), squeeze=False)
    for i, (env, _) in enumerate(envs):
        for variant, color in COLORS.items():
            path = os.path.join(out, f"probe-{env}-{variant}.csv")
            if not os.path.exists(path):
                continue
            rows = read_probe(path)
            for seed in sorted({r["seed"] for r in rows}):
                seed_rows = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["step"])
                steps = [r["step"] for r in seed_rows]
                for ax, (key, _, _) in zip(axes[i], panels, strict=True):
                    ax.plot(steps, [r[key] for r in seed_rows], color=color, alpha=0.6, lw=1,
                            label=variant if seed == 0 else None)
        for ax, (key, title, log) in zip(axes[i], panels, strict=True):
            ax.set_title(f"{env}: {title}", fontsize=9)
            if log:
                ax.set_yscale("log")
            if key == "winner":
                ax.set_ylim(-0.5, 9.5)
            ax.set_xlabel("environment step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heads.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default=DEFAULT_ENVS, help=f"env:steps, comma-separated (default: {DEFAULT_ENVS})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default: 3)")
    parser.add_argument("--every", type=int, default=100, help="record every this many updates (default: 100)")
    parser.add_argument("--workers", type=int, default=2, help="populations trained in parallel (default: 2)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--out", required=True, help="output folder (CSVs, heads.png, heads.md)")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the CSVs in --out")
    args = parser.parse_args()
    envs = [(e.split(":")[0], int(e.split(":")[1])) for e in args.envs.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    os.makedirs(args.out, exist_ok=True)
    if not args.plot_only:
        jobs = [(env, steps, v, args.seeds, args.out, args.every) for env, steps in envs for v in variants]
        jobs.sort(key=lambda j: -j[1])  # the longest first
        with ProcessPoolExecutor(args.workers) as pool:
            for result in pool.map(run_variant, *zip(*jobs, strict=True)):
                print(f"{result['env']} {result['variant']}: final returns {result['finals']}", flush=True)
    plot(args.out, envs)
    table = summarize(args.out, envs)
    with open(os.path.join(args.out, "heads.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
