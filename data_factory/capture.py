"""Internal-state capture: hooks three layers of any PyTorch model and emits frames.

:class:`StateCapture` is a context manager around a training loop. On every ``every``-th step it
records, for three layers at roughly 25/50/75 % of depth, the layer's output (activation) and
``dL/d(output)`` (gradient), reduces each to a small map (see :mod:`data_factory.frames`) and
returns a 6-channel :class:`~data_factory.frames.Frame` from :meth:`StateCapture.step`.

Which tensor is "the layer's output" follows paper Appendix B.3: for residual blocks the hook sits
on the residual branch *before* the skip addition (see :data:`RESIDUAL_ADAPTERS`); anything else
falls back to leaf modules that own parameters (linear, conv, recurrent, embedding layers). Depth
order is the order in which modules run, observed on the first forward pass, not the order in
which they were registered.

Small models are captured too: with fewer than three such leaves, parameter-free leaves
(activations, pooling) count as well, and a model that still has fewer than three (a two-layer
GRU classifier, a logistic regression) fills the missing depth slots by repeating its layers, so
a slot reads the same maps as its neighbour; a warning says so. Only a model with no capturable
leaf at all needs ``layers=``.

Example:
    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
    ...                       nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> frames = []
    >>> with StateCapture(model, every=2, frame_size=8) as cap:
    ...     for _ in range(4):
    ...         loss = nn.functional.cross_entropy(model(torch.randn(5, 8)), torch.zeros(5, dtype=torch.long))
    ...         opt.zero_grad(); loss.backward()
    ...         frame = cap.step()
    ...         if frame is not None:
    ...             frames.append(frame)
    ...         opt.step()
    >>> cap.layers, [f.step for f in frames], tuple(frames[0].tensor.shape)
    (('2', '4', '6'), [0, 2], (6, 8, 8))
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from data_factory.frames import Frame, FrameEncoder, Summary, summarise

if TYPE_CHECKING:
    from data_factory.privacy import DPTelemetry

logger = logging.getLogger(__name__)

#: Relative depths of the three hooked layers (paper Appendix B.3).
DEPTHS: tuple[float, float, float] = (0.25, 0.50, 0.75)

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


# Leaves whose output is (up to scale) their input: never a layer of their own.
_ECHO_TYPES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten,
                                            nn.Unflatten)


@dataclass(frozen=True)
class HookPoint:
    """A module whose output is captured, and how to read its layout.

    Attributes:
        name: fully qualified module name (as in ``model.named_modules()``).
        module: the module itself.
        batch_first: ``False`` when its 3-D output is ``L×B×D``.
    """

    name: str
    module: nn.Module
    batch_first: bool = True


def _transformer_layer_branch(block: nn.Module) -> tuple[str, bool]:
    # dropout1 wraps the self-attention branch output right before "x + ...".
    return "dropout1", bool(getattr(block.self_attn, "batch_first", False))


def _residual_adapters() -> dict[type[nn.Module], Callable[[nn.Module], tuple[str, bool]]]:
    """Block type → (submodule on the residual branch before the skip addition, batch_first)."""
    adapters: dict[type[nn.Module], Callable[[nn.Module], tuple[str, bool]]] = {
        nn.TransformerEncoderLayer: _transformer_layer_branch,
        nn.TransformerDecoderLayer: _transformer_layer_branch,
    }
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        adapters[BasicBlock] = lambda b: ("bn2", True)   # F(x) = bn2(conv2(...)), then += identity
        adapters[Bottleneck] = lambda b: ("bn3", True)
    except ImportError:  # pragma: no cover - torchvision is a core dependency
        pass
    try:
        from timm.models.convnext import ConvNeXtBlock
        from timm.models.mlp_mixer import MixerBlock
        from timm.models.vision_transformer import Block as ViTBlock

        adapters[ViTBlock] = lambda b: ("attn", True)            # paper: MHSA output (ViT/DeiT)
        adapters[MixerBlock] = lambda b: ("mlp_channels", True)  # last branch before the skip
        adapters[ConvNeXtBlock] = lambda b: ("drop_path", True)  # after mlp and layer-scale gamma
    except ImportError:  # pragma: no cover - timm is a core dependency
        pass
    return adapters


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a hook captures from a module's output: the output itself, else the first
    tensor of a tuple/list (GRU/LSTM ``(output, h)``, MHA ``(out, weights)``, named tuples), of a
    mapping's values (dicts, ``transformers`` ``ModelOutput``) or of a dataclass's fields, in
    their order. ``None`` when there is none (the layer then gives no map)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        items: Any = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = (getattr(output, f.name) for f in dataclasses.fields(output))
    else:
        return None
    return next((item for item in items if isinstance(item, torch.Tensor)), None)


def candidate_layers(model: nn.Module,
                     adapters: Mapping[type[nn.Module], Callable[[nn.Module], tuple[str, bool]]] | None = None,
                     ) -> list[HookPoint]:
    """Modules eligible for capture, in registration order (execution order is found later).

    Known residual blocks (at least three of them) win; otherwise every leaf module that owns
    parameters, except normalisation layers, is a candidate; with fewer than three of those,
    every leaf except normalisation, dropout and identity layers is.

    Example:
        >>> import torchvision
        >>> [p.name for p in candidate_layers(torchvision.models.resnet18())][:2]
        ['layer1.0.bn2', 'layer1.1.bn2']
    """
    adapters = {**_residual_adapters(), **(adapters or {})}
    blocks: list[HookPoint] = []
    for name, module in model.named_modules():
        adapter = next((fn for cls, fn in adapters.items() if type(module) is cls), None)
        if adapter is None:
            continue
        sub, batch_first = adapter(module)
        blocks.append(HookPoint(f"{name}.{sub}" if name else sub, module.get_submodule(sub), batch_first))
    if len(blocks) >= 3:
        return blocks
    leaves = [(name, module) for name, module in model.named_modules()
              if not any(True for _ in module.children()) and not isinstance(module, _NORM_TYPES)]
    owning = [(n, m) for n, m in leaves if any(True for _ in m.parameters(recurse=False))]
    if len(owning) < len(DEPTHS):
        # Activations and pooling still carry a map and a gradient; dropout and identity only
        # echo their neighbour.
        owning = [(n, m) for n, m in leaves if n and not isinstance(m, _ECHO_TYPES)]
    return [HookPoint(n, m, bool(getattr(m, "batch_first", True))) for n, m in owning]


def pick_depths(n: int, depths: Sequence[float] = DEPTHS) -> list[int]:
    """Indices of ``len(depths)`` distinct layers at the given relative depths among ``n``.

    With fewer than ``len(depths)`` layers each slot takes the layer at its depth, so layers
    repeat (shallow slots first get the shallowest).

    Example:
        >>> pick_depths(8), pick_depths(3), pick_depths(12), pick_depths(2), pick_depths(1)
        ([2, 4, 6], [0, 1, 2], [3, 6, 9], [0, 1, 1], [0, 0, 0])
    """
    if n < 1:
        raise ValueError("need at least one candidate layer, found 0")
    if n < len(depths):
        return [min(n - 1, math.floor(q * n)) for q in depths]
    picked: list[int] = []
    for q in depths:
        i = min(n - 1, math.floor(q * n))
        while i in picked:
            i += 1
        picked.append(i)
    if picked[-1] >= n:  # bumped past the end: take the last distinct ones instead
        picked = list(range(n - len(depths), n))
    return picked


class StateCapture:
    """Context manager that captures activations and gradients of three layers every few steps.

    Call :meth:`step` once per optimisation step, after ``loss.backward()`` (before or after
    ``optimizer.step()``; gradients w.r.t. outputs do not depend on it). It returns a
    :class:`~data_factory.frames.Frame` on capture steps (``step % every == 0``) and ``None``
    otherwise. On non-capture steps the hooks return at once and touch no tensor.

    Args:
        model: any ``nn.Module``.
        every: capture cadence in steps.
        frame_size: side ``S`` of the frames.
        layers: explicit module names to hook (exactly 3, shallow to deep); ``None`` picks three
            automatically at 25/50/75 % of execution depth.
        encoder: a :class:`FrameEncoder` to use (e.g. to share normalisation state); default new.
        adapters: extra ``{block_type: fn(block) -> (submodule_name, batch_first)}`` residual
            adapters for user block types.
        start_step: value of the step counter at entry (for resumed runs).
        stats: also record raw per-layer summaries (:data:`~data_factory.frames.STAT_NAMES`) in
            ``Frame.stats``, for scalar baselines; off by default since only the factory needs them.
        privacy: a :class:`~data_factory.privacy.DPTelemetry`: hooks keep only its clipped,
            noised maps and it accounts ε per capture step (``docs/privacy.md``); needs
            ``stats=False`` and a model without BatchNorm.

    Attributes:
        layers: the three hooked module names, shallow to deep (empty until the first forward
            pass when chosen automatically).
        step_count: number of :meth:`step` calls so far (plus ``start_step``).

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> with StateCapture(model, every=1, frame_size=8) as cap:
        ...     model(torch.randn(2, 3, 32, 32)).sum().backward()
        ...     frame = cap.step(epoch=0)
        >>> cap.layers
        ('layer2.0.bn2', 'layer3.0.bn2', 'layer4.0.bn2')
    """

    def __init__(self, model: nn.Module, every: int = 10, frame_size: int = 32,
                 layers: Sequence[str] | None = None, encoder: FrameEncoder | None = None,
                 adapters: Mapping[type[nn.Module], Callable[[nn.Module], tuple[str, bool]]] | None = None,
                 start_step: int = 0, stats: bool = False,
                 privacy: DPTelemetry | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if layers is not None and len(layers) != 3:
            raise ValueError(f"layers must name exactly 3 modules, got {list(layers)}")
        self.model = model
        self.every = every
        self.encoder = encoder or FrameEncoder(frame_size=frame_size)
        self.step_count = start_step
        self.stats = stats
        if privacy is not None:
            if stats:
                raise ValueError("stats=True records un-noised per-layer statistics; "
                                 "it cannot be combined with privacy")
            privacy.check_model(model)
        self.privacy = privacy
        self._explicit = list(layers) if layers is not None else None
        self._adapters = adapters
        self._points: list[HookPoint] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._acts: dict[int, Summary] = {}
        self._grads: dict[int, Summary] = {}
        self._discovering = False
        self._order: list[int] = []
        self._candidates: list[HookPoint] = []
        self._warned: set[str] = set()

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> StateCapture:
        if self._handles:
            raise RuntimeError("StateCapture is already active")
        if self._explicit is not None:
            self._install(self._resolve(self._explicit))
        elif self._points:  # re-entered after discovery: keep the same layers
            self._install(self._points)
        else:
            self._candidates = candidate_layers(self.model, self._adapters)
            if not self._candidates:
                raise ValueError(
                    f"{type(self.model).__name__} has no capturable layers (no leaf module); "
                    "pass layers=[three module names]")
            self._discovering = True
            self._install(self._candidates)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook; the model is exactly as before entering."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._acts.clear()
        self._grads.clear()

    # -- hooks -------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        """The three hooked module names, shallow to deep."""
        return tuple(p.name for p in self._points)

    @property
    def armed(self) -> bool:
        """Whether the current step is a capture step."""
        return self.step_count % self.every == 0

    def _resolve(self, names: Sequence[str]) -> list[HookPoint]:
        modules = dict(self.model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {missing} in {type(self.model).__name__}; "
                             "see model.named_modules() for valid names")
        # An adapter target knows its layout (e.g. a seq-first transformer layer's dropout1).
        known = {p.name: p for p in candidate_layers(self.model, self._adapters)}
        return [known.get(n) or HookPoint(n, modules[n], bool(getattr(modules[n], "batch_first", True)))
                for n in names]

    def _install(self, points: Sequence[HookPoint]) -> None:
        for i, point in enumerate(points):
            self._handles.append(point.module.register_forward_hook(self._make_hook(i, point.batch_first)))
        if not self._discovering:
            self._points = list(points)

    def _make_hook(self, index: int, batch_first: bool) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._discovering and index not in self._order:
                self._order.append(index)
            if not self.armed or not torch.is_grad_enabled():
                return  # non-capture step or evaluation pass: no tensor work at all
            tensor = _first_tensor(output)
            if tensor is None:
                return
            try:
                if self.privacy is not None:  # only noised maps leave the hook
                    dp = self.privacy
                    self._acts[index] = dp.release(tensor, batch_first, ("act", id(module)))
                    if tensor.requires_grad:
                        tensor.register_hook(lambda g: self._grads.__setitem__(
                            index, dp.release(g, batch_first, ("grad", id(module)), gradient=True)))
                    return
                self._acts[index] = summarise(tensor, batch_first, self.stats)
                if tensor.requires_grad:
                    tensor.register_hook(
                        lambda g: self._grads.__setitem__(index, summarise(g, batch_first, self.stats)))
            except Exception as err:  # capture must never break training
                self._warn_once("hook", f"capture hook on layer {index} failed: {err!r}")
        return hook

    def _finish_discovery(self) -> None:
        if not self._order:
            raise RuntimeError("no forward pass of the model ran inside StateCapture before step()")
        # _order holds candidate indices in execution order; keep 3 at 25/50/75 % of it.
        chosen = [self._order[i] for i in pick_depths(len(self._order))]
        if len(set(chosen)) < len(chosen):
            names = [self._candidates[c].name for c in chosen]
            logger.warning("%s runs only %d capturable layers; the three depth slots read %s "
                           "(pass layers= to choose others)", type(self.model).__name__,
                           len(self._order), names)
        self._acts = {k: self._acts[c] for k, c in enumerate(chosen) if c in self._acts}
        self._grads = {k: self._grads[c] for k, c in enumerate(chosen) if c in self._grads}
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._discovering = False
        self._install([self._candidates[c] for c in chosen])
        self._candidates = []

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # -- stepping ----------------------------------------------------------------------------
    def step(self, epoch: int | None = None) -> Frame | None:
        """Close the current step; return its frame on capture steps, else ``None``.

        Args:
            epoch: the epoch index to stamp on the frame (optional).
        """
        if self._discovering:
            self._finish_discovery()
        frame = None
        if self.armed:
            frame = self._emit(epoch)
            if self.privacy is not None:
                self.privacy.end_step(released=frame is not None, step=self.step_count)
        self.step_count += 1
        self._acts.clear()
        self._grads.clear()
        return frame

    def _emit(self, epoch: int | None) -> Frame | None:
        if not self._acts:
            self._warn_once("noact", "capture step without a grad-enabled forward pass; no frame")
            return None
        if len(self._acts) < 3:
            self._warn_once("partial", f"only layers {sorted(self._acts)} ran on a capture step")
        if len(self._grads) < len(self._acts):
            self._warn_once("nograd", "some hooked layers received no gradient (call step() after "
                                      "backward(); layers off the loss path give silent maps)")
        acts = [self._acts.get(i) for i in range(3)]
        fallback = next(a for a in acts if a is not None)
        acts = [a if a is not None else (torch.zeros_like(fallback[0]), [0.0] * len(fallback[1]))
                for a in acts]
        grads = [self._grads.get(i) for i in range(3)]
        return self.encoder.build(acts, grads, step=self.step_count, epoch=epoch, layers=self.layers)

    # -- resumption --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (step counter, chosen layers, normalisation statistics)."""
        state = {"step_count": self.step_count, "layers": list(self.layers),
                 "encoder": self.encoder.state_dict()}
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; call before entering the context."""
        if self._handles:
            raise RuntimeError("load_state_dict must be called before entering the context")
        self.step_count = int(state["step_count"])
        if state.get("layers"):
            self._explicit = list(state["layers"])
        self.encoder.load_state_dict(state["encoder"])
        if self.privacy is not None and "privacy" in state:
            self.privacy.load_state_dict(state["privacy"])
