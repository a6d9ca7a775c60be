"""Procedural architectures: a seeded sampler that draws a different small network for every run.

A registry model (:mod:`data_factory.architectures`) is one fixed instance per family, so a still
frame of its internal state already names the run's cell. Here a family is only a *space*: depth,
widths, activation, normalisation, dropout, residual connections, kernel size, pooling, attention
heads and MLP ratio, pre/post norm, recurrent cell and size, and the initialisation (default,
zero-initialised residual branches, or a small layer scale) are all drawn from the run's seed.

Families (:data:`FAMILIES`, name → modality the model reads):

* ``mlp`` (tabular; flattens images too), ``conv``, ``attention``, ``mixer`` (image),
* ``gru``, ``lstm`` (text: ``B×L`` token ids → ``B×L×vocab`` causal next-token logits).

Where a block known to :mod:`data_factory.capture` fits, it is used (timm ViT ``Block`` and
``MixerBlock``, ``nn.TransformerEncoderLayer``), so capture hooks the residual branch; the other
families are captured through the generic leaf-layer fallback. Every sampled model has at least
three capturable layers and trains a batch-32 step in a few CPU milliseconds.

Example:
    >>> import torch
    >>> model, desc = build_procedural("conv", (3, 16, 16), num_classes=10, seed=3)
    >>> model(torch.randn(2, 3, 16, 16)).shape, desc["family"]
    (torch.Size([2, 10]), 'conv')
    >>> sample_config("mlp", 3) == sample_config("mlp", 3)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from data_factory.architectures import _image_shape, _pooled_head, _seq_len

__all__ = ["FAMILIES", "PREFIX", "build_procedural", "family_of", "sample_config"]

#: Prefix that marks a procedural architecture or recipe in a :class:`~data_factory.runner.RunSpec`
#: (``arch="procedural:mlp"``, ``optimizer="procedural:sgd"``).
PREFIX = "procedural:"

#: Procedural architecture families and the modality each reads.
FAMILIES: dict[str, str] = {"mlp": "tabular", "conv": "image", "attention": "image",
                            "mixer": "image", "gru": "text", "lstm": "text"}

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU,
                                     "tanh": nn.Tanh}
_INITS = ("default", "zero_residual", "layer_scale")


def family_of(name: str, known: Sequence[str] = tuple(FAMILIES), what: str = "procedural family"
              ) -> str | None:
    """The family a ``"procedural:<family>"`` spec name names (checked against ``known``), or
    ``None`` for a registry name.

    Example:
        >>> family_of("procedural:gru"), family_of("resnet")
        ('gru', None)
    """
    if not name.startswith(PREFIX):
        return None
    family = name[len(PREFIX):]
    if family not in known:
        raise KeyError(f"unknown {what} {family!r}; choose from {sorted(known)}")
    return family


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    # a Python value (not a numpy scalar), so the description stays JSON-serialisable
    return options[int(rng.integers(len(options)))]


def sample_config(family: str, seed: int) -> dict[str, Any]:
    """The architecture hyper-parameters drawn for ``family`` from ``seed`` (JSON-serialisable).

    Example:
        >>> cfg = sample_config("attention", 0)
        >>> cfg["dim"] % cfg["heads"], cfg["norm"] in ("pre", "post")
        (0, True)
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown procedural family {family!r}; choose from {sorted(FAMILIES)}")
    rng = np.random.default_rng([seed, sorted(FAMILIES).index(family)])
    cfg: dict[str, Any] = {"family": family, "seed": int(seed), "init": _pick(rng, _INITS),
                           "act": _pick(rng, sorted(_ACTS))}
    if family == "mlp":
        depth = int(rng.integers(2, 6))
        residual = bool(rng.random() < 0.5)
        widths = [_pick(rng, (32, 64, 128, 256))] * depth if residual else \
            [_pick(rng, (32, 64, 128, 256)) for _ in range(depth)]
        cfg.update(widths=widths, residual=residual, norm=_pick(rng, ("none", "batch", "layer")),
                   dropout=round(float(rng.uniform(0.0, 0.3)), 3) if rng.random() < 0.5 else 0.0)
    elif family == "conv":
        depth = int(rng.integers(2, 5))
        cfg.update(widths=[_pick(rng, (8, 12, 16, 24, 32)) for _ in range(depth)],
                   kernel=_pick(rng, (3, 5)), norm=_pick(rng, ("none", "batch", "group")),
                   residual=bool(rng.random() < 0.5), pool=_pick(rng, ("max", "avg", "stride")))
    elif family == "attention":
        heads = _pick(rng, (1, 2, 4))
        cfg.update(dim=heads * _pick(rng, (8, 12, 16)), heads=heads, depth=int(rng.integers(2, 5)),
                   mlp_ratio=_pick(rng, (1.0, 2.0, 3.0, 4.0)), norm=_pick(rng, ("pre", "post")),
                   patch=_pick(rng, (4, 8)))
    elif family == "mixer":
        cfg.update(dim=_pick(rng, (16, 24, 32, 48)), depth=int(rng.integers(2, 5)),
                   token_ratio=_pick(rng, (0.5, 1.0, 2.0)), channel_ratio=_pick(rng, (1.0, 2.0, 4.0)),
                   patch=_pick(rng, (2, 4)))
    else:  # gru / lstm
        cfg.update(embed=_pick(rng, (16, 24, 32, 48)), hidden=_pick(rng, (32, 48, 64, 96)),
                   layers=int(rng.integers(2, 4)))
    if cfg["init"] == "layer_scale":
        cfg["gamma"] = round(float(10 ** rng.uniform(-3, -1)), 5)
    return cfg


class Residual(nn.Module):
    """``x + gamma * branch(x)``; ``gamma`` is a learned per-channel layer scale (``None``: 1).

    Example:
        >>> block = Residual(nn.Linear(4, 4), gamma=0.01, channels=4)
        >>> block(torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, branch: nn.Module, gamma: float | None = None, channels: int = 0,
                 channel_dim: int = -1) -> None:
        super().__init__()
        self.branch = branch
        self.channel_dim = channel_dim
        self.gamma = None if gamma is None else nn.Parameter(torch.full((channels,), float(gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.gamma is not None:
            shape = [1] * out.dim()
            shape[self.channel_dim] = -1
            out = out * self.gamma.view(shape)
        return x + out


def _zero_last(module: nn.Module) -> None:
    """Zero the last weighted layer of a residual branch (the branch starts as the identity)."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if last:
        nn.init.zeros_(last[-1].weight)


def _wrap(branch: nn.Module, cfg: dict[str, Any], channels: int, channel_dim: int) -> nn.Module:
    if cfg["init"] == "zero_residual":
        _zero_last(branch)
    return Residual(branch, cfg.get("gamma"), channels, channel_dim)


def _mlp(cfg: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    act = _ACTS[cfg["act"]]
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(np.prod(input_shape))
    for i, out in enumerate(cfg["widths"]):
        norm = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[cfg["norm"]]
        body = nn.Sequential(nn.Linear(width, out), norm(out), act(), nn.Dropout(cfg["dropout"]))
        # the first layer changes width; later ones are residual when sampled so
        layers.append(_wrap(body, cfg, out, -1) if cfg["residual"] and i > 0 else body)
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _conv_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(4, channels), channels)
    return nn.Identity()


def _conv(cfg: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    c_in, side = _image_shape(input_shape, "procedural conv")
    act, k = _ACTS[cfg["act"]], cfg["kernel"]
    layers: list[nn.Module] = []
    for i, out in enumerate(cfg["widths"]):
        down = i > 0 and side > 4  # halve the map between stages while it is larger than 4×4
        stride = 2 if down and cfg["pool"] == "stride" else 1
        layers += [nn.Conv2d(c_in, out, k, stride=stride, padding=k // 2),
                   _conv_norm(cfg["norm"], out), act()]
        if down and cfg["pool"] != "stride":
            layers.append(nn.MaxPool2d(2) if cfg["pool"] == "max" else nn.AvgPool2d(2))
        side = side // 2 if down else side
        if cfg["residual"]:
            body = nn.Sequential(nn.Conv2d(out, out, k, padding=k // 2), _conv_norm(cfg["norm"], out),
                                 act())
            layers.append(_wrap(body, cfg, out, 1))
        c_in = out
    return nn.Sequential(*layers, _pooled_head(c_in, num_classes))


class _Tokens(nn.Module):
    """Patchify ``B×C×H×W`` into ``B×N×D`` tokens with learned position embeddings."""

    def __init__(self, c_in: int, side: int, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c_in, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (side // patch) ** 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class _TokenClassifier(nn.Module):
    """Tokens → blocks → LayerNorm → mean over tokens → linear head."""

    def __init__(self, tokens: nn.Module, blocks: Sequence[nn.Module], dim: int, num_classes: int
                 ) -> None:
        super().__init__()
        self.tokens, self.blocks = tokens, nn.Sequential(*blocks)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.tokens(x))).mean(1))


def _attention(cfg: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import Block

    c_in, side = _image_shape(input_shape, "procedural attention")
    patch = min(cfg["patch"], side // 2)
    dim, act = cfg["dim"], _ACTS[cfg["act"]]
    blocks: list[nn.Module] = []
    for _ in range(cfg["depth"]):
        if cfg["norm"] == "pre":  # timm's ViT block: pre-norm, optional layer scale
            block = Block(dim, cfg["heads"], mlp_ratio=cfg["mlp_ratio"], qkv_bias=True,
                          init_values=cfg.get("gamma"), act_layer=act)
            if cfg["init"] == "zero_residual":
                nn.init.zeros_(block.attn.proj.weight)
                nn.init.zeros_(block.mlp.fc2.weight)
        else:  # post-norm (the original Transformer layer); no layer scale exists for it
            block = nn.TransformerEncoderLayer(dim, cfg["heads"], int(dim * cfg["mlp_ratio"]),
                                               dropout=0.0, activation=act(), batch_first=True)
            if cfg["init"] != "default":
                nn.init.zeros_(block.linear2.weight)
        blocks.append(block)
    return _TokenClassifier(_Tokens(c_in, side, patch, dim), blocks, dim, num_classes)


def _mixer(cfg: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    from timm.models.mlp_mixer import MixerBlock

    c_in, side = _image_shape(input_shape, "procedural mixer")
    patch = min(cfg["patch"], side // 2)
    dim, n_tokens = cfg["dim"], (side // patch) ** 2
    blocks = []
    for _ in range(cfg["depth"]):
        block = MixerBlock(dim, n_tokens, mlp_ratio=(cfg["token_ratio"], cfg["channel_ratio"]),
                           act_layer=_ACTS[cfg["act"]])
        if cfg["init"] != "default":  # MixerBlock has no layer scale: both count as zero branches
            nn.init.zeros_(block.mlp_tokens.fc2.weight)
            nn.init.zeros_(block.mlp_channels.fc2.weight)
        blocks.append(block)
    return _TokenClassifier(_Tokens(c_in, side, patch, dim), blocks, dim, num_classes)


class RecurrentLM(nn.Module):
    """Causal recurrent LM: embedding, ``layers`` stacked single-layer GRUs or LSTMs (separate
    modules so capture sees each), a linear head over the vocabulary.

    Example:
        >>> lm = RecurrentLM("lstm", vocab_size=12, embed=8, hidden=16, layers=2)
        >>> lm(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 12])
    """

    def __init__(self, cell: str, vocab_size: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnns = nn.ModuleList(rnn(embed if i == 0 else hidden, hidden, batch_first=True)
                                  for i in range(layers))
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for rnn in self.rnns:
            h = rnn(h)[0]
        return self.head(h)


def build_procedural(family: str, input_shape: Sequence[int], num_classes: int, seed: int
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """Sample and build one network of ``family``; returns ``(model, description)``, the
    description being :func:`sample_config`'s dict plus the parameter count (for the run's meta).

    Same ``(family, input_shape, num_classes, seed)`` → same architecture and same weights.

    Example:
        >>> a, _ = build_procedural("gru", (32,), 20, seed=1)
        >>> b, _ = build_procedural("gru", (32,), 20, seed=1)
        >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    cfg = sample_config(family, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family in ("gru", "lstm"):
            _seq_len(input_shape, f"procedural {family}")
            model = RecurrentLM(family, num_classes, cfg["embed"], cfg["hidden"], cfg["layers"])
        else:
            model = {"mlp": _mlp, "conv": _conv, "attention": _attention, "mixer": _mixer}[family](
                cfg, input_shape, num_classes)
    return model, {**cfg, "params": sum(p.numel() for p in model.parameters())}
