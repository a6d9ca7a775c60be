"""Procedural image data sets drawn on the fly: :func:`shapes` and :func:`patterns` (10 classes each).

The class is the shape (:data:`SHAPE_NAMES`) or the texture (:data:`PATTERN_NAMES`); colour,
background, size, position, rotation, clutter and noise are nuisances whose spread grows with
``difficulty``. Images are rendered supersampled, downsampled to ``image_size`` and standardised
per channel with training statistics; one generator draws the three splits in turn.

Example:
    >>> len(SHAPE_NAMES), len(PATTERN_NAMES)
    (10, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from data_factory.datasets.base import TensorData, _balanced_labels, _standardised

__all__ = ["PATTERN_NAMES", "SHAPE_NAMES", "patterns", "shapes"]


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
