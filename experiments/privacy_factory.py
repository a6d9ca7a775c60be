"""Privacy–utility of DP telemetry on the factory's held-out split (paper Figure 7, on the corpus).

    python -m experiments.privacy_factory --root ~/.cache/tevid-hpo/corpus-procedural-v10 \\
        --checkpoint tevid_hpo/checkpoints/default --z 0.5 1.0 2.0 \\
        --out ~/.cache/tevid-hpo/privacy-factory [--clip C] [--delta 1e-5] [--workers 2]

Every labelled run of the split (``--split test``) is trained again from its stored
:class:`~data_factory.runner.RunSpec` (:func:`spec_from_meta`), once per noise multiplier ``z``,
with its frames captured in DP mode (``execute_run(..., privacy=...)``, ``docs/privacy.md``) into
the run store ``OUT/z<z>/``. DP capture does not change training (the noise has its own
generator), so a re-run is the same run, with the same labels; :func:`reproduced` checks that on
its losses and runs that do not match are left out. The given checkpoint then scores the original
(plain) frames and every setting's DP frames of the same runs, with the evaluation's own
streaming scores and run memory (:func:`score_runs`); the metric is the evaluation's event-time
AUPRC with a 95 % run-level bootstrap interval. ``OUT/summary.json`` holds every number and the
markdown table is printed; ``--results docs/results.md`` also writes it, with the figure
(:func:`plot`), as that file's ``privacy-factory`` section.

Resumable: runs already in ``OUT/z<z>/`` are not trained again, nor are runs recorded in its
``failed.csv`` (a model with BatchNorm cannot be DP-captured: it mixes the samples of a batch; the
failure is deterministic). ``OUT/settings.json`` pins ``clip``, ``delta``, ``grid`` and ``seed``:
resuming with other values is refused, since the settings would mix.

The clip ``C``, unless given, is the median joint per-sample contribution norm
(:class:`ContributionNorms`) over the capture steps of a pilot run: the first healthy run of the
*train* split that can be DP-captured (Appendix J's "calibrated to the median norm", on data that
is not the protected data; :func:`experiments.privacy.calibrate_clip` does the same for the toy
runs). It is kept in ``settings.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import shlex
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from core_models.memory import remember
from core_models.metrics import RunPrediction, event_time_auprc
from data_factory.labelers.rules import RunLabel
from data_factory.labels import HEALTHY
from data_factory.privacy import DPTelemetry
from data_factory.runner import RunSpec, execute_run
from data_factory.store import Run, RunStore
from experiments.evaluate.context import _ci_dict, _fmt, _interval, _markdown
from experiments.evaluate.records import predictions, tevid_run_scores
from experiments.pipeline import labelled_runs, load_labels
from tevid_hpo.diagnostician import Diagnostician

__all__ = ["ContributionNorms", "DPSettings", "main", "noise_seed", "reproduced", "score_runs",
           "setting_dir", "spec_from_meta"]

#: Meta keys that are not RunSpec fields of the same meaning: the intervention is stored as its
#: record (its ``kind`` is the spec's), severity and start step are never pinned by the factory.
_NOT_SPEC = ("intervention", "severity", "start_step")


@dataclass(frozen=True)
class DPSettings:
    """A picklable :data:`~data_factory.runner.PrivacyFactory`: one run's mechanism from its
    training-set size ``N`` (``q = B/N``).

    Example:
        >>> dp = DPSettings(1.0, clip=8.0, seed=3)(1000)
        >>> dp.noise_multiplier, dp.clip, dp.dataset_size, dp.grid
        (1.0, 8.0, 1000, 8)
    """

    noise_multiplier: float
    clip: float
    delta: float = 1e-5
    grid: int = 8
    seed: int | None = None

    def __call__(self, dataset_size: int) -> DPTelemetry:
        return DPTelemetry(self.noise_multiplier, self.clip, self.delta, dataset_size=dataset_size,
                           grid=self.grid, seed=self.seed)


class ContributionNorms(DPTelemetry):
    """A noise-free, clip-free mechanism that records each sample's joint contribution norm.

    Per capture step and sample: the L2 norm over all released maps of the centred contribution
    (:meth:`DPTelemetry.contributions`; a tensor's first, level-only release is left out, as
    it is not centred). :attr:`norms` holds one array of ``B`` norms per step. Its
    :meth:`median` is the clip ``C`` at which half the per-sample contributions are clipped.
    The rows are un-noised: calibrate on data that is not protected.

    Example:
        >>> import torch
        >>> rec = ContributionNorms(dataset_size=100)
        >>> for step in range(3):
        ...     _ = rec.release(torch.randn(4, 16), key="act")
        ...     _ = rec.release(torch.randn(4, 16), key="grad", gradient=True)
        ...     rec.end_step(released=True, step=step)
        >>> len(rec.norms), rec.norms[0].shape, rec.median() > 0
        (2, (4,), True)
    """

    def __init__(self, dataset_size: int, grid: int = 8) -> None:
        super().__init__(0.0, 1e9, dataset_size=dataset_size, grid=grid, seed=0)
        self.norms: list[np.ndarray] = []
        self._squares: torch.Tensor | None = None

    def contributions(self, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, tuple[int, int], float]:
        rows, hw, shift = super().contributions(*args, **kwargs)
        if rows.shape[1] > 1:   # centred
            sq = rows.double().pow(2).sum(1)
            same = self._squares is not None and self._squares.shape == sq.shape
            self._squares = self._squares + sq if same else sq
        return rows, hw, shift

    def end_step(self, released: bool, step: int | None = None) -> None:
        if released and self._squares is not None:
            self.norms.append(self._squares.sqrt().numpy())
        self._squares = None
        super().end_step(released, step)

    def median(self) -> float:
        """Median joint norm over every recorded step and sample (``nan`` when none)."""
        return float(np.median(np.concatenate(self.norms))) if self.norms else math.nan


def spec_from_meta(meta: Mapping[str, Any]) -> RunSpec:
    """The :class:`RunSpec` a stored run was trained from, as the factory planned it.

    ``meta.json`` holds every spec field but ``severity`` and ``start_step``, which
    :func:`experiments.factory.plan_corpus` never pins (the run draws them from its seed); they
    are left unpinned here too. A run built with pinned ones trains differently when rebuilt, and
    :func:`reproduced` then says so.

    Example:
        >>> meta = {"run_id": "test-a", "split": "test", "arch": "mlp", "dataset": "tabular",
        ...         "optimizer": "sgd", "intervention": {"kind": "instability", "severity": 0.5},
        ...         "seed": 7, "epochs": 3, "n_frames": 9}
        >>> s = spec_from_meta(meta)
        >>> s.intervention, s.seed, s.epochs, s.severity, s.every
        ('instability', 7, 3, None, 10)
    """
    known = {f.name for f in fields(RunSpec)} - set(_NOT_SPEC)
    iv = meta["intervention"]
    kind = iv["kind"] if isinstance(iv, Mapping) else str(iv)
    return RunSpec(intervention=kind, **{k: v for k, v in meta.items() if k in known})


def noise_seed(run_id: str, noise_multiplier: float, seed: int = 0) -> int:
    """Seed of one run's DP noise in one setting: fixed by the run, ``z`` and ``seed`` only, so a
    resumed experiment draws the same noise.

    Example:
        >>> noise_seed("r", 1.0) == noise_seed("r", 1.0) != noise_seed("r", 2.0)
        True
    """
    return int(hashlib.sha256(f"{seed}:{run_id}:{noise_multiplier:g}".encode()).hexdigest()[:8], 16)


def setting_dir(out: Path, noise_multiplier: float) -> Path:
    """``OUT/z<z>``: the run store of one noise multiplier.

    Example:
        >>> setting_dir(Path("out"), 0.5).name, setting_dir(Path("out"), 1.0).name
        ('z0.5', 'z1')
    """
    return Path(out) / f"z{noise_multiplier:g}"


def reproduced(original: Run, rerun: Run, rtol: float = 1e-5) -> bool:
    """Whether ``rerun`` trained as ``original`` did: the same steps, losses within ``rtol``
    (non-finite where the original's were). Only then do the original's labels hold for it.

    Example:
        >>> import pandas as pd
        >>> from types import SimpleNamespace as R
        >>> a = R(steps=pd.DataFrame({"loss": [2.0, 1.5, float("nan")]}))
        >>> b = R(steps=pd.DataFrame({"loss": [2.0, 1.5000001, float("nan")]}))
        >>> reproduced(a, b), reproduced(a, R(steps=pd.DataFrame({"loss": [2.0, 1.4, 0.0]})))
        (True, False)
    """
    x = original.steps["loss"].to_numpy(dtype=np.float64)
    y = rerun.steps["loss"].to_numpy(dtype=np.float64)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=rtol, atol=0.0, equal_nan=True))


def score_runs(diag: Diagnostician, runs: Sequence[Run], labels: Mapping[str, RunLabel],
               batch_size: int = 64) -> list[RunPrediction]:
    """The checkpoint's test records, as the evaluation makes them (Table 3's event-time AUPRC
    reads these): streaming scores (:func:`~experiments.evaluate.records.tevid_run_scores`)
    with the runs' truth, through the checkpoint's run memory.

    Example:
        >>> from core_models.tevid import TEViD
        >>> score_runs(Diagnostician(TEViD("tiny"), device="cpu"), [], {})
        []
    """
    score = partial(tevid_run_scores, diag, name="tevid", batch_size=batch_size, device="cpu")
    preds, _ = predictions(score, runs, labels, evidential=True)
    return [remember(p, diag.calibration.memory) for p in preds]


# ------------------------------------------------------------------------------ re-running
def _one_thread() -> None:
    # The factory trains with one thread per run: float sums then come out the same here.
    torch.set_num_threads(1)


def _rerun(spec: RunSpec, store_root: str, settings: DPSettings) -> dict[str, Any]:
    _one_thread()
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    return execute_run(spec, RunStore(store_root), privacy=settings)


def _failed(store: RunStore) -> dict[str, str]:
    path = store.root / "failed.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    return dict(zip(table["run_id"], table["error"].astype(str)))


def _record_failure(store: RunStore, row: Mapping[str, Any]) -> None:
    path = store.root / "failed.csv"
    pd.DataFrame([{"run_id": row["run_id"], "error": row.get("error")}]).to_csv(
        path, mode="a", header=not path.exists(), index=False)


def _rerun_all(specs: Sequence[RunSpec], zs: Sequence[float], out: Path, settings: DPSettings,
               workers: int) -> float:
    """Train every (run, z) not yet stored or failed; returns the seconds the runs took."""
    stores = {z: RunStore(setting_dir(out, z)) for z in zs}
    todo = []
    for z, store in stores.items():
        done, failed = set(store.list()), _failed(store)
        todo += [(s, z) for s in specs if s.run_id not in done and s.run_id not in failed]
    print(f"[privacy_factory] {len(specs)} runs x {len(zs)} settings: {len(todo)} to train",
          flush=True)
    seconds = 0.0
    bar = tqdm(total=len(todo), desc="DP re-runs", unit="run")

    def done(row: dict[str, Any], z: float) -> None:
        nonlocal seconds
        seconds += float(row.get("seconds", 0.0))
        if row["status"] != "ok":
            _record_failure(stores[z], row)
        bar.update()
        bar.set_postfix(z=f"{z:g}", status=row["status"])

    def job(spec: RunSpec, z: float) -> tuple[RunSpec, str, DPSettings]:
        mech = DPSettings(z, settings.clip, settings.delta, settings.grid,
                          noise_seed(spec.run_id, z, settings.seed or 0))
        return spec, str(stores[z].root), mech

    if workers > 1 and todo:
        ctx = multiprocessing.get_context("spawn")   # torch state is not fork-safe
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
            futures = {pool.submit(_rerun, *job(s, z)): z for s, z in todo}
            for fut in as_completed(futures):
                done(fut.result(), futures[fut])
    else:
        for s, z in todo:
            done(_rerun(*job(s, z)), z)
    bar.close()
    return seconds


def _calibrate(store: RunStore, labels: Mapping[str, RunLabel], out: Path, grid: int,
               tries: int = 5) -> tuple[float, str]:
    """Median joint contribution norm of the first DP-capturable healthy train run."""
    pilots = [rid for rid, _ in labelled_runs(store, dict(labels), "train")
              if labels[rid].label == HEALTHY][:tries]
    for rid in pilots:
        recorder: list[ContributionNorms] = []

        def factory(n: int, sink: list[ContributionNorms] = recorder) -> ContributionNorms:
            sink.append(ContributionNorms(n, grid))
            return sink[-1]

        row = execute_run(spec_from_meta(store.load(rid).meta), RunStore(out / "pilot"),
                          overwrite=True, privacy=factory)
        if row["status"] == "ok" and recorder and recorder[-1].norms:
            return recorder[-1].median(), rid
        print(f"[privacy_factory] pilot {rid} unusable: {row.get('error', 'no capture')}",
              flush=True)
    raise RuntimeError(f"no DP-capturable healthy train run among {pilots}; pass --clip")


def _settings(args: argparse.Namespace, store: RunStore, labels: Mapping[str, RunLabel]
              ) -> dict[str, Any]:
    """The pinned settings of ``OUT`` (clip calibrated once), refusing a mismatch on resume."""
    path = args.out / "settings.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    want = {"delta": args.delta, "grid": args.grid, "seed": args.seed, "split": args.split}
    if args.clip is not None:
        want["clip"] = args.clip
    clash = {k: (old[k], v) for k, v in want.items() if k in old and old[k] != v}
    if clash:
        raise SystemExit(f"{args.out} was made with other settings {clash} (old, new); "
                         "use another --out")
    if "clip" not in old and "clip" not in want:
        clip, pilot = _calibrate(store, labels, args.out, args.grid)
        want.update(clip=clip, clip_source=f"median joint contribution norm of pilot run {pilot}")
    elif "clip" in want and "clip" not in old:
        want["clip_source"] = "--clip"
    new = {**old, **want, "root": str(args.root)}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(new, indent=1))
    return new


# ------------------------------------------------------------------------------ scoring
def _epsilons(runs: Iterable[Run]) -> list[float]:
    out = []
    for r in runs:
        eps = r.meta["privacy"]["epsilon"]
        out.append(math.inf if eps is None else float(eps))
    return out


def _row(name: str, z: float | None, preds: list[RunPrediction], eps: list[float],
         compositions: list[int], n_resamples: int, seed: int,
         plain: Sequence[RunPrediction] | None = None) -> dict[str, Any]:
    ci = _interval(event_time_auprc, preds, n_resamples, seed)
    row = {"setting": name, "z": z, "runs": len(preds),
           "epsilon_median": float(np.median(eps)) if eps else math.inf,
           "epsilon_max": float(np.max(eps)) if eps else math.inf,
           "compositions_median": float(np.median(compositions)) if compositions else None,
           "auprc": _ci_dict(ci), "_ci": ci, "_delta": None}
    if plain is not None:
        # Paired: each resample draws whole runs and scores both captures of the same runs.
        by_id = {p.run_id: p for p in plain}

        def delta(rs: list[RunPrediction]) -> float:
            return event_time_auprc(rs) - event_time_auprc([by_id[r.run_id] for r in rs])

        row["_delta"] = _interval(delta, preds, n_resamples, seed)
        row["auprc_minus_plain"] = _ci_dict(row["_delta"])
    return row


def _eps_text(x: float) -> str:
    return "∞" if not math.isfinite(x) else f"{x:.3g}"


def _table(rows: Sequence[Mapping[str, Any]], delta: float) -> str:
    return _markdown([{
        "capture": r["setting"], "z": "—" if r["z"] is None else f"{r['z']:g}",
        f"ε at δ={delta:g}, median over runs": _eps_text(r["epsilon_median"]),
        "ε, max": _eps_text(r["epsilon_max"]),
        "event-time AUPRC [95 % CI]": _fmt(r["_ci"]),
        "minus plain, paired [95 % CI]": "—" if r["_delta"] is None else _fmt(r["_delta"]),
        "runs": str(r["runs"])} for r in rows])


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None   # JSON has no infinity: ε = ∞ is written as null, as PrivacyReport does
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return _json(value.item())
    return value


def plot(summary: Mapping[str, Any], path: Path) -> Path:
    """Event-time AUPRC with its 95 % interval against the median ε of the runs, one point per
    ``z`` (log scale), the plain capture as a band and ``z = 0`` (ε = ∞) as a dotted line.
    ``summary`` is :func:`main`'s (or ``summary.json``'s) summary.

    Example:
        >>> import tempfile
        >>> ci = {"estimate": 0.8, "low": 0.7, "high": 0.9}
        >>> rows = [{"setting": "plain", "z": None, "epsilon_median": None, "auprc": ci},
        ...         {"setting": "DP z=1", "z": 1.0, "epsilon_median": 2.0, "auprc": ci}]
        >>> plot({"rows": rows, "settings": {"delta": 1e-5}},
        ...      Path(tempfile.mkdtemp()) / "f.png").is_file()
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.report import save_figure

    def finite(x: Any) -> bool:
        return x is not None and math.isfinite(x)

    fig, ax = plt.subplots(figsize=(6, 4))
    plain = next(r for r in summary["rows"] if r["z"] is None)["auprc"]
    if finite(plain["low"]) and finite(plain["high"]):
        ax.axhspan(plain["low"], plain["high"], color="grey", alpha=0.2)
    ax.axhline(plain["estimate"], color="grey", ls="--", label="plain capture (ε = ∞), 95 % CI")
    for r in summary["rows"]:
        if r["z"] == 0:   # clipped and pooled, no noise: what the mechanism costs without noise
            ax.axhline(r["auprc"]["estimate"], color="tab:orange", ls=":",
                       label="DP capture at z = 0 (no noise, ε = ∞)")
    dp = [r for r in summary["rows"] if r["z"] is not None and finite(r["epsilon_median"])]
    xs = [r["epsilon_median"] for r in dp]
    est = [r["auprc"]["estimate"] for r in dp]

    def reach(r: Mapping[str, Any], end: str, sign: int) -> float:
        """How far the interval's ``end`` lies from the estimate (0 where undefined)."""
        a = r["auprc"]
        return max(sign * (a[end] - a["estimate"]), 0.0) if finite(a[end]) else 0.0

    err = [[reach(r, "low", -1) for r in dp], [reach(r, "high", 1) for r in dp]]
    ax.errorbar(xs, est, yerr=err, fmt="o-", capsize=3, label="DP capture, 95 % CI")
    for x, y, r in zip(xs, est, dp):
        ax.annotate(f"z={r['z']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"ε at δ = {summary['settings']['delta']:g} (median over runs)")
    ax.set_ylabel("event-time AUPRC (factory held-out runs)")
    ax.set_title("Privacy–utility on the factory's held-out split")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _section(summary: Mapping[str, Any], table: str, figure: str) -> str:
    s = summary["settings"]
    excluded = {rid for why in summary["excluded"].values() for rid in why}
    scalars = ("It reads the steps.csv scalars (loss, learning rate, gradient norm), which DP "
               "capture does not noise: they are outside the guarantee, so these rows are "
               "optimistic for a user who needs the scalars protected too."
               if summary["checkpoint_reads_scalars"] else
               "It reads no steps.csv scalar: every input it scores is a DP frame.")
    return "\n".join([
        "## DP telemetry on the factory's held-out split (paper Figure 7, on the corpus)", "",
        f"{summary['runs_scored']} of the {summary['runs_in_split']} labelled "
        f"{summary['split']}-split runs of `{Path(summary['root']).name}` "
        f"({summary['runs_anomalous']} anomalous) were trained again with DP capture, once per "
        f"z, and scored with `{summary['checkpoint']}` as it is: trained on plain frames, "
        f"not fine-tuned on DP frames. Runs left out of every row (BatchNorm models cannot be "
        "DP-captured; a re-run that does not reproduce the original's losses keeps no label): "
        f"{len(excluded)}. Clip C = {s['clip']:.3g} ({s.get('clip_source', '')}), "
        f"δ = {s['delta']:g}, grid {s['grid']}×{s['grid']}, noise seed {s['seed']}; q = B/N "
        "per run; ε is accounted per run by Opacus's RDP accountant over its capture steps. "
        + scalars, "", table, "", f"![privacy on the factory split](figures/{figure})"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Re-run the split under DP for every ``--z``, score, write ``OUT/summary.json``, print
    the table; returns the summary. ``tests/test_privacy_factory.py`` runs it on a tiny corpus::

        python -m experiments.privacy_factory --root CORPUS --checkpoint CKPT --z 0.5 1 2 \\
            --out OUT --limit 4
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the corpus (with labels.csv)")
    parser.add_argument("--checkpoint", required=True,
                        help="TEViD checkpoint path (as Diagnostician.from_pretrained takes)")
    parser.add_argument("--z", type=float, nargs="+", required=True, help="noise multipliers")
    parser.add_argument("--out", type=Path, required=True, help="DP run stores and summary.json")
    parser.add_argument("--clip", type=float, default=None,
                        help="C; default: calibrated on a healthy train-split pilot run")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--grid", type=int, default=8, help="the mechanism's map resolution")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N runs of the split")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise and the bootstrap")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--results", type=Path, default=None,
                        help="also write the table and figure into this results file "
                             "(e.g. docs/results.md; the figure goes to figures/ beside it)")
    args = parser.parse_args(argv)
    args.root, args.out = args.root.expanduser(), args.out.expanduser()
    if any(not (z >= 0 and math.isfinite(z)) for z in args.z):
        parser.error(f"--z must be finite and >= 0, got {args.z}")
    zs = sorted(set(args.z))
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    _one_thread()   # runs in this process train as the factory's did; workers parallelise
    start = time.perf_counter()

    store, labels = RunStore(args.root), load_labels(args.root)
    originals = dict(labelled_runs(store, labels, args.split))
    ids = sorted(originals)[: args.limit] if args.limit else sorted(originals)
    if not ids:
        raise SystemExit(f"no labelled {args.split} run with frames under {args.root}")
    settings = _settings(args, store, labels)
    mech = DPSettings(0.0, settings["clip"], args.delta, args.grid, args.seed)
    train_s = _rerun_all([spec_from_meta(originals[r].meta) for r in ids], zs, args.out, mech,
                         args.workers)

    # Score the runs every setting reproduced: each row then reads the very same runs.
    dp_runs: dict[float, dict[str, Run]] = {}
    excluded: dict[str, dict[str, str]] = {}
    for z in zs:
        dp_store = RunStore(setting_dir(args.out, z))
        failed = _failed(dp_store)
        dp_runs[z], why = {}, {}
        for rid in ids:
            if rid in failed or rid not in dp_store:
                why[rid] = failed.get(rid, "not run")
                continue
            run = dp_store.load(rid)
            p = run.meta["privacy"]
            if (p["noise_multiplier"], p["clip"], p["delta"]) != (z, settings["clip"], args.delta):
                raise SystemExit(f"{run.path} was captured with {p}; use another --out")
            if reproduced(originals[rid], run):
                dp_runs[z][rid] = run
            else:
                why[rid] = "training differs from the original run (labels do not carry over)"
        excluded[f"{z:g}"] = why
    common = [r for r in ids if all(r in dp_runs[z] for z in zs)]
    if not common:
        raise SystemExit(f"no run was reproduced under every setting; see {args.out}/*/failed.csv")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # an untrained profile name warns
        diag = Diagnostician.from_pretrained(args.checkpoint, device="cpu")
    plain = score_runs(diag, [originals[r] for r in common], labels)
    rows = [_row("plain", None, plain, [math.inf] * len(common), [], args.resamples, args.seed)]
    for z in zs:
        runs = [dp_runs[z][r] for r in common]
        rows.append(_row(f"DP z={z:g}", z, score_runs(diag, runs, labels), _epsilons(runs),
                         [int(r.meta["privacy"]["compositions"]) for r in runs],
                         args.resamples, args.seed, plain=plain))
    table = _table(rows, args.delta)
    anomalous = sum(labels[r].label != HEALTHY for r in common)
    summary = {
        "root": str(args.root), "checkpoint": str(args.checkpoint), "split": args.split,
        "settings": settings, "z": zs, "runs_in_split": len(originals), "runs_asked": len(ids),
        "runs_scored": len(common), "runs_anomalous": anomalous,
        # A checkpoint that reads steps.csv scalars sees un-noised loss / lr / grad-norm curves:
        # those are outside the DP guarantee (docs/privacy.md), so its utility is optimistic.
        "checkpoint_reads_scalars": bool(getattr(diag.model, "telemetry", 0)),
        "memory": int(diag.calibration.memory), "excluded": excluded, "rows": rows,
        "epsilon_per_run": {f"{z:g}": dict(zip(common, _epsilons(dp_runs[z][r] for r in common)))
                            for z in zs},
        "train_seconds_this_call": round(train_s, 1),
        "seconds_this_call": round(time.perf_counter() - start, 1)}
    written = _json(summary)   # JSON-safe: ε = ∞ as null, no private interval objects
    (args.out / "summary.json").write_text(json.dumps(written, indent=1))
    print(f"{len(common)} of {len(ids)} {args.split} runs ({anomalous} anomalous) scored with "
          f"{args.checkpoint}; clip {settings['clip']:.3g} ({settings.get('clip_source')}), "
          f"grid {args.grid}, δ {args.delta:g}; excluded per setting: "
          + ", ".join(f"z={k} {len(v)}" for k, v in excluded.items()))
    print(table, flush=True)
    if args.results is not None:
        from experiments.report import write_section

        figure = plot(written, args.results.parent / "figures" / "privacy_factory.png")
        # shlex: a path with a space still gives a command that reruns as written.
        argv_text = shlex.join(["python", "-m", "experiments.privacy_factory",
                                *(sys.argv[1:] if argv is None else argv)])
        write_section("privacy-factory", _section(summary, table, figure.name), argv_text,
                      path=args.results, seed=args.seed)
    return summary


if __name__ == "__main__":
    main()
