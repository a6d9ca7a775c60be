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
* ``lr_over_peak``  log(lr / the schedule's first peak), floored at 0 — persistent where
  ``lr_step`` is a one-capture spike. The peak is the largest lr up to the first capture at
  which the lr did not rise (the end of a warm-up; the first lr of a constant, step or cosine
  schedule), so every schedule that never exceeds its first peak (warm-up + cosine, OneCycle,
  step decay, warm restarts) reads 0 throughout, and a learning rate pushed above it reads
  the excess for as long as it lasts. 0 until the peak is known;
* ``loss_over_best`` log(loss / lowest finite loss so far), floored at 0 — how far the loss
  has climbed back from its best (a divergence, a switched task), persistent where
  ``loss_step`` is a spike; saturates at +CLIP when the loss is non-finite;
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
                             "lr_present", "lr_over_peak", "loss_over_best")
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
        """Forget the run's references (first/previous/best values, the lr peak)."""
        self._first: dict[str, float] = {}
        self._prev: dict[str, float] = {}
        self._best_loss: float | None = None
        self._lr_peak: float | None = None     # the largest lr so far while still rising
        self._peak_known = False               # set at the first capture whose lr did not rise

    def state_dict(self) -> dict[str, object]:
        """The run's references, JSON-serialisable (a paused trial resumes its features exactly).

        Example:
            >>> a, b = TelemetryStream(), TelemetryStream()
            >>> _ = a.update(loss=1.0, lr=0.1)
            >>> b.load_state_dict(a.state_dict())
            >>> bool((a.update(loss=2.0, lr=1.0) == b.update(loss=2.0, lr=1.0)).all())
            True
        """
        return {"first": dict(self._first), "prev": dict(self._prev), "best_loss": self._best_loss,
                "lr_peak": self._lr_peak, "peak_known": self._peak_known}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Continue the run :meth:`state_dict` described (missing keys: a fresh reference)."""
        self.reset()
        self._first = dict(state.get("first") or {})   # type: ignore[call-overload]
        self._prev = dict(state.get("prev") or {})     # type: ignore[call-overload]
        best, peak = state.get("best_loss"), state.get("lr_peak")
        self._best_loss = None if best is None else float(best)   # type: ignore[arg-type]
        self._lr_peak = None if peak is None else float(peak)     # type: ignore[arg-type]
        self._peak_known = bool(state.get("peak_known", False))

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

    def _loss_over_best(self, out: np.ndarray, loss: float | None) -> None:
        if loss is None:
            return
        if not math.isfinite(loss):
            out[_IDX["loss_over_best"]] = CLIP
            return
        self._best_loss = loss if self._best_loss is None else min(self._best_loss, loss)
        out[_IDX["loss_over_best"]] = _clip(max(_log(loss) - _log(self._best_loss), 0.0))

    def _lr_over_peak(self, out: np.ndarray, lr: float, prev: float | None) -> None:
        if not self._peak_known:
            # Still in the schedule's first rise (or at the first capture): extend the peak.
            if prev is not None and lr <= prev:
                self._peak_known = True
            else:
                self._lr_peak = lr if self._lr_peak is None else max(self._lr_peak, lr)
                return
        assert self._lr_peak is not None
        out[_IDX["lr_over_peak"]] = _clip(max(_log(lr) - _log(self._lr_peak), 0.0))

    def update(self, loss: float | None = None, lr: float | None = None,
               grad_norm: float | None = None) -> np.ndarray:
        """Features (float32, ``(NUM_FEATURES,)``) of one capture; ``None`` = unknown."""
        out = np.zeros(NUM_FEATURES, dtype=np.float32)
        loss_v = _value(loss)
        self._relative(out, "loss", loss_v)
        self._loss_over_best(out, loss_v)
        self._relative(out, "gn", _value(grad_norm))
        lr_v = _value(lr)
        if lr_v is not None and math.isfinite(lr_v):
            out[_IDX["lr_present"]] = 1.0
            out[_IDX["lr_log10"]] = _clip(math.log10(max(lr_v, _EPS)))
            prev = self._prev.get("lr")
            out[_IDX["lr_step"]] = _clip(_log(lr_v) - _log(lr_v if prev is None else prev))
            self._lr_over_peak(out, lr_v, prev)
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
        (2, 13)
    """
    stream = TelemetryStream()
    rows = [stream.update_scalars(d) for d in capture_scalars(steps, frame_steps)]
    return np.stack(rows) if rows else np.zeros((0, NUM_FEATURES), dtype=np.float32)
