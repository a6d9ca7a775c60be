"""Phase 1, recording: each ``(seed, trial)`` trained once to ``max_epochs`` with a real
:class:`~tevid_hpo.monitor.TrialMonitor` attached (:func:`train_trial`), stored as JSON
(:class:`TrialRecording`) and read back instead of retrained (:func:`record_all`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import numpy as np
import optuna
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from core_models.checkpoint import checkpoint_digest
from data_factory.datasets import TensorData
from data_factory.frames import Frame
from data_factory.optimizers import build_optimizer
from experiments.hpo_benchmark.config import _say
from experiments.hpo_benchmark.frames import FrameTap, frames_path, read_frames, write_frames
from experiments.hpo_benchmark.problem import Problem, TrialConfig, _one_thread, draw_configs
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR, TrialMonitor
from tevid_hpo.ray import metrics as ray_metrics

#: Recording layout version: recordings of another version are re-recorded, never misread.
RECORDING_VERSION = 1


def _finite(x: float | None) -> float | None:
    """JSON-safe float: non-finite values become ``None`` (read back as NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass
class EpochRecord:
    """What one epoch of one trial produced (JSON-safe; ``None`` for a non-finite number).

    Attributes:
        epoch: 0-based epoch.
        train_loss: mean training loss of the epoch.
        val_acc, val_loss: on the validation split (what strategies decide on).
        test_acc, test_loss: on the test split (never seen by any strategy).
        seconds: wall time of the epoch's training steps and validation pass, monitor included.
        monitor_seconds: of which the monitor's: inside ``TrialMonitor.step`` / ``epoch_end``
            plus the capture hooks' estimated share (:func:`_hook_seconds`).
        tevid: ``trial.user_attrs["tevid"]`` as the monitor left it after ``epoch_end``.
        tevid_error: ``trial.user_attrs["tevid_error"]`` by then (monitoring failed), if any.
        ray: :func:`tevid_hpo.ray.metrics` of the monitor after ``epoch_end``.
    """

    epoch: int
    train_loss: float | None
    val_acc: float
    val_loss: float | None
    test_acc: float
    test_loss: float | None
    seconds: float
    monitor_seconds: float
    tevid: dict[str, Any] | None = None
    tevid_error: str | None = None
    ray: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrialRecording:
    """One configuration trained once to ``max_epochs`` with a monitor attached.

    Attributes:
        config: the configuration.
        problem_key: :meth:`Problem.key` of the problem it was trained on.
        diagnostician: key of the diagnostician that watched it.
        steps_per_epoch, every: optimisation steps per epoch; capture cadence (steps).
        epochs: one :class:`EpochRecord` per epoch.
        steps: per optimisation step, columns ``step, epoch, loss, lr, grad_norm``.

    Example:
        >>> r = TrialRecording(TrialConfig(0, 0, 0.1, 1e-4, 150), "p", "d", 2, 1, [
        ...     EpochRecord(e, 1.0, acc, 1.0, acc - 0.1, 1.0, 0.5, 0.1)
        ...     for e, acc in enumerate([0.3, 0.6, 0.5])], {})
        >>> r.value(2), r.value(3), r.full_value
        ((0.6, 0.5, 1), (0.6, 0.5, 1), 0.6)
        >>> r.wall(2, monitored=False), r.wall(2, monitored=True)
        (0.8, 1.0)
    """

    config: TrialConfig
    problem_key: str
    diagnostician: str
    steps_per_epoch: int
    every: int
    epochs: list[EpochRecord]
    steps: dict[str, list[float | None]]
    version: int = RECORDING_VERSION

    @property
    def n_epochs(self) -> int:
        """Epochs recorded (``max_epochs``)."""
        return len(self.epochs)

    def value(self, n_epochs: int) -> tuple[float, float, int]:
        """``(best val acc, test acc at that epoch, that epoch)`` over the first ``n_epochs``."""
        n = max(1, min(int(n_epochs), self.n_epochs))
        acc = [e.val_acc for e in self.epochs[:n]]
        best = int(np.argmax(acc))     # first epoch reaching the best
        return float(acc[best]), float(self.epochs[best].test_acc), best

    @property
    def full_value(self) -> float:
        """Best validation accuracy had the trial trained all ``max_epochs``."""
        return self.value(self.n_epochs)[0]

    def wall(self, n_epochs: int, monitored: bool) -> float:
        """Replayed wall time of the first ``n_epochs`` (monitor time only when ``monitored``)."""
        eps = self.epochs[:n_epochs]
        return float(sum(e.seconds - (0.0 if monitored else e.monitor_seconds) for e in eps))

    def as_run(self) -> SimpleNamespace:
        """The recording as a :class:`~core_models.baselines.base.BaselineRun` (Curve-TCN's
        input): per-step scalars and the capture grid (steps ``0, every, 2·every, ...``, as
        :class:`~data_factory.capture.StateCapture` captures them)."""
        steps = pd.DataFrame({k: [_nan(v) for v in col] for k, col in self.steps.items()})
        total = self.steps_per_epoch * self.n_epochs
        grid = np.arange(0, total, self.every, dtype=np.int64)
        frames = SimpleNamespace(steps=grid, epochs=grid // self.steps_per_epoch)
        return SimpleNamespace(run_id=f"seed{self.config.seed}-trial{self.config.number}",
                               meta={"steps_per_epoch": self.steps_per_epoch},
                               steps=steps, frames=frames)

    def to_json(self) -> str:
        """Plain JSON (no NaN, no pickle)."""
        return json.dumps(asdict(self), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TrialRecording:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(config=TrialConfig(**d["config"]), problem_key=d["problem_key"],
                   diagnostician=d["diagnostician"], steps_per_epoch=int(d["steps_per_epoch"]),
                   every=int(d["every"]), epochs=[EpochRecord(**e) for e in d["epochs"]],
                   steps=d["steps"], version=int(d.get("version", 0)))


class _AttrTee:
    """The ``trial`` a monitor writes to: keeps a JSON copy of every attribute (as a storage
    would hold it) and forwards it to a real Optuna trial when there is one."""

    def __init__(self, trial: optuna.Trial | None = None) -> None:
        self.trial = trial
        self.user_attrs: dict[str, Any] = {}
        self.number = getattr(trial, "number", None)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = json.loads(json.dumps(value))
        if self.trial is not None:
            self.trial.set_user_attr(key, value)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        acc = (logits.argmax(1) == y).float().mean().item()
        loss = nn.functional.cross_entropy(logits, y).item()
    return acc, loss


# Record with the synchronous monitor where the monitor offers a choice: the whole cost of
# diagnosis is then inside TrialMonitor.step and timed. The asynchronous default leaves the
# same attribute at every epoch_end (it drains before publishing) and costs at most as much.
_SYNCHRONOUS: dict[str, Any] = (
    {"asynchronous": False}
    if "asynchronous" in inspect.signature(TrialMonitor.__init__).parameters else {})


def _hook_seconds(step_s: Sequence[float], first_step: int, every: int) -> float:
    """Estimated cost of the capture hooks inside one epoch's forward/backward passes.

    They only work on capture steps (``step % every == 0``), so their cost is what those steps
    took beyond the median non-capture step (0 when there is nothing to compare with).

    Example:
        >>> round(_hook_seconds([0.3, 0.1, 0.1, 0.1, 0.25, 0.1], 0, 4), 3)
        0.35
    """
    capture = [t for i, t in enumerate(step_s) if (first_step + i) % every == 0]
    other = [t for i, t in enumerate(step_s) if (first_step + i) % every != 0]
    if not capture or not other:
        return 0.0
    return float(max(0.0, sum(capture) - len(capture) * float(np.median(other))))


def train_trial(problem: Problem, config: TrialConfig, data: TensorData,
                diagnostician: Diagnostician, *, diagnostician_key: str = "",
                trial: optuna.Trial | None = None,
                on_epoch: Callable[[EpochRecord], None] | None = None,
                frames: list[Frame] | None = None) -> TrialRecording:
    """Train one configuration with a :class:`TrialMonitor` attached; return its recording.

    Phase 1 calls it with ``trial=None`` (the monitor writes into a recorder) and trains all
    ``max_epochs``. A *live* study passes its ``optuna.Trial`` (the monitor writes to it as
    usual) and an ``on_epoch`` that reports and may raise ``optuna.TrialPruned``; the recording
    then ends where the trial stopped. Both paths run the same code, which is what makes a replay
    of the recording equal to a live run (``tests/test_hpo_benchmark.py`` checks it).

    Args:
        problem, config, data: what to train.
        diagnostician: the TEViD that watches (reset by the monitor on entry).
        diagnostician_key: recorded with the recording.
        trial: a live Optuna trial, or ``None``.
        on_epoch: called with each epoch's record after the monitor's ``epoch_end``.
        frames: if given, receives every frame the diagnostician read (training scalars
            included), for :func:`rediagnose` by another checkpoint.
    """
    torch.manual_seed(config.weight_seed)
    model = problem.build_model(data)
    opt = build_optimizer(problem.optimizer, model.parameters(), lr=config.lr,
                          weight_decay=config.weight_decay)
    size = min(config.train_size, len(data.x_train))
    x, y = data.x_train[:size], data.y_train[:size]
    spe = problem.steps_per_epoch(data)
    bs = problem.batch_size
    g = torch.Generator().manual_seed(config.order_seed)
    passes = spe * bs * problem.max_epochs // size + 1
    order = torch.cat([torch.randperm(size, generator=g) for _ in range(passes)])
    sink = _AttrTee(trial)
    # optimizer= as the README's loop passes it: a telemetry diagnostician reads the lr in use
    tap = FrameTap(diagnostician)
    mon = TrialMonitor(model, sink, diagnostician=tap, optimizer=opt, **_SYNCHRONOUS)
    steps: dict[str, list[float | None]] = {k: [] for k in ("step", "epoch", "loss", "lr",
                                                              "grad_norm")}
    recording = TrialRecording(config, problem.key(), diagnostician_key, spe, mon.every, [], steps)
    with mon:
        for epoch in range(problem.max_epochs):
            t0, t_mon, losses = time.perf_counter(), 0.0, []
            step_s: list[float] = []
            model.train()
            for k in range(epoch * spe, (epoch + 1) * spe):
                t_step = time.perf_counter()
                lr = config.lr * problem.lr_factor(k, spe)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[k * bs:(k + 1) * bs]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                value = loss.item()
                # The factory's definition (data_factory.runner), so Curve-TCN sees the feature
                # it was trained on.
                grad_norm = float(torch.sqrt(sum((p.grad.detach().float() ** 2).sum()
                                                 for p in model.parameters()
                                                 if p.grad is not None)))
                t1 = time.perf_counter()
                mon.step(loss=value)
                t2 = time.perf_counter()
                t_mon += t2 - t1
                opt.step()
                step_s.append(time.perf_counter() - t_step - (t2 - t1))
                losses.append(value)
                for col, v in zip(steps, (k, epoch, value, lr, grad_norm)):
                    steps[col].append(_finite(v))
            model.eval()
            val_acc, val_loss = _evaluate(model, data.x_val, data.y_val)
            t1 = time.perf_counter()
            mon.epoch_end(epoch)
            t_mon += time.perf_counter() - t1
            seconds = time.perf_counter() - t0
            t_mon += _hook_seconds(step_s, epoch * spe, mon.every)
            test_acc, test_loss = _evaluate(model, data.x_test, data.y_test)   # not timed
            finite = [v for v in losses if math.isfinite(v)]
            record = EpochRecord(
                epoch=epoch, train_loss=_finite(np.mean(losses)) if finite else None,
                val_acc=float(val_acc), val_loss=_finite(val_loss), test_acc=float(test_acc),
                test_loss=_finite(test_loss), seconds=round(seconds, 5),
                monitor_seconds=round(t_mon, 5),
                tevid=copy.deepcopy(sink.user_attrs.get(USER_ATTR)),
                tevid_error=sink.user_attrs.get(ERROR_ATTR),
                ray=json.loads(json.dumps(ray_metrics(mon))))
            recording.epochs.append(record)
            if on_epoch is not None:
                on_epoch(record)
    if frames is not None:
        frames.extend(tap.frames)
    return recording


class _RecordedCapture:
    """Stands in for :class:`~data_factory.capture.StateCapture` in :func:`rediagnose`: at each
    step it returns the frame recorded at that step, if any."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        self._at = {f.step: f for f in frames}
        self.step_count = 0

    def __enter__(self) -> Self:
        return self

    def close(self) -> None:
        pass

    def step(self, epoch: int | None = None) -> Frame | None:
        frame = self._at.get(self.step_count)
        self.step_count += 1
        return frame


def rediagnose(recording: TrialRecording, frames: Sequence[Frame], diagnostician: Diagnostician,
               *, diagnostician_key: str = "") -> TrialRecording:
    """``recording`` as if ``diagnostician`` had watched it: its recorded frames streamed
    through a real :class:`TrialMonitor` (alert rule, run memory, non-finite-loss rule and
    payload all the monitor's own), the recorded losses at every step.

    Only each epoch's ``tevid``, ``tevid_error`` and ``ray`` change; the training numbers,
    steps and wall times stay the recording's (its monitor seconds included: the capture is the
    same, a diagnostician of another size would cost slightly more or less). A non-finite loss
    was stored as ``null`` and reads back as NaN, so a non-finite-loss alert's ``loss`` field
    says ``'nan'`` where the live one may have said ``'inf'``; its step and epoch are the same.
    ``tests/test_hpo_benchmark.py`` checks the result equals a live recording under
    ``diagnostician``.

    Args:
        recording: a recording whose frames were kept (:func:`train_trial`'s ``frames``).
        frames: those frames, in order.
        diagnostician: the checkpoint that re-reads them (reset here by the monitor).
        diagnostician_key: recorded with the result.
    """
    profile = diagnostician.profile
    shape = (profile.in_chans, profile.frame_size, profile.frame_size)
    if frames and tuple(frames[0].tensor.shape) != shape:
        raise ValueError(f"recorded frames of shape {tuple(frames[0].tensor.shape)} do not fit "
                         f"{profile.name!r} {shape}: that checkpoint has to record anew")
    stand_in = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1))
    opt = torch.optim.SGD(stand_in.parameters(), lr=0.0)   # the taps supply the real scalars
    tap = FrameTap(diagnostician, scalars=[f.scalars for f in frames])
    sink = _AttrTee()
    mon = TrialMonitor(stand_in, sink, diagnostician=tap, every=recording.every, optimizer=opt,
                       **_SYNCHRONOUS)
    # The one seam: the monitor reads its frames from the recording instead of hooks.
    mon._capture = _RecordedCapture(frames)   # type: ignore[assignment]
    spe, loss = recording.steps_per_epoch, recording.steps["loss"]
    epochs: list[EpochRecord] = []
    with mon:
        for e, ep in enumerate(recording.epochs):
            for k in range(e * spe, (e + 1) * spe):
                mon.step(loss=_nan(loss[k]))
            mon.epoch_end(e)
            epochs.append(replace(
                ep, tevid=copy.deepcopy(sink.user_attrs.get(USER_ATTR)),
                tevid_error=sink.user_attrs.get(ERROR_ATTR),
                ray=json.loads(json.dumps(ray_metrics(mon)))))
    if len(tap.frames) != len(frames):
        raise ValueError(f"the replay read {len(tap.frames)} of {len(frames)} recorded frames: "
                         f"the recording's capture grid does not match every={recording.every}")
    return replace(recording, diagnostician=diagnostician_key, epochs=epochs)


def diagnostician_key(diag: Diagnostician) -> str:
    """A short hash of the checkpoint files behind ``diag`` (recordings depend on it)."""
    return "in-memory" if diag.source is None else checkpoint_digest(diag.source)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def recordings_dir(cfg: DictConfig, problem: Problem, diag_key: str) -> Path:
    """Where this problem's recordings under this diagnostician live."""
    return Path(cfg.recordings).expanduser() / f"{problem.key()}-{diag_key}"


def _load_recording(path: Path, config: TrialConfig, problem: Problem, diag_key: str
                    ) -> TrialRecording | None:
    """A stored recording of exactly this trial, or ``None`` (missing, stale or unreadable)."""
    if not path.is_file():
        return None
    try:
        rec = TrialRecording.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as err:
        _say(f"re-recording {path.name}: unreadable ({err})")
        return None
    ok = (rec.version == RECORDING_VERSION and rec.config == config
          and rec.problem_key == problem.key() and rec.diagnostician == diag_key
          and rec.n_epochs == problem.max_epochs)
    return rec if ok else None


def record_all(cfg: DictConfig, problem: Problem, diagnostician: Diagnostician,
               seeds: Sequence[int], n_trials: int, progress: bool = True
               ) -> dict[int, list[TrialRecording]]:
    """Phase 1: every ``(seed, trial)`` trained once to ``max_epochs``, or read from the cache.

    A trial already recorded under this checkpoint is read back; one recorded with its frames
    under another checkpoint is re-diagnosed (``rediagnose``); the rest are trained, in
    ``cfg.workers`` processes (one torch thread each) when that is above 1. A trial's training
    depends only on ``(seed, trial)``, so the recordings are the same for any number of workers
    (the timings are not). Each trial is written as soon as it is done, so an interruption loses
    at most the trials in flight.

    Returns ``{seed: [recording of trial 0, 1, ...]}``.
    """
    workers = int(cfg.get("workers", 1))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    key = diagnostician_key(diagnostician)
    root = recordings_dir(cfg, problem, key)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "manifest.json", json.dumps({
        "problem": asdict(problem), "diagnostician": key,
        "diagnostician_source": str(diagnostician.source), "recording_version": RECORDING_VERSION},
        indent=1))
    reuse, reused = bool(cfg.get("rediagnose", True)), 0
    done: dict[tuple[int, int], TrialRecording] = {}
    todo: list[tuple[TrialConfig, Path]] = []
    for seed in seeds:
        for config in draw_configs(problem, seed, n_trials):
            path = root / f"seed{seed}" / f"trial{config.number:03d}.json"
            rec = _load_recording(path, config, problem, key)
            donor = None if rec is not None or not reuse else \
                _donor(cfg, problem, config, diagnostician)
            if donor is not None:
                with _one_thread():
                    rec = rediagnose(donor[0], donor[1], diagnostician, diagnostician_key=key)
                _link_or_copy(frames_path(donor[2]), frames_path(path))
                _write_atomic(path, rec.to_json())
                reused += 1
            if rec is None:
                todo.append((config, path))
            else:
                done[(seed, config.number)] = rec
    if reused:
        _say(f"re-diagnosed {reused} trial(s) from the frames another checkpoint recorded")
    if todo:
        bar = tqdm(total=len(todo), desc=f"record ({min(workers, len(todo))} worker(s))",
                   unit="trial", disable=not progress, dynamic_ncols=True)
        with bar:
            for rec in _train_all(problem, diagnostician, key, todo, workers):
                done[(rec.config.seed, rec.config.number)] = rec
                bar.update()
                bar.set_postfix(seed=rec.config.seed, lr=f"{rec.config.lr:.1e}",
                                n=rec.config.train_size, val=f"{rec.full_value:.3f}",
                                alert=(rec.epochs[-1].tevid or {}).get("alert") or "-")
    return {seed: [done[(seed, k)] for k in range(n_trials)] for seed in seeds}


def _train_all(problem: Problem, diagnostician: Diagnostician, key: str,
               todo: Sequence[tuple[TrialConfig, Path]], workers: int
               ) -> Iterator[TrialRecording]:
    """Train and write every ``(config, path)`` of ``todo``; yield each recording when done."""
    if workers == 1 or len(todo) == 1 or diagnostician.source is None:
        data = problem.load_data()
        for config, path in todo:
            yield _record_trial(problem, config, path, diagnostician, key, data)
        return
    # spawn, not fork: a forked child would inherit torch's and Ray's threads mid-state.
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn"))
    try:
        futures = [pool.submit(_record_trial, problem, config, path, str(diagnostician.source),
                               key) for config, path in todo]
        for future in as_completed(futures):
            yield future.result()
    finally:   # on an error or an interrupt, what is finished is on disk; drop the queue
        pool.shutdown(wait=True, cancel_futures=True)


@functools.lru_cache(maxsize=1)
def _worker_diagnostician(source: str) -> Diagnostician:
    """A worker's diagnostician, loaded once per process (the monitor resets it per trial)."""
    return Diagnostician.from_pretrained(source, device="cpu")


def _record_trial(problem: Problem, config: TrialConfig, path: Path,
                  diagnostician: Diagnostician | str, key: str,
                  data: TensorData | None = None) -> TrialRecording:
    """Train one trial (in this process or a worker), write it and its frames, return it."""
    with _one_thread():
        if isinstance(diagnostician, str):
            diagnostician = _worker_diagnostician(diagnostician)
        frames: list[Frame] = []
        rec = train_trial(problem, config, problem.load_data() if data is None else data,
                          diagnostician, diagnostician_key=key, frames=frames)
    write_frames(frames_path(path), frames, every=rec.every, diagnostician=key)
    _write_atomic(path, rec.to_json())
    return rec


def _donor(cfg: DictConfig, problem: Problem, config: TrialConfig, diagnostician: Diagnostician
           ) -> tuple[TrialRecording, list[Frame], Path] | None:
    """A recording of exactly this trial under another checkpoint whose frames were kept and fit
    ``diagnostician``'s capture settings: ``(recording, frames, its path)``, else ``None``."""
    profile = diagnostician.profile
    name = Path(f"seed{config.seed}") / f"trial{config.number:03d}.json"
    for other in sorted(Path(cfg.recordings).expanduser().glob(f"{problem.key()}-*")):
        path = other / name
        if not (path.is_file() and frames_path(path).is_file()):
            continue
        try:
            rec = TrialRecording.from_json(path.read_text())
            frames, header = read_frames(frames_path(path))
        except (ValueError, KeyError, TypeError) as err:
            _say(f"not re-diagnosing from {path}: unreadable ({err})")
            continue
        fits = (rec.version == RECORDING_VERSION and rec.config == config
                and rec.problem_key == problem.key() and rec.n_epochs == problem.max_epochs
                and header["every"] == rec.every == profile.every
                and header["frame_size"] == profile.frame_size
                and header["in_chans"] == profile.in_chans)
        if fits:
            return rec, frames, path
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` holds ``src``'s bytes (a hard link where the file system allows one)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
