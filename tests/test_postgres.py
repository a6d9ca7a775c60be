"""Optuna on a real PostgreSQL server: one study, several worker processes, faults survived.

Issue 27's acceptance for Optuna. A module-scoped PostgreSQL server (``postgres_fixture``) holds
the study; workers are separate processes (multiprocessing ``spawn``, each ``optuna.load_study``
on an ``RDBStorage`` with a heartbeat) that train the digits CNN under a ``TrialMonitor`` with a
``TEViDPruner``:

* four workers run one study; every trial's diagnosis is read back here, from another process;
  the pruner's decisions equal those of one in-memory study replaying the recorded trials;
* a worker killed with SIGKILL mid-trial: the heartbeat fails its trial,
  ``RetryHeartbeatStaleTrialCallback`` (``RetryFailedTrialCallback`` before Optuna 4.9) reruns it
  and every other trial's diagnosis is intact;
* the server restarted mid-study (``pg_ctl restart``): workers recover and no finished trial or
  stored diagnosis is lost — including a trial set RUNNING by ``study.ask()`` just before the
  outage, whose heartbeat never appeared (``fail_stale_trials`` cannot see it; the workers'
  ``fail_trials_without_heartbeat`` fails and retries it);
* a monitor that fails never fails its trial.

Why workers hold one lock around ``report`` + ``should_prune``: Hyperband compares a trial with
whatever its rivals have recorded at that moment, so its decisions depend on how the workers'
calls interleave. The lock fixes one interleaving and numbers it (a shared counter), which the
replay follows; the pruner still reads everything from PostgreSQL. The same lock keeps two idle
workers from both popping the last waiting trial (the loser would sample an unplanned trial).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from conftest import STEPS_PER_EPOCH, digits_cnn, train_step, val_accuracy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from postgres_fixture import postgres  # noqa: F401  (the fixture)

from data_factory.architectures import small_cnn
from data_factory.datasets import digits
from experiments.postgres_server import one_omp_thread_in_children
from tevid_hpo import fail_trials_without_heartbeat
from tevid_hpo._optuna_private import OptunaInternalsError, trials_without_heartbeat
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR, TrialMonitor
from tevid_hpo.pruners import TEViDPruner, prune_reason

# Each test stays within its own deadlines below (startup, work, join); this only catches a
# test that somehow waits outside them.
pytestmark = pytest.mark.timeout(600)

logger = logging.getLogger("tevid.test_postgres")

EPOCHS = 3
HEARTBEAT_S = 1
GRACE_S = 4          # generous: workers share 2 loaded cores, a late heartbeat is not a death
MAX_RECOVERIES = 20
# Deadlines. A loaded machine (2 cores, other jobs) needs up to two minutes to start the
# workers (each imports torch and loads the diagnostician); the study's work after that takes
# about 10 s (`work_s` in the workers' "done" events: 8.7-9.6 s for the restart test, with the
# test suite's other jobs running). A worker still busy WORK_S after the start gives up with an
# error naming the trials it waits for: a stuck study fails within a minute, never stalls.
STARTUP_S = 180
WORK_S = 60
JOIN_S = STARTUP_S + WORK_S + 30

HEALTHY = [{"optimizer": "adam", "lr": lr, "monitor": "ok"}
           for lr in (3e-3, 1e-3, 3e-4, 1e-4, 2e-3, 5e-4)] + [
    {"optimizer": "sgd", "lr": lr, "monitor": "ok"} for lr in (1e-2, 3e-2)]
DIVERGING = {"optimizer": "adam", "lr": 1.0, "monitor": "ok"}
NAN = {"optimizer": "sgd", "lr": 1e6, "monitor": "ok"}
BROKEN_MONITOR = {"optimizer": "adam", "lr": 1.0, "monitor": "broken"}


def make_pruner() -> TEViDPruner:
    """TEViD around Hyperband with a fixed budget: ``max_resource="auto"`` would make the first
    decisions depend on when a rival's ``tell`` lands, outside the recorded order."""
    return TEViDPruner(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS,
                                                      reduction_factor=3))


def make_storage(url: str) -> RDBStorage:
    """The recipe of docs/distributed.md: heartbeat, retry of stale trials, pre-ping."""
    return RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                      heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                          max_retry=1))


# ----------------------------------------------------------------------------- worker side
def train_epoch(model, opt, data, mon: TrialMonitor, steps: int = STEPS_PER_EPOCH) -> None:
    """``steps`` deterministic steps on the digits training split, watched by ``mon``."""
    for k in range(steps):
        train_step(model, opt, data, mon, k)


class Objective:
    """Train the digits CNN under a TrialMonitor; record every pruning decision."""

    def __init__(self, lock, seq, events: Path, checkpoint: str, role: str) -> None:
        self.lock, self.seq, self.role = lock, seq, role
        self.holds_lock = False
        self.current: int | None = None   # the number of the trial being run, once asked
        self.events = open(events, "a", buffering=1)  # noqa: SIM115 (open for the process)
        self.diag = Diagnostician.from_pretrained(checkpoint, device="cpu")
        self.data = digits(image_size=16, seed=0)

    def acquire(self) -> None:
        self.lock.acquire()
        self.holds_lock = True

    def release(self) -> None:
        if self.holds_lock:
            self.holds_lock = False
            self.lock.release()

    def log(self, **event) -> None:
        self.events.write(json.dumps(event) + "\n")

    def __call__(self, trial: optuna.Trial) -> float:
        self.release()   # taken by the worker loop before study.ask(): the trial is ours now
        self.current = trial.number
        name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        lr = trial.suggest_float("lr", 1e-4, 1e6, log=True)
        broken = trial.suggest_categorical("monitor", ["ok", "broken"]) == "broken"
        trial.set_user_attr("pid", os.getpid())
        diag = self.diag
        if broken:
            diag = Diagnostician(self.diag.model, self.diag.calibration, device="cpu")

            def explode(*args, **kwargs):
                raise RuntimeError("diagnostician exploded")

            diag.update = explode
        torch.manual_seed(0)
        model, opt = digits_cnn(name, lr)
        acc = 0.0
        with TrialMonitor(model, trial, diagnostician=diag) as mon:
            for epoch in range(EPOCHS):
                train_epoch(model, opt, self.data, mon)
                mon.epoch_end(epoch)
                if self.role == "victim":   # the diagnosis is stored: die here, mid-trial
                    self.log(kind="victim", number=trial.number)
                    time.sleep(600)
                acc = val_accuracy(model, self.data)
                with self.lock:
                    trial.report(acc, epoch)
                    seen = trial.study._storage.get_trial(trial._trial_id).user_attrs
                    pruned = trial.should_prune()
                    self.seq.value += 1
                    self.log(kind="prune", seq=self.seq.value, number=trial.number, step=epoch,
                             value=acc, attrs={k: seen.get(k) for k in (USER_ATTR, ERROR_ATTR)},
                             pruned=pruned, pid=os.getpid())
                if pruned:
                    raise optuna.TrialPruned()
        return acc


#: The storage's stale-trial callback (RetryHeartbeatStaleTrialCallback here).
Retry = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def recover_own_trial(study: optuna.Study, number: int, retry: Retry) -> None:
    """The trial this worker ran when the storage failed under it: fail it if it is still
    RUNNING (its ``tell(FAIL)`` was lost with the connection), and have ``retry`` (the storage's
    stale-trial callback) rerun it unless someone did. Needed because Optuna's ``tell(FAIL)``
    can also *succeed* once the server is back, and a trial failed that way is nobody's stale
    trial: no callback would ever rerun it. Called under the workers' lock, as every other
    fail-and-retry is, so a trial is retried once."""
    trials = study.get_trials(deepcopy=False)
    trial = trials[number]
    if trial.state == TrialState.RUNNING:
        try:
            frozen = study.tell(number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            return
    elif trial.state == TrialState.FAIL and not any(
            RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == number for t in trials):
        frozen = study.get_trials(deepcopy=True)[number]
    else:
        return
    retry(study, frozen)


def run_until_done(study: optuna.Study, objective: Objective, retry: Retry,
                   deadline: float, stay=None) -> int:
    """Run waiting trials until none is waiting or running (and ``stay``, an event, is set);
    return how often the worker recovered from an error (a lost connection, a trial failed
    under it by the heartbeat).

    Each round first fails dead trials: those whose heartbeat went stale (Optuna), and those
    RUNNING without any heartbeat after the grace period (``fail_trials_without_heartbeat``:
    asked just before an outage, they would otherwise keep every worker waiting forever). Past
    ``deadline`` (``time.monotonic()``) the worker raises, naming what it still waits for."""
    recoveries = 0
    own: int | None = None   # a trial of ours that the storage failed under us
    while True:
        if time.monotonic() > deadline:
            try:
                states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)
                          if not t.state.is_finished()}
            except Exception as err:  # noqa: BLE001 (any storage error: report, then stop)
                states = f"unknown, the storage fails: {err!r}"
            raise RuntimeError(f"worker {os.getpid()}: study not done by its deadline; "
                               f"unfinished trials: {states}")
        try:
            objective.acquire()
            if own is not None:
                recover_own_trial(study, own, retry)
                own = None
            optuna.storages.fail_stale_trials(study)
            fail_trials_without_heartbeat(study, GRACE_S)
            states = {t.state for t in study.get_trials(deepcopy=False)}
            if TrialState.WAITING in states:
                objective.current = None
                study.optimize(objective, n_trials=1)
                objective.current = None
            elif TrialState.RUNNING in states or (stay is not None and not stay.is_set()):
                objective.release()
                time.sleep(0.25)
            else:
                return recoveries
        except Exception as err:
            recoveries += 1
            if recoveries > MAX_RECOVERIES:
                raise RuntimeError(f"worker {os.getpid()} gives up after {MAX_RECOVERIES} "
                                   f"recoveries; last error: {err!r}") from err
            objective.log(kind="recovered", error=repr(err)[:300], pid=os.getpid())
            if objective.current is not None:
                own, objective.current = objective.current, None
            time.sleep(0.5)
        finally:
            objective.release()


def worker(url: str, study_name: str, checkpoint: str, events_dir: str, lock, seq, barrier,
           stay, role: str) -> None:
    """Entry point of one worker process (spawned)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner())
    objective = Objective(lock, seq, Path(events_dir) / f"events-{os.getpid()}.jsonl",
                          checkpoint, role)
    barrier.wait(timeout=STARTUP_S)   # all workers loaded: they start together
    start = time.monotonic()
    try:
        recoveries = run_until_done(study, objective,
                                    storage.get_heartbeat_stale_trial_callback(),
                                    deadline=start + WORK_S, stay=stay)
    except Exception as err:
        objective.log(kind="gave_up", error=repr(err)[:1000], pid=os.getpid())
        raise
    objective.log(kind="done", recoveries=recoveries, pid=os.getpid(),
                  work_s=round(time.monotonic() - start, 1))


# ----------------------------------------------------------------------------- test side
class Workers:
    """Spawned worker processes sharing one lock, counter and barrier.

    With ``stay=True`` a worker that finds nothing left to run keeps polling until
    :meth:`let_go`: the test can still add work (an orphan trial) after the planned trials are
    done, however fast the workers ran them."""

    def __init__(self, url: str, study_name: str, checkpoint: Path, events_dir: Path,
                 roles: list[str], stay: bool = False) -> None:
        ctx = mp.get_context("spawn")
        # Kept on self: start() drops a Process's args, and a semaphore collected before a
        # spawned child has opened it is gone (FileNotFoundError in the child).
        self.lock, self.seq = ctx.Lock(), ctx.Value("i", 0, lock=False)
        self.barrier = ctx.Barrier(len(roles))
        self.stay = ctx.Event()
        if not stay:
            self.stay.set()
        lock, seq, barrier, stay_event = self.lock, self.seq, self.barrier, self.stay
        with one_omp_thread_in_children():
            self.procs = [ctx.Process(target=worker, args=(url, study_name, str(checkpoint),
                                                           str(events_dir), lock, seq, barrier,
                                                           stay_event, role), daemon=True)
                          for role in roles]
            for p in self.procs:
                p.start()
        self.events_dir = events_dir

    def let_go(self) -> None:
        """Let the workers return once the study has nothing left to run."""
        self.stay.set()

    def join(self, timeout: float = JOIN_S) -> list[int | None]:
        """Exit codes; a worker still alive after ``timeout`` is killed (its code: -9)."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        return [p.exitcode for p in self.procs]

    def why(self) -> list[dict]:
        """What went wrong in the workers, for assertion messages."""
        return self.events("gave_up") + self.events("recovered")

    def events(self, kind: str | None = None) -> list[dict]:
        out = [json.loads(line) for f in sorted(self.events_dir.glob("events-*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
        return [e for e in out if kind is None or e["kind"] == kind]


def new_study(url: str, name: str, plan: list[dict]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=make_storage(url),
                                direction="maximize", pruner=make_pruner())
    for params in plan:
        study.enqueue_trial(params)
    return study


def reload(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials through a fresh storage object (a new engine, new connections)."""
    storage = RDBStorage(url)
    try:
        return sorted(optuna.load_study(study_name=name, storage=storage).trials,
                      key=lambda t: t.number)
    finally:
        storage.engine.dispose()


def replay(events: list[dict], study_name: str) -> list[bool]:
    """One process, in memory: the recorded trials fed to the same pruner in the recorded
    order; returns its decisions. Same study name: Hyperband hashes it into each bracket."""
    study = optuna.create_study(study_name=study_name, direction="maximize",
                                pruner=make_pruner())
    trials = [study.ask() for _ in range(max(e["number"] for e in events) + 1)]
    decisions = []
    for e in sorted(events, key=lambda e: e["seq"]):
        t = trials[e["number"]]
        for key, value in e["attrs"].items():
            if value is not None:
                t.set_user_attr(key, value)
        t.report(e["value"], e["step"])
        decisions.append(t.should_prune())
    return decisions


def assert_diagnoses_intact(trials, events, outage: bool = False) -> None:
    """Every finished trial's stored diagnosis is the one its worker last saw before its last
    pruning decision (the monitor's final write repeats it), and covers every reported epoch.

    With ``outage`` (the database restarted mid-study) the stored one may instead be a later
    payload of the same monitor: an epoch-end write lost to the outage is retried at the next
    sync (the final one), after the decision that saw the previous payload. It must then keep
    every diagnosis the decision saw, unchanged."""
    last = {}
    for e in sorted(events, key=lambda e: e["seq"]):
        last[e["number"]] = e
    for t in trials:
        if not t.state.is_finished() or t.state == TrialState.FAIL:
            continue
        e = last[t.number]
        stored, seen = t.user_attrs.get(USER_ATTR), e["attrs"][USER_ATTR]
        if not (outage and stored != seen):
            assert stored == seen, t.number
        elif seen is None:   # the trial's first write was the one lost
            assert stored is not None and stored["history"], t.number
        else:   # a retried write: the same history, carried on
            by_step = {h["step"]: h for h in stored["history"]}
            assert stored["n_diagnoses"] > seen["n_diagnoses"], t.number
            assert stored["epochs_done"] >= seen["epochs_done"], t.number
            assert all(by_step.get(h["step"], h) == h for h in seen["history"]), t.number
            assert seen["history"][-1]["step"] < stored["history"][-1]["step"], t.number
        assert t.user_attrs.get(ERROR_ATTR) == e["attrs"][ERROR_ATTR], t.number
        if t.params["monitor"] == "ok":
            stored = t.user_attrs[USER_ATTR]
            assert stored["epochs_done"] == len(t.intermediate_values) and stored["n_diagnoses"]


def finished_per_plan(trials, plan) -> list[optuna.trial.FrozenTrial]:
    """For each plan entry, the one trial with its parameters that finished (not FAIL)."""
    out = []
    for params in plan:
        done = [t for t in trials if t.params == params
                and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == 1, (params, [(t.number, t.state) for t in trials])
        out.append(done[0])
    return out


# ----------------------------------------------------------------------------- four workers
PLAN = [DIVERGING, HEALTHY[0], NAN, HEALTHY[1], BROKEN_MONITOR, HEALTHY[2], DIVERGING,
        HEALTHY[3], HEALTHY[4], HEALTHY[5], HEALTHY[6], HEALTHY[7]]


@dataclass
class StudyRun:
    """A finished multi-worker study: its trials (read back here) and the workers' events."""

    name: str
    trials: list[optuna.trial.FrozenTrial]
    events: list[dict]


@pytest.fixture(scope="module")
def four_workers(postgres, toy_checkpoint, tmp_path_factory):  # noqa: F811
    url = postgres.create_database("four_workers")
    name = "tevid-four-workers"
    new_study(url, name, PLAN)
    events_dir = tmp_path_factory.mktemp("events")
    workers = Workers(url, name, toy_checkpoint, events_dir, ["worker"] * 4)
    codes = workers.join()
    assert codes == [0, 0, 0, 0], workers.why()
    return StudyRun(name, reload(url, name), workers.events("prune"))


def test_four_workers_finish_one_study_and_every_diagnosis_is_stored(four_workers):
    trials, events = four_workers.trials, four_workers.events
    assert len(trials) == len(PLAN) and [t.params for t in trials] == PLAN
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 4          # really four processes
    assert_diagnoses_intact(trials, events)
    for t in trials:
        if t.params["lr"] >= 1.0 and t.params["monitor"] == "ok":   # diverged: TEViD stops it
            assert t.state == TrialState.PRUNED and prune_reason(t)["pruner"] == "TEViD"
            assert t.user_attrs[USER_ATTR]["alert"] is not None
    assert any(t.state == TrialState.COMPLETE for t in trials)


def test_pruner_decisions_equal_a_single_process_replay(four_workers):
    trials, events = four_workers.trials, four_workers.events
    recorded = [e["pruned"] for e in sorted(events, key=lambda e: e["seq"])]
    assert len(recorded) == sum(len(t.intermediate_values) for t in trials)
    assert replay(events, four_workers.name) == recorded
    # the replay is not trivially equal: both rules decided something
    reasons = [prune_reason(t) for t in trials if t.state == TrialState.PRUNED]
    assert {r["pruner"] for r in reasons} >= {"TEViD"} and not all(recorded)


def test_a_monitor_failure_never_fails_its_trial(four_workers):
    (broken,) = [t for t in four_workers.trials if t.params["monitor"] == "broken"]
    assert broken.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert "diagnostician exploded" in broken.user_attrs[ERROR_ATTR]
    # TEViD never saw the divergence; only the wrapped Hyperband may have stopped it
    assert broken.state == TrialState.COMPLETE or prune_reason(broken)["pruner"] != "TEViD"


# ----------------------------------------------------------------------------- faults
def test_a_worker_killed_mid_trial_is_retried_and_nothing_else_is_lost(
        postgres, toy_checkpoint, tmp_path):  # noqa: F811
    url = postgres.create_database("sigkill")
    name = "tevid-sigkill"
    plan = [HEALTHY[0], DIVERGING, HEALTHY[1], HEALTHY[2], HEALTHY[6]]
    new_study(url, name, plan)
    workers = Workers(url, name, toy_checkpoint, tmp_path, ["victim", "worker", "worker"])
    deadline = time.monotonic() + STARTUP_S + WORK_S
    while not workers.events("victim") and time.monotonic() < deadline:
        time.sleep(0.2)
    (victim_event,) = workers.events("victim")
    victim = workers.procs[0]
    os.kill(victim.pid, signal.SIGKILL)
    codes = workers.join()
    assert codes[0] == -signal.SIGKILL and codes[1:] == [0, 0], workers.why()

    trials = reload(url, name)
    killed = trials[victim_event["number"]]
    assert killed.state == TrialState.FAIL
    # its diagnosis up to the kill was stored before it died, and stays
    assert killed.user_attrs[USER_ATTR]["epochs_done"] == 1
    (retry,) = [t for t in trials
                if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert retry.params == killed.params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs[USER_ATTR]["n_diagnoses"] > 0
    finished = finished_per_plan(trials, plan)
    assert len(trials) == len(plan) + 1 and retry in finished
    events = workers.events("prune")
    assert_diagnoses_intact(trials, events)
    assert replay(events, name) == [e["pruned"] for e in sorted(events, key=lambda e: e["seq"])]


def test_a_database_restart_mid_study_loses_nothing_finished(
        postgres, toy_checkpoint, tmp_path):  # noqa: F811
    url = postgres.create_database("restart")
    name = "tevid-restart"
    plan = [HEALTHY[0], DIVERGING, HEALTHY[1], HEALTHY[2], HEALTHY[3], HEALTHY[6], HEALTHY[7]]
    study = new_study(url, name, plan)
    # stay: the workers can finish the whole plan (3 s) before this process, polling, sees two
    # finished trials; they must still be there to meet the orphan and the restart.
    workers = Workers(url, name, toy_checkpoint, tmp_path, ["worker"] * 3, stay=True)
    deadline = time.monotonic() + STARTUP_S + WORK_S
    before = []
    while time.monotonic() < deadline:
        before = [t for t in reload(url, name) if t.state.is_finished()]
        if len(before) >= 2:
            break
        time.sleep(0.3)
    assert len(before) >= 2, workers.why()
    # The outage that once kept three workers waiting for 10 minutes, made certain: a trial set
    # RUNNING by study.ask() just before the server goes down, whose heartbeat never comes (the
    # worker's first heartbeat write and its tell(FAIL) both fail). Taken under the workers'
    # lock, from a trial enqueued for it, so no worker finds the queue emptied under it.
    with workers.lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Heartbeat ... supposed to be used with optimize"
        plan.append(HEALTHY[4])
        study.enqueue_trial(HEALTHY[4])
        orphan = study.ask().number
    postgres.restart()
    workers.let_go()
    codes = workers.join()
    assert codes == [0, 0, 0], workers.why()
    logger.info("workers done: %s", workers.events("done"))

    trials = reload(url, name)
    by_number = {t.number: t for t in trials}
    for old in before:   # every trial finished before the restart is unchanged
        new = by_number[old.number]
        assert (new.state, new.value, new.intermediate_values, new.user_attrs) == (
            old.state, old.value, old.intermediate_values, old.user_attrs)
    finished = finished_per_plan(trials, plan)
    assert by_number[orphan].state == TrialState.FAIL   # failed without a heartbeat, retried:
    for t in trials:
        if t.state == TrialState.FAIL:   # failed by the outage: retried, and the retry finished
            assert any(RetryHeartbeatStaleTrialCallback.retried_trial_number(r) == t.number
                       for r in finished), t.number
    assert_diagnoses_intact(trials, workers.events("prune"), outage=True)


# ----------------------------------------------------------------------------- storage cost
def test_the_monitor_writes_once_per_epoch_whatever_the_epoch_length(toy_diagnostician,
                                                                     digits_data):
    """Bounded by design: after the first epoch_end, one attribute write per epoch (sync_every
    only serves loops that never call epoch_end), not one per step or per few diagnoses."""
    class Recorder:
        number = 0

        def __init__(self):
            self.writes = []

        def set_user_attr(self, key, value):
            self.writes.append(value["n_diagnoses"])

    torch.manual_seed(0)
    model = small_cnn(in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rec = Recorder()
    with TrialMonitor(model, rec, every=1, diagnostician=toy_diagnostician, sync_every=5,
                      asynchronous=False) as mon:
        for epoch in range(3):
            train_epoch(model, opt, digits_data, mon, steps=12)
            mon.epoch_end(epoch)
    assert mon.alert is None
    # epoch 0: every 5 diagnoses (the loop's use of epoch_end is not known yet), then per epoch
    assert rec.writes == [5, 10, 12, 24, 36, 36]            # the last: the `with` block's exit


# ----------------------------------------------------------------------------- heartbeat-less
# The restart hang's root cause, on any RDBStorage (SQLite here, no server needed): a trial that
# study.ask() set RUNNING and that never recorded a heartbeat is invisible to Optuna's
# fail_stale_trials forever; fail_trials_without_heartbeat fails and retries it.

def sqlite_study(tmp_path: Path) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the heartbeat is experimental in Optuna
        storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    for params in (HEALTHY[0], HEALTHY[1]):
        study.enqueue_trial(params)
    return study


def ask_orphan(study: optuna.Study) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Heartbeat ... supposed to be used with optimize"
        return study.ask().number


def test_a_running_trial_without_a_heartbeat_is_never_stale_to_optuna(tmp_path):
    study = sqlite_study(tmp_path)
    orphan = ask_orphan(study)
    assert trials_without_heartbeat(study) == [orphan]
    time.sleep(GRACE_S + 1)
    optuna.storages.fail_stale_trials(study)   # Optuna's own sweep: it does not see the orphan
    assert study.trials[orphan].state == TrialState.RUNNING


def test_a_heartbeatless_trial_is_failed_after_the_grace_period_and_retried(tmp_path):
    study = sqlite_study(tmp_path)
    orphan = ask_orphan(study)
    assert fail_trials_without_heartbeat(study, GRACE_S) == []   # too young: may still start
    beating = ask_orphan(study)
    study._storage.record_heartbeat(study.trials[beating]._trial_id)   # as optimize() does
    assert trials_without_heartbeat(study) == [orphan]
    assert fail_trials_without_heartbeat(study, grace_period=0) == [orphan]
    assert fail_trials_without_heartbeat(study, grace_period=0) == []   # once
    trials = study.trials
    assert trials[orphan].state == TrialState.FAIL and trials[beating].state == TrialState.RUNNING
    (retry,) = [t for t in trials
                if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == orphan]
    assert retry.state == TrialState.WAITING and retry.params == trials[orphan].params


def test_a_missing_heartbeat_model_fails_loudly(tmp_path, monkeypatch):
    from optuna.storages._rdb import models

    study = sqlite_study(tmp_path)
    ask_orphan(study)
    monkeypatch.delattr(models, "TrialHeartbeatModel")
    with pytest.raises(OptunaInternalsError, match=r"TrialHeartbeatModel.*pip install"):
        fail_trials_without_heartbeat(study, GRACE_S)
