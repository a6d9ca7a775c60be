"""Small CPU-trainable instances of real architecture families, in one registry.

Every entry of :data:`ARCHITECTURES` is a real family built from the library that defines it
(torchvision blocks, timm model classes, ``torch.nn`` transformer layers), instantiated small
enough that one training step at batch 32 on one CPU thread costs a few milliseconds, so that a
whole factory run takes about ten CPU-seconds. Models take:

* ``"image"``: ``B×C×H×W`` floats (the factory uses ``3×16×16``) → ``B×num_classes`` logits;
* ``"tabular"``: ``B×F`` floats (any trailing shape is flattened, so an MLP also reads images)
  → ``B×num_classes`` logits;
* ``"text"``: ``B×L`` token ids → ``B×L×vocab`` next-token logits (``num_classes`` is the
  vocabulary size); the models are causal, position ``t`` never sees tokens after ``t``.

Where the family has a residual block known to :mod:`data_factory.capture` (torchvision
``BasicBlock``, timm ViT ``Block`` / ``MixerBlock`` / ``ConvNeXtBlock``,
``nn.TransformerEncoderLayer``) the models use that exact class with at least three instances, so
capture hooks the residual branch before the skip addition; the other families are captured
through the generic leaf-layer fallback.

Example:
    >>> import torch
    >>> model = build_model("resnet", (3, 16, 16), num_classes=10)
    >>> model(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    >>> sorted({spec.modality for spec in ARCHITECTURES.values()})
    ['image', 'tabular', 'text']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES", "GRULM", "TCNLM", "ArchSpec", "CausalConvBlock", "TransformerLM",
    "alexnet_cnn", "build_model", "small_cnn",
]


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture.

    Attributes:
        name: registry key, e.g. ``"resnet"``.
        family: architecture family, e.g. ``"residual_cnn"``, ``"vit"``, ``"lm"``.
        modality: ``"image"``, ``"tabular"`` or ``"text"``: the inputs the model reads.
        build: ``build(input_shape, num_classes) -> nn.Module``; ``input_shape`` excludes the
            batch dimension (``(3, 16, 16)``, ``(32,)`` features, ``(32,)`` tokens).
        description: one line on what the instance is.

    Example:
        >>> spec = ARCHITECTURES["vit"]
        >>> spec.family, spec.modality
        ('vit', 'image')
    """

    name: str
    family: str
    modality: str
    build: Callable[..., nn.Module]
    description: str = ""


# -- shared small blocks -----------------------------------------------------------------------

def _image_shape(input_shape: Sequence[int], name: str) -> tuple[int, int]:
    """``(channels, side)`` of a square image shape, with a clear error for anything else."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(
            f"{name} needs a square image input_shape (C, H, H), got {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1])


def _seq_len(input_shape: Sequence[int], name: str) -> int:
    if len(input_shape) != 1:
        raise ValueError(f"{name} needs a token input_shape (L,), got {tuple(input_shape)}")
    return int(input_shape[0])


def _conv_bn_act(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    """3×3 conv → BatchNorm → ReLU (torchvision's own stem building block)."""
    from torchvision.ops import Conv2dNormActivation

    return Conv2dNormActivation(c_in, c_out, kernel_size=3, stride=stride)


def _pooled_head(c_in: int, num_classes: int) -> nn.Sequential:
    """Global average pool → flatten → linear: the classifier every CNN family here shares."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


def _named(*parts: tuple[str, nn.Module]) -> nn.Sequential:
    # Named children give readable capture layer names ("layer2.0.bn2" instead of "2.0.bn2").
    return nn.Sequential(OrderedDict(parts))


def _torchvision_init(model: nn.Module) -> nn.Module:
    """The initialisation torchvision's ResNet/MobileNetV2 constructors apply (He-normal,
    fan-out convs; unit/zero norms), for models assembled from their blocks here."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


# -- convolutional families --------------------------------------------------------------------

def small_cnn(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """AlexNet-like plain CNN: four conv–ReLU stages, two poolings, a linear head.

    No normalisation and no skip connections, as in AlexNet/VGG: the family whose dynamics differ
    most from the residual ones.

    Example:
        >>> import torch
        >>> small_cnn(in_channels=1, num_classes=10)(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def alexnet_cnn(input_shape: Sequence[int] = (3, 16, 16), num_classes: int = 10,
                widths: Sequence[int] = (16, 32, 32), hidden: int = 64) -> nn.Module:
    """AlexNet-like plain CNN: conv–ReLU layers with max-pooling after the first two, then a
    fully connected classifier (one hidden layer) on the flattened maps. No normalisation and no
    skip connections: the family whose dynamics differ most from the residual ones.

    Why not AlexNet's full 5 conv + 3 FC: at 16×16 the third pooling leaves 2×2 maps, and the
    deeper un-normalised stack trains markedly slower (shapes: 62 % vs 75 % val. accuracy after
    10 epochs); why not :func:`small_cnn`'s global pooling: it discards where things are, which
    shape recognition at this size needs (≈ 20 % after 10 epochs).

    Example:
        >>> import torch
        >>> alexnet_cnn((3, 16, 16), num_classes=10)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """
    channels, side = _image_shape(input_shape, "cnn")
    c1, c2, c3 = widths

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(channels, c1), nn.MaxPool2d(2), *conv(c1, c2), nn.MaxPool2d(2),
        *conv(c2, c3), *conv(c3, c3), nn.Flatten(),
        nn.Linear(c3 * (side // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def _resnet(input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 24, 32),
            blocks: Sequence[int] = (1, 2, 1)) -> nn.Module:
    """CIFAR-style ResNet from torchvision ``BasicBlock``s: a 3×3 stem, then stages that halve
    the resolution and widen, each opening with a strided block and a 1×1 projection shortcut."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    channels, _ = _image_shape(input_shape, "resnet")
    stages, c_in = [], widths[0]
    for i, (width, depth) in enumerate(zip(widths, blocks)):
        stride = 1 if i == 0 else 2
        layers = []
        for j in range(depth):
            s = stride if j == 0 else 1
            down = None
            if s != 1 or c_in != width:
                down = nn.Sequential(conv1x1(c_in, width, stride=s), nn.BatchNorm2d(width))
            layers.append(BasicBlock(c_in, width, stride=s, downsample=down))
            c_in = width
        stages.append((f"layer{i + 1}", nn.Sequential(*layers)))
    return _torchvision_init(_named(("stem", _conv_bn_act(channels, widths[0])), *stages,
                                    ("head", _pooled_head(c_in, num_classes))))


def _densenet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision ``DenseNet`` itself (BN-ReLU-conv bottleneck layers, dense blocks, transitions),
    growth rate 8, blocks (2, 2, 2), with one 3×3/stride-2 stem conv in place of the ImageNet
    7×7/stride-2 conv + max-pool, which would shrink 16×16 inputs to 4×4 at once: the blocks
    run at 8×8 → 4×4 → 2×2."""
    from torchvision.models import DenseNet

    channels, _ = _image_shape(input_shape, "densenet")
    model = DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2,
                     num_classes=num_classes)
    conv0 = nn.Conv2d(channels, 16, 3, stride=2, padding=1, bias=False)
    nn.init.kaiming_normal_(conv0.weight)  # what DenseNet's constructor does to its convs
    model.features.conv0 = conv0
    model.features.pool0 = nn.Identity()
    return model


def _mobilenet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """MobileNetV2 from torchvision ``InvertedResidual`` blocks (1×1 expand → depthwise 3×3 →
    linear 1×1 project, identity skip when shapes match). Settings ``(t, c, n, s)`` as in the
    paper's table, scaled down."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.ops import Conv2dNormActivation

    channels, _ = _image_shape(input_shape, "mobilenet")
    setting = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2))
    layers, c_in = [], 16
    for t, c, n, s in setting:
        for j in range(n):
            layers.append(InvertedResidual(c_in, c, stride=s if j == 0 else 1, expand_ratio=t))
            c_in = c
    last = 64
    # MobileNetV2's stem is strided too: the blocks then run at 8×8 → 4×4 → 2×2
    return _torchvision_init(_named(
        ("stem", _conv_bn_act(channels, 16, stride=2)), ("blocks", nn.Sequential(*layers)),
        ("last", Conv2dNormActivation(c_in, last, kernel_size=1, activation_layer=nn.ReLU6)),
        ("head", _pooled_head(last, num_classes))))


def _convnext(input_shape: Sequence[int], num_classes: int, dims: Sequence[int] = (16, 32, 48),
              depths: Sequence[int] = (1, 1, 1)) -> nn.Module:
    """ConvNeXt from timm's own parts: 2×2 patchify stem + LayerNorm, ``ConvNeXtStage``s
    (depthwise 7×7 → LayerNorm → inverted MLP → layer scale, LayerNorm + 2×2 strided
    downsampling between stages) and the norm → pool → linear ``NormMlpClassifierHead``.

    Why not ``timm.models.convnext.ConvNeXt`` itself: it always has four stages and downsamples
    in its first stage whenever the stem stride is below 4, so on 16×16 inputs it either runs the
    first stage at full resolution (12 ms/step) or collapses to 1×1 maps; three stages at
    8×8 → 4×4 → 2×2 keep the family's proportions.
    """
    from timm.layers import LayerNorm2d, NormMlpClassifierHead
    from timm.models.convnext import ConvNeXtStage

    channels, _ = _image_shape(input_shape, "convnext")
    stages, c_in = [], dims[0]
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        stages.append(ConvNeXtStage(c_in, dim, kernel_size=7, stride=1 if i == 0 else 2,
                                    depth=depth, ls_init_value=1e-6, norm_layer=LayerNorm2d))
        c_in = dim
    stem = nn.Sequential(nn.Conv2d(channels, dims[0], 2, stride=2), LayerNorm2d(dims[0]))
    return _named(("stem", stem),
                  ("stages", nn.Sequential(*stages)),
                  ("head", NormMlpClassifierHead(c_in, num_classes, pool_type="avg")))


def _regnet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision ``RegNet`` with explicit RegNetY-style block parameters (grouped bottleneck
    blocks with squeeze-excitation); the 3×3/stride-2 stem is RegNet's own."""
    from torchvision.models.regnet import BlockParams, RegNet

    channels, _ = _image_shape(input_shape, "regnet")
    params = BlockParams(depths=[1, 1, 2], widths=[16, 32, 48], group_widths=[8, 8, 8],
                         bottleneck_multipliers=[1.0, 1.0, 1.0], strides=[1, 2, 2], se_ratio=0.25)
    model = RegNet(params, num_classes=num_classes, stem_width=16)
    if channels != 3:  # torchvision's RegNet stem hard-codes RGB input
        model.stem[0] = nn.Conv2d(channels, 16, 3, stride=2, padding=1, bias=False)
        nn.init.kaiming_normal_(model.stem[0].weight, mode="fan_out", nonlinearity="relu")
    return model


# -- attention / mixing families ----------------------------------------------------------------

#: Shared size of the small vision transformers: 4×4 patches of a 16×16 image give 16 tokens.
#: ``weight_init="jax"`` (timm's Big Vision init: Xavier linears, LeCun patch embedding) rather
#: than timm's default truncated-normal(0.02): at width 32 the latter leaves the blocks near zero
#: and the models barely move in a 10-epoch run (digits val. acc. 42 % vs 81 % at 10 epochs).
_VIT_SIZE = {"patch_size": 4, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0,
             "weight_init": "jax"}


def _unzero_heads(model: nn.Module, *names: str) -> nn.Module:
    """Re-draw the classifier heads that the jax init zeroes: with a zero head every gradient
    inside the network is exactly zero on the first step, and the first captured frame is the
    run's normalisation reference (see :class:`~data_factory.frames.FrameEncoder`)."""
    for name in names:
        nn.init.trunc_normal_(model.get_submodule(name).weight, std=0.02)
    return model


def _vit(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """timm ``VisionTransformer`` with global average pooling instead of a [CLS] token (the
    Big Vision "GAP" variant), learned positions, pre-norm blocks, depth 4."""
    from timm.models.vision_transformer import VisionTransformer

    channels, side = _image_shape(input_shape, "vit")
    model = VisionTransformer(img_size=side, in_chans=channels, num_classes=num_classes, depth=4,
                              class_token=False, global_pool="avg", **_VIT_SIZE)
    return _unzero_heads(model, "head")


def _deit(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """timm DeiT (``VisionTransformerDistilled``): a [CLS] and a distillation token with two
    heads whose logits are averaged (without a teacher both heads learn the labels, as in
    DeiT's hard-label setting), depth 3."""
    from timm.models.deit import VisionTransformerDistilled

    channels, side = _image_shape(input_shape, "deit")
    model = VisionTransformerDistilled(img_size=side, in_chans=channels, num_classes=num_classes,
                                       depth=3, **_VIT_SIZE)
    return _unzero_heads(model, "head", "head_dist")


def _mixer(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """timm ``MlpMixer``: token-mixing and channel-mixing MLPs over 4×4 patches."""
    from timm.models.mlp_mixer import MlpMixer

    channels, side = _image_shape(input_shape, "mixer")
    model = MlpMixer(img_size=side, in_chans=channels, num_classes=num_classes, patch_size=4,
                     num_blocks=4, embed_dim=48, mlp_ratio=(0.5, 2.0))
    return _unzero_heads(model, "head")  # timm's Mixer init zeroes its head too


def _swin(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """timm ``SwinTransformer``: shifted-window attention in two stages with patch merging
    (4×4 tokens in 2×2 windows, then 2×2 tokens in one window)."""
    from timm.models.swin_transformer import SwinTransformer

    channels, side = _image_shape(input_shape, "swin")
    return SwinTransformer(img_size=side, in_chans=channels, num_classes=num_classes, patch_size=4,
                           window_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                           mlp_ratio=2.0, drop_path_rate=0.0)


# -- tabular ------------------------------------------------------------------------------------

def _mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256, 128)
         ) -> nn.Module:
    """Plain MLP (linear → LayerNorm → GELU per hidden layer) on flattened inputs, so it also
    trains on images."""
    in_features = math.prod(int(d) for d in input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.LayerNorm(width), nn.GELU()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


# -- language models ----------------------------------------------------------------------------

class TransformerLM(nn.Module):
    """Decoder-only (GPT-style) Transformer LM: token + learned position embeddings, pre-norm
    ``nn.TransformerEncoderLayer``s under a causal mask, tied-free linear head.

    Args:
        vocab_size: number of token ids (and of output logits).
        max_len: longest sequence accepted (size of the position table).
        dim, depth, heads, ff: model width, layers, attention heads, feed-forward width.

    Example:
        >>> import torch
        >>> lm = TransformerLM(vocab_size=50, max_len=16)
        >>> lm(torch.randint(0, 50, (2, 16))).shape
        torch.Size([2, 16, 50])
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int = 32, depth: int = 3, heads: int = 2,
                 ff: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        # nested tensors only help padded batches and warn with norm_first; none here
        self.blocks = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim),
                                            enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.pos.num_embeddings:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_len={self.pos.num_embeddings}")
        x = self.tok(tokens) + self.pos(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.head(self.blocks(x, mask=mask, is_causal=True))


class GRULM(nn.Module):
    """Character-level GRU language model: embedding, two stacked GRUs (separate modules so the
    capture sees each recurrent layer), linear head. Recurrence is causal by construction.

    Example:
        >>> import torch
        >>> GRULM(vocab_size=50)(torch.randint(0, 50, (2, 16))).shape
        torch.Size([2, 16, 50])
    """

    def __init__(self, vocab_size: int, dim: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.rnn1 = nn.GRU(dim, hidden, batch_first=True)
        self.rnn2 = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, _ = self.rnn1(self.embed(tokens))
        x, _ = self.rnn2(x)
        return self.head(x)


class CausalConvBlock(nn.Module):
    """Residual block of a temporal conv net on ``B×L×D`` sequences: a causal dilated ``Conv1d``
    (left padding only, so position ``t`` sees ``≤ t``), GELU, a position-wise linear map.

    Example:
        >>> import torch
        >>> block = CausalConvBlock(8, kernel=3, dilation=2)
        >>> x = torch.randn(2, 10, 8)
        >>> y = block(x)
        >>> x2 = x.clone(); x2[:, 6:] = 0            # the future does not reach position 5
        >>> bool(torch.allclose(block(x2)[:, :6], y[:, :6]))
        True
    """

    def __init__(self, dim: int, kernel: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.act = nn.GELU()
        self.mix = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(nn.functional.pad(x.transpose(1, 2), (self.pad, 0))).transpose(1, 2)
        return x + self.mix(self.act(h))


class TCNLM(nn.Module):
    """Temporal-convolution LM (WaveNet-style, ungated): token embedding, three
    :class:`CausalConvBlock` s with dilations 1, 2, 4 (receptive field 15 tokens), linear head.
    Neither attention nor recurrence: a third family of sequence model.

    Example:
        >>> import torch
        >>> TCNLM(vocab_size=50)(torch.randint(0, 50, (2, 16))).shape
        torch.Size([2, 16, 50])
    """

    def __init__(self, vocab_size: int, dim: int = 48, kernel: int = 3,
                 dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.Sequential(*(CausalConvBlock(dim, kernel, d) for d in dilations))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


def _transformer_lm(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return TransformerLM(num_classes, max_len=_seq_len(input_shape, "transformer_lm"))


def _gru_lm(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    _seq_len(input_shape, "gru_lm")  # any length works; still reject non-token shapes early
    return GRULM(num_classes)


def _tcn_lm(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    _seq_len(input_shape, "tcn_lm")
    return TCNLM(num_classes)


# -- registry -----------------------------------------------------------------------------------

ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (
    ArchSpec("cnn", "plain_cnn", "image", alexnet_cnn,
             "AlexNet-like: 4 conv, 2 max-pools, 2 FC, no norm/skip"),
    ArchSpec("resnet", "residual_cnn", "image", _resnet,
             "ResNet of 4 torchvision BasicBlocks, widths (16, 24, 32)"),
    ArchSpec("densenet", "dense_cnn", "image", _densenet,
             "torchvision DenseNet, growth 8, blocks (2, 2, 2)"),
    ArchSpec("mobilenet", "inverted_bottleneck", "image", _mobilenet,
             "MobileNetV2 of 5 torchvision InvertedResidual blocks"),
    ArchSpec("convnext", "convnext", "image", _convnext,
             "ConvNeXt of 3 timm ConvNeXtStages, dims (16, 32, 48), kernel 7"),
    ArchSpec("regnet", "regnet", "image", _regnet,
             "torchvision RegNet, RegNetY-style blocks with SE, widths (16, 32, 48)"),
    ArchSpec("vit", "vit", "image", _vit,
             "timm ViT (GAP), patch 4, dim 32, depth 4, 2 heads"),
    ArchSpec("deit", "vit_distilled", "image", _deit,
             "timm DeiT with distillation token, patch 4, dim 32, depth 3"),
    ArchSpec("mixer", "mlp_mixer", "image", _mixer,
             "timm MLP-Mixer, patch 4, dim 48, 4 blocks"),
    ArchSpec("swin", "hierarchical_vit", "image", _swin,
             "timm Swin, patch 4, window 2, dim 32, depths (2, 2) with patch merging"),
    ArchSpec("mlp", "mlp", "tabular", _mlp,
             "MLP 256-256-128 with LayerNorm/GELU on flattened inputs"),
    ArchSpec("transformer_lm", "transformer_lm", "text", _transformer_lm,
             "decoder-only Transformer LM, dim 32, 3 causal layers"),
    ArchSpec("gru_lm", "rnn_lm", "text", _gru_lm,
             "2-layer GRU char LM, hidden 48"),
    ArchSpec("tcn_lm", "conv_lm", "text", _tcn_lm,
             "causal dilated-conv LM, dim 48, dilations (1, 2, 4)"),
)}


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Instantiate the registered architecture ``name`` for inputs of ``input_shape``.

    Args:
        name: a key of :data:`ARCHITECTURES`.
        input_shape: one example's shape without the batch dimension.
        num_classes: output classes (vocabulary size for language models).

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
        ValueError: ``input_shape`` does not fit the architecture's modality.

    Example:
        >>> import torch
        >>> lm = build_model("gru_lm", (32,), num_classes=96)
        >>> lm(torch.randint(0, 96, (4, 32))).shape
        torch.Size([4, 32, 96])
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name].build(tuple(int(d) for d in input_shape), int(num_classes))
