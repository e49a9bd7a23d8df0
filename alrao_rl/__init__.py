"""alrao-rl: All Learning Rates At Once (Blier, Wolinski, Ollivier 2019) for RL and supervised learning."""

from .heads import AlraoHeads
from .losses import alrao_loss
from .model import AlraoModel, AlraoOutput
from .optim import AlraoAdam, AlraoSGD
from .popart import PopArt
from .rates import log_spaced, log_uniform, register_unit_rule, sample_unit_rates
from .step import AlraoStep, StepResult
from .switch import Switch
from .variance import RunningVariance

__all__ = [
    "AlraoAdam",
    "AlraoHeads",
    "AlraoModel",
    "AlraoOutput",
    "AlraoSGD",
    "AlraoStep",
    "PopArt",
    "RunningVariance",
    "StepResult",
    "Switch",
    "alrao_loss",
    "log_spaced",
    "log_uniform",
    "register_unit_rule",
    "sample_unit_rates",
]
