"""The factorially held-out split (paper Table 2): test cells share no architecture, data set or
optimizer with the train and validation cells, and the novel intervention families appear only
in test.

A corpus is built from one or more named cell sets (:data:`CELL_SETS`): ``default`` is Table 2
at this machine's scale; ``diversity`` adds train/val cells with a third family of sequence model
on a second kind of sequence data and two more optimizers, for the "more diverse training cells"
experiment (docs/results.md); ``procedural`` draws a new network and training recipe per run
within (architecture family, data set, optimizer family) cells.

Example:
    >>> check_factorial(DEFAULT_SPLIT)
    >>> sorted({c.optimizer for c in DEFAULT_SPLIT.test})
    ['adafactor', 'lion']
    >>> check_factorial(merge_splits([DEFAULT_SPLIT, DIVERSITY_SPLIT]))
    >>> check_factorial(PROCEDURAL_SPLIT)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from data_factory.interventions import INTERVENTIONS, NOVEL_KINDS

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Cell:
    """One (architecture, data set, optimizer) combination of a split."""

    arch: str
    dataset: str
    optimizer: str


@dataclass(frozen=True)
class SplitSpec:
    """Cells per split and how many runs of each intervention a cell gets.

    Attributes:
        train, val, test: the cells.
        mix: ``{split: {intervention kind: runs per cell}}``.
    """

    train: tuple[Cell, ...]
    val: tuple[Cell, ...]
    test: tuple[Cell, ...]
    mix: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def cells(self, split: str) -> tuple[Cell, ...]:
        """The cells of ``split``."""
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; choose from {SPLITS}")
        return getattr(self, split)

    def pairs(self) -> frozenset[tuple[str, Cell]]:
        """Every ``(split, cell)`` of the spec.

        Example:
            >>> ("val", Cell("vit", "digits", "sgd")) in DEFAULT_SPLIT.pairs()
            True
        """
        return frozenset((split, cell) for split in SPLITS for cell in self.cells(split))

    def axes(self, splits: Iterable[str]) -> dict[str, set[str]]:
        """Architectures, data sets and optimizers used by ``splits``."""
        cells = [c for s in splits for c in self.cells(s)]
        return {"arch": {c.arch for c in cells}, "dataset": {c.dataset for c in cells},
                "optimizer": {c.optimizer for c in cells}}


class SplitLeakError(ValueError):
    """The test split shares a factor (or a novel family) with train/val."""


def check_factorial(spec: SplitSpec) -> None:
    """Raise :class:`SplitLeakError` unless test is disjoint from train ∪ val on every axis and
    novel intervention families occur in test only.

    Example:
        >>> bad = SplitSpec(train=(Cell("cnn", "digits", "sgd"),), val=(),
        ...                 test=(Cell("mixer", "digits", "lion"),))
        >>> check_factorial(bad)
        Traceback (most recent call last):
        ...
        data_factory.split.SplitLeakError: test shares dataset {'digits'} with train/val
    """
    seen, test = spec.axes(("train", "val")), spec.axes(("test",))
    for axis in ("arch", "dataset", "optimizer"):
        shared = seen[axis] & test[axis]
        if shared:
            raise SplitLeakError(f"test shares {axis} {shared} with train/val")
    for split in ("train", "val"):
        novel = set(spec.mix.get(split, {})) & set(NOVEL_KINDS)
        if novel:
            raise SplitLeakError(f"novel families {sorted(novel)} appear in {split}")
    for split, mix in spec.mix.items():
        unknown = set(mix) - set(INTERVENTIONS)
        if unknown:
            raise KeyError(f"unknown interventions {sorted(unknown)} in the {split} mix")


def merge_splits(specs: Sequence[SplitSpec]) -> SplitSpec:
    """One spec with every cell of ``specs`` (for :func:`check_factorial` on a whole corpus); a
    split's mix is the union of the kinds, each at its largest count.

    Example:
        >>> merged = merge_splits([DEFAULT_SPLIT, DIVERSITY_SPLIT])
        >>> len(merged.train) == len(DEFAULT_SPLIT.train) + len(DIVERSITY_SPLIT.train)
        True
    """
    if not specs:
        raise ValueError("merge_splits: no split specs")
    mix: dict[str, dict[str, int]] = {}
    for spec in specs:
        for split, kinds in spec.mix.items():
            for kind, count in kinds.items():
                mix.setdefault(split, {})[kind] = max(count, mix.get(split, {}).get(kind, 0))
    return SplitSpec(*(tuple(c for spec in specs for c in spec.cells(s)) for s in SPLITS), mix=mix)


_KNOWN_MIX = {"healthy": 4, "overfitting": 5, "instability": 5, "forgetting": 2, "concept_bias": 2}
#: known kinds everywhere, one run of each novel family per test cell
_TABLE2_MIX = {"train": _KNOWN_MIX, "val": _KNOWN_MIX,
               "test": {**_KNOWN_MIX, **{kind: 1 for kind in NOVEL_KINDS}}}

#: Table 2 at this machine's scale. Train/val: plain CNN, ResNet, ConvNeXt, ViT, DeiT and MLP on
#: digits / shapes / tabular with AdamW and SGD. Test: DenseNet, MobileNet, RegNet, MLP-Mixer,
#: a hierarchical ViT and two language models on unseen data (patterns, text) with Lion and
#: Adafactor, plus the novel families.
DEFAULT_SPLIT = SplitSpec(
    train=(
        Cell("cnn", "digits", "sgd"), Cell("cnn", "shapes", "adamw"),
        Cell("resnet", "shapes", "sgd"), Cell("resnet", "digits", "adamw"),
        Cell("convnext", "shapes", "adamw"), Cell("vit", "digits", "adamw"),
        Cell("deit", "digits", "adamw"), Cell("mlp", "tabular", "sgd"),
    ),
    val=(
        Cell("resnet", "shapes", "adamw"), Cell("vit", "digits", "sgd"),
        Cell("convnext", "digits", "sgd"), Cell("mlp", "tabular", "adamw"),
    ),
    test=(
        Cell("densenet", "patterns", "lion"), Cell("mobilenet", "patterns", "adafactor"),
        Cell("regnet", "patterns", "adafactor"), Cell("mixer", "patterns", "lion"),
        Cell("swin", "patterns", "adafactor"), Cell("transformer_lm", "text", "adafactor"),
        Cell("gru_lm", "text", "lion"),
    ),
    mix=_TABLE2_MIX,
)

#: Extra train/val cells (no test cells): a temporal-conv LM on procedural Markov-chain sequences
#: (train had no sequence model and no sequence data, while two test cells are language models),
#: and RMSprop / NAdam next to AdamW and SGD. Factors stay disjoint from the test split's.
DIVERSITY_SPLIT = SplitSpec(
    train=(
        Cell("tcn_lm", "markov", "adamw"), Cell("tcn_lm", "markov", "rmsprop"),
        Cell("vit", "digits", "nadam"), Cell("cnn", "digits", "rmsprop"),
    ),
    val=(Cell("tcn_lm", "markov", "nadam"),),
    test=(),
    mix={"train": _KNOWN_MIX, "val": _KNOWN_MIX},
)


def _procedural(*cells: tuple[str, str, str]) -> tuple[Cell, ...]:
    """Cells given as (network family, data set, optimizer family), every one drawn
    procedurally: ``procedural:<family>`` for the architecture and the optimizer."""
    return tuple(Cell(f"procedural:{family}", dataset, f"procedural:{optimizer}")
                 for family, dataset, optimizer in cells)


#: Procedural cells (:mod:`data_factory.procedural`, :mod:`data_factory.recipes`): every run draws
#: its own network within the cell's family and its own recipe within the optimizer family, so no
#: fixed instance can be recognised from a still frame. Train: MLP / conv / GRU families with SGD
#: and Adam recipes. Val holds out a family (attention) and an optimizer family (RMSprop) of its
#: own. Test holds out the mixer and LSTM families, the patterns and text data and the Adagrad and
#: Lion recipes, plus the novel intervention families.
PROCEDURAL_SPLIT = SplitSpec(
    train=_procedural(
        ("mlp", "tabular", "sgd"), ("mlp", "digits", "adam"), ("conv", "digits", "sgd"),
        ("conv", "shapes", "adam"), ("gru", "markov", "adam"), ("gru", "markov", "sgd"),
    ),
    val=_procedural(
        ("attention", "digits", "adam"), ("attention", "shapes", "sgd"),
        ("conv", "shapes", "rmsprop"), ("mlp", "tabular", "rmsprop"),
    ),
    test=_procedural(
        ("mixer", "patterns", "adagrad"), ("mixer", "patterns", "lion"),
        ("lstm", "text", "lion"), ("lstm", "text", "adagrad"),
    ),
    mix=_TABLE2_MIX,
)

#: Named cell sets a corpus is built from (``cells`` in conf/factory.yaml, in this order).
CELL_SETS: dict[str, SplitSpec] = {"default": DEFAULT_SPLIT, "diversity": DIVERSITY_SPLIT,
                                   "procedural": PROCEDURAL_SPLIT}


def cell_sets(names: Sequence[str]) -> list[SplitSpec]:
    """The :data:`CELL_SETS` named, in order; raises ``KeyError`` listing the valid names.

    Example:
        >>> [len(s.train) for s in cell_sets(["default", "diversity"])]
        [8, 4]
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise KeyError(f"no cell sets named; choose from {sorted(CELL_SETS)}")
    unknown = [n for n in names if n not in CELL_SETS]
    if unknown:
        raise KeyError(f"unknown cell sets {unknown}; choose from {sorted(CELL_SETS)}")
    return [CELL_SETS[n] for n in names]
