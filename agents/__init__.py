"""RL agents on the Alrao core: DQN, its replay buffer and checkpoints, and the SB3 adapter."""

from alrao_rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .dqn import DQNAgent, DQNConfig, evaluate, train
from .replay_buffer import ReplayBatch, ReplayBuffer

__all__ = [
    "CheckpointError",
    "DQNAgent",
    "DQNConfig",
    "ReplayBatch",
    "ReplayBuffer",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
