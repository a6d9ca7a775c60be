"""DP telemetry (data_factory.privacy): clipping bound, noise, accounting against Opacus, and that
nothing un-noised reaches a frame, the trial attribute or the run store."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import data_factory.capture as capture_mod
import data_factory.frames as frames_mod
from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from data_factory.frames import reduce_to_map
from data_factory.privacy import DPTelemetry, per_sample_maps, rdp_epsilon
from data_factory.store import RunStore


def _opacus_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    return float(acc.get_epsilon(delta))


def _train(model: nn.Module, cap: StateCapture, batches: list[tuple[torch.Tensor, torch.Tensor]],
           lr: float = 0.05) -> list:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    frames = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        frame = cap.step()
        if frame is not None:
            frames.append(frame)
        opt.step()
    return frames


def _batches(n: int, b: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 1, 16, 16, generator=g), torch.randint(0, 10, (b,), generator=g))
            for _ in range(n)]


# ---------------------------------------------------------------------------------- accounting
def test_paper_example_matches_opacus_and_not_the_papers_eight() -> None:
    eps = rdp_epsilon(1.12, 0.00128, 1560, 1e-5)
    assert eps == pytest.approx(_opacus_epsilon(1.12, 0.00128, 1560, 1e-5), rel=1e-12)
    # What Opacus's RDP accountant gives for Appendix J's q, steps, z and delta: ~0.55, not ~8.
    assert eps == pytest.approx(0.546, abs=0.005)
    dp = DPTelemetry(noise_multiplier=1.12, clip=1.0, delta=1e-5, sample_rate=0.00128)
    for step in range(1560):
        dp.release(torch.randn(4, 3), key="t")
        dp.end_step(released=True, step=step)
    assert dp.compositions == 1560
    assert dp.epsilon == pytest.approx(eps, rel=1e-12)
    assert dp.epsilon_at(779) == pytest.approx(_opacus_epsilon(1.12, 0.00128, 780, 1e-5), rel=1e-9)


def test_epsilon_grows_with_captures_and_equals_opacus() -> None:
    torch.manual_seed(0)
    model = small_cnn(in_channels=1)
    dp = DPTelemetry(noise_multiplier=1.0, clip=8.0, delta=1e-5, dataset_size=800, seed=1)
    eps = []
    with StateCapture(model, every=2, frame_size=8, privacy=dp) as cap:
        for batch in _batches(10):
            _train(model, cap, [batch])
            eps.append(dp.epsilon)
    assert dp.compositions == 5          # capture steps 0, 2, 4, 6, 8: one composition each
    captured = eps[::2]
    assert all(b > a for a, b in zip(captured, captured[1:]))
    assert eps[1::2] == captured          # non-capture steps cost nothing
    assert dp.epsilon == pytest.approx(_opacus_epsilon(1.0, 16 / 800, 5, 1e-5), rel=1e-12)
    assert dp.epsilon_at(4) == pytest.approx(_opacus_epsilon(1.0, 16 / 800, 3, 1e-5), rel=1e-9)
    assert dp.report().sample_rate == pytest.approx(0.02)


def test_unreleased_steps_cost_nothing_and_state_resumes() -> None:
    dp = DPTelemetry(noise_multiplier=1.0, clip=2.0, sample_rate=0.01, seed=0)
    dp.release(torch.randn(8, 5), key="a")
    dp.end_step(released=False, step=0)
    assert dp.compositions == 0 and dp.epsilon == 0.0
    for step in range(3):
        dp.release(torch.randn(8, 5), key="a")
        dp.release(torch.randn(8, 5), key="a")   # released twice in one step: two compositions
        dp.end_step(released=True, step=step)
    assert dp.compositions == 6
    again = DPTelemetry(noise_multiplier=1.0, clip=2.0, sample_rate=0.01)
    again.load_state_dict(dp.state_dict())
    assert again.epsilon == dp.epsilon and again.epsilon_at(1) == dp.epsilon_at(1)


# ---------------------------------------------------------------------------------- mechanism
@pytest.mark.parametrize(("shape", "batch_first"), [
    ((6, 7), True), ((6, 16), True), ((6, 197, 8), True), ((6, 10, 8), True),
    ((10, 6, 8), False), ((6, 3, 5, 4), True), ((6, 2, 3, 4, 5), True)])
def test_per_sample_maps_are_the_captures_reduction_row_by_row(shape, batch_first) -> None:
    x = torch.randn(*shape)
    x.view(-1)[:3] = 0.0   # exact zeros take the log floor, as in reduce_to_map
    rows = x.transpose(0, 1) if len(shape) == 3 and not batch_first else x
    expected = torch.stack([reduce_to_map(rows[i:i + 1]) for i in range(rows.shape[0])])
    assert torch.equal(per_sample_maps(x, batch_first), expected)


def _sum_of_contributions(dp: DPTelemetry, x: torch.Tensor, key: str) -> torch.Tensor:
    """The released sum before /B and +centre (z = 0: no noise)."""
    centre = dp._centre.get(key, 0.0)
    out, _ = dp.release(x, key=key)
    return (out - centre).flatten() * x.shape[0]


@pytest.mark.parametrize("primed", [False, True])
def test_one_sample_moves_a_released_sum_by_at_most_the_clip(primed: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 6, 6)
    outlier = 1e6 * torch.randn(1, 4, 6, 6)     # its own contribution is far beyond the clip
    with_it = torch.cat([x, outlier])
    a, b = (DPTelemetry(noise_multiplier=0.0, clip=3.0, sample_rate=0.1, grid=4) for _ in range(2))
    if primed:   # identical public centres from an earlier release
        a.release(x, key="t"), b.release(x, key="t")
    diff = _sum_of_contributions(b, with_it, "t") - _sum_of_contributions(a, x, "t")
    if not primed:   # a first release is one level, drawn once and shown on every pixel
        assert torch.all(diff == diff[0])
        diff = diff[:1]
    assert diff.norm() <= a.tensor_clip * (1 + 1e-4)
    assert diff.norm() >= 0.9 * a.tensor_clip     # and the outlier does hit the bound


def test_a_whole_capture_step_has_joint_sensitivity_clip() -> None:
    torch.manual_seed(3)
    model = small_cnn(in_channels=1)
    batches = _batches(2, b=12, seed=5)
    x2, y2 = batches[1]
    extra = (100 * torch.randn(1, 1, 16, 16), torch.tensor([3]))
    neighbour = [batches[0], (torch.cat([x2, extra[0]]), torch.cat([y2, extra[1]]))]
    sums = []
    for data in (batches, neighbour):
        dp = DPTelemetry(noise_multiplier=0.0, clip=5.0, sample_rate=0.1, grid=4)
        released: list[torch.Tensor] = []
        real = dp.release

        def spy(t, batch_first=True, key=None, gradient=False, _real=real, _out=released, _dp=dp):
            centre = _dp._centre.get(key, 0.0)
            out = _real(t, batch_first, key, gradient=gradient)
            shift = math.log(t.shape[0]) if gradient else 0.0   # loss_reduction="mean"
            _out.append((out[0] + shift - centre).flatten() * t.shape[0])
            return out

        dp.release = spy
        m = small_cnn(in_channels=1)
        m.load_state_dict(model.state_dict())
        with StateCapture(m, every=1, frame_size=8, layers=["0", "2", "5"], privacy=dp) as cap:
            _train(m, cap, data, lr=0.0)   # lr 0: the neighbour sees identical weights
        sums.append(torch.cat(released[6:]))   # the second capture step: centred releases
    assert (sums[1] - sums[0]).norm() <= 5.0 * (1 + 1e-4)


def test_noise_has_the_stated_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 8, 4, 4)
    z, clip = 1.5, 2.0
    noiseless = DPTelemetry(noise_multiplier=0.0, clip=clip, sample_rate=0.1)
    noisy = DPTelemetry(noise_multiplier=z, clip=clip, sample_rate=0.1, seed=7)
    # First releases of fresh keys: level maps, clean value plus N(0, (z·clip/B)²).
    clean = noiseless.release(x, key="k")[0][0, 0]
    draws = torch.stack([noisy.release(x, key=i)[0][0, 0] for i in range(600)]) - clean
    expected = z * clip / 32
    assert draws.std().item() == pytest.approx(expected, rel=0.1)
    assert abs(draws.mean().item()) < 4 * expected / math.sqrt(600)
    assert DPTelemetry(noise_multiplier=z, clip=clip, sample_rate=0.1, seed=1).release(x)[0] \
        .ne(DPTelemetry(noise_multiplier=z, clip=clip, sample_rate=0.1, seed=2).release(x)[0]).all()


# ---------------------------------------------------------------------------------- capture
def test_nothing_unnoised_reaches_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an un-noised reduction ran in DP mode")

    monkeypatch.setattr(capture_mod, "summarise", refuse)
    monkeypatch.setattr(frames_mod, "layer_stats", refuse)
    dp = DPTelemetry(noise_multiplier=1.0, clip=6.0, dataset_size=500, seed=0)
    released: list[torch.Tensor] = []
    real_release = dp.release

    def spy(*args, **kwargs):
        out = real_release(*args, **kwargs)
        released.append(out[0])
        return out

    monkeypatch.setattr(dp, "release", spy)
    encoded: list[torch.Tensor] = []
    real_encode = frames_mod.FrameEncoder.encode_maps

    def encode_spy(self, maps):
        encoded.extend(maps)
        return real_encode(self, maps)

    monkeypatch.setattr(frames_mod.FrameEncoder, "encode_maps", encode_spy)
    torch.manual_seed(0)
    model = small_cnn(in_channels=1)
    with StateCapture(model, every=2, frame_size=8, privacy=dp) as cap:
        frames = _train(model, cap, _batches(6))
    assert len(frames) == 3 and len(encoded) == 18
    ids = {id(t) for t in released}
    assert all(id(m) in ids for m in encoded)   # every map a frame is made of went through noise
    assert all(not f.stats for f in frames)


def test_same_data_different_noise_gives_different_frames() -> None:
    out = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = small_cnn(in_channels=1)
        dp = DPTelemetry(noise_multiplier=1.0, clip=6.0, dataset_size=500, seed=seed)
        with StateCapture(model, every=1, frame_size=8, privacy=dp) as cap:
            out.append(torch.stack([f.tensor.float() for f in _train(model, cap, _batches(3))]))
    assert torch.equal(out[0], out[1])
    # Beyond the flat first frame, every channel of every frame differs when only the noise does.
    assert (out[0][1:] != out[2][1:]).flatten(2).any(-1).all()


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="exactly one of sample_rate"):
        DPTelemetry(1.0, 1.0)
    with pytest.raises(ValueError, match="exactly one of sample_rate"):
        DPTelemetry(1.0, 1.0, sample_rate=0.1, dataset_size=10)
    with pytest.raises(ValueError, match="clip must be"):
        DPTelemetry(1.0, 0.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="delta must be"):
        DPTelemetry(1.0, 1.0, delta=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="no batch dimension"):
        DPTelemetry(1.0, 1.0, sample_rate=0.1).release(torch.randn(5))
    dp = DPTelemetry(1.0, 1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="cannot be combined with privacy"):
        StateCapture(small_cnn(in_channels=1), stats=True, privacy=dp)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(),
                       nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"BatchNorm mixes the samples of a batch: \['1'\]"):
        StateCapture(bn, privacy=dp)


# ---------------------------------------------------------------------------------- publishing
class _Trial:
    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key, value) -> None:
        self.user_attrs[key] = value


def test_monitor_publishes_epsilon_in_attribute_history_and_metrics() -> None:
    from tevid_hpo import DPTelemetry as Exported
    from tevid_hpo.diagnostician import Diagnostician
    from tevid_hpo.monitor import TrialMonitor

    assert Exported is DPTelemetry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diag = Diagnostician.from_pretrained("tiny", device="cpu")   # untrained: plumbing only
    torch.manual_seed(0)
    model = small_cnn(in_channels=1)
    dp = DPTelemetry(noise_multiplier=1.1, clip=6.0, delta=1e-5, dataset_size=640, seed=0)
    trial = _Trial()
    with TrialMonitor(model, trial, every=2, diagnostician=diag, privacy=dp,
                      asynchronous=False) as mon:
        _train(model, mon, _batches(8))
    attr = trial.user_attrs["tevid"]
    assert dp.compositions == 4
    assert attr["privacy"]["epsilon"] == pytest.approx(dp.epsilon)
    assert attr["privacy"]["compositions"] == 4 and attr["privacy"]["delta"] == 1e-5
    assert mon.metrics()["tevid_epsilon"] == pytest.approx(dp.epsilon)
    eps = [h["epsilon"] for h in mon.history]
    assert len(eps) == 4 and eps == sorted(eps) and eps[-1] == pytest.approx(dp.epsilon, abs=1e-4)
    assert eps[0] == pytest.approx(_opacus_epsilon(1.1, 16 / 640, 1, 1e-5), abs=1e-4)
    state = mon.state_dict()
    assert state["capture"]["privacy"]["compositions"] == 4


def test_run_store_keeps_the_privacy_report(tmp_path) -> None:
    torch.manual_seed(0)
    model = small_cnn(in_channels=1)
    dp = DPTelemetry(noise_multiplier=2.0, clip=6.0, dataset_size=320, seed=0)
    store = RunStore(tmp_path)
    with store.create("dp-run", {"arch": "small_cnn"}) as writer, \
            StateCapture(model, every=1, frame_size=8, privacy=dp) as cap:
        for frame in _train(model, cap, _batches(3)):
            writer.add_frame(frame)
        writer.update_meta(privacy=dp.report().to_dict())
    meta = store.load("dp-run").meta["privacy"]
    assert meta["epsilon"] == pytest.approx(_opacus_epsilon(2.0, 16 / 320, 3, 1e-5))
    assert meta["compositions"] == 3 and meta["noise_multiplier"] == 2.0


# ---------------------------------------------------------------------------------- experiment
def test_privacy_experiment_smoke() -> None:
    from experiments.privacy import main

    out = main(["--smoke"])
    rows = {r["setting"]: r for r in out["utility"]["rows"]}
    assert set(rows) == {"plain", "z=1"}
    assert math.isinf(rows["plain"]["epsilon"]) and 0 < rows["z=1"]["epsilon"] < math.inf
    assert all(0.0 <= r["auprc"] <= 1.0 for r in rows.values())
    mia = out["mia"]["rows"]
    assert len(mia) == 6 and all(0.0 <= r["auc"] <= 1.0 for r in mia)
    assert mia[-1]["epsilon_one_release"] == pytest.approx(rdp_epsilon(1.0, 1.0, 1, 1e-5))


def test_docs_example_runs_as_written(tmp_path, monkeypatch) -> None:
    import contextlib
    import io
    import re
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "privacy.md"
    code = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    assert len(code) == 2
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {"__name__": "docs_privacy"}
    with contextlib.redirect_stdout(out):
        for i, source in enumerate(code):
            exec(compile(source, f"{page}:block{i}", "exec"), namespace)  # noqa: S102
    eps4 = f"{rdp_epsilon(1.0, 32 / 1078, 4, 1e-5):.2f}"
    assert out.getvalue().split("\n")[:2] == [f"4 {eps4}", f"{eps4} {eps4}"]
