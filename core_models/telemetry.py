"""Training telemetry features: per-capture loss, learning rate and gradient norm, run-relative.

The paper's causal protocol (§3.1) lets the diagnostician read scalar training metrics and
hyperparameters next to the internal-state frames; validation metrics and optimizer internals
stay out. Each capture contributes three raw scalars: ``loss`` (mean training loss over the steps
since the previous capture, that capture's step excluded and this one's included), ``lr`` (the
learning rate at the capture step, ``param_groups[0]["lr"]``) and ``grad_norm`` (the global L2
gradient norm at the capture step). Any may be unknown (``None``/missing): its features are then
*masked* (value 0 and ``*_present`` = 0), never read as a real 0.

Features per frame (:data:`FEATURES`, all clipped to ``±CLIP``). Loss and gradient norm are read
against the run's own first known finite value, so absolute scales (task, architecture, loss
function) do not become a fingerprint:

* ``loss_rel``      log(loss / loss at the first capture that had a finite loss);
* ``loss_step``     log(loss / loss at the previous capture with a finite loss) — spikes;
* ``gn_rel``        log(grad_norm / first finite grad_norm);
* ``gn_step``       log(grad_norm / previous finite grad_norm);
* ``lr_log10``      log10(lr) (a hyperparameter; 0 lr reads as the floor -CLIP);
* ``lr_step``       log(lr / previous lr) — schedule jumps;
* ``loss_nonfinite``, ``gn_nonfinite``: 1 when the value is NaN/inf (its ``*_rel``/``*_step``
  then saturate at +CLIP, as the frames saturate on divergence);
* ``loss_present``, ``gn_present``, ``lr_present``: 1 when the value was given.

Logs use ``max(x, 1e-12)`` so a zero (or negative) loss stays finite. :func:`run_telemetry`
computes the features for a whole stored run; :class:`TelemetryStream` computes them one capture
at a time (what the streaming diagnostician uses); both give identical features.

Example:
    >>> stream = TelemetryStream()
    >>> [round(float(v), 3) for v in stream.update(loss=2.0, lr=0.1, grad_norm=4.0)][:6]
    [0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    >>> f = stream.update(loss=1.0, lr=0.01, grad_norm=None)
    >>> round(float(f[0]), 3), float(f[FEATURES.index("gn_present")])
    (-0.693, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["CLIP", "FEATURES", "NUM_FEATURES", "TelemetryStream", "capture_scalars", "live_scalars",
           "mean_loss", "run_telemetry"]

FEATURES: tuple[str, ...] = ("loss_rel", "loss_step", "gn_rel", "gn_step", "lr_log10", "lr_step",
                             "loss_nonfinite", "gn_nonfinite", "loss_present", "gn_present",
                             "lr_present")
#: Features per capture (the ``telemetry`` size of a telemetry-enabled TEViD / DYNAMICS-MAE).
NUM_FEATURES = len(FEATURES)
#: Every feature is clipped to ±CLIP (e^8 ≈ 3000× the run's first loss is "diverged" enough).
CLIP = 8.0
_EPS = 1e-12
_IDX = {name: i for i, name in enumerate(FEATURES)}


def mean_loss(losses: Sequence[float]) -> float:
    """Mean of a capture interval's losses, exactly rounded (``math.fsum``) so that the streaming
    monitor and :func:`capture_scalars` agree to the bit; NaN if any loss is non-finite.

    Example:
        >>> mean_loss([1.0, 2.0]), math.isnan(mean_loss([1.0, float("inf")]))
        (1.5, True)
    """
    values = [float(v) for v in losses]
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return math.fsum(values) / len(values)


def live_scalars(losses: Sequence[float], model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """A capture's raw scalars in a live training loop (call after ``backward``, before
    ``optimizer.step``): ``loss`` = :func:`mean_loss` of the interval's losses (absent if none),
    ``lr`` = ``optimizer.param_groups[0]["lr"]`` (a hyperparameter; absent without optimizer),
    ``grad_norm`` = global L2 norm of the model's ``.grad`` (absent if no gradient).

    Cost: one norm per parameter plus one sync, and only on capture steps.

    Example:
        >>> m = torch.nn.Linear(2, 1)
        >>> m(torch.ones(1, 2)).sum().backward()
        >>> s = live_scalars([1.0, 3.0], m, torch.optim.SGD(m.parameters(), lr=0.1))
        >>> s["loss"], s["lr"], round(s["grad_norm"], 4)   # grads: w = (1, 1), b = 1
        (2.0, 0.1, 1.7321)
    """
    scalars: dict[str, float] = {}
    if losses:
        scalars["loss"] = mean_loss(losses)
    if optimizer is not None:
        scalars["lr"] = float(optimizer.param_groups[0]["lr"])
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if grads:
        norms = [torch.linalg.vector_norm(g.float()).to(grads[0].device) for g in grads]
        scalars["grad_norm"] = float(torch.linalg.vector_norm(torch.stack(norms)))
    return scalars


def _value(x: float | None) -> float | None:
    """``None`` for unknown (None or a NaN *marker* is not used: NaN means non-finite)."""
    return None if x is None else float(x)


def _log(x: float) -> float:
    return math.log(max(x, _EPS))


def _clip(x: float) -> float:
    return min(max(x, -CLIP), CLIP)


class TelemetryStream:
    """Causal, run-relative telemetry features, one capture at a time.

    Call :meth:`update` once per captured frame with that capture's raw scalars; :meth:`reset`
    at the start of a new run.

    Example:
        >>> s = TelemetryStream()
        >>> _ = s.update(loss=1.0, lr=1e-3, grad_norm=2.0)
        >>> f = s.update(loss=float("nan"), lr=1e-3, grad_norm=2.0)
        >>> float(f[FEATURES.index("loss_rel")]), float(f[FEATURES.index("loss_nonfinite")])
        (8.0, 1.0)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the run's references (first/previous values)."""
        self._first: dict[str, float] = {}
        self._prev: dict[str, float] = {}

    def _relative(self, out: np.ndarray, key: str, x: float | None) -> None:
        if x is None:
            return
        out[_IDX[f"{key}_present"]] = 1.0
        if not math.isfinite(x):
            out[_IDX[f"{key}_nonfinite"]] = 1.0
            out[_IDX[f"{key}_rel"]] = out[_IDX[f"{key}_step"]] = CLIP
            return
        first = self._first.setdefault(key, x)
        prev = self._prev.get(key, x)
        out[_IDX[f"{key}_rel"]] = _clip(_log(x) - _log(first))
        out[_IDX[f"{key}_step"]] = _clip(_log(x) - _log(prev))
        self._prev[key] = x

    def update(self, loss: float | None = None, lr: float | None = None,
               grad_norm: float | None = None) -> np.ndarray:
        """Features (float32, ``(NUM_FEATURES,)``) of one capture; ``None`` = unknown."""
        out = np.zeros(NUM_FEATURES, dtype=np.float32)
        self._relative(out, "loss", _value(loss))
        self._relative(out, "gn", _value(grad_norm))
        lr_v = _value(lr)
        if lr_v is not None and math.isfinite(lr_v):
            out[_IDX["lr_present"]] = 1.0
            out[_IDX["lr_log10"]] = _clip(math.log10(max(lr_v, _EPS)))
            prev = self._prev.get("lr", lr_v)
            out[_IDX["lr_step"]] = _clip(_log(lr_v) - _log(prev))
            self._prev["lr"] = lr_v
        return out

    def update_scalars(self, scalars: Mapping[str, float]) -> np.ndarray:
        """:meth:`update` from a :attr:`data_factory.frames.Frame.scalars` dict (missing = unknown).

        Example:
            >>> float(TelemetryStream().update_scalars({})[FEATURES.index("loss_present")])
            0.0
        """
        return self.update(scalars.get("loss"), scalars.get("lr"), scalars.get("grad_norm"))


def capture_scalars(steps: pd.DataFrame, frame_steps: Sequence[int] | np.ndarray
                    ) -> list[dict[str, float]]:
    """Raw per-capture scalars of a stored run: what :class:`~tevid_hpo.monitor.TrialMonitor`
    would have put in each :attr:`Frame.scalars`.

    ``loss`` is the mean over the logged steps in ``(previous frame step, frame step]`` (a NaN in
    them makes it NaN, as :func:`mean_loss` does when streaming), ``lr`` and ``grad_norm`` are the values logged at the
    frame's step. A quantity with no logged value is left out of the dict.

    Example:
        >>> steps = pd.DataFrame({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.0],
        ...                       "lr": [0.1] * 3, "grad_norm": [1.0, 2.0, 3.0]})
        >>> capture_scalars(steps, [0, 2])
        [{'loss': 3.0, 'lr': 0.1, 'grad_norm': 1.0}, {'loss': 1.5, 'lr': 0.1, 'grad_norm': 3.0}]
    """
    step = steps["step"].to_numpy()
    out: list[dict[str, float]] = []
    prev = -np.inf
    for s in np.asarray(frame_steps).tolist():
        d: dict[str, float] = {}
        if "loss" in steps:
            window = steps["loss"].to_numpy(dtype=float)[(step > prev) & (step <= s)]
            if len(window):
                d["loss"] = mean_loss(window.tolist())
        at = np.flatnonzero(step == s)
        for col in ("lr", "grad_norm"):
            if col in steps and len(at):
                value = float(steps[col].to_numpy(dtype=float)[at[-1]])
                if col == "lr" and not math.isfinite(value):
                    continue   # a missing lr is logged as NaN, never a real value
                d[col] = value
        out.append(d)
        prev = s
    return out


def run_telemetry(steps: pd.DataFrame, frame_steps: Sequence[int] | np.ndarray) -> np.ndarray:
    """Telemetry features of every frame of a stored run, ``(N, NUM_FEATURES)`` float32.

    ``steps`` is a run's ``steps.csv`` (``run.steps``), ``frame_steps`` its frames' steps
    (``run.frames.steps``). Identical to streaming :func:`capture_scalars` through
    :class:`TelemetryStream`.

    Example:
        >>> steps = pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.0], "lr": [0.1, 0.1],
        ...                       "grad_norm": [1.0, 1.0]})
        >>> run_telemetry(steps, [0, 1]).shape
        (2, 11)
    """
    stream = TelemetryStream()
    rows = [stream.update_scalars(d) for d in capture_scalars(steps, frame_steps)]
    return np.stack(rows) if rows else np.zeros((0, NUM_FEATURES), dtype=np.float32)
