"""TEViD for gradient-boosted trees: feature-importance frames and a LightGBM callback (App. K.3).

A boosted ensemble has no activations or gradients to film, but each boosting round adds a tree
whose splits say where the model is still finding signal. The paper's GBDT pilot (Appendix K.3)
records "per-tree feature importance vectors at each boosting round, reshaped into 32×32 images";
:class:`FeatureImportanceFrames` turns them into the same 6-channel
:class:`~data_factory.frames.Frame` the neural-network capture produces, so a TEViD fine-tuned on
such frames (``experiments/gbdt_pilot.py``) diagnoses a boosting run the way it diagnoses a
training run, and :class:`TEViDLightGBMCallback` stops ``lightgbm.train`` on a confirmed
Overfitting alert.

**Per-round importance.** ``booster.feature_importance(kind, iteration=k)`` is cumulative over the
first ``k`` iterations and computed in C over the trees' split records (about 20 µs per call for
a few hundred small trees), so the importance of round ``k`` is the difference of two cumulative
vectors, one call per kind and round; parsing ``booster.dump_model()`` (JSON of every tree) per
round would cost far more. With ``every > 1`` (the callback's cadence) a frame's "round" is the
block of trees added since the previous frame. Multiclass models add ``num_class`` trees per
iteration; their importances add up.

**Channels** (order of :data:`CHANNELS`), per feature ``f`` of ``F`` at round ``t``, with ``g``
the split gain and ``n`` the split count of the round's tree(s), ``G`` and ``N`` their sums over
the model's trees so far, and ``share(v)_f = F · v_f / Σv`` (1 = a uniform share)::

    0 gain          ln(g_t,f / ḡ + 1e-3)                       how much this tree gains, where
    1 gain_share    ln(share(G_t)_f + 1e-3)                    where the model's gain lies
    2 gain_novelty  ln(share(g_t)_f + 1e-3)                    where this tree gains, relative
                    − ln(share(G_{t−1})_f + 1e-3)              to the model before it
    3 split         ln(1 + n_t,f)                              this tree's splits
    4 split_cum     ln(1 + N_t,f)                              the model's splits
    5 split_delta   ch3_t − ch3_{t−1}                          change vs the previous round

Gains carry the units of the loss and the data size, so channel 0 measures them against ``ḡ``,
the mean per-feature gain of the run's first round with a split (frozen from then on, like
:class:`~data_factory.frames.FrameEncoder`'s warm-up reference): 0 reads "as useful as an average
feature of the first tree", and the ``1e-3`` floor makes an unused feature read
``ln 1e-3 ≈ −6.9``, the bottom of the range. Its decay over the rounds is how fast the ensemble
runs out of signal. Channels 1 and 2 are unit-free shares: as a run starts fitting noise, its
importance spreads over features that mattered little so far (channel 1 flattens, channel 2
lights up on them). A round without any split has novelty 0; the first round is compared with
the uniform share. Counts are unit-free as they are; the split delta shows how settled the tree
structure is. Everything a frame uses is from rounds ``≤ t``: frames are causal. The gain
channels take the activations' place in a neural-network frame, the split channels the
gradients'.

The shares replace a first design that had the cumulative gain (``ln(G_t,f / ḡ + 1e-3)``) and the
change of channel 0 vs the previous round in channels 1 and 2: on the same 100-run pilot corpus
(``experiments/gbdt_pilot.py --runs 100``, toy checkpoint) held-out stop-decision accuracy rose
from 73 % to 83 %, and a probe on per-round summaries had shown the spread of the cumulative
gain (its entropy) to be the single most predictive statistic of overfitting.

**Why not FrameEncoder's normalisation.** It centres each channel on the median pixel of the
run's first frame and scales by the inter-quartile range. An importance vector is sparse — one
tree of 31 leaves splits on at most 30 of, say, 64 features — so the median is "unused", the IQR
often 0, and every used feature saturates at the clip. The transforms above are a fixed causal
normalisation instead; the frame is then built by a :class:`FrameEncoder` whose reference is
frozen to the identity, which reuses its resizing, clipping to ``±8``, non-finite handling and
bfloat16 storage.

**Layout.** ``"grid"`` (default) lays the features row-major on the smallest square grid
(padded with unused features) and resizes it to ``S×S`` as the capture does for vectors: nearest
upsampling, so each feature becomes a block of pixels that patches of TEViD see, or area
averaging when there are more than ``S²`` features. ``"pad"`` puts them row-major on the ``S×S``
frame directly and pads the rest (the paper's literal "reshaped into 32×32 images"), which leaves
most patches empty when there are few features.

Example:
    >>> import lightgbm as lgb, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 10)); y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    >>> params = {"objective": "binary", "num_threads": 1, "verbose": -1, "seed": 0}
    >>> booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    >>> frames = FeatureImportanceFrames(frame_size=16).replay(booster)
    >>> len(frames), tuple(frames[0].tensor.shape), frames[0].tensor.dtype
    (5, (6, 16, 16), torch.bfloat16)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Sequence
from typing import Any, Literal

import numpy as np
import torch

try:
    import lightgbm
    from lightgbm.callback import CallbackEnv, EarlyStopException
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("tevid_hpo.lightgbm needs LightGBM: pip install 'tevid-hpo[lightgbm]'"
                      ) from err

from data_factory.frames import Frame, FrameEncoder
from data_factory.labels import OVERFITTING
from tevid_hpo.cost import CostModel
from tevid_hpo.decision import StopRules
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, FORMAT_VERSION, USER_ATTR, alert_entry, history_entry
from tevid_hpo.pruners import REASON_ATTR, study_standing

__all__ = ["CHANNELS", "FeatureImportanceFrames", "TEViDLightGBMCallback"]

logger = logging.getLogger(__name__)

#: Channel order of a feature-importance frame (see the module docstring).
CHANNELS: tuple[str, ...] = ("gain", "gain_share", "gain_novelty", "split", "split_cum",
                             "split_delta")

#: Floor of the relative gain inside the logarithm: an unused feature reads ``ln(1e-3)``.
GAIN_FLOOR = 1e-3


def _importance(booster: lightgbm.Booster, kind: str, iterations: int) -> np.ndarray:
    """Cumulative importance of the first ``iterations`` iterations (zeros for none)."""
    n = booster.num_feature()
    if iterations <= 0:   # LightGBM reads iteration <= 0 as "all trees"
        return np.zeros(n, dtype=np.float64)
    return np.asarray(booster.feature_importance(kind, iteration=iterations), dtype=np.float64)


def _log_share(values: np.ndarray) -> np.ndarray:
    """``ln(F · v_f / Σv + 1e-3)``: 0 where a feature has its uniform share, the floor where it
    has none (everywhere when ``Σv = 0``)."""
    total = values.sum()
    share = values * (values.size / total) if total > 0 else np.zeros_like(values)
    return np.log(share + GAIN_FLOOR)


class FeatureImportanceFrames:
    """Per-round feature-importance frames of one boosting run (see the module docstring).

    Call :meth:`update` once per boosting round (or every few rounds) with the booster; it
    returns the round's :class:`~data_factory.frames.Frame` and keeps it in :attr:`frames`.
    :meth:`replay` rebuilds every round's frame from a finished booster, identical to the frames
    :meth:`update` made during training (frames are causal).

    Args:
        frame_size: side ``S`` of the frames (a diagnostician's ``profile.frame_size``).
        layout: ``"grid"`` or ``"pad"`` (see the module docstring).
        clip: frames are clipped to ``±clip``.

    Example:
        >>> import lightgbm as lgb, numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 5)); y = (x[:, 0] > 0).astype(int)
        >>> booster = lgb.Booster({"objective": "binary", "verbose": -1, "num_threads": 1},
        ...                       lgb.Dataset(x, y))
        >>> frames = FeatureImportanceFrames(frame_size=8)
        >>> for _ in range(3):
        ...     _ = booster.update()
        ...     frame = frames.update(booster)
        >>> [f.step for f in frames.frames], frames.tensor().shape
        ([0, 1, 2], torch.Size([3, 6, 8, 8]))
    """

    def __init__(self, frame_size: int = 32, *, layout: Literal["grid", "pad"] = "grid",
                 clip: float = 8.0) -> None:
        if layout not in ("grid", "pad"):
            raise ValueError(f"layout must be 'grid' or 'pad', got {layout!r}")
        if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 2:
            raise ValueError(f"frame_size must be an int >= 2 (a diagnostician's "
                             f"profile.frame_size), got {frame_size!r}")
        if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
        self.frame_size = int(frame_size)
        self.layout = layout
        self.clip = float(clip)
        self._encoder = FrameEncoder(frame_size=self.frame_size, clip=self.clip)
        # Identity reference, frozen: the transforms of _maps() are the normalisation.
        self._encoder.load_state_dict({"history": [], "center": [0.0] * 6, "scale": [1.0] * 6})
        self.reset()

    def reset(self) -> None:
        """Forget the run (start of a new boosting run)."""
        self.frames: list[Frame] = []
        self._iterations = 0
        self._cum: dict[str, np.ndarray] | None = None
        self._prev: tuple[np.ndarray, np.ndarray] | None = None   # ch0, ch3 of the last frame
        self._gain_ref: float | None = None

    @property
    def gain_reference(self) -> float | None:
        """``ḡ``, the frozen gain unit (``None`` until a round with a split)."""
        return self._gain_ref

    def begin(self, booster: lightgbm.Booster, iterations: int = 0) -> None:
        """Start a run whose first ``iterations`` iterations are history, not rounds to film
        (``0`` for a fresh booster; ``init_model``'s iterations when training continues).
        Without it the first :meth:`update` films only the newest iteration."""
        self.reset()
        self._cum = {kind: _importance(booster, kind, iterations) for kind in ("gain", "split")}
        self._iterations = int(iterations)

    def update(self, booster: lightgbm.Booster, iteration: int | None = None) -> Frame:
        """The frame of the trees added since the previous call (or :meth:`begin`).

        Args:
            booster: the booster being trained.
            iteration: number of iterations of ``booster`` to account for (default: all,
                ``booster.current_iteration()``).
        """
        k = booster.current_iteration() if iteration is None else int(iteration)
        if k < 1:
            raise ValueError(f"iteration must be >= 1, got {k}")
        if self._cum is None:
            self.begin(booster, k - 1)
        if k <= self._iterations:
            raise ValueError(f"iteration {k} is not after the previous frame's "
                             f"({self._iterations})")
        cum = {kind: _importance(booster, kind, k) for kind in ("gain", "split")}
        # Differences of cumulative float sums: clamp the last-digit noise at 0.
        gain = np.clip(cum["gain"] - self._cum["gain"], 0.0, None)
        split = np.clip(cum["split"] - self._cum["split"], 0.0, None)
        before = self._cum["gain"]
        self._cum, self._iterations = cum, k
        if self._gain_ref is None and gain.sum() > 0:
            self._gain_ref = float(gain.sum() / gain.size)
        frame = self._frame(gain, cum["gain"], before, split, cum["split"], step=k - 1)
        self.frames.append(frame)
        return frame

    def replay(self, booster: lightgbm.Booster, every: int = 1) -> list[Frame]:
        """Frames of every ``every``-th round of a trained booster, as :meth:`update` makes them
        (resets this object first).

        Example:
            >>> import lightgbm as lgb, numpy as np
            >>> x = np.random.default_rng(1).normal(size=(200, 5)); y = (x[:, 1] > 0).astype(int)
            >>> b = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
            ...               lgb.Dataset(x, y), num_boost_round=6)
            >>> [f.step for f in FeatureImportanceFrames(8).replay(b, every=2)]
            [1, 3, 5]
        """
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.begin(booster, 0)
        for k in range(every, booster.current_iteration() + 1, every):
            self.update(booster, k)
        return list(self.frames)

    def tensor(self) -> torch.Tensor:
        """The frames so far stacked as ``N×6×S×S`` bfloat16."""
        if not self.frames:
            return torch.empty(0, 6, self.frame_size, self.frame_size, dtype=torch.bfloat16)
        return torch.stack([f.tensor for f in self.frames])

    # ------------------------------------------------------------------ internals
    def _frame(self, gain: np.ndarray, gain_cum: np.ndarray, gain_before: np.ndarray,
               split: np.ndarray, split_cum: np.ndarray, step: int) -> Frame:
        unit = self._gain_ref or 1.0   # before any split every gain is 0 anyway
        floor = math.log(GAIN_FLOOR)
        ch0 = np.log(gain / unit + GAIN_FLOOR)
        ch3 = np.log1p(split)
        prev3 = np.zeros_like(ch3) if self._prev is None else self._prev[1]
        self._prev = (ch0, ch3)
        round_share = _log_share(gain)
        # Novelty: a tree that adds nothing (no split) says nothing; a first tree is compared
        # with "no preference" (the uniform share, log 0).
        before = _log_share(gain_before) if gain_before.sum() > 0 else np.zeros_like(ch0)
        novelty = round_share - before if gain.sum() > 0 else np.zeros_like(ch0)
        channels = [ch0, _log_share(gain_cum), novelty, ch3, np.log1p(split_cum), ch3 - prev3]
        fills = [floor, floor, 0.0, 0.0, 0.0, 0.0]
        maps = [self._layout(torch.from_numpy(c).float(), fill)
                for c, fill in zip(channels, fills)]
        tensor, finite = self._encoder.encode_maps(maps)
        stats = {"gain": float(gain.sum()), "split": float(split.sum()),
                 "gain_cum": float(gain_cum.sum()), "gain_unit": float(unit),
                 "features_used": int((split > 0).sum())}
        return Frame(tensor=tensor, step=step, epoch=None, layers=CHANNELS, finite=finite,
                     stats=stats)

    def _layout(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Features row-major on a square map; padding reads as an unused feature."""
        n = values.numel()
        side = max(1, math.isqrt(n - 1) + 1) if n > 1 else 1
        if self.layout == "pad" and n <= self.frame_size ** 2:
            side = self.frame_size
        grid = torch.full((side * side,), fill, dtype=torch.float32)
        grid[:n] = values
        return grid.reshape(side, side)


class TEViDLightGBMCallback:
    """``lightgbm.train`` callback: diagnose every round, stop on a confirmed alert.

    After every ``every``-th boosting round it adds the round's
    :class:`FeatureImportanceFrames` frame to a GBDT diagnostician (a TEViD fine-tuned on such
    frames, e.g. by ``experiments/gbdt_pilot.py``) and applies the stop rules shared by every
    integration (:mod:`tevid_hpo.decision`) — a confirmed alert among ``prune_on`` (Overfitting
    by default), or with ``cost`` a :class:`~tevid_hpo.cost.CostModel` stop over the rounds
    left:

    * **standalone** (``trial=None``): it raises ``lightgbm.callback.EarlyStopException`` with
      the best iteration so far on the monitored validation metric, so ``lightgbm.train`` ends
      and sets ``booster.best_iteration`` / ``best_score`` exactly as its own
      ``early_stopping`` does (``booster.predict`` then uses the best iteration);
    * **with an Optuna trial** (like ``optuna_integration.LightGBMPruningCallback(trial,
      metric, valid_name)``): it reports the metric every round, writes the diagnosis to the
      trial as :class:`~tevid_hpo.monitor.TrialMonitor` does (user attribute ``"tevid"``, read
      by :class:`~tevid_hpo.pruners.TEViDPruner`), and raises :class:`optuna.TrialPruned` on
      its own stop — recording ``"tevid_prune_reason"`` — or when ``trial.should_prune()``
      says the study's pruner wants to.

    The cost rule weighs what a stop risks, the run's standing in the search: with an Optuna
    trial, the share of the study's other trials whose best tracked metric up to the same
    boosting round the run's best so far beats (:func:`~tevid_hpo.pruners.study_standing`, as
    :class:`~tevid_hpo.pruners.TEViDPruner` does). Standalone the callback watches one booster
    and no other run exists to compare it with (its own earlier rounds are the run, not
    rivals), so the standing is unknown (``None``): the rule without standing.

    Args:
        diagnostician: a GBDT :class:`~tevid_hpo.diagnostician.Diagnostician` (or anything
            with its ``profile.frame_size``, ``reset()`` and ``update(frame, step=)``) or a path
            to its checkpoint. One per concurrently running booster: the callback resets it
            when a run starts and owns its window while the run lasts.
        trial: an ``optuna.Trial`` (or anything with ``report``/``should_prune``/
            ``set_user_attr``), or ``None``.
        metric: the validation metric to track (``"binary_logloss"``, …); default: the first
            metric LightGBM evaluates.
        valid_name: the validation set to track (its ``valid_names`` entry); default: the first
            one that is not the training data.
        prune_on: alert labels that stop.
        cost: the optional cost rule.
        min_confidence: ignore alerts less confident than this.
        every: diagnose every this many rounds (a frame then covers the trees added since the
            previous one).
        layout: frame layout (see :class:`FeatureImportanceFrames`).
        history_size, sync_every: as :class:`~tevid_hpo.monitor.TrialMonitor`'s.

    Attributes:
        frames: the run's :class:`FeatureImportanceFrames` (``frames.frames`` lists them).
        history: every diagnosis as a compact dict.
        alert: the first confirmed alert label (latched), or ``None``.
        stopped_at: the 0-based iteration at which the callback stopped the run, or ``None``.
        reason: why it stopped (``TEViDPruner``'s layout), or ``None``.
        error: why diagnosis turned itself off, or ``None``. A failure in the frames or the
            diagnostician never ends the training: it is logged once, written to the trial as
            ``"tevid_error"`` (the pruner then defers to its wrapped pruner) and boosting
            continues undiagnosed.
        best_iteration: 0-based iteration with the best tracked metric so far.

    Example:
        >>> import lightgbm as lgb, numpy as np, warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     diag = Diagnostician.from_pretrained("tiny", device="cpu")  # untrained
        >>> cb = TEViDLightGBMCallback(diag)
        >>> x = np.random.default_rng(0).normal(size=(300, 8)); y = (x[:, 0] > 0).astype(int)
        >>> dtrain = lgb.Dataset(x[:200], y[:200]); dval = lgb.Dataset(x[200:], y[200:])
        >>> params = {"objective": "binary", "verbose": -1, "num_threads": 1}
        >>> b = lgb.train(params, dtrain, 10, valid_sets=[dval], callbacks=[cb])
        >>> len(cb.history), tuple(cb.frames.frames[-1].tensor.shape)
        (10, (6, 16, 16))
    """

    def __init__(self, diagnostician: Diagnostician | str | os.PathLike[str],
                 trial: Any | None = None, metric: str | None = None,
                 valid_name: str | None = None, *,
                 prune_on: Collection[str] = (OVERFITTING,), cost: CostModel | None = None,
                 min_confidence: float = 0.0, every: int = 1,
                 layout: Literal["grid", "pad"] = "grid", history_size: int = 16,
                 sync_every: int = 10) -> None:
        if isinstance(diagnostician, (str, os.PathLike)):
            diagnostician = Diagnostician.from_pretrained(diagnostician, device="cpu")
        # Duck-typed: anything with Diagnostician's update/reset (a stand-in in tests, a wrapper).
        if not (callable(getattr(diagnostician, "update", None))
                and callable(getattr(diagnostician, "reset", None))):
            raise TypeError(f"diagnostician must be a Diagnostician (or have its update/reset) or "
                            f"a checkpoint path, got "
                            f"{type(diagnostician).__name__}")
        for name, value in (("every", every), ("history_size", history_size),
                            ("sync_every", sync_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        # Instance attributes: lightgbm.train gives callbacks without an instance ``order`` one
        # from their list position. 25 runs after ``record_evaluation`` (20) and before
        # ``early_stopping`` (30), so both see the round in which this callback stops.
        self.order = 25
        self.before_iteration = False
        self.diagnostician = diagnostician
        self.trial = trial
        self.metric = metric
        self.valid_name = valid_name
        #: The validated stop settings (:class:`~tevid_hpo.decision.StopRules`).
        # No leader guard: ending boosting on Overfitting is early stopping of this model,
        # not the loss of a configuration (the GBDT pilot measures exactly this decision).
        self.rules = StopRules(tuple(prune_on) if not isinstance(prune_on, str) else prune_on,
                               cost, min_confidence, spare_leaders=None)
        self.prune_on, self.min_confidence = self.rules.prune_on, self.rules.min_confidence
        self.cost = cost
        self.every = int(every)
        self.history_size = int(history_size)
        self.sync_every = int(sync_every)
        self.frames = FeatureImportanceFrames(diagnostician.profile.frame_size, layout=layout)
        self._run: tuple[int, int] | None = None
        self._start_run()

    # ------------------------------------------------------------------ results
    @property
    def alert(self) -> str | None:
        """The run's first confirmed alert label (latched), or ``None``."""
        return next(iter(self.alerts), None)

    @property
    def last(self) -> Diagnosis | None:
        """The latest diagnosis."""
        return self._latest

    # ------------------------------------------------------------------ callback
    def __call__(self, env: CallbackEnv) -> None:
        if not isinstance(env.model, lightgbm.Booster):
            raise TypeError("TEViDLightGBMCallback supports lightgbm.train, not lightgbm.cv: "
                            "each fold's booster is a separate run to diagnose")
        run = (env.begin_iteration, env.end_iteration)
        if self._run != run or env.iteration == env.begin_iteration:
            self._start_run(run)
            self.frames.begin(env.model, env.begin_iteration)
        self._track(env)
        if self.trial is not None and self._score is not None:
            self.trial.report(self._score, step=env.iteration)
        done = env.iteration + 1 - env.begin_iteration
        if done % self.every == 0 and self.error is None:
            try:
                frame = self.frames.update(env.model, env.iteration + 1)
                diagnosis = self.diagnostician.update(frame, step=env.iteration)
            except Exception as err:  # noqa: BLE001 - monitoring must never end the training
                self._fail(err, env.iteration)
            else:
                self._record(diagnosis)
                reason = self._reason(done, env.end_iteration - env.begin_iteration)
                if reason is not None:
                    self._stop(env, reason)
        if self.trial is not None and self.trial.should_prune():
            self._sync()
            raise _trial_pruned(f"Trial was pruned at iteration {env.iteration}.")

    # ------------------------------------------------------------------ internals
    def _start_run(self, run: tuple[int, int] | None = None) -> None:
        self._run = run
        self.diagnostician.reset()
        self.frames.reset()
        self.history: list[dict[str, Any]] = []
        self.alerts: dict[str, dict[str, Any]] = {}
        self._latest: Diagnosis | None = None
        self._score: float | None = None
        self._entry_index: int | None = None
        self.best_iteration: int | None = None
        self._best_score: float | None = None
        self._best_results: list[Any] = []
        self.stopped_at: int | None = None
        self.reason: dict[str, Any] | None = None
        self.error: str | None = None
        self._since_sync = 0

    def _track(self, env: CallbackEnv) -> None:
        """Follow the chosen (validation set, metric) and remember its best iteration."""
        results = list(env.evaluation_result_list or [])
        if self._entry_index is None:
            self._entry_index = self._find_entry(env, results)
        if self._entry_index is None:
            self.best_iteration, self._best_results = env.iteration, results
            return
        entry = results[self._entry_index]
        score, higher_better = float(entry[2]), bool(entry[3])
        self._score = score
        better = self._best_score is None or (score > self._best_score if higher_better
                                              else score < self._best_score)
        if better:
            self._best_score, self.best_iteration, self._best_results = (
                score, env.iteration, results)

    def _find_entry(self, env: CallbackEnv, results: Sequence[Any]) -> int | None:
        train_name = getattr(env.model, "_train_data_name", "training")
        for i, entry in enumerate(results):
            name, metric = entry[0], entry[1]
            if self.valid_name is None and name == train_name:
                continue
            if self.valid_name is not None and name != self.valid_name:
                continue
            if self.metric is not None and metric != self.metric:
                continue
            if self.trial is not None:
                _check_direction(self.trial, bool(entry[3]), metric)
            return i
        if self.trial is not None or self.metric is not None or self.valid_name is not None:
            raise ValueError(
                f"metric {self.metric or '(any)'} on {self.valid_name or 'a validation set'} "
                f"is not among LightGBM's evaluation results "
                f"{[(e[0], e[1]) for e in results]}: pass valid_sets= to lightgbm.train and "
                "check metric / valid_name")
        return None

    def _record(self, d: Diagnosis) -> None:
        self._latest = d
        self.history.append(history_entry(d))
        if d.alert is not None and d.alert not in self.alerts:
            self.alerts[d.alert] = alert_entry(d)
            logger.info("TEViD alert %s at boosting iteration %d", d.alert, d.step)
            self._sync()
            return
        self._since_sync += 1
        if self._since_sync >= self.sync_every:
            self._sync()

    def _reason(self, done: int, budget: int) -> dict[str, Any] | None:
        standing = (study_standing(getattr(self.trial, "study", None), self.trial)
                    if self.cost is not None else None)
        return self.rules.reason(self.alerts, self.history[-1] if self.history else None, done,
                                 budget, standing)

    def _stop(self, env: CallbackEnv, reason: dict[str, Any]) -> None:
        self.stopped_at, self.reason = env.iteration, {**reason, "report_step": env.iteration}
        logger.info("TEViD stopped boosting at iteration %d: %s (confidence %s)",
                    env.iteration, reason["label"], reason["confidence"])
        if self.trial is not None:
            self._sync()
            self.trial.set_user_attr(REASON_ATTR, self.reason)
            raise _trial_pruned(f"TEViD: {reason['label']} at iteration {env.iteration}.")
        best = env.iteration if self.best_iteration is None else self.best_iteration
        raise EarlyStopException(best, self._best_results)

    def _fail(self, err: BaseException, iteration: int) -> None:
        self.error = f"{type(err).__name__}: {err} (at boosting iteration {iteration})"
        logger.warning("TEViD diagnosis disabled for the rest of this run: %s. Boosting "
                       "continues without it.", self.error, exc_info=err)
        if self.trial is not None:
            try:
                self.trial.set_user_attr(ERROR_ATTR, self.error)
            except Exception as write_err:  # noqa: BLE001 - the storage may be what failed
                logger.debug("could not record %s on the trial: %r", ERROR_ATTR, write_err)

    def _payload(self) -> dict[str, Any]:
        latest = self.history[-1] if self.history else None
        step = latest["step"] if latest is not None else -1
        return {"version": FORMAT_VERSION, "every": self.every, "step": step, "epoch": None,
                "epochs_done": None, "n_diagnoses": len(self.history), "alert": self.alert,
                "alerts": {k: dict(v) for k, v in self.alerts.items()}, "latest": latest,
                "history": self.history[-self.history_size:], "source": "lightgbm"}

    def _sync(self) -> None:
        self._since_sync = 0
        if self.trial is not None:
            self.trial.set_user_attr(USER_ATTR, self._payload())


def _trial_pruned(message: str) -> Exception:
    import optuna

    return optuna.TrialPruned(message)


def _check_direction(trial: Any, higher_better: bool, metric: str) -> None:
    """Refuse a metric whose direction contradicts the study's (as optuna-integration does)."""
    study = getattr(trial, "study", None)
    if study is None or len(getattr(study, "directions", ())) != 1:
        return
    import optuna

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if maximize != higher_better:
        raise ValueError(f"the study direction ({study.direction.name}) does not match metric "
                         f"{metric!r} (higher is {'better' if higher_better else 'worse'})")
