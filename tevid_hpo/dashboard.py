"""optuna-dashboard: each trial's diagnosis as a note and a figure of the diagnosis over time.

optuna-dashboard lists every trial's user attributes, so the compact diagnosis
:class:`~tevid_hpo.monitor.TrialMonitor` writes (``"tevid"``, JSON) and the pruning reason
(``"tevid_prune_reason"``) show there with nothing else to do — but the dashboard cuts a JSON
attribute to its first 1024 characters, which for ``"tevid"`` keeps the alerts and the latest
diagnosis and drops most of the history. :func:`publish_diagnosis` adds, for one trial:

* a one-line **summary** attribute ``"tevid_summary"`` (first alert, pruning reason, latest
  diagnosis), shown whole in the trials table;

* a **note** (``optuna_dashboard.save_note``, Markdown, shown on the trial's page): the verdict —
  first confirmed alert, why the trial was pruned — and a table of the diagnoses (step, epoch,
  label, the probability of each class, vacuity);
* with an ``artifact_store`` (``optuna.artifacts.FileSystemArtifactStore``, or any Optuna
  artifact store the dashboard is started with), a **figure** ``tevid-trial-<n>.png``: each
  class's probability and the vacuity over the optimisation steps, a marker at every confirmed
  alert, uploaded as an artifact of the trial (the dashboard shows it on the trial's page).

Call it at the end of the objective — in a ``finally:`` so pruned trials get it too — while the
trial is still running: Optuna refuses artifacts on finished trials. Pass the monitor (or a
Lightning / Hugging Face callback, or any object with ``history``) to plot every diagnosis of the
run; without one the figure shows what the trial attribute keeps (the last ``history_size``
diagnoses). Start the dashboard with the same store to see the figure::

    optuna-dashboard sqlite:///study.db --artifact-dir ./artifacts

Example:
    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> trial.set_user_attr("tevid", {"version": 1, "alert": None, "alerts": {}, "history": [
    ...     {"step": 0, "epoch": 0, "label": "Healthy", "vacuity": 0.3, "alert": None,
    ...      "finite": True, "probs": {"Healthy": 0.9, "Instability": 0.1}}]})
    >>> publish_diagnosis(trial) is None          # no artifact store: the note only
    True
    >>> from optuna_dashboard import get_note
    >>> print(get_note(trial).splitlines()[0])
    ## TEViD diagnosis: no alert
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from data_factory.labels import KNOWN_LABELS
from tevid_hpo.decision import describe
from tevid_hpo.monitor import ERROR_ATTR, USER_ATTR
from tevid_hpo.pruners import REASON_ATTR

__all__ = ["SUMMARY_ATTR", "diagnosis_figure", "diagnosis_note", "publish_diagnosis", "summary"]

logger = logging.getLogger(__name__)

#: Trial user attribute with :func:`summary`: one line, fully shown in the dashboard's trials
#: table (it cuts JSON attributes such as ``"tevid"`` to their first 1024 characters).
SUMMARY_ATTR = "tevid_summary"
SUMMARY_LENGTH = 1000

#: Rows of the note's table; a longer history keeps its first and last rows.
MAX_ROWS = 40


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def summary(payload: Mapping[str, Any] | None, reason: Mapping[str, Any] | None = None,
            error: str | None = None) -> str:
    """One line for the trials table: the first alert, the pruning, the latest diagnosis.

    Example:
        >>> summary({"alert": None, "n_diagnoses": 12, "latest": {"step": 110,
        ...          "label": "Healthy", "probs": {"Healthy": 0.93}, "vacuity": 0.12}})
        'no alert; latest: Healthy (p=0.93) at step 110; 12 diagnoses'
    """
    payload = payload or {}
    parts = []
    alert = payload.get("alert")
    if alert is not None:
        a = (payload.get("alerts") or {}).get(alert, {})
        conf = a.get("confidence")
        parts.append(f"{alert} confirmed at step {a.get('step')}"
                     + (f" (p={conf:.4g})" if conf is not None else ""))
    else:
        parts.append("no alert")
    if reason is not None:
        parts.append(f"pruned by {describe(reason)}")
    latest = payload.get("latest")
    if latest:
        p = (latest.get("probs") or {}).get(latest.get("label"))
        parts.append(f"latest: {latest.get('label')}"
                     + (f" (p={p:.4g})" if p is not None else "") + f" at step {latest.get('step')}")
    if payload.get("n_diagnoses") is not None:
        parts.append(f"{payload['n_diagnoses']} diagnoses")
    if error is not None:
        parts.append(f"monitoring failed: {error}")
    return "; ".join(parts)[:SUMMARY_LENGTH]


def diagnosis_note(payload: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]] = (),
                   reason: Mapping[str, Any] | None = None, error: str | None = None) -> str:
    """The Markdown note of one trial.

    Args:
        payload: the trial's ``"tevid"`` attribute (or ``None`` when it has none).
        history: the diagnoses to tabulate (default: the payload's ``history``).
        reason: the trial's ``"tevid_prune_reason"``, if it was pruned.
        error: the trial's ``"tevid_error"``, if monitoring failed.

    Example:
        >>> note = diagnosis_note({"alert": "Instability", "alerts": {"Instability": {
        ...     "label": "Instability", "step": 30, "epoch": 0, "confidence": 0.93,
        ...     "reason": "diagnosis"}}, "history": []})
        >>> note.splitlines()[0]
        '## TEViD diagnosis: Instability'
        >>> "confirmed at step 30" in note
        True
    """
    payload = payload or {}
    history = list(history or payload.get("history") or [])
    alert = payload.get("alert")
    lines = [f"## TEViD diagnosis: {alert or 'no alert'}", ""]
    for label, a in (payload.get("alerts") or {}).items():
        conf = a.get("confidence")
        lines.append(f"* **{label}** confirmed at step {a.get('step')} (epoch {a.get('epoch')}, "
                     f"{a.get('reason', 'diagnosis')}"
                     + (f", confidence {conf:.4g})" if conf is not None else ")"))
    if reason is not None:
        lines.append(f"* pruned by {describe(reason)}")
    if error is not None:
        lines.append(f"* monitoring failed: `{error}`")
    if not history:
        lines += ["", "No diagnosis was recorded."]
        return "\n".join(lines) + "\n"
    classes = [c for c in KNOWN_LABELS if any(c in (h.get("probs") or {}) for h in history)]
    rows = history if len(history) <= MAX_ROWS else (
        history[:MAX_ROWS // 2] + [None] + history[-MAX_ROWS // 2:])
    lines += ["", f"{len(history)} diagnoses:", "",
              "| step | epoch | label | " + " | ".join(f"p({c})" for c in classes)
              + " | vacuity | alert |",
              "|---" * (len(classes) + 5) + "|"]
    for h in rows:
        if h is None:
            lines.append("| … |" + " |" * (len(classes) + 4))
            continue
        probs = h.get("probs") or {}
        lines.append("| " + " | ".join(_fmt(v) for v in (
            h.get("step"), h.get("epoch"), h.get("label"), *(probs.get(c) for c in classes),
            h.get("vacuity"), h.get("alert"))) + " |")
    return "\n".join(lines) + "\n"


def diagnosis_figure(history: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """PNG of each class's probability and the vacuity over the optimisation steps.

    Confirmed alerts are marked with a vertical line at their step. Uses matplotlib's object API
    (no ``pyplot`` state), so it is safe in worker threads and processes.

    Example:
        >>> png = diagnosis_figure([{"step": 0, "probs": {"Healthy": 0.9}, "vacuity": 0.2},
        ...                         {"step": 10, "probs": {"Healthy": 0.2}, "vacuity": 0.1,
        ...                          "alert": "Instability"}])
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    classes = [c for c in KNOWN_LABELS if any(c in (h.get("probs") or {}) for h in history)]
    for c in classes:
        ax.plot(steps, [(h.get("probs") or {}).get(c, math.nan) for h in history], label=c)
    ax.plot(steps, [h.get("vacuity") if h.get("vacuity") is not None else math.nan
                    for h in history], "k--", label="vacuity")
    seen: set[str] = set()
    for h in history:
        if h.get("alert") and h["alert"] not in seen:
            seen.add(h["alert"])
            ax.axvline(h["step"], color="red", lw=1)
            ax.annotate(f"{h['alert']} confirmed", (h["step"], 1.0), color="red", fontsize=8,
                        xytext=(3, -10), textcoords="offset points")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("probability")
    ax.set_title(title or "TEViD diagnosis")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def publish_diagnosis(trial: Any, source: Any | None = None, artifact_store: Any | None = None
                      ) -> str | None:
    """Write the trial's diagnosis note and, with ``artifact_store``, its figure artifact.

    Args:
        trial: the running ``optuna.Trial``.
        source: where the full history is (a :class:`~tevid_hpo.monitor.TrialMonitor`, a
            Lightning / Hugging Face callback: anything with a ``history`` list); ``None`` uses
            the trial attribute's (bounded) history.
        artifact_store: an Optuna artifact store (e.g.
            ``optuna.artifacts.FileSystemArtifactStore(dir)``); ``None`` writes the note only.

    Returns:
        The figure's artifact id, or ``None`` (no store, nothing diagnosed to plot, or the
        publishing failed).

    It never raises: it runs in the objective's ``finally:``, where an exception would replace
    the trial's own outcome (its value, or the pruning). A failure is logged at WARNING.
    """
    try:
        return _publish(trial, source, artifact_store)
    except Exception as err:
        logger.warning("could not publish the TEViD diagnosis of trial %s to optuna-dashboard: "
                       "%r", getattr(trial, "number", "?"), err, exc_info=err)
        return None


def _publish(trial: Any, source: Any | None, artifact_store: Any | None) -> str | None:
    from optuna_dashboard import save_note

    attrs = _current_attrs(trial)
    payload = attrs.get(USER_ATTR)
    history = list(getattr(source, "history", None) or (payload or {}).get("history") or [])
    trial.set_user_attr(SUMMARY_ATTR, summary(payload, attrs.get(REASON_ATTR),
                                              attrs.get(ERROR_ATTR)))
    save_note(trial, diagnosis_note(payload, history, attrs.get(REASON_ATTR),
                                    attrs.get(ERROR_ATTR)))
    if artifact_store is None or not history:
        return None
    from optuna.artifacts import upload_artifact

    png = diagnosis_figure(history, title=f"Trial {trial.number}: TEViD diagnosis")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"tevid-trial-{trial.number}.png")
        with open(path, "wb") as f:
            f.write(png)
        return upload_artifact(artifact_store=artifact_store, file_path=path,
                               study_or_trial=trial, mimetype="image/png")


def _current_attrs(trial: Any) -> dict[str, Any]:
    """The trial's user attributes as stored now. A live ``optuna.Trial`` caches them, and a
    pruner writes its reason straight to the storage (``trial.should_prune()`` just before the
    ``raise``), so the cache can miss it."""
    storage, trial_id = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
    if storage is not None and trial_id is not None:
        return dict(storage.get_trial_user_attrs(trial_id))
    return dict(trial.user_attrs)
