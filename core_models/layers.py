"""Blocks shared by DYNAMICS-MAE and TEViD: input normalisation, tubelet embedding, pos-embed.

Both models read clips ``B×T×6×S×S`` through the same three modules with the same parameter
names (built by :class:`ClipStem`), which is what lets
:meth:`core_models.tevid.TEViD.load_mae_encoder` copy a pretrained encoder by name; they also
share :data:`LayerNorm`, :func:`init_vit_weights` and :func:`drop_path_rates`.

Example:
    >>> import torch
    >>> from core_models.layers import TubeletEmbed, SpaceTimePosEmbed
    >>> emb = TubeletEmbed(in_chans=6, embed_dim=32, patch_size=4, tubelet_t=2)
    >>> tokens = emb(torch.randn(2, 4, 6, 16, 16))
    >>> tuple(tokens.shape)                     # B, slots, patches per slot, dim
    (2, 2, 16, 32)
    >>> tuple(SpaceTimePosEmbed(2, 4, 32)(tokens).shape)
    (2, 2, 16, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from core_models.profiles import Profile

__all__ = [
    "ClipStem",
    "InputNorm",
    "LayerNorm",
    "SpaceTimePosEmbed",
    "TelemetryEmbed",
    "TubeletEmbed",
    "check_clip_shape",
    "drop_path_rates",
    "init_vit_weights",
    "sincos_1d",
]

#: LayerNorm as timm's ViTs build it (eps 1e-6), in both models.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class InputNorm(nn.Module):
    """Make any clip safe to feed: NaN/±inf → finite, per-channel affine normalisation, clamp.

    Divergence is exactly what the diagnostician must see, so non-finite inputs saturate to the
    clamp value (NaN and +inf → ``+clip``, −inf → ``−clip``, as the frame encoder does) instead
    of raising. ``mean``/``std`` are buffers (saved with the weights, mirrored in the checkpoint
    JSON); they default to the identity because frames are already normalised per run.

    Example:
        >>> import torch
        >>> norm = InputNorm(in_chans=1, clip=5.0)
        >>> norm(torch.tensor([float("nan"), -float("inf"), 2.0]).view(1, 1, 3, 1, 1)).flatten()
        tensor([ 5., -5.,  2.])
    """

    def __init__(self, in_chans: int = 6, clip: float = 10.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.clip = float(clip)
        self.register_buffer("mean", torch.zeros(in_chans) if mean is None
                             else torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.ones(in_chans) if std is None
                             else torch.as_tensor(std, dtype=torch.float32))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``clips``: ``B×T×C×S×S`` (any float dtype) → float32 of the same shape."""
        x = clips.float()
        x = torch.nan_to_num(x, nan=self.clip, posinf=self.clip, neginf=-self.clip)
        x = (x - self.mean.view(1, 1, -1, 1, 1)) / self.std.view(1, 1, -1, 1, 1)
        return x.clamp(-self.clip, self.clip)

    def to_config(self) -> dict[str, object]:
        """JSON mirror of the normalisation (stored in checkpoint configs)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}


class TubeletEmbed(nn.Module):
    """VideoMAE tubelet embedding: a Conv3d with kernel = stride = ``(tubelet_t, p, p)``.

    timm's ``PatchEmbed`` is 2-D only, hence this module. Output keeps time and space apart
    (``B×T'×N×D`` with ``T' = T/tubelet_t`` slots and ``N = (S/p)²`` patches) because TEViD
    attends along each axis separately; DYNAMICS-MAE flattens it.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, tubelet_t: int = 2) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_t = tubelet_t
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_t, patch_size, patch_size),
                              stride=(tubelet_t, patch_size, patch_size))
        # MAE: initialise like nn.Linear (xavier on the flattened kernel), not like a conv.
        w = self.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``clips``: ``B×T×C×S×S`` → tokens ``B×T'×N×D`` (row-major patches)."""
        # kernel = stride, so the Conv3d is one matmul of each tubelet's pixels with the kernel
        # (unfolded in the kernel's (C, t, p, p) order); oneDNN's conv3d took ~6x longer on
        # CPU, an eighth of a streaming update (issue 22). Same sums, float32 rounding aside.
        b, t, c, h, w = clips.shape
        pt, p = self.tubelet_t, self.patch_size
        x = clips.reshape(b, t // pt, pt, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 3, 2, 5, 7)
        x = x.reshape(b, t // pt, (h // p) * (w // p), c * pt * p * p)
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)


class TelemetryEmbed(nn.Module):
    """One token per time slot from the slot's telemetry features (:mod:`core_models.telemetry`).

    ``B×W×F`` features are grouped by tubelet (``tubelet_t`` frames → one slot), embedded by a
    Linear and given a learned type embedding, so the token reads as "telemetry", not as a patch;
    the caller adds the slot's temporal position. Non-finite inputs saturate like frames do.

    Example:
        >>> import torch
        >>> TelemetryEmbed(11, 32, tubelet_t=2)(torch.zeros(3, 4, 11)).shape
        torch.Size([3, 2, 1, 32])
    """

    def __init__(self, num_features: int, embed_dim: int, tubelet_t: int = 2,
                 clip: float = 10.0) -> None:
        super().__init__()
        self.num_features, self.tubelet_t, self.clip = num_features, tubelet_t, float(clip)
        self.proj = nn.Linear(tubelet_t * num_features, embed_dim)
        self.type_embed = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))
        trunc_normal_(self.type_embed, std=0.02)

    def forward(self, telemetry: torch.Tensor) -> torch.Tensor:
        """``B×W×F`` → ``B×T'×1×D``."""
        x = torch.nan_to_num(telemetry.float(), nan=self.clip, posinf=self.clip,
                             neginf=-self.clip).clamp(-self.clip, self.clip)
        x = rearrange(x, "b (t pt) f -> b t 1 (pt f)", pt=self.tubelet_t)
        return self.proj(x) + self.type_embed


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding ``(length, dim)`` (the time half of the space-time pos-embed).

    Example:
        >>> sincos_1d(5, 8).shape
        torch.Size([5, 8])
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    pos = torch.arange(length, dtype=torch.float32)[:, None] * omega[None]
    return torch.cat([pos.sin(), pos.cos()], dim=1)


class SpaceTimePosEmbed(nn.Module):
    """Separable position embedding: ``spatial[n] + temporal[t]`` added to ``B×T'×N×D`` tokens.

    Separable is what TimeSformer does (learned spatial ``pos_embed`` + ``time_embed``) and it
    lets the same module serve both models. ``learnable=False`` gives fixed sin-cos tables
    (2-D for space via ``timm.layers.build_sincos2d_pos_embed``, 1-D for time), kept as
    non-persistent buffers because they follow from the shape alone.
    """

    def __init__(self, num_slots: int, grid_size: int, dim: int, learnable: bool = False) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            self.spatial = nn.Parameter(torch.zeros(1, 1, grid_size * grid_size, dim))
            self.temporal = nn.Parameter(torch.zeros(1, num_slots, 1, dim))
            trunc_normal_(self.spatial, std=0.02)
            trunc_normal_(self.temporal, std=0.02)
        else:
            spatial = build_sincos2d_pos_embed([grid_size, grid_size], dim=dim)
            self.register_buffer("spatial", spatial.view(1, 1, -1, dim), persistent=False)
            self.register_buffer("temporal", sincos_1d(num_slots, dim).view(1, num_slots, 1, dim),
                                 persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Add the embedding to ``B×T'×N×D`` tokens."""
        return tokens + self.spatial + self.temporal


def init_vit_weights(module: nn.Module) -> None:
    """timm/MAE initialisation: truncated-normal Linear weights, unit LayerNorm, zero biases.

    Use as ``model.apply(init_vit_weights)``; Conv3d and parameters set elsewhere are untouched.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, linearly increasing to ``drop_path`` (timm convention)."""
    if depth <= 1:
        return [drop_path] * depth
    return [drop_path * i / (depth - 1) for i in range(depth)]


def check_clip_shape(clips: torch.Tensor, window: int, in_chans: int, frame_size: int) -> None:
    """Fail early with shapes in the message instead of deep inside a Conv3d."""
    if clips.dim() != 5 or tuple(clips.shape[1:]) != (window, in_chans, frame_size, frame_size):
        raise ValueError(f"expected clips of shape (B, {window}, {in_chans}, {frame_size}, "
                         f"{frame_size}), got {tuple(clips.shape)}")


class ClipStem:
    """Mixin for an ``nn.Module`` that reads clips: the stem both models build identically.

    :meth:`_build_stem` adds ``input_norm``, ``patch_embed``, ``pos_embed`` and ``cls_token``
    under exactly these names (the checkpoint keys :meth:`core_models.tevid.TEViD.load_mae_encoder`
    copies by), in the same order in both models, so equal seeds give equal stems.

    Example:
        >>> import torch
        >>> from core_models.profiles import get_profile
        >>> class Stem(ClipStem, nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.profile = get_profile("tiny")
        ...         self._build_stem(self.profile)
        >>> sorted(n.split(".")[0] for n, _ in Stem().named_parameters())[:2]
        ['cls_token', 'patch_embed']
        >>> Stem()._check_clips(torch.zeros(1, 3, 6, 16, 16))
        Traceback (most recent call last):
        ...
        ValueError: expected clips of shape (B, 4, 6, 16, 16), got (1, 3, 6, 16, 16)
    """

    profile: Profile
    input_norm: InputNorm
    patch_embed: TubeletEmbed
    pos_embed: SpaceTimePosEmbed
    cls_token: nn.Parameter
    telemetry_embed: TelemetryEmbed | None

    def _build_stem(self, p: Profile, telemetry: int = 0) -> None:
        self.input_norm = InputNorm(p.in_chans, p.input_clip)
        self.patch_embed = TubeletEmbed(p.in_chans, p.embed_dim, p.patch_size, p.tubelet_t)
        self.pos_embed = SpaceTimePosEmbed(p.num_slots, p.grid_size, p.embed_dim,
                                           p.pos_embed == "learned")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.embed_dim))
        # Built last and only when asked, so models without telemetry keep their old keys and
        # draw the same random numbers (the shipped checkpoint and seeded tests stay identical).
        self.telemetry = int(telemetry)
        self.telemetry_embed = (TelemetryEmbed(telemetry, p.embed_dim, p.tubelet_t, p.input_clip)
                                if telemetry > 0 else None)

    def _check_clips(self, clips: torch.Tensor) -> None:
        p = self.profile
        check_clip_shape(clips, p.window, p.in_chans, p.frame_size)

    def _telemetry_tokens(self, telemetry: torch.Tensor | None, batch: int,
                          device: torch.device) -> torch.Tensor | None:
        """``B×T'×1×D`` telemetry tokens (slot position added), or ``None`` without telemetry.

        A telemetry model called without features reads them as all unknown (zeros, every
        ``*_present`` flag 0), exactly what a run that passes no scalars streams.
        """
        if self.telemetry_embed is None:
            if telemetry is not None:
                raise ValueError("this model was built without telemetry (telemetry=0)")
            return None
        p = self.profile
        if telemetry is None:
            telemetry = torch.zeros(batch, p.window, self.telemetry, device=device)
        if tuple(telemetry.shape) != (batch, p.window, self.telemetry):
            raise ValueError(f"expected telemetry of shape ({batch}, {p.window}, "
                             f"{self.telemetry}), got {tuple(telemetry.shape)}")
        return self.telemetry_embed(telemetry.to(device)) + self.pos_embed.temporal
