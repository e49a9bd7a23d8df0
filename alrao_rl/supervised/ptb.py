"""Penn Treebank from local text files: word- and character-level symbols, the language-model layout.

Word level (Mikolov's preprocessed ``ptb.{train,valid,test}.txt``): each line is split on white space
and ends with an ``<eos>`` symbol.

Character level (the Alrao paper's PTB task): derived from the word-level text, each character is a
symbol, the space between two words is the symbol ``_`` (as the common ``ptb.char.*`` files write it)
and each line ends with ``<eos>``. Exactly: a line with tokens ``w_1 ... w_k`` becomes
``list("_".join([w_1, ..., w_k])) + ["<eos>"]``, so it yields ``sum(len(w_i)) + (k - 1) + 1`` symbols
(an empty line yields ``["<eos>"]`` alone). Multi-character word tokens such as ``<unk>`` are spelled
out character by character. The standard character-level files (``ptb.char.train.txt`` ...), whose
characters are separated by spaces and words by ``_``, give the same symbols through
:func:`read_char_file`.

Unknown symbols: the vocabulary is built from the training symbols only (ids in order of first
appearance). Symbols of the validation or test text that never occur in training are mapped to the
id of :data:`UNK` (``"<unk>"``); at word level that symbol is already part of the PTB training text,
otherwise it is appended to the vocabulary, with a warning, only when some unknown symbol occurs. At
character level ``"<unk>"`` is one symbol, distinct from the five characters ``<``, ``u``, ``n``,
``k``, ``>``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CHAR_FILES",
    "EOS",
    "SPACE",
    "UNK",
    "WORD_FILES",
    "Level",
    "Vocabulary",
    "batchify",
    "bptt_segments",
    "load_ptb",
    "load_ptb_dir",
    "read_char_file",
    "read_chars",
    "read_words",
]

logger = logging.getLogger(__name__)

EOS = "<eos>"
"""End-of-line symbol, at both levels."""
SPACE = "_"
"""Character-level symbol for the space between two words."""
UNK = "<unk>"
"""Symbol that unknown validation/test symbols are mapped to."""

WORD_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
"""Standard names of the word-level files (train, valid, test)."""
CHAR_FILES = ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")
"""Standard names of the character-level files (train, valid, test)."""

Level = Literal["char", "word"]


def _read_lines(path: str | Path) -> list[str]:
    """Read the lines of a non-empty UTF-8 text file.

    :param path: the file.
    :raises FileNotFoundError: naming ``path`` when it does not exist.
    :raises ValueError: naming ``path`` when it holds no text (empty or white space only), or is not
        UTF-8 text (with the first bad byte and its offset).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PTB file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise ValueError(f"PTB file is empty: {path}")
    return text.splitlines()


def read_words(path: str | Path) -> list[str]:
    """Word-level symbols: each line split on white space, followed by :data:`EOS`.

    :param path: a word-level PTB file (``ptb.train.txt`` ...).
    :return: the token sequence of the whole file.
    :raises FileNotFoundError: when the file is missing.
    :raises ValueError: when the file is empty.
    """
    symbols: list[str] = []
    for line in _read_lines(path):
        symbols.extend(line.split())
        symbols.append(EOS)
    return symbols


def read_chars(path: str | Path) -> list[str]:
    """Character-level symbols derived from a word-level file.

    A line with tokens ``w_1 ... w_k`` gives ``list("_".join(tokens)) + [EOS]`` (see the module
    docstring); leading, trailing and repeated spaces are not symbols.

    :param path: a word-level PTB file (``ptb.train.txt`` ...).
    :return: the symbol sequence of the whole file.
    :raises FileNotFoundError: when the file is missing.
    :raises ValueError: when the file is empty, or holds the character ``_`` (which would be
        confused with the space symbol).
    """
    symbols: list[str] = []
    for number, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if any(SPACE in token for token in tokens):
            raise ValueError(f"{path}:{number}: word-level text contains {SPACE!r}, the space symbol")
        symbols.extend(SPACE.join(tokens))
        symbols.append(EOS)
    return symbols


def read_char_file(path: str | Path) -> list[str]:
    """Character-level symbols from a standard ``ptb.char.*.txt`` file.

    Those files separate characters by spaces and write the space between words as ``_``; each line
    is split on white space and followed by :data:`EOS`, which gives the same sequence as
    :func:`read_chars` on the matching word-level file.

    :param path: a character-level PTB file.
    :return: the symbol sequence of the whole file.
    :raises FileNotFoundError: when the file is missing.
    :raises ValueError: when the file is empty.
    """
    return read_words(path)


class Vocabulary:
    """A bijection between symbols and ids ``0..len-1``, with a fallback id for unknown symbols.

    :param symbols: symbols in id order (duplicates are ignored after their first occurrence).
    :param unk: the symbol unknown symbols map to (see :meth:`encode`).
    """

    def __init__(self, symbols: Iterable[str] = (), unk: str = UNK) -> None:
        self.unk = unk
        self._symbols: list[str] = []
        self._ids: dict[str, int] = {}
        for symbol in symbols:
            self.add(symbol)

    @classmethod
    def from_text(cls, symbols: Iterable[str], unk: str = UNK) -> Vocabulary:
        """Build a vocabulary from training symbols, ids in order of first appearance.

        :param symbols: the training symbol sequence.
        :param unk: the symbol unknown symbols map to.
        """
        return cls(symbols, unk=unk)

    def add(self, symbol: str) -> int:
        """Add ``symbol`` if new and return its id.

        :param symbol: the symbol.
        """
        if symbol not in self._ids:
            self._ids[symbol] = len(self._symbols)
            self._symbols.append(symbol)
        return self._ids[symbol]

    def __len__(self) -> int:
        """Number of symbols."""
        return len(self._symbols)

    def __contains__(self, symbol: object) -> bool:
        """Whether ``symbol`` has an id."""
        return symbol in self._ids

    @property
    def symbols(self) -> list[str]:
        """The symbols in id order (a copy)."""
        return list(self._symbols)

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown symbol, or ``None`` when it is not (yet) in the vocabulary."""
        return self._ids.get(self.unk)

    def id_of(self, symbol: str) -> int:
        """The id of ``symbol``, or of the unknown symbol when ``symbol`` is not in the vocabulary.

        :param symbol: the symbol.
        :raises KeyError: when neither ``symbol`` nor the unknown symbol has an id.
        """
        if symbol in self._ids:
            return self._ids[symbol]
        if self.unk in self._ids:
            return self._ids[self.unk]
        raise KeyError(f"symbol {symbol!r} is not in the vocabulary, which has no {self.unk!r} symbol")

    def symbol_of(self, index: int) -> str:
        """The symbol with id ``index``.

        :param index: an id in ``0..len-1``.
        """
        return self._symbols[index]

    def unknown(self, symbols: Iterable[str]) -> set[str]:
        """The distinct symbols of ``symbols`` that have no id.

        :param symbols: a symbol sequence.
        """
        return {s for s in symbols if s not in self._ids}

    def encode(self, symbols: Sequence[str]) -> Tensor:
        """Ids of ``symbols`` as ``int64 [len(symbols)]``, unknown symbols mapped to :attr:`unk_id`.

        :param symbols: a symbol sequence.
        :raises KeyError: when a symbol is unknown and the vocabulary has no unknown symbol.
        """
        return torch.tensor([self.id_of(s) for s in symbols], dtype=torch.int64)

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Symbols of ``ids``.

        :param ids: ids in ``0..len-1``.
        """
        values = ids.tolist() if isinstance(ids, Tensor) else ids
        return [self._symbols[int(i)] for i in values]


def load_ptb(
    train_file: str | Path,
    valid_file: str | Path,
    test_file: str | Path,
    level: Level,
    char_files: bool = False,
) -> tuple[Vocabulary, Tensor, Tensor, Tensor]:
    """Read the three splits, build the vocabulary from training and encode all three.

    :param train_file: training text.
    :param valid_file: validation text.
    :param test_file: test text.
    :param level: ``"word"`` (:func:`read_words`) or ``"char"`` (:func:`read_chars` on word-level
        text, or :func:`read_char_file` when ``char_files`` is true).
    :param char_files: at character level, the files are standard ``ptb.char.*`` files.
    :return: ``(vocab, train_ids, valid_ids, test_ids)``, the ids ``int64`` 1-d tensors. Validation
        and test symbols absent from training map to :data:`UNK`, which is appended to the
        vocabulary (with a warning) when training lacks it.
    :raises ValueError: for an unknown level or an empty file.
    :raises FileNotFoundError: for a missing file.
    """
    if level == "word":
        read = read_words
    elif level == "char":
        read = read_char_file if char_files else read_chars
    else:
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    train, valid, test = read(train_file), read(valid_file), read(test_file)
    vocab = Vocabulary.from_text(train)
    unknown = vocab.unknown(valid) | vocab.unknown(test)
    if unknown and vocab.unk_id is None:
        vocab.add(vocab.unk)
        shown = sorted(unknown)[:10]
        warnings.warn(
            f"{len(unknown)} validation/test symbol(s) absent from training (e.g. {shown}); they map to "
            f"{vocab.unk!r}, added to the vocabulary as id {vocab.unk_id}",
            stacklevel=2,
        )
    return vocab, vocab.encode(train), vocab.encode(valid), vocab.encode(test)


def load_ptb_dir(data_dir: str | Path, level: Level) -> tuple[Vocabulary, Tensor, Tensor, Tensor]:
    """:func:`load_ptb` on the standard file names of ``data_dir``.

    Word level reads ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``. Character level reads
    ``ptb.char.train.txt``, ``ptb.char.valid.txt``, ``ptb.char.test.txt`` when all three exist, else
    derives the characters from the word-level files (with a warning).

    :param data_dir: folder with the PTB files.
    :param level: ``"char"`` or ``"word"``.
    :raises FileNotFoundError: naming the first missing file.
    :raises ValueError: for an unknown level or an empty file.
    """
    folder = Path(data_dir)
    if level not in ("char", "word"):
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    if level == "char":
        char_paths = [folder / name for name in CHAR_FILES]
        if all(p.is_file() for p in char_paths):
            return load_ptb(*char_paths, level="char", char_files=True)
        logger.info(
            "no complete set of %s in %s; deriving characters from the word-level files", list(CHAR_FILES), folder
        )
    word_paths = [folder / name for name in WORD_FILES]
    return load_ptb(*word_paths, level=level)


def batchify(ids: Tensor, n_streams: int = 20) -> Tensor:
    """Cut a symbol sequence into ``n_streams`` contiguous parallel streams, one a column.

    The standard language-model layout: the sequence is trimmed to a multiple of ``n_streams``
    (the tail is dropped) and stream ``j`` is ``ids[j*T : (j+1)*T]``, stored as column ``j``.

    :param ids: ``int64 [N]`` symbol ids.
    :param n_streams: number of parallel streams (20 in the paper), ``1 <= n_streams <= N``.
    :return: ``[T, n_streams]`` with ``T = N // n_streams``.
    :raises ValueError: for a non-1-d input or an impossible number of streams.
    """
    if ids.ndim != 1:
        raise ValueError(f"expected a 1-d id sequence, got shape {list(ids.shape)}")
    if not 1 <= n_streams <= ids.shape[0]:
        raise ValueError(f"n_streams must lie in 1..{ids.shape[0]} (the sequence length), got {n_streams}")
    steps = ids.shape[0] // n_streams
    return ids[: steps * n_streams].view(n_streams, steps).t().contiguous()


def bptt_segments(data: Tensor, bptt: int = 70) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive segments for truncated backpropagation through time.

    Segment ``k`` is ``input = data[i : i+L]`` and ``target = data[i+1 : i+1+L]`` with ``i = k*bptt``
    and ``L = min(bptt, T - 1 - i)``, so every symbol but the last of each stream is an input once
    and the target is the input shifted by one step.

    :param data: ``[T, n_streams]`` from :func:`batchify`, ``T >= 2``.
    :param bptt: segment length, ``>= 1``.
    :return: an iterator of ``(input [L, n_streams], target [L, n_streams])``.
    :raises ValueError: for ``bptt < 1`` or fewer than two time steps.
    """
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    if data.ndim < 1 or data.shape[0] < 2:
        raise ValueError(f"need at least 2 time steps, got shape {list(data.shape)}")
    return _segments(data, bptt)


def _segments(data: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Generator behind :func:`bptt_segments` (kept apart so that argument errors raise eagerly)."""
    total = data.shape[0]
    for start in range(0, total - 1, bptt):
        length = min(bptt, total - 1 - start)
        yield data[start : start + length], data[start + 1 : start + 1 + length]
