"""The greedy policy of a trained agent, loaded from what training left on disk, without unpickling code.

Two kinds of files::

    policy = load_policy("runs/CartPole-v1-alrao-seed0")            # a scripts/run_dqn.py logdir
    policy = load_policy("alrao_dqn.zip", env_id="CartPole-v1")      # a Stable-Baselines3 AlraoDQN.save
    mean, std = agents.dqn.evaluate(policy, make_env(policy.env_id, n_bins=policy.n_bins), seeds)

* a ``scripts/run_dqn.py`` run: its ``checkpoint.pt`` holds the configuration (environment, network,
  method) and the Q-network; it is read with :func:`alrao_rl.checkpoint.load_checkpoint`
  (``torch.load(weights_only=True)``), finished or stopped alike;
* an ``AlraoDQN`` zip (:class:`agents.sb3.AlraoDQN`'s ``save``): SB3's own ``load`` unpickles parts of
  the archive with cloudpickle, which can run code from the file. Here only the JSON ``policy_kwargs``
  and the weights ``policy.pth`` (``weights_only=True``) are read, and the policy is rebuilt from them
  on the spaces of ``env_id`` (SB3 does not save which environment it was trained on). ``policy_kwargs``
  that SB3 had to pickle (a class such as ``activation_fn``) are refused.

Acting is greedy: ``argmax_a Q(s, a)`` of the online network (Alrao: the switch average of the heads;
AdaQN: the selected network).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from alrao_rl.checkpoint import CheckpointError, load_checkpoint
from envs import make_env

__all__ = ["SavedPolicy", "find_saved_run", "load_policy"]


@dataclass(frozen=True)
class SavedPolicy:
    """A trained agent's greedy policy and the environment it acts in.

    :param env_id: the gymnasium id (from the checkpoint, or given for an SB3 zip).
    :param n_bins: values per continuous action dimension of :func:`envs.make_env`.
    :param kind: ``"run_dqn"`` or ``"sb3"``.
    :param path: the file it was loaded from.
    :param act: observation -> action.
    :param description: what was loaded, for people (method, steps, heads).
    """

    env_id: str
    n_bins: int
    kind: str
    path: str
    act: Callable[[np.ndarray], int]
    description: str

    def greedy_action(self, obs: np.ndarray) -> int:
        """``argmax_a Q(obs, a)``: what :func:`agents.dqn.evaluate` calls."""
        return self.act(obs)


def _is_sb3_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"data", "policy.pth"} <= names


def find_saved_run(path: str) -> tuple[str, str]:
    """Which file of ``path`` holds the agent, and its kind (``"run_dqn"`` or ``"sb3"``).

    ``path`` may be a ``run_dqn.py`` logdir (its ``checkpoint.pt``), a folder holding exactly one
    ``.zip`` (and no ``checkpoint.pt``), an SB3 zip (a ``.zip`` file, or any file laid out as one), or a
    checkpoint file.

    :raises FileNotFoundError: when ``path`` does not exist or holds neither.
    :raises CheckpointError: when a folder holds several zips.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if os.path.isdir(path):
        checkpoint = os.path.join(path, "checkpoint.pt")
        if os.path.isfile(checkpoint):
            return checkpoint, "run_dqn"
        zips = sorted(n for n in os.listdir(path) if n.endswith(".zip"))
        if len(zips) > 1:
            raise CheckpointError(f"{path!r} holds several zips ({', '.join(zips)}); name the one to load")
        if not zips:
            raise FileNotFoundError(f"{path!r} holds neither checkpoint.pt (a run_dqn.py run) nor an AlraoDQN .zip")
        return os.path.join(path, zips[0]), "sb3"
    return path, "sb3" if path.endswith(".zip") or _is_sb3_zip(path) else "run_dqn"


def load_policy(path: str, env_id: str | None = None, n_bins: int | None = None) -> SavedPolicy:
    """The greedy policy saved in ``path`` (see :func:`find_saved_run`).

    :param path: a run_dqn.py logdir or checkpoint, an AlraoDQN zip or a folder holding one.
    :param env_id: the environment of an SB3 zip (required there); for a run_dqn.py checkpoint, which
        names its own, it must be None.
    :param n_bins: for an SB3 zip, the discretization the model was trained with (default 5); for a
        run_dqn.py checkpoint it must be None (its config has it).
    :raises FileNotFoundError: nothing to load at ``path``.
    :raises CheckpointError: a file that is corrupt, foreign (not a run_dqn.py checkpoint, not an
        AlraoDQN zip), or does not fit ``env_id``.
    :raises ValueError: ``env_id`` missing for a zip, or given for a checkpoint.
    """
    file, kind = find_saved_run(path)
    if kind == "run_dqn":
        if env_id is not None or n_bins is not None:
            raise ValueError(f"{file!r} is a run_dqn.py checkpoint, which names its own environment and n_bins")
        return _load_run_dqn(file)
    if env_id is None:
        raise ValueError(f"{file!r} is a Stable-Baselines3 zip, which does not record its environment: give env_id")
    return _load_sb3(file, env_id, 5 if n_bins is None else n_bins)


def _load_run_dqn(file: str) -> SavedPolicy:
    from agents.dqn import DQNAgent, DQNConfig

    saved = load_checkpoint(file)
    try:
        values = dict(saved["config"])
        values["hidden"] = tuple(values["hidden"])
        config = DQNConfig(**values)
        q_state = saved["agent"]["q_net"]
        step = int(saved["progress"]["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file!r} is not a run_dqn.py checkpoint ({type(e).__name__}: {e})") from e
    env = make_env(config.env, n_bins=config.n_bins)
    try:
        obs_dim, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    finally:
        env.close()
    agent = DQNAgent(obs_dim, n_actions, config)
    try:
        agent.q_net.load_state_dict(q_state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{file!r}: its Q-network does not fit its own config: {_one_line(e)}") from e
    agent.q_net.eval()
    heads = f", {config.heads} heads" if config.method == "alrao" else ""
    if agent.adaqn is not None:
        s = agent.adaqn.selected
        heads = f", {len(config.adaqn_rates)} networks, network {s} (Adam {config.adaqn_rates[s]:g}) selected"
    return SavedPolicy(config.env, config.n_bins, "run_dqn", file, agent.greedy_action,
                       f"run_dqn.py {config.method} on {config.env}{heads}, {step} steps, seed {config.seed}")


def _load_sb3(file: str, env_id: str, n_bins: int) -> SavedPolicy:
    from agents.sb3 import AlraoDQNPolicy

    try:
        with zipfile.ZipFile(file) as archive:
            data = json.loads(archive.read("data"))
            weights = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{file!r} is not a readable Stable-Baselines3 zip: {_one_line(e)}") from e
    except Exception as e:  # torch.load refuses a pickle with code in many ways
        raise CheckpointError(f"{file!r}: policy.pth is not a weights-only torch file: {_one_line(e)}") from e
    if not (isinstance(weights, dict) and "q_net.alrao_model.heads.weight" in weights):
        raise CheckpointError(f"{file!r} is not an AlraoDQN model (its policy has no Alrao heads)")
    kwargs = data.get("policy_kwargs") if isinstance(data, dict) else None
    if not isinstance(kwargs, dict) or ":serialized:" in kwargs:
        raise CheckpointError(
            f"{file!r}: its policy_kwargs were pickled by SB3 (e.g. an activation_fn class); reading them would "
            f"run code from the file, which this loader does not do"
        )
    env = make_env(env_id, n_bins=n_bins)
    try:
        policy = AlraoDQNPolicy(env.observation_space, env.action_space, lambda _: 1.0, **kwargs)
        policy.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file!r} does not fit {env_id}: {_one_line(e)}") from e
    finally:
        env.close()
    policy.set_training_mode(False)

    def act(obs: np.ndarray) -> int:
        action, _ = policy.predict(obs, deterministic=True)
        return int(action)

    steps = data.get("num_timesteps", "?")
    return SavedPolicy(env_id, n_bins, "sb3", file, act,
                       f"AlraoDQN on {env_id}, {policy.n_heads} heads, {steps} steps")


def _one_line(e: BaseException) -> str:
    """An exception's message on one line, cut to 300 characters (load_state_dict's run over several)."""
    text = " ".join(str(e).split())
    return (text[:297] + "...") if len(text) > 300 else text or type(e).__name__
