"""Models of the Alrao paper's supervised experiments, each split into a body and a classifier.

CIFAR-10 models follow kuangliu/pytorch-cifar (the implementations the paper used): VGG19,
MobileNetV2, GoogLeNet and ResNet18 for 32 x 32 inputs, with BatchNorm where those have it. Each is
returned as a *pre-classifier* (everything up to a flat feature vector ``[B, F]``) and its final
``nn.Linear(F, 10)``, so that Alrao can replace the classifier by several heads. A ``width``
multiplier scales every channel count (``max(1, round(c * width))``); block structure follows the
scaled counts (e.g. a MobileNetV2 shortcut is a projection exactly when the scaled input and output
channel counts differ), so ``width=1`` is the original.

The PTB character model (:class:`CharLSTM`): embedding of size 100, a two-layer LSTM with 100 units,
dropout 0.2 on its output; the decoder ``nn.Linear(100, n_symbols)`` is returned apart by
:func:`make_char_lstm`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "CIFAR_MODELS",
    "CharLSTM",
    "GoogLeNetBody",
    "Hidden",
    "MobileNetV2Body",
    "ResNet18Body",
    "VGGBody",
    "make_char_lstm",
    "make_cifar_model",
    "scale_channels",
]

Hidden = tuple[Tensor, Tensor]
"""LSTM state ``(h, c)``, each ``[num_layers, B, hidden_size]``."""


def scale_channels(channels: int, width: float) -> int:
    """A channel count multiplied by ``width``, rounded, at least 1.

    :param channels: the original count.
    :param width: the multiplier (> 0).
    """
    return max(1, round(channels * width))


# --- VGG19 -----------------------------------------------------------------------------------------

# fmt: off
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M")
# fmt: on


class VGGBody(nn.Module):
    """VGG19 for CIFAR (kuangliu ``VGG('VGG19')``) without its classifier.

    Each number of the configuration is ``Conv3x3(pad 1) -> BatchNorm -> ReLU``, each ``"M"`` a 2 x 2
    max pooling; five poolings bring 32 x 32 to 1 x 1, followed by the (identity) ``AvgPool2d(1)`` of
    the original, then flattening.

    :param width: channel multiplier.
    :param config: layer configuration (VGG19's by default).
    """

    def __init__(self, width: float = 1.0, config: Sequence[int | str] = _VGG19) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = scale_channels(int(item), width)
                layers += [
                    nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.out_features = in_channels

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, 3, 32, 32]``. :return: ``[B, out_features]``."""
        return self.features(x).flatten(1)


# --- MobileNetV2 -----------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 projection (kuangliu ``Block``).

    The residual is added only for stride 1; it is a 1x1 conv + BatchNorm when channel counts differ.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, in_planes, H, W]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


# (expansion, out_planes, num_blocks, stride); second stride 2 -> 1 for CIFAR, as in kuangliu
_MOBILENETV2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Body(nn.Module):
    """MobileNetV2 for CIFAR (kuangliu ``MobileNetV2``) without its classifier.

    Stem ``Conv3x3(32, stride 1) -> BN -> ReLU``, 17 inverted-residual blocks, ``Conv1x1(1280) -> BN
    -> ReLU``, 4 x 4 average pooling, flattening.

    :param width: channel multiplier (also applied to the 32-channel stem and the 1280-channel head).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scale_channels(32, width)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks: list[nn.Module] = []
        in_planes = stem
        for expansion, out_planes, num_blocks, stride in _MOBILENETV2:
            out = scale_channels(out_planes, width)
            for s in [stride] + [1] * (num_blocks - 1):
                blocks.append(_InvertedResidual(in_planes, out, expansion, s))
                in_planes = out
        self.layers = nn.Sequential(*blocks)
        head = scale_channels(1280, width)
        self.conv2 = nn.Conv2d(in_planes, head, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.out_features = head

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, 3, 32, 32]``. :return: ``[B, out_features]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return F.avg_pool2d(out, 4).flatten(1)


# --- GoogLeNet -------------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """``Conv(k, same padding, with bias) -> BatchNorm -> ReLU`` as in kuangliu's GoogLeNet."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _Inception(nn.Module):
    """Inception module (kuangliu): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | maxpool -> 1x1, concatenated.

    The "5x5" branch is two 3x3 convolutions, as in kuangliu's implementation.
    """

    def __init__(
        self, in_planes: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int, pool_planes: int
    ) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_planes, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_planes, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(in_planes, n5x5red, 1),
            *_conv_bn_relu(n5x5red, n5x5, 3),
            *_conv_bn_relu(n5x5, n5x5, 3),
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_planes, pool_planes, 1)
        )
        self.out_planes = n1x1 + n3x3 + n5x5 + pool_planes

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, in_planes, H, W]``. :return: ``[B, out_planes, H, W]``."""
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


# (n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes) of a3, b3, a4, b4, c4, d4, e4, a5, b5
_GOOGLENET = {
    "a3": (64, 96, 128, 16, 32, 32),
    "b3": (128, 128, 192, 32, 96, 64),
    "a4": (192, 96, 208, 16, 48, 64),
    "b4": (160, 112, 224, 24, 64, 64),
    "c4": (128, 128, 256, 24, 64, 64),
    "d4": (112, 144, 288, 32, 64, 64),
    "e4": (256, 160, 320, 32, 128, 128),
    "a5": (256, 160, 320, 32, 128, 128),
    "b5": (384, 192, 384, 48, 128, 128),
}


class GoogLeNetBody(nn.Module):
    """GoogLeNet for CIFAR (kuangliu ``GoogLeNet``) without its classifier.

    Stem ``Conv3x3(192) -> BN -> ReLU``, inceptions a3 b3, max pool, a4 .. e4, max pool, a5 b5,
    8 x 8 average pooling, flattening (1024 features at width 1). Each inception's input count is the
    sum of the previous one's scaled outputs.

    :param width: channel multiplier.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scale_channels(192, width)
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, stem, 3))
        in_planes = stem
        modules: dict[str, _Inception] = {}
        for name, sizes in _GOOGLENET.items():
            module = _Inception(in_planes, *(scale_channels(c, width) for c in sizes))
            modules[name] = module
            in_planes = module.out_planes
        self.a3, self.b3 = modules["a3"], modules["b3"]
        self.a4, self.b4, self.c4 = modules["a4"], modules["b4"], modules["c4"]
        self.d4, self.e4 = modules["d4"], modules["e4"]
        self.a5, self.b5 = modules["a5"], modules["b5"]
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.out_features = in_planes

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, 3, 32, 32]``. :return: ``[B, out_features]``."""
        out = self.pre_layers(x)
        out = self.maxpool(self.b3(self.a3(out)))
        out = self.maxpool(self.e4(self.d4(self.c4(self.b4(self.a4(out))))))
        out = self.b5(self.a5(out))
        return self.avgpool(out).flatten(1)


# --- ResNet18 --------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """ResNet basic block (kuangliu ``BasicBlock``): two 3x3 convs with BN, projection shortcut when
    the stride or channel count changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, in_planes, H, W]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Body(nn.Module):
    """ResNet18 for CIFAR (kuangliu ``ResNet18``) without its classifier.

    Stem ``Conv3x3(64, stride 1) -> BN -> ReLU``, four stages of two basic blocks (64, 128, 256, 512
    channels; strides 1, 2, 2, 2), 4 x 4 average pooling, flattening.

    :param width: channel multiplier.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        stages: list[nn.Sequential] = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            out = scale_channels(planes, width)
            blocks = []
            for s in (stride, 1):
                blocks.append(_BasicBlock(in_planes, out, s))
                in_planes = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = in_planes

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``[B, 3, 32, 32]``. :return: ``[B, out_features]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.avg_pool2d(out, 4).flatten(1)


CIFAR_MODELS: dict[str, Callable[[float], nn.Module]] = {
    "vgg19": VGGBody,
    "mobilenetv2": MobileNetV2Body,
    "googlenet": GoogLeNetBody,
    "resnet18": ResNet18Body,
}
"""Constructors of the CIFAR bodies by name (each takes the width multiplier)."""


def make_cifar_model(name: str, width: float = 1.0, n_classes: int = 10) -> tuple[nn.Module, nn.Linear]:
    """A CIFAR model as ``(pre_classifier, classifier)``.

    ``classifier(pre_classifier(x))`` is the kuangliu model's output for ``x [B, 3, 32, 32]``; the
    body's ``out_features`` attribute equals ``classifier.in_features``.

    :param name: one of ``"vgg19"``, ``"mobilenetv2"``, ``"googlenet"``, ``"resnet18"``
        (case-insensitive).
    :param width: channel multiplier (> 0); ``0.25`` gives VGG19 channels 16 .. 128.
    :param n_classes: number of outputs of the classifier.
    :raises ValueError: for an unknown name or a non-positive width.
    """
    key = name.lower()
    if key not in CIFAR_MODELS:
        raise ValueError(f"unknown CIFAR model {name!r}; valid names: {sorted(CIFAR_MODELS)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    body = CIFAR_MODELS[key](width)
    return body, nn.Linear(int(body.out_features), n_classes)


# --- PTB character LSTM ----------------------------------------------------------------------------


class CharLSTM(nn.Module):
    """Pre-classifier of the PTB character model: embedding -> LSTM -> dropout.

    The hidden state is passed in and returned explicitly (truncated backpropagation through time
    carries it from one segment to the next; detach it between segments with :meth:`detach_hidden`).

    :param n_symbols: vocabulary size.
    :param embedding_dim: embedding size (100 in the paper).
    :param hidden_size: LSTM units per layer (100 in the paper).
    :param num_layers: LSTM layers (2 in the paper).
    :param dropout: dropout probability on the LSTM output (0.2 in the paper).
    """

    def __init__(
        self,
        n_symbols: int,
        embedding_dim: int = 100,
        hidden_size: int = 100,
        num_layers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
        self.embedding = nn.Embedding(n_symbols, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers)
        self.dropout = nn.Dropout(dropout)
        self.n_symbols = n_symbols
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.out_features = hidden_size

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero state ``(h, c)``, each ``[num_layers, batch_size, hidden_size]``.

        :param batch_size: number of parallel streams.
        :param device: device of the state (that of the parameters by default).
        """
        weight = self.lstm.weight_ih_l0
        shape = (self.num_layers, batch_size, self.hidden_size)
        device = weight.device if device is None else device
        return (
            torch.zeros(shape, device=device, dtype=weight.dtype),
            torch.zeros(shape, device=device, dtype=weight.dtype),
        )

    @staticmethod
    def detach_hidden(hidden: Hidden) -> Hidden:
        """The state cut from the graph of the previous segment.

        :param hidden: ``(h, c)``.
        """
        return hidden[0].detach(), hidden[1].detach()

    def forward(self, x: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Run the LSTM over a segment.

        :param x: ``int64 [T, B]`` symbol ids.
        :param hidden: state from the previous segment, or ``None`` for zeros.
        :return: ``(features [T, B, hidden_size], new_hidden)``; flatten the features to
            ``[T*B, hidden_size]`` before the decoder if a 2-d output is wanted.
        :raises ValueError: for a non-2-d or non-integer input, or a state of the wrong shape.
        """
        if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected int64 ids [T, B], got {x.dtype} {list(x.shape)}")
        if hidden is None:
            hidden = self.init_hidden(x.shape[1], x.device)
        expected = (self.num_layers, x.shape[1], self.hidden_size)
        if len(hidden) != 2 or any(tuple(h.shape) != expected for h in hidden):
            raise ValueError(f"hidden must be (h, c), each of shape {list(expected)}")
        output, new_hidden = self.lstm(self.embedding(x), hidden)
        return self.dropout(output), (new_hidden[0], new_hidden[1])


def make_char_lstm(
    n_symbols: int,
    embedding_dim: int = 100,
    hidden_size: int = 100,
    num_layers: int = 2,
    dropout: float = 0.2,
) -> tuple[CharLSTM, nn.Linear]:
    """The PTB character model as ``(body, decoder)``.

    :param n_symbols: vocabulary size.
    :param embedding_dim: embedding size.
    :param hidden_size: LSTM units per layer.
    :param num_layers: LSTM layers.
    :param dropout: dropout probability on the LSTM output.
    :return: the :class:`CharLSTM` body and ``nn.Linear(hidden_size, n_symbols)``.
    """
    body = CharLSTM(n_symbols, embedding_dim, hidden_size, num_layers, dropout)
    return body, nn.Linear(body.hidden_size, n_symbols)
