"""The tevid-hpo command line and the capture demo path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from data_factory.frames import Frame
from data_factory.store import RunStore
from experiments.bench_overhead import capture_watcher, inference_latency, measure, monitor_watcher
from tevid_hpo.capture_demo import run_capture_demo
from tevid_hpo.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "tevid_hpo.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "show" in out.stdout and "capture-demo" in out.stdout


def test_show_renders_png_and_gif(tmp_path, capsys):
    store = RunStore(tmp_path)
    with store.create("r", {}) as w:
        for i in range(5):
            w.add_frame(Frame(torch.randn(6, 8, 8).to(torch.bfloat16), step=10 * i, layers=("a", "b", "c")))
    assert main(["show", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "video.png").stat().st_size > 1000
    assert "saturation (share of pixels at the clip, frames after the first)" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "r"), "--gif", "--out", str(tmp_path / "v.gif")]) == 0
    assert (tmp_path / "v.gif").read_bytes()[:3] == b"GIF"


def test_show_prints_saturation_per_channel(tmp_path, capsys):
    store = RunStore(tmp_path)
    with store.create("r", {}) as w:
        for i in range(3):
            t = torch.zeros(6, 4, 4)
            t[3] = 8.0 if i else 0.0       # grad0 saturated on every frame after the first
            w.add_frame(Frame(t.to(torch.bfloat16), step=i, layers=("a", "b", "c")))
    assert main(["show", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "grad0  max 1.000  frames >1%: 2/2" in out and "act0   max 0.000  frames >1%: 0/2" in out


def test_show_reports_missing_run(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_capture_demo_end_to_end(tmp_path):
    pngs = run_capture_demo(tmp_path, epochs=1, quiet=True)
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
    runs = RunStore(tmp_path / "runs")
    assert len(runs) == 2
    healthy, diverging = (runs.load(r) for r in sorted(runs.list(), key=lambda r: "diverging" in r))
    # The diverging run's activations leave the healthy run's range within one epoch.
    assert diverging.frames.tensor[1:, :3].float().abs().max() > healthy.frames.tensor[1:, :3].float().abs().max()


@pytest.mark.parametrize("watcher", ["capture", "capture+stats", "monitor"])
def test_overhead_benchmark_runs(watcher):
    build = {"capture": capture_watcher(2, 8, False), "capture+stats": capture_watcher(2, 8, True),
             "monitor": monitor_watcher(2, profile="tiny")}[watcher]
    res = measure(build, rounds=2, every=2)
    assert res["median_ratio"] > 0 and res["ms_per_step_plain"] > 0


def test_inference_latency_benchmark_runs():
    res = inference_latency(profile="tiny", updates=5, warmup=2)
    assert res["median_ms"] > 0 and res["peak_rss_mb"] > 0
