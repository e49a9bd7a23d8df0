"""Environment helpers: every env exposes ``Discrete`` actions and flat ``Box`` observations."""

from envs.discretize import MAX_DISCRETE_ACTIONS, DiscretizeAction
from envs.make import SUPPORTED_ENV_IDS, make_env

__all__ = ["MAX_DISCRETE_ACTIONS", "SUPPORTED_ENV_IDS", "DiscretizeAction", "make_env"]
