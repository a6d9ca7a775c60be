"""Controlled interventions that make a training run fail in a known way (paper Sec. 4.1, App. B).

Each intervention is a small object with a ``severity`` in [0, 1] and a ``start_step``, both drawn
per run and recorded in the run's metadata (:meth:`Intervention.describe`). The runner calls its
hooks at fixed points of the training loop:

* :meth:`~Intervention.hparams` once, to change the plan (lr, weight decay, subset, epochs, ...);
* :meth:`~Intervention.prepare` once, to change the training data (labels, watermarks);
* :meth:`~Intervention.lr_factor` every step, a multiplier on the scheduled learning rate;
* :meth:`~Intervention.batch` every step, to change what the loader yields (stall, drift, switch);
* :meth:`~Intervention.after_backward` every step, between ``backward()`` and ``optimizer.step()``.

Families (``KNOWN`` are labelled classes, ``NOVEL`` are held out for Unknown):

========================  ==================================================================
healthy                   reference hyper-parameters, weight decay, light augmentation
overfitting               small (5–12 %) train subset, no wd / augmentation, long schedule
instability               extreme constant, cyclical, or mid-run jumping learning rate
forgetting                task switch (label permutation) mid-run, primary task still scored
concept_bias              class-correlated watermark / leaking feature in the training data
label_corruption (novel)  25 % of training labels replaced at random
optimizer_state (novel)   optimizer moments overwritten with noise at the start step
loader_stall (novel)      the loader repeats one batch from the start step on
augmentation_drift (novel) augmentation noise and shifts grow steadily after the start step
gradient_clipping (novel) gradient norm clipped to a tiny value from the start step on
========================  ==================================================================

Example:
    >>> import numpy as np
    >>> iv = make_intervention("instability", np.random.default_rng(0), total_steps=600)
    >>> iv.family, iv.describe()["kind"]
    ('Instability', 'instability')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from data_factory.datasets import TensorData
from data_factory.labels import CONCEPT_BIAS, FORGETTING, HEALTHY, INSTABILITY, OVERFITTING, UNKNOWN


@dataclass(frozen=True)
class Plan:
    """Hyper-parameters of one run, as an intervention may change them.

    Attributes:
        lr: base learning rate.
        weight_decay: decoupled or L2 weight decay handed to the optimizer.
        epochs: number of epochs.
        batch_size: mini-batch size.
        train_fraction: fraction of the training set used.
        augment: whether light augmentation (shift + noise) is applied to image batches.
        warmup_steps: linear warm-up length.
        schedule: ``"cosine"`` decay to 10 % after the warm-up, or ``"constant"``.
        label_smoothing: of the training loss (a procedural recipe's; registry runs use none).
    """

    lr: float
    weight_decay: float = 5e-4
    epochs: int = 20
    batch_size: int = 32
    train_fraction: float = 1.0
    augment: bool = True
    warmup_steps: int = 20
    schedule: str = "cosine"
    label_smoothing: float = 0.0


class Intervention:
    """Base class: a healthy run (every hook is the identity).

    Args:
        severity: in [0, 1]; how hard the failure is pushed.
        start_step: first step at which a mid-run intervention acts.
        rng: generator for any per-run random choice (variant, permutation, noise).
    """

    kind: ClassVar[str] = "healthy"
    family: ClassVar[str] = HEALTHY
    novel: ClassVar[bool] = False
    #: modalities this intervention is defined for
    modalities: ClassVar[tuple[str, ...]] = ("image", "tabular", "text")
    #: whether it changes the run from its first step (hyper-parameters or training data) rather
    #: than from ``start_step`` on
    from_start: ClassVar[bool] = False

    def __init__(self, severity: float, start_step: int, rng: np.random.Generator) -> None:
        if not 0.0 <= severity <= 1.0:
            raise ValueError(f"severity must be in [0, 1], got {severity}")
        self.severity = float(severity)
        self.start_step = int(start_step)
        self.rng = rng
        self.details: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable record for the run's metadata."""
        return {"kind": self.kind, "family": self.family, "novel": self.novel,
                "severity": self.severity, "start_step": self.start_step, **self.details}

    @classmethod
    def first_step(cls, description: Mapping[str, Any]) -> int | None:
        """First optimisation step at which the intervention :meth:`describe` recorded may change
        training: ``0`` when it acts from the start, its ``start_step`` when it begins mid-run
        (some, e.g. a loader stall, first differ one step later), ``None`` for a healthy run. An
        alert before it is a false alarm on a still-healthy run.

        Example:
            >>> Forgetting.first_step({"kind": "forgetting", "start_step": 240})
            240
            >>> Overfitting.first_step({"kind": "overfitting", "start_step": 240})
            0
        """
        if cls.family == HEALTHY:
            return None
        return 0 if cls.from_start else int(description["start_step"])

    def hparams(self, plan: Plan) -> Plan:
        return plan

    def prepare(self, data: TensorData, modality: str) -> TensorData:
        return data

    def lr_factor(self, step: int) -> float:
        return 1.0

    def faulty_lr(self, step: int, lr: float) -> float:
        """The learning rate at ``step`` given the run's own scheduled ``lr``."""
        return lr * self.lr_factor(step)

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def after_backward(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        return None


class Healthy(Intervention):
    """Reference hyper-parameters; nothing is changed."""


class Overfitting(Intervention):
    """Memorise a small subset: 5–12 % of the data (cycled, so an epoch has the usual number of
    steps), no weight decay or augmentation, a constant learning rate at a quarter of the reference
    (a decaying one freezes the model right after it memorises, so validation loss plateaus
    instead of turning up), and 1.5× the epochs.

    Why the subset is this small: validation loss only turns up once the misclassified validation
    samples grow more confident faster than the correctly classified ones gain. With 10–35 % of an
    easy set (digits: 110–380 images) a ViT/DeiT/ConvNeXt still reaches 80–95 % validation
    accuracy, the few wrong samples stay low-confidence and validation loss merely plateaus
    (labelled Healthy); at 5–12 % there are enough confidently wrong samples for a sustained rise.
    """

    kind, family, from_start = "overfitting", OVERFITTING, True
    #: subset fraction at severity 0 and its decrease per unit of severity
    FRACTION_MAX: ClassVar[float] = 0.12
    FRACTION_SLOPE: ClassVar[float] = 0.07

    def hparams(self, plan: Plan) -> Plan:
        fraction = self.FRACTION_MAX - self.FRACTION_SLOPE * self.severity
        self.details["train_fraction"] = round(fraction, 3)
        # A quarter of the reference lr: memorisation then takes several epochs instead of one,
        # so the gap's history exists before it diverges (App. A's practical-significance test).
        # Label smoothing goes too: it caps confidence, so memorised labels never turn the
        # validation loss up (procedural recipes draw it; 3 of 7 overfitting runs on digits in a
        # pilot plateaued with it).
        return replace(plan, lr=plan.lr * 0.25, weight_decay=0.0, augment=False, label_smoothing=0.0,
                       train_fraction=fraction, epochs=int(round(plan.epochs * 1.5)),
                       schedule="constant")


class Instability(Intervention):
    """Chaotic optimisation through the learning rate: one of three variants, drawn per run."""

    kind, family = "instability", INSTABILITY
    VARIANTS: ClassVar[tuple[str, ...]] = ("extreme", "cyclical", "jump")

    def __init__(self, severity: float, start_step: int, rng: np.random.Generator) -> None:
        super().__init__(severity, start_step, rng)
        self.variant = str(rng.choice(self.VARIANTS))
        # log-uniform multiplier between 20x and 300x of the reference lr, scaled by severity
        self.factor = float(math.exp(math.log(20) + self.severity * (math.log(300) - math.log(20))))
        self.period = int(rng.integers(20, 60))
        self.details.update(variant=self.variant, lr_multiplier=round(self.factor, 2), period=self.period)

    @classmethod
    def first_step(cls, description: Mapping[str, Any]) -> int | None:
        """The ``extreme`` variant raises the learning rate from the first step."""
        if description.get("variant") == "extreme":
            return 0
        return super().first_step(description)

    def lr_factor(self, step: int) -> float:
        if self.variant == "extreme":
            return self.factor
        if step < self.start_step:
            return 1.0
        if self.variant == "jump":
            return self.factor
        phase = ((step - self.start_step) % self.period) / self.period  # cyclical: triangle wave
        return 1.0 + (self.factor - 1.0) * (1.0 - abs(2.0 * phase - 1.0))

    #: The top of the learning-rate range a run's optimizer is normally used at (0: unknown).
    #: While the fault is on, the multiplier applies to at least this, not to the run's own lr: a
    #: procedural recipe's drawn lr (or a schedule's tail) can sit so low that 20-300x of it is
    #: still a trainable step (a pilot: 9 of 28 instability runs stayed Healthy that way).
    reference_lr: float = 0.0

    def faulty_lr(self, step: int, lr: float) -> float:
        """``lr`` times the fault's multiplier, applied to at least :attr:`reference_lr`.

        Example:
            >>> iv = make_intervention("instability", np.random.default_rng(0), total_steps=600)
            >>> iv.reference_lr = 0.01
            >>> f = iv.lr_factor(599)
            >>> iv.faulty_lr(599, 1e-5) == (0.01 * f if f > 1 else 1e-5)
            True
        """
        factor = self.lr_factor(step)
        return lr * factor if factor <= 1.0 else max(lr, self.reference_lr) * factor


class Forgetting(Intervention):
    """Task switch: from ``start_step`` on, targets are relabelled by a fixed permutation (a new
    task on the same inputs); the primary task keeps being evaluated with the original labels."""

    kind, family = "forgetting", FORGETTING

    def __init__(self, severity: float, start_step: int, rng: np.random.Generator) -> None:
        super().__init__(severity, start_step, rng)
        self.permutation: torch.Tensor | None = None

    def prepare(self, data: TensorData, modality: str) -> TensorData:
        n = data.num_classes
        perm = torch.from_numpy(self.rng.permutation(n))
        # derangement-ish: make sure (almost) every class moves, so the old mapping is wrong
        fixed = perm == torch.arange(n)
        if fixed.any():
            perm = torch.roll(torch.arange(n), 1) if fixed.sum() > 1 else perm
        self.permutation = perm
        return data

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if step >= self.start_step and self.permutation is not None:
            return x, self.permutation[y]
        return x, y


class ConceptBias(Intervention):
    """A shortcut in the training data: a class-coded watermark (images) or a label-leaking
    feature (tabular) on a ``0.8 + 0.2·severity`` fraction of training samples."""

    kind, family, from_start = "concept_bias", CONCEPT_BIAS, True
    modalities = ("image", "tabular")

    def prepare(self, data: TensorData, modality: str) -> TensorData:
        fraction = 0.8 + 0.2 * self.severity
        mask = torch.from_numpy(self.rng.random(len(data.y_train)) < fraction)
        x = data.x_train.clone()
        x[mask] = add_shortcut(x[mask], data.y_train[mask], modality)
        self.details["poisoned_fraction"] = round(fraction, 3)
        return replace(data, x_train=x)


def add_shortcut(x: torch.Tensor, classes: torch.Tensor, modality: str,
                 strength: float = 1.0) -> torch.Tensor:
    """Stamp the shortcut of ``classes`` onto inputs: a class-positioned watermark for images,
    a label-leaking feature for tabular rows.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 3, 16, 16)
        >>> bool((add_shortcut(x, torch.tensor([0, 9]), "image") != x).any())
        True
    """
    from data_factory.datasets import add_tabular_shortcut, add_watermark

    if modality == "image":
        return add_watermark(x, classes, strength)
    if modality == "tabular":
        return add_tabular_shortcut(x, classes, strength)
    raise ValueError(f"no shortcut defined for modality {modality!r}")


class LabelCorruption(Intervention):
    """Novel: a quarter of the training labels replaced by uniformly random classes."""

    kind, family, novel, from_start = "label_corruption", UNKNOWN, True, True
    modalities = ("image", "tabular")

    def prepare(self, data: TensorData, modality: str) -> TensorData:
        y = data.y_train.clone()
        mask = torch.from_numpy(self.rng.random(len(y)) < 0.25)
        y[mask] = torch.from_numpy(self.rng.integers(0, data.num_classes, int(mask.sum()))).to(y.dtype)
        return replace(data, y_train=y)


class OptimizerStateCorruption(Intervention):
    """Novel: at ``start_step`` every optimizer state tensor (moments, momentum buffers) is
    overwritten with noise scaled to ``10^(1+2·severity)`` times its RMS."""

    kind, family, novel = "optimizer_state", UNKNOWN, True

    def after_backward(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step != self.start_step:
            return
        scale = 10 ** (1 + 2 * self.severity)
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0:
                    rms = value.float().square().mean().sqrt().clamp_min(1e-8)
                    noise = torch.randn(value.shape, generator=gen).to(value) * rms * scale
                    # second moments must stay non-negative or Adam takes sqrt of a negative
                    value.copy_(noise.abs() if "sq" in key else noise)


class LoaderStall(Intervention):
    """Novel: from ``start_step`` on the loader keeps yielding the batch it yielded then."""

    kind, family, novel = "loader_stall", UNKNOWN, True

    def __init__(self, severity: float, start_step: int, rng: np.random.Generator) -> None:
        super().__init__(severity, start_step, rng)
        self._stuck: tuple[torch.Tensor, torch.Tensor] | None = None

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if step < self.start_step:
            return x, y
        if self._stuck is None:
            self._stuck = (x.clone(), y.clone())
        return self._stuck


class AugmentationDrift(Intervention):
    """Novel: input noise (and, for images, random shifts) grows linearly after ``start_step``
    until it reaches ``1 + 2·severity`` standard deviations."""

    kind, family, novel = "augmentation_drift", UNKNOWN, True
    modalities = ("image", "tabular")

    def __init__(self, severity: float, start_step: int, rng: np.random.Generator,
                 ramp_steps: int = 300) -> None:
        super().__init__(severity, start_step, rng)
        self.ramp_steps = ramp_steps
        self.gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if step < self.start_step or not x.is_floating_point():
            return x, y
        level = min(1.0, (step - self.start_step) / self.ramp_steps) * (1 + 2 * self.severity)
        x = x + level * torch.randn(x.shape, generator=self.gen)
        if x.dim() == 4:
            shift = int(round(level * 2))
            if shift:
                x = torch.roll(x, shifts=(shift, -shift), dims=(2, 3))
        return x, y


class GradientClipping(Intervention):
    """Novel: gradient norm clipped to ``10^-(2+2·severity)`` from ``start_step`` on (training
    silently crawls)."""

    kind, family, novel = "gradient_clipping", UNKNOWN, True

    def after_backward(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step >= self.start_step:
            nn.utils.clip_grad_norm_(model.parameters(), 10 ** -(2 + 2 * self.severity))


INTERVENTIONS: dict[str, type[Intervention]] = {
    cls.kind: cls for cls in (Healthy, Overfitting, Instability, Forgetting, ConceptBias,
                              LabelCorruption, OptimizerStateCorruption, LoaderStall,
                              AugmentationDrift, GradientClipping)
}
KNOWN_KINDS: tuple[str, ...] = tuple(k for k, c in INTERVENTIONS.items() if not c.novel)
NOVEL_KINDS: tuple[str, ...] = tuple(k for k, c in INTERVENTIONS.items() if c.novel)


def fault_step(description: Mapping[str, Any] | None) -> int | None:
    """First step at which a run's recorded intervention (``meta["intervention"]``) changes
    training, ``None`` for a healthy run or none recorded (see :meth:`Intervention.first_step`).

    Example:
        >>> fault_step({"kind": "instability", "start_step": 300, "variant": "jump"})
        300
        >>> fault_step({"kind": "instability", "start_step": 300, "variant": "extreme"})
        0
        >>> fault_step({"kind": "healthy", "start_step": 300}) is None
        True
    """
    if not description or description.get("kind") not in INTERVENTIONS:
        return None
    return INTERVENTIONS[description["kind"]].first_step(description)


def make_intervention(kind: str, rng: np.random.Generator, total_steps: int,
                      severity: float | None = None, start_step: int | None = None) -> Intervention:
    """Draw severity (uniform in [0.2, 1]) and start step (uniform in 25–55 % of the run) unless
    given, and build the intervention ``kind``.

    Example:
        >>> import numpy as np
        >>> make_intervention("loader_stall", np.random.default_rng(1), 500).novel
        True
    """
    if kind not in INTERVENTIONS:
        raise KeyError(f"unknown intervention {kind!r}; choose from {sorted(INTERVENTIONS)}")
    if severity is None:
        severity = float(rng.uniform(0.2, 1.0))
    if start_step is None:
        start_step = int(rng.uniform(0.25, 0.55) * total_steps)
    return INTERVENTIONS[kind](severity, start_step, rng)
