"""CIFAR-10 loading (both distribution formats, restricted unpickling), split, normalisation, augmentation."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from alrao_rl.supervised.cifar import (
    BINARY_FILES,
    PYTHON_FILES,
    RECORD_PIXELS,
    CifarBatches,
    augment,
    channel_stats,
    load_cifar10,
    normalize,
    read_binary_batch,
    read_python_batch,
    split_train_valid,
)

RECORDS = 20


def _fake_batches(seed: int = 0, records: int = RECORDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Six (data uint8 [records, 3072], labels int [records]) batches, five training then test."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 256, size=(records, RECORD_PIXELS), dtype=np.uint8),
            rng.integers(0, 10, size=records),
        )
        for _ in range(6)
    ]


def _write_python(folder: Path, batches: list[tuple[np.ndarray, np.ndarray]], protocol: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(PYTHON_FILES, batches, strict=True):
        content = {b"batch_label": b"fake", b"labels": [int(v) for v in labels], b"data": data}
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))


def _write_binary(folder: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in zip(BINARY_FILES, batches, strict=True):
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())


@pytest.fixture
def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    return _fake_batches()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_and_binary_formats_give_identical_tensors(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]], protocol: int
) -> None:
    _write_python(tmp_path / "py", batches, protocol=protocol)
    _write_binary(tmp_path / "bin", batches)
    from_py = load_cifar10(tmp_path / "py")
    from_bin = load_cifar10(tmp_path / "bin")
    assert from_py.train_images.shape == (5 * RECORDS, 3, 32, 32)
    assert from_py.train_images.dtype == torch.uint8
    assert from_py.train_labels.dtype == torch.int64
    assert from_py.test_images.shape == (RECORDS, 3, 32, 32)
    for a, b in zip(from_py, from_bin, strict=True):
        assert torch.equal(a, b)


def test_records_are_channel_first_red_green_blue_rows(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    _write_binary(tmp_path, batches)
    data = load_cifar10(tmp_path)
    first = batches[0][0][0]
    assert data.train_images[0, 0, 0, 1].item() == first[1]  # red, row 0, column 1
    assert data.train_images[0, 1, 2, 3].item() == first[1024 + 2 * 32 + 3]  # green, row 2, col 3
    assert data.train_images[0, 2, 31, 31].item() == first[3071]
    assert data.train_labels[RECORDS].item() == batches[1][1][0]  # batches are concatenated in order
    assert torch.equal(data.test_labels, torch.as_tensor(batches[5][1], dtype=torch.int64))


def test_numpy1_module_path_of_real_files_is_admitted_without_warnings(tmp_path: Path) -> None:
    # the real files (Python 2, numpy 1) name ``numpy.core.multiarray._reconstruct``
    data = np.arange(2 * RECORD_PIXELS, dtype=np.uint64).astype(np.uint8).reshape(2, RECORD_PIXELS)
    content = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    content = content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in content
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = read_python_batch(path)
    assert torch.equal(images.reshape(2, -1), torch.from_numpy(data))
    assert labels.tolist() == [3, 4]


def test_archive_subfolder_is_found(tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    _write_binary(tmp_path / "cifar-10-batches-bin", batches)
    assert load_cifar10(tmp_path).train_images.shape[0] == 5 * RECORDS


def test_incomplete_distribution_raises_file_not_found_naming_folder(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    _write_python(tmp_path, batches)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_batch"):
        load_cifar10(tmp_path)


def _pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


_GOOD = np.zeros((2, RECORD_PIXELS), dtype=np.uint8)

MALFORMED_PYTHON = [
    ("wrong keys", _pickle({b"pixels": _GOOD, b"labels": [0, 1]}), r"missing key 'data'"),
    ("no labels", _pickle({b"data": _GOOD}), r"missing key 'labels'"),
    ("not a dict", _pickle([_GOOD, [0, 1]]), r"expected a pickled dict"),
    ("wrong dtype", _pickle({b"data": _GOOD.astype(np.int16), b"labels": [0, 1]}), r"uint8"),
    ("wrong shape", _pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"shape"),
    ("label out of range", _pickle({b"data": _GOOD, b"labels": [0, 10]}), r"0\.\.9"),
    ("negative label", _pickle({b"data": _GOOD, b"labels": [-1, 0]}), r"0\.\.9"),
    ("label count", _pickle({b"data": _GOOD, b"labels": [0]}), r"expected 2 labels"),
    ("float labels", _pickle({b"data": _GOOD, b"labels": [0.5, 1.0]}), r"integers"),
    ("truncated pickle", _pickle({b"data": _GOOD, b"labels": [0, 1]})[:100], r"not a valid"),
    ("garbage", b"\x00garbage", r"not a valid"),
    ("foreign global", _pickle({b"data": _GOOD, b"labels": [0, 1], b"x": Path("p")}), r"not allowed"),
]


@pytest.mark.parametrize(
    ("case", "content", "pattern"), MALFORMED_PYTHON, ids=[case[0] for case in MALFORMED_PYTHON]
)
def test_malformed_python_batch_raises_value_error_naming_file(
    tmp_path: Path, case: str, content: bytes, pattern: str
) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        read_python_batch(path)
    assert str(path) in str(info.value)


class _Malicious:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_running_anything(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    _write_python(tmp_path, batches)
    marker = tmp_path / "pwned"
    payload = {b"data": _Malicious(marker), b"labels": [0]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"system is not allowed") as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / "data_batch_3") in str(info.value)
    assert not marker.exists()


MALFORMED_BINARY = [
    ("empty", b"", r"not a positive multiple"),
    ("truncated record", bytes(3073 + 100), r"not a positive multiple"),
    ("label out of range", bytes([10]) + bytes(3072), r"0\.\.9"),
]


@pytest.mark.parametrize(
    ("case", "content", "pattern"), MALFORMED_BINARY, ids=[case[0] for case in MALFORMED_BINARY]
)
def test_malformed_binary_batch_raises_value_error_naming_file(
    tmp_path: Path, case: str, content: bytes, pattern: str
) -> None:
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        read_binary_batch(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("reader", [read_python_batch, read_binary_batch])
def test_missing_batch_file_raises_file_not_found_naming_it(tmp_path: Path, reader: object) -> None:
    path = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        reader(path)  # type: ignore[operator]


def test_split_sizes_disjoint_cover_and_seeded() -> None:
    images = torch.arange(50).view(50, 1)  # each image is its own index
    labels = torch.arange(50)
    tr_x, tr_y, va_x, va_y = split_train_valid(images, labels, n_valid=10, seed=3)
    assert tr_x.shape[0] == tr_y.shape[0] == 40 and va_x.shape[0] == va_y.shape[0] == 10
    assert torch.equal(tr_x[:, 0], tr_y) and torch.equal(va_x[:, 0], va_y)  # pairs stay together
    train, valid = set(tr_y.tolist()), set(va_y.tolist())
    assert not train & valid and train | valid == set(range(50))
    again = split_train_valid(images, labels, n_valid=10, seed=3)
    assert torch.equal(again[3], va_y)
    assert not torch.equal(split_train_valid(images, labels, n_valid=10, seed=4)[3], va_y)


@pytest.mark.parametrize(("n_valid", "pattern"), [(0, "n_valid"), (50, "n_valid"), (-1, "n_valid")])
def test_split_rejects_bad_sizes(n_valid: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        split_train_valid(torch.zeros(50, 1), torch.zeros(50), n_valid=n_valid)


def test_channel_stats_and_normalize_standardise_each_channel() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 32, 32), generator=gen, dtype=torch.uint8)
    images[:, 2] //= 4  # a channel with another mean and spread
    mean, std = channel_stats(images, chunk=10)
    as_float = images.double() / 255
    assert torch.allclose(mean.double(), as_float.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std.double(), as_float.std(dim=(0, 2, 3), unbiased=False), atol=1e-6)
    normed = normalize(images, mean, std)
    assert normed.dtype == torch.float32
    assert torch.allclose(normed.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(normed.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


@pytest.mark.parametrize(
    ("images", "mean", "std", "pattern"),
    [
        (torch.zeros(2, 3, 4, 4), torch.zeros(3), torch.ones(3), "uint8"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), torch.ones(3), "shape"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), torch.zeros(3), "positive"),
    ],
)
def test_normalize_rejects_bad_inputs(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        normalize(images, mean, std)


def _batch(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros


def test_augment_keeps_shape_and_is_reproducible_with_same_seed() -> None:
    x = _batch(8)
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_centre_offset_without_flip_is_identity() -> None:
    x = _batch()
    offsets = torch.full((5, 2), 4)
    out = augment(x, torch.Generator(), offsets=offsets, flips=torch.zeros(5, dtype=torch.bool))
    assert torch.equal(out, x)


def test_forced_flip_is_exact_mirror() -> None:
    x = _batch()
    offsets = torch.full((5, 2), 4)
    out = augment(x, torch.Generator(), offsets=offsets, flips=torch.ones(5, dtype=torch.bool))
    assert torch.equal(out, x.flip(-1))


def test_crop_at_offset_zero_shifts_image_down_right_by_padding() -> None:
    x = _batch()
    offsets = torch.zeros(5, 2, dtype=torch.long)
    out = augment(x, torch.Generator(), offsets=offsets, flips=torch.zeros(5, dtype=torch.bool))
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :28, :28])
    assert (out[:, :, :4, :] == 0).all() and (out[:, :, :, :4] == 0).all()


def test_crop_offsets_are_per_image() -> None:
    x = _batch(2)
    offsets = torch.tensor([[8, 8], [4, 0]])
    out = augment(x, torch.Generator(), offsets=offsets, flips=torch.zeros(2, dtype=torch.bool))
    assert torch.equal(out[0, :, :28, :28], x[0, :, 4:, 4:])  # shifted up-left
    assert torch.equal(out[1, :, :, 4:], x[1, :, :, :28])  # shifted right only


def test_random_augment_draws_all_offsets_and_both_flip_outcomes() -> None:
    # with a one-pixel image-wide ramp, the output's first column reveals dx and the flip
    n = 2000
    ramp = torch.arange(1, 33, dtype=torch.float32).expand(n, 3, 32, 32).contiguous()
    out = augment(ramp, torch.Generator().manual_seed(0))
    row = out[:, 0, 16, :]
    flipped = row[:, 15] > row[:, 16]
    assert 0.4 < flipped.float().mean().item() < 0.6
    assert torch.unique(row[~flipped, 16]).numel() == 9  # dx in 0..8 each seen (value dx + 13)
    assert torch.unique(row[flipped, 16]).numel() == 9


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"pad": -1}, "pad"),
        ({"offsets": torch.zeros(3, 2, dtype=torch.long)}, "offsets"),
        ({"offsets": torch.full((5, 2), 9)}, "offsets"),
        ({"flips": torch.zeros(4, dtype=torch.bool)}, "flips"),
    ],
)
def test_augment_rejects_bad_arguments(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        augment(_batch(), torch.Generator(), **kwargs)  # type: ignore[arg-type]


def test_cifar_batches_cover_epoch_shuffled_and_reproducible() -> None:
    images = torch.arange(70, dtype=torch.uint8).view(70, 1, 1, 1).expand(70, 3, 32, 32).contiguous()
    labels = torch.arange(70)
    loader = CifarBatches(images, labels, batch_size=32, seed=5)
    assert len(loader) == 3
    epoch = list(loader)
    assert [x.shape[0] for x, _ in epoch] == [32, 32, 6]
    seen = torch.cat([y for _, y in epoch])
    assert sorted(seen.tolist()) == list(range(70)) and seen.tolist() != list(range(70))
    for x, y in epoch:  # images stay paired with their labels, scaled to [0, 1]
        assert torch.allclose(x[:, 0, 0, 0], y.float() / 255)
    second = torch.cat([y for _, y in loader])
    assert not torch.equal(second, seen)  # a new order each epoch
    replay = CifarBatches(images, labels, batch_size=32, seed=5)
    assert torch.equal(torch.cat([y for _, y in replay]), seen)
    assert len(CifarBatches(images, labels, batch_size=32, drop_last=True)) == 2


def test_cifar_batches_augment_then_normalise() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=gen, dtype=torch.uint8)
    mean, std = channel_stats(images)
    plain = CifarBatches(images, torch.zeros(40, dtype=torch.long), 40, mean, std, shuffle=False)
    x, _ = next(iter(plain))
    assert torch.allclose(x, normalize(images, mean, std))
    augmented = CifarBatches(images, torch.zeros(40, dtype=torch.long), 40, mean, std, augment=True, seed=1)
    xa, _ = next(iter(augmented))
    assert xa.shape == x.shape and not torch.allclose(xa, x)
    # the padding is black before normalisation, so padded pixels equal -mean/std after it
    assert torch.isclose(xa[:, 0], -mean[0] / std[0]).any()


def test_a_missing_folder_is_reported_as_missing_not_as_lacking_every_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist$"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"is not a folder$"):
        load_cifar10(tmp_path / "a-file")
