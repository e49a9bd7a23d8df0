"""Penn Treebank reading at word and character level, vocabulary, batchify and BPTT segments."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from alrao_rl.supervised.ptb import (
    EOS,
    UNK,
    Vocabulary,
    batchify,
    bptt_segments,
    load_ptb,
    load_ptb_dir,
    read_char_file,
    read_chars,
    read_words,
)

TRAIN = " the cat sat \n a <unk> dog \n"
VALID = " the dog ran \n"
TEST = " a cat \n\n"

REAL_VALID = Path("/work/shared/data/ptb/ptb.valid.txt")


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_words_splits_lines_and_appends_eos(tmp_path: Path) -> None:
    assert read_words(_write(tmp_path, "t.txt", TRAIN)) == [
        "the", "cat", "sat", EOS, "a", "<unk>", "dog", EOS,
    ]  # fmt: skip


def test_read_chars_spells_words_with_underscore_spaces_and_eos(tmp_path: Path) -> None:
    symbols = read_chars(_write(tmp_path, "t.txt", " ab  c \n<unk> x\n\n"))
    assert symbols == ["a", "b", "_", "c", EOS, "<", "u", "n", "k", ">", "_", "x", EOS, EOS]


def test_char_file_gives_same_symbols_as_derived_characters(tmp_path: Path) -> None:
    word_path = _write(tmp_path, "w.txt", TRAIN)
    char_text = "".join(" ".join("_".join(line.split())) + "\n" for line in TRAIN.splitlines())
    assert char_text.startswith("t h e _ c a t _ s a t\n")
    assert read_char_file(_write(tmp_path, "c.txt", char_text)) == read_chars(word_path)


def test_read_chars_rejects_underscore_in_word_text(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"t\.txt:2"):
        read_chars(_write(tmp_path, "t.txt", "ok\nbad_word\n"))


@pytest.mark.parametrize("reader", [read_words, read_chars, read_char_file])
@pytest.mark.parametrize(
    ("content", "error", "pattern"),
    [(None, FileNotFoundError, r"not found: .*ptb\.x\.txt"), (" \n\n", ValueError, r"empty: .*ptb\.x\.txt")],
)
def test_missing_or_empty_file_raises_naming_it(
    tmp_path: Path, reader: object, content: str | None, error: type[Exception], pattern: str
) -> None:
    path = tmp_path / "ptb.x.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=pattern):
        reader(path)  # type: ignore[operator]


def test_vocabulary_maps_symbols_both_ways_and_unknown_to_unk() -> None:
    vocab = Vocabulary.from_text(["b", "a", "b", UNK, "c"])
    assert vocab.symbols == ["b", "a", UNK, "c"] and len(vocab) == 4
    assert vocab.encode(["a", "zzz", "c"]).tolist() == [1, 2, 3]
    assert vocab.decode(torch.tensor([3, 0])) == ["c", "b"]
    with pytest.raises(KeyError, match="no '<unk>'"):
        Vocabulary.from_text(["a"]).encode(["b"])


def test_load_ptb_word_level_encodes_with_training_vocabulary(tmp_path: Path) -> None:
    paths = [_write(tmp_path, n, t) for n, t in (("tr", TRAIN), ("va", VALID), ("te", TEST))]
    vocab, train, valid, test = load_ptb(*paths, level="word")
    assert vocab.symbols == ["the", "cat", "sat", EOS, "a", "<unk>", "dog"]
    assert train.dtype == torch.int64 and train.tolist() == [0, 1, 2, 3, 4, 5, 6, 3]
    assert vocab.decode(valid) == ["the", "dog", UNK, EOS]  # "ran" is unknown
    assert vocab.decode(test) == ["a", "cat", EOS, EOS]


def test_load_ptb_char_level_adds_unk_with_warning_only_when_needed(tmp_path: Path) -> None:
    paths = [_write(tmp_path, n, t) for n, t in (("tr", TRAIN), ("va", VALID), ("te", TEST))]
    with pytest.warns(UserWarning, match=r"absent from training"):
        vocab, train, valid, _ = load_ptb(*paths, level="char")
    assert UNK in vocab and vocab.unk_id == len(vocab) - 1  # "r" of "ran" is unseen
    assert vocab.decode(valid)[-4:] == [UNK, "a", "n", EOS]
    assert vocab.decode(train) == read_chars(paths[0])
    same = [_write(tmp_path, "same", TRAIN)] * 3
    vocab_same, *_ = load_ptb(*same, level="char")
    assert UNK not in vocab_same


def test_load_ptb_dir_prefers_char_files_else_derives_from_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        _write(tmp_path, name, TRAIN)
    with caplog.at_level(logging.INFO, logger="alrao_rl.supervised.ptb"):
        derived = load_ptb_dir(tmp_path, "char")
    assert "deriving characters" in caplog.text
    for name in ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt"):
        _write(tmp_path, name, "x _ y\n")
    vocab, train, _, _ = load_ptb_dir(tmp_path, "char")
    assert vocab.decode(train) == ["x", "_", "y", EOS]
    assert derived[0].decode(derived[1])[:4] == ["t", "h", "e", "_"]
    words = load_ptb_dir(tmp_path, "word")
    assert words[0].symbols[:3] == ["the", "cat", "sat"]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda d: load_ptb_dir(d, "word"), FileNotFoundError, r"ptb\.train\.txt"),
        (lambda d: load_ptb_dir(d, "byte"), ValueError, r"'char' or 'word'"),
        (lambda d: load_ptb(d / "a", d / "b", d / "c", "byte"), ValueError, r"'char' or 'word'"),
    ],
)
def test_load_ptb_rejects_missing_files_and_bad_level(
    tmp_path: Path, call: object, error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call(tmp_path)  # type: ignore[operator]


def test_batchify_lays_out_contiguous_streams_as_columns() -> None:
    data = batchify(torch.arange(43), n_streams=4)
    assert data.shape == (10, 4)
    assert data[:, 0].tolist() == list(range(10)) and data[:, 3].tolist() == list(range(30, 40))
    assert batchify(torch.arange(200)).shape == (10, 20)


@pytest.mark.parametrize(
    ("ids", "n_streams", "pattern"),
    [(torch.arange(5), 6, "n_streams"), (torch.arange(5), 0, "n_streams"), (torch.zeros(2, 3), 1, "1-d")],
)
def test_batchify_rejects_bad_arguments(ids: torch.Tensor, n_streams: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        batchify(ids, n_streams)


def test_bptt_segments_target_is_input_shifted_by_one_and_cover_stream() -> None:
    data = batchify(torch.arange(60), n_streams=3)  # T = 20
    segments = list(bptt_segments(data, bptt=7))
    assert [inp.shape[0] for inp, _ in segments] == [7, 7, 5]
    for inp, target in segments:
        assert inp.shape == target.shape
        assert torch.equal(target, inp + 1)  # arange data: the next symbol is the id plus one
    inputs = torch.cat([inp for inp, _ in segments])
    assert torch.equal(inputs, data[:-1])


@pytest.mark.parametrize(
    ("data", "bptt", "pattern"), [(torch.zeros(5, 2), 0, "bptt"), (torch.zeros(1, 2), 3, "2 time steps")]
)
def test_bptt_segments_rejects_bad_arguments(data: torch.Tensor, bptt: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        bptt_segments(data, bptt)


@pytest.mark.skipif(not REAL_VALID.is_file(), reason="real PTB validation file not available")
def test_real_valid_file_char_count_is_tokens_joined_by_underscore_plus_eos() -> None:
    symbols = read_chars(REAL_VALID)
    lines = REAL_VALID.read_text(encoding="utf-8").splitlines()
    expected = sum(len("_".join(line.split())) + 1 for line in lines)
    assert len(lines) == 3370  # documented in the data README
    assert len(symbols) == expected
    assert symbols.count(EOS) == len(lines)
    # 70,390 words: one '_' between consecutive words of a line
    assert symbols.count("_") == 70390 - len(lines)
    assert len(set(symbols)) < 60  # a character vocabulary (50 symbols for PTB)


@pytest.mark.parametrize("read", [read_words, read_chars, read_char_file])
def test_a_file_that_is_not_utf8_text_is_named_with_the_first_bad_byte(read: object, tmp_path: Path) -> None:
    path = tmp_path / "ptb.valid.txt"
    path.write_bytes(b"the cat \x87\x00 sat\n")
    with pytest.raises(ValueError, match=rf"^{path}: not UTF-8 text \(byte 0x87 at offset 8\)"):
        read(path)  # type: ignore[operator]
