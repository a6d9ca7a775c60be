"""Token-sequence data sets for next-token prediction: :func:`text` and :func:`markov`.

``text`` reads characters of Python standard-library sources (:data:`TEXT_FILES`, vocabulary
:data:`TEXT_CHARS` + an id for anything else, see :func:`encode_text`); ``markov`` samples a
sparse random order-2 Markov chain. In both, ``x`` is ``N×L`` ids and ``y`` the same windows
shifted by one.

Example:
    >>> decode_text(encode_text("ok"))
    'ok'
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data_factory.datasets.base import TensorData

__all__ = [
    "TEXT_CHARS",
    "TEXT_FILES",
    "TEXT_VOCAB_SIZE",
    "decode_text",
    "encode_text",
    "markov",
    "text",
]


#: Characters of the text vocabulary; id 0 is reserved for anything else (non-ASCII, tabs, …).
TEXT_CHARS: str = "\n" + "".join(chr(c) for c in range(32, 127))
#: Size of the character vocabulary (``num_classes`` of the ``"text"`` data set).
TEXT_VOCAB_SIZE: int = len(TEXT_CHARS) + 1

#: Standard-library sources the ``"text"`` data set reads, in this order (present in every
#: CPython 3.9–3.13; their contents vary a little between Python versions).
TEXT_FILES: tuple[str, ...] = ("argparse.py", "textwrap.py", "functools.py", "dataclasses.py",
                               "enum.py", "contextlib.py", "heapq.py", "random.py", "fractions.py",
                               "shlex.py", "csv.py", "calendar.py")

_CHAR_TO_ID = np.zeros(256, dtype=np.int64)
_CHAR_TO_ID[[ord(c) for c in TEXT_CHARS]] = np.arange(1, TEXT_VOCAB_SIZE)


def encode_text(s: str) -> torch.Tensor:
    """Character ids of ``s`` (unknown characters → 0).

    Example:
        >>> decode_text(encode_text("def f():\\n\\treturn 1"))
        'def f():\\n\\x00return 1'
    """
    raw = np.frombuffer(s.encode("ascii", errors="replace"), dtype=np.uint8)
    return torch.from_numpy(_CHAR_TO_ID[raw])


def decode_text(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode_text` (id 0 decodes to ``"\\x00"``).

    Example:
        >>> decode_text(torch.tensor([1, 2]))
        '\\n '
    """
    return "".join("\x00" if i == 0 else TEXT_CHARS[i - 1] for i in ids.tolist())


def _text_windows(seed: int, seq_len: int, sizes: tuple[int, int, int],
                  root: str | os.PathLike | None, files: Sequence[str],
                  fractions: tuple[float, float]
                  ) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Per split: ``(windows (N×(L+1)) ids, start offsets in the concatenated corpus)``.

    Each file is cut into a train / val / test region (first ``fractions[0]``, next
    ``fractions[1]``, rest), so every split sees every file while no character is shared; windows
    are non-overlapping ``L+1``-grams inside one region, sampled with ``seed``.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    rng = np.random.default_rng(seed)
    ids_parts, regions = [], [[], [], []]
    offset, span = 0, seq_len + 1
    for name in files:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"text corpus file {path} not found (root={root})")
        ids = encode_text(path.read_text(encoding="utf-8", errors="replace"))
        ids_parts.append(ids)
        a = int(fractions[0] * len(ids))
        b = a + int(fractions[1] * len(ids))
        for split, (lo, hi) in enumerate(((0, a), (a, b), (b, len(ids)))):
            # a random phase per region and seed, then back-to-back windows that end inside it
            start = lo + int(rng.integers(0, span))
            regions[split].append(np.arange(start, hi - span + 1, span) + offset)
        offset += len(ids)
    corpus = torch.cat(ids_parts)
    out = []
    for split, n in enumerate(sizes):
        starts = np.concatenate(regions[split])
        if len(starts) < n:
            raise ValueError(
                f"text corpus has only {len(starts)} windows for split {split}, need {n}")
        starts = np.sort(rng.choice(starts, size=n, replace=False))
        index = torch.from_numpy(starts)[:, None] + torch.arange(span)[None]
        out.append((corpus[index], starts))
    return out


def text(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400, seq_len: int = 32,
         root: str | os.PathLike | None = None, files: Sequence[str] = TEXT_FILES) -> TensorData:
    """Character-level next-character prediction on Python standard-library sources.

    ``x`` is ``N×seq_len`` ids, ``y`` the same windows shifted by one character (``N×seq_len``);
    ``num_classes`` is :data:`TEXT_VOCAB_SIZE` (printable ASCII and newline, plus 0 for anything
    else). Train / val / test windows come from disjoint regions (70 / 15 / 15 %) of each file.

    Args:
        seed: picks the windows.
        n_train, n_val, n_test: windows per split.
        seq_len: window length ``L``.
        root: directory holding ``files`` (default: this interpreter's stdlib).
        files: file names under ``root``, read in this order.

    Example:
        >>> data = text(seed=0)
        >>> tuple(data.x_train.shape), bool((data.x_train[:, 1:] == data.y_train[:, :-1]).all())
        ((1200, 32), True)
    """
    parts = _text_windows(seed, seq_len, (n_train, n_val, n_test), root, files, (0.7, 0.15))
    tensors: list[torch.Tensor] = []
    for windows, _ in parts:
        tensors += [windows[:, :-1].contiguous(), windows[:, 1:].contiguous()]
    return TensorData("text", *tensors, TEXT_VOCAB_SIZE)


def markov(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400,
           seq_len: int = 32, vocab: int = 32, branching: int = 4) -> TensorData:
    """Next-token prediction on sequences of a sparse random order-2 Markov chain (procedural).

    Each pair of previous tokens allows ``branching`` successors with Dirichlet(1) weights, so
    the best achievable next-token accuracy is well below 1 and there are ``vocab² · branching``
    transitions to learn — enough that a small training subset is memorised rather than learnt
    (the overfitting intervention needs that). Same layout as :func:`text`: ``x`` is
    ``N×seq_len`` ids, ``y`` the windows shifted by one.

    Args:
        seed: draws the chain and the sequences (train / val / test: three draws of one chain).
        n_train, n_val, n_test: sequences per split.
        seq_len: window length ``L``.
        vocab: number of token ids (``num_classes``).
        branching: successors allowed after each pair of tokens.

    Example:
        >>> data = markov(seed=0, n_train=50, n_val=10, n_test=10)
        >>> tuple(data.x_train.shape), data.num_classes
        ((50, 32), 32)
        >>> bool((data.x_train[:, 1:] == data.y_train[:, :-1]).all())
        True
    """
    if vocab < 2 or not 1 <= branching <= vocab:
        raise ValueError(f"need vocab >= 2 and 1 <= branching <= vocab, got {vocab}, {branching}")
    rng = np.random.default_rng(seed)
    successors = np.argsort(rng.random((vocab, vocab, vocab)), axis=-1)[..., :branching]
    cumulative = rng.dirichlet(np.ones(branching), size=(vocab, vocab)).cumsum(-1)

    def sample(n: int) -> torch.Tensor:
        seq = np.empty((n, seq_len + 1), dtype=np.int64)
        seq[:, :2] = rng.integers(0, vocab, (n, 2))
        for t in range(2, seq_len + 1):
            a, b = seq[:, t - 2], seq[:, t - 1]
            pick = (rng.random(n)[:, None] > cumulative[a, b]).sum(-1).clip(max=branching - 1)
            seq[:, t] = successors[a, b, pick]
        return torch.from_numpy(seq)

    tensors: list[torch.Tensor] = []
    for n in (n_train, n_val, n_test):
        windows = sample(n)
        tensors += [windows[:, :-1].contiguous(), windows[:, 1:].contiguous()]
    return TensorData("markov", *tensors, vocab)
