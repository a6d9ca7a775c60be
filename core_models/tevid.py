"""TEViD: a divided space–time video transformer with an evidential head (Section 4.3, App. D).

Clips ``B×W×6×S×S`` become tubelet tokens ``B×T'×N×D`` (the embedding DYNAMICS-MAE pretrains)
plus one [CLS] token. Each block follows TimeSformer's divided attention:

1. temporal attention over ``(b n) t d`` — every patch location attends across time slots;
   its output goes through ``temporal_fc`` (zero-initialised, so a fresh block starts as the
   identity in time);
2. spatial attention over ``(b t) (1+n) d`` — [CLS] is repeated into every slot as an anchor,
   attends with that slot's patches, and its per-slot outputs are averaged back into one token;
3. an MLP on all tokens.

The [CLS] token (after the final LayerNorm) feeds a linear evidence head; see
:mod:`core_models.edl` for how evidence becomes probabilities and vacuity.

Example:
    >>> import torch
    >>> from core_models.tevid import TEViD
    >>> model = TEViD("tiny").eval()
    >>> out = model(torch.randn(3, 4, 6, 16, 16))
    >>> tuple(out.probs.shape), bool(torch.allclose(out.vacuity, 5 / out.alpha.sum(-1)))
    ((3, 5), True)
    >>> tuple(model.embed(torch.randn(3, 4, 6, 16, 16)).shape)
    (3, 32)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.layers.attention import Attention
from torch import nn
from torch.nn import functional as F

from core_models.checkpoint import load_checkpoint
from core_models.edl import EvidentialOutput, evidential_output
from core_models.layers import ClipStem, LayerNorm, drop_path_rates, init_vit_weights
from core_models.profiles import Profile, get_profile
from data_factory.labels import KNOWN_LABELS

__all__ = ["CHANNEL_SETS", "DividedSpaceTimeBlock", "TEViD"]

#: Which frame channels each ``channels`` option keeps (Table 12 ablation): activations are
#: channels 0–2, gradients 3–5 (``data_factory.frames.CHANNELS``).
#: ``"none"`` (every frame zeroed) is the scalars-only row and needs ``telemetry > 0``.
CHANNEL_SETS: dict[str, tuple[int, ...]] = {"both": (0, 1, 2, 3, 4, 5), "act": (0, 1, 2),
                                            "grad": (3, 4, 5), "none": ()}


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer's divided space–time block on ``([CLS] B×1×D, tokens B×T×N×D)``.

    Parameter names of the spatial half (``norm1``, ``attn``, ``norm2``, ``mlp``) match
    ``timm``'s ``Block`` so a DYNAMICS-MAE block loads into it by name.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.temporal_norm = LayerNorm(dim)
        self.temporal_attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # In eval the block calls the same kernels as timm's fused attention and Mlp directly:
        # one streaming update runs ~130 modules, and their calls (Identity norms, p=0
        # dropouts) were ~10% of it (issue 22). Only for the plain layers built here; any
        # other configuration goes through timm's modules.
        self._direct = all(getattr(a, "fused_attn", False) and getattr(a, "gate", None) is None
                           and all(isinstance(getattr(a, m, nn.Identity()), nn.Identity)
                                   for m in ("q_norm", "k_norm", "norm"))
                           for a in (self.temporal_attn, self.attn)) \
            and isinstance(self.mlp.norm, nn.Identity)

    def _self_attention(self, attn: Attention, x: torch.Tensor, first: int | None = None
                        ) -> torch.Tensor:
        """``attn(x)``, or only its outputs for the first ``first`` tokens (every token is
        still a key and value)."""
        if self.training or not self._direct:
            out = attn(x)
            return out if first is None else out[:, :first]
        b, n, _ = x.shape
        h, hd = attn.num_heads, attn.head_dim
        w, bias = attn.qkv.weight, attn.qkv.bias
        if first is None:
            q, k, v = F.linear(x, w, bias).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        else:   # queries of the first tokens only: the rest would be computed and dropped
            inner = h * hd
            q = F.linear(x[:, :first], w[:inner], None if bias is None else bias[:inner])
            q = q.reshape(b, first, h, hd).transpose(1, 2)
            kv = F.linear(x, w[inner:], None if bias is None else bias[inner:])
            k, v = kv.reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
            n = first
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, h * hd)
        return F.linear(out, attn.proj.weight, attn.proj.bias)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch (drop path included)."""
        if self.training or not self._direct:
            return self.drop_path(self.mlp(x))
        m = self.mlp
        return F.linear(m.act(F.linear(x, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)

    def _attend(self, cls: torch.Tensor, x: torch.Tensor, cls_only: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal then spatial attention: ``(cls, x)`` before the MLP (``cls_only``: ``x``
        is left before its spatial update, which nothing reads then)."""
        b, t, n, d = x.shape
        drop = self.drop_path if self.training else _keep   # DropPath is the identity in eval
        # Plain reshapes instead of einops: the same views and copies without einops' per-call
        # parsing, which was a measurable share of a streaming update (issue 22).
        # Temporal: each patch location attends over the time slots. [CLS] sits out (as in
        # TimeSformer): it has no single location and collects time through the spatial step.
        xt = self._self_attention(self.temporal_attn,
                                  self.temporal_norm(x.transpose(1, 2).reshape(b * n, t, d)))
        x = x + drop(self.temporal_fc(xt.view(b, n, t, d).transpose(1, 2)))
        # Spatial: per slot, [CLS] joins as an anchor; its T copies are averaged back.
        xs = torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d), x.reshape(b * t, n, d)], dim=1)
        xs = self._self_attention(self.attn, self.norm1(xs), 1 if cls_only else None)
        cls = cls + drop(xs[:, :1].reshape(b, t, 1, d).mean(1))
        if not cls_only:
            x = x + drop(xs[:, 1:].reshape(b, t, n, d))
        return cls, x

    def forward(self, cls: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, x = self._attend(cls, x)
        # MLP on every token, [CLS] included.
        tokens = torch.cat([cls, x.flatten(1, 2)], dim=1)
        tokens = tokens + self._mlp(self.norm2(tokens))
        return tokens[:, :1], tokens[:, 1:].view_as(x)

    def forward_cls(self, cls: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Only the updated [CLS] ``B×1×D`` of :meth:`forward` (what the last block must give).

        The MLP acts on each token alone and only [CLS]'s spatial query reaches [CLS], so the
        patch tokens' MLP and spatial queries, about half a block's work, are skipped; [CLS]
        comes out as :meth:`forward` computes it (float32 rounding aside).

        Example:
            >>> import torch
            >>> blk = DividedSpaceTimeBlock(32, 2).eval()
            >>> cls, x = torch.randn(2, 1, 32), torch.randn(2, 3, 4, 32)
            >>> bool(torch.allclose(blk.forward_cls(cls, x), blk(cls, x)[0], atol=1e-6))
            True
        """
        cls, _ = self._attend(cls, x, cls_only=True)
        return cls + self._mlp(self.norm2(cls))


class TEViD(ClipStem, nn.Module):
    """Temporal Vision Diagnostician: clips of ``W`` frames → evidential class prediction.

    Args:
        profile: profile name, :class:`~core_models.profiles.Profile` or its dict.
        num_classes: known classes ``K`` (default: the 5 of :data:`KNOWN_LABELS`).
        channels: ``"both"``, ``"act"`` or ``"grad"``: the others are zeroed after
            normalisation (the Table 12 ablation).
        temperature: evidence-logit temperature ``T`` (set by calibration; 1 while training).
        telemetry: features per frame of the optional telemetry input
            (:data:`core_models.telemetry.NUM_FEATURES`); 0 = frames only (the shipped model).
            Each time slot then gets one extra token (:class:`~core_models.layers.TelemetryEmbed`
            + the slot's temporal position) next to its patches, so temporal and spatial
            attention both see it.

    Example:
        >>> import torch
        >>> m = TEViD("tiny", telemetry=11).eval()
        >>> m(torch.zeros(2, 4, 6, 16, 16), telemetry=torch.zeros(2, 4, 11)).probs.shape
        torch.Size([2, 5])
    """

    def __init__(self, profile: str | Profile | Mapping[str, Any] = "cpu",
                 num_classes: int = len(KNOWN_LABELS), channels: str = "both",
                 temperature: float = 1.0, telemetry: int = 0) -> None:
        super().__init__()
        if channels not in CHANNEL_SETS:
            raise ValueError(f"channels must be one of {sorted(CHANNEL_SETS)}, got {channels!r}")
        if channels == "none" and telemetry <= 0:
            raise ValueError("channels='none' (scalars only) needs telemetry > 0")
        p = self.profile = get_profile(profile)
        self.num_classes, self.channels, self.temperature = num_classes, channels, float(temperature)
        dim = p.embed_dim
        keep = torch.zeros(p.in_chans)
        keep[list(CHANNEL_SETS[channels])] = 1.0
        self.register_buffer("channel_mask", keep.view(1, 1, -1, 1, 1), persistent=False)

        self._build_stem(p, telemetry)
        self.blocks = nn.ModuleList([
            DividedSpaceTimeBlock(dim, p.num_heads, p.mlp_ratio, drop_path=r)
            for r in drop_path_rates(p.drop_path, p.depth)])
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

        self.apply(init_vit_weights)
        trunc_normal_(self.cls_token, std=0.02)
        # TimeSformer: every block but the first starts with a silent temporal branch.
        for i, blk in enumerate(self.blocks):
            if i > 0:
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def tubelets(self, clips: torch.Tensor) -> torch.Tensor:
        """Tubelet tokens ``B×T'×N×D`` (normalised, channel-masked, embedded; no position yet)
        of clips ``B×T×6×S×S`` whose length ``T`` is any multiple of ``tubelet_t``.

        Each token depends only on its own ``tubelet_t`` frames, so a stream can embed each
        group of frames once and pass the window's slots to :meth:`embed` as ``tubelets``
        (what :class:`~tevid_hpo.diagnostician.Diagnostician` does).

        Example:
            >>> import torch
            >>> m = TEViD("tiny")
            >>> clips = torch.randn(1, 4, 6, 16, 16)
            >>> halves = torch.cat([m.tubelets(clips[:, :2]), m.tubelets(clips[:, 2:])], dim=1)
            >>> bool(torch.allclose(m.embed(clips), m.embed(None, tubelets=halves), atol=1e-6))
            True
        """
        return self.patch_embed(self.input_norm(clips) * self.channel_mask)

    def embed(self, clips: torch.Tensor | None, telemetry: torch.Tensor | None = None,
              tubelets: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normalised [CLS] embedding ``B×D`` (used by the Embedding-CPD baseline);
        ``tubelets`` (:meth:`tubelets` of the clips, ``B×T'×N×D``) stands in for ``clips``.

        Example:
            >>> import torch
            >>> TEViD("tiny").embed(torch.zeros(1, 4, 6, 16, 16)).shape
            torch.Size([1, 32])
        """
        if tubelets is None:
            if clips is None:
                raise ValueError("embed needs clips or tubelets")
            self._check_clips(clips)
            tubelets = self.tubelets(clips)
        p = self.profile
        expected = (p.num_slots, p.grid_size ** 2, p.embed_dim)
        if tubelets.dim() != 4 or tuple(tubelets.shape[1:]) != expected:
            raise ValueError(f"expected tubelets of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(tubelets.shape)}")
        x = self.pos_embed(tubelets)
        tele = self._telemetry_tokens(telemetry, x.shape[0], x.device)
        if tele is not None:   # one more "patch" per slot: the blocks treat it like the others
            x = torch.cat([x, tele], dim=2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for blk in self.blocks[:-1]:
            cls, x = blk(cls, x)
        # Only [CLS] leaves the encoder: the last block skips its patch tokens' MLP.
        cls = self.blocks[-1].forward_cls(cls, x)
        return self.norm(cls[:, 0])

    def forward(self, clips: torch.Tensor | None, temperature: float | None = None,
                telemetry: torch.Tensor | None = None,
                tubelets: torch.Tensor | None = None) -> EvidentialOutput:
        """``clips`` ``B×W×6×S×S`` (+ ``telemetry`` ``B×W×F`` for a telemetry model) →
        :class:`EvidentialOutput` (``temperature`` overrides ``T``; ``tubelets`` as in
        :meth:`embed`)."""
        logits = self.head(self.embed(clips, telemetry, tubelets))
        return evidential_output(logits, self.temperature if temperature is None else temperature)

    @torch.no_grad()
    def load_mae_encoder(self, state: Mapping[str, torch.Tensor] | nn.Module | str | Path
                         ) -> list[str]:
        """Initialise the encoder from a DYNAMICS-MAE state dict, module or checkpoint path.

        Input normalisation, tubelet embedding, pos-embed, [CLS] and the final norm are copied by
        name. Each MAE block's attention/MLP become the *spatial* half of the divided block; as in
        TimeSformer the temporal attention starts as a copy of that attention and
        ``temporal_fc`` is zeroed, so at initialisation every slot is encoded exactly as the MAE
        encoder would encode it alone. The decoder is ignored; the head stays random.

        Returns:
            The TEViD parameter/buffer names that were set.

        Example:
            >>> from core_models.mae import DynamicsMAE
            >>> tevid = TEViD("tiny")
            >>> "blocks.0.attn.qkv.weight" in tevid.load_mae_encoder(DynamicsMAE("tiny"))
            True
        """
        if isinstance(state, (str, Path)):
            state, _ = load_checkpoint(state)
        elif isinstance(state, nn.Module):
            state = state.state_dict()
        own = self.state_dict()
        updates: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith(("decoder", "mask_token")) or key not in own:
                continue
            updates[key] = value
            if key.startswith("blocks.") and (".attn." in key or ".norm1." in key):
                twin = key.replace(".attn.", ".temporal_attn.").replace(".norm1.", ".temporal_norm.")
                updates[twin] = value
        for i in range(len(self.blocks)):
            for name in ("weight", "bias"):
                updates[f"blocks.{i}.temporal_fc.{name}"] = torch.zeros_like(
                    own[f"blocks.{i}.temporal_fc.{name}"])
        # A frames-only MAE may initialise a telemetry TEViD: its telemetry embed stays random.
        expected = [k for k in own if not k.startswith(("head.", "telemetry_embed."))
                    and ".temporal_fc." not in k]
        missing = [k for k in expected if k not in updates]
        if missing:
            raise KeyError(f"MAE state lacks encoder weights for {missing[:5]} "
                           f"(different profile/depth?)")
        for key, value in updates.items():
            if own[key].shape != value.shape:
                raise ValueError(f"shape mismatch for {key}: MAE {tuple(value.shape)} vs "
                                 f"TEViD {tuple(own[key].shape)}")
            own[key].copy_(value)
        return sorted(updates)

    def config(self) -> dict[str, Any]:
        """JSON config that :meth:`from_config` rebuilds the architecture from."""
        config = {"kind": "tevid", "profile": self.profile.to_dict(),
                  "num_classes": self.num_classes, "channels": self.channels,
                  "temperature": self.temperature, "normalization": self.input_norm.to_config()}
        if self.telemetry:   # absent = 0, so frames-only configs stay as they were
            config["telemetry"] = self.telemetry
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TEViD:
        """Build an (untrained) model from :meth:`config` output or a checkpoint config."""
        return cls(config["profile"], num_classes=int(config.get("num_classes", len(KNOWN_LABELS))),
                   channels=config.get("channels", "both"),
                   temperature=float(config.get("temperature", 1.0)),
                   telemetry=int(config.get("telemetry", 0)))
