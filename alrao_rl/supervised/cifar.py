"""CIFAR-10 from local files (nothing is downloaded), the paper's split, normalisation and augmentation.

Both standard distributions are read from the folder that holds the batch files:

* the *python* version (``data_batch_1`` ... ``data_batch_5``, ``test_batch``): pickled dicts with
  ``b"data"`` (``uint8`` array ``[N, 3072]``) and ``b"labels"`` (``N`` ints in ``0..9``). They are
  loaded with a restricted unpickler that only admits the few globals a numpy array needs;
* the *binary* version (``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``): records of
  one label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major).

Each record is stored channel-first, so images come out as ``uint8 [N, 3, 32, 32]``. The number of
records per file is free (the real files hold 10,000), but every record must be complete.

The training protocol of the paper (Blier et al. 2019, after kuangliu/pytorch-cifar): 40,000 training
and 10,000 validation images drawn from the official training set (:func:`split_train_valid`),
per-channel normalisation with training statistics (:func:`channel_stats`, :func:`normalize`),
random crops of a 4-pixel zero-padded image and random horizontal flips (:func:`augment`), minibatches
of 32 (:class:`CifarBatches`).
"""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "BINARY_FILES",
    "IMAGE_SHAPE",
    "N_CLASSES",
    "PYTHON_FILES",
    "RECORD_PIXELS",
    "Cifar10",
    "CifarBatches",
    "augment",
    "channel_stats",
    "load_cifar10",
    "normalize",
    "read_binary_batch",
    "read_python_batch",
    "split_train_valid",
]

N_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
RECORD_PIXELS = 3 * 32 * 32
"""Pixel bytes per image (3 channels of 32 x 32)."""

PYTHON_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
"""File names of the python distribution: five training batches, then the test batch."""
BINARY_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
"""File names of the binary distribution: five training batches, then the test batch."""

_SUBFOLDERS = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}


class Cifar10(NamedTuple):
    """The official CIFAR-10 split as tensors.

    :param train_images: ``uint8 [N_train, 3, 32, 32]`` (50,000 images for the real data).
    :param train_labels: ``int64 [N_train]`` in ``0..9``.
    :param test_images: ``uint8 [N_test, 3, 32, 32]`` (10,000 images for the real data).
    :param test_labels: ``int64 [N_test]`` in ``0..9``.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


# --- restricted unpickling -------------------------------------------------------------------------


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array needs, mapped to the objects themselves.

    Both the numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) module paths are admitted and
    resolved to whichever module this numpy provides, without importing deprecated aliases.
    ``_frombuffer`` is what numpy uses for pickle protocol 5; ``_codecs.encode`` is how Python 3
    writes the raw bytes of an array at protocol 2.
    """
    import _codecs

    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, "multiarray"):  # numpy 1.x: only the old path exists
        core = np.core
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those needed to rebuild numpy arrays.

    A CIFAR batch file only holds dicts, lists, bytes, ints and numpy arrays; anything else (for
    instance ``os.system`` smuggled in by ``__reduce__``) is refused before it can be called.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an admitted global, refuse all others.

        :param module: module path written in the pickle.
        :param name: attribute name written in the pickle.
        :raises pickle.UnpicklingError: for any global outside the numpy allow-list.
        """
        allowed = _allowed_globals()
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch file "
                f"(only numpy array reconstruction is admitted)"
            ) from None


def _restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`_NumpyOnlyUnpickler` (``encoding="bytes"``, as the files are
    Python 2 pickles).

    :param data: the file content.
    """
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()


# --- readers -----------------------------------------------------------------------------------------


def _get_key(batch: dict[Any, Any], key: str) -> Any:
    """Look up ``key`` as bytes (Python 2 pickles) or as str (Python 3 pickles)."""
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise KeyError(key)


def _check_labels(labels: np.ndarray, n: int, path: Path) -> Tensor:
    """Check ``n`` labels in ``0..9`` and return them as ``int64``."""
    if labels.shape != (n,):
        raise ValueError(f"{path}: expected {n} labels, got shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(
            f"{path}: labels must lie in 0..{N_CLASSES - 1}, found {labels.min()}..{labels.max()}"
        )
    return torch.from_numpy(labels.astype(np.int64))


def read_python_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one batch file of the python distribution with the restricted unpickler.

    :param path: a ``data_batch_i`` or ``test_batch`` file.
    :return: images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]``.
    :raises FileNotFoundError: when the file is missing.
    :raises ValueError: naming ``path`` when the file is not a well-formed CIFAR-10 batch (not a
        pickle, a refused global, missing keys, wrong dtype or shape, labels outside ``0..9``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    try:
        batch = _restricted_load(path.read_bytes())
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: not a valid CIFAR-10 python batch: {error}") from error
    except Exception as error:  # truncated or garbage pickles raise many exception types
        raise ValueError(
            f"{path}: not a valid CIFAR-10 python batch ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    try:
        data = _get_key(batch, "data")
        raw_labels = _get_key(batch, "labels")
    except KeyError as error:
        keys = sorted(repr(k) for k in batch)
        raise ValueError(
            f"{path}: missing key {error.args[0]!r} (need b'data' and b'labels'; found {keys})"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 numpy array, got {kind}")
    if data.ndim != 2 or data.shape[1] != RECORD_PIXELS:
        raise ValueError(f"{path}: 'data' must have shape [N, {RECORD_PIXELS}], got {list(data.shape)}")
    try:
        labels = np.asarray(raw_labels)
    except Exception as error:
        raise ValueError(f"{path}: 'labels' is not a sequence of integers") from error
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be integers, got dtype {labels.dtype}")
    label_tensor = _check_labels(labels, data.shape[0], path)
    # copy: arrays rebuilt from a pickle may be read-only, which torch.from_numpy warns about
    images = torch.from_numpy(np.array(data, copy=True)).reshape(-1, *IMAGE_SHAPE)
    return images, label_tensor


def read_binary_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one batch file of the binary distribution (records of 1 label byte + 3072 pixel bytes).

    :param path: a ``data_batch_i.bin`` or ``test_batch.bin`` file.
    :return: images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]``.
    :raises FileNotFoundError: when the file is missing.
    :raises ValueError: naming ``path`` when the file is empty, its size is not a whole number of
        records, or a label lies outside ``0..9``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + RECORD_PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {record}-byte record "
            f"(truncated or not a CIFAR-10 binary batch)"
        )
    records = raw.reshape(-1, record)
    labels = _check_labels(records[:, 0], records.shape[0], path)
    images = torch.from_numpy(np.ascontiguousarray(records[:, 1:])).reshape(-1, *IMAGE_SHAPE)
    return images, labels


def _detect(folder: Path) -> tuple[str, Path] | None:
    """Return ``(format, folder)`` when ``folder`` holds a complete distribution, else ``None``."""
    if all((folder / name).is_file() for name in PYTHON_FILES):
        return "python", folder
    if all((folder / name).is_file() for name in BINARY_FILES):
        return "binary", folder
    return None


def load_cifar10(data_dir: str | Path) -> Cifar10:
    """Load CIFAR-10 from the folder holding the batch files, in either distribution format.

    The format is detected by which files exist: the six python files (``data_batch_1`` ...
    ``test_batch``) take precedence over the six binary ones (``data_batch_1.bin`` ...). For
    convenience, when ``data_dir`` holds neither but has the archive's own subfolder
    (``cifar-10-batches-py`` or ``cifar-10-batches-bin``), that subfolder is read.

    :param data_dir: folder with the batch files.
    :return: the official 50,000 / 10,000 split (or whatever the files hold) as tensors.
    :raises FileNotFoundError: when the folder does not exist; naming the folder and the expected
        files when neither format is complete.
    :raises NotADirectoryError: when ``data_dir`` is a file.
    :raises ValueError: naming the file when one is malformed.
    """
    folder = Path(data_dir)
    if not folder.exists():
        raise FileNotFoundError(f"CIFAR-10 folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"CIFAR-10 folder {folder} is not a folder")
    found = _detect(folder)
    if found is None:
        for sub in _SUBFOLDERS.values():
            found = _detect(folder / sub)
            if found is not None:
                break
    if found is None:
        missing_py = [n for n in PYTHON_FILES if not (folder / n).is_file()]
        missing_bin = [n for n in BINARY_FILES if not (folder / n).is_file()]
        raise FileNotFoundError(
            f"no complete CIFAR-10 distribution in {folder}: python version lacks {missing_py}, "
            f"binary version lacks {missing_bin}"
        )
    kind, folder = found
    reader = read_python_batch if kind == "python" else read_binary_batch
    names = PYTHON_FILES if kind == "python" else BINARY_FILES
    parts = [reader(folder / name) for name in names]
    train_images = torch.cat([images for images, _ in parts[:5]])
    train_labels = torch.cat([labels for _, labels in parts[:5]])
    test_images, test_labels = parts[5]
    return Cifar10(train_images, train_labels, test_images, test_labels)


# --- split and normalisation ------------------------------------------------------------------------


def split_train_valid(
    images: Tensor, labels: Tensor, n_valid: int = 10_000, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the official training set into training and validation parts (40,000 / 10,000 in the
    paper) with a seeded random permutation.

    :param images: ``[N, ...]`` images.
    :param labels: ``[N]`` labels.
    :param n_valid: number of validation examples, ``0 < n_valid < N``.
    :param seed: seed of the ``torch.Generator`` that draws the permutation.
    :return: ``(train_images, train_labels, valid_images, valid_labels)``; the validation part is
        the first ``n_valid`` indices of the permutation, the training part the rest.
    :raises ValueError: when lengths differ or ``n_valid`` is out of range.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"images and labels differ in length: {n} vs {labels.shape[0]}")
    if not 0 < n_valid < n:
        raise ValueError(f"n_valid must satisfy 0 < n_valid < {n}, got {n_valid}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid_idx, train_idx = perm[:n_valid], perm[n_valid:]
    return images[train_idx], labels[train_idx], images[valid_idx], labels[valid_idx]


def channel_stats(images: Tensor, chunk: int = 5000) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``uint8`` images scaled to ``[0, 1]``.

    Accumulated in float64 over chunks (no full float copy of the data set); the standard deviation
    is the population one (divides by the number of pixels), as usual for normalisation constants.

    :param images: ``uint8 [N, 3, H, W]`` training images.
    :param chunk: images per accumulation step.
    :return: ``(mean, std)``, each ``float32 [3]``.
    :raises ValueError: for a non-``uint8``, non-4-d or empty tensor.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"expected non-empty uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Scale ``uint8`` images to ``[0, 1]`` and standardise each channel: ``(x / 255 - mean) / std``.

    :param images: ``uint8 [N, 3, H, W]``.
    :param mean: per-channel mean ``[3]`` (of ``[0, 1]`` values, see :func:`channel_stats`).
    :param std: per-channel standard deviation ``[3]``, all positive.
    :return: ``float32 [N, 3, H, W]`` on the device of ``images``.
    :raises ValueError: for non-``uint8`` images, mismatched channel counts or a non-positive std.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}")
    return _standardize(images.float() / 255.0, mean, std)


def _standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel for float ``x [N, C, H, W]`` in ``[0, 1]``."""
    channels = x.shape[1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"mean and std must have shape [{channels}], got {list(mean.shape)} and {list(std.shape)}"
        )
    if bool((std <= 0).any()):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    mean = mean.to(device=x.device, dtype=torch.float32).view(1, channels, 1, 1)
    std = std.to(device=x.device, dtype=torch.float32).view(1, channels, 1, 1)
    return (x - mean) / std


# --- augmentation ------------------------------------------------------------------------------------


def augment(
    batch: Tensor,
    generator: torch.Generator,
    pad: int = 4,
    flip_prob: float = 0.5,
    *,
    offsets: Tensor | None = None,
    flips: Tensor | None = None,
) -> Tensor:
    """Random crop of the zero-padded image and random horizontal flip, for a whole batch at once.

    Each image is padded with ``pad`` zeros on every side and a window of the original size is cut
    at a random offset ``(dy, dx)`` in ``0..2*pad`` (so offset ``(pad, pad)`` is the identity); then
    the image is mirrored left-right with probability ``flip_prob``. This is torchvision's
    ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` as used by kuangliu/pytorch-cifar,
    applied to ``[0, 1]`` images *before* normalisation so that the padding is black, as there.
    The crop and the flip are one gather through index grids (no per-image loop).

    Random draws, all from ``generator`` (on its device) in this order: offsets ``[B, 2]`` with
    ``torch.randint``, then flip decisions with ``torch.rand(B) < flip_prob``. Passing ``offsets``
    or ``flips`` fixes them (for tests) and skips their draw.

    :param batch: ``float [B, C, H, W]`` images.
    :param generator: source of all randomness.
    :param pad: zero padding on each side (4 in the paper), ``>= 0``.
    :param flip_prob: probability of a horizontal flip.
    :param offsets: optional ``int64 [B, 2]`` crop offsets ``(dy, dx)`` in ``0..2*pad``.
    :param flips: optional ``bool [B]`` flip decisions.
    :return: a new tensor of the same shape, dtype and device as ``batch``.
    :raises ValueError: for a non-4-d batch, a negative pad, or offsets/flips of the wrong shape or
        range.
    """
    if batch.ndim != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {list(batch.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, _, height, width = batch.shape
    device = batch.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device)
    elif offsets.shape != (n, 2) or bool((offsets < 0).any()) or bool((offsets > 2 * pad).any()):
        raise ValueError(f"offsets must be [{n}, 2] with values in 0..{2 * pad}, got {list(offsets.shape)}")
    if flips is None:
        flips = torch.rand(n, generator=generator, device=generator.device) < flip_prob
    elif flips.shape != (n,):
        raise ValueError(f"flips must have shape [{n}], got {list(flips.shape)}")
    offsets = offsets.to(device=device, dtype=torch.long)
    flips = flips.to(device=device, dtype=torch.bool)
    padded = F.pad(batch, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(height, device=device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(width, device=device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = torch.arange(n, device=device)[:, None, None]
    # advanced indices separated by a slice: broadcast dims [B, H, W] come first, channels last
    out = padded[index, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class CifarBatches:
    """Shuffled minibatches of CIFAR images, optionally augmented, through a seeded generator.

    Each iteration (epoch) draws a fresh permutation from the batcher's own generator, so successive
    epochs differ while the whole sequence is reproducible from ``seed``. Per batch, images are
    scaled to ``[0, 1]``, augmented (:func:`augment`, if asked) and then standardised with ``mean``
    and ``std`` (if given), in the order of torchvision's transforms.

    :param images: ``uint8 [N, 3, H, W]``.
    :param labels: ``int64 [N]``.
    :param batch_size: examples per batch (32 in the paper).
    :param mean: per-channel mean ``[3]``, or ``None`` to leave ``[0, 1]`` values.
    :param std: per-channel standard deviation ``[3]``, given together with ``mean``.
    :param augment: apply random crops and flips.
    :param shuffle: draw a random order each epoch (else keep the stored order).
    :param drop_last: drop the final incomplete batch.
    :param seed: seed of the generator used for shuffling and augmentation.
    :param device: device the batches are moved to.
    :raises ValueError: for mismatched lengths, a non-positive batch size, non-``uint8`` images, or
        only one of ``mean`` / ``std``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int = 32,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        augment: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {list(labels.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.mean = mean
        self.std = std
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(float32 images [b, 3, H, W], int64 labels [b])`` for one epoch."""
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for k in range(len(self)):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            x = self.images[idx].float() / 255.0
            if self.augment:
                x = augment(x, self.generator)
            if self.mean is not None and self.std is not None:
                x = _standardize(x, self.mean, self.std)
            yield x.to(self.device), self.labels[idx].to(self.device)
