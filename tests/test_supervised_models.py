"""CIFAR bodies and classifiers (kuangliu/pytorch-cifar architectures) and the PTB character LSTM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alrao_rl.supervised.models import (
    CIFAR_MODELS,
    CharLSTM,
    make_char_lstm,
    make_cifar_model,
    scale_channels,
)

NAMES = sorted(CIFAR_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_cifar_body_features_match_classifier_input(name: str) -> None:
    torch.manual_seed(0)
    body, classifier = make_cifar_model(name, width=0.25)
    features = body(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, classifier.in_features)
    assert body.out_features == classifier.in_features
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 10
    assert classifier(features).shape == (2, 10)
    assert not any(isinstance(m, nn.Linear) for m in body.modules())  # the classifier is apart


@pytest.mark.parametrize(
    ("name", "features"), [("vgg19", 128), ("resnet18", 128), ("mobilenetv2", 320), ("googlenet", 256)]
)
def test_quarter_width_scales_feature_counts(name: str, features: int) -> None:
    assert make_cifar_model(name, width=0.25)[1].in_features == features


def test_quarter_width_vgg19_has_channels_16_to_128() -> None:
    body, _ = make_cifar_model("vgg19", width=0.25)
    channels = [m.out_channels for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert len(channels) == 16 and min(channels) == 16 and max(channels) == 128


@pytest.mark.parametrize(
    ("name", "n_parameters"),
    # kuangliu/pytorch-cifar parameter counts at width 1 (body + classifier)
    [("vgg19", 20_040_522), ("resnet18", 11_173_962), ("mobilenetv2", 2_296_922), ("googlenet", 6_166_250)],
)
def test_full_width_parameter_count_matches_reference_implementation(name: str, n_parameters: int) -> None:
    body, classifier = make_cifar_model(name)
    count = sum(p.numel() for p in (*body.parameters(), *classifier.parameters()))
    assert count == n_parameters


def test_scale_channels_rounds_and_keeps_at_least_one() -> None:
    assert [scale_channels(c, w) for c, w in ((64, 0.25), (10, 0.26), (3, 0.01), (64, 1.0))] == [16, 3, 1, 64]


def test_tiny_width_still_builds_and_runs() -> None:
    body, classifier = make_cifar_model("mobilenetv2", width=0.01)
    assert classifier(body(torch.randn(2, 3, 32, 32))).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "width", "pattern"),
    [
        ("alexnet", 1.0, r"unknown CIFAR model 'alexnet'; valid names: .*googlenet.*vgg19"),
        ("vgg19", 0.0, r"width must be > 0"),
        ("resnet18", -0.5, r"width must be > 0"),
    ],
)
def test_make_cifar_model_rejects_bad_arguments(name: str, width: float, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make_cifar_model(name, width)


def test_char_lstm_shapes_and_decoder() -> None:
    body, decoder = make_char_lstm(50)
    assert isinstance(body, CharLSTM) and decoder.in_features == 100 and decoder.out_features == 50
    assert body.embedding.embedding_dim == 100 and body.lstm.num_layers == 2 and body.lstm.hidden_size == 100
    assert body.dropout.p == pytest.approx(0.2)
    x = torch.randint(0, 50, (7, 3))
    features, (h, c) = body(x)
    assert features.shape == (7, 3, 100)
    assert h.shape == c.shape == (2, 3, 100)
    assert decoder(features.reshape(-1, 100)).shape == (21, 50)


def test_char_lstm_carries_hidden_state_between_segments() -> None:
    torch.manual_seed(0)
    body, _ = make_char_lstm(20)
    body.eval()  # no dropout
    x = torch.randint(0, 20, (10, 2))
    whole, _ = body(x)
    first, hidden = body(x[:6])
    second, _ = body(x[6:], CharLSTM.detach_hidden(hidden))
    assert torch.allclose(torch.cat([first, second]), whole, atol=1e-6)
    fresh, _ = body(x[6:])  # zero state: differs from the carried one
    assert not torch.allclose(fresh, second)
    assert torch.equal(body(x[:6], body.init_hidden(2))[0], first)


def test_char_lstm_detached_hidden_cuts_the_graph() -> None:
    body, _ = make_char_lstm(5)
    _, hidden = body(torch.randint(0, 5, (3, 2)))
    assert hidden[0].requires_grad
    assert not any(h.requires_grad for h in CharLSTM.detach_hidden(hidden))


@pytest.mark.parametrize(
    ("x", "hidden", "pattern"),
    [
        (torch.zeros(4, 2), None, "int64"),
        (torch.zeros(4, dtype=torch.long), None, "int64"),
        (torch.zeros(4, 2, dtype=torch.long), (torch.zeros(2, 3, 100), torch.zeros(2, 3, 100)), "hidden"),
    ],
)
def test_char_lstm_rejects_bad_inputs(
    x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None, pattern: str
) -> None:
    body, _ = make_char_lstm(5)
    with pytest.raises(ValueError, match=pattern):
        body(x, hidden)


def test_char_lstm_rejects_empty_vocabulary() -> None:
    with pytest.raises(ValueError, match="n_symbols"):
        make_char_lstm(0)
