"""RunStore: one directory per training run, written atomically, read with clear errors.

Layout of ``ROOT/RUN_ID/``::

    meta.json            run metadata (architecture, data set, optimizer, intervention, split, ...;
                         ``privacy``: ``DPTelemetry.report().to_dict()`` of a DP-captured run)
    frames.safetensors   frames (N×6×S×S bfloat16), steps, epochs (−1 = none), finite, stats,
                         clipped (N×6 share of pixels at the clip)
    steps.csv            per-step scalars (step, epoch, loss, lr, ...)
    epochs.csv           per-epoch scalars (epoch, train_loss, val_loss, val_acc, ...)
    arrays.safetensors   extra arrays, e.g. per-sample probe correctness (optional)

A run is written into ``ROOT/.tmp-RUN_ID-*`` and renamed into place only when its writer closes
without error, so a crash never leaves a directory that reads as a complete run. Nothing is
pickled: tensors go to safetensors, the rest to JSON and CSV.

Example:
    >>> import tempfile, torch
    >>> from data_factory.frames import DEFAULT_CLIP, Frame, clipped_share
    >>> store = RunStore(tempfile.mkdtemp())
    >>> with store.create("run-0", {"arch": "mlp"}) as w:
    ...     w.add_frame(Frame(torch.zeros(6, 4, 4, dtype=torch.bfloat16), step=0, epoch=0))
    ...     w.log_step(step=0, epoch=0, loss=2.3)
    ...     w.log_epoch(epoch=0, val_acc=0.1)
    >>> run = store.load("run-0")
    >>> run.meta["arch"], len(run), float(run.steps.loss[0]), store.list()
    ('mlp', 1, 2.3, ['run-0'])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_factory.frames import DEFAULT_CLIP, Frame, clipped_share

META, FRAMES, STEPS, EPOCHS, ARRAYS = "meta.json", "frames.safetensors", "steps.csv", "epochs.csv", "arrays.safetensors"


class RunStoreError(RuntimeError):
    """A run is missing, incomplete or corrupt; the message names the file."""


@dataclass
class FrameSequence:
    """All frames of a run, stacked.

    Attributes:
        tensor: ``N×6×S×S`` bfloat16.
        steps: ``N`` int64 capture steps.
        epochs: ``N`` int64 epochs (``-1`` where none was given).
        finite: ``N`` bool.
        stats: ``N×K`` float32 per-layer summaries, columns named by ``stat_names``.
        layers: the three hooked module names.
        clipped: ``N×6`` float32 share of each channel's pixels at the clip (for runs stored
            before it was recorded: recomputed from ``tensor`` at the default clip, ±8).
    """

    tensor: torch.Tensor
    steps: np.ndarray
    epochs: np.ndarray
    finite: np.ndarray
    stats: np.ndarray
    stat_names: list[str]
    layers: list[str]
    clipped: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.clipped is None:
            self.clipped = np.array([clipped_share(t) for t in self.tensor], dtype=np.float32
                                    ).reshape(len(self), int(self.tensor.shape[1]))

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __getitem__(self, i: int) -> Frame:
        epoch = int(self.epochs[i])
        return Frame(self.tensor[i], step=int(self.steps[i]), epoch=None if epoch < 0 else epoch,
                     layers=tuple(self.layers), finite=bool(self.finite[i]),
                     stats=dict(zip(self.stat_names, map(float, self.stats[i]))),
                     clipped=tuple(map(float, self.clipped[i])))

    def __iter__(self) -> Iterator[Frame]:
        return (self[i] for i in range(len(self)))


@dataclass
class Run:
    """A stored run, as labelers and trainers read it.

    Attributes:
        path: the run directory.
        meta: parsed ``meta.json``.
        steps: per-step scalars.
        epochs: per-epoch scalars.
        arrays: extra named arrays (empty when none were stored).
    """

    path: Path
    meta: dict[str, Any]
    steps: pd.DataFrame
    epochs: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _frames: FrameSequence | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        """The run's directory name."""
        return self.path.name

    @property
    def frames(self) -> FrameSequence:
        """The run's frames, read on first access."""
        if self._frames is None:
            self._frames = _read_frames(self.path / FRAMES)
        return self._frames

    def __len__(self) -> int:
        return len(self.frames)


def _read_frames(path: Path) -> FrameSequence:
    if not path.exists():
        raise RunStoreError(f"missing frames file {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        data = load_file(str(path))
        return FrameSequence(
            tensor=data["frames"], steps=data["steps"].numpy(), epochs=data["epochs"].numpy(),
            finite=data["finite"].numpy().astype(bool), stats=data["stats"].numpy(),
            stat_names=json.loads(header.get("stat_names", "[]")),
            layers=json.loads(header.get("layers", "[]")),
            clipped=data["clipped"].numpy() if "clipped" in data else None)
    except (SafetensorError, KeyError, OSError, json.JSONDecodeError, ValueError) as err:
        raise RunStoreError(f"corrupt frames file {path}: {err}") from err


def _read_csv(path: Path, required: bool) -> pd.DataFrame:
    if not path.exists():
        if required:
            raise RunStoreError(f"missing scalar log {path}")
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a run that logged no rows
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise RunStoreError(f"corrupt scalar log {path}: {err}") from err


class RunWriter:
    """Collects one run and publishes it atomically on :meth:`close`. Use via
    :meth:`RunStore.create` as a context manager; on an exception nothing is published."""

    def __init__(self, final: Path, meta: Mapping[str, Any], overwrite: bool = False) -> None:
        self.final = final
        self.overwrite = overwrite
        self.meta = dict(meta)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        self._frames: list[Frame] = []
        self._steps: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []
        self._arrays: dict[str, np.ndarray] = {}
        self.closed = False

    def add_frame(self, frame: Frame) -> None:
        """Append a captured frame."""
        if self._frames and frame.tensor.shape != self._frames[0].tensor.shape:
            raise ValueError(f"frame shape {tuple(frame.tensor.shape)} differs from "
                             f"{tuple(self._frames[0].tensor.shape)}")
        self._frames.append(frame)

    def log_step(self, **scalars: float | int) -> None:
        """Append one row of per-step scalars (``step`` is required)."""
        if "step" not in scalars:
            raise ValueError("log_step needs a 'step' value")
        self._steps.append(scalars)

    def log_epoch(self, **scalars: float | int) -> None:
        """Append one row of per-epoch scalars (``epoch`` is required)."""
        if "epoch" not in scalars:
            raise ValueError("log_epoch needs an 'epoch' value")
        self._epochs.append(scalars)

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Store a named numeric array (e.g. per-sample probe correctness)."""
        self._arrays[name] = np.ascontiguousarray(array)

    def update_meta(self, **values: Any) -> None:
        """Add or replace metadata fields before the run is published."""
        self.meta.update(values)

    def _write_frames(self) -> None:
        if not self._frames:
            return
        stat_names = sorted({k for f in self._frames for k in f.stats})
        tensors = {
            "frames": torch.stack([f.tensor.to(torch.bfloat16) for f in self._frames]).contiguous(),
            "steps": torch.tensor([f.step for f in self._frames], dtype=torch.int64),
            "epochs": torch.tensor([-1 if f.epoch is None else f.epoch for f in self._frames], dtype=torch.int64),
            "finite": torch.tensor([f.finite for f in self._frames], dtype=torch.uint8),
            "stats": torch.tensor([[f.stats.get(k, float("nan")) for k in stat_names] for f in self._frames],
                                  dtype=torch.float32).reshape(len(self._frames), len(stat_names)),
            # A hand-built frame (no encoder) is measured at the default clip.
            "clipped": torch.tensor([f.clipped or clipped_share(f.tensor, DEFAULT_CLIP)
                                     for f in self._frames], dtype=torch.float32),
        }
        header = {"stat_names": json.dumps(stat_names), "layers": json.dumps(list(self._frames[0].layers))}
        save_file(tensors, str(self._tmp / FRAMES), metadata=header)

    def close(self) -> Path:
        """Write every file and move the run into place; returns the run directory."""
        if self.closed:
            return self.final
        self._write_frames()
        pd.DataFrame(self._steps).to_csv(self._tmp / STEPS, index=False)
        pd.DataFrame(self._epochs).to_csv(self._tmp / EPOCHS, index=False)
        if self._arrays:
            save_file({k: torch.from_numpy(v) for k, v in self._arrays.items()}, str(self._tmp / ARRAYS))
        meta = {**self.meta, "n_frames": len(self._frames), "complete": True}
        (self._tmp / META).write_text(json.dumps(meta, indent=1, default=_json_default))
        if self.final.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(f"run {self.final} already exists (pass overwrite=True)")
            trash = self.final.with_name(f".trash-{self.final.name}-{os.getpid()}")
            os.replace(self.final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(self._tmp, self.final)  # atomic on POSIX: the run appears whole or not at all
        self.closed = True
        return self.final

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.closed = True

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RunStore:
    """A directory of runs.

    Args:
        root: directory holding one sub-directory per run (created if missing).

    Example:
        >>> import tempfile
        >>> RunStore(tempfile.mkdtemp()).list()
        []
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, run_id: str, meta: Mapping[str, Any], overwrite: bool = False) -> RunWriter:
        """Start writing run ``run_id``; publish it by closing the returned writer."""
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"invalid run id {run_id!r}")
        return RunWriter(self.root / run_id, meta, overwrite=overwrite)

    def __contains__(self, run_id: str) -> bool:
        return (self.root / run_id / META).exists()

    def list(self) -> list[str]:
        """Ids of complete runs, sorted."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / META).exists())

    def load(self, run_id: str) -> Run:
        """Read a run's metadata and scalars (frames are read lazily)."""
        return load_run(self.root / run_id)

    def __iter__(self) -> Iterator[Run]:
        return (self.load(r) for r in self.list())

    def __len__(self) -> int:
        return len(self.list())


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one run directory.

    Raises:
        RunStoreError: naming the missing or corrupt file.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunStoreError(f"no run directory at {path}")
    meta_path = path / META
    if not meta_path.exists():
        raise RunStoreError(f"missing {meta_path} (run incomplete or not a run directory)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunStoreError(f"corrupt metadata {meta_path}: {err}") from err
    arrays: dict[str, np.ndarray] = {}
    if (path / ARRAYS).exists():
        try:
            arrays = {k: v.numpy() for k, v in load_file(str(path / ARRAYS)).items()}
        except (SafetensorError, OSError) as err:
            raise RunStoreError(f"corrupt arrays file {path / ARRAYS}: {err}") from err
    return Run(path=path, meta=meta, steps=_read_csv(path / STEPS, True),
               epochs=_read_csv(path / EPOCHS, True), arrays=arrays)
