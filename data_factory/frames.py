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
informative frames (frozen after a warm-up; a channel that is silent at the start, e.g. behind a
zero-initialised layer, waits for its first informative capture), resizes to ``S×S`` and stores
bfloat16. Non-finite values never raise: they are clamped to the edge of the range and the frame
is flagged ``finite=False``. Each frame records the share of its pixels at the clip per channel
(``Frame.clipped``), so saturation is visible.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

#: Channel order of a frame: three activation maps (shallow→deep) then their three gradients.
CHANNELS: tuple[str, ...] = ("act0", "act1", "act2", "grad0", "grad1", "grad2")

#: Per-layer summary statistics recorded on every frame (used by scalar baselines, never by TEViD).
STAT_NAMES: tuple[str, ...] = ("rms", "mean", "std", "absmax", "nonpos_frac")

_EPS = 1e-12

#: Default saturation value of normalised maps (``FrameEncoder(clip=...)``).
DEFAULT_CLIP: float = 8.0

#: Raw log-RMS level under which a map counts as *silent*: RMS below 1e-12 is numerical zero for
#: float32 training (an exactly-zero tensor reads ``log(1e-12) + ½·log(1e-12)`` ≈ −41.4).
SILENT_LEVEL: float = math.log(_EPS)


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
        clipped: per channel (order of :data:`CHANNELS`), the share of pixels at ``±clip``;
            empty when unknown (a frame built by hand).
        scalars: the capture's training telemetry, keys ``loss`` (mean training loss since the
            previous capture), ``lr`` (learning rate at the capture) and ``grad_norm`` (global
            gradient L2 norm at the capture); a missing key is unknown (see
            :mod:`core_models.telemetry`). Filled by :class:`tevid_hpo.monitor.TrialMonitor`.

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
    clipped: tuple[float, ...] = ()
    scalars: dict[str, float] = field(default_factory=dict)

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


def clipped_share(tensor: torch.Tensor, clip: float = DEFAULT_CLIP) -> tuple[float, ...]:
    """Per channel, the share of pixels of an encoded ``(6, S, S)`` frame at ``±clip``.

    Example:
        >>> import torch
        >>> t = torch.zeros(6, 2, 2); t[3, 0, 0] = 8.0
        >>> clipped_share(t)
        (0.0, 0.0, 0.0, 0.25, 0.0, 0.0)
    """
    at_clip = tensor.float().abs() >= clip
    return tuple(at_clip.flatten(1).float().mean(dim=1).tolist())


def _resize(m: torch.Tensor, size: int) -> torch.Tensor:
    m = m[None, None]
    if m.shape[-2] > size or m.shape[-1] > size:
        # Area averaging: every position contributes, nothing aliases.
        m = F.adaptive_avg_pool2d(m, (min(size, m.shape[-2]), min(size, m.shape[-1])))
    if m.shape[-2] != size or m.shape[-1] != size:
        # Nearest keeps token/feature grids as exact blocks instead of inventing neighbours.
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[0, 0]


# Reference phases of a channel (FrameEncoder._phase).
_WARMING = "warming"   # no complete reference yet (silent so far, or pooling warm-up frames)
_CHECK = "check"       # referenced at the run's first capture; the next capture may still wake it
_WAKING = "waking"     # waking up: its reference follows it while it keeps climbing alone
_FROZEN = "frozen"     # final reference


class FrameEncoder:
    """Turns captured activation/gradient tensors of three layers into normalised frames.

    Normalisation is causal, per run and per channel: each of the six channels is centred on the
    median and scaled by the robust spread (IQR/1.349, floored at ``min_scale`` nats) of that
    channel over its first ``warmup`` *informative* frames; the statistics are frozen afterwards,
    so a frame depends only on frames at or before it. The default ``warmup=1`` makes every frame
    read "relative to the first capture" (usually the model at initialisation): a run that
    diverges within its first few steps must not become its own reference. Values are clipped to
    ``±clip``; NaN and +inf map to ``+clip`` (divergence saturates, it does not vanish), −inf to
    ``−clip``.

    A reference must carry information, or every later frame saturates against it
    (``docs/architecture.md``, "How the reference is chosen"). Per channel:

    * **Silent until informative.** A channel whose median is below :data:`SILENT_LEVEL`
      (RMS < 1e-12) or that has no finite pixel gets no reference and reads 0 ("no information
      yet"): the gradient behind a zero-initialised BatchNorm, the output of a zero-initialised
      residual branch or adapter, the missing gradient of a frozen layer. Its first informative
      captures become its reference.
    * **Waking up.** A channel that was silent at the run's first capture, or that rises more
      than ``wake_nats`` (default ``clip·min_scale``: beyond what a frame can show) at the
      capture right after its first-capture reference (a layer-scale branch whose 1e-6 gain
      starts to grow), is *waking*: while it keeps rising by more than ``settle_nats`` per
      capture, each capture replaces its reference; the frame of the wake-up shows it centred,
      each later climbing frame reads against the reference it climbed from (scale widened so
      the climb reads at most 2 z-units), so the climb stays visible; the first capture that
      rises less freezes it. A rise counts only when the partner channel (the
      activation↔gradient of the same layer) stays within ``wake_nats`` of its own reference:
      when both jump together the layer changed as a whole (divergence), and the first
      reference stays, so the frame saturates.

    A healthy run — every channel informative at its first capture, no lone jump beyond the
    clip range at the second — is encoded exactly as against a single frozen first-capture
    reference.

    Args:
        frame_size: side ``S`` of the output frames.
        warmup: number of informative frames per channel whose statistics are pooled into its
            reference.
        clip: saturation value of normalised maps.
        min_scale: floor of the per-channel scale in log units (avoids dividing by ~0 when a
            layer is nearly constant early on).
        wake_nats: lone rise (nats) at the capture after a first-capture reference that marks
            the channel as waking; ``None`` = ``clip * min_scale``; ``math.inf`` disables it.
        settle_nats: a waking channel's reference follows it while it rises more than this per
            capture; ``None`` = ``min_scale / 2`` (half a z-unit at the scale floor).

    Example:
        >>> import torch
        >>> enc = FrameEncoder(frame_size=8, warmup=2)
        >>> x = [torch.randn(4, 16)] * 3
        >>> f0 = enc.encode(x, x, step=0)
        >>> bad = [torch.full((4, 16), float("nan"))] * 3
        >>> f1 = enc.encode(bad, x, step=10)
        >>> f1.finite, float(f1.tensor[0].float().max()), f1.clipped[:3]
        (False, 8.0, (1.0, 1.0, 1.0))

        A gradient that is exactly zero at the first capture (zero-initialised BatchNorm after
        the layer) reads 0 until it carries information, then is centred on its own first level:

        >>> enc = FrameEncoder(frame_size=8)
        >>> g0 = enc.encode(x, [torch.zeros(4, 16)] * 3, step=0)
        >>> g1 = enc.encode(x, [1e-3 * t for t in x], step=10)
        >>> float(g0.tensor[3].float().abs().max()), max(g1.clipped)
        (0.0, 0.0)
    """

    def __init__(self, frame_size: int = 32, warmup: int = 1, clip: float = DEFAULT_CLIP,
                 min_scale: float = 0.5, wake_nats: float | None = None,
                 settle_nats: float | None = None) -> None:
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.frame_size = frame_size
        self.warmup = warmup
        self.clip = clip
        self.min_scale = min_scale
        self.wake_nats = clip * min_scale if wake_nats is None else float(wake_nats)
        self.settle_nats = min_scale / 2 if settle_nats is None else float(settle_nats)
        if not self.wake_nats > 0:
            raise ValueError(f"wake_nats must be > 0, got {wake_nats}")
        if not 0 < self.settle_nats <= self.wake_nats:
            raise ValueError(f"settle_nats must be in (0, wake_nats={self.wake_nats}], got {settle_nats}")
        self.reset()

    def reset(self) -> None:
        """Forget the run's reference statistics (start of a new run)."""
        n = len(CHANNELS)
        self._captures = 0
        # Per channel: the informative frames pooled while its reference warms up (None after).
        self._history: list[list[torch.Tensor] | None] = [[] for _ in range(n)]
        self._center = torch.full((n,), math.nan)   # NaN: no reference yet (silent so far)
        self._scale = torch.full((n,), math.nan)
        self._phase = [_WARMING] * n
        self._late = [False] * n                    # silent at the run's first capture
        # Channels still climbing at this capture, shown against the reference they left.
        self._shown: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def frozen(self) -> bool:
        """Whether every channel has its final reference (warm-up over, nothing left to wake)."""
        return all(p == _FROZEN for p in self._phase)

    @property
    def referenced(self) -> tuple[bool, ...]:
        """Per channel, whether it has a reference yet (``False``: silent so far, reads 0)."""
        return tuple(bool(v) for v in torch.isfinite(self._center))

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, so a paused/resumed trial keeps its normalisation."""
        return {
            "version": 2,
            "captures": self._captures,
            "history": [None if h is None else [t.tolist() for t in h] for h in self._history],
            "center": [None if math.isnan(v) else v for v in self._center.tolist()],
            "scale": [None if math.isnan(v) else v for v in self._scale.tolist()],
            "phase": list(self._phase),
            "late": list(self._late),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (also the single-reference layout of
        version 1: ``history`` of ``6×P`` rows, ``center``/``scale`` lists or ``None``)."""
        self.reset()
        n = len(CHANNELS)

        def vector(values: Sequence[float | None] | None) -> torch.Tensor:
            if values is None:
                return torch.full((n,), math.nan)
            return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)

        self._center, self._scale = vector(state.get("center")), vector(state.get("scale"))
        if state.get("version", 1) >= 2:
            self._captures = int(state["captures"])
            self._history = [None if h is None else [torch.tensor(t, dtype=torch.float32) for t in h]
                             for h in state["history"]]
            self._phase = [str(p) for p in state["phase"]]
            self._late = [bool(v) for v in state["late"]]
            return
        history = [torch.tensor(h, dtype=torch.float32) for h in state.get("history", [])]
        warming = bool(history) or state.get("center") is None
        self._captures = len(history)
        self._history = [[h[c] for h in history] if warming else None for c in range(n)]
        self._phase = [_WARMING if warming else _FROZEN] * n

    def _set_reference(self, channels: Sequence[int], pooled: torch.Tensor) -> None:
        """Robust centre and spread of each of ``channels`` over its row of ``pooled``."""
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.nan)
        q = torch.nanquantile(pooled, torch.tensor([0.25, 0.5, 0.75]), dim=1)
        center = torch.nan_to_num(q[1], nan=0.0)
        scale = torch.nan_to_num((q[2] - q[0]) / 1.349, nan=self.min_scale).clamp_min(self.min_scale)
        for k, c in enumerate(channels):
            self._center[c], self._scale[c] = center[k], scale[k]

    def _update_reference(self, raw: torch.Tensor) -> None:
        flat = raw.reshape(len(CHANNELS), -1)
        self._shown = {}
        level = torch.nanmedian(torch.where(torch.isfinite(flat), flat, torch.nan), dim=1).values
        informative = (level > SILENT_LEVEL).tolist()   # False for NaN: no finite pixel
        # Moves against the references as they stood before this capture.
        moved = [float(v) if math.isfinite(v) else 0.0 for v in (level - self._center).tolist()]
        warming: list[int] = []
        for c, phase in enumerate(self._phase):
            if not informative[c] or phase == _FROZEN:
                continue  # a silent channel waits; a referenced one keeps its reference
            if phase == _WARMING:
                if not self._history[c]:
                    self._late[c] = self._captures > 0
                self._history[c].append(flat[c])
                warming.append(c)
                continue
            # The partner (activation <-> gradient of the same layer) rising as much means the
            # layer as a whole blew up (divergence): that is news, not a late start. A falling
            # gradient (the loss dropping while a branch wakes up) is no such sign.
            partner = (c + 3) % 6
            lone = moved[partner] < self.wake_nats
            threshold = self.wake_nats if phase == _CHECK else self.settle_nats
            if moved[c] > threshold and lone:
                if phase == _WAKING:
                    # Still climbing: this frame reads against the reference it climbed from,
                    # so the climb stays visible (a 1-pixel map, e.g. a stride-32 stage on a
                    # 32×32 input, would otherwise read exactly 0 in every frame).
                    # Its scale widens so the climb reads at most 2 z-units: visible, never
                    # at the clip.
                    self._shown[c] = (self._center[c].clone(),
                                      self._scale[c].clamp_min(moved[c] / 2))
                self._set_reference([c], flat[c][None])
                self._phase[c] = _WAKING
            else:
                self._phase[c] = _FROZEN
        self._captures += 1
        if warming:
            # Pool each warming channel over its own informative frames (same count for all
            # channels that started together, which is every channel of a healthy run).
            for count in sorted({len(self._history[c]) for c in warming}):
                group = [c for c in warming if len(self._history[c]) == count]
                self._set_reference(group, torch.stack([torch.cat(self._history[c]) for c in group]))
            for c in warming:
                if len(self._history[c]) >= self.warmup:
                    self._history[c] = None
                    self._phase[c] = _WAKING if self._late[c] else _CHECK

    def encode_maps(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """Resize six raw log-RMS maps, normalise them causally and return ``(frame, finite)``."""
        if len(maps) != 6:
            raise ValueError(f"expected 6 maps (3 activations + 3 gradients), got {len(maps)}")
        raw = torch.stack([_resize(m.float().cpu(), self.frame_size) for m in maps])
        finite = bool(torch.isfinite(raw).all())
        self._update_reference(raw)
        center, scale = self._center.clone(), self._scale.clone()
        for c, (c_prev, s_prev) in self._shown.items():
            center[c], scale[c] = c_prev, s_prev
        z = (raw - center[:, None, None]) / scale[:, None, None]
        # A channel without a reference reads 0 where finite; NaN/inf still saturate below.
        silent = ~torch.isfinite(self._center)[:, None, None] & torch.isfinite(raw)
        z = torch.where(silent, torch.zeros_like(z), torch.where(torch.isfinite(raw), z, raw))
        z = torch.nan_to_num(z, nan=self.clip, posinf=self.clip, neginf=-self.clip)
        return z.clamp(-self.clip, self.clip).to(torch.bfloat16), finite

    def encode(self, activations: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor | None],
               step: int, epoch: int | None = None, layers: Sequence[str] = (),
               batch_first: Sequence[bool] | None = None) -> Frame:
        """Encode the raw tensors of three layers into a :class:`Frame`.

        A missing gradient (``None``, e.g. a layer off the loss path or frozen behind frozen
        layers) gives a silent map: the channel reads 0 until a gradient arrives.
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
                     stats=stats, clipped=clipped_share(tensor, self.clip))


def _silent_like(summary: Summary) -> Summary:
    # The map of an all-zero tensor (see _log_rms), so a missing gradient counts as silent.
    return torch.full_like(summary[0], 1.5 * math.log(_EPS)), [0.0] * len(summary[1])
