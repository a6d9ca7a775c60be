"""DYNAMICS-MAE: a masked autoencoder on internal-state videos (paper Section 4.2, Appendix C.1).

Structured like MAE's ``models_mae.py`` with VideoMAE's two changes: tubelet tokens
(Conv3d over ``tubelet_t`` frames) and *tube* masking — one random spatial mask repeated over all
time slots, so a hidden patch cannot be copied from the same location one slot earlier and the
encoder has to model how the dynamics propagate across layers and time.

Example:
    >>> import torch
    >>> from core_models.mae import DynamicsMAE
    >>> mae = DynamicsMAE("tiny")
    >>> loss, pred, mask = mae(torch.randn(2, 4, 6, 16, 16))
    >>> tuple(pred.shape), int(mask[0].sum())   # 2 slots x 16 patches; 14 of 16 tubes hidden
    ((2, 32, 192), 28)
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from core_models.layers import (
    ClipStem,
    LayerNorm,
    SpaceTimePosEmbed,
    drop_path_rates,
    init_vit_weights,
)
from core_models.profiles import Profile, get_profile

__all__ = ["DynamicsMAE", "tube_masking"]


def tube_masking(batch: int, num_slots: int, num_patches: int, mask_ratio: float,
                 device: torch.device | str | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a tube mask: the same ``round(num_patches * mask_ratio)`` patches hidden in every slot.

    Tokens are ordered slot-major (index ``t * num_patches + n``), as :class:`TubeletEmbed` emits.

    Returns:
        ``mask`` ``(B, T'·N)`` float, 1 = hidden; ``ids_keep`` ``(B, T'·keep)`` indices of visible
        tokens in their original order; ``ids_restore`` ``(B, T'·N)`` that puts
        ``[visible, masked]`` back in token order (MAE's ``gather(ids_restore)``).

    Example:
        >>> mask, keep, restore = tube_masking(1, num_slots=3, num_patches=10, mask_ratio=0.9)
        >>> int(mask.sum()), keep.shape[1], bool((mask.view(3, 10) == mask.view(3, 10)[0]).all())
        (27, 3, True)
    """
    num_masked = round(num_patches * mask_ratio)
    if num_masked >= num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} hides all {num_patches} patches of a slot")
    noise = torch.rand(batch, num_patches, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)                    # rank of each patch's noise
    spatial = (rank >= num_patches - num_masked).float()          # MAE keeps the smallest noise
    mask = spatial.repeat(1, num_slots)                           # the tube: same mask per slot
    ids_shuffle = mask.argsort(dim=1, stable=True)                # visible first, order kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, : num_slots * (num_patches - num_masked)]
    return mask, ids_keep, ids_restore


class DynamicsMAE(ClipStem, nn.Module):
    """Masked autoencoder with a ViT encoder on visible tubelets and a light decoder.

    Args:
        profile: profile name, :class:`~core_models.profiles.Profile` or its dict.
        norm_pix_loss: regress per-patch normalised pixels (MAE's better-representations option).
        telemetry: features per frame of the optional telemetry input (0 = frames only). Its
            one token per slot is never masked: the encoder always sees it, the decoder gets it
            after the restored patch tokens, and the loss stays the pixel loss on hidden tubes.

    Example:
        >>> import torch
        >>> mae = DynamicsMAE("tiny", telemetry=11)
        >>> loss, pred, mask = mae(torch.randn(2, 4, 6, 16, 16), telemetry=torch.zeros(2, 4, 11))
        >>> tuple(pred.shape)
        (2, 32, 192)
    """

    def __init__(self, profile: str | Profile | dict[str, Any] = "cpu",
                 norm_pix_loss: bool = True, telemetry: int = 0) -> None:
        super().__init__()
        p = self.profile = get_profile(profile)
        self.norm_pix_loss = norm_pix_loss
        dim, ddim = p.embed_dim, p.decoder_dim
        block = partial(Block, mlp_ratio=p.mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)

        # Encoder (names shared with TEViD, see TEViD.load_mae_encoder).
        self._build_stem(p, telemetry)
        self.blocks = nn.ModuleList([block(dim, p.num_heads, drop_path=r)
                                     for r in drop_path_rates(p.drop_path, p.depth)])
        self.norm = LayerNorm(dim)

        # Decoder: sees every position (mask tokens included), so fixed sin-cos is enough.
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = SpaceTimePosEmbed(p.num_slots, p.grid_size, ddim, learnable=False)
        self.decoder_blocks = nn.ModuleList([block(ddim, p.decoder_heads)
                                             for _ in range(p.decoder_depth)])
        self.decoder_norm = LayerNorm(ddim)
        self.decoder_pred = nn.Linear(ddim, p.tubelet_t * p.patch_size ** 2 * p.in_chans)

        self.apply(init_vit_weights)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.mask_token, std=0.02)

    def patchify(self, clips: torch.Tensor) -> torch.Tensor:
        """``B×T×C×S×S`` → ``B×(T'·N)×(tubelet_t·p·p·C)`` in token order."""
        p = self.profile
        return rearrange(clips, "b (t pt) c (h ph) (w pw) -> b (t h w) (pt ph pw c)",
                         pt=p.tubelet_t, ph=p.patch_size, pw=p.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify` (for looking at reconstructions)."""
        p = self.profile
        return rearrange(patches, "b (t h w) (pt ph pw c) -> b (t pt) c (h ph) (w pw)",
                         t=p.num_slots, h=p.grid_size, pt=p.tubelet_t, ph=p.patch_size,
                         pw=p.patch_size)

    def forward_encoder(self, clips: torch.Tensor, mask_ratio: float,
                        telemetry: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible tubes of normalised ``clips``; returns ``(latent, mask, ids_restore)``
        with ``latent`` = ``[CLS] + visible tokens`` (+ ``T'`` telemetry tokens last)."""
        x = self.pos_embed(self.patch_embed(clips)).flatten(1, 2)          # B, T'·N, D
        mask, ids_keep, ids_restore = tube_masking(
            x.shape[0], self.profile.num_slots, self.profile.num_patches, mask_ratio, x.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        tele = self._telemetry_tokens(telemetry, x.shape[0], x.device)
        if tele is not None:   # never masked
            x = torch.cat([x, tele.flatten(1, 2)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every token's pixels from ``[CLS] + visible`` latents; returns ``B×(T'·N)×P``."""
        p = self.profile
        x = self.decoder_embed(latent)
        n_tele = p.num_slots if self.telemetry_embed is not None else 0
        x, tele = x[:, :x.shape[1] - n_tele], x[:, x.shape[1] - n_tele:]
        b, n_tokens = x.shape[0], ids_restore.shape[1]
        masks = self.mask_token.expand(b, n_tokens + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masks], dim=1)                       # visible, then masked
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        tokens = self.decoder_pos_embed(tokens.view(b, p.num_slots, p.num_patches, -1))
        x = torch.cat([x[:, :1], tokens.flatten(1, 2), tele], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:1 + n_tokens]

    def forward_loss(self, clips: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
        """Mean squared error on hidden tokens only (``clips`` as returned by ``input_norm``).

        With ``norm_pix_loss`` each target patch is standardised by its own mean and variance,
        so the loss measures structure rather than the per-run offset of a patch.
        """
        target = self.patchify(clips)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_token = (pred.float() - target).square().mean(dim=-1)
        if mask.sum() == 0:  # mask_ratio=0: nothing hidden, report plain reconstruction
            return per_token.mean()
        return (per_token * mask).sum() / mask.sum()

    def forward(self, clips: torch.Tensor, mask_ratio: float | None = None,
                telemetry: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``clips`` ``B×W×6×S×S`` (+ ``telemetry`` ``B×W×F``) → ``(loss, pred, mask)``;
        ``mask_ratio`` defaults to the profile's."""
        p = self.profile
        self._check_clips(clips)
        ratio = p.mask_ratio if mask_ratio is None else mask_ratio
        clips = self.input_norm(clips)
        latent, mask, ids_restore = self.forward_encoder(clips, ratio, telemetry)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(clips, pred, mask), pred, mask

    def config(self) -> dict[str, Any]:
        """JSON config that :meth:`from_config` rebuilds the architecture from."""
        config = {"kind": "dynamics-mae", "profile": self.profile.to_dict(),
                  "norm_pix_loss": self.norm_pix_loss,
                  "normalization": self.input_norm.to_config()}
        if self.telemetry:
            config["telemetry"] = self.telemetry
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DynamicsMAE:
        """Build an (untrained) model from :meth:`config` output."""
        return cls(config["profile"], norm_pix_loss=config.get("norm_pix_loss", True),
                   telemetry=int(config.get("telemetry", 0)))
