"""BANANAS-style NAS: cells, path encoding, mutation, predictor, the TEViD hook, Optuna."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from conftest import contested_belief, recording, train_step

from data_factory.labels import INSTABILITY, OVERFITTING
from tevid_hpo.cost import CostModel
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.monitor import NONFINITE_LOSS, USER_ATTR
from tevid_hpo.nas import (
    EDGES,
    OPS,
    Bananas,
    Candidate,
    CandidateResult,
    CandidateTrainer,
    Cell,
    CellNet,
    NASObjective,
    PathPredictor,
    SearchResult,
    SearchSpace,
    TEViDHook,
    TrainSettings,
    network,
)
from tevid_hpo.pruners import TEViDPruner, prune_reason

#: A learning rate at which the loss turns NaN within half an epoch (the monitor's non-finite
#: rule then confirms Instability whatever the toy diagnostician says).
DIVERGENT_LR = 1e4
#: Short training: ~0.5 s per candidate on one core.
SHORT = TrainSettings(epochs=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cell(*ops: str) -> Cell:
    return Cell(tuple(ops))


CONV3 = cell(*["nor_conv_3x3"] * 6)


# ----------------------------------------------------------------------------- cells, encoding
def test_cell_string_round_trip_and_errors():
    c = cell("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "none")
    assert str(c) == ("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|"
                      "nor_conv_1x1~1|none~2|")
    assert Cell.from_string(str(c)) == c
    with pytest.raises(ValueError):
        Cell.from_string("|nor_conv_3x3~0|+|skip_connect~0|")
    with pytest.raises(ValueError):
        Cell(("skip_connect",) * 5)


def test_live_paths_and_validity():
    assert len(CONV3.paths()) == 4 and CONV3.is_valid
    # Only 0->1->2->3 is live.
    c = cell("skip_connect", "none", "nor_conv_1x1", "none", "none", "avg_pool_3x3")
    assert c.paths() == [("skip_connect", "nor_conv_1x1", "avg_pool_3x3")]
    assert c.live_edges() == (0, 2, 5)
    # Node 1 receives input but reaches the output only through a "none" edge: no live path.
    dead = cell("nor_conv_3x3", "none", "none", "none", "none", "none")
    assert dead.paths() == [] and not dead.is_valid


def test_path_encoding_length_and_indices():
    space = SearchSpace()
    assert space.num_paths == space.encoding_size == 155 == 5 + 25 + 125
    n = len(OPS)
    skip, c1, c3, pool = (OPS.index(o) for o in ("skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                                                  "avg_pool_3x3"))
    c = cell("nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect", "none",
             "nor_conv_3x3")
    # Live: 0->3 (skip), 0->2->3 (pool, c3), 0->1->2->3 (c1, c3, c3); 0->1->3 is dead.
    expected = sorted([skip, n + pool + n * c3, n + n ** 2 + c1 + n * c3 + n ** 2 * c3])
    enc = space.encode(Candidate(c, 0.1))
    assert enc.shape == (155,) and enc.dtype == np.float32
    assert np.flatnonzero(enc).tolist() == expected
    # Function-equivalent cells (differing only in dead edges) encode alike.
    twin = cell("nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect", "none",
                "nor_conv_3x3")
    assert np.array_equal(space.encode(Candidate(twin, 0.1)), enc)


def test_truncated_encoding_and_learning_rate_one_hot():
    space = SearchSpace(learning_rates=(0.1, 1.0, DIVERGENT_LR), path_cutoff=30)
    assert space.encoding_size == 33
    enc = space.encode(Candidate(CONV3, DIVERGENT_LR))
    assert enc.shape == (33,) and enc[-3:].tolist() == [0.0, 0.0, 1.0]
    assert enc[:30].sum() == 2      # the 1- and 2-edge conv paths; the 3-edge one is cut off
    small = SearchSpace(ops=("none", "skip_connect", "nor_conv_3x3"))
    assert small.num_paths == 3 + 9 + 27
    with pytest.raises(ValueError):
        SearchSpace(ops=("conv5x5",))


def test_random_and_mutations_are_valid_and_new():
    space = SearchSpace(learning_rates=(0.05, 0.1))
    rng = np.random.default_rng(0)
    parents = [space.random(rng) for _ in range(50)]
    assert all(p.cell.is_valid and p.lr in space.learning_rates for p in parents)
    lr_changed = 0
    for parent in parents:
        for _ in range(10):
            child = space.mutate(parent, rng)
            assert child != parent and child.cell.is_valid
            assert set(child.cell.ops) <= set(OPS)
            lr_changed += child.lr != parent.lr
    assert lr_changed > 0
    # A sparse parent whose single live path is easily broken still yields valid children.
    sparse = Candidate(cell("none", "none", "none", "skip_connect", "none", "none"), 0.1)
    assert all(space.mutate(sparse, rng, rate=3.0).cell.is_valid for _ in range(50))


def test_optuna_params_round_trip():
    space = SearchSpace(learning_rates=(0.1, 1.0))
    cand = Candidate(CONV3, 1.0)
    trial = optuna.trial.FixedTrial(space.params(cand))
    assert space.suggest(trial) == cand
    assert set(space.params(cand)) == {f"edge_{i}_{j}" for i, j in EDGES} | {"lr"}


# ----------------------------------------------------------------------------- network
def test_cellnet_builds_only_live_edges_and_trains_a_step():
    c = cell("nor_conv_3x3", "none", "none", "skip_connect", "none", "none")   # 0->1 is dead
    net = CellNet(c, in_channels=1, num_classes=10)
    cells = [m for m in net.modules() if isinstance(m, network._CellModule)]
    assert len(cells) == 3 and all(list(m.edges) == ["0_3"] for m in cells)
    out = net(torch.randn(4, 1, 16, 16))
    assert out.shape == (4, 10)
    torch.nn.functional.cross_entropy(out, torch.zeros(4, dtype=torch.long)).backward()
    assert all(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------------------- predictor
def test_predictor_learns_a_simple_function_and_reports_spread():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(40, 12)).astype(np.float32)
    y = (0.5 * x[:, 0] + 0.2 * x[:, 1]).astype(np.float32)
    mean, std = PathPredictor(epochs=150, seed=1).fit(x, y).predict(x)
    assert np.abs(mean - y).mean() < 0.08
    assert std.shape == (40,) and (std >= 0).all() and std.max() > 0
    with pytest.raises(RuntimeError):
        PathPredictor().predict(x)


# ----------------------------------------------------------------------------- hook
def test_hook_check_reads_the_monitor(toy_diagnostician):
    hook = TEViDHook(toy_diagnostician, cost=CostModel())
    quiet = SimpleNamespace(alert=None, alerts={}, last=None, error=None)
    assert hook.check(quiet, 1.0, 5) is None
    alert = {"label": INSTABILITY, "step": 11, "epoch": 0, "confidence": 1.0, "vacuity": None,
             "reason": NONFINITE_LOSS}
    alarmed = SimpleNamespace(alert=INSTABILITY, alerts={INSTABILITY: alert}, last=None,
                              error=None)
    assert hook.check(alarmed, 0.7, 5)["reason"] == NONFINITE_LOSS
    sure = Diagnosis(step=30, epoch=1, probs={"Healthy": 0.01, INSTABILITY: 0.97}, vacuity=0.02,
                     label=INSTABILITY, alert=None, confidence=0.97)
    failed = SimpleNamespace(alert=None, alerts={}, last=sure, error="boom")
    assert hook.check(failed, 1.0, 5) is None    # a failed monitor's diagnosis is not used
    ok = SimpleNamespace(alert=None, alerts={}, last=sure, error=None)
    assert hook.check(ok, 1.0, 5, use_cost=False) is None
    assert hook.check(ok, 1.0, 5)["rule"] == "cost"
    assert hook.check(ok, 5.0, 5) is None                  # nothing left to save
    assert TEViDHook(toy_diagnostician).check(ok, 1.0, 5) is None    # no cost model: alerts
    low = TEViDHook(toy_diagnostician, min_confidence=0.95)
    assert low.check(alarmed, 0.7, 5) is not None          # non-finite loss alerts at p = 1
    with pytest.raises(ValueError):
        TEViDHook(toy_diagnostician, prune_on=("Healthy",))


@pytest.mark.filterwarnings("ignore")   # the untrained "tiny" model: check() never runs it
def test_hook_cost_rule_spares_the_leading_candidate_at_a_belief_that_stops_a_trailing_one():
    # Issue 25: the standing is the candidate's validation accuracy at its last finished epoch
    # among the other candidates' at that epoch, read from the study of the monitor's trial.
    hook = TEViDHook("tiny", cost=CostModel())
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=0.5, intermediate_values={0: 0.5}))
    belief = contested_belief(1.5, 5)

    def monitor(accuracy=None):
        trial = None if accuracy is None else study.ask()
        if trial is not None:
            trial.report(accuracy, 0)
        return SimpleNamespace(alert=None, alerts={}, last=belief, error=None, trial=trial)

    alone = hook.check(monitor(), 1.5, 5)                 # no trial: standing unknown, stops
    assert alone["rule"] == "cost" and alone["standing"] is None
    trailing = hook.check(monitor(0.1), 1.5, 5)
    assert trailing["rule"] == "cost" and trailing["standing"] == 0.0
    assert hook.check(monitor(0.9), 1.5, 5) is None       # beats all 3 rivals: standing 1


@pytest.mark.filterwarnings("ignore")   # the untrained "tiny" model: check() never runs it
def test_hook_leader_guard_spares_an_alerted_leading_candidate():
    overfit = {"label": OVERFITTING, "step": 20, "epoch": 0, "confidence": 0.9, "vacuity": 0.1,
               "reason": "diagnosis"}
    mon = SimpleNamespace(alert=OVERFITTING, alerts={OVERFITTING: overfit}, last=None,
                          error=None, trial=None)
    guarded, unguarded = TEViDHook("tiny"), TEViDHook("tiny", spare_leaders=None)
    for hook in (guarded, unguarded):
        hook.record([0.5])
        hook.record([0.4])
    assert guarded.check(mon, 1.0, 5, curve=[0.1])["label"] == OVERFITTING   # trails
    assert guarded.check(mon, 1.0, 5, curve=[0.9]) is None                   # leads: spared
    assert unguarded.check(mon, 1.0, 5, curve=[0.9])["label"] == OVERFITTING
    nan = overfit | {"label": INSTABILITY, "confidence": 1.0, "reason": NONFINITE_LOSS}
    dead = SimpleNamespace(alert=INSTABILITY, alerts={INSTABILITY: nan}, last=None, error=None,
                           trial=None)
    assert guarded.check(dead, 1.0, 5, curve=[0.9])["reason"] == NONFINITE_LOSS


def test_standalone_hook_weighs_the_candidates_it_watched_before():
    # Without a study the rivals are the curves the hook recorded (a standalone search).
    hook = TEViDHook("tiny", cost=CostModel())
    belief = contested_belief(1.5, 5)
    mon = SimpleNamespace(alert=None, alerts={}, last=belief, error=None, trial=None)
    assert hook.check(mon, 1.5, 5, curve=[0.9])["standing"] is None   # no rival yet: unknown
    hook.record([0.5, 0.6])
    hook.record([0.4])
    trailing = hook.check(mon, 1.5, 5, curve=[0.1])
    assert trailing["rule"] == "cost" and trailing["standing"] == 0.0
    assert hook.check(mon, 1.5, 5, curve=[0.9]) is None              # leads both: spared
    # At epoch 1 both rivals count with their best by then (0.6, and 0.4 from a stopped one).
    assert hook.check(mon, 2.5, 5, curve=[0.9, 0.1]) is None          # its best still leads
    assert hook.standing([0.3, 0.45]) == 0.5                          # beats the stopped 0.4
    assert hook.check(mon, 2.5, 5, curve=[0.3, 0.35])["standing"] == 0.0


def test_hook_monitor_reads_the_optimizer_given(toy_checkpoint, digits_data):
    # A telemetry diagnostician reads the learning rate from the frames' scalars.
    diag = Diagnostician.from_pretrained(toy_checkpoint, device="cpu")
    frames = recording(diag)
    model = CellNet(CONV3, in_channels=1, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with TEViDHook(diag).monitor(model, optimizer=opt) as mon:
        train_step(model, opt, digits_data, mon, 0)
    assert mon.optimizer is opt and len(frames) == 1 and frames[0].scalars["lr"] == 0.05


def test_hook_without_a_checkpoint_says_so(monkeypatch, tmp_path):
    import tevid_hpo.diagnostician as diag_mod

    monkeypatch.setattr(diag_mod, "DEFAULT_CHECKPOINT", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="make pipeline"):
        TEViDHook()


# ----------------------------------------------------------------------------- end to end
def test_trainer_prunes_a_divergent_candidate_and_completes_a_sane_one(toy_diagnostician):
    hook = TEViDHook(toy_diagnostician)
    trainer = CandidateTrainer(settings=SHORT, hook=hook)
    bad = trainer(Candidate(CONV3, DIVERGENT_LR))
    assert bad.pruned and bad.alert == INSTABILITY
    assert bad.reason["pruner"] == "TEViD" and bad.reason["label"] == INSTABILITY
    assert 0 < bad.epochs < 1 and bad.test_accuracy is None and bad.diagnoses >= 1
    good = trainer(Candidate(CONV3, 0.1))
    assert not good.pruned and good.epochs == 2.0 and len(good.val_curve) == 2
    assert good.val_accuracy > 0.5 and good.test_accuracy is not None
    # both were recorded as rivals for later candidates: only the good one reached epoch 0
    assert hook.standing([0.0]) == 0.0 and hook.standing([1.0]) == 1.0
    # Determinism: same candidate, same seed, same result.
    again = CandidateTrainer(settings=SHORT)(Candidate(CONV3, 0.1))
    assert again.val_accuracy == good.val_accuracy and again.diagnoses == 0


def test_bananas_search_prunes_the_unstable_candidate_and_returns_the_best(toy_diagnostician):
    space = SearchSpace(learning_rates=(0.1, DIVERGENT_LR))
    trainer = CandidateTrainer(settings=SHORT, hook=TEViDHook(toy_diagnostician))
    search = Bananas(trainer, space, num_init=2, pool_size=30, seed=0,
                     predictor=PathPredictor(epochs=60))
    unstable = Candidate(CONV3, DIVERGENT_LR)
    seen: list[CandidateResult] = []
    result = search.run(4, initial=[unstable], callback=seen.append)
    assert isinstance(result, SearchResult) and len(result.history) == 4 == len(seen)
    first = result.history[0]
    assert first.candidate == unstable and first.pruned and first.reason["label"] == INSTABILITY
    # The failure enters the predictor's data at chance-level error with the budget it used.
    assert search.target(first) == pytest.approx(0.9) and first.epochs < SHORT.epochs
    assert result.n_pruned >= 1 and result.epochs_saved >= SHORT.epochs - first.epochs
    best = result.best
    assert best is not None and not best.pruned and best.candidate.lr == 0.1
    assert best.val_accuracy == max(r.val_accuracy for r in result.history if not r.pruned)
    assert len({r.candidate.key for r in result.history}) == 4     # never re-evaluates
    assert "pruned: Instability" in result.table()
    # The policies for pruned targets.
    assert Bananas(trainer, space, pruned_error="last").target(first) == pytest.approx(
        first.error)
    assert Bananas(trainer, space, pruned_error=0.5).target(first) == 0.5


def test_bananas_as_optuna_ask_and_tell(toy_diagnostician):
    space = SearchSpace(learning_rates=(0.1, DIVERGENT_LR))
    trainer = CandidateTrainer(settings=SHORT, hook=TEViDHook(toy_diagnostician))
    study = optuna.create_study(direction="maximize", pruner=TEViDPruner(wrapped=None))
    search = Bananas(trainer, space, num_init=2, seed=1)
    result = search.run(2, initial=[Candidate(CONV3, DIVERGENT_LR), Candidate(CONV3, 0.1)],
                        study=study)
    pruned, done = study.trials
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert prune_reason(pruned)["label"] == INSTABILITY
    assert pruned.user_attrs[USER_ATTR]["alert"] == INSTABILITY
    assert pruned.params["lr"] == DIVERGENT_LR and pruned.user_attrs["nas"]["pruned"]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert done.value == pytest.approx(result.history[1].val_accuracy)
    assert len(done.intermediate_values) == SHORT.epochs
    assert result.history[0].trial_number == 0
    with pytest.raises(ValueError, match="maximise"):
        search.run(1, study=optuna.create_study())


def test_nas_objective_with_a_real_study(toy_diagnostician):
    space = SearchSpace(learning_rates=(0.1, DIVERGENT_LR))
    objective = NASObjective(CandidateTrainer(settings=SHORT, hook=TEViDHook(toy_diagnostician)),
                             space)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    invalid = cell("nor_conv_3x3", "none", "none", "none", "none", "none")
    for cand in (Candidate(CONV3, DIVERGENT_LR), Candidate(CONV3, 0.1),
                 Candidate(invalid, 0.1)):
        study.enqueue_trial(space.params(cand))
    study.optimize(objective, n_trials=3)
    bad, good, empty = study.trials
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert prune_reason(bad)["pruner"] == "TEViD"
    assert good.state == optuna.trial.TrialState.COMPLETE and good.value > 0.5
    assert good.user_attrs["nas"]["epochs"] == SHORT.epochs
    assert empty.value == pytest.approx(0.1) and empty.user_attrs["nas"]["invalid"]

