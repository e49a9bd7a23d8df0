"""The supervised training loop: config defaults and checks, metrics, early stopping, outputs, resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from alrao_rl.checkpoint import CheckpointError, load_checkpoint
from alrao_rl.supervised import train as train_module
from alrao_rl.supervised.distributed import DistContext
from alrao_rl.supervised.train import (
    EVALS_COLUMNS,
    SUMMARY_KEYS,
    SupervisedNet,
    TrainConfig,
    check_data,
    evaluate,
    load_resumable,
    make_optimizer,
    prepare_cifar,
    prepare_ptb,
    train_classifier,
    train_step,
)

PTB_LINES = [
    " no it was n't black monday ",
    " but while the new york stock exchange did n't fall apart friday as the dow jones industrial average plunged",
    " N points most of it in the final hour it barely managed to stay this side of chaos ",
    " some circuit breakers installed after the october N crash failed their first test traders say ",
    " unable to cool the selling panic in both stocks and futures ",
    " the N stock specialist firms on the big board floor the buyers and sellers of last resort ",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def ptb_files(tmp_path: Path) -> list[Path]:
    paths = []
    for name, lines in (("train", PTB_LINES * 2), ("valid", PTB_LINES[:3]), ("test", PTB_LINES[3:])):
        path = tmp_path / f"ptb.{name}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def _tiny_ptb_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{"task": "ptb", "epochs": 2, "batch_size": 2, "bptt": 30, **overrides})


# --- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("cifar", {"model": "vgg19", "eta_min": 1e-5, "eta_max": 10.0, "heads": 10, "batch_size": 32}),
        ("ptb", {"model": "lstm", "eta_min": 1e-3, "eta_max": 100.0, "heads": 6, "batch_size": 20, "bptt": 70}),
    ],
)
def test_defaults_are_the_papers_settings_per_task(task: str, expected: dict[str, Any]) -> None:
    config = TrainConfig(task=task)
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.patience == 20 and config.method == "alrao" and config.effective_lr == 1.0


@pytest.mark.parametrize(
    ("method", "lr", "effective"), [("alrao", None, 1.0), ("adam", None, 1e-3), ("sgd", 0.1, 0.1), ("adam", 0.01, 0.01)]
)
def test_effective_lr_per_method(method: str, lr: float | None, effective: float) -> None:
    assert TrainConfig(method=method, lr=lr).effective_lr == effective


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"task": "mnist"}, "task must be one of"),
        ({"method": "rmsprop"}, "method must be one of"),
        ({"method": "sgd"}, "method 'sgd' needs a learning rate"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"eta_min": 0.0}, "eta_min must be a finite number > 0, got 0.0"),
        ({"eta_max": math.inf}, "eta_max must be a finite number > 0"),
        ({"eta_min": 1.0, "eta_max": 0.1}, "eta_min must be <= eta_max"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"patience": 0}, "patience must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"model": "alexnet"}, r"model must be one of .* for task 'cifar'"),
        ({"task": "ptb", "model": "vgg19"}, r"model must be one of \('lstm',\)"),
        ({"level": "byte"}, "level must be one of"),
        ({"width": 0.0}, "width must be a finite number > 0"),
        ({"limit_train": 0}, "limit_train must be an integer >= 1"),
        ({"max_weight": -1.0}, "max_weight must be > 0"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_bad_config_raises_naming_field(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**kwargs)


# --- data ---------------------------------------------------------------------------------------------


def test_cifar_split_limit_and_normalisation_use_training_images_only(tmp_path: Path) -> None:
    from test_cifar_data import _fake_batches, _write_python

    _write_python(tmp_path, _fake_batches(records=20))  # 100 official training images, 20 test images
    data = prepare_cifar(tmp_path)
    assert data.valid_images.shape[0] == 20 and data.train_images.shape[0] == 80  # a fifth, as 10k of 50k
    assert data.test_images.shape[0] == 20
    limited = prepare_cifar(tmp_path, valid_size=10, limit_train=30)
    assert limited.train_images.shape[0] == 30 and limited.valid_images.shape[0] == 10
    x = limited.train_images.double() / 255
    torch.testing.assert_close(limited.mean.double(), x.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(limited.std.double(), x.std(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("valid_size", "pattern"), [(100, r"valid_size must lie in 1\.\.99"), (0, "valid_size")])
def test_cifar_impossible_validation_size_is_refused(tmp_path: Path, valid_size: int, pattern: str) -> None:
    from test_cifar_data import _fake_batches, _write_python

    _write_python(tmp_path, _fake_batches(records=20))
    with pytest.raises(ValueError, match=pattern):
        prepare_cifar(tmp_path, valid_size=valid_size)


def test_ptb_text_too_short_for_the_streams_is_refused(ptb_files: list[Path]) -> None:
    data = prepare_ptb(*ptb_files, level="word")
    with pytest.raises(ValueError, match="too few for 40 streams"):
        check_data(_tiny_ptb_config(batch_size=20, level="word"), data, world_size=2)


# --- metrics ------------------------------------------------------------------------------------------


def _zero_head_net(method: str, n_classes: int = 8) -> SupervisedNet:
    head = nn.Linear(3, n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return SupervisedNet(nn.Linear(4, 3), head, method, heads=3)


@pytest.mark.parametrize("method", ["alrao", "sgd"])
def test_uniform_prediction_costs_log_classes_in_the_loss_unit(method: str) -> None:
    net = _zero_head_net(method)
    y = torch.tensor([0, 3, 0, 5])
    batches = [(torch.randn(4, 4), y)]
    loss_nats, accuracy = evaluate(net, iter(batches))
    assert loss_nats == pytest.approx(math.log(8))
    assert accuracy == pytest.approx(0.5)  # argmax of a tie is class 0
    loss_bits, _ = evaluate(net, iter(batches), loss_scale=1 / math.log(2))
    assert loss_bits == pytest.approx(3.0)


def test_alrao_evaluation_scores_the_switch_mixture() -> None:
    torch.manual_seed(0)
    net = SupervisedNet(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.Linear(6, 5), "alrao", heads=3)
    with torch.no_grad():
        net.model.heads.weight.add_(torch.randn_like(net.model.heads.weight))
    net.model.switch.update(torch.tensor([-0.5, -3.0, -1.0]))
    x, y = torch.randn(10, 4), torch.randint(0, 5, (10,))
    loss, _ = evaluate(net, iter([(x, y)]))
    with torch.no_grad():
        heads = torch.log_softmax(net.model.heads(net.model.body(x)), dim=-1)  # [B, N, C]
        mix = torch.logsumexp(heads + net.model.switch.posterior.log().float().view(1, 3, 1), dim=1)
    assert loss == pytest.approx(float(-mix.gather(1, y[:, None]).mean()), rel=1e-5)


def test_alrao_step_updates_the_switch_and_baseline_step_has_no_switch() -> None:
    torch.manual_seed(0)
    config = TrainConfig(eta_min=1e-3, eta_max=1.0, heads=4)
    net = SupervisedNet(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.Linear(6, 3), "alrao", heads=4)
    optimizer = make_optimizer(net, config)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss, hidden = train_step(net, optimizer, x, y, ctx=DistContext())
    assert hidden is None and loss.requires_grad is False and int(net.model.switch.steps) == 1
    baseline = SupervisedNet(nn.Linear(4, 6), nn.Linear(6, 3), "sgd")
    assert isinstance(make_optimizer(baseline, TrainConfig(method="sgd", lr=0.1)), torch.optim.SGD)
    assert isinstance(make_optimizer(baseline, TrainConfig(method="adam")), torch.optim.Adam)
    before = baseline.model.head.weight.clone()
    train_step(baseline, make_optimizer(baseline, TrainConfig(method="sgd", lr=0.1)), x, y)
    assert not torch.equal(before, baseline.model.head.weight)


# --- the loop -----------------------------------------------------------------------------------------


def _read_evals(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("method", ["alrao", "adam"])
def test_run_writes_evals_summary_checkpoints_and_events(ptb_files: list[Path], tmp_path: Path, method: str) -> None:
    data = prepare_ptb(*ptb_files, level="char")
    logdir = tmp_path / "run"
    logdir.mkdir()
    summary = train_classifier(_tiny_ptb_config(method=method), data, logdir, progress=False)
    rows = _read_evals(logdir / "evals.csv")
    assert rows[0] == list(EVALS_COLUMNS) and [r[0] for r in rows[1:]] == ["1", "2"]
    saved = json.loads((logdir / "summary.json").read_text())
    assert list(saved) == list(SUMMARY_KEYS) and saved == summary
    assert saved["task"] == "ptb-char" and saved["model"] == "lstm" and saved["epochs"] == 2
    assert saved["heads"] == (6 if method == "alrao" else 1)
    assert (saved["eta_min"], saved["eta_max"]) == ((1e-3, 100.0) if method == "alrao" else (None, None))
    assert 0 < saved["test_loss"] < 2 * math.log2(len(data.vocab)) and 0 <= saved["test_accuracy"] <= 1
    assert (logdir / "checkpoint.pt").exists() and (logdir / "best.pt").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir())


def test_early_stopping_tests_the_best_validation_epoch(
    ptb_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation losses 3, 2, 2.5, 2.7 with patience 2: stop after epoch 4, test epoch 2's weights."""
    valid_losses = [3.0, 2.0, 2.5, 2.7]
    fingerprints: list[float] = []
    real_evaluate = train_module.evaluate

    def fake_evaluate(net: SupervisedNet, batches: Any, ctx: Any = None, loss_scale: float = 1.0) -> tuple:
        fingerprints.append(sum(float(p.detach().double().sum()) for p in net.parameters()))
        loss, accuracy = real_evaluate(net, batches, ctx, loss_scale)
        k = len(fingerprints) - 1
        return (valid_losses[k], accuracy) if k < len(valid_losses) else (loss, accuracy)

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    data = prepare_ptb(*ptb_files, level="char")
    summary = train_classifier(_tiny_ptb_config(epochs=10, patience=2), data, tmp_path, progress=False)
    assert summary is not None
    assert summary["epochs"] == 4 and summary["best_epoch"] == 2
    assert len(fingerprints) == 5  # 4 validations, then the test
    assert fingerprints[-1] == fingerprints[1]  # the test saw epoch 2's weights
    assert fingerprints[-1] != fingerprints[3]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2


def _tiny_run(task: str, ptb_files: list[Path], tmp_path: Path) -> tuple[Any, Any]:
    """Data and a config factory for a tiny run of ``task`` (CIFAR: VGG19 at width 1/16, 16 images)."""
    if task == "ptb":
        return prepare_ptb(*ptb_files, level="char"), _tiny_ptb_config
    from test_cifar_data import _fake_batches, _write_binary

    _write_binary(tmp_path / "cifar", _fake_batches(records=20))
    data = prepare_cifar(tmp_path / "cifar", limit_train=16)

    def config(**overrides: Any) -> TrainConfig:
        return TrainConfig(**{"task": "cifar", "width": 0.0625, "batch_size": 8, "epochs": 2, **overrides})

    return data, config


@pytest.mark.parametrize("task", ["ptb", "cifar"])
def test_resume_continues_the_epoch_counter_and_matches_an_uninterrupted_run(
    ptb_files: list[Path], tmp_path: Path, task: str
) -> None:
    data, make_config = _tiny_run(task, ptb_files, tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    train_classifier(make_config(epochs=3), data, full, progress=False)
    first = train_classifier(make_config(epochs=1), data, part, progress=False)
    assert first is not None and first["epochs"] == 1
    resumed = train_classifier(make_config(epochs=3), data, part, resume=True, progress=False)
    assert resumed is not None and resumed["epochs"] == 3
    assert _read_evals(full / "evals.csv") == _read_evals(part / "evals.csv")
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    for key, value in a["net"].items():
        assert torch.equal(value, b["net"][key]), key
    assert a["progress"]["epoch"] == b["progress"]["epoch"] == 3


@pytest.mark.parametrize(
    ("overrides", "pattern"), [({"seed": 1}, "seed: saved=0 current=1"), ({"method": "adam"}, "method")]
)
def test_resume_refuses_a_checkpoint_of_another_configuration(
    ptb_files: list[Path], tmp_path: Path, overrides: dict[str, Any], pattern: str
) -> None:
    data = prepare_ptb(*ptb_files, level="char")
    train_classifier(_tiny_ptb_config(epochs=1), data, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=pattern):
        train_classifier(_tiny_ptb_config(epochs=2, **overrides), data, tmp_path, resume=True, progress=False)


def test_resume_refuses_another_number_of_processes(ptb_files: list[Path], tmp_path: Path) -> None:
    data = prepare_ptb(*ptb_files, level="char")
    train_classifier(_tiny_ptb_config(epochs=1), data, tmp_path, progress=False)
    assert load_resumable(_tiny_ptb_config(epochs=2), tmp_path, world_size=1)["progress"]["epoch"] == 1
    with pytest.raises(CheckpointError, match="written by 1 process"):
        load_resumable(_tiny_ptb_config(epochs=2), tmp_path, world_size=2)


def test_resume_without_checkpoint_raises_file_not_found(ptb_files: list[Path], tmp_path: Path) -> None:
    data = prepare_ptb(*ptb_files, level="char")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_classifier(_tiny_ptb_config(), data, tmp_path, resume=True, progress=False)


def test_diverged_baseline_stops_without_waiting_for_patience(ptb_files: list[Path], tmp_path: Path) -> None:
    data = prepare_ptb(*ptb_files, level="char")
    with pytest.warns(RuntimeWarning, match="diverged"):
        summary = train_classifier(_tiny_ptb_config(method="sgd", lr=1e38, epochs=5), data, None, progress=False)
    assert summary is not None and summary["epochs"] == 1 and summary["best_epoch"] is None
    assert summary["test_loss"] is None


def test_a_stop_request_ends_the_epoch_saves_a_checkpoint_and_resume_finishes(
    ptb_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    import alrao_rl.supervised.train

    @contextlib.contextmanager
    def stop_now(what: str) -> Any:
        yield {"stop": True}  # as if Ctrl-C came during the first epoch

    data = prepare_ptb(*ptb_files, level="char")
    with monkeypatch.context() as patch:
        patch.setattr(alrao_rl.supervised.train, "stop_requests", stop_now)
        assert train_classifier(_tiny_ptb_config(epochs=3), data, tmp_path, progress=False) is None
    assert load_checkpoint(tmp_path / "checkpoint.pt")["progress"]["epoch"] == 1
    assert not (tmp_path / "summary.json").exists() and len(_read_evals(tmp_path / "evals.csv")) == 2
    summary = train_classifier(_tiny_ptb_config(epochs=3), data, tmp_path, resume=True, progress=False)
    assert summary is not None and summary["epochs"] == 3 and (tmp_path / "summary.json").exists()
