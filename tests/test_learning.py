"""Long learning checks (``pytest -m slow``): Alrao-DQN learns, and its switch does not end on the slowest head."""

from __future__ import annotations

import warnings

import pytest
import torch

from agents.dqn import ALRAO_SGD, DQNConfig
from agents.population import PopulationDQN
from agents.probe import HeadProbe


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {**ALRAO_SGD, "head_step": "normalized"},
                                     {**ALRAO_SGD, "value_norm": "popart", "td_variance": "unit"}])
def test_the_switch_does_not_end_at_eta_min_on_cartpole(variant: dict) -> None:
    """With the defaults (AlraoAdam on PopArt targets), or AlraoSGD with normalized head steps or on PopArt
    targets at the paper's variance 1, the heads' rates keep their meaning while the body learns: the switch's
    winner is not head 0 (the slowest, ``eta_min``), where AlraoSGD's plain steps at the running variance put
    it in every run measured (README, "What makes Alrao work in RL"), and the runs learn."""
    torch.set_num_threads(1)
    configs = [DQNConfig(env="CartPole-v1", method="alrao", seed=s, total_steps=50_000, eval_every=10_000,
                         **variant) for s in range(3)]
    probe = HeadProbe(every=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summaries = PopulationDQN(configs).train(None, None, progress=False, on_update=probe)
    last_step = max(r["step"] for r in probe.rows)
    winners = [r["winner"] for r in probe.rows if r["step"] == last_step]
    assert len(winners) == 3 and 0 not in winners, winners
    assert max(s["best_eval_return_mean"] for s in summaries) >= 195.0
