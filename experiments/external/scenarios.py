"""What happens to a run: healthy training, or a fault injected the way it happens to users.

============  ================  =============================================================
kind          truth class       what is done
============  ================  =============================================================
healthy       Healthy           the recipe as tuned
lr_jump       Instability       from ``fault_epoch`` on the learning rate is ``factor`` × the
                                schedule's (×10–×30; a mistyped resume, a schedule bug)
lr_high       Instability       the learning rate is ``factor`` × the tuned one from the start
overfit       Overfitting       a tiny training subset, no dropout, no weight decay, no label
                                smoothing, trained long
label_noise   Unknown (novel)   from ``fault_epoch`` on, ``fraction`` of the training labels
                                are redrawn at random (a broken label pipeline)
freeze        Unknown (novel)   from ``fault_epoch`` on, the layer with the most parameters
                                stops learning (``requires_grad=False``)
stall         Unknown (novel)   from ``fault_epoch`` on, the loader yields one batch over and
                                over (a stalled data loader)
============  ================  =============================================================

The truth class is what the fault is *meant* to cause; :mod:`experiments.external.truth`
decides from what the run actually did whether it did.

Example:
    >>> import torch
    >>> s = Scenario("stall", fault_epoch=2)
    >>> inj = Injector(s, n_train=100, batch_size=10, seed=0)
    >>> a, b = inj.batch(2, 0, torch.arange(100)), inj.batch(2, 5, torch.arange(100))
    >>> bool((a == b).all()), s.truth_class
    (True, 'Unknown')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from data_factory.labels import HEALTHY, INSTABILITY, OVERFITTING, UNKNOWN

__all__ = ["KINDS", "NOVEL", "Injector", "Scenario"]

#: Scenario kinds and the class each is meant to cause.
KINDS: dict[str, str] = {"healthy": HEALTHY, "lr_jump": INSTABILITY, "lr_high": INSTABILITY,
                         "overfit": OVERFITTING, "label_noise": UNKNOWN, "freeze": UNKNOWN,
                         "stall": UNKNOWN}
#: The novel fault kinds (no method was built for them).
NOVEL: frozenset[str] = frozenset({"label_noise", "freeze", "stall"})


@dataclass(frozen=True)
class Scenario:
    """One run's scenario.

    Attributes:
        kind: one of :data:`KINDS`.
        fault_epoch: first epoch of a mid-run fault (``lr_jump``, ``label_noise``, ``freeze``,
            ``stall``); ``None`` otherwise.
        factor: learning-rate multiplier of ``lr_jump`` / ``lr_high``.
        fraction: share of labels redrawn by ``label_noise``.
        subset: training samples kept by ``overfit``.
    """

    kind: str = "healthy"
    fault_epoch: int | None = None
    factor: float = 1.0
    fraction: float = 0.0
    subset: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario {self.kind!r}; choose from {sorted(KINDS)}")
        mid = self.kind in ("lr_jump", "label_noise", "freeze", "stall")
        if mid and (self.fault_epoch is None or self.fault_epoch < 1):
            raise ValueError(f"scenario {self.kind!r} needs fault_epoch >= 1")
        if not mid and self.fault_epoch is not None:
            raise ValueError(f"scenario {self.kind!r} takes no fault_epoch")

    @property
    def truth_class(self) -> str:
        """The class the fault is meant to cause."""
        return KINDS[self.kind]

    @property
    def novel(self) -> bool:
        """Whether it is a novel fault family."""
        return self.kind in NOVEL

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields."""
        return asdict(self)


def largest_layer(model: nn.Module) -> str:
    """Name of the module owning the most parameters directly (the one ``freeze`` freezes).

    Example:
        >>> largest_layer(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 30)))
        '2'
    """
    best, size = "", -1
    for name, m in model.named_modules():
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if n > size:
            best, size = name, n
    return best


class Injector:
    """Applies a :class:`Scenario` inside a user-written training loop.

    Args:
        scenario: what to inject.
        n_train: training samples (after any subset).
        batch_size: the loop's batch size.
        seed: seed of the injected randomness (noisy labels, the stalled batch).
    """

    def __init__(self, scenario: Scenario, n_train: int, batch_size: int, seed: int) -> None:
        self.s = scenario
        self.n, self.bs = int(n_train), int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed) + 7919)
        self._stalled: torch.Tensor | None = None
        self.frozen: str | None = None

    def active(self, epoch: int) -> bool:
        """Whether a mid-run fault is on in ``epoch``."""
        return self.s.fault_epoch is not None and epoch >= self.s.fault_epoch

    def lr_scale(self, epoch: int) -> float:
        """Multiplier applied to the scheduled learning rate in ``epoch``."""
        if self.s.kind == "lr_high" or (self.s.kind == "lr_jump" and self.active(epoch)):
            return float(self.s.factor)
        return 1.0

    def labels(self, epoch: int, y: torch.Tensor, n_classes: int) -> torch.Tensor:
        """The training labels the loop sees in ``epoch`` (redrawn once, when the fault starts)."""
        if self.s.kind != "label_noise" or not self.active(epoch):
            return y
        if not hasattr(self, "_noisy"):
            flip = torch.rand(len(y), generator=self.gen) < self.s.fraction
            rand = torch.randint(0, n_classes, (len(y),), generator=self.gen)
            self._noisy = torch.where(flip, rand, y)
        return self._noisy

    def batch(self, epoch: int, b: int, order: torch.Tensor) -> torch.Tensor:
        """Indices of batch ``b`` of ``epoch`` given the epoch's shuffled ``order``."""
        if self.s.kind == "stall" and self.active(epoch):
            if self._stalled is None:
                self._stalled = order[b * self.bs:(b + 1) * self.bs].clone()
            return self._stalled
        return order[b * self.bs:(b + 1) * self.bs]

    def epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Freeze the largest layer when ``freeze`` starts."""
        if self.s.kind == "freeze" and self.active(epoch) and self.frozen is None:
            self.frozen = largest_layer(model)
            for p in model.get_submodule(self.frozen).parameters(recurse=False):
                p.requires_grad_(False)
                p.grad = None
