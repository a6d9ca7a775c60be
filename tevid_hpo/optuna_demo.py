"""The ``tevid-hpo demo`` study: Hyperband alone vs TEViD + Hyperband on the same trials.

One small CNN (:func:`~data_factory.architectures.small_cnn`) on scikit-learn's digits
(:func:`~data_factory.datasets.digits`, offline), Adam, and a deliberately wide search space:

* ``lr`` log-uniform in ``[1e-4, 3]``: above ~0.05 the loss explodes within the first epoch and
  leaves a dead network at chance accuracy (Adam: with SGD this plain CNN barely learns in a few
  epochs at any learning rate, which would make a dull demo);
* ``weight_decay`` uniform in ``[0, 1e-2]`` (Adam's L2 term: the top of the range hurts);
* ``train_size`` in ``{100, 300, 1000}`` examples; every epoch is the same number of steps (one
  pass over the full split), so 100 examples are memorised (train accuracy 1.0, validation
  ~0.8): those trials overfit.

The study runs twice, with ``HyperbandPruner(1, epochs, 3)`` and with
``TEViDPruner(HyperbandPruner(1, epochs, 3))``, under one study name in two SQLite files (Hyperband
derives a trial's bracket from the study name and trial number, so trial ``k`` sits in the same
bracket in both). Both use ``QMCSampler(seed)``, whose points do not
depend on earlier results, and every trial seeds its weights and data order from the seed and its
number, so trial ``k`` is the same configuration with the same training trajectory in both
studies: the table compares each configuration under both pruners. The TEViD study runs a
:class:`~tevid_hpo.monitor.TrialMonitor` in every trial; its wall time includes that overhead.

Without a shipped default checkpoint the demo trains the toy diagnostician of
:mod:`tevid_hpo.testing` (Healthy vs Instability only, ~30 s) into
``OUT/toy-diagnostician`` and says so; its numbers then describe that toy, not the real model.

Example:
    >>> result = run_demo("tevid_runs", n_trials=4, epochs=2, quiet=True)   # doctest: +SKIP
    >>> result["totals"]["epochs_saved"] >= 0                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from data_factory.architectures import small_cnn
from data_factory.datasets import TensorData, digits
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.monitor import USER_ATTR, TrialMonitor
from tevid_hpo.pruners import TEViDPruner, prune_reason

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_TRIALS", "run_demo"]

DEFAULT_TRIALS = 30
DEFAULT_EPOCHS = 9
BATCH_SIZE = 32
LR_RANGE = (1e-4, 3.0)
WEIGHT_DECAY_RANGE = (0.0, 1e-2)
TRAIN_SIZES = (100, 300, 1000)
STUDIES = ("hyperband", "tevid")
STUDY_NAME = "tevid-demo"


def _resolve_diagnostician(diagnostician: Diagnostician | str | os.PathLike[str] | None,
                           out: Path, say: Callable[[str], None]) -> Diagnostician:
    if isinstance(diagnostician, Diagnostician):
        return diagnostician
    if diagnostician is not None:
        return Diagnostician.from_pretrained(diagnostician, device="cpu")
    try:
        return Diagnostician.from_pretrained(device="cpu")
    except FileNotFoundError:
        pass
    from tevid_hpo.testing import DEMO_CORPUS, train_toy_diagnostician

    toy = out / "toy-diagnostician"
    if (toy / "model.safetensors").is_file():
        say(f"No shipped TEViD checkpoint: using the toy diagnostician in {toy}.")
    else:
        say("No shipped TEViD checkpoint (tevid_hpo/checkpoints/default.*) yet: training a toy "
            f"Healthy-vs-Instability diagnostician on digits runs into {toy} (~30 s). The TEViD "
            "numbers below are for that toy, not for the real model.")
        train_toy_diagnostician(toy, DEMO_CORPUS)
    return Diagnostician.from_pretrained(toy, device="cpu")


def _train(trial: optuna.Trial, data: TensorData, epochs: int, seed: int,
           diagnostician: Diagnostician | None) -> float:
    """One trial: Adam on a subset of digits, val accuracy reported per epoch."""
    lr = trial.suggest_float("lr", *LR_RANGE, log=True)
    weight_decay = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE)
    size = min(trial.suggest_categorical("train_size", TRAIN_SIZES), len(data.x_train))
    # Seeded by trial number, not by study: the same trial trains identically in both studies.
    torch.manual_seed(seed * 100_003 + trial.number)
    model = small_cnn(in_channels=1, num_classes=data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = data.x_train[:size], data.y_train[:size]
    # An "epoch" is the same number of steps for every subset size (one pass over the full
    # split), so epochs cost the same everywhere and small subsets are seen many times.
    steps_per_epoch = math.ceil(len(data.x_train) / BATCH_SIZE)
    g = torch.Generator().manual_seed(seed * 1_000_003 + trial.number)
    passes = steps_per_epoch * BATCH_SIZE * epochs // size + 1
    order = torch.cat([torch.randperm(size, generator=g) for _ in range(passes)])
    # optimizer=: its learning rate, which a telemetry diagnostician reads (the toy ignores it).
    monitor = (TrialMonitor(model, trial, diagnostician=diagnostician, optimizer=opt)
               if diagnostician is not None else contextlib.nullcontext())
    best = 0.0
    with monitor as mon:
        for epoch in range(epochs):
            for k in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
                idx = order[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                if mon is not None:
                    mon.step(loss=loss.item())
                opt.step()
            with torch.no_grad():
                acc = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
            best = max(best, acc)
            if mon is not None:
                mon.epoch_end(epoch)
            trial.set_user_attr("epochs", epoch + 1)
            trial.set_user_attr("best_val_acc", round(best, 4))
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return best


def _summary(t: FrozenTrial, study: str) -> dict[str, Any]:
    epochs = int(t.user_attrs.get("epochs", len(t.intermediate_values)))
    row: dict[str, Any] = {"state": t.state.name, "epochs": epochs,
                           "best_val_acc": t.user_attrs.get("best_val_acc"),
                           "pruned_by": None, "why": ""}
    if t.state == TrialState.PRUNED:
        reason = prune_reason(t)
        if reason is not None and reason.get("pruner") == "TEViD":
            row["pruned_by"] = "TEViD"
            row["why"] = (f"{reason['label']} ({reason['reason']}) at step {reason['step']}, "
                          f"p={reason['confidence']}")
        else:
            row["pruned_by"] = "Hyperband"
            row["why"] = f"rung at epoch {t.last_step}"
    tevid = t.user_attrs.get(USER_ATTR)
    row["alert"] = tevid.get("alert") if isinstance(tevid, dict) else None
    return row


def _fmt_params(p: dict[str, Any]) -> str:
    return f"lr={p['lr']:.1e} wd={p['weight_decay']:.1e} n={p['train_size']:<4}"


def _print_table(rows: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    head = (f"{'#':>3} {'params':<34} | {'Hyperband only':<26} | {'TEViD + Hyperband':<26} | "
            "why TEViD + Hyperband pruned")
    say(head)
    say("-" * len(head))
    for r in rows:
        cells = []
        for name in STUDIES:
            s = r[name]
            acc = "  -  " if s["best_val_acc"] is None else f"{s['best_val_acc']:.3f}"
            outcome = s["state"] if s["pruned_by"] is None else f"pruned:{s['pruned_by']}"
            cells.append(f"{outcome:<16} {s['epochs']:>2}ep {acc}")
        why = r["tevid"]["why"]
        say(f"{r['number']:>3} {_fmt_params(r['params']):<34} | {cells[0]:<26} | "
            f"{cells[1]:<26} | {why}")


@contextlib.contextmanager
def _demo_settings() -> Iterator[None]:
    """Optuna's per-trial INFO lines off (ours replace them) and one intra-op torch thread.

    One thread because the models are tiny: more threads only add synchronisation (and
    oversubscribe a busy machine badly), and results then do not depend on the core count.
    Both settings are restored on exit.
    """
    verbosity, threads = optuna.logging.get_verbosity(), torch.get_num_threads()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)


def _run_study(name: str, storage: str, n_trials: int, epochs: int, seed: int, data: TensorData,
               diagnostician: Diagnostician | None, say: Callable[[str], None]
               ) -> tuple[dict[str, Any], list[FrozenTrial]]:
    # One study name for both arms, in separate storages: HyperbandPruner assigns a trial's
    # bracket from crc32(f"{study_name}_{number}"), so different names would put trial k in
    # different brackets and mix TEViD's effect with bracket luck.
    study_name = STUDY_NAME
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study_name, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(seed=seed, scramble=True)
    hyperband = HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    pruner: BasePruner = hyperband if diagnostician is None else TEViDPruner(hyperband)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner)

    def progress(_: optuna.Study, t: FrozenTrial) -> None:
        s = _summary(t, name)
        by = f" by {s['pruned_by']}" if s["pruned_by"] else ""
        say(f"[{name:>9} {t.number + 1:>2}/{n_trials}] {_fmt_params(t.params)} {s['state']}{by} "
            f"after {s['epochs']} epoch(s), best val acc {s['best_val_acc']}")

    t0 = time.perf_counter()
    study.optimize(lambda trial: _train(trial, data, epochs, seed, diagnostician),
                   n_trials=n_trials, callbacks=[progress])
    wall = time.perf_counter() - t0
    done = study.get_trials(deepcopy=False)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    summary = {
        "study_name": study_name, "storage": storage, "wall_s": round(wall, 2),
        "epochs": sum(_summary(t, name)["epochs"] for t in done),
        "best_value": round(study.best_value, 4) if complete else None,
        "n_complete": len(complete),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in done),
        "n_pruned_by_tevid": sum(_summary(t, name)["pruned_by"] == "TEViD" for t in done),
    }
    return summary, done


def run_demo(out_dir: str | os.PathLike[str] = "tevid_runs", n_trials: int = DEFAULT_TRIALS,
             epochs: int = DEFAULT_EPOCHS, seed: int = 0,
             diagnostician: Diagnostician | str | os.PathLike[str] | None = None, *,
             quiet: bool = False) -> dict[str, Any]:
    """Run both studies, print the per-trial table and the totals, return them.

    Args:
        out_dir: directory for the studies (``optuna-demo-hyperband.db`` and
            ``optuna-demo-tevid.db``, SQLite, one study named ``"tevid-demo"`` each) and, if
            needed, the toy diagnostician.
        n_trials: trials per study.
        epochs: epochs per trial (Hyperband's ``max_resource``).
        seed: sampler, weight-init and data seeds.
        diagnostician: a :class:`Diagnostician` or checkpoint path; ``None`` uses the shipped
            default, or trains the toy one when there is none.
        quiet: print nothing.

    Returns:
        ``{"storages": {name: url}, "dashboard", "diagnostician", "studies": {name: {...}},
        "trials": [...], "totals": {...}}``; each trial row holds its ``params`` and, per study, ``state``,
        ``epochs``, ``best_val_acc``, ``pruned_by`` (``None``, ``"Hyperband"``, ``"TEViD"``),
        ``why`` and ``alert``.
    """
    if n_trials < 1 or epochs < 1:
        raise ValueError(f"n_trials and epochs must be >= 1, got {n_trials}, {epochs}")
    say: Callable[[str], None] = (lambda _msg: None) if quiet else (lambda m: print(m, flush=True))
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storages = {name: f"sqlite:///{(out / f'optuna-demo-{name}.db').resolve()}" for name in STUDIES}
    studies: dict[str, dict[str, Any]] = {}
    trials: dict[str, list[FrozenTrial]] = {}
    with _demo_settings():
        diag = _resolve_diagnostician(diagnostician, out, say)
        data = digits(image_size=16, seed=seed)
        for name in STUDIES:
            studies[name], trials[name] = _run_study(
                name, storages[name], n_trials, epochs, seed, data,
                diag if name == "tevid" else None, say)

    rows = [{"number": a.number, "params": a.params,
             "hyperband": _summary(a, "hyperband"), "tevid": _summary(b, "tevid")}
            for a, b in zip(trials["hyperband"], trials["tevid"])]
    flagged = [r for r in rows if r["tevid"]["pruned_by"] == "TEViD"]
    hb, tv = studies["hyperband"], studies["tevid"]
    saved = hb["epochs"] - tv["epochs"]
    totals = {
        "epochs_hyperband": hb["epochs"], "epochs_tevid": tv["epochs"], "epochs_saved": saved,
        "epochs_saved_pct": round(100.0 * saved / hb["epochs"], 1) if hb["epochs"] else 0.0,
        "best_hyperband": hb["best_value"], "best_tevid": tv["best_value"],
        "pruned_by_tevid": len(flagged),
        "flagged_epochs_hyperband": sum(r["hyperband"]["epochs"] for r in flagged),
        "flagged_epochs_tevid": sum(r["tevid"]["epochs"] for r in flagged),
        "wall_hyperband_s": hb["wall_s"], "wall_tevid_s": tv["wall_s"],
        "wall_total_s": round(time.perf_counter() - start, 2),
    }
    dashboard = " & ".join(f"optuna-dashboard {url} --port {8080 + k}"
                           for k, url in enumerate(storages.values()))

    say("")
    _print_table(rows, say)
    say("")
    say(f"Epochs trained: Hyperband only {hb['epochs']}, TEViD + Hyperband {tv['epochs']} "
        f"-> {saved} saved ({totals['epochs_saved_pct']}%).")
    say(f"TEViD pruned {len(flagged)} trial(s); Hyperband alone spent "
        f"{totals['flagged_epochs_hyperband']} epochs on them, TEViD "
        f"{totals['flagged_epochs_tevid']}.")
    say(f"Best val accuracy: Hyperband only {hb['best_value']}, TEViD + Hyperband "
        f"{tv['best_value']}.")
    say(f"Wall time: Hyperband only {hb['wall_s']:.1f}s, TEViD + Hyperband {tv['wall_s']:.1f}s "
        f"(monitoring included), total {totals['wall_total_s']:.1f}s.")
    say(f"Diagnostician: {diag.source or 'in-memory'}")
    say(f"Open the studies: pip install optuna-dashboard && {dashboard}")
    return {"storages": storages, "dashboard": dashboard,
            "diagnostician": str(diag.source) if diag.source else None,
            "studies": studies, "trials": rows, "totals": totals}
