"""The search problem: what is tuned (:class:`Problem`), its search space (:func:`suggest`) and
the configurations every strategy sees, drawn once per seed by a QMC sampler (:func:`draw_configs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.pruners import NopPruner

from data_factory.datasets import TensorData, load_dataset

#: Learning-rate schedules a problem can train with (:meth:`Problem.lr_factor`).
SCHEDULES = ("constant", "warmup_cosine", "step")


@dataclass(frozen=True)
class Problem:
    """What is being tuned and how one trial trains (everything a recording depends on).

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> p = Problem.from_cfg(load_config().problem)
        >>> p.arch, p.max_epochs, len(p.key())
        ('resnet', 27, 12)
    """

    dataset: str
    dataset_options: tuple[tuple[str, Any], ...]
    data_seed: int
    arch: str
    optimizer: str
    lr_range: tuple[float, float]
    weight_decay_range: tuple[float, float]
    train_sizes: tuple[int, ...]
    batch_size: int
    max_epochs: int
    source: str = "factory"
    schedule: str = "constant"
    warmup_epochs: int = 0
    step_epochs: int = 0
    step_gamma: float = 0.1

    @classmethod
    def from_cfg(cls, p: Any) -> Problem:
        """From the ``problem`` block of the configuration."""
        opts = OmegaConf.to_container(p.dataset_options, resolve=True) \
            if isinstance(p.dataset_options, DictConfig) else dict(p.dataset_options or {})
        out = cls(dataset=str(p.dataset), dataset_options=tuple(sorted(opts.items())),
                  data_seed=int(p.data_seed), arch=str(p.arch), optimizer=str(p.optimizer),
                  lr_range=(float(p.lr[0]), float(p.lr[1])),
                  weight_decay_range=(float(p.weight_decay[0]), float(p.weight_decay[1])),
                  train_sizes=tuple(int(n) for n in p.train_sizes),
                  batch_size=int(p.batch_size), max_epochs=int(p.max_epochs),
                  source=str(p.get("source", "factory")),
                  schedule=str(p.get("schedule", "constant")),
                  warmup_epochs=int(p.get("warmup_epochs", 0)),
                  step_epochs=int(p.get("step_epochs", 0)),
                  step_gamma=float(p.get("step_gamma", 0.1)))
        if out.source not in ("factory", "external"):
            raise ValueError(f"problem.source must be factory or external, got {out.source!r}")
        if out.schedule not in SCHEDULES:
            raise ValueError(f"problem.schedule must be one of {SCHEDULES}, got {out.schedule!r}")
        return out

    def key(self) -> str:
        """A short hash of every field (names the recordings directory); fields at their
        defaults are left out, so problems defined before they existed keep their key."""
        d = asdict(self)
        for f in fields(self):
            if f.default is not MISSING and d[f.name] == f.default:
                del d[f.name]
        return hashlib.sha256(repr(d).encode()).hexdigest()[:12]

    def load_data(self) -> TensorData:
        """The data set (train / val for decisions / test held out from every decision).

        ``source: external`` reads :func:`experiments.external.data.load_data` (train / val
        only) and splits its validation part in two halves, validation and test."""
        if self.source == "factory":
            return load_dataset(self.dataset, seed=self.data_seed, **dict(self.dataset_options))
        from experiments.external.data import load_data

        d = load_data(self.dataset, seed=self.data_seed)
        half = len(d.x_val) // 2
        return TensorData(d.name, d.x_train, d.y_train, d.x_val[:half], d.y_val[:half],
                          d.x_val[half:], d.y_val[half:], num_classes=d.n_classes)

    def build_model(self, data: TensorData) -> torch.nn.Module:
        """A fresh network (seeded by the caller): ``data_factory``'s registry, or for
        ``source: external`` :func:`experiments.external.models.build_model` (the external
        suite's user-style models, variant 0, their own seed left to the caller's)."""
        if self.source == "factory":
            from data_factory.architectures import build_model

            return build_model(self.arch, tuple(data.x_train.shape[1:]), data.num_classes)
        from experiments.external.data import load_data
        from experiments.external.models import FAMILIES

        d = load_data(self.dataset, seed=self.data_seed)
        return FAMILIES[self.arch](d, 0, True)

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning-rate multiplier at optimisation ``step`` (``schedule``): constant;
        ``warmup_cosine`` (linear warm-up over ``warmup_epochs``, then cosine to 0 at
        ``max_epochs``); ``step`` (× ``step_gamma`` every ``step_epochs``).

        Example:
            >>> p = Problem("d", (), 0, "a", "sgd", (1e-3, 1.0), (1e-5, 1e-1), (10,), 8, 10,
            ...             schedule="warmup_cosine", warmup_epochs=2)
            >>> [round(p.lr_factor(s, 1), 3) for s in (0, 1, 2, 6, 9)]
            [0.5, 1.0, 1.0, 0.5, 0.038]
        """
        epoch = step / steps_per_epoch
        if self.schedule == "warmup_cosine":
            warm = self.warmup_epochs * steps_per_epoch
            if step < warm:
                return (step + 1) / warm
            total = max(1, self.max_epochs * steps_per_epoch - warm)
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / total))
        if self.schedule == "step" and self.step_epochs > 0:
            return float(self.step_gamma ** int(epoch // self.step_epochs))
        return 1.0

    def steps_per_epoch(self, data: TensorData) -> int:
        """Steps of one epoch: one pass over the *full* training split, whatever the subset."""
        return math.ceil(len(data.x_train) / self.batch_size)


def suggest(trial: optuna.Trial, problem: Problem) -> dict[str, Any]:
    """The search space: sample (or, for an enqueued trial, read) one configuration.

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> p = Problem.from_cfg(load_config().problem)
        >>> sorted(suggest(optuna.trial.FixedTrial(
        ...     {"lr": 0.1, "weight_decay": 1e-4, "train_size": 400}), p))
        ['lr', 'train_size', 'weight_decay']
    """
    return {"lr": trial.suggest_float("lr", *problem.lr_range, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *problem.weight_decay_range,
                                                log=True),
            "train_size": trial.suggest_categorical("train_size", list(problem.train_sizes))}


@dataclass(frozen=True)
class TrialConfig:
    """One configuration of one seed's search, in trial order."""

    seed: int
    number: int
    lr: float
    weight_decay: float
    train_size: int

    @property
    def params(self) -> dict[str, Any]:
        """The Optuna parameters (enqueued into every study)."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "train_size": self.train_size}

    @property
    def weight_seed(self) -> int:
        """Weight-init seed; the formula of ``tevid_hpo.optuna_demo`` (seeded by trial number,
        not by study, so a trial trains identically under every strategy)."""
        return self.seed * 100_003 + self.number

    @property
    def order_seed(self) -> int:
        """Data-order seed (``tevid_hpo.optuna_demo``'s formula)."""
        return self.seed * 1_000_003 + self.number


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental/QMC warnings off, restored on exit."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # QMCSampler samples categorical parameters (train_size) independently, and says so.
            warnings.filterwarnings("ignore", message=".*QMCSampler.*")
            warnings.filterwarnings("ignore", message=".*independent sampler.*")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op torch thread, restored on exit.

    The models are tiny, so more threads only add synchronisation; on a machine whose cores
    are busy with other work, spinning OpenMP threads slow training down by an order of
    magnitude; and recorded epoch times then do not depend on the core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, scramble=True)


def draw_configs(problem: Problem, seed: int, n_trials: int) -> list[TrialConfig]:
    """The seed's configurations in trial order, drawn by ``QMCSampler(seed, scramble=True)``.

    The QMC points do not depend on results, so this is the order a live study with that sampler
    visits; every strategy's study gets exactly these, enqueued.

    Example:
        >>> from experiments.hpo_benchmark.config import load_config
        >>> p = Problem.from_cfg(load_config().problem)
        >>> a, b = draw_configs(p, 0, 3), draw_configs(p, 0, 3)
        >>> a == b, [c.number for c in a]
        (True, [0, 1, 2])
    """
    with _quiet_optuna():
        study = optuna.create_study(sampler=_sampler(seed), pruner=NopPruner())
        out = []
        for number in range(n_trials):
            trial = study.ask()
            params = suggest(trial, problem)
            study.tell(trial, 0.0)
            out.append(TrialConfig(seed, number, float(params["lr"]),
                                   float(params["weight_decay"]), int(params["train_size"])))
    return out
