"""The registry of offline data sets: :data:`DATASETS` by name, and :func:`load_dataset`.

Example:
    >>> sorted(DATASETS)
    ['digits', 'markov', 'patterns', 'shapes', 'tabular', 'text']
"""

from __future__ import annotations

from data_factory.datasets.base import DatasetSpec, TensorData
from data_factory.datasets.procedural import patterns, shapes
from data_factory.datasets.sequences import markov, text
from data_factory.datasets.sklearn_data import digits, tabular

__all__ = ["DATASETS", "load_dataset"]


def _digits_rgb(seed: int = 0, **options: object) -> TensorData:
    return digits(seed=seed, **{"channels": 3, **options})


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", "image", _digits_rgb, "scikit-learn digits, 16×16, grey → 3 channels"),
    DatasetSpec("shapes", "image", shapes,
                "10 procedural shapes × colours × textures, clutter, noise"),
    DatasetSpec("patterns", "image", patterns,
                "10 procedural textures (gratings, checkers, rings, …)"),
    DatasetSpec("tabular", "tabular", tabular, "make_classification, 32 features, 10 classes"),
    DatasetSpec("text", "text", text, "next-character prediction on stdlib sources, L=32"),
    DatasetSpec("markov", "text", markov,
                "next-token prediction on a sparse random order-2 Markov chain, L=32"),
)}


def load_dataset(name: str, seed: int = 0, **options: object) -> TensorData:
    """Load the registered data set ``name``.

    Args:
        name: a key of :data:`DATASETS`.
        seed: the draw (split for digits/tabular, samples for procedural sets, windows for text).
        options: forwarded to the loader (e.g. ``difficulty=0.8`` for shapes).

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).

    Example:
        >>> data = load_dataset("patterns", seed=3, n_train=40, n_val=10, n_test=10)
        >>> tuple(data.x_train.shape)
        (40, 3, 16, 16)
    """
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name].load(seed=seed, **options)
