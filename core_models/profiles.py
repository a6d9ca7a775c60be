"""Model profiles: one named bundle of frame geometry, capture cadence and transformer sizes.

A profile fixes everything that must agree between capture, DYNAMICS-MAE, TEViD and the
streaming :class:`~tevid_hpo.diagnostician.Diagnostician`: the frame side ``S``, the window ``W``,
the capture cadence, the tubelet shape and the encoder/decoder widths. It is a frozen dataclass
that round-trips through JSON, so a checkpoint's config can rebuild the exact model.

* ``cpu``   — S=32, patch 8, dim 128, depth 4, heads 4, W=10, every=10 (the default here).
* ``paper`` — S=224, patch 16, ViT-B (768/12/12), W=10, every=50 (paper Table 14, GPU).
* ``tiny``  — the smallest sensible model, for unit tests.

Example:
    >>> from core_models.profiles import get_profile
    >>> p = get_profile("cpu")
    >>> p.grid_size, p.num_slots, p.num_tokens
    (4, 5, 80)
    >>> get_profile(p.to_dict()) == p
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """Geometry and sizes shared by DYNAMICS-MAE and TEViD.

    Attributes:
        name: profile name (informational; equality compares every field).
        frame_size: frame side ``S`` (frames are ``6×S×S``).
        patch_size: spatial patch side ``p``; ``S`` must be a multiple of it.
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        window: frames per clip ``W`` (the streaming window).
        every: capture cadence in optimisation steps (used by capture, recorded for provenance).
        tubelet_t: frames per tubelet (VideoMAE uses 2); ``W`` must be a multiple of it.
        in_chans: frame channels (3 activation + 3 gradient maps).
        mlp_ratio: hidden width of the MLPs relative to the token width.
        decoder_dim: DYNAMICS-MAE decoder width.
        decoder_depth: DYNAMICS-MAE decoder blocks.
        decoder_heads: DYNAMICS-MAE decoder heads.
        mask_ratio: fraction of spatial tubes hidden during pretraining.
        drop_path: stochastic-depth rate of the deepest block (linearly increasing per block).
        pos_embed: ``"sincos"`` (fixed, as MAE) or ``"learned"`` (as TimeSformer).
        input_clip: inputs are clamped to ``±input_clip`` after normalisation; frames from
            :class:`data_factory.frames.FrameEncoder` are already within ``±8``.
    """

    name: str
    frame_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    window: int = 10
    every: int = 10
    tubelet_t: int = 2
    in_chans: int = 6
    mlp_ratio: float = 4.0
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.9
    drop_path: float = 0.1
    pos_embed: str = "sincos"
    input_clip: float = 10.0

    def __post_init__(self) -> None:
        if self.frame_size % self.patch_size:
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.window % self.tubelet_t:
            raise ValueError(f"window {self.window} is not a multiple of tubelet_t "
                             f"{self.tubelet_t}")
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("widths must be divisible by their head counts")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid_size(self) -> int:
        """Patches per frame side (``S / p``)."""
        return self.frame_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Spatial patches per tubelet slot (``(S/p)²``)."""
        return self.grid_size ** 2

    @property
    def num_slots(self) -> int:
        """Tubelet slots along time (``W / tubelet_t``)."""
        return self.window // self.tubelet_t

    @property
    def num_tokens(self) -> int:
        """Patch tokens per clip, excluding [CLS]."""
        return self.num_slots * self.num_patches

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        """Rebuild from :meth:`to_dict` output; unknown keys raise so typos do not pass silently."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown profile fields: {sorted(unknown)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed, e.g. ``get_profile("cpu").replace(window=20)``."""
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "tiny": Profile(name="tiny", frame_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                    window=4, every=10, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                    drop_path=0.0),
    "cpu": Profile(name="cpu", frame_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                   window=10, every=10, decoder_dim=64, decoder_depth=2, decoder_heads=4),
    # Appendix C.1/D.1: ViT-B encoder, a 4-block decoder (VideoMAE-B's 384-wide decoder).
    "paper": Profile(name="paper", frame_size=224, patch_size=16, embed_dim=768, depth=12,
                     num_heads=12, window=10, every=50, decoder_dim=384, decoder_depth=4,
                     decoder_heads=6),
}


def get_profile(profile: str | Profile | Mapping[str, Any]) -> Profile:
    """Resolve a profile name, a :class:`Profile` or its dict form.

    Example:
        >>> get_profile("paper").embed_dim
        768
    """
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, str):
        try:
            return PROFILES[profile]
        except KeyError:
            raise KeyError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}") from None
    return Profile.from_dict(profile)
