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
raises ``RuntimeError: Found no NVIDIA driver`` with this CUDA build of torch. Measured here
(2026-12-04, machine load ~25 on 2 cores): collecting one 2-epoch MLP run on digits took about
7 minutes and the inference of its invariants had not finished after 5 more, so TrainCheck is
not in the external tables yet; this driver is what ``run_family`` would run, unvalidated end
to end (``traincheck-check``'s output parsing in particular).

Example:
    >>> "traincheck-collect" in " ".join(collect_command("/tmp/s.py", "/tmp/out"))
    True
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["SCRIPT", "collect_command", "run_family"]

_BIN = Path(sys.executable).parent
WORK = Path(os.environ.get("TEVID_CACHE", Path.home() / ".cache" / "tevid-hpo")) / "external" / \
    "traincheck"

#: The training script TrainCheck instruments (formatted with the family, data and scenario).
SCRIPT = '''
import math, torch, torch.nn.functional as F
from experiments.external.data import load_data
from experiments.external.models import build_model
from experiments.external.recipes import Recipe, build_optimizer
from experiments.external.scenarios import Injector, Scenario
torch.set_num_threads(1); torch.manual_seed({seed})
d = load_data("{data}")
model = build_model("{family}", d, 0, {seed})
r = Recipe("sgd", 0.05, momentum=0.9, weight_decay=5e-4, batch_size=64, epochs=3)
spe = math.ceil(len(d.y_train) / r.batch_size)
opt, sched = build_optimizer(r, model.parameters(), spe)
inj = Injector(Scenario(**{scenario}), len(d.y_train), r.batch_size, {seed})
for epoch in range(r.epochs):
    inj.epoch_start(epoch, model)
    y_all = inj.labels(epoch, d.y_train, d.n_classes)
    order = torch.randperm(len(d.y_train))
    for g, lr in zip(opt.param_groups, sched.get_last_lr()):
        g["lr"] = lr * inj.lr_scale(epoch)
    for b in range(spe):
        idx = inj.batch(epoch, b, order)
        loss = F.cross_entropy(model(d.x_train[idx]), y_all[idx])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        for g, lr in zip(opt.param_groups, sched.get_last_lr()):
            g["lr"] = lr * inj.lr_scale(epoch)
    print(epoch, float(loss))
'''

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
            "-t", "torch.nn", "torch.optim", "--output-dir", str(out)]


def _run(cmd: list[str], log: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                              cwd=log.parent, check=False).returncode


def _collect(work: Path, name: str, family: str, data: str, scenario: dict[str, Any],
             seed: int) -> Path:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    script = d / "train.py"
    script.write_text(SCRIPT.format(family=family, data=data, scenario=repr(scenario), seed=seed))
    out = d / "trace"
    if not (out / "proxy_log.json").exists():
        rc = _run(collect_command(script, out), d / "collect.log")
        if rc:
            raise RuntimeError(f"traincheck-collect failed for {name} (see {d / 'collect.log'})")
    return out


def run_family(family: str = "mlp", data: str = "digits", workers: int = 3) -> dict[str, Any]:
    """Reference → invariants → check every target; returns ``{target: violated}`` and timings."""
    work = WORK / f"{family}-{data}"
    t0 = time.time()
    ref = _collect(work, "reference", family, data, {"kind": "healthy"}, 0)
    inv = work / "invariants.json"
    if not inv.exists() and _run([str(_BIN / "traincheck-infer"), "-f", str(ref), "-o", str(inv)],
                                 work / "infer.log"):
        raise RuntimeError(f"traincheck-infer failed (see {work / 'infer.log'})")
    n_inv = sum(1 for line in inv.read_text().splitlines() if line.strip())
    with ThreadPoolExecutor(workers) as pool:
        traces = dict(zip(TARGETS, pool.map(
            lambda kv: _collect(work, kv[0], family, data, kv[1], 1), TARGETS.items())))
    out: dict[str, Any] = {"family": family, "data": data, "invariants": n_inv, "targets": {}}
    for name, trace in traces.items():
        res = work / name / "check"
        _run([str(_BIN / "traincheck-check"), "-f", str(trace), "-i", str(inv), "-o", str(res),
              "--no-html-report"], work / name / "check.log")
        failed = 0
        for f in res.rglob("*failed*.log"):
            failed += sum(1 for line in f.read_text().splitlines() if line.strip())
        out["targets"][name] = {"violations": failed, "flagged": failed > 0}
    out["seconds"] = round(time.time() - t0, 1)
    (work / "result.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run one family and optionally write its results section."""
    ap = argparse.ArgumentParser(prog="python -m experiments.external.traincheck")
    ap.add_argument("--family", default="mlp")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    out = run_family(args.family, args.data)
    print(json.dumps(out, indent=1))
    if args.write_results:
        from experiments.report import write_section

        rows = "\n".join(f"| {k} | {v['violations']} | {'yes' if v['flagged'] else 'no'} |"
                         for k, v in out["targets"].items())
        write_section(
            "external-traincheck",
            f"## TrainCheck on external runs ({args.family} on {args.data})\n\n"
            f"Invariants inferred from one healthy 3-epoch run: {out['invariants']} lines in "
            f"the invariants file; collection limited to `torch.nn`, `torch.optim`.\n\n"
            "| run checked | violations | flagged |\n|---|---|---|\n" + rows,
            command=f"python -m experiments.external.traincheck --family {args.family} "
                    f"--data {args.data} --write-results", seconds=out["seconds"])
    return out


if __name__ == "__main__":
    main()
