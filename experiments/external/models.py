"""The external suite's model zoo: networks as users write them, none built by the factory.

Every family is built from a well-kept library or plain ``torch.nn`` the way a user would adapt it
to small inputs (a 3×3 stem for 8×8 digits, 2× upsampling in front of ConvNeXt, ``pretrained=False``
everywhere: nothing is downloaded). ``data_factory.architectures`` is never imported.

==================  =================================================================  =========
family              what                                                               inputs
==================  =================================================================  =========
mlp                 ``nn.Sequential`` Linear/ReLU stacks of several widths, ± dropout  tabular
mlp_norm            ``nn.Sequential`` with BatchNorm or LayerNorm, GELU/SiLU, ± dropout  tabular
resnet18            torchvision ``resnet18`` (3×3 stem, no max-pool for 8×8 inputs)     image
mobilenet_v3_small  torchvision ``mobilenet_v3_small``                                   image
vit_tiny            timm ``vit_tiny_patch16_224`` at ``img_size=16, patch_size=8``        image
convnext_atto       timm ``convnext_atto`` behind a 2× ``nn.Upsample`` (needs ≥ 32 px)     image
regnetx_002         timm ``regnetx_002``                                                 image
mixer               timm ``MlpMixer`` (patch 4, 4 blocks, width 128)                     image
gn_cnn              a GroupNorm/SiLU CNN (``nn.Sequential``)                             image
conv1d              a Conv1d/BatchNorm/ReLU signal net                                   signal
lstm                embedding + ``nn.LSTM`` classifier (last hidden state)               tokens
gru                 ``nn.GRU`` classifier on real-valued sequences or tokens             signal
transformer         embedding + ``nn.TransformerEncoder`` text classifier (mean pool)    tokens
resmlp              pre-norm residual MLP blocks (LayerNorm, GELU)                       tabular
lenet               LeNet-5 style: Conv 5×5 / pool / Linear 120-84, tanh or ReLU          image
vgg_bn              VGG-style Conv3×3/BatchNorm/ReLU stacks with max-pool                image
tcn                 dilated residual Conv1d blocks (dilation 1, 2, 4, 8)                 signal
rnn                 embedding + Elman ``nn.RNN`` (tanh) classifier                       tokens
==================  =================================================================  =========

The last five build only the external-train pool (:data:`experiments.external.suite.POOL`): no
external half uses them.

Example:
    >>> from experiments.external.data import load_data
    >>> m = build_model("mlp", load_data("wine"), variant=1, seed=0)
    >>> type(m).__name__, m(load_data("wine").x_val[:2]).shape
    ('Sequential', torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from experiments.external.data import DataSet

__all__ = ["FAMILIES", "build_model"]

# widths of the MLP variants: (hidden widths, dropout)
_MLP = [((128, 128, 128), 0.0), ((256, 256), 0.0), ((64, 64, 64, 64), 0.0),
        ((128, 128, 128), 0.2), ((512,), 0.0), ((256, 128, 64), 0.1)]
# (hidden widths, norm, activation, dropout)
_MLP_NORM = [((128, 128), "batch", nn.GELU, 0.0), ((256, 256, 256), "layer", nn.SiLU, 0.1),
             ((64, 64, 64), "batch", nn.ReLU, 0.0), ((128, 64), "layer", nn.GELU, 0.2)]


def _mlp_stack(d: DataSet, widths: Sequence[int], hidden: Callable[[int, int], list[nn.Module]],
               p: float, dropout: bool) -> nn.Module:
    """Flatten, then ``hidden(n_in, w)`` per width (and ``Dropout(p)`` when ``p and dropout``),
    then the classifier head."""
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = int(torch.tensor(d.input_shape).prod())
    for w in widths:
        layers += hidden(n_in, w)
        if p and dropout:
            layers.append(nn.Dropout(p))
        n_in = w
    layers.append(nn.Linear(n_in, d.n_classes))
    return nn.Sequential(*layers)


def _mlp(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    widths, p = _MLP[variant % len(_MLP)]
    return _mlp_stack(d, widths, lambda n_in, w: [nn.Linear(n_in, w), nn.ReLU()], p, dropout)


def _mlp_norm(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    widths, norm, act, p = _MLP_NORM[variant % len(_MLP_NORM)]

    def hidden(n_in: int, w: int) -> list[nn.Module]:
        return [nn.Linear(n_in, w), nn.BatchNorm1d(w) if norm == "batch" else nn.LayerNorm(w),
                act()]

    return _mlp_stack(d, widths, hidden, p, dropout)


def _resnet18(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=d.n_classes)
    c = d.input_shape[0]
    if d.input_shape[-1] <= 16 or c != 3:
        # the usual small-image adaptation: a 3×3 stride-1 stem and no max-pool
        m.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    return m


def _mobilenet(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=d.n_classes,
                                                 dropout=0.2 if dropout else 0.0)


def _timm(name: str, **kwargs: object) -> Callable[[DataSet, int, bool], nn.Module]:
    def build(d: DataSet, variant: int, dropout: bool) -> nn.Module:
        import timm

        extra = dict(kwargs)
        if "img_size" in extra:
            extra["img_size"] = d.input_shape[-1]
        return timm.create_model(name, pretrained=False, num_classes=d.n_classes,
                                 in_chans=d.input_shape[0],
                                 drop_rate=0.1 if dropout else 0.0, **extra)
    return build


def _convnext(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    # ConvNeXt downsamples 32×: a user feeding 16-px images upsamples them first
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                         _timm("convnext_atto")(d, variant, dropout))


def _mixer(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=d.n_classes, img_size=d.input_shape[-1], in_chans=d.input_shape[0],
                    patch_size=4, num_blocks=4, embed_dim=128 if variant % 2 == 0 else 96,
                    drop_rate=0.1 if dropout else 0.0)


def _gn_cnn(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    c = d.input_shape[0]
    w = 32 if variant % 2 == 0 else 48

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU()]

    return nn.Sequential(*block(c, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w),
                         *block(2 * w, 2 * w), nn.MaxPool2d(2), *block(2 * w, 4 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *([nn.Dropout(0.2)] if dropout else []), nn.Linear(4 * w, d.n_classes))


def _conv1d(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    c, w = d.input_shape[0], 32 if variant % 2 == 0 else 64
    return nn.Sequential(
        nn.Conv1d(c, w, 7, padding=3), nn.BatchNorm1d(w), nn.ReLU(),
        nn.Conv1d(w, w, 5, padding=2, stride=2), nn.BatchNorm1d(w), nn.ReLU(),
        nn.Conv1d(w, 2 * w, 5, padding=2, stride=2), nn.BatchNorm1d(2 * w), nn.ReLU(),
        nn.Conv1d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm1d(2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), *([nn.Dropout(0.2)] if dropout else []),
        nn.Linear(2 * w, d.n_classes))


class RecurrentClassifier(nn.Module):
    """An LSTM / GRU / Elman-RNN classifier on token ids (embedding) or real-valued ``(B, L, F)`` sequences,
    reading the last layer's final hidden state.

    Example:
        >>> m = RecurrentClassifier("gru", n_classes=3, n_features=1)
        >>> m(torch.randn(2, 10, 1)).shape
        torch.Size([2, 3])
    """

    def __init__(self, cell: str, n_classes: int, vocab: int = 0, n_features: int = 0,
                 hidden: int = 64, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32) if vocab else None
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(32 if vocab else n_features, hidden, num_layers=layers, batch_first=True,
                       dropout=dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        out, _ = self.rnn(h)
        return self.head(out[:, -1])


class TextTransformer(nn.Module):
    """Embedding + learned positions + ``nn.TransformerEncoder`` + mean pooling + linear head.

    Example:
        >>> TextTransformer(vocab=10, n_classes=2, length=8)(torch.zeros(3, 8, dtype=torch.long)).shape
        torch.Size([3, 2])
    """

    def __init__(self, vocab: int, n_classes: int, length: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos).mean(1))


def _lstm(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    return RecurrentClassifier("lstm", d.n_classes, vocab=d.vocab,
                               n_features=0 if d.vocab else d.input_shape[-1],
                               hidden=64 if variant % 2 == 0 else 96,
                               dropout=0.2 if dropout else 0.0)


def _gru(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    return RecurrentClassifier("gru", d.n_classes, vocab=d.vocab,
                               n_features=0 if d.vocab else d.input_shape[-1],
                               hidden=64 if variant % 2 == 0 else 48,
                               dropout=0.2 if dropout else 0.0)


def _transformer(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    return TextTransformer(d.vocab, d.n_classes, d.input_shape[0],
                           dim=64 if variant % 2 == 0 else 96, depth=2 + variant % 2,
                           dropout=0.1 if dropout else 0.0)


#: Builders by family: ``(data, variant, dropout) -> nn.Module``.
class ResidualMLP(nn.Module):
    """Linear stem, ``depth`` pre-norm residual blocks ``x + MLP(LayerNorm(x))``, linear head.

    Example:
        >>> ResidualMLP(5, n_classes=3, width=16, depth=2)(torch.randn(4, 5)).shape
        torch.Size([4, 3])
    """

    def __init__(self, n_in: int, n_classes: int, width: int = 128, depth: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                          nn.Dropout(dropout), nn.Linear(2 * width, width))
            for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class TemporalConvNet(nn.Module):
    """Residual blocks of two dilated ``Conv1d`` (dilation 1, 2, 4, …), global average pool.

    Example:
        >>> TemporalConvNet(1, n_classes=4, width=8, levels=2)(torch.randn(2, 1, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_chans: int, n_classes: int, width: int = 32, levels: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Conv1d(in_chans, width, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(width, width, 3, padding=2 ** i, dilation=2 ** i), nn.ReLU(),
                          nn.Dropout(dropout),
                          nn.Conv1d(width, width, 3, padding=2 ** i, dilation=2 ** i), nn.ReLU())
            for i in range(levels))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean(-1))


def _resmlp(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    width, depth = [(128, 2), (256, 3), (64, 4)][variant % 3]
    return ResidualMLP(int(torch.tensor(d.input_shape).prod()), d.n_classes, width, depth,
                       0.1 if dropout else 0.0)


def _lenet(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    act = nn.Tanh if variant % 2 == 0 else nn.ReLU
    pool = nn.AvgPool2d if variant < 2 else nn.MaxPool2d
    side = d.input_shape[-1] // 4
    return nn.Sequential(nn.Conv2d(d.input_shape[0], 6, 5, padding=2), act(), pool(2),
                         nn.Conv2d(6, 16, 5, padding=2), act(), pool(2), nn.Flatten(),
                         nn.Linear(16 * side * side, 120), act(),
                         *([nn.Dropout(0.2)] if dropout else []), nn.Linear(120, 84), act(),
                         nn.Linear(84, d.n_classes))


def _vgg_bn(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    w = 16 if variant % 2 == 0 else 32

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(d.input_shape[0], w), nn.MaxPool2d(2), *block(w, 2 * w),
                         *block(2 * w, 2 * w), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2 * w * (d.input_shape[-1] // 4) ** 2, 128), nn.ReLU(),
                         *([nn.Dropout(0.3)] if dropout else []), nn.Linear(128, d.n_classes))


def _tcn(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    return TemporalConvNet(d.input_shape[0], d.n_classes, 32 if variant % 2 == 0 else 48,
                           dropout=0.1 if dropout else 0.0)


def _rnn(d: DataSet, variant: int, dropout: bool) -> nn.Module:
    return RecurrentClassifier("rnn", d.n_classes, vocab=d.vocab,
                               n_features=0 if d.vocab else d.input_shape[-1],
                               hidden=64 if variant % 2 == 0 else 96, layers=1 + variant % 2,
                               dropout=0.2 if dropout and variant % 2 else 0.0)


FAMILIES: dict[str, Callable[[DataSet, int, bool], nn.Module]] = {
    "mlp": _mlp,
    "mlp_norm": _mlp_norm,
    "resnet18": _resnet18,
    "mobilenet_v3_small": _mobilenet,
    "vit_tiny": _timm("vit_tiny_patch16_224", img_size=16, patch_size=8),
    "convnext_atto": _convnext,
    "regnetx_002": _timm("regnetx_002"),
    "mixer": _mixer,
    "gn_cnn": _gn_cnn,
    "conv1d": _conv1d,
    "lstm": _lstm,
    "gru": _gru,
    "transformer": _transformer,
    "resmlp": _resmlp,
    "lenet": _lenet,
    "vgg_bn": _vgg_bn,
    "tcn": _tcn,
    "rnn": _rnn,
}


def build_model(family: str, data: DataSet, variant: int = 0, seed: int = 0,
                dropout: bool = True) -> nn.Module:
    """Build family ``family`` for ``data`` (its ``variant``: widths / depths), seeded.

    ``dropout=False`` drops every dropout layer (the overfitting scenario trains without
    regularisation).

    Raises:
        ValueError: for an unknown family (the message lists the choices).

    Example:
        >>> build_model("alexnet", None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown model family 'alexnet'; choose from ['conv1d', 'convnext_atto', ...]
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(FAMILIES)}")
    torch.manual_seed(seed)
    return FAMILIES[family](data, variant, dropout)
