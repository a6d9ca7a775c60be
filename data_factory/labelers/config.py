"""Thresholds, windows and variants of the Appendix-A labeling rules.

:class:`LabelConfig` holds every number the rules use; the defaults are the paper's (Appendix A.2)
except where our runs are much shorter than the paper's, which is documented field by field and in
``docs/labeling.md``. :data:`VARIANTS` holds the sensitivity variants of Tables 7 and 8.

Example:
    >>> cfg = LabelConfig.variant("forgetting_0.25")
    >>> cfg.forget_threshold, LabelConfig().forget_threshold
    (0.25, 0.3)
    >>> LabelConfig.variant("priority_swap").priority[2:4]
    ('Overfitting', 'ConceptBias')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from data_factory.labelers.healthy import Floor
from data_factory.labels import CONCEPT_BIAS, OVERFITTING, PRIORITY, UNKNOWN

__all__ = ["PRIORITY_SWAP", "VARIANTS", "LabelConfig", "spike_windows"]

#: Table 7 "Priority swap": Concept Bias and Overfitting exchanged.
PRIORITY_SWAP: tuple[str, ...] = tuple(
    {CONCEPT_BIAS: OVERFITTING, OVERFITTING: CONCEPT_BIAS}.get(c, c) for c in PRIORITY
)

# The paper's spike windows are 500 and 1000 steps. Its runs are CIFAR/Tiny-ImageNet scale; at a
# batch of 128 a 50k-image epoch is ~391 steps, so the windows are ~1.28 and ~2.56 epochs. Our
# factory runs are a few hundred steps in total, so we keep the windows' length *in epochs*
# (known before training from steps_per_epoch, hence causal) with floors in steps so the robust
# statistics still have enough samples.
_PAPER_STEPS_PER_EPOCH = 391.0


@dataclass(frozen=True)
class LabelConfig:
    """Every threshold of the Appendix-A rules, plus the sensitivity switches.

    Attributes:
        overfit_window: look-ahead window ``W_ep`` in epochs (paper: 10).
        overfit_alpha: BY-adjusted significance level of the trend tests (paper: 0.05).
        overfit_min_history: epochs before ``e0`` needed for the gap's median/std (paper: unstated;
            ``std`` needs >= 2).
        overfit_gap_k: practical significance multiplier on the historical gap std (paper: 2).
        overfit_gap_spread: how "historical fluctuation" of the gap is measured: ``"std"`` of its
            past values (paper) or ``"robust_diff"``, the robust spread of its epoch-to-epoch
            changes (see :func:`~data_factory.labelers.overfitting._gap_spread`).
        mk_alternative: ``"two-sided"`` (pymannkendall's p with the sign of ``z``) or
            ``"one-sided"`` (the p of the directional hypothesis).
        mk_prewhitening: how the AR(1) pre-whitening treats a trend: ``"pw"`` removes the lag-1
            autocorrelation of the raw series (Yue–Wang modification; the paper's wording), which
            on a steadily rising loss mistakes the trend for autocorrelation and tests
            near-constant differences; ``"tfpw"`` (trend-free pre-whitening, Yue et al. 2002)
            estimates the autocorrelation after removing Sen's slope and adds the trend back.
        lyap_horizon: Lyapunov window ``H`` in consecutive probed steps (paper: 50).
        lyap_min_horizon: shortest contiguous probed segment still judged (as one window) when
            the factory probes segments shorter than ``H``.
        lyap_level: bootstrap confidence level (paper: 0.99).
        lyap_reps: bootstrap replicates (paper: 2000).
        lyap_block: expected stationary-bootstrap block length (paper: 10, for ``H = 50``); a
            shorter window uses ``min(lyap_block, len / 5)``, the paper's block/horizon ratio.
        lyap_margin: the lower bound must exceed this (paper: 0). Healthy non-convex training
            sits just above 0, so calibrate it on reference runs with
            :func:`~data_factory.labelers.instability.choose_lyap_margin`.
        spike_z: robust z-score of a spike (paper: 3.5).
        spike_count: spikes needed inside one window (paper: 3).
        spike_min_rise: a spike must also exceed the past median by this fraction of the run's
            early loss level (paper: no such condition, 0; see ``docs/labeling.md``).
        spike_skip_task_switch: ignore spikes from a scheduled task switch until the spike
            baseline window has passed (privileged schedule knowledge; paper: not discussed,
            ``False``), so the switch's loss jump is left to the forgetting rule.
        spike_window_steps / spike_baseline_steps: explicit window lengths in steps; ``None``
            (default) scales the paper's 500/1000 steps to the run's epoch length.
        spike_min_window_steps / spike_min_baseline_steps: floors of the scaled windows.
        spike_min_history: steps of baseline before any z-score is computed.
        forget_threshold: relative accuracy drop (paper: 0.30; Table 7: 0.25 / 0.35).
        forget_window: post-switch window in epochs (paper: 10; Table 7: 5); capped at the epochs
            the run's schedule has after the switch.
        forget_min_window: fewest post-switch epochs for which the rule is applied at all.
        forget_alpha: McNemar level (paper: 0.01).
        bias_alpha: level of the shortcut coefficient (paper: 0.01).
        bias_alternative: ``"greater"`` (paper: positive coefficient) or ``"two-sided"`` for probe
            sets whose shortcut indicator marks *conflicting* cues.
        floors: performance floors per ``"dataset"`` or ``"arch/dataset"`` (see
            :func:`~data_factory.labelers.healthy.choose_floors`); a float means ``val_acc >= x``.
        require_floor: when ``True`` a run without a known floor cannot be Healthy.
        below_floor_label: label of runs with no predicate that miss the floor (a failed run with
            no recognised failure mode; ``Unknown`` by default).
        priority: A.1 priority, most severe first.
        train_only: Table 8 online-style labels (no validation curves, no optimizer internals).
        train_only_saturation: training accuracy that counts as "training set fitted".
        merge_concept_bias: Table 8 merged variant, Concept Bias reported as Overfitting.
        seed: seed of the bootstrap resampling (labels are deterministic).

    Example:
        >>> LabelConfig(forget_threshold=0.25).forget_window
        10
    """

    # -- overfitting (A.2) --
    overfit_window: int = 10
    overfit_alpha: float = 0.05
    overfit_min_history: int = 3
    overfit_gap_k: float = 2.0
    overfit_gap_spread: str = "std"
    mk_alternative: Literal["two-sided", "one-sided"] = "two-sided"
    mk_prewhitening: Literal["pw", "tfpw"] = "pw"
    # -- instability (A.2) --
    lyap_horizon: int = 50
    lyap_min_horizon: int = 10
    lyap_level: float = 0.99
    lyap_reps: int = 2000
    lyap_block: float = 10.0
    lyap_margin: float = 0.0
    spike_z: float = 3.5
    spike_count: int = 3
    spike_min_rise: float = 0.0
    spike_skip_task_switch: bool = False
    spike_window_steps: int | None = None
    spike_baseline_steps: int | None = None
    spike_window_epochs: float = 500 / _PAPER_STEPS_PER_EPOCH
    spike_baseline_epochs: float = 1000 / _PAPER_STEPS_PER_EPOCH
    spike_min_window_steps: int = 20
    spike_min_baseline_steps: int = 40
    spike_min_history: int = 20
    spike_eps: float = 1e-6
    # -- catastrophic forgetting (A.2) --
    forget_threshold: float = 0.30
    forget_window: int = 10
    forget_min_window: int = 3
    forget_alpha: float = 0.01
    # -- concept bias (A.2) --
    bias_alpha: float = 0.01
    bias_alternative: Literal["greater", "two-sided"] = "greater"
    # -- healthy (A.2, Table 10) --
    floors: Mapping[str, Floor | float] = field(default_factory=dict)
    require_floor: bool = False
    below_floor_label: str = UNKNOWN
    # -- combination and variants (A.1, A.3, A.4) --
    priority: tuple[str, ...] = PRIORITY
    train_only: bool = False
    train_only_saturation: float = 0.99
    merge_concept_bias: bool = False
    seed: int = 0

    def replace(self, **changes: object) -> LabelConfig:
        """A copy with some fields changed.

        Example:
            >>> LabelConfig().replace(overfit_window=5).overfit_window
            5
        """
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def variant(cls, name: str, **changes: object) -> LabelConfig:
        """One of the Table 7/8 variants (see :data:`VARIANTS`), optionally further changed.

        Example:
            >>> LabelConfig.variant("train_only").train_only
            True
        """
        if name not in VARIANTS:
            raise KeyError(f"unknown labeling variant {name!r}; known: {sorted(VARIANTS)}")
        return VARIANTS[name].replace(**changes)


def spike_windows(cfg: LabelConfig, steps_per_epoch: int | None) -> tuple[int, int]:
    """Spike count window and robust-baseline window, in steps, for a run.

    Explicit ``spike_*_steps`` win; otherwise the paper's 500/1000-step windows are kept at the
    same length in epochs (``steps_per_epoch`` is known before training, so this stays causal),
    floored so the median/IQR see enough samples and capped at the paper's step counts.

    Example:
        >>> spike_windows(LabelConfig(), steps_per_epoch=40)
        (51, 102)
        >>> spike_windows(LabelConfig(spike_window_steps=500, spike_baseline_steps=1000), 40)
        (500, 1000)
    """
    if steps_per_epoch:
        win = round(cfg.spike_window_epochs * steps_per_epoch)
        base = round(cfg.spike_baseline_epochs * steps_per_epoch)
    else:  # no epoch length known: the paper's own step counts
        win, base = 500, 1000
    win = min(max(win, cfg.spike_min_window_steps), 500)
    base = min(max(base, cfg.spike_min_baseline_steps), 1000)
    if cfg.spike_window_steps is not None:
        win = int(cfg.spike_window_steps)
    if cfg.spike_baseline_steps is not None:
        base = int(cfg.spike_baseline_steps)
    return int(win), int(base)


#: Table 7 (thresholds, window, priority) and Table 8 (train-only, merged) variants.
VARIANTS: dict[str, LabelConfig] = {
    "default": LabelConfig(),
    "forgetting_0.25": LabelConfig(forget_threshold=0.25),
    "forgetting_0.35": LabelConfig(forget_threshold=0.35),
    "shorter_window": LabelConfig(forget_window=5),
    "priority_swap": LabelConfig(priority=PRIORITY_SWAP),
    "train_only": LabelConfig(train_only=True),
    "merged_concept_bias": LabelConfig(merge_concept_bias=True),
}
