"""Differentially private telemetry (paper Appendix J): clipped, Gaussian-noised capture + RDP accounting.

:class:`DPTelemetry` is handed to :class:`~data_factory.capture.StateCapture` (or
``TrialMonitor(..., privacy=...)``). Inside the capture hooks it replaces the plain batch
reduction, so the only thing a hook keeps of a captured activation or gradient tensor is an
already-noised map; frames, the diagnostician's window, the trial attribute and the run store
only ever see post-processing of noised maps. ``docs/privacy.md`` states the guarantee in full.

The mechanism, for one captured tensor ``x`` (``B×…``, batch first after the same layout fix as
:func:`~data_factory.frames.reduce_to_map`) at one capture step:

1. each sample's own log-RMS map ``m_i`` — exactly ``reduce_to_map(x[i:i+1])`` — clamped to
   ``±SATURATION`` nats (NaN/+inf → ``+SATURATION``) and area-pooled to at most ``grid×grid``;
2. its contribution ``u_i = m_i − b`` around a public centre ``b`` (the mean of this tensor's
   previous *released* map; on a tensor's first release ``u_i`` is the scalar level ``mean(m_i)``
   and the released map is flat), clipped to L2 norm ``clip/√tensors``;
3. release ``b + (Σ_i u_i + N(0, (z·clip)² I)) / B``.

Why this and not "clip the raw tensor to C, add N(0, (zC)²)" as Appendix J words it: the capture
never releases the raw tensor, it releases a batch reduction (a log-RMS map), and a raw-tensor
clip of C does not bound that map's sensitivity by C (a squared-magnitude map moves by up to C²,
in other units). Clipping each sample's contribution to the *released statistic* makes the
add/remove-one L2 sensitivity of the sum exactly the clip bound. Each capture step releases
``tensors`` (default 6: 3 activations + 3 gradients) such maps; a per-tensor bound of
``clip/√tensors`` makes the joint sensitivity of the whole step ``clip``, so one capture step is
one Gaussian mechanism of noise multiplier ``z`` — one composition per step in Opacus's
:class:`~opacus.accountants.RDPAccountant` with sampling rate ``q = B/N``. (Clipping every tensor
to ``clip`` and counting one composition per step, as the appendix reads, under-reports ε: the
true multiplier would be ``z/√6``.) Dividing by ``B`` and adding ``b`` are post-processing
because ``B`` (a fixed batch size) and ``b`` (from earlier releases) are public.

Example:
    >>> import torch
    >>> dp = DPTelemetry(noise_multiplier=1.0, clip=4.0, dataset_size=1000, seed=0)
    >>> x = torch.randn(32, 8, 6, 6)
    >>> noisy, stats = dp.release(x, key="act0")
    >>> tuple(noisy.shape), stats
    ((6, 6), [])
    >>> dp.end_step(released=True, step=0)
    >>> dp.compositions, round(dp.epsilon, 3) > 0
    (1, True)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data_factory.frames import Summary, reduce_to_map

__all__ = ["SATURATION", "DPTelemetry", "PrivacyReport", "check_model", "per_sample_maps",
           "rdp_epsilon"]

#: Per-sample log-RMS values are clamped to ``±SATURATION`` nats before clipping (e^20 ≈ 5e8):
#: a diverged or dead layer saturates instead of spending the whole clip budget on one pixel.
SATURATION = 20.0


def rdp_epsilon(noise_multiplier: float, sample_rate: float, compositions: int,
                delta: float) -> float:
    """ε at ``delta`` of ``compositions`` subsampled Gaussian mechanisms, by Opacus's RDP accountant.

    Example (paper Appendix J's setting; the appendix says ε ≈ 8, Opacus says otherwise):
        >>> round(rdp_epsilon(1.12, 0.00128, 1560, 1e-5), 3)
        0.546
    """
    from opacus.accountants import RDPAccountant  # imported on use: opacus is slow to import

    acc = RDPAccountant()
    for _ in range(compositions):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(acc.get_epsilon(delta)) if compositions else 0.0


def check_model(model: nn.Module) -> None:
    """Refuse models in which one sample's captured rows depend on other samples.

    The guarantee needs row ``i`` of every captured tensor to depend on sample ``i`` (and the
    weights) only. BatchNorm in training mode normalises with the batch's own statistics, so it
    mixes samples in activations and gradients alike (Opacus refuses it for the same reason).

    Raises:
        ValueError: naming the offending modules.

    Example:
        >>> check_model(nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4)))
        >>> check_model(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        Traceback (most recent call last):
        ...
        ValueError: DP telemetry needs per-sample independence, but BatchNorm mixes the samples of a batch: ['1']; replace it with GroupNorm (e.g. opacus.validators.ModuleValidator.fix(model))
    """
    bad = [name for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bad:
        raise ValueError("DP telemetry needs per-sample independence, but BatchNorm mixes the "
                         f"samples of a batch: {bad}; replace it with GroupNorm "
                         "(e.g. opacus.validators.ModuleValidator.fix(model))")


def _rows_to_grid(values: torch.Tensor) -> torch.Tensor:
    """Lay each row of ``B×n`` values on the smallest square grid, padded with the row's finite
    mean: row by row what :func:`~data_factory.frames.reduce_to_map` does to one vector."""
    b, n = values.shape
    side = max(1, math.isqrt(n - 1) + 1) if n > 1 else 1
    if side * side == n:
        return values.reshape(b, side, side)
    finite = torch.isfinite(values)
    count = finite.sum(1, keepdim=True)
    fill = torch.where(finite, values, 0.0).sum(1, keepdim=True) / count.clamp_min(1)
    padded = fill.expand(b, side * side).clone()
    padded[:, :n] = values
    return padded.reshape(b, side, side)


def per_sample_maps(x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """``B×h×w`` log-RMS maps, one per sample: row ``i`` equals ``reduce_to_map(x[i:i+1])``.

    Vectorised by presenting the batch to :func:`~data_factory.frames.reduce_to_map` as extra
    spatial positions, so the arithmetic is the capture's own.

    Raises:
        ValueError: for tensors without a batch dimension.

    Example:
        >>> import torch
        >>> x = torch.randn(3, 4, 5, 5)
        >>> maps = per_sample_maps(x)
        >>> tuple(maps.shape), bool(torch.equal(maps[1], reduce_to_map(x[1:2])))
        ((3, 5, 5), True)
    """
    x = x.detach()
    if x.dim() == 3 and not batch_first:
        x = x.transpose(0, 1)
    if x.dim() < 2:
        raise ValueError(f"a {x.dim()}-D tensor has no batch dimension to clip per sample")
    b = x.shape[0]
    if x.dim() >= 4:
        x = x.flatten(2, -2) if x.dim() > 4 else x  # B×C×H×W, extra spatial dims folded into H
        c, h, w = x.shape[1:]
        # reduce_to_map pools dims (0, 1) of a 4-D tensor: (C, 1, B·H, W) pools the channels only.
        return reduce_to_map(x.transpose(0, 1).reshape(c, 1, b * h, w)).reshape(b, h, w)
    if x.dim() == 2:  # B×D: one value per feature
        values = reduce_to_map(x.reshape(1, 1, b, -1))
    else:  # B×N×D: one value per token, log-RMS over its features
        n, d = x.shape[1:]
        values = reduce_to_map(x.permute(2, 0, 1).reshape(d, 1, b, n))
        if n > 1 and math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
            values = values[:, 1:]  # a leading CLS token, as reduce_to_map drops it
    return _rows_to_grid(values)


@dataclass(frozen=True)
class PrivacyReport:
    """Where a DP-captured run stands: what is stored with its diagnoses and in the run store.

    Attributes:
        epsilon: ε at ``delta`` after ``compositions`` capture steps (``inf`` for ``z = 0``).
        delta: the δ of the (ε, δ) guarantee.
        noise_multiplier: ``z``; the noise standard deviation is ``z·clip``.
        clip: L2 bound of one sample's contribution to one capture step (all tensors together).
        sample_rate: ``q`` of the latest composition (``None`` before the first).
        compositions: capture steps released so far.
        accountant: ``"rdp"`` (Opacus's RDPAccountant).
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    clip: float
    sample_rate: float | None
    compositions: int
    accountant: str = "rdp"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (an infinite ε becomes ``None``).

        Example:
            >>> PrivacyReport(float("inf"), 1e-5, 0.0, 1.0, 0.1, 3).to_dict()["epsilon"] is None
            True
        """
        d = asdict(self)
        d["epsilon"] = d["epsilon"] if math.isfinite(d["epsilon"]) else None
        return d


class DPTelemetry:
    """Per-sample clipping, Gaussian noise and RDP accounting for captured telemetry.

    One instance per training run (it holds the run's accountant and centres). Pass it as
    ``StateCapture(model, privacy=...)`` or ``TrialMonitor(model, trial, privacy=...)``.

    Args:
        noise_multiplier: ``z``; noise standard deviation ``z·clip`` on every coordinate of every
            released sum. ``0`` adds no noise (ε = ∞; for tests and calibration only).
        clip: ``C``, the L2 bound of one sample's contribution to one capture step, in nats of
            log-RMS (each of the ``tensors`` maps gets ``C/√tensors``). Calibrate it on public or
            pilot data, not on the run being protected.
        delta: the δ at which ε is reported (conventionally below ``1/dataset_size``).
        sample_rate: ``q``, probability that a given example is in a batch; or give
        dataset_size: ``N``, and ``q = B/N`` is taken from each capture's batch size ``B``.
        tensors: maps released per capture step (3 hooked layers × activation + gradient).
        grid: per-sample maps are area-pooled to at most ``grid×grid`` before clipping: the
            noise per pixel does not depend on the grid, the signal per pixel grows as it shrinks.
        seed: seeds the noise generator (tests, experiments); ``None`` draws a fresh seed.
        loss_reduction: ``"mean"`` (default, as in Opacus) when the loss averages per-sample
            losses: every gradient row then carries a ``1/B`` that depends on how many *other*
            samples the batch holds, so gradient rows are rescaled by ``B`` before clipping (each
            row is then its own sample's loss gradient) and the released map is shifted back by
            ``log B``; ``"sum"`` when it adds them.

    Attributes:
        accountant: the :class:`opacus.accountants.RDPAccountant`, one ``step`` per composition.

    Example:
        >>> import torch
        >>> dp = DPTelemetry(noise_multiplier=1.1, clip=6.0, delta=1e-5, sample_rate=0.01, seed=0)
        >>> for step in range(3):
        ...     _ = dp.release(torch.randn(16, 32), key="grad2")
        ...     dp.end_step(released=True, step=step)
        >>> dp.compositions, dp.epsilon == rdp_epsilon(1.1, 0.01, 3, 1e-5)
        (3, True)
    """

    def __init__(self, noise_multiplier: float, clip: float, delta: float = 1e-5, *,
                 sample_rate: float | None = None, dataset_size: int | None = None,
                 tensors: int = 6, grid: int = 8, seed: int | None = None,
                 loss_reduction: str = "mean") -> None:
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
        if not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"clip must be finite and > 0, got {clip}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if (sample_rate is None) == (dataset_size is None):
            raise ValueError("give exactly one of sample_rate (q) and dataset_size (N, q = B/N)")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if dataset_size is not None and dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if tensors < 1 or grid < 1:
            raise ValueError(f"tensors and grid must be >= 1, got {tensors} and {grid}")
        self.noise_multiplier = float(noise_multiplier)
        self.clip = float(clip)
        self.delta = float(delta)
        self.sample_rate = sample_rate
        self.dataset_size = dataset_size
        self.tensors = int(tensors)
        self.grid = int(grid)
        self.loss_reduction = loss_reduction
        from opacus.accountants import RDPAccountant  # imported on use: opacus is slow to import

        self.accountant = RDPAccountant()
        self._gen = torch.Generator()
        if seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(seed)
        self._centre: dict[Hashable, float] = {}
        self._releases: dict[Hashable, int] = {}
        self._rows = 0
        self._compositions = 0
        self._last_q: float | None = None
        self._at_step: dict[int, int] = {}

    # ------------------------------------------------------------------ mechanism
    def check_model(self, model: nn.Module) -> None:
        """:func:`check_model`: refuse models whose captured rows mix samples."""
        check_model(model)

    @property
    def tensor_clip(self) -> float:
        """L2 bound of one sample's contribution to one released map: ``clip/√tensors``."""
        return self.clip / math.sqrt(self.tensors)

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise added to every coordinate of a released sum."""
        return self.noise_multiplier * self.clip

    def contributions(self, x: torch.Tensor, batch_first: bool = True, key: Hashable = None, *,
                      gradient: bool = False) -> tuple[torch.Tensor, tuple[int, int], float]:
        """Each sample's un-clipped contribution to the next release of ``x``: ``B×P`` rows.

        Steps 1–2 of the mechanism before the clip (for calibrating ``clip`` on pilot data; the
        rows are un-noised, so never publish them for private data).

        Returns:
            ``(rows, (h, w), shift)``: ``P = h·w``, or ``P = 1`` (the level) on a tensor's first
            release; ``shift`` is the ``log B`` added to gradient rows under ``"mean"``.

        Example:
            >>> import torch
            >>> dp = DPTelemetry(noise_multiplier=1.0, clip=1.0, sample_rate=0.1)
            >>> rows, hw, shift = dp.contributions(torch.randn(5, 3, 12, 12))
            >>> tuple(rows.shape), hw, shift
            ((5, 1), (8, 8), 0.0)
        """
        maps = per_sample_maps(x, batch_first).float().cpu()
        b, h, w = maps.shape
        # log-RMS of B·g_i: row i no longer depends on the batch's other samples.
        shift = math.log(b) if gradient and self.loss_reduction == "mean" else 0.0
        # Clamp before pooling: an exactly-zero value sits at reduce_to_map's log floor whatever
        # the shift, and must read the same (-SATURATION) in every batch.
        maps = torch.nan_to_num(maps + shift, nan=SATURATION, posinf=SATURATION,
                                neginf=-SATURATION).clamp(-SATURATION, SATURATION)
        gh, gw = min(self.grid, h), min(self.grid, w)
        if (gh, gw) != (h, w):
            maps = F.adaptive_avg_pool2d(maps[:, None], (gh, gw))[:, 0]
        centre = self._centre.get(key)
        if centre is None:  # first release of this tensor: its level only (one coordinate)
            return maps.mean(dim=(1, 2)).reshape(b, 1), (gh, gw), shift
        return (maps - centre).reshape(b, gh * gw), (gh, gw), shift

    def release(self, x: torch.Tensor, batch_first: bool = True, key: Hashable = None, *,
                gradient: bool = False) -> Summary:
        """The noised log-RMS map of one captured tensor, as a capture :data:`Summary`.

        Args:
            x: the captured activation or gradient (``B×…``).
            batch_first: ``False`` for ``L×B×D`` layouts.
            key: identifies the tensor across steps (its centre and its release count).
            gradient: ``x`` is ``dL/d(output)`` (see ``loss_reduction``).

        Returns:
            ``(map, [])``: no raw statistics are ever computed in DP mode.
        """
        with torch.no_grad():
            contrib, (gh, gw), shift = self.contributions(x, batch_first, key, gradient=gradient)
            b = contrib.shape[0]
            centre = self._centre.get(key, 0.0)
            norms = contrib.norm(dim=1, keepdim=True)
            contrib = contrib * (self.tensor_clip / norms.clamp_min(1e-12)).clamp(max=1.0)
            noise = torch.randn(contrib.shape[1], generator=self._gen, dtype=torch.float64)
            total = contrib.double().sum(0) + self.sigma * noise
            released = (total / b + centre).float()
            self._centre[key] = float(released.mean())
            out = (released - shift).expand(gh * gw).reshape(gh, gw).clone()
            if contrib.shape[1] > 1:
                out = (released - shift).reshape(gh, gw)
        self._releases[key] = self._releases.get(key, 0) + 1
        self._rows = max(self._rows, b)
        return out, []

    # ------------------------------------------------------------------ accounting
    def end_step(self, released: bool, step: int | None = None) -> None:
        """Close a capture step: account its releases if a frame left the hooks.

        A step counts one composition per round of releases: if some tensor was released twice
        (a module called twice in one forward pass), it counts twice. Unreleased work (no frame
        emitted) costs nothing: it never left the process.
        """
        if released and self._releases:
            rounds = max(self._releases.values())
            q = self.sample_rate if self.sample_rate is not None else \
                min(1.0, self._rows / self.dataset_size)
            for _ in range(rounds):
                self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=q)
            self._compositions += rounds
            self._last_q = q
            if step is not None:
                self._at_step[int(step)] = self._compositions
        self._releases.clear()
        self._rows = 0

    @property
    def compositions(self) -> int:
        """Capture steps (Gaussian mechanisms) accounted so far."""
        return self._compositions

    @property
    def epsilon(self) -> float:
        """ε at :attr:`delta` spent so far, from Opacus's RDP accountant."""
        if not self._compositions:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(self.delta))

    def epsilon_at(self, step: int) -> float:
        """ε after the compositions up to and including capture step ``step``."""
        n = max((c for s, c in self._at_step.items() if s <= step), default=0)
        if n == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        if n == self._compositions:
            return self.epsilon
        from opacus.accountants.analysis import rdp as rdp_analysis

        orders = self.accountant.DEFAULT_ALPHAS
        rdp = 0.0
        for z, q, count in self.accountant.history:
            take = min(count, n)
            if take:
                rdp = rdp + rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=take,
                                                     orders=orders)
            n -= take
        eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp,
                                                delta=self.delta)
        return float(eps)

    def report(self) -> PrivacyReport:
        """The current :class:`PrivacyReport`."""
        return PrivacyReport(epsilon=self.epsilon, delta=self.delta,
                             noise_multiplier=self.noise_multiplier, clip=self.clip,
                             sample_rate=self._last_q, compositions=self._compositions)

    # ------------------------------------------------------------------ resumption
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable accounting state (centres are not kept: after a resume each tensor's
        first release is a flat level map again, which costs nothing extra)."""
        return {"history": [list(h) for h in self.accountant.history],
                "compositions": self._compositions, "last_q": self._last_q,
                "at_step": {str(k): v for k, v in self._at_step.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the accountant continues where it was)."""
        self.accountant.history = [tuple(h) for h in state["history"]]
        self._compositions = int(state["compositions"])
        self._last_q = state.get("last_q")
        self._at_step = {int(k): int(v) for k, v in state.get("at_step", {}).items()}
