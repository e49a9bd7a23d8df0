"""Alrao for Stable-Baselines3.

* :class:`AlraoDQN` (:mod:`agents.sb3.dqn`): SB3's DQN whose Q-network is an Alrao model.
* :class:`AlraoSAC`, :class:`AlraoTD3` (:mod:`agents.sb3.sac`, :mod:`agents.sb3.td3`): SB3's SAC and TD3
  whose twin critics are Alrao models (:mod:`agents.sb3.critic`).
"""

from .critic import AlraoContinuousCritic
from .dqn import AlraoDQN, AlraoDQNPolicy, AlraoQNetwork
from .sac import AlraoSAC, AlraoSACPolicy
from .td3 import AlraoTD3, AlraoTD3Policy

__all__ = [
    "AlraoContinuousCritic",
    "AlraoDQN",
    "AlraoDQNPolicy",
    "AlraoQNetwork",
    "AlraoSAC",
    "AlraoSACPolicy",
    "AlraoTD3",
    "AlraoTD3Policy",
]
