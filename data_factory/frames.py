"""Internal-state frames: the 6-channel images TEViD reads (paper Section 4.1, Appendix B.3).

A frame stacks three activation maps (shallow → deep) and the three matching gradient maps.
Any tensor layout becomes one 2-D map through :func:`reduce_to_map`:

* conv ``B×C×H×W``   → ``H×W``: log-RMS over batch and channels at each position;
* tokens ``B×N×D``   → ``√N×√N``: log-RMS over batch and features per token (a leading CLS
  token is dropped when ``N−1`` is square);
* sequences ``B×L×D`` (``L`` not square) → positions laid row-major on the smallest square grid;
* vectors ``B×D``    → features laid row-major on the smallest square grid.

Log-RMS keeps magnitude (instability *is* a magnitude phenomenon) while being independent of the
channel count, so the same reduction serves every architecture with no learned weights; see
``docs/architecture.md`` for why it replaces the paper's "shared learned 1×1 conv".

:class:`FrameEncoder` then normalises each channel causally with statistics of the run's own first
frames (frozen after a warm-up), resizes to ``S×S`` and stores bfloat16. Non-finite values never
raise: they are clamped to the edge of the range and the frame is flagged ``finite=False``.

Example:
    >>> import torch
    >>> enc = FrameEncoder(frame_size=16)
    >>> acts = [torch.randn(8, 4, 10, 10), torch.randn(8, 50, 32), torch.randn(8, 20)]
    >>> frame = enc.encode(acts, [a * 1e-3 for a in acts], step=0)
    >>> tuple(frame.tensor.shape), frame.tensor.dtype, frame.finite
    ((6, 16, 16), torch.bfloat16, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: Channel order of a frame: three activation maps (shallow→deep) then their three gradients.
CHANNELS: tuple[str, ...] = ("act0", "act1", "act2", "grad0", "grad1", "grad2")

#: Per-layer summary statistics recorded on every frame (used by scalar baselines, never by TEViD).
STAT_NAMES: tuple[str, ...] = ("rms", "mean", "std", "absmax", "nonpos_frac")

_EPS = 1e-12


@dataclass(frozen=True)
class Frame:
    """One captured step of a run's internal state.

    Attributes:
        tensor: ``(6, S, S)`` bfloat16 map; channels as in :data:`CHANNELS`.
        step: global optimisation step at which it was captured.
        epoch: epoch index at capture time, or ``None`` when the loop has no epochs.
        layers: the three hooked module names, shallow to deep.
        finite: ``False`` when any captured activation or gradient was NaN/inf (values clamped).
        stats: raw per-layer summaries, keys ``"{act|grad}{i}_{stat}"`` for :data:`STAT_NAMES`.

    Example:
        >>> import torch
        >>> f = Frame(torch.zeros(6, 4, 4, dtype=torch.bfloat16), step=10, epoch=1)
        >>> f.size
        4
    """

    tensor: torch.Tensor
    step: int
    epoch: int | None = None
    layers: tuple[str, ...] = ()
    finite: bool = True
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """The frame side ``S``."""
        return int(self.tensor.shape[-1])


def _square_side(n: int) -> int:
    return max(1, math.isqrt(n - 1) + 1) if n > 1 else 1


def _to_grid(values: torch.Tensor) -> torch.Tensor:
    """Lay a 1-D vector row-major on the smallest square grid; padding takes the finite mean
    so it adds no artificial edge."""
    n = values.numel()
    side = _square_side(n)
    if side * side == n:
        return values.reshape(side, side)
    finite = values[torch.isfinite(values)]
    fill = finite.mean() if finite.numel() else values.new_zeros(())
    grid = fill.expand(side * side).clone()
    grid[:n] = values
    return grid.reshape(side, side)


def _log_rms(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    # Scale by the max before squaring: a diverging layer at 1e20 must read as 1e20, not as an
    # overflowed inf (which would wrongly flag the frame non-finite). NaN/inf still propagate.
    x = x.float().abs()
    peak = x.amax(dim=tuple(dims), keepdim=True).clamp_min(_EPS)
    ms = (x / peak).square().mean(dim=tuple(dims))
    return torch.log(peak.squeeze(tuple(dims))) + 0.5 * torch.log(ms + _EPS)


def reduce_to_map(x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """Reduce one captured tensor to a 2-D float32 map of log-RMS magnitudes.

    Args:
        x: activation or gradient tensor with a leading batch dimension (``B×…``).
        batch_first: ``False`` for sequence-first layouts (``L×B×D``, e.g. ``nn.GRU`` or
            ``nn.TransformerEncoderLayer`` with ``batch_first=False``).

    Returns:
        A ``(h, w)`` float32 tensor (may contain NaN/inf when ``x`` does).

    Example:
        >>> import torch
        >>> reduce_to_map(torch.ones(2, 3, 5, 7)).shape
        torch.Size([5, 7])
        >>> reduce_to_map(torch.ones(2, 197, 8)).shape   # CLS dropped, 14x14 tokens
        torch.Size([14, 14])
    """
    if x.dim() == 3 and not batch_first:
        x = x.transpose(0, 1)
    if x.dim() <= 1:
        return _to_grid(_log_rms(x.reshape(1, -1), [0]))
    if x.dim() == 2:  # B×D: one pixel per feature
        return _to_grid(_log_rms(x, [0]))
    if x.dim() == 3:  # B×N×D: one pixel per token / position
        per_token = _log_rms(x, [0, 2])
        n = per_token.numel()
        if n > 1 and math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
            per_token = per_token[1:]
        return _to_grid(per_token)
    # B×C×H×W (or more spatial dims, folded into H): reduce batch and channels per position.
    x = x.flatten(2, -2) if x.dim() > 4 else x
    return _log_rms(x, [0, 1])


def layer_stats(x: torch.Tensor) -> list[float]:
    """Raw summaries of one tensor in the order of :data:`STAT_NAMES` (NaN-safe, never raises).

    Example:
        >>> import torch
        >>> [round(v, 2) for v in layer_stats(torch.tensor([[-1.0, 1.0]]))]
        [1.0, 0.0, 1.41, 1.0, 0.5]
    """
    x = x.detach().float().reshape(-1)
    if x.numel() == 0:
        return [0.0] * len(STAT_NAMES)
    absmax = x.abs().max()
    # Divide by the peak so squares of a diverging layer (1e20) do not overflow float32.
    scale = torch.where(torch.isfinite(absmax) & (absmax > 0), absmax, torch.ones_like(absmax))
    xs = x / scale
    std = xs.std() * scale if x.numel() > 1 else x.new_zeros(())
    values = torch.stack([xs.square().mean().sqrt() * scale, x.mean(), std, absmax,
                          (x <= 0).float().mean()])
    return values.tolist()  # one host sync for all five


#: ``(log-RMS map, stats)`` of one captured tensor.
Summary = tuple[torch.Tensor, list[float]]


def summarise(x: torch.Tensor, batch_first: bool = True, stats: bool = True) -> Summary:
    """Map and (optionally) summary statistics of one activation/gradient tensor, without grad.

    ``stats=False`` skips :func:`layer_stats` (an empty list is returned): the diagnostician only
    reads the map, the statistics serve the scalar baselines of the factory.

    Example:
        >>> import torch
        >>> m, s = summarise(torch.randn(4, 3, 6, 6))
        >>> tuple(m.shape), len(s)
        ((6, 6), 5)
    """
    with torch.no_grad():
        x = x.detach()
        return reduce_to_map(x, batch_first), layer_stats(x) if stats else []


def _resize(m: torch.Tensor, size: int) -> torch.Tensor:
    m = m[None, None]
    if m.shape[-2] > size or m.shape[-1] > size:
        # Area averaging: every position contributes, nothing aliases.
        m = F.adaptive_avg_pool2d(m, (min(size, m.shape[-2]), min(size, m.shape[-1])))
    if m.shape[-2] != size or m.shape[-1] != size:
        # Nearest keeps token/feature grids as exact blocks instead of inventing neighbours.
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[0, 0]


class FrameEncoder:
    """Turns captured activation/gradient tensors of three layers into normalised frames.

    Normalisation is causal and per run: each of the six channels is centred on the median and
    scaled by the robust spread (IQR/1.349, floored at ``min_scale`` nats) of that channel over
    the run's first ``warmup`` frames; the statistics are frozen afterwards, so a frame depends
    only on frames at or before it. The default ``warmup=1`` makes every frame read "relative to
    the first capture" (usually the model at initialisation): a run that diverges within its
    first few steps must not become its own reference. Values are clipped to ``±clip``; NaN and +inf map to
    ``+clip`` (divergence saturates, it does not vanish), −inf to ``−clip``.

    Args:
        frame_size: side ``S`` of the output frames.
        warmup: number of initial frames whose statistics are frozen as the run's reference.
        clip: saturation value of normalised maps.
        min_scale: floor of the per-channel scale in log units (avoids dividing by ~0 when a
            layer is nearly constant early on).

    Example:
        >>> import torch
        >>> enc = FrameEncoder(frame_size=8, warmup=2)
        >>> x = [torch.randn(4, 16)] * 3
        >>> f0 = enc.encode(x, x, step=0)
        >>> bad = [torch.full((4, 16), float("nan"))] * 3
        >>> f1 = enc.encode(bad, x, step=10)
        >>> f1.finite, float(f1.tensor[0].float().max())
        (False, 8.0)
    """

    def __init__(self, frame_size: int = 32, warmup: int = 1, clip: float = 8.0,
                 min_scale: float = 0.5) -> None:
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.frame_size = frame_size
        self.warmup = warmup
        self.clip = clip
        self.min_scale = min_scale
        self.reset()

    def reset(self) -> None:
        """Forget the run's reference statistics (start of a new run)."""
        self._history: list[torch.Tensor] = []
        self._center: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None

    @property
    def frozen(self) -> bool:
        """Whether the warm-up is over and the normalisation statistics are fixed."""
        return self._center is not None and len(self._history) == 0

    def state_dict(self) -> dict[str, list[float] | list[list[float]] | None]:
        """JSON-serialisable state, so a paused/resumed trial keeps its normalisation."""
        return {
            "history": [h.tolist() for h in self._history],
            "center": None if self._center is None else self._center.tolist(),
            "scale": None if self._scale is None else self._scale.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._history = [torch.tensor(h, dtype=torch.float32) for h in state.get("history", [])]
        c, s = state.get("center"), state.get("scale")
        self._center = None if c is None else torch.tensor(c, dtype=torch.float32)
        self._scale = None if s is None else torch.tensor(s, dtype=torch.float32)

    def _update_reference(self, raw: torch.Tensor) -> None:
        if self.frozen:
            return
        flat = raw.reshape(6, -1)
        self._history.append(flat)
        pooled = torch.cat(self._history, dim=1)
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.nan)
        q = torch.nanquantile(pooled, torch.tensor([0.25, 0.5, 0.75]), dim=1)
        center = torch.nan_to_num(q[1], nan=0.0)
        scale = torch.nan_to_num((q[2] - q[0]) / 1.349, nan=self.min_scale)
        self._center, self._scale = center, scale.clamp_min(self.min_scale)
        if len(self._history) >= self.warmup:
            self._history = []

    def encode_maps(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """Resize six raw log-RMS maps, normalise them causally and return ``(frame, finite)``."""
        if len(maps) != 6:
            raise ValueError(f"expected 6 maps (3 activations + 3 gradients), got {len(maps)}")
        raw = torch.stack([_resize(m.float().cpu(), self.frame_size) for m in maps])
        finite = bool(torch.isfinite(raw).all())
        self._update_reference(raw)
        z = (raw - self._center[:, None, None]) / self._scale[:, None, None]
        z = torch.nan_to_num(z, nan=self.clip, posinf=self.clip, neginf=-self.clip)
        return z.clamp(-self.clip, self.clip).to(torch.bfloat16), finite

    def encode(self, activations: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor | None],
               step: int, epoch: int | None = None, layers: Sequence[str] = (),
               batch_first: Sequence[bool] | None = None) -> Frame:
        """Encode the raw tensors of three layers into a :class:`Frame`.

        A missing gradient (``None``, e.g. a layer off the loss path) gives a zero-magnitude map.
        """
        if len(activations) != 3 or len(gradients) != 3:
            raise ValueError("need exactly 3 activation and 3 gradient tensors")
        batch_first = list(batch_first) if batch_first is not None else [True] * 3
        acts = [summarise(a, bf) for a, bf in zip(activations, batch_first)]
        grads = [summarise(g, bf) if g is not None else None for g, bf in zip(gradients, batch_first)]
        return self.build(acts, grads, step=step, epoch=epoch, layers=layers)

    def build(self, acts: Sequence[Summary], grads: Sequence[Summary | None], step: int,
              epoch: int | None = None, layers: Sequence[str] = ()) -> Frame:
        """Assemble a :class:`Frame` from per-layer :func:`summarise` results (what capture
        hooks compute on the fly so no full tensor outlives its hook)."""
        grads = [g if g is not None else _silent_like(a) for g, a in zip(grads, acts)]
        stats: dict[str, float] = {}
        for kind, summaries in (("act", acts), ("grad", grads)):
            for i, (_, values) in enumerate(summaries):
                if values:
                    stats.update({f"{kind}{i}_{n}": v for n, v in zip(STAT_NAMES, values)})
        tensor, finite = self.encode_maps([m for m, _ in acts] + [m for m, _ in grads])
        return Frame(tensor=tensor, step=step, epoch=epoch, layers=tuple(layers), finite=finite,
                     stats=stats)


def _silent_like(summary: Summary) -> Summary:
    return torch.full_like(summary[0], 0.5 * math.log(_EPS)), [0.0] * len(summary[1])
