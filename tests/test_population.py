"""PopulationDQN: every member is its single run, members never mix, the population resumes exactly."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import population as population_module
from agents.dqn import ALRAO_SGD, DQNConfig, train
from agents.population import PopulationBuffer, PopulationDQN
from alrao_rl.checkpoint import load_checkpoint

SHORT = {"env": "CartPole-v1", "total_steps": 1500, "learning_starts": 1000, "eval_every": 1500, "eval_episodes": 2}


def _member_state(pop: PopulationDQN, k: int) -> dict[str, torch.Tensor]:
    """Member ``k``'s online network, as the float tensors of its group's state dict (member slice)."""
    group = next(g for g in pop.groups if k in g.members)
    j = group.members.index(k)
    return {n: v[j] for n, v in group.online.state_dict().items() if v.dtype.is_floating_point and "switch" not in n}


def test_every_member_equals_its_single_run_bit_for_bit_for_500_updates(tmp_path: Path) -> None:
    configs = [
        DQNConfig(method="alrao", seed=0, **SHORT),
        DQNConfig(method="sgd", lr=1e-2, seed=1, **SHORT),
        DQNConfig(method="adam", seed=2, **SHORT),
        DQNConfig(method="alrao", seed=3, lr=0.5, **SHORT),
    ]
    pop = PopulationDQN(configs)
    logdirs = [str(tmp_path / f"member{k}") for k in range(len(configs))]
    summaries = pop.train(logdirs, str(tmp_path / "population"), progress=False)
    for k, config in enumerate(configs):
        single = train(config, str(tmp_path / f"single{k}"), progress=False)
        assert summaries[k]["episodes"] == single["episodes"]
        assert summaries[k]["final_eval_return_mean"] == single["final_eval_return_mean"], f"member {k}"
        evals = (tmp_path / f"member{k}" / "evals.csv").read_text()
        assert evals == (tmp_path / f"single{k}" / "evals.csv").read_text()
        saved = load_checkpoint(tmp_path / f"single{k}" / "checkpoint.pt")["agent"]["q_net"]
        singles = [v for n, v in saved.items() if v.dtype.is_floating_point and "switch" not in n]
        members = list(_member_state(pop, k).values())
        assert len(singles) == len(members)
        for s, p in zip(singles, members, strict=True):
            assert torch.equal(p, s), f"member {k}"
        assert summaries[k]["td_variance"] == single["td_variance"]


def test_a_diverging_member_leaves_the_others_untouched() -> None:
    """A member whose weights are NaN (a diverged SGD run) stays NaN in its own slices; the other
    members, in the same groups, equal a population without it bit for bit."""
    others = [DQNConfig(method="sgd", lr=1e-2, seed=1, **SHORT), DQNConfig(method="alrao", seed=2, **SHORT),
              DQNConfig(method="adam", seed=3, **SHORT), DQNConfig(method="alrao", seed=4, **SHORT)]
    with_it = PopulationDQN([DQNConfig(method="sgd", lr=10.0, seed=0, **SHORT), others[0], others[1],
                             DQNConfig(method="alrao", seed=5, **SHORT), *others[2:]])
    for group in with_it.groups:  # members 0 (SGD) and 3 (Alrao) have diverged
        with torch.no_grad():
            for k in (0, 3):
                if k in group.members:
                    for param in group.online.parameters():
                        param[group.members.index(k)] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summaries = with_it.train(None, None, progress=False)
        without = PopulationDQN(others)
        without.train(None, None, progress=False)
    assert not torch.isfinite(next(iter(_member_state(with_it, 0).values()))).any()
    assert all(math.isfinite(s["final_eval_return_mean"]) for s in summaries)  # reported, then judged as failed
    for k, j in ((1, 0), (2, 1), (4, 2), (5, 3)):
        for (name, a), b in zip(_member_state(with_it, k).items(), _member_state(without, j).values(), strict=True):
            assert torch.equal(a, b), (k, name)


@pytest.mark.parametrize("method", ["alrao", "sgd", "adam"])
def test_a_population_of_one_is_its_single_run(method: str, tmp_path: Path) -> None:
    config = DQNConfig(method=method, lr=1e-2 if method == "sgd" else None, seed=5, **SHORT)
    pop = PopulationDQN([config])
    pop.train(None, None, progress=False)
    train(config, str(tmp_path), progress=False)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["agent"]["q_net"]
    singles = [v for n, v in saved.items() if v.dtype.is_floating_point and "switch" not in n]
    assert all(torch.equal(p, s) for s, p in zip(singles, _member_state(pop, 0).values(), strict=True))


@pytest.mark.parametrize("variant", [{**ALRAO_SGD, "head_step": "plain", "value_norm": "none"},
                                     {**ALRAO_SGD, "head_step": "normalized", "value_norm": "popart"},
                                     {**ALRAO_SGD, "head_step": "plain", "value_norm": "popart",
                                      "td_variance": "switch"},
                                     {"head_step": "plain", "value_norm": "popart", "td_variance": "unit",
                                      "alrao_optimizer": "adam", "eta_min": 1e-6, "eta_max": 1.0}])
def test_a_population_of_each_head_variant_equals_its_single_runs(variant: dict, tmp_path: Path) -> None:
    configs = [DQNConfig(method="alrao", seed=s, **variant, **SHORT) for s in (0, 1)]
    pop = PopulationDQN(configs)
    pop.train(None, None, progress=False)
    group = pop.groups[0]
    assert group.online.head_step == variant["head_step"]
    assert ("switch_variance" in group.variances) == (variant.get("td_variance") == "switch")
    assert type(group.optimizer).__name__ == ("AlraoAdam" if variant.get("alrao_optimizer") == "adam" else "AlraoSGD")
    assert (group.popart is not None) == (variant["value_norm"] == "popart")
    for k, config in enumerate(configs):
        train(config, str(tmp_path / f"single{k}"), progress=False)
        saved = load_checkpoint(tmp_path / f"single{k}" / "checkpoint.pt")["agent"]
        singles = [v for n, v in saved["q_net"].items() if v.dtype.is_floating_point and "switch" not in n]
        for s, p in zip(singles, _member_state(pop, k).values(), strict=True):
            assert torch.equal(p, s), f"member {k}"
        if group.popart is not None:  # the same scale, and the exported member carries it
            assert saved["popart"]["second"] == [group.popart.second[k]]
            assert pop.member_agent(k).popart.state_dict() == saved["popart"]


@pytest.mark.parametrize("variant", [{}, {"value_norm": "popart", "td_variance": "switch"}])
def test_the_population_resumes_exactly(variant: dict, tmp_path: Path) -> None:
    """Stopped mid-episode (environments restored by replaying their episode), resumed: the same
    weights, replay and evaluations as a population never stopped (also with PopArt's scale and a
    switch variance to carry)."""
    configs = [DQNConfig(method=m, seed=s, lr=1e-2 if m == "sgd" else None, checkpoint_every=10**6, **variant,
                         **SHORT) for m, s in (("alrao", 0), ("sgd", 1), ("adam", 2))]
    whole = PopulationDQN(configs)
    whole.train([str(tmp_path / f"w{k}") for k in range(3)], str(tmp_path / "whole"), progress=False)
    first = PopulationDQN([DQNConfig(**{**vars(c), "total_steps": 1237}) for c in configs])
    first.train(None, str(tmp_path / "parts"), progress=False)  # 1237 steps, mid-episode for each member
    second = PopulationDQN(configs)
    second.train([str(tmp_path / f"p{k}") for k in range(3)], str(tmp_path / "parts"), resume=True, progress=False)
    for k in range(3):
        for (name, a), b in zip(_member_state(whole, k).items(), _member_state(second, k).values(), strict=True):
            assert torch.equal(a, b), (k, name)
        whole_evals = (tmp_path / f"w{k}" / "evals.csv").read_text().splitlines()
        resumed_evals = (tmp_path / f"p{k}" / "evals.csv").read_text().splitlines()
        assert resumed_evals[-1] == whole_evals[-1]  # (the shorter first part also evaluated at its end)
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert torch.equal(a["buffer"]["observations"], b["buffer"]["observations"])
    assert a["rngs"] == b["rngs"]
    assert whole.groups[0].td_variances() == second.groups[0].td_variances()
    if variant:
        assert whole.groups[0].popart.state_dict() == second.groups[0].popart.state_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [({"gamma": 0.9}, "differs in gamma"), ({"env": "Acrobot-v1"}, "differs in env"),
     ({"hidden": (32, 32)}, "differs in hidden")],
)
def test_members_may_differ_only_in_seed_method_and_lr(change: dict, match: str) -> None:
    base = DQNConfig(**SHORT)
    with pytest.raises(ValueError, match=match):
        PopulationDQN([base, DQNConfig(**{**vars(base), **change})])


def test_a_population_that_does_not_fit_in_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(population_module.replay_buffer, "available_memory", lambda: 10**6)
    with pytest.raises(ValueError, match=r"--buffer-size"):
        PopulationDQN([DQNConfig(env="CartPole-v1", total_steps=100_000, seed=s) for s in range(3)])


def test_buffer_capacity_is_at_most_the_steps_of_the_run() -> None:
    pop = PopulationDQN([DQNConfig(env="CartPole-v1", total_steps=2000, buffer_size=10**6)])
    assert pop.capacity == 2000
    assert pop.memory_bytes == PopulationBuffer.nbytes_for(1, (4,), 2000)


def test_each_member_samples_its_replay_as_its_single_buffer_would() -> None:
    from agents.replay_buffer import ReplayBuffer

    gen = np.random.default_rng(0)
    pop = PopulationBuffer(3, (2,), 50, seeds=[5, 6, 7])
    singles = [ReplayBuffer((2,), 1000, seed=s) for s in (5, 6, 7)]
    for _ in range(40):
        obs, nxt = gen.normal(size=(3, 2)).astype(np.float32), gen.normal(size=(3, 2)).astype(np.float32)
        a, r, d = gen.integers(0, 3, 3), gen.normal(size=3).astype(np.float32), gen.random(3) < 0.1
        pop.add(obs, a, r, nxt, d)
        for k, buf in enumerate(singles):
            buf.add(obs[k], int(a[k]), float(r[k]), nxt[k], bool(d[k]))
    batch = pop.sample(16)
    for k, buf in enumerate(singles):
        expected = buf.sample(16).to_torch()
        for got, want in zip(batch, expected, strict=True):
            torch.testing.assert_close(got[k], want)



# --- the command line: run_dqn.py --seeds ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CLI = ["--env", "CartPole-v1", "--total-steps", "2500", "--learning-starts", "500", "--checkpoint-every", "200",
       "--eval-every", "1000", "--eval-episodes", "2", "--no-progress"]  # fmt: skip


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_dqn.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_run_dqn_trains_several_seeds_as_one_population_each_equal_to_its_run_alone(tmp_path: Path) -> None:
    from alrao_cli.run_dqn import main

    argv = ["--env", "CartPole-v1", "--alrao", "--total-steps", "1200", "--learning-starts", "1000",
            "--eval-every", "600", "--eval-episodes", "2", "--no-progress"]  # fmt: skip
    assert main([*argv, "--seeds", "0,2", "--logdir", str(tmp_path / "pop")]) == 0
    assert main([*argv, "--seed", "2", "--logdir", str(tmp_path / "alone")]) == 0
    assert (tmp_path / "pop" / "seed2" / "evals.csv").read_text() == (tmp_path / "alone" / "evals.csv").read_text()
    member = load_checkpoint(tmp_path / "pop" / "seed2" / "checkpoint.pt")["agent"]["q_net"]
    alone = load_checkpoint(tmp_path / "alone" / "checkpoint.pt")["agent"]["q_net"]
    assert all(torch.equal(member[k], alone[k]) for k in alone)
    assert (tmp_path / "pop" / "checkpoint.pt").exists()  # the population's own, to resume it


@pytest.mark.parametrize("bad", ["0,x", "1,1", "-1", ""])
def test_bad_seeds_exit_2_with_one_line(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alrao_cli.run_dqn import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--env", "CartPole-v1", "--seeds", bad, "--logdir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err
    assert not (tmp_path / "x").exists()


def test_a_population_killed_with_sigkill_resumes_with_the_results_of_one_never_killed(tmp_path: Path) -> None:
    """kill -9 after a checkpoint (any step, mid-episode: environments are restored by replaying their
    episode); --resume then ends with the very weights and evaluations of an uninterrupted population."""
    argv = [*CLI, "--optimizer", "adam", "--seeds", "0,1,2"]
    full = _cli(*argv, "--logdir", str(tmp_path / "full"))
    killed = _cli(*argv, "--logdir", str(tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not (ckpt.exists() and load_checkpoint(ckpt)["progress"][0]["step"] >= 1100):
        assert killed.poll() is None, killed.stderr.read() if killed.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL, "the run ended before the kill: make it longer"
    step = load_checkpoint(ckpt)["progress"][0]["step"]
    assert 1100 <= step < 2500 and not (tmp_path / "run" / "seed0" / "summary.json").exists()
    resumed = _cli(*argv, "--logdir", str(tmp_path / "run"), "--resume")
    assert resumed.wait(300) == 0, resumed.stderr.read() if resumed.stderr else ""
    assert full.wait(300) == 0
    for k in range(3):
        a = load_checkpoint(tmp_path / "full" / f"seed{k}" / "checkpoint.pt")["agent"]["q_net"]
        b = load_checkpoint(tmp_path / "run" / f"seed{k}" / "checkpoint.pt")["agent"]["q_net"]
        assert all(torch.equal(a[key], b[key]) for key in a), k
        evals = [(tmp_path / d / f"seed{k}" / "evals.csv").read_text() for d in ("full", "run")]
        assert evals[0] == evals[1]


def test_a_member_exported_as_its_single_agent_acts_as_the_member() -> None:
    pop = PopulationDQN([DQNConfig(method=m, seed=s, lr=1e-2 if m == "sgd" else None, **SHORT)
                         for m, s in (("alrao", 0), ("sgd", 1), ("adam", 2))])
    pop.train(None, None, progress=False)
    obs = torch.randn(3, 5, 4)
    q = pop._q_values(obs)
    for k in range(3):
        agent = pop.member_agent(k)
        assert torch.equal(agent.q_values(obs[k]), q[k])
