"""Pictures of internal-state videos: a PNG strip (channels × time) and an animated GIF.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from data_factory.frames import Frame
    >>> frames = [Frame(torch.randn(6, 8, 8).to(torch.bfloat16), step=10 * i) for i in range(4)]
    >>> out = render_strip(frames, Path(tempfile.mkdtemp()) / "strip.png")
    >>> out.stat().st_size > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402

from data_factory.frames import CHANNELS, Frame  # noqa: E402


def _pick(frames: Sequence[Frame], max_frames: int) -> list[Frame]:
    if len(frames) == 0:
        raise ValueError("no frames to render")
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return [frames[int(i)] for i in idx]


def _row_labels(frames: Sequence[Frame]) -> list[str]:
    layers = list(frames[0].layers) or ["", "", ""]
    return [f"{c}\n{layers[i % 3]}" for i, c in enumerate(CHANNELS)]


def render_strip(frames: Sequence[Frame], out: str | Path, max_frames: int = 16,
                 title: str | None = None, clip: float = 8.0) -> Path:
    """Write a PNG grid: one row per channel (act0..grad2), one column per (sampled) frame.

    Non-finite frames get a red column title so divergence is visible at a glance.
    """
    chosen = _pick(frames, max_frames)
    fig, axes = plt.subplots(6, len(chosen), figsize=(1.1 * len(chosen) + 1.5, 7.2), squeeze=False)
    labels = _row_labels(chosen)
    for j, frame in enumerate(chosen):
        data = frame.tensor.float().numpy()
        for c in range(6):
            ax = axes[c, j]
            ax.imshow(data[c], cmap="RdBu_r", vmin=-clip, vmax=clip, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[c], fontsize=6, rotation=0, ha="right", va="center")
        axes[0, j].set_title(f"step {frame.step}", fontsize=7, color="black" if frame.finite else "red")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render_gif(frames: Sequence[Frame], out: str | Path, max_frames: int = 60, fps: int = 4,
               clip: float = 8.0) -> Path:
    """Write an animated GIF: each frame shown as a 2×3 panel (activations over gradients)."""
    chosen = _pick(frames, max_frames)
    labels = _row_labels(chosen)
    fig, axes = plt.subplots(2, 3, figsize=(6, 4.2))
    images = []
    for c, ax in enumerate(axes.flat):
        images.append(ax.imshow(chosen[0].tensor[c].float().numpy(), cmap="RdBu_r",
                                vmin=-clip, vmax=clip, interpolation="nearest"))
        ax.set_title(labels[c].replace("\n", " "), fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    caption = fig.suptitle("")

    def draw(i: int):
        for c, im in enumerate(images):
            im.set_data(chosen[i].tensor[c].float().numpy())
        caption.set_text(f"step {chosen[i].step}" + ("" if chosen[i].finite else "  (non-finite)"))
        return images

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FuncAnimation(fig, draw, frames=len(chosen)).save(out, writer=PillowWriter(fps=fps))
    plt.close(fig)
    return out
