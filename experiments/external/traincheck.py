"""TrainCheck (OSDI 2025; ``traincheck`` 0.2) on external runs: invariants inferred from one
healthy run of a training script, checked on that script's other runs.

    python -m experiments.external.traincheck [--family mlp] [--write-results]

For a family, one plain training script (``SCRIPT``: the user loop of :mod:`.record` without the
monitor, 3 epochs) is run under ``traincheck-collect`` once healthy (the reference), then
``traincheck-infer`` infers invariants, and the same script is collected again under another
healthy seed and under each fault (learning-rate jump ×20, 60 % label noise, the largest layer
frozen, a stalled loader; all from epoch 1) and checked with ``traincheck-check``. A run is
flagged when any invariant is violated.

On this CPU-only machine the collector must be limited to ``torch.nn`` and ``torch.optim``
(``-t``): instrumenting all of ``torch`` walks ``torch.backends.cuda`` and initialises CUDA, which
raises ``RuntimeError: Found no NVIDIA driver`` with this CUDA build of torch. The model is
tracked with ``--model-tracker-style sampler``: the default proxy tracker changed the training
itself here (the healthy MLP's loss after 3 epochs 2.19 under it, 0.02 without it, the lr ×20 run
then trained like a healthy one), so its verdicts would be about another run than the user's.
The sampler needs an ``optimizer = torch.optim.X(model.parameters(), ...)`` line it can parse
(``SCRIPT``); under it the script's losses are the uninstrumented ones to the last digit.
Measured 2026-12-06 (``--write-results``, 632 s for the 5 families of :data:`FAMILIES`): one
invariant inferred per family ("Parameter.data_ID stays consistent across training steps"), no
run flagged, a loss of NaN (mixer, lr ×20) included: its invariants are about API and
parameter-identity relations (a silent bug in the training code), not about the dynamics the
faults here change.

Example:
    >>> "traincheck-collect" in " ".join(collect_command("/tmp/s.py", "/tmp/out"))
    True
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "SCRIPT", "collect_command", "run_family"]

_BIN = Path(sys.executable).parent
WORK = Path(os.environ.get("TEVID_CACHE", Path.home() / ".cache" / "tevid-hpo")) / "external" / \
    "traincheck"

#: The training script TrainCheck instruments (formatted with the family, data and scenario).
#: Written as TrainCheck's sampler expects a user script: a variable ``model`` and an
#: ``optimizer = torch.optim.X(model.parameters(), ...)`` it can find in the source (it fails on
#: ``opt, sched = build_optimizer(...)``), constant learning rate apart from the injected jump.
SCRIPT = '''
import torch, torch.nn.functional as F
from experiments.external.data import load_data
from experiments.external.models import build_model
from experiments.external.scenarios import Injector, Scenario
torch.set_num_threads(1); torch.manual_seed({seed})
d = load_data("{data}")
model = build_model("{family}", d, 0, {seed})
LR, BATCH, EPOCHS = 0.05, 64, 3
optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
inj = Injector(Scenario(**{scenario}), len(d.y_train), BATCH, {seed})
for epoch in range(EPOCHS):
    inj.epoch_start(epoch, model)
    y_all = inj.labels(epoch, d.y_train, d.n_classes)
    order = torch.randperm(len(d.y_train))
    for g in optimizer.param_groups:
        g["lr"] = LR * inj.lr_scale(epoch)
    total, n = 0.0, 0
    for b in range(-(-len(d.y_train) // BATCH)):
        idx = inj.batch(epoch, b, order)
        loss = F.cross_entropy(model(d.x_train[idx]), y_all[idx])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        total, n = total + loss.item(), n + 1
    print("TRAIN_LOSS", epoch, total / n)
'''

#: (family, data) pairs run by default: one per dev-half family whose model trains at the
#: script's SGD settings.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("mlp", "digits"), ("resnet18", "digits_img"), ("mixer", "gratings"), ("lstm", "markov"),
    ("conv1d", "sines"))

#: The runs checked against the reference's invariants.
TARGETS: dict[str, dict[str, Any]] = {
    "healthy_seed1": {"kind": "healthy"},
    "lr_jump": {"kind": "lr_jump", "fault_epoch": 1, "factor": 20.0},
    "label_noise": {"kind": "label_noise", "fault_epoch": 1, "fraction": 0.6},
    "freeze": {"kind": "freeze", "fault_epoch": 1},
    "stall": {"kind": "stall", "fault_epoch": 1},
}


def collect_command(script: str | Path, out: str | Path) -> list[str]:
    """The ``traincheck-collect`` call for ``script`` (CPU-safe module list)."""
    return [str(_BIN / "traincheck-collect"), "-p", str(script), "--models-to-track", "model",
            "--model-tracker-style", "sampler", "-t", "torch.nn", "torch.optim",
            "--output-dir", str(out)]


def _run(cmd: list[str], log: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                              cwd=log.parent, check=False).returncode


def _losses(log: Path) -> list[float]:
    """The per-epoch mean training losses the script printed (``TRAIN_LOSS epoch value``)."""
    return [round(float(m.group(1)), 4) for m in
            re.finditer(r"TRAIN_LOSS \d+ ([-+0-9.eEnaif]+)", log.read_text(errors="replace"))]


def _collect(work: Path, name: str, family: str, data: str, scenario: dict[str, Any],
             seed: int) -> tuple[Path, list[float]]:
    """Run the script under ``traincheck-collect`` once (cached by a ``done`` marker)."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    script = d / "train.py"
    script.write_text(SCRIPT.format(family=family, data=data, scenario=repr(scenario), seed=seed))
    out, log = d / "trace", d / "collect.log"
    if not (d / "done").exists():
        shutil.rmtree(out, ignore_errors=True)
        if _run(collect_command(script, out), log) or not any(out.glob("trace_*")):
            raise RuntimeError(f"traincheck-collect failed for {name} (see {log})")
        (d / "done").touch()
    return out, _losses(log)


def _failed(check_log: Path) -> tuple[int, int]:
    """``(violated, checked)`` from ``traincheck-check``'s "Total failed invariants: X/Y"."""
    m = re.search(r"Total failed invariants: (\d+)/(\d+)", check_log.read_text(errors="replace"))
    if m is None:
        raise RuntimeError(f"traincheck-check printed no verdict (see {check_log})")
    return int(m.group(1)), int(m.group(2))


def run_family(family: str = "mlp", data: str = "digits", workers: int = 2) -> dict[str, Any]:
    """Reference → invariants → check every target.

    Returns ``{"targets": {name: {"violations", "flagged", "losses"}}, ...}`` with the
    reference's per-epoch training losses (the instrumented script must still train).
    """
    work = WORK / f"{family}-{data}"
    t0 = time.time()
    ref, ref_losses = _collect(work, "reference", family, data, {"kind": "healthy"}, 0)
    inv = work / "invariants.json"
    if not inv.exists() and _run([str(_BIN / "traincheck-infer"), "-f", str(ref), "-o", str(inv)],
                                 work / "infer.log"):
        raise RuntimeError(f"traincheck-infer failed (see {work / 'infer.log'})")
    n_inv = sum(1 for line in inv.read_text().splitlines() if line.strip())
    with ThreadPoolExecutor(workers) as pool:
        traces = dict(zip(TARGETS, pool.map(
            lambda kv: _collect(work, kv[0], family, data, kv[1], 1), TARGETS.items())))
    out: dict[str, Any] = {"family": family, "data": data, "invariants": n_inv,
                           "reference_losses": ref_losses, "targets": {}}
    for name, (trace, losses) in traces.items():
        res = work / name / "check"
        _run([str(_BIN / "traincheck-check"), "-f", str(trace), "-i", str(inv), "-o", str(res),
              "--no-html-report"], work / name / "check.log")
        failed, _ = _failed(work / name / "check.log")
        out["targets"][name] = {"violations": failed, "flagged": failed > 0, "losses": losses}
    out["seconds"] = round(time.time() - t0, 1)
    (work / "result.json").write_text(json.dumps(out, indent=1))
    return out


def _table(results: list[dict[str, Any]]) -> str:
    head = ("| family / data | invariants | reference loss (epochs 0→2) | "
            + " | ".join(TARGETS) + " |\n|---|---|---|" + "---|" * len(TARGETS))
    rows = []
    for r in results:
        cells = [f"{t['violations']} {'**flagged**' if t['flagged'] else 'not flagged'} "
                 f"(loss {t['losses'][-1]:.2f})" if t["losses"] else "-"
                 for t in r["targets"].values()]
        ref = " → ".join(f"{x:.2f}" for x in r["reference_losses"])
        rows.append(f"| {r['family']} / {r['data']} | {r['invariants']} | {ref} | "
                    + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command line: run the families (default :data:`FAMILIES`), optionally write results."""
    ap = argparse.ArgumentParser(prog="python -m experiments.external.traincheck")
    ap.add_argument("--family", action="append", metavar="FAMILY:DATA",
                    help="e.g. mlp:digits (repeatable; default: every pair of FAMILIES)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    pairs = [tuple(f.split(":", 1)) for f in args.family] if args.family else list(FAMILIES)
    t0 = time.time()
    results = []
    for family, data in pairs:
        try:
            results.append(run_family(family, data))
        except RuntimeError as err:   # say where TrainCheck does not run, go on with the rest
            print(f"{family} / {data}: {err}", file=sys.stderr)
            results.append({"family": family, "data": data, "error": str(err)})
        print(json.dumps(results[-1]))
    if args.write_results:
        from experiments.report import write_section

        ok = [r for r in results if "error" not in r]
        failed = "".join(f"\n- {r['family']} / {r['data']}: {r['error']}"
                         for r in results if "error" in r)
        write_section(
            "external-traincheck",
            "## TrainCheck on external runs\n\n"
            "TrainCheck 0.2 (`traincheck-collect --models-to-track model --model-tracker-style "
            "sampler -t torch.nn torch.optim`): invariants inferred from one healthy 3-epoch run "
            "of a plain SGD script per family, checked on a healthy run of another seed and on "
            "four faults from epoch 1 (lr ×20, 60 % label noise, largest layer frozen, stalled "
            "loader). Each cell: invariants violated, and the run's last-epoch training loss.\n\n"
            + _table(ok) + (f"\n\nWhere it did not run:{failed}" if failed else ""),
            command="python -m experiments.external.traincheck --write-results",
            seconds=round(time.time() - t0, 1))
    return results


if __name__ == "__main__":
    main()
