"""The TrainCheck driver's script and parsing (the collector itself runs in
``python -m experiments.external.traincheck``, minutes per family: not in the test suite)."""

from __future__ import annotations

import ast
import re

import pytest

from experiments.external import traincheck
from experiments.external.traincheck import SCRIPT, TARGETS, _failed, _losses, collect_command


def test_script_is_what_the_sampler_tracker_can_parse():
    src = SCRIPT.format(family="mlp", data="digits", scenario=repr(TARGETS["lr_jump"]), seed=1)
    tree = ast.parse(src)   # valid Python for every target
    # TrainCheck's sampler looks for ``optimizer = torch.optim.X(model.parameters(), ...)``; a
    # tuple assignment (``opt, sched = build_optimizer(...)``) made it fail.
    assigns = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for t in node.targets if isinstance(t, ast.Name)}
    assert {"model", "optimizer"} <= assigns
    assert re.search(r"^optimizer = torch\.optim\.\w+\(model\.parameters\(\)", src, re.MULTILINE)
    cmd = collect_command("/tmp/s.py", "/tmp/out")
    assert cmd[cmd.index("--model-tracker-style") + 1] == "sampler"
    assert cmd[cmd.index("-t") + 1:cmd.index("-t") + 3] == ["torch.nn", "torch.optim"]


def test_losses_and_verdict_are_parsed_from_the_logs(tmp_path):
    log = tmp_path / "collect.log"
    log.write_text("\x1b[94mTRAIN_LOSS 0 2.25\x1b[0m\nnoise\nTRAIN_LOSS 1 nan\nTRAIN_LOSS 2 1e-3\n")
    assert _losses(log)[0] == 2.25 and _losses(log)[2] == 0.001
    assert _losses(log)[1] != _losses(log)[1]          # NaN kept, not dropped
    check = tmp_path / "check.log"
    check.write_text("Checking finished.\nTotal failed invariants: 3/7\nTotal passed: 4/7\n")
    assert _failed(check) == (3, 7)
    check.write_text("Traceback ...\n")
    with pytest.raises(RuntimeError, match="no verdict"):
        _failed(check)


def test_each_fault_is_a_scenario_the_injector_knows():
    from experiments.external.models import FAMILIES
    from experiments.external.scenarios import Scenario

    for spec in TARGETS.values():
        Scenario(**spec)
    assert {f for f, _ in traincheck.FAMILIES} <= set(FAMILIES)
