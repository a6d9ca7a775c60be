"""TEViDPruner from stored diagnoses: decision order, recorded reasons, Hyperband identity,
storages. Diagnoses are written by hand here; tests/test_optuna_e2e.py uses real monitors."""

from __future__ import annotations

import copy
import logging
import pickle

import optuna
import pytest
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    SuccessiveHalvingPruner,
    _filter_study,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from data_factory.labels import FORGETTING, INSTABILITY, OVERFITTING
from tevid_hpo.cost import CostModel
from tevid_hpo.monitor import ERROR_ATTR, NONFINITE_LOSS, USER_ATTR
from tevid_hpo.pruners import (
    REASON_ATTR,
    REASON_SYSTEM_ATTR,
    TEViDPruner,
    prune_reason,
    record_prune_reason,
    study_standing,
    with_stopped_trials_held,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def alert(label, step=30, epoch=0, confidence=0.97, reason="diagnosis"):
    return {"label": label, "step": step, "epoch": epoch, "confidence": confidence,
            "vacuity": 0.1, "reason": reason}


def diagnosis(alerts=(), latest=None):
    return {"version": 1, "alerts": {a["label"]: a for a in alerts}, "latest": latest,
            "alert": alerts[0]["label"] if alerts else None, "history": []}


def latest(p_instability, vacuity=0.05, step=10):
    rest = (1.0 - p_instability) / 4
    probs = {"Healthy": rest, "Overfitting": rest, "Instability": p_instability,
             "Forgetting": rest, "ConceptBias": rest}
    return {"step": step, "epoch": 0, "label": "Instability", "probs": probs,
            "vacuity": vacuity, "alert": None, "finite": True}


class Always(BasePruner):
    """A wrapped pruner that always (or never) prunes, counting its calls."""

    def __init__(self, answer: bool = True) -> None:
        self.answer, self.calls = answer, 0

    def prune(self, study, trial):
        self.calls += 1
        return self.answer


def run_one(pruner, attrs=None, steps=1, storage=None, extra=None):
    """One trial that stores ``attrs`` and reports ``steps`` values; returns the frozen trial."""
    study = optuna.create_study(pruner=pruner, storage=storage)

    def objective(trial):
        if attrs is not None:
            trial.set_user_attr(USER_ATTR, attrs)
        for key, value in (extra or {}).items():
            trial.set_user_attr(key, value)
        for step in range(steps):
            trial.report(1.0, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1.0

    study.optimize(objective, n_trials=1)
    return study, study.trials[0]


# ----------------------------------------------------------------------------- identity
def test_default_wraps_a_hyperband_and_is_one():
    p = TEViDPruner()
    assert isinstance(p, TEViDPruner) and isinstance(p, HyperbandPruner)
    assert type(p.wrapped) is HyperbandPruner and p.prune_on == (INSTABILITY, OVERFITTING)


def test_is_a_hyperband_exactly_when_wrapping_one():
    hb = HyperbandPruner(min_resource=1, max_resource=9)
    assert isinstance(TEViDPruner(hb), HyperbandPruner) and TEViDPruner(hb).wrapped is hb
    assert isinstance(TEViDPruner(wrapped=hb), HyperbandPruner)
    for other in (None, MedianPruner(), Always()):
        p = TEViDPruner(wrapped=other)
        assert isinstance(p, TEViDPruner) and not isinstance(p, HyperbandPruner)


@pytest.mark.parametrize("wrapped", ["hyperband", None, MedianPruner()])
def test_pickle_and_deepcopy_keep_the_class(wrapped):
    p = TEViDPruner(wrapped, prune_on=(INSTABILITY,), min_confidence=0.5)
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert type(q) is type(p) and q.prune_on == (INSTABILITY,)
        assert type(q.wrapped) is type(p.wrapped)


def _bracket_partition(pruner, study_name="brackets"):
    """Trial numbers grouped by the study view Optuna hands the sampler."""
    study = optuna.create_study(study_name=study_name, pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(0))

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        for step in range(9):
            trial.report(trial.number + step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return trial.number

    study.optimize(objective, n_trials=20)
    views = {}
    for t in study.trials:
        view = _filter_study(study, t)
        views[t.number] = (type(view).__name__, tuple(u.number for u in view.get_trials()))
    return views


def test_sampler_gets_the_per_bracket_view_of_the_wrapped_hyperband():
    ours = _bracket_partition(TEViDPruner(HyperbandPruner(1, 9, 3)))
    reference = _bracket_partition(HyperbandPruner(1, 9, 3))
    assert {kind for kind, _ in ours.values()} == {"_BracketStudy"}
    assert {n: trials for n, (_, trials) in ours.items()} == \
        {n: trials for n, (_, trials) in reference.items()}
    assert len({trials for _, trials in ours.values()}) > 1   # more than one bracket: a real view
    alone = _bracket_partition(TEViDPruner(wrapped=None))
    assert {kind for kind, _ in alone.values()} == {"Study"}   # no Hyperband, no bracket view


# ----------------------------------------------------------------------------- decisions
def test_prunes_on_a_confirmed_alert_and_records_why():
    wrapped = Always(False)
    _, t = run_one(TEViDPruner(wrapped), diagnosis([alert(INSTABILITY, step=30)]))
    assert t.state == TrialState.PRUNED and wrapped.calls == 0
    reason = prune_reason(t)
    assert reason == t.user_attrs[REASON_ATTR] == t.system_attrs[REASON_SYSTEM_ATTR]
    assert reason == {"pruner": "TEViD", "rule": "alert", "label": INSTABILITY,
                      "reason": "diagnosis", "step": 30, "epoch": 0, "confidence": 0.97,
                      "vacuity": 0.1, "report_step": 0}


def test_earliest_alert_in_prune_on_wins():
    attrs = diagnosis([alert(FORGETTING, step=10), alert(OVERFITTING, step=50),
                       alert(INSTABILITY, step=40)])
    _, t = run_one(TEViDPruner(None), attrs)
    assert prune_reason(t)["label"] == INSTABILITY          # Forgetting is not in prune_on
    _, t = run_one(TEViDPruner(None, prune_on=(FORGETTING,)), attrs)
    assert prune_reason(t)["label"] == FORGETTING


def test_alert_outside_prune_on_or_below_min_confidence_defers():
    attrs = diagnosis([alert(INSTABILITY, confidence=0.6)])
    _, t = run_one(TEViDPruner(None, prune_on=(OVERFITTING,)), attrs)
    assert t.state == TrialState.COMPLETE
    _, t = run_one(TEViDPruner(None, min_confidence=0.7), attrs)
    assert t.state == TrialState.COMPLETE and REASON_ATTR not in t.user_attrs
    wrapped = Always(True)
    _, t = run_one(TEViDPruner(wrapped, min_confidence=0.7), attrs)
    assert t.state == TrialState.PRUNED and wrapped.calls == 1
    assert prune_reason(t) == {"pruner": "Always", "rule": "wrapped", "report_step": 0,
                               "value": 1.0}


def test_non_finite_loss_alert_prunes_with_its_reason():
    attrs = diagnosis([alert(INSTABILITY, step=6, confidence=1.0, reason="non-finite loss")])
    _, t = run_one(TEViDPruner(None), attrs)
    assert prune_reason(t)["reason"] == "non-finite loss"


def test_without_a_monitor_it_is_the_wrapped_pruner():
    wrapped = Always(True)
    _, t = run_one(TEViDPruner(wrapped), attrs=None)
    assert t.state == TrialState.PRUNED and prune_reason(t)["rule"] == "wrapped"
    _, t = run_one(TEViDPruner(None), attrs=None, steps=3)
    assert t.state == TrialState.COMPLETE


def test_monitor_error_falls_back_to_wrapped_but_keeps_earlier_alerts():
    cost = CostModel()
    error = {ERROR_ATTR: "RuntimeError: boom (while step 40)"}
    # The cost rule would stop this trial (strong latest belief), but the latest diagnosis
    # of a failed monitor is stale: only `wrapped` decides.
    attrs = diagnosis(latest=latest(0.9))
    _, t = run_one(TEViDPruner(Always(False), cost=cost, max_resource=10), attrs, extra=error)
    assert t.state == TrialState.COMPLETE
    _, t = run_one(TEViDPruner(Always(False), cost=cost, max_resource=10), attrs)
    assert prune_reason(t)["rule"] == "cost"                 # same attrs, no error: cost stops
    # An alert confirmed before the failure was a complete detection: it still prunes.
    _, t = run_one(TEViDPruner(Always(False)), diagnosis([alert(INSTABILITY)]), extra=error)
    assert prune_reason(t)["pruner"] == "TEViD"


def test_malformed_attribute_warns_once_and_defers(caplog):
    pruner = TEViDPruner(Always(False))
    with caplog.at_level(logging.WARNING, logger="tevid_hpo.pruners"):
        for _ in range(2):
            _, t = run_one(pruner, {"version": 99, "alerts": {"x": 1}}, steps=2)
            assert t.state == TrialState.COMPLETE
    assert len([r for r in caplog.records if r.name == "tevid_hpo.pruners"]) == 1


# ----------------------------------------------------------------------------- cost rule
def test_cost_rule_stops_early_on_a_strong_belief_but_not_when_nothing_is_left():
    pruner = TEViDPruner(None, cost=CostModel(), max_resource=10)
    _, t = run_one(pruner, diagnosis(latest=latest(0.6)))      # 1 of 10 steps used
    reason = prune_reason(t)
    assert t.state == TrialState.PRUNED and reason["rule"] == "cost"
    assert reason["label"] == INSTABILITY and reason["budget_used"] == 1
    assert reason["cost_stop"] < reason["cost_continue"]
    assert reason["confidence"] > reason["p_threshold"]
    # The same diagnosis read at the last step: no budget left to save, so no stop.
    study = optuna.create_study()
    last = optuna.trial.create_trial(value=1.0, intermediate_values={9: 1.0},
                                     user_attrs={USER_ATTR: diagnosis(latest=latest(0.6))})
    assert pruner.prune(study, last) is False
    first = optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0},
                                      user_attrs={USER_ATTR: diagnosis(latest=latest(0.6))})
    assert pruner.prune(study, first) is True
    # Weak belief (all vacuity): never stops.
    _, t = run_one(pruner, diagnosis(latest=latest(0.2, vacuity=1.0)), steps=10)
    assert t.state == TrialState.COMPLETE


def test_cost_rule_takes_the_budget_from_the_wrapped_hyperband():
    attrs = diagnosis(latest=latest(0.6))
    _, t = run_one(TEViDPruner(HyperbandPruner(1, 10), cost=CostModel()), attrs)
    assert prune_reason(t)["budget"] == 10
    # max_resource="auto" is unknown before a trial completes: the cost rule waits.
    _, t = run_one(TEViDPruner(cost=CostModel()), attrs, steps=3)
    assert t.state == TrialState.COMPLETE


@pytest.mark.parametrize("direction, lead, trail", [("maximize", 0.9, 0.1),
                                                    ("minimize", 0.1, 0.9)])
def test_cost_rule_spares_the_leader_at_a_belief_that_stops_a_trailing_trial(direction, lead,
                                                                              trail):
    # Issue 25: the stop decision weighs what stopping risks, the trial's standing at its step.
    # 5 of 10 steps used, P(anomaly) = 0.6: above the threshold at standing 0 (0.16) and
    # unknown, below it at standing 1 (0.68).
    pruner = TEViDPruner(None, cost=CostModel(), max_resource=10)
    study = optuna.create_study(direction=direction, pruner=pruner)
    for _ in range(3):   # finished rivals, mid-field at step 4
        study.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={4: 0.5}))

    def running(value):
        t = study.ask()
        t.set_user_attr(USER_ATTR, diagnosis(latest=latest(0.5)))
        for step in range(5):
            t.report(value, step)
        return study.get_trials(deepcopy=False)[t.number]

    leader, trailer = running(lead), running(trail)
    assert pruner.prune(study, trailer) is True
    reason = prune_reason(study.trials[trailer.number])
    assert reason["rule"] == "cost" and reason["standing"] == 0.0
    assert reason["p_threshold"] == round(CostModel().stop_threshold(5, 10, standing=0.0), 4)
    assert pruner.prune(study, leader) is False               # beats all 4 rivals: standing 1
    assert prune_reason(study.trials[leader.number]) is None


def test_cost_rule_without_a_rival_by_the_step_decides_as_before():
    # No other trial reported by this trial's step (the first trial): standing unknown.
    pruner = TEViDPruner(None, cost=CostModel(), max_resource=10)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trial(optuna.trial.create_trial(value=0.1, intermediate_values={7: 0.1}))
    t = study.ask()
    t.set_user_attr(USER_ATTR, diagnosis(latest=latest(0.5)))
    for step in range(5):
        t.report(0.9, step)
    assert pruner.prune(study, study.get_trials(deepcopy=False)[t.number]) is True
    reason = prune_reason(study.trials[t.number])
    assert reason["standing"] is None
    assert reason["p_threshold"] == round(CostModel(c_best=0.0).stop_threshold(5, 10), 4)


def test_a_rival_pruned_before_the_step_counts_with_what_it_reached():
    # Under successive halving the leader is often alone at a late step; the rivals it left
    # behind still count, so the cost rule sees it leads (standing 1) and does not stop it.
    pruner = TEViDPruner(None, cost=CostModel(), max_resource=10)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trial(optuna.trial.create_trial(value=0.1, intermediate_values={0: 0.1}))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, intermediate_values={0: 0.3, 1: 0.5}))
    t = study.ask()
    t.set_user_attr(USER_ATTR, diagnosis(latest=latest(0.5)))
    for step, value in enumerate([0.2, 0.6, 0.7, 0.65, 0.6]):   # its best, 0.7, leads
        t.report(value, step)
    frozen = study.get_trials(deepcopy=False)[t.number]
    assert study_standing(study, frozen) == 1.0
    assert pruner.prune(study, frozen) is False


@pytest.mark.parametrize("direction, lead, trail", [("maximize", 0.9, 0.1),
                                                    ("minimize", 0.1, 0.9)])
def test_leader_guard_spares_an_alerted_leader_until_it_falls_behind(direction, lead, trail):
    # The gru_text false stops: a diagnosis alone must not stop the trial that leads.
    study = optuna.create_study(direction=direction)
    for _ in range(3):   # finished rivals, mid-field at steps 2 and 3
        study.add_trial(optuna.trial.create_trial(value=0.5,
                                                  intermediate_values={2: 0.5, 3: 0.5}))
    handles = {}

    def running(value, attrs):
        t = study.ask()
        t.set_user_attr(USER_ATTR, attrs)
        t.report(value, 2)
        handles[t.number] = t
        return t.number

    overfit = diagnosis([alert(OVERFITTING, step=20)])
    nan = diagnosis([alert(INSTABILITY, step=20, confidence=1.0, reason=NONFINITE_LOSS)])
    leader, trailer, dead = running(lead, overfit), running(trail, overfit), running(lead, nan)
    frozen = lambda n: study.get_trials(deepcopy=False)[n]
    # The top half, not the default top tenth: the leader ties the dead trial (4 of 5 beaten).
    guarded, unguarded = TEViDPruner(None, spare_leaders=0.5), TEViDPruner(None, spare_leaders=None)
    assert guarded.prune(study, frozen(leader)) is False        # beats the 3 rivals + trailer
    assert prune_reason(study.trials[leader]) is None
    assert guarded.prune(study, frozen(trailer)) is True        # beats none: pruned
    assert guarded.prune(study, frozen(dead)) is True           # a NaN loss is never spared
    assert prune_reason(study.trials[dead])["reason"] == NONFINITE_LOSS
    assert unguarded.prune(study, frozen(leader)) is True       # the guard off: alert prunes
    # One bad report does not end the guard: the trial's best so far still leads.
    handles[leader].report(trail, 3)
    assert guarded.prune(study, frozen(leader)) is False
    # The alert stays latched: once other trials overtake its best, it is pruned.
    better = 0.95 if direction == "maximize" else 0.05
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(value=better, intermediate_values={3: better}))
    assert guarded.prune(study, frozen(leader)) is True


def test_leader_guard_setting_is_validated():
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="spare_leaders"):
            TEViDPruner(None, spare_leaders=bad)


def test_without_a_cost_model_a_strong_latest_belief_alone_does_not_prune():
    _, t = run_one(TEViDPruner(None), diagnosis(latest=latest(0.99)), steps=3)
    assert t.state == TrialState.COMPLETE


# ----------------------------------------------------------------------------- storages
@pytest.mark.parametrize("kind", ["inmemory", "sqlite", "journal"])
def test_decision_and_reason_round_trip_through_every_storage(kind, tmp_path):
    storage = {"inmemory": None, "sqlite": f"sqlite:///{tmp_path / 'o.db'}",
               "journal": JournalStorage(JournalFileBackend(str(tmp_path / "o.log")))}[kind]
    study, t = run_one(TEViDPruner(), diagnosis([alert(OVERFITTING, step=120, epoch=3)]),
                       storage=storage)
    assert t.state == TrialState.PRUNED
    if storage is not None:   # a fresh handle reads what another process would
        study = optuna.load_study(study_name=study.study_name, storage=storage)
    again = study.trials[0]
    assert prune_reason(again)["label"] == OVERFITTING
    assert again.system_attrs[REASON_SYSTEM_ATTR]["step"] == 120
    # Deciding again from storage alone (e.g. in another process) gives the same answer.
    assert TEViDPruner(None).prune(study, again) is True


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, error", [
    ({"prune_on": ("Healthy",)}, ValueError),
    ({"prune_on": ("Divergence",)}, ValueError),
    ({"prune_on": ()}, ValueError),
    ({"wrapped": "median"}, ValueError),
    ({"wrapped": object()}, TypeError),
    ({"wrapped": TEViDPruner(None)}, TypeError),
    ({"cost": 3.0}, TypeError),
    ({"min_confidence": 1.5}, ValueError),
    ({"max_resource": 0}, ValueError),
])
def test_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        TEViDPruner(**kwargs)


def _rung_decisions(pruner, with_tevid: bool, n_trials: int = 45, dead_value: float = 0.1
                    ) -> dict[int, int | None]:
    """Deterministic curves by trial number; every third trial is dead (constant value
    ``dead_value``) and, ``with_tevid``, carries a confirmed Instability alert from step 1 on.
    Returns the step at which each trial was pruned (``None``: completed)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="rungs")
    stopped: dict[int, int | None] = {}

    def objective(trial):
        dead = trial.number % 3 == 0
        quality = ((trial.number * 37) % 17) / 17
        value = 0.1
        for step in range(9):
            value = dead_value if dead else quality * (1 - 0.7 ** (step + 1))
            if with_tevid and dead and step >= 1:
                trial.set_user_attr(USER_ATTR, diagnosis([alert(INSTABILITY)]))
            trial.report(value, step)
            if trial.should_prune():
                stopped[trial.number] = step
                raise optuna.TrialPruned()
        stopped[trial.number] = None
        return value

    study.optimize(objective, n_trials=n_trials)
    return stopped


@pytest.mark.parametrize("halving", ["hyperband", "successive_halving"])
def test_trials_tevid_stops_keep_their_rung_places(halving):
    def wrapped():
        if halving == "hyperband":
            return HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
        return SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)

    alone = _rung_decisions(wrapped(), with_tevid=False)
    budget = {"max_resource": 9} if halving == "successive_halving" else {}
    tevid = _rung_decisions(TEViDPruner(wrapped(), **budget), with_tevid=True)
    dead = [n for n in alone if n % 3 == 0]
    learning = [n for n in alone if n % 3]
    # TEViD stops every dead trial at its first report after the alert ...
    assert all(tevid[n] == 1 for n in dead)
    # ... some of which Hyperband alone would have trained longer (or to the end),
    assert any(alone[n] is None or alone[n] > 1 for n in dead)
    # while successive halving decides every learning trial exactly as without TEViD: the dead
    # trials still count at the rungs their (constant) value would have reached.
    assert any(alone[n] is not None for n in learning)   # Hyperband does prune some
    assert {n: tevid[n] for n in learning} == {n: alone[n] for n in learning}


@pytest.mark.parametrize("dead_value", [0.45, 0.3])
def test_trials_tevid_stops_still_count_among_the_medians_completed_trials(dead_value):
    alone = _rung_decisions(MedianPruner(n_startup_trials=3), with_tevid=False,
                            dead_value=dead_value)
    tevid = _rung_decisions(TEViDPruner(MedianPruner(n_startup_trials=3)), with_tevid=True,
                            dead_value=dead_value)
    dead = [n for n in alone if n % 3 == 0]
    learning = [n for n in alone if n % 3]
    assert all(tevid[n] == 1 for n in dead if alone[n] != 0)
    # Median alone lets some dead trials complete (0.45: they stay above the median) or prunes
    # them later (0.3) ...
    assert any(alone[n] is None or alone[n] > 1 for n in dead)
    # ... and it judges every learning trial exactly as without TEViD: a stopped dead trial
    # still counts as completed wherever Median would have let it complete, and nowhere else.
    assert any(alone[n] is not None for n in learning)   # Median does prune some
    assert {n: tevid[n] for n in learning} == {n: alone[n] for n in learning}


def test_the_medians_view_leaves_the_study_and_other_pruned_trials_alone():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.2, intermediate_values={0: 0.1, 1: 0.2}))
    for pruner in ("TEViD", "MedianPruner"):
        t = study.ask()
        t.report(0.5, 0)
        record_prune_reason(study, study.trials[t.number], {"pruner": pruner})
        study.tell(t, state=TrialState.PRUNED)
    view = with_stopped_trials_held(study, MedianPruner(n_startup_trials=1))
    assert [t.state for t in view.get_trials(states=(TrialState.COMPLETE,))] == \
        [TrialState.COMPLETE] * 2
    assert [t.number for t in view.get_trials(deepcopy=False, states=(TrialState.PRUNED,))] == [2]
    assert view.get_trials()[1].intermediate_values == {0: 0.5, 1: 0.5}
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                               TrialState.PRUNED]


# ---------------------------------------------------------------------- Optuna internals
# tevid_hpo/_optuna_private.py holds every private Optuna attribute the pruner reads. An Optuna
# release that drops one must fail loudly, naming the attribute and the version, never prune or
# sample differently in silence. Each test removes one attribute and checks that error.

def test_every_private_optuna_hook_exists_in_the_installed_optuna():
    from tevid_hpo import _optuna_private as private

    private.check_bracket_hooks()
    for name in private.BRACKET_METHODS:
        assert callable(getattr(HyperbandPruner, name))


@pytest.mark.parametrize("name", ["_get_bracket_id", "_create_bracket_study"])
def test_a_missing_bracket_method_fails_at_construction(monkeypatch, name):
    from tevid_hpo._optuna_private import OptunaInternalsError

    monkeypatch.delattr(HyperbandPruner, name)
    with pytest.raises(OptunaInternalsError, match=rf"HyperbandPruner\.{name}.*optuna "
                       rf"{optuna.__version__} does not have"):
        TEViDPruner()
    TEViDPruner(wrapped=None)   # without Hyperband nothing private is needed


def test_a_filter_study_that_stops_calling_the_bracket_methods_fails(monkeypatch):
    from tevid_hpo._optuna_private import OptunaInternalsError

    monkeypatch.setattr(optuna.pruners, "_filter_study", lambda study, trial: study)
    with pytest.raises(OptunaInternalsError, match=r"_filter_study\.calling _get_bracket_id"):
        TEViDPruner()


def test_a_storage_without_the_private_handle_fails_the_reason_write_loudly(monkeypatch):
    from tevid_hpo._optuna_private import OptunaInternalsError
    from tevid_hpo.pruners import record_prune_reason

    study = optuna.create_study()
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    monkeypatch.delattr(type(frozen), "_trial_id", raising=False)
    monkeypatch.delattr(frozen, "_trial_id")
    with pytest.raises(OptunaInternalsError, match=r"FrozenTrial\._trial_id.*pip install"):
        record_prune_reason(study, frozen, {"pruner": "x", "rule": "y"})


def test_a_hyperband_without_its_bracket_list_fails_keep_rung_places_loudly(monkeypatch):
    from tevid_hpo._optuna_private import OptunaInternalsError
    from tevid_hpo.pruners import keep_rung_places

    hb = HyperbandPruner(min_resource=1, max_resource=9)
    study = optuna.create_study(study_name="demo", pruner=hb)
    t = study.ask()
    t.report(0.5, 0)
    monkeypatch.delattr(hb, "_pruners")
    with pytest.raises(OptunaInternalsError, match=r"HyperbandPruner\._pruners"):
        keep_rung_places(hb, study, study.get_trials(deepcopy=False)[t.number])


# ---------------------------------------------------------------------- multi-objective
@pytest.mark.parametrize("wrapped", ["hyperband", None, MedianPruner()])
def test_a_multi_objective_study_is_refused_with_the_reason(wrapped):
    study = optuna.create_study(directions=["minimize", "maximize"],
                                pruner=TEViDPruner(wrapped=wrapped))
    message = r"multi-objective study \(2 directions\): Optuna cannot report intermediate values"
    if wrapped == "hyperband":
        # Optuna shows a Hyperband pruner the study as each trial starts: refused at once.
        with pytest.raises(ValueError, match=message):
            study.ask()
    frozen = optuna.trial.create_trial(values=[1.0, 2.0])
    with pytest.raises(ValueError, match=message):
        study.pruner.prune(study, frozen)
