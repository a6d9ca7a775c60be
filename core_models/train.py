"""Training loops: DYNAMICS-MAE pretraining and TEViD fine-tuning (Appendix F.1, Table 14).

Both loops take any ``torch.utils.data.Dataset`` of clips — items are ``clip`` or
``(clip, label)`` with ``clip`` a ``W×6×S×S`` tensor (any float dtype) and ``label`` an int
index into :data:`~data_factory.labels.KNOWN_LABELS` (``-1`` = none/Unknown) — so they run on
the factory corpus and on random tensors alike. For a telemetry model ``clip`` is a dict
``{"clips": W×6×S×S, "telemetry": W×F}`` (:class:`~core_models.clips.ClipDataset` with
``telemetry=True``); its keys are the model's keyword inputs.

Shared machinery: AdamW with timm's weight-decay groups (no decay on biases, norms, tokens and
pos-embeds), per-step linear warm-up + cosine schedule, seeds, ``device="auto"``, bf16 autocast
on CUDA, a tqdm progress bar, and resumable checkpoints (``OUT/last.safetensors`` +
``OUT/last.json``: weights, optimizer tensors, RNG state, position in the epoch). Data order is a
pure function of ``(seed, epoch)`` and the global RNG is restored, so a run resumed after an
interruption ends with the same weights as an uninterrupted one. The trained model is written to
``OUT/model.safetensors`` + ``OUT/model.json``.

Example:
    >>> import tempfile, torch
    >>> from torch.utils.data import TensorDataset
    >>> from core_models.mae import DynamicsMAE
    >>> data = TensorDataset(torch.randn(4, 4, 6, 16, 16))
    >>> cfg = PretrainConfig(epochs=1, batch_size=2, warmup_epochs=0, progress=False)
    >>> result = pretrain(DynamicsMAE("tiny"), data, cfg, out_dir=tempfile.mkdtemp())
    >>> result.steps, result.checkpoint.name
    (2, 'model.safetensors')
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from core_models.checkpoint import load_checkpoint, resolve_device, save_checkpoint
from core_models.edl import edl_loss
from core_models.mae import DynamicsMAE
from core_models.model_io import save_model
from core_models.tevid import TEViD

__all__ = [
    "FinetuneConfig",
    "PretrainConfig",
    "TrainConfig",
    "TrainResult",
    "cosine_lr",
    "drop_modalities",
    "finetune",
    "predict",
    "pretrain",
    "seed_everything",
]

#: Parameters that never get weight decay (MAE's ``no_weight_decay``), besides biases and norms.
NO_WEIGHT_DECAY = ("cls_token", "mask_token", "pos_embed.*", "telemetry_embed.type_embed")


@dataclass
class TrainConfig:
    """Optimisation settings shared by both loops.

    Attributes:
        epochs: passes over the dataset.
        batch_size: clips per step.
        base_lr: learning rate per ``lr_batch_ref`` clips (MAE's "base lr").
        lr_batch_ref: the effective peak lr is ``base_lr * batch_size / lr_batch_ref``
            (MAE/VideoMAE convention); ``None`` uses ``base_lr`` as is.
        min_lr: floor of the cosine schedule.
        betas: AdamW betas.
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: linear warm-up length (fractional epochs allowed).
        grad_clip: clip the global gradient norm to this value (``None``: off).
        seed: seeds Python, numpy and torch at the start of the loop (masking, dropout) and
            fixes the data order, a function of ``(seed, epoch)``. Weight initialisation happens
            when the caller builds the model: seed before that for a reproducible init.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``, …
        num_workers: DataLoader worker processes.
        checkpoint_every: also checkpoint every this many steps (``0``: only at epoch ends).
        max_steps: stop (with a checkpoint) after this many global steps; resuming later
            continues the same schedule.
        progress: show a tqdm progress bar.
        amp: bf16 autocast on CUDA (ignored on CPU).
    """

    epochs: int = 50
    batch_size: int = 32
    base_lr: float = 1e-4
    lr_batch_ref: int | None = 256
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 0
    max_steps: int | None = None
    progress: bool = True
    amp: bool = True

    @property
    def peak_lr(self) -> float:
        """The learning rate reached after warm-up."""
        scale = self.batch_size / self.lr_batch_ref if self.lr_batch_ref else 1.0
        return self.base_lr * scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


@dataclass
class PretrainConfig(TrainConfig):
    """Table 14, DYNAMICS-MAE column (400 epochs at batch 1024 is the paper's GPU budget; the
    cpu pipeline passes far fewer). ``mask_ratio=None`` takes the profile's (0.9)."""

    epochs: int = 400
    batch_size: int = 1024
    base_lr: float = 1.5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40.0
    mask_ratio: float | None = None


@dataclass
class FinetuneConfig(TrainConfig):
    """Table 14, TEViD column, plus the EDL KL ramp (Appendix D.2: 0 → 1 over 10 epochs).

    Modality dropout, for a telemetry model (:func:`drop_modalities`; 0 = off):
    ``telemetry_dropout`` hides the training scalars of that share of the training clips, so the
    frames have to carry the diagnosis on their own too; ``frame_dropout`` zeroes the frames of
    another share (what the scalars-only variant sees), so the scalars have to stand alone and the
    frames can only add to them. No clip loses both, so the two shares sum to at most 1. A model
    that reads one modality only (frames-only, or ``channels="none"``) ignores both.
    """

    epochs: int = 50
    batch_size: int = 32
    base_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 5.0
    kl_anneal_epochs: float = 10.0
    telemetry_dropout: float = 0.0
    frame_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("telemetry_dropout", "frame_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.telemetry_dropout + self.frame_dropout > 1.0:
            raise ValueError("telemetry_dropout + frame_dropout must be at most 1 (no clip loses "
                             f"both), got {self.telemetry_dropout} + {self.frame_dropout}")


def drop_modalities(inputs: dict[str, torch.Tensor], telemetry: float = 0.0, frames: float = 0.0
                    ) -> dict[str, torch.Tensor]:
    """Modality dropout for a batch with ``clips`` and ``telemetry``: each clip draws one
    ``u ~ U(0, 1)``; its scalars are hidden where ``u < telemetry`` (every feature 0, which
    :mod:`core_models.telemetry` reads as "unknown") and its frames zeroed where
    ``u >= 1 - frames`` (as the scalars-only variant sees them), so no clip loses both when
    ``telemetry + frames <= 1``. Without telemetry, or with both shares 0, ``inputs`` as is.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> batch = {"clips": torch.ones(4, 2, 1), "telemetry": torch.ones(4, 2, 3)}
        >>> out = drop_modalities(batch, telemetry=0.5)
        >>> out["telemetry"].sum(dim=(1, 2)).tolist()   # each clip: all hidden or all kept
        [0.0, 6.0, 0.0, 0.0]
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> out = drop_modalities(batch, telemetry=0.5, frames=0.5)
        >>> out["clips"].sum(dim=(1, 2)).tolist(), out["telemetry"].sum(dim=(1, 2)).tolist()
        ([2.0, 0.0, 2.0, 2.0], [0.0, 6.0, 0.0, 0.0])
        >>> drop_modalities(batch) is batch
        True
    """
    tele = inputs.get("telemetry")
    if tele is None or (telemetry <= 0 and frames <= 0):
        return inputs
    u = torch.rand(tele.shape[0], device=tele.device)
    out = dict(inputs)
    if telemetry > 0:
        out["telemetry"] = tele * (u >= telemetry).to(tele.dtype).view(-1, *([1] * (tele.dim() - 1)))
    if frames > 0:
        clips = inputs["clips"]
        out["clips"] = clips * (u < 1.0 - frames).to(clips.dtype).view(-1, *([1] * (clips.dim() - 1)))
    return out


@dataclass
class TrainResult:
    """What a training call returns.

    Attributes:
        steps: global optimisation steps done (including those before a resume).
        epochs: completed epochs.
        finished: ``True`` when the full schedule ran (``False`` after ``max_steps``).
        history: one dict per completed epoch (``epoch``, ``loss``, ``lr``, ``seconds``, and for
            fine-tuning with a validation set ``val_loss``, ``val_acc``, ``val_vacuity``).
        checkpoint: the final model checkpoint (``None`` when not finished or no ``out_dir``).
        resumed_from: the step training resumed from (0 for a fresh start).
    """

    steps: int
    epochs: int
    finished: bool
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    resumed_from: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0
              ) -> float:
    """Linear warm-up to ``peak`` then half-cosine decay to ``floor`` (per step).

    Example:
        >>> [round(cosine_lr(s, 10, 2, 1.0), 3) for s in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _split_batch(batch: Any) -> tuple[torch.Tensor | Mapping[str, torch.Tensor],
                                      torch.Tensor | None]:
    """Accept ``clips`` or ``(clips, labels, ...)`` from the DataLoader (``clips`` may be a
    dict of model inputs)."""
    if isinstance(batch, (torch.Tensor, Mapping)):
        return batch, None
    if len(batch) == 1:
        return batch[0], None
    return batch[0], torch.as_tensor(batch[1])


def _inputs(x: torch.Tensor | Mapping[str, torch.Tensor], device: torch.device | str
            ) -> dict[str, torch.Tensor]:
    """The model's keyword inputs (``clips``, and ``telemetry`` when given) on ``device``."""
    items = dict(x) if isinstance(x, Mapping) else {"clips": x}
    return {k: v.to(device, non_blocking=True) for k, v in items.items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into safetensors-able tensors and JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g)
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _fit(model: nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path | None,
         resume: bool, loss_fn: Callable[[nn.Module, dict[str, torch.Tensor],
                                          torch.Tensor | None, int], torch.Tensor | None],
         end_of_epoch: Callable[[nn.Module, int], dict[str, float]] | None, desc: str,
         ) -> TrainResult:
    """The loop both public functions share; ``loss_fn(model, inputs, labels, epoch)`` with
    ``inputs`` the model's keyword inputs (:func:`_inputs`)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device).train()
    groups = param_groups_weight_decay(model, cfg.weight_decay,
                                       no_weight_decay_list=NO_WEIGHT_DECAY)
    opt = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=tuple(cfg.betas))
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("empty dataset")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    stop_at = total if cfg.max_steps is None else min(total, cfg.max_steps)
    out = Path(out_dir) if out_dir is not None else None
    step, history, losses = 0, [], []

    if resume and out is not None and (out / "last.json").is_file():
        tensors, meta = load_checkpoint(out / "last", device="cpu")
        if meta["model"]["profile"] != model.config()["profile"]:
            raise ValueError(f"{out}/last.json was written for a different profile; use another "
                             "out_dir or resume=False")
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        step, history = int(meta["step"]), list(meta["history"])
        losses = list(meta.get("epoch_losses", []))
    resumed_from = step

    def save_state() -> None:
        if out is None:
            return
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(out / "last", tensors, {
            "kind": "train-state", "model": model.config(), "train": cfg.to_dict(),
            "step": step, "optimizer": opt_meta, "history": history, "epoch_losses": losses})

    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=cfg.amp and device.type == "cuda")
    bar = tqdm(total=stop_at, initial=min(step, stop_at), desc=desc, disable=not cfg.progress,
               dynamic_ncols=True)
    try:
        while step < stop_at:
            epoch, offset = divmod(step, steps_per_epoch)
            # Order depends on (seed, epoch) only, so a resumed epoch replays the same batches.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                cfg.seed * 1_000_003 + epoch)).tolist()
            loader = DataLoader(dataset, batch_size=cfg.batch_size,
                                sampler=order[offset * cfg.batch_size:],
                                num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            t0 = time.perf_counter()
            for batch in loader:
                clips, labels = _split_batch(batch)
                lr = cosine_lr(step, total, warmup, cfg.peak_lr, cfg.min_lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                with autocast:
                    loss = loss_fn(model, _inputs(clips, device),
                                   None if labels is None else labels.to(device), epoch)
                if loss is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    losses.append(float(loss.detach()))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", epoch=epoch)
                step += 1
                bar.update(1)
                epoch_done = step % steps_per_epoch == 0
                if epoch_done:
                    row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else math.nan,
                           "lr": lr, "seconds": time.perf_counter() - t0}
                    if end_of_epoch is not None:
                        row.update(end_of_epoch(model, epoch))
                        model.train()
                    history.append(row)
                    losses = []
                if epoch_done or step == stop_at or (
                        cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save_state()
                if step >= stop_at:
                    break
    except KeyboardInterrupt:
        save_state()  # an interrupted run resumes where it stopped
        raise
    finally:
        bar.close()

    finished = step >= total
    checkpoint = None
    if finished and out is not None:
        checkpoint = save_model(model, out / "model", {"training": {
            "steps": step, "epochs": cfg.epochs, "config": cfg.to_dict(), "history": history,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset_size": n}})
    model.eval()
    return TrainResult(steps=step, epochs=step // steps_per_epoch, finished=finished,
                       history=history, checkpoint=checkpoint, resumed_from=resumed_from)


def pretrain(model: DynamicsMAE, dataset: Dataset, config: PretrainConfig | None = None,
             out_dir: str | Path | None = None, resume: bool = True) -> TrainResult:
    """Pretrain DYNAMICS-MAE on unlabeled clips (labels, if the dataset yields them, are ignored).

    Args:
        model: the autoencoder (its profile fixes clip shape and mask ratio).
        dataset: items ``clip`` or ``(clip, label)``, clips ``W×6×S×S``.
        config: :class:`PretrainConfig` (Table 14 defaults).
        out_dir: checkpoints go here; with ``resume=True`` an existing ``last`` is continued.
        resume: continue from ``out_dir/last`` when present.
    """
    cfg = config or PretrainConfig()

    def loss_fn(m: nn.Module, inputs: dict[str, torch.Tensor], _labels: Any, _epoch: int
                ) -> torch.Tensor:
        return m(**inputs, mask_ratio=cfg.mask_ratio)[0]

    return _fit(model, dataset, cfg, out_dir, resume, loss_fn, None, "pretrain")


def finetune(model: TEViD, dataset: Dataset, config: FinetuneConfig | None = None,
             out_dir: str | Path | None = None, resume: bool = True,
             val_dataset: Dataset | None = None,
             on_epoch_end: Callable[[TEViD, dict[str, float]], None] | None = None
             ) -> TrainResult:
    """Fine-tune TEViD with the EDL loss on labelled clips.

    Clips whose label is outside ``[0, K)`` (Unknown families, unlabeled) are skipped: the head
    only has outputs for known classes and abstention comes from vacuity, not from training on
    Unknown. Initialise the encoder beforehand with :meth:`TEViD.load_mae_encoder` for the
    DYNAMICS-MAE variant, or leave it random for the scratch variant.

    Args:
        model: the diagnostician (temperature is left as is; calibrate afterwards).
        dataset: items ``(clip, label)``.
        config: :class:`FinetuneConfig` (Table 14 defaults).
        out_dir: checkpoints go here; with ``resume=True`` an existing ``last`` is continued.
        resume: continue from ``out_dir/last`` when present.
        val_dataset: evaluated at every epoch end (loss, accuracy, mean vacuity in the history).
        on_epoch_end: called at every epoch end with the model and that epoch's validation
            metrics (``{"epoch": e}`` plus, with ``val_dataset``, ``val_loss``/``val_acc``/
            ``val_vacuity``), e.g. to keep the best epoch's weights (early stopping).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(4, 4, 6, 16, 16), torch.tensor([0, 1, 2, 0]))
        >>> seen = []
        >>> cfg = FinetuneConfig(epochs=2, batch_size=2, warmup_epochs=0, progress=False)
        >>> _ = finetune(TEViD("tiny"), data, cfg, val_dataset=data,
        ...              on_epoch_end=lambda m, row: seen.append(sorted(row)))
        >>> seen[0]
        ['epoch', 'val_acc', 'val_loss', 'val_vacuity']
    """
    cfg = config or FinetuneConfig()
    k = model.num_classes
    # Modality dropout needs two modalities to drop between: a frames-only or scalars-only model
    # trains on its one input whole (the pipeline's Table 12 variants share one config).
    shares = (cfg.telemetry_dropout, cfg.frame_dropout) \
        if getattr(model, "telemetry", 0) and getattr(model, "channels", "both") != "none" \
        else (0.0, 0.0)

    def loss_fn(m: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None,
                epoch: int) -> torch.Tensor | None:
        if labels is None:
            raise ValueError("finetune needs a dataset of (clip, label) items")
        known = (labels >= 0) & (labels < k)
        if not bool(known.any()):
            return None
        inputs = drop_modalities({k: v[known] for k, v in inputs.items()}, *shares)
        out = m(**inputs, temperature=1.0)
        return edl_loss(out.alpha, labels[known], epoch, cfg.kl_anneal_epochs)

    def validate(m: nn.Module, epoch: int) -> dict[str, float]:
        pred = predict(m, val_dataset, batch_size=cfg.batch_size, device=cfg.device,
                       temperature=1.0)
        known = (pred["labels"] >= 0) & (pred["labels"] < k)
        if not known.any():
            return {}
        alpha = torch.as_tensor(pred["alpha"][known])
        loss = edl_loss(alpha, torch.as_tensor(pred["labels"][known]), epoch,
                        cfg.kl_anneal_epochs)
        acc = (pred["probs"][known].argmax(1) == pred["labels"][known]).mean()
        return {"val_loss": float(loss), "val_acc": float(acc),
                "val_vacuity": float(pred["vacuity"][known].mean())}

    def end_of_epoch(m: nn.Module, epoch: int) -> dict[str, float]:
        row = validate(m, epoch) if val_dataset is not None else {}
        if on_epoch_end is not None:
            on_epoch_end(m, {"epoch": epoch, **row})
        return row

    return _fit(model, dataset, cfg, out_dir, resume, loss_fn,
                end_of_epoch if val_dataset is not None or on_epoch_end is not None else None,
                "finetune")


@torch.no_grad()
def predict(model: TEViD, dataset: Dataset, batch_size: int = 64, device: str = "auto",
            temperature: float | None = None) -> dict[str, np.ndarray]:
    """Run TEViD over a dataset; returns numpy ``logits``, ``alpha``, ``probs``, ``vacuity``,
    ``labels`` (``-1`` for unlabeled items) — the inputs of :mod:`core_models.calibration`.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(3, 4, 6, 16, 16), torch.tensor([0, 1, 2]))
        >>> out = predict(TEViD("tiny"), data, batch_size=2, device="cpu")
        >>> out["probs"].shape, out["labels"].tolist()
        ((3, 5), [0, 1, 2])
    """
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("logits", "alpha", "probs", "vacuity", "labels")}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, labels = _split_batch(batch)
        inputs = _inputs(x, dev)
        out = model(**inputs, temperature=temperature)
        for name in ("logits", "alpha", "probs", "vacuity"):
            parts[name].append(getattr(out, name).float().cpu().numpy())
        parts["labels"].append(np.full(len(inputs["clips"]), -1) if labels is None
                               else labels.cpu().numpy().astype(np.int64))
    model.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}
