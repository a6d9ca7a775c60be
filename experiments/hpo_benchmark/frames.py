"""The frames a recording's diagnostician read, kept so another checkpoint can re-read them.

Training a search's trials is hours of CPU; diagnosing their frames with another checkpoint is
seconds per trial. So phase 1 stores, next to each recording, every frame the
:class:`~tevid_hpo.monitor.TrialMonitor` handed its diagnostician — the internal-state tensor
and the training scalars it attached (:class:`FrameTap` catches them) — and
:func:`experiments.hpo_benchmark.record.rediagnose` streams them through a monitor watched by
another checkpoint. The frames depend on the capture settings (cadence ``every``, frame size,
hooked layers), never on the diagnostician's weights or calibration.

One safetensors file per trial (``trialNNN.frames.safetensors``): ``frames`` ``N×6×S×S``
bfloat16, ``steps``, ``epochs`` (``-1`` for none), ``finite``; the per-frame scalars and the
capture settings in its JSON header (Python's JSON keeps NaN and infinity).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from data_factory.frames import Frame
    >>> f = Frame(torch.zeros(6, 4, 4, dtype=torch.bfloat16), step=0, epoch=0,
    ...           scalars={"loss": 2.3, "lr": 0.1})
    >>> path = Path(tempfile.mkdtemp()) / "trial000.frames.safetensors"
    >>> write_frames(path, [f], every=10, diagnostician="abc")
    >>> frames, header = read_frames(path)
    >>> frames[0].scalars, frames[0].step, header["every"], header["frame_size"]
    ({'loss': 2.3, 'lr': 0.1}, 0, 10, 4)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from data_factory.frames import Frame

#: Name of a recording's frames file next to ``trialNNN.json``.
FRAMES_SUFFIX = ".frames.safetensors"
#: Layout version of the frames file.
FRAMES_VERSION = 1


class FrameTap:
    """Stands in for a diagnostician inside a :class:`~tevid_hpo.monitor.TrialMonitor`: hands
    every frame on unchanged and keeps it (tensor and training scalars, as the model read them).

    Args:
        diagnostician: the real one; every other attribute is its.
        scalars: when replaying, the recorded scalars of each frame, in order; they replace
            what the monitor attached (a replay has no live optimizer or gradients).

    Example:
        >>> import torch
        >>> from tevid_hpo.diagnostician import Diagnostician
        >>> diag = Diagnostician.from_pretrained("tiny", device="cpu")
        >>> tap = FrameTap(diag)
        >>> side = diag.profile.frame_size
        >>> d = tap.update(Frame(torch.zeros(6, side, side, dtype=torch.bfloat16), step=0))
        >>> len(tap.frames), tap.profile is diag.profile
        (1, True)
    """

    def __init__(self, diagnostician: Any,
                 scalars: Sequence[dict[str, float]] | None = None) -> None:
        self._diagnostician = diagnostician
        self._scalars = None if scalars is None else list(scalars)
        self.frames: list[Frame] = []

    def update(self, frame: Frame, step: int | None = None, epoch: int | None = None) -> Any:
        """Keep ``frame`` (with the recorded scalars when replaying) and diagnose it."""
        if self._scalars is not None:
            if len(self.frames) >= len(self._scalars):
                raise ValueError(f"the replay asked for frame {len(self.frames) + 1} of a "
                                 f"recording that has {len(self._scalars)}")
            frame = dataclasses.replace(frame, scalars=dict(self._scalars[len(self.frames)]))
        self.frames.append(frame)
        return self._diagnostician.update(frame, step=step, epoch=epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._diagnostician, name)


def frames_path(recording: Path) -> Path:
    """The frames file of the recording ``.../trialNNN.json``."""
    return recording.with_name(recording.stem + FRAMES_SUFFIX)


def write_frames(path: Path, frames: Sequence[Frame], *, every: int,
                 diagnostician: str) -> None:
    """Write ``frames`` atomically (a crash leaves the old file or none, never half of one).

    Args:
        path: the ``.frames.safetensors`` file.
        frames: as the diagnostician read them (at least one).
        every: the capture cadence they were taken at.
        diagnostician: key of the checkpoint that watched (for the record).
    """
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    tensors = {
        "frames": torch.stack([f.tensor.to(torch.bfloat16) for f in frames]).contiguous(),
        "steps": torch.tensor([f.step for f in frames], dtype=torch.int64),
        "epochs": torch.tensor([-1 if f.epoch is None else f.epoch for f in frames],
                               dtype=torch.int64),
        "finite": torch.tensor([bool(f.finite) for f in frames], dtype=torch.uint8),
    }
    header = {"version": str(FRAMES_VERSION), "every": str(int(every)),
              "layers": json.dumps(list(frames[0].layers)), "diagnostician": diagnostician,
              "scalars": json.dumps([{k: float(v) for k, v in f.scalars.items()}
                                     for f in frames])}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_frames(path: Path) -> tuple[list[Frame], dict[str, Any]]:
    """The frames of :func:`write_frames` and their header (``every``, ``frame_size``,
    ``in_chans``, ``layers``, ``diagnostician``, ``version``).

    Raises:
        ValueError: the file is unreadable or of another layout version (the message names it).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        data = load_file(str(path))
        if int(meta.get("version", -1)) != FRAMES_VERSION:
            raise ValueError(f"layout version {meta.get('version')!r}, not {FRAMES_VERSION}")
        scalars = json.loads(meta["scalars"])
        layers = tuple(json.loads(meta["layers"]))
        tensor = data["frames"]
        steps, epochs, finite = (data[k].tolist() for k in ("steps", "epochs", "finite"))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"unreadable frames file {path}: {err}") from err
    if not len(scalars) == len(steps) == tensor.shape[0]:
        raise ValueError(f"unreadable frames file {path}: {tensor.shape[0]} frames, "
                         f"{len(steps)} steps and {len(scalars)} scalar sets")
    frames = [Frame(tensor[i], step=int(s), epoch=None if e < 0 else int(e), layers=layers,
                    finite=bool(ok), scalars=sc)
              for i, (s, e, ok, sc) in enumerate(zip(steps, epochs, finite, scalars))]
    header = {"version": FRAMES_VERSION, "every": int(meta["every"]), "layers": list(layers),
              "frame_size": int(tensor.shape[-1]), "in_chans": int(tensor.shape[1]),
              "diagnostician": meta.get("diagnostician", "")}
    return frames, header
