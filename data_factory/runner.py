"""One factory run: train a registry model on a registry data set under an intervention,
capture its internal-state video and store everything the labelers and models need.

What is stored, and who may read it:

* ``frames.safetensors`` — the internal-state video: what TEViD reads (plus raw per-layer
  summaries, ``stats``, for the Stats-GBDT / rules baselines).
* ``steps.csv`` — per step ``step, epoch, loss, lr, grad_norm`` (causal, non-privileged) and
  ``lyapunov`` (privileged: the Algorithm 1 proxy, NaN where not probed).
* ``epochs.csv`` — per epoch ``train_loss, train_acc, val_loss, val_acc`` (+ ``val_ppl`` for
  language models, ``primary_acc`` on the original task after a task switch,
  ``clean_acc``/``poisoned_acc`` for concept-bias runs). Validation curves are privileged for TEViD, which never sees them.
* ``arrays.safetensors`` — per-sample probe correctness for the forgetting (McNemar) and concept
  bias (logistic regression) rules.
* ``meta.json`` — the run spec, the intervention record, ``privileged_columns``, timings (and
  ``privacy``, the mechanism's report, for a run captured in DP mode: :func:`execute_run`).

Example:
    >>> import tempfile
    >>> from data_factory.store import RunStore
    >>> spec = RunSpec("demo", "train", "cnn", "digits", "adamw", "healthy", seed=0, epochs=1)
    >>> row = execute_run(spec, RunStore(tempfile.mkdtemp()))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from data_factory.architectures import ARCHITECTURES, build_model
from data_factory.capture import StateCapture
from data_factory.datasets import DATASETS, TensorData, load_dataset
from data_factory.interventions import (ConceptBias, Forgetting, Instability, Plan, add_shortcut,
                                       make_intervention)
from data_factory.optimizers import OPTIMIZERS, build_optimizer
from data_factory.procedural import FAMILIES, build_procedural, family_of
from data_factory.recipes import (Recipe, build_recipe_optimizer, lr_factors, lr_range,
                                  recipe_family, sample_recipe)
from data_factory.store import RunStore
from data_factory.validated import Draw, draw_validated

if TYPE_CHECKING:
    from data_factory.privacy import DPTelemetry

logger = logging.getLogger(__name__)

PRIVILEGED_STEP_COLUMNS: tuple[str, ...] = ("lyapunov",)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one factory run (same spec + same seed → same run).

    Attributes:
        run_id: unique name; also the run's directory name.
        split: ``"train"``, ``"val"`` or ``"test"``.
        arch, dataset, optimizer: registry names; ``"procedural:<family>"`` for ``arch`` draws a
            network of that family (:mod:`data_factory.procedural`) and for ``optimizer`` a recipe
            of that optimizer family (:mod:`data_factory.recipes`, which also sets the batch
            size), both from the run's seed.
        intervention: an :data:`~data_factory.interventions.INTERVENTIONS` kind.
        seed: seeds model init, data order and the intervention's draws.
        epochs: base epoch count (interventions may change it).
        batch_size: mini-batch size.
        every: capture cadence in steps; frame_size: frame side ``S``.
        lyapunov_every, lyapunov_horizon: a window of ``horizon`` consecutive probed steps starts
            every ``lyapunov_every`` steps (0 disables the probe).
        severity, start_step: fix the intervention's draws (``None`` draws them).
    """

    run_id: str
    split: str
    arch: str
    dataset: str
    optimizer: str
    intervention: str
    seed: int = 0
    epochs: int = 16
    batch_size: int = 32
    every: int = 10
    frame_size: int = 32
    lyapunov_every: int = 200
    lyapunov_horizon: int = 10
    severity: float | None = None
    start_step: int | None = None
    data_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=8)
def _dataset(name: str, seed: int) -> TensorData:
    # Every run of a data set shares one split; loading is deterministic, so caching is safe.
    return load_dataset(name, seed=seed)


def _run_seed(spec: RunSpec) -> int:
    digest = hashlib.sha256(f"{spec.run_id}:{spec.seed}".encode()).hexdigest()
    return int(digest[:8], 16)


def _loss(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    if logits.dim() == 3:  # language model: B×L×V against B×L
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                           label_smoothing=smoothing)
    return nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256
              ) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and per-sample correctness (per token for language models)."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        losses.append(_loss(logits, y[i:i + batch]).item() * len(x[i:i + batch]))
        correct.append((logits.argmax(-1) == y[i:i + batch]).reshape(-1))
    model.train(was_training)
    right = torch.cat(correct)
    return sum(losses) / len(x), right.float().mean().item(), right


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if x.dim() != 4:
        return x + 0.02 * torch.randn(x.shape, generator=gen) if x.is_floating_point() else x
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3)) + 0.05 * torch.randn(x.shape, generator=gen)


def _lr_at(step: int, plan: Plan, total: int, factors: np.ndarray | None = None) -> float:
    if factors is not None:  # a procedural recipe's schedule, unless an intervention fixed it
        return plan.lr if plan.schedule == "constant" else plan.lr * float(factors[min(step, len(factors) - 1)])
    if step < plan.warmup_steps:
        return plan.lr * (step + 1) / plan.warmup_steps
    if plan.schedule == "constant":
        return plan.lr
    progress = (step - plan.warmup_steps) / max(1, total - plan.warmup_steps)
    return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _bias_probe(data: TensorData, modality: str, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation inputs with a shortcut that matches the true class on half of them and a
    different class on the other half; returns ``(inputs, indicator)``."""
    y = data.y_val
    agree = torch.from_numpy(rng.random(len(y)) < 0.5)
    other = (y + torch.from_numpy(rng.integers(1, data.num_classes, len(y)))) % data.num_classes
    marks = torch.where(agree, y, other)
    return add_shortcut(data.x_val.clone(), marks, modality), agree


#: Builds the run's :class:`~data_factory.privacy.DPTelemetry` from its training-set size ``N``
#: (``n_train``, known only once the intervention has chosen the training subset): the sampling
#: rate of the accountant is ``q = B/N``.
PrivacyFactory = Callable[[int], "DPTelemetry"]


def execute_run(spec: RunSpec, store: RunStore, overwrite: bool = False, *,
                privacy: PrivacyFactory | None = None) -> dict[str, Any]:
    """Run ``spec`` and publish it in ``store``; returns a summary row for the corpus index.

    Exceptions inside training are caught: nothing is published and the row says
    ``status="failed"`` with the error, so a corpus build goes on.

    ``privacy`` captures the run in DP mode (``docs/privacy.md``): it is called once with the
    run's training-set size and returns the run's own :class:`~data_factory.privacy.DPTelemetry`;
    the frames are then noised maps (without the raw per-layer ``stats``), and ``meta.json`` gains
    ``privacy``, the mechanism's :meth:`~data_factory.privacy.DPTelemetry.report`. Training is
    the same run either way (the noise has its own generator), so a DP re-run of a corpus run
    keeps its labels. Models with BatchNorm fail (they mix the samples of a batch).

    Example:
        >>> import tempfile
        >>> from data_factory.privacy import DPTelemetry
        >>> spec = RunSpec("dp", "train", "mlp", "tabular", "adamw", "healthy", epochs=1, every=5,
        ...                frame_size=16, lyapunov_every=0)
        >>> store = RunStore(tempfile.mkdtemp())
        >>> row = execute_run(spec, store, privacy=lambda n: DPTelemetry(1.0, 8.0,
        ...                   dataset_size=n, seed=0))
        >>> p = store.load("dp").meta["privacy"]
        >>> row["status"], p["compositions"] == row["n_frames"], p["epsilon"] > 0
        ('ok', True, True)
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"run_id": spec.run_id, "split": spec.split, "arch": spec.arch,
                           "dataset": spec.dataset, "optimizer": spec.optimizer,
                           "intervention": spec.intervention, "seed": spec.seed}
    try:
        row.update(_train(spec, store, overwrite, privacy))
        row["status"] = "ok"
    except Exception as err:  # a crashing run must not stop the corpus
        logger.error("run %s failed: %s", spec.run_id, err)
        row.update(status="failed", error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=5))
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _train(spec: RunSpec, store: RunStore, overwrite: bool,
           privacy: PrivacyFactory | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    proc_arch, proc_opt = family_of(spec.arch), recipe_family(spec.optimizer)
    arch_family = proc_arch or ARCHITECTURES[spec.arch].family
    arch_modality = FAMILIES[proc_arch] if proc_arch else ARCHITECTURES[spec.arch].modality
    dset = DATASETS[spec.dataset]
    if arch_modality != dset.modality and not (arch_modality == "tabular" and dset.modality == "image"):
        raise ValueError(f"{spec.arch} ({arch_modality}) cannot train on {spec.dataset} ({dset.modality})")
    modality = dset.modality
    seed = _run_seed(spec)
    data = _dataset(spec.dataset, spec.data_seed)
    # drawn before the rng below, from seeds of their own, so registry runs stay bit-identical
    draw: Draw | None = None
    if proc_arch and proc_opt:  # a procedural network and recipe: only a draw that learns
        draw = draw_validated(proc_arch, proc_opt, data, seed, _loss)
        recipe: Recipe | None = draw.recipe
    else:
        recipe = sample_recipe(proc_opt, seed, arch=proc_arch) if proc_opt else None
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    if recipe is None:
        base = Plan(lr=OPTIMIZERS[spec.optimizer].reference_lr, epochs=spec.epochs,
                    batch_size=spec.batch_size, augment=modality == "image")
    else:
        base = Plan(lr=recipe.lr, weight_decay=recipe.weight_decay, epochs=spec.epochs,
                    batch_size=recipe.batch_size, augment=modality == "image",
                    label_smoothing=recipe.label_smoothing)
    n_full = len(data.y_train)
    steps_full = math.ceil(n_full / base.batch_size)
    iv = make_intervention(spec.intervention, rng, total_steps=steps_full * base.epochs,
                           severity=spec.severity, start_step=spec.start_step)
    if recipe is not None and isinstance(iv, Instability):
        iv.reference_lr = 10 ** lr_range(recipe.family, proc_arch)[1]
    if modality not in iv.modalities:
        raise ValueError(f"intervention {iv.kind} is not defined for {modality} data")
    plan = iv.hparams(base)
    data = iv.prepare(data, modality)
    n_train = max(plan.batch_size, int(round(plan.train_fraction * n_full)))
    subset = torch.from_numpy(rng.permutation(n_full)[:n_train])
    x_train, y_train = data.x_train[subset], data.y_train[subset]
    # An epoch is always n_full samples: a small subset is cycled (several passes per epoch), so
    # memorisation gets as many optimisation steps as a healthy run gets data.
    steps_per_epoch = math.ceil(n_full / plan.batch_size)
    total_steps = steps_per_epoch * plan.epochs
    switch_epoch = None
    if isinstance(iv, Forgetting):
        # the task switch happens at an epoch boundary so "primary accuracy before/after" is clean
        lo = max(1, min(3, plan.epochs - 2))  # at least one epoch before, some epochs after
        switch_epoch = int(np.clip(round(iv.start_step / steps_per_epoch), lo, max(lo, plan.epochs - 6)))
        iv.start_step = switch_epoch * steps_per_epoch

    input_shape = tuple(data.x_train.shape[1:])
    arch_desc = None
    if draw is not None:
        model, arch_desc = draw.model, draw.arch_desc
    elif proc_arch:
        model, arch_desc = build_procedural(proc_arch, input_shape, data.num_classes, seed)
    else:
        model = build_model(spec.arch, input_shape, data.num_classes)
    if recipe is None:
        optimizer = build_optimizer(spec.optimizer, model.parameters(), lr=plan.lr,
                                    weight_decay=plan.weight_decay)
    else:
        optimizer = build_recipe_optimizer(recipe, model.parameters(), lr=plan.lr,
                                           weight_decay=plan.weight_decay)
    probe = _make_probe(spec, model, optimizer)
    # Every image/tabular run gets the shortcut probe: runs trained clean are the rule's negatives.
    bias_inputs = _bias_probe(data, modality, rng) if modality != "text" else None

    meta = {**{k: v for k, v in asdict(spec).items() if k not in ("severity", "start_step")},
            "arch_family": arch_family, "modality": modality, "input_shape": list(input_shape),
            "num_classes": data.num_classes, "intervention": iv.describe(), "novel": iv.novel,
            "plan": asdict(plan), "n_train": n_train, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "task_switch_epoch": switch_epoch,
            "params": sum(p.numel() for p in model.parameters()),
            "privileged_columns": list(PRIVILEGED_STEP_COLUMNS),
            "lyapunov": probe is not None}
    if arch_desc is not None:
        meta["procedural_arch"] = arch_desc
    if recipe is not None:
        meta["recipe"] = asdict(recipe)
    if draw is not None:
        meta["draw"] = {"attempt": draw.attempt, "accepted": draw.accepted, "probes": draw.probes}
    # The protected data set is the training subset the batches are drawn from: q = B/n_train.
    dp = privacy(n_train) if privacy is not None else None
    # Raw per-layer stats are un-noised, so DP mode records none (StateCapture refuses both).
    with store.create(spec.run_id, meta, overwrite=overwrite) as writer, \
            StateCapture(model, every=spec.every, frame_size=spec.frame_size, stats=dp is None,
                         privacy=dp) as cap:
        summary = _loop(spec, model, optimizer, iv, plan, data, x_train, y_train, writer, cap, probe,
                        gen, steps_per_epoch, total_steps, switch_epoch, modality, bias_inputs,
                        recipe)
        private = {} if dp is None else {"privacy": dp.report().to_dict()}
        writer.update_meta(layers=list(cap.layers), seconds=round(time.perf_counter() - started, 2),
                           **summary, **private)
    return {"n_frames": summary["n_frames"], "epochs_run": summary["epochs_run"],
            "final_val_acc": summary["final_val_acc"], "diverged_step": summary["diverged_step"],
            "family": iv.family, "novel": iv.novel}


def _make_probe(spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer):
    if spec.lyapunov_every <= 0:
        return None
    from data_factory.labelers.lyapunov import FunctionalOptimizer, LyapunovProbe

    try:
        FunctionalOptimizer.from_optimizer(optimizer, model)
    except (NotImplementedError, ValueError, TypeError, KeyError) as err:
        logger.info("no Lyapunov probe for %s: %s", spec.optimizer, err)
        return None
    return LyapunovProbe(model, lambda f, b: _loss(f(b[0]), b[1]), optimizer, seed=spec.seed)


def _loop(spec, model, optimizer, iv, plan, data, x_train, y_train, writer, cap, probe, gen,
          steps_per_epoch, total_steps, switch_epoch, modality, bias_inputs,
          recipe: Recipe | None = None) -> dict[str, Any]:
    step, diverged_step, bad_streak, frames = 0, None, 0, 0
    factors = None if recipe is None else lr_factors(recipe, total_steps)
    smoothing = plan.label_smoothing
    clip = 0.0 if recipe is None else recipe.clip_norm
    before_correct = None
    epoch = 0
    val_acc = float("nan")
    for epoch in range(plan.epochs):
        passes = math.ceil(steps_per_epoch * plan.batch_size / len(y_train))
        order = torch.cat([torch.randperm(len(y_train), generator=gen) for _ in range(passes)])
        order = order[: steps_per_epoch * plan.batch_size]
        ep_loss, ep_correct, ep_count = 0.0, 0.0, 0
        for i in range(0, len(order), plan.batch_size):
            idx = order[i:i + plan.batch_size]
            x, y = x_train[idx], y_train[idx]
            if plan.augment and modality == "image":
                x = _augment(x, gen)
            x, y = iv.batch(step, x, y)
            lr = iv.faulty_lr(step, _lr_at(step, plan, total_steps, factors))
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(x)
            loss = _loss(logits, y, smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            iv.after_backward(step, model, optimizer)
            if clip > 0:  # the recipe's clip (an intervention's own clip ran just before)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            grad_norm = float(torch.sqrt(sum((p.grad.detach().float() ** 2).sum()
                                             for p in model.parameters() if p.grad is not None)))
            lyap = float("nan")
            if probe is not None and step % spec.lyapunov_every < spec.lyapunov_horizon:
                if step % spec.lyapunov_every == 0:
                    probe.reset()  # a new window: the Jacobian product restarts
                try:
                    lyap = probe.step((x, y))
                except Exception as err:  # the probe is privileged garnish, never fatal
                    logger.debug("lyapunov probe failed at step %d: %s", step, err)
            frame = cap.step(epoch=epoch)
            if frame is not None:
                writer.add_frame(frame)
                frames += 1
            optimizer.step()
            value = loss.item()
            writer.log_step(step=step, epoch=epoch, loss=value, lr=lr, grad_norm=grad_norm, lyapunov=lyap)
            finite = math.isfinite(value)
            bad_streak = 0 if finite else bad_streak + 1
            if not finite and diverged_step is None:
                diverged_step = step
            if finite:
                ep_loss += value * len(y)
                ep_correct += (logits.detach().argmax(-1) == y).float().mean().item() * len(y)
                ep_count += len(y)
            step += 1
            if bad_streak >= 3 * spec.every:
                break  # dead run: enough non-finite frames are on record; save the compute
        row = _epoch_row(model, data, epoch, ep_loss, ep_correct, ep_count, switch_epoch, iv, modality,
                         bias_inputs)
        writer.log_epoch(**row)
        val_acc = row["val_acc"]
        if switch_epoch is not None and epoch == switch_epoch - 1:
            before_correct = _evaluate(model, data.x_val, data.y_val)[2]
        if switch_epoch is not None and before_correct is not None and \
                (epoch == min(plan.epochs - 1, switch_epoch + 9)):
            writer.add_array("forget_correct_before", before_correct.numpy())
            writer.add_array("forget_correct_after", _evaluate(model, data.x_val, data.y_val)[2].numpy())
            writer.update_meta(forget_eval_step=step - 1, forget_eval_epoch=epoch)
            before_correct = None
        if bad_streak >= 3 * spec.every:
            break
    if bias_inputs is not None:
        x_probe, agree = bias_inputs
        _, _, correct = _evaluate(model, x_probe, data.y_val)
        writer.add_array("bias_correct", correct.numpy())
        writer.add_array("bias_shortcut", agree.numpy())
        writer.add_array("bias_class", data.y_val.numpy())
    return {"n_frames": frames, "epochs_run": epoch + 1, "steps_run": step,
            "final_val_acc": val_acc, "diverged_step": diverged_step}


def _epoch_row(model, data, epoch, ep_loss, ep_correct, ep_count, switch_epoch, iv, modality,
               bias_inputs) -> dict[str, float]:
    y_val = data.y_val
    if switch_epoch is not None and epoch >= switch_epoch and isinstance(iv, Forgetting):
        y_val = iv.permutation[y_val]  # the current task's labels
    val_loss, val_acc, _ = _evaluate(model, data.x_val, y_val)
    row = {"epoch": epoch,
           "train_loss": ep_loss / ep_count if ep_count else float("nan"),
           "train_acc": ep_correct / ep_count if ep_count else float("nan"),
           "val_loss": val_loss, "val_acc": val_acc}
    if modality == "text":
        row["val_ppl"] = math.exp(min(val_loss, 50.0))
    if switch_epoch is not None:
        row["primary_acc"] = _evaluate(model, data.x_val, data.y_val)[1]
    if isinstance(iv, ConceptBias):  # the per-epoch view of the shortcut; the rule reads arrays
        row["clean_acc"] = val_acc
        poisoned = add_shortcut(data.x_val.clone(), data.y_val, modality)
        row["poisoned_acc"] = _evaluate(model, poisoned, data.y_val)[1]
    return row
