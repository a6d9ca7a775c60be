"""Paper Appendix M (Table 23) at this machine's scale: Hyperband with and without TEViD, side by
side with the pruners and schedulers people use today.

    python -m experiments.hpo_benchmark                        # 3 seeds x 48 trials x <= 27 epochs
    python -m experiments.hpo_benchmark write_results=true     # ... and docs/results.md + figure
    python -m experiments.hpo_benchmark --quick                # every stage in seconds; no docs/

**The search.** A small CIFAR-style ResNet (``data_factory``'s ``resnet``: four torchvision
basic blocks) on the offline procedural ``shapes`` images (1,200 train / 400 validation /
400 test), SGD with Nesterov momentum, over ``lr`` log-uniform in ``[1e-3, 10]`` (above ~1 the
loss blows up), ``weight_decay`` log-uniform in ``[1e-5, 0.1]`` (the top of the range
under-fits) and the training subset ``train_size`` in ``{150, 400, 1200}`` (an epoch is always
one pass's worth of steps over the full split, as in ``tevid-hpo demo``, so 150 examples are
memorised: those trials overfit). Each trial trains at most ``max_epochs = 27`` epochs, which
makes Hyperband's rungs ``1, 3, 9, 27`` with ``reduction_factor = 3``. Trials report validation
accuracy every epoch (``metric=val_loss`` reports validation loss, the paper's choice, instead).

**Strategies.** Optuna: no pruning (``NopPruner``), ``MedianPruner``,
``SuccessiveHalvingPruner``, ``HyperbandPruner``, Hyperband + Curve-TCN (:class:`CurveTCNPruner`,
a ``HyperbandPruner`` that first stops on a confirmed Curve-TCN alert) and Hyperband + TEViD
(``TEViDPruner(HyperbandPruner(...))``). Ray Tune: ``HyperBandScheduler``,
:class:`~tevid_hpo.ray.TEViDHyperband` and ``ASHAScheduler``.

**Record, then replay.** Every strategy sees the same configurations in the same order: they are
drawn once per seed by ``QMCSampler(seed, scramble=True)`` (whose points do not depend on
results) and enqueued in that order into every study and Tune run. Every trial seeds its weights
and data order from ``(seed, trial number)`` exactly as ``tevid-hpo demo`` does, so a
configuration's training trajectory is the same under every strategy; only *how far* it gets
differs. Hence:

1. *Record* (:func:`record_all`): each ``(seed, trial)`` is trained **once** to ``max_epochs``
   with a real :class:`~tevid_hpo.monitor.TrialMonitor` and the real diagnostician attached.
   Per epoch the recording keeps train loss, validation accuracy and loss, test accuracy and loss
   (the held-out split no strategy ever sees), the seconds the epoch took (training steps and
   validation pass; the test pass is not timed), the seconds spent inside the monitor, the
   trial attribute ``"tevid"`` exactly as the monitor left it after ``epoch_end`` — what
   :class:`~tevid_hpo.pruners.TEViDPruner` reads at that epoch's ``should_prune()`` — and the
   flat result keys :func:`tevid_hpo.ray.metrics` gives ``TEViDHyperband``; per optimisation step
   it keeps loss, learning rate and gradient norm (the Curve-TCN's inputs). Recordings are JSON
   files under ``recordings`` (``~/.cache/tevid-hpo/hpo_benchmark`` by default), one per
   ``(seed, trial)``, written atomically, so an interrupted run loses at most one trial. The
   frames the diagnostician read are kept next to each (:mod:`.frames`), so another checkpoint
   re-diagnoses a recorded search (:func:`~.record.rediagnose`) instead of training it again.
2. *Replay* (:func:`replay_optuna`, :func:`replay_ray`): a real Optuna study per strategy and
   seed — the real pruner objects, in-memory storage, the same study name everywhere (Optuna's
   Hyperband assigns brackets by hashing the study name with the trial number) — whose objective
   replays the recorded epochs (``trial.set_user_attr("tevid", ...)`` as the live monitor would,
   ``trial.report``, ``trial.should_prune()``); and a real ``tune.Tuner`` per scheduler and
   seed whose trainable reports the recorded epochs (with checkpoints, so Hyperband can pause
   and resume it).

This is exact, not an approximation, for every strategy here: a pruner's decision at epoch ``t``
can only depend on what was reported up to ``t`` — TEViD's diagnosis at epoch ``t`` is computed
from frames up to ``t`` (``test_streaming_diagnosis_at_t_ignores_later_frames`` in
``tests/test_diagnostician.py``), the Curve-TCN is a causal network on the curve up to ``t``
(:class:`~core_models.baselines.curve_tcn.CausalTCN`; checked on prefixes by
``tests/test_hpo_benchmark.py``) — and the recorded trajectory up to ``t`` is the one a live run
would have produced. ``tests/test_hpo_benchmark.py`` runs a live study next to its
replay and checks they agree trial by trial.

**Accounting.** *Epochs* are the epochs a trial actually trained (reports made). *Wall time* is
**replayed**: the sum of the recorded seconds of those epochs — for TEViD strategies with the
monitor's time, for the others without the time spent in the monitor's calls (the capture hooks
fire on one step in ``every`` and their cost stays in; see ``docs/hpo_benchmark.md``). A
strategy's *best validation accuracy* is that of the best trial that trained the full
``max_epochs`` (what one would deploy; a trial's accuracy is its best epoch's) and its *test
accuracy* is that trial's test accuracy at that epoch. A *false stop* is a trial stopped early
whose full-length best validation accuracy is the best of its seed's configurations (known from
the recording): the stop cost the search its best trial. Intervals are 95 % bootstrap intervals
(:func:`scipy.stats.bootstrap`, BCa over ``(seed, trial)`` pairs, percentile over seeds).

**Curve-TCN.** :class:`~core_models.baselines.curve_tcn.CurveTCN` is fitted on the factory
corpus's *train* runs and early-stopped on its *val* runs, with per-class alert thresholds at
5 % false alarms on healthy *val* runs and the same 3-consecutive rule as TEViD
(:func:`core_models.calibration.fit_class_thresholds`) — the protocol of ``experiments.evaluate``.
Without a corpus the strategy is skipped (it is never fitted on benchmark recordings: that would
leak). ``--quick`` fits it on a synthetic toy corpus, to exercise the path.

The package, one idea per module: ``config`` (configuration and quick profile), ``problem`` (what
is tuned, the configurations drawn), ``record`` (phase 1), ``frames`` (the frames a
recording keeps for re-diagnosis), ``curve_tcn`` (the Curve-TCN stopper),
``arms`` (the strategies), ``replay`` (phase 2), ``stats`` (intervals, false stops, summary),
``diagnosis`` (what TEViD saw), ``report`` (table, verdicts, section, figure), ``stoppers`` (the
other stop signals — Lightning-style cheap rule + CUSUM, LC-PFN — in the form the TEViD wrappers
read), ``targets`` (issue 25's per-base targets, the Pareto front and figure) and ``driver``
(end to end, command line). ``task=NAME`` runs one of the out-of-distribution tasks of the
config instead of the in-distribution search (docs/hpo_benchmark.md, "Issue 25").

Example:
    >>> cfg = load_config(["recordings=/tmp/hpo-bench"], quick=True)      # doctest: +SKIP
    >>> summary = run_benchmark(cfg)                                       # doctest: +SKIP
    >>> summary["strategies"]["Hyperband + TEViD"]["epochs_per_trial"]     # doctest: +SKIP
"""

from __future__ import annotations

import os

# Keep Ray from writing ~/.ray/auth_token on a local cluster (before Ray is imported or started),
# and Tune's console output to what `verbose=0` promises (the newer output engine ignores it).
# Here, so that importing any module of the package sets them first.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from experiments.cli import CONF
from experiments.hpo_benchmark.arms import Strategy, optuna_strategies, ray_strategies
from experiments.hpo_benchmark.config import COMMAND, FIGURE, SECTION, apply_quick, load_config
from experiments.hpo_benchmark.curve_tcn import (
    CURVE_ATTR,
    CurveTCNDetector,
    CurveTCNPruner,
    fit_curve_tcn,
)
from experiments.hpo_benchmark.driver import main, run_benchmark
from experiments.hpo_benchmark.problem import Problem, TrialConfig, draw_configs, suggest
from experiments.hpo_benchmark.record import (
    EpochRecord,
    TrialRecording,
    diagnostician_key,
    record_all,
    recordings_dir,
    train_trial,
)
from experiments.hpo_benchmark.replay import TrialOutcome, replay_optuna, replay_ray
from experiments.hpo_benchmark.stats import bootstrap, false_stops, summarize
from experiments.hpo_benchmark.stoppers import PFNStopper, SignalStop, cheap_rule_stop
from experiments.hpo_benchmark.targets import base_targets, pareto_front

__all__ = [
    "COMMAND",
    "CONF",
    "CURVE_ATTR",
    "FIGURE",
    "SECTION",
    "CurveTCNDetector",
    "CurveTCNPruner",
    "EpochRecord",
    "PFNStopper",
    "Problem",
    "SignalStop",
    "Strategy",
    "TrialConfig",
    "TrialOutcome",
    "TrialRecording",
    "apply_quick",
    "base_targets",
    "bootstrap",
    "cheap_rule_stop",
    "diagnostician_key",
    "draw_configs",
    "false_stops",
    "fit_curve_tcn",
    "load_config",
    "main",
    "optuna_strategies",
    "pareto_front",
    "ray_strategies",
    "record_all",
    "recordings_dir",
    "replay_optuna",
    "replay_ray",
    "run_benchmark",
    "suggest",
    "summarize",
    "train_trial",
]
