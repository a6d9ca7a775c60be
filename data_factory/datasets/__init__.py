"""Data sets available offline, in one registry, plus the shortcut watermarks of Concept Bias.

Every entry of :data:`DATASETS` loads in well under a second from what is already on this machine
(scikit-learn's bundled digits, procedural generators, the Python standard library's sources) and
returns a :class:`TensorData` with a train / validation / test split:

* image sets: float ``N×3×16×16``, standardised per channel with training statistics (digits
  keeps its historical global standardisation), long labels;
* ``"tabular"``: float ``N×32``, standardised per feature, 10 classes;
* ``"text"``: long ``N×32`` character windows ``x`` and next-character targets ``y`` (``x``
  shifted by one), vocabulary of :data:`TEXT_VOCAB_SIZE` ids; train / val / test windows come
  from disjoint regions of the text.

Sizes are about 1,200 / 400 / 400 examples (digits: 1,078 / 359 / 360), so an epoch at batch 32
is 34–38 steps. Same ``seed`` → identical tensors; another seed → another draw.

Layout (import every name from ``data_factory.datasets``): ``base.py`` (:class:`TensorData`,
:class:`DatasetSpec`, split helpers), ``sklearn_data.py`` (:func:`digits`, :func:`tabular`),
``procedural.py`` (:func:`shapes`, :func:`patterns`), ``sequences.py`` (:func:`text`,
:func:`markov`, the character vocabulary), ``on_disk.py`` (:func:`torchvision_dataset`),
``shortcuts.py`` (Concept Bias watermarks), ``registry.py`` (:data:`DATASETS`,
:func:`load_dataset`).

Example:
    >>> data = digits(image_size=16, seed=0)
    >>> tuple(data.x_train.shape[1:]), data.num_classes
    ((1, 16, 16), 10)
    >>> shapes = load_dataset("shapes", seed=0)
    >>> tuple(shapes.x_train.shape), shapes.x_train.dtype, shapes.num_classes
    ((1200, 3, 16, 16), torch.float32, 10)
"""

from __future__ import annotations

from data_factory.datasets.base import DatasetSpec, TensorData
from data_factory.datasets.on_disk import torchvision_dataset
from data_factory.datasets.procedural import PATTERN_NAMES, SHAPE_NAMES, patterns, shapes
from data_factory.datasets.registry import DATASETS, load_dataset
from data_factory.datasets.sequences import (
    TEXT_CHARS,
    TEXT_FILES,
    TEXT_VOCAB_SIZE,
    _text_windows,  # noqa: F401  (tests read the windows directly)
    decode_text,
    encode_text,
    markov,
    text,
)
from data_factory.datasets.shortcuts import (
    WATERMARK_POSITIONS,
    add_tabular_shortcut,
    add_watermark,
)
from data_factory.datasets.sklearn_data import digits, tabular

__all__ = [
    "DATASETS",
    "PATTERN_NAMES",
    "SHAPE_NAMES",
    "TEXT_CHARS",
    "TEXT_FILES",
    "TEXT_VOCAB_SIZE",
    "WATERMARK_POSITIONS",
    "DatasetSpec",
    "TensorData",
    "add_tabular_shortcut",
    "add_watermark",
    "decode_text",
    "digits",
    "encode_text",
    "load_dataset",
    "markov",
    "patterns",
    "shapes",
    "tabular",
    "text",
    "torchvision_dataset",
]
