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

Example:
    >>> data = digits(image_size=16, seed=0)
    >>> tuple(data.x_train.shape[1:]), data.num_classes
    ((1, 16, 16), 10)
    >>> shapes = load_dataset("shapes", seed=0)
    >>> tuple(shapes.x_train.shape), shapes.x_train.dtype, shapes.num_classes
    ((1200, 3, 16, 16), torch.float32, 10)
"""

from __future__ import annotations

import itertools
import math
import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


@dataclass(frozen=True)
class TensorData:
    """A small in-memory supervised data set split into train / validation / test.

    Attributes:
        name: registry name.
        x_train, y_train, x_val, y_val, x_test, y_test: tensors (inputs float or long, targets
            long).
        num_classes: number of target classes (vocabulary size for language models).

    Example:
        >>> import torch
        >>> z = torch.zeros(4, 2)
        >>> y = z[:, 0].long()
        >>> TensorData("toy", z, y, z, y, z, y, num_classes=2).num_classes
        2
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        name: registry key.
        modality: ``"image"``, ``"tabular"`` or ``"text"``.
        load: ``load(seed, **options) -> TensorData``.
        description: one line on what the data are.

    Example:
        >>> DATASETS["text"].modality
        'text'
    """

    name: str
    modality: str
    load: Callable[..., TensorData]
    description: str = ""


# -- shared helpers -----------------------------------------------------------------------------

def _split(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int,
           fractions: tuple[float, float] = (0.6, 0.2)) -> TensorData:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    a = int(fractions[0] * len(x))
    b = a + int(fractions[1] * len(x))
    return TensorData(name, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes)


def _standardised(name: str, parts: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
                  axes: tuple[int, ...]) -> TensorData:
    """Pack ``[(x, y)] * 3`` (train, val, test) into a :class:`TensorData`, standardising every
    split with the *training* statistics over ``axes`` (so val/test never leak into them)."""
    x_train = parts[0][0]
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    tensors: list[torch.Tensor] = []
    for x, y in parts:
        tensors += [torch.from_numpy(((x - mean) / std).astype(np.float32)),
                     torch.from_numpy(np.asarray(y, dtype=np.int64))]
    return TensorData(name, *tensors, num_classes)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")


# -- digits -------------------------------------------------------------------------------------

def digits(image_size: int = 16, seed: int = 0, channels: int = 1) -> TensorData:
    """scikit-learn's 8×8 handwritten digits (ships with the package), upsampled and
    standardised; 60/20/20 train/val/test split drawn with ``seed``.

    Args:
        image_size: side of the (bilinearly upsampled) images.
        seed: seeds the split.
        channels: 1 (grey, the historical default) or 3 (the grey image replicated, as the
            registry entry ``"digits"`` loads it for RGB models).

    Example:
        >>> tuple(digits(channels=3).x_train.shape)
        (1078, 3, 16, 16)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    x = _to_channels(x, channels)
    return _split("digits", x, torch.tensor(bunch.target, dtype=torch.long), 10, seed)


# -- procedural images --------------------------------------------------------------------------

#: Saturated RGB colours the procedural generators draw from (colour is a nuisance variable).
_PALETTE = np.array([
    [0.95, 0.20, 0.20], [0.20, 0.85, 0.25], [0.25, 0.35, 0.95], [0.95, 0.85, 0.15],
    [0.90, 0.30, 0.90], [0.15, 0.85, 0.90], [0.95, 0.55, 0.10], [0.90, 0.90, 0.90],
], dtype=np.float32)

#: Class names of :func:`shapes`, in label order.
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "plus", "ring", "diamond",
                                "x_cross", "frame", "half_disc", "bowtie")

#: Class names of :func:`patterns`, in label order.
PATTERN_NAMES: tuple[str, ...] = ("grating_0", "grating_45", "grating_90", "grating_135",
                                  "checkerboard", "rings", "pinwheel", "dots", "blobs", "chevron")


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of shape ``label`` in its own unit coordinates (radius ≈ 1, ``v`` down)."""
    r = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    inside = [
        r < 1.0,                                                        # circle
        np.maximum(au, av) < 0.85,                                      # square
        (v < 0.8) & (v > 1.6 * au - 0.95),                              # triangle, apex up
        ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0)),          # plus
        (r < 1.0) & (r > 0.55),                                         # ring
        au + av < 1.1,                                                  # diamond
        ((np.abs(u - v) < 0.42) | (np.abs(u + v) < 0.42)) & (r < 1.15),  # x-cross
        (np.maximum(au, av) < 0.95) & (np.maximum(au, av) > 0.55),      # hollow square
        (r < 1.0) & (v > -0.15),                                        # half disc, flat top
        (au > av - 0.1) & (au < 0.95),                                  # bow-tie
    ][label]
    return inside


def _textures(kind: np.ndarray, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """Texture in [0, 1] per pixel (1 = full colour): solid, stripes, checker or dots."""
    n = len(kind)
    period = rng.uniform(2.5, 4.5, size=(n, 1, 1))
    angle = rng.uniform(0, np.pi, size=(n, 1, 1))
    a = (X * np.cos(angle) + Y * np.sin(angle)) * 2 * np.pi / period
    b = (-X * np.sin(angle) + Y * np.cos(angle)) * 2 * np.pi / period
    stripes = 0.5 + 0.5 * np.sin(a)
    checker = (np.sin(a) * np.sin(b) > 0).astype(np.float32)
    dots = ((np.cos(a) + np.cos(b)) > 0.6).astype(np.float32)
    options = np.stack([np.ones_like(stripes), stripes, checker, dots])  # 4×N×H×W
    return options[kind, np.arange(n)]


def _grid(n_side: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (in output-pixel units) of a supersampled square grid."""
    c = (np.arange(n_side * supersample, dtype=np.float32) + 0.5) / supersample
    return np.meshgrid(c, c, indexing="xy")


def _downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter anti-aliasing of ``N×C×(H·f)×(W·f)`` to ``N×C×H×W``."""
    if factor == 1:
        return img
    n, c, h, w = img.shape
    return img.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def _colour_pairs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and (different, darker) background colours, jittered, shape ``N×3×1×1``."""
    k = len(_PALETTE)
    fg_idx = rng.integers(0, k, n)
    bg_idx = (fg_idx + rng.integers(1, k, n)) % k
    fg = _PALETTE[fg_idx] * rng.uniform(0.8, 1.0, (n, 1))
    bg = _PALETTE[bg_idx] * rng.uniform(0.1, 0.4, (n, 1))
    return fg[:, :, None, None].astype(np.float32), bg[:, :, None, None].astype(np.float32)


def _add_clutter_and_noise(img: np.ndarray, rng: np.random.Generator, clutter: float,
                           noise: float) -> np.ndarray:
    """Distractor specks of 1–2 px (Poisson(``clutter``) per image, random colours) and
    Gaussian pixel noise of σ ``noise``."""
    n, _, h, w = img.shape
    max_k = max(1, math.ceil(3 * clutter) + 2)
    count = np.minimum(rng.poisson(clutter, n), max_k)
    for k in range(max_k):  # loop over speck slots (≤ a handful), vectorised over images
        active = np.nonzero(count > k)[0]
        if len(active) == 0:
            break
        size = rng.integers(1, 3, len(active))
        r0 = rng.integers(0, h - 1, len(active))
        c0 = rng.integers(0, w - 1, len(active))
        colour = (_PALETTE[rng.integers(0, len(_PALETTE), len(active))]
                  * rng.uniform(0.4, 1.0, (len(active), 1)))
        for s in (1, 2):
            pick = size >= s
            for dr in range(s):
                for dc in range(s):
                    img[active[pick], :, r0[pick] + dr, c0[pick] + dc] = colour[pick]
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return img


def _render_shapes(n: int, rng: np.random.Generator, image_size: int, num_classes: int,
                   difficulty: float, noise: float | None, size_jitter: float | None,
                   clutter: float | None) -> tuple[np.ndarray, np.ndarray]:
    noise = 0.04 + 0.25 * difficulty if noise is None else noise
    size_jitter = 0.1 + 0.3 * difficulty if size_jitter is None else size_jitter
    clutter = 3.0 * difficulty if clutter is None else clutter
    ss = 2  # render at 2× and box-filter: smooth edges at 16×16 without a rasteriser
    X, Y = _grid(image_size, ss)
    y = _balanced_labels(n, num_classes, rng)
    scale = image_size / 16.0
    radius = (4.6 * scale * (1 + size_jitter * rng.uniform(-1, 1, n))).astype(np.float32)
    shift = (1.0 + 2.0 * difficulty) * scale
    cx = image_size / 2 + rng.uniform(-shift, shift, n).astype(np.float32)
    cy = image_size / 2 + rng.uniform(-shift, shift, n).astype(np.float32)
    angle = rng.uniform(-1, 1, n).astype(np.float32) * np.deg2rad(15.0) * difficulty
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx = (X[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (Y[None] - cy[:, None, None]) / radius[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = np.zeros(u.shape, dtype=np.float32)
    for label in range(num_classes):  # one vectorised inside-test per class
        idx = np.nonzero(y == label)[0]
        mask[idx] = _shape_mask(label % len(SHAPE_NAMES), u[idx], v[idx])
    mask = _downsample(mask[:, None], ss)  # anti-aliased coverage at the output resolution
    Xo, Yo = _grid(image_size, 1)
    texture = _textures(rng.integers(0, 4, n), Xo[None], Yo[None], rng)
    fg, bg = _colour_pairs(n, rng)
    shade = 0.4 + 0.6 * texture[:, None]  # texture troughs darken the shape, never erase it
    img = (bg + (fg * shade - bg) * mask).astype(np.float32)
    return _add_clutter_and_noise(img, rng, clutter, noise), y


def _procedural(name: str, render: Callable[..., tuple[np.ndarray, np.ndarray]], seed: int,
                sizes: tuple[int, int, int], **options: object) -> TensorData:
    # One generator, three consecutive draws: the splits are independent samples of one task.
    rng = np.random.default_rng(seed)
    parts = [render(n, rng, **options) for n in sizes]
    return _standardised(name, parts, int(options["num_classes"]), axes=(0, 2, 3))


def shapes(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400,
           difficulty: float = 0.2, noise: float | None = None, size_jitter: float | None = None,
           clutter: float | None = None, image_size: int = 16, num_classes: int = 10) -> TensorData:
    """Procedural shapes: the class is the shape (:data:`SHAPE_NAMES`); colour, background,
    texture (solid / stripes / checker / dots), size, position, rotation, clutter and noise are
    nuisances.

    Args:
        seed: seeds every draw (same seed → identical tensors).
        n_train, n_val, n_test: examples per split (classes balanced).
        difficulty: in [0, 1]; sets the defaults of ``noise`` (pixel σ 0.04–0.29), ``size_jitter``
            (±10–40 % radius), ``clutter`` (mean 0–3 distractor specks), position jitter
            (±1–3 px) and rotation (±0–15°).
        noise, size_jitter, clutter: override one knob of ``difficulty``.
        image_size: image side; num_classes: up to 10 shapes.

    Example:
        >>> data = shapes(seed=1, n_train=100, n_val=20, n_test=20, difficulty=0.2)
        >>> tuple(data.x_val.shape), int(data.y_train.max())
        ((20, 3, 16, 16), 9)
    """
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(SHAPE_NAMES)}, got {num_classes}")
    return _procedural("shapes", _render_shapes, seed, (n_train, n_val, n_test),
                       image_size=image_size, num_classes=num_classes, difficulty=difficulty,
                       noise=noise, size_jitter=size_jitter, clutter=clutter)


def _pattern_field(label: int, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator,
                   difficulty: float, image_size: int) -> np.ndarray:
    """Intensity field in [0, 1] of pattern ``label`` for ``len(X)`` images (``X``: N×H×W)."""
    n = len(X)

    def draw(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1)).astype(np.float32)

    k = 2 * np.pi * draw(2.0, 4.5) / image_size  # 2–4.5 cycles across the image
    phase = draw(0, 2 * np.pi)
    cx, cy = image_size / 2 + draw(-2, 2), image_size / 2 + draw(-2, 2)
    jitter = np.deg2rad(10.0) * difficulty
    if label < 4:  # oriented gratings at 0/45/90/135 degrees
        theta = np.deg2rad(45.0 * label) + draw(-jitter, jitter)
        return 0.5 + 0.5 * np.sin(k * (X * np.cos(theta) + Y * np.sin(theta)) + phase)
    if label == 4:  # checkerboard
        theta = draw(-jitter, jitter)
        a = X * np.cos(theta) + Y * np.sin(theta)
        b = -X * np.sin(theta) + Y * np.cos(theta)
        return (np.sin(k * a + phase) * np.sin(k * b + phase) > 0).astype(np.float32)
    r = np.hypot(X - cx, Y - cy)
    if label == 5:  # concentric rings
        return 0.5 + 0.5 * np.sin(1.3 * k * r + phase)
    if label == 6:  # pinwheel: angular sectors
        m = rng.integers(3, 6, (n, 1, 1))
        return 0.5 + 0.5 * np.sin(m * np.arctan2(Y - cy, X - cx) + phase)
    if label == 7:  # lattice of dots
        return ((np.cos(k * X + phase) + np.cos(k * Y + phase)) > 1.0).astype(np.float32)
    if label == 8:  # a few soft Gaussian blobs
        field = np.zeros_like(X)
        for _ in range(3):
            bx, by = draw(2, image_size - 2), draw(2, image_size - 2)
            width = draw(1.5, 3.0) * image_size / 16
            field += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * width**2))
        return np.clip(field, 0, 1)
    # chevron / zigzag: a grating folded about a vertical axis
    slope = draw(0.8, 1.2)
    return 0.5 + 0.5 * np.sin(k * (Y + slope * np.abs(X - cx)) + phase)


def _render_patterns(n: int, rng: np.random.Generator, image_size: int, num_classes: int,
                     difficulty: float, noise: float | None, clutter: float | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    noise = 0.05 + 0.25 * difficulty if noise is None else noise
    clutter = 2.0 * difficulty if clutter is None else clutter
    X, Y = _grid(image_size, 1)
    y = _balanced_labels(n, num_classes, rng)
    field = np.zeros((n, image_size, image_size), dtype=np.float32)
    for label in range(num_classes):
        idx = np.nonzero(y == label)[0]
        if len(idx):
            shape = (len(idx), *X.shape)
            field[idx] = _pattern_field(label % len(PATTERN_NAMES), np.broadcast_to(X, shape),
                                        np.broadcast_to(Y, shape), rng, difficulty, image_size)
    contrast = rng.uniform(1.0 - 0.5 * difficulty, 1.0, (n, 1, 1, 1)).astype(np.float32)
    c1, c2 = _colour_pairs(n, rng)
    img = c2 + (c1 - c2) * contrast * field[:, None]
    return _add_clutter_and_noise(img.astype(np.float32), rng, clutter, noise), y


def patterns(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400,
             difficulty: float = 0.5, noise: float | None = None, clutter: float | None = None,
             image_size: int = 16, num_classes: int = 10) -> TensorData:
    """Procedural textures, visibly unlike :func:`shapes` (the held-out image task): the class is
    the pattern (:data:`PATTERN_NAMES`: gratings at four orientations, checkerboard, rings,
    pinwheel, dot lattice, blobs, chevrons); frequency, phase, two colours, contrast, clutter and
    noise are nuisances.

    Args:
        seed: seeds every draw.
        n_train, n_val, n_test: examples per split (classes balanced).
        difficulty: in [0, 1]; sets noise (σ 0.05–0.30), clutter (mean 0–2 specks), contrast loss
            (0–50 %) and orientation jitter (±0–10°).
        noise, clutter: override one knob of ``difficulty``.
        image_size, num_classes: image side and number of patterns (≤ 10).

    Example:
        >>> data = patterns(seed=0, n_train=50, n_val=10, n_test=10)
        >>> tuple(data.x_train.shape), data.num_classes
        ((50, 3, 16, 16), 10)
    """
    if not 2 <= num_classes <= len(PATTERN_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(PATTERN_NAMES)}, got {num_classes}")
    return _procedural("patterns", _render_patterns, seed, (n_train, n_val, n_test),
                       image_size=image_size, num_classes=num_classes, difficulty=difficulty,
                       noise=noise, clutter=clutter)


# -- tabular ------------------------------------------------------------------------------------

def tabular(seed: int = 0, n_train: int = 1200, n_val: int = 400, n_test: int = 400,
            n_features: int = 32, num_classes: int = 10, class_sep: float = 1.5,
            task_seed: int = 0) -> TensorData:
    """A fixed synthetic classification task (scikit-learn ``make_classification``: 12
    informative, 8 redundant and 12 noise features, one Gaussian cluster per class, 2 % label
    noise), standardised per feature with training statistics.

    ``task_seed`` fixes the task (class centroids); ``seed`` draws which examples land in which
    split, as for :func:`digits`.

    Example:
        >>> data = tabular(seed=0)
        >>> tuple(data.x_train.shape), data.num_classes
        ((1200, 32), 10)
    """
    from sklearn.datasets import make_classification

    n = n_train + n_val + n_test
    informative = min(12, n_features)
    redundant = min(8, n_features - informative)
    x, y = make_classification(n_samples=n, n_features=n_features, n_informative=informative,
                               n_redundant=redundant, n_classes=num_classes, n_clusters_per_class=1,
                               class_sep=class_sep, flip_y=0.02, random_state=task_seed)
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0, n_train, n_val, n_test])
    parts = [(x[perm[a:b]].astype(np.float32), y[perm[a:b]]) for a, b in itertools.pairwise(cuts)]
    return _standardised("tabular", parts, num_classes, axes=(0,))


# -- text ---------------------------------------------------------------------------------------

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


# -- torchvision data sets on disk ---------------------------------------------------------------

_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "mnist": "MNIST",
                "fashionmnist": "FashionMNIST", "kmnist": "KMNIST"}


def _torchvision_arrays(dataset: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N×C×H×W uint8-valued float, N labels)`` from a torchvision data set's raw storage,
    bypassing its per-item PIL transforms (reading 50k items through PIL takes minutes)."""
    data = torch.as_tensor(np.asarray(dataset.data))
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels  # SVHN
    if data.dim() == 3:  # MNIST family: N×H×W
        data = data[:, None]
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):  # CIFAR: N×H×W×C
        data = data.permute(0, 3, 1, 2)
    return data.float(), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def torchvision_dataset(name: str, root: str | os.PathLike, train: bool = True,
                        image_size: int = 16, channels: int = 3, n_train: int = 1200,
                        n_val: int = 400, n_test: int = 400, seed: int = 0) -> TensorData:
    """A torchvision data set already on disk, in this registry's format.

    Reads ``name`` (``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashionmnist``, ``kmnist``;
    case-insensitive) from ``root`` with ``download=False``, resizes to ``image_size`` (area
    interpolation), converts to ``channels`` (grey replicated / RGB averaged), standardises per
    channel with training statistics and draws disjoint random train / val / test subsets of the
    requested sizes (capped by what exists) from the official split selected by ``train``
    (``True``: the training split; ``False``: the test split).

    Raises:
        KeyError: unknown ``name``.
        FileNotFoundError: ``root`` or the data set's files are missing (nothing is downloaded).

    Example:
        >>> torchvision_dataset("mnist", "/nonexistent")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: torchvision data set 'mnist' not found under /nonexistent ...
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _TORCHVISION:
        raise KeyError(f"unknown torchvision data set {name!r}; choose from {sorted(_TORCHVISION)}")
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[key])
    hint = (f"torchvision data set {name!r} not found under {root} (download=False: nothing is "
            f"fetched). Put the files where torchvision.datasets.{cls.__name__}(root, "
            "download=True) would, on a machine with network access, then copy the folder here.")
    if not Path(root).is_dir():
        raise FileNotFoundError(hint)
    try:
        if key == "svhn":
            dataset = cls(str(root), split="train" if train else "test", download=False)
        else:
            dataset = cls(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"{hint} ({err})") from err
    x, y = _torchvision_arrays(dataset)
    rng = np.random.default_rng(seed)
    sizes = [n_train, n_val, n_test]
    if sum(sizes) > len(x):  # keep the proportions when the split is smaller than asked
        sizes = [int(s * len(x) / sum(sizes)) for s in sizes]
    perm = torch.from_numpy(rng.permutation(len(x))[:sum(sizes)])
    x, y = x[perm] / 255.0, y[perm]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    x = _to_channels(x, channels)
    cuts = np.cumsum([0, *sizes])
    parts = [(x[a:b].numpy(), y[a:b].numpy()) for a, b in itertools.pairwise(cuts)]
    num_classes = len(getattr(dataset, "classes", None) or range(int(y.max()) + 1))
    return _standardised(key, parts, num_classes, axes=(0, 2, 3))


# -- shortcuts (Concept Bias) ---------------------------------------------------------------------

#: The 10 fixed watermark positions (row, col) of a 16×16 image: the top-left pixel of each 2×2
#: patch, spread over the border and the corners' diagonals so they never touch each other.
WATERMARK_POSITIONS: tuple[tuple[int, int], ...] = (
    (1, 1), (1, 7), (1, 13), (7, 1), (7, 13), (13, 1), (13, 7), (13, 13), (4, 4), (4, 10),
)


def add_watermark(x: torch.Tensor, positions: torch.Tensor, strength: float = 1.0,
                  value: float = 3.0) -> torch.Tensor:
    """Stamp a bright 2×2 patch on every image at one of :data:`WATERMARK_POSITIONS`.

    Pure: returns a new tensor. The patch blends towards ``value`` (in standardised units, i.e.
    3 σ brighter than average, in every channel) with weight ``strength`` ∈ [0, 1]; positions
    are scaled for images larger or smaller than 16×16.

    Args:
        x: ``N×C×H×W`` images.
        positions: ``N`` indices in ``0..9`` (class-dependent for a shortcut; taken modulo 10).
        strength: 0 leaves ``x`` unchanged, 1 writes ``value``.
        value: brightness of the patch.

    Example:
        >>> import torch
        >>> out = add_watermark(torch.zeros(2, 3, 16, 16), torch.tensor([0, 9]))
        >>> out[0, :, 1:3, 1:3].unique().tolist(), out[1, 0, 4:6, 10:12].unique().tolist()
        ([3.0], [3.0])
        >>> out.sum().item()  # two patches of 2×2×3 values, nothing else touched
        72.0
    """
    if x.dim() != 4:
        raise ValueError(f"add_watermark needs N×C×H×W images, got shape {tuple(x.shape)}")
    if len(positions) != len(x):
        raise ValueError(f"need one position per image: {len(positions)} for {len(x)}")
    h, w = x.shape[-2:]
    table = torch.tensor(WATERMARK_POSITIONS, dtype=torch.float32)
    rc = (table * torch.tensor([(h - 2) / 14.0, (w - 2) / 14.0])).round().long()
    rc = rc[positions.long() % len(WATERMARK_POSITIONS)]
    rows = rc[:, 0, None, None] + torch.arange(2)[None, :, None]    # N×2×1
    cols = rc[:, 1, None, None] + torch.arange(2)[None, None, :]    # N×1×2
    batch = torch.arange(len(x))[:, None, None]
    out = x.clone()
    patch = out[batch, :, rows, cols]                               # N×2×2×C
    out[batch, :, rows, cols] = (1 - strength) * patch + strength * value
    return out


def add_tabular_shortcut(x: torch.Tensor, key: torch.Tensor, strength: float = 1.0,
                         num_classes: int = 10, column: int = -1) -> torch.Tensor:
    """Overwrite one feature with a code of ``key`` (e.g. the label): the tabular shortcut.

    Pure: returns a new tensor. The code maps ``0..num_classes-1`` linearly onto
    ``[-1.7, 1.7]`` (about unit variance, like the standardised features); the column becomes
    ``(1 - strength) * x + strength * code``.

    Example:
        >>> import torch
        >>> add_tabular_shortcut(torch.zeros(2, 4), torch.tensor([0, 9]))[:, -1].tolist()
        [-1.7000000476837158, 1.7000000476837158]
    """
    if x.dim() != 2:
        raise ValueError(f"add_tabular_shortcut needs N×F rows, got shape {tuple(x.shape)}")
    code = (key.to(x.dtype) / max(1, num_classes - 1) * 2 - 1) * 1.7
    out = x.clone()
    out[:, column] = (1 - strength) * out[:, column] + strength * code
    return out


# -- registry -----------------------------------------------------------------------------------

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
