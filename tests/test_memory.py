"""Run memory (core_models.memory): hand-computed streams, the choice on validation, and the
streaming Diagnostician applying exactly what calibration chose."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from core_models.calibration import Calibration, calibrate
from core_models.memory import RunMemory, apply_memory, remember, select_memory
from core_models.metrics import RunPrediction, event_time_auprc
from data_factory.frames import Frame
from tevid_hpo.diagnostician import Diagnostician

HEALTHY_ROW = [0.9, 0.025, 0.025, 0.025, 0.025]
SICK_ROW = [0.2, 0.0, 0.8, 0.0, 0.0]


def _stream(pattern: str) -> np.ndarray:
    """``h`` a healthy-looking diagnosis, ``s`` an anomalous one."""
    return np.array([HEALTHY_ROW if c == "h" else SICK_ROW for c in pattern], dtype=float)


def _logits(pattern: str) -> np.ndarray:
    """Confident logits: ``h`` Healthy, ``s`` Instability (class 2)."""
    return np.array([[4.0, -4, -4, -4, -4] if c == "h" else [-4.0, -4, 4, -4, -4]
                     for c in pattern])


def _clips() -> tuple[np.ndarray, np.ndarray]:
    """Random clip logits and labels for ``calibrate``'s temperature fit (seeded)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 5)), rng.integers(0, 5, 50)


def test_window_zero_passes_every_diagnosis_through() -> None:
    p = _stream("hshh")
    u = np.array([0.1, 0.5, 0.2, 0.3])
    q, v = apply_memory(p, u, 0)
    np.testing.assert_array_equal(q, p)
    np.testing.assert_array_equal(v, u)


def test_mean_then_latch_by_hand() -> None:
    # Anomaly scores 0.1, 0.8, 0.1, 0.1, 0.8, 0.8. Window 2 means: 0.1, 0.45, 0.45, 0.1, 0.45,
    # 0.8; a latch on every mean (sustain 1) keeps the largest so far: 0.1, 0.45, 0.45, 0.45,
    # 0.45, 0.8.
    p = _stream("hshhss")
    u = np.array([0.1, 0.3, 0.5, 0.1, 0.2, 0.4])
    q, v = apply_memory(p, u, 2, sustain=1)
    np.testing.assert_allclose(1 - q[:, 0], [0.1, 0.45, 0.45, 0.45, 0.45, 0.8])
    # The vacuity is the one of the latched mean, not the current step's.
    np.testing.assert_allclose(v, [0.1, 0.2, 0.2, 0.2, 0.2, 0.3])
    np.testing.assert_allclose(q.sum(axis=1), 1.0)      # still a distribution
    # With the default sustain of 3 no level was held by 3 consecutive means above 0.1: the
    # output is the current mean, with its own vacuity.
    q, v = apply_memory(p, u, 2)
    np.testing.assert_allclose(1 - q[:, 0], [0.1, 0.45, 0.45, 0.1, 0.45, 0.8])
    np.testing.assert_allclose(v, [0.1, 0.2, 0.4, 0.3, 0.15, 0.3])


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_one_early_transient_never_becomes_a_permanent_verdict(window: int) -> None:
    # Issue 24, point 5: a single anomalous diagnosis (a warm-up spike, one odd batch) right
    # after the burn-in, then a healthy run. The remembered stream must come back to healthy
    # once the spike has left the mean, and no alert may be confirmed from it.
    from core_models.calibration import first_alert

    p = _stream("sh" + "h" * 20)
    q, v = apply_memory(p, np.full(len(p), 0.1), window)
    assert 1 - q[-1, 0] == pytest.approx(0.1)
    assert first_alert(q, v, {"Instability": 0.3}) is None
    # The guard is what makes the difference: a latch on single means keeps the spike forever.
    q1, _ = apply_memory(p, np.full(len(p), 0.1), window, sustain=1)
    assert 1 - q1[-1, 0] == pytest.approx(0.1 + 0.7 / window)


def test_a_held_anomaly_is_latched_and_withheld_diagnoses_are_never_remembered() -> None:
    p = _stream("hhssshhhh")
    q, _ = apply_memory(p, np.full(len(p), 0.1), 1)
    np.testing.assert_allclose(1 - q[:, 0], [0.1, 0.1] + [0.8] * 7)
    # A withheld diagnosis (vacuity exactly 1, the burn-in) passes through and leaves no trace.
    uniform = np.full((3, 5), 0.2)
    q, v = apply_memory(np.vstack([uniform, p]), np.r_[np.ones(3), np.full(len(p), 0.1)], 1)
    np.testing.assert_allclose(q[:3], uniform)
    np.testing.assert_allclose(v[:3], 1.0)
    np.testing.assert_allclose(1 - q[3:, 0], [0.1, 0.1] + [0.8] * 7)


def test_streaming_memory_resets_between_runs_and_rejects_bad_windows() -> None:
    mem = RunMemory(1, sustain=1)
    mem.update(SICK_ROW, 0.1)
    assert mem.update(HEALTHY_ROW, 0.1)[0][2] == pytest.approx(0.8)   # latched
    mem.reset()
    assert mem.update(HEALTHY_ROW, 0.1)[0][2] == pytest.approx(0.025)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="non-negative integer"):
            RunMemory(bad)
    with pytest.raises(ValueError, match="sustain"):
        RunMemory(1, sustain=0)


def test_remember_keeps_truth_and_lifts_a_transient_detection() -> None:
    # A task switch: the windowed model sees the transient at steps 2-4 (while it is in its
    # window), then training looks healthy again while the Forgetting label lasts to the end.
    sick = RunPrediction("f", "Forgetting", range(8), range(8), _stream("hhssshhh"),
                         np.full(8, 0.1), onset_step=2)
    calm = RunPrediction("h", "Healthy", range(8), range(8), _stream("hhhhhhhh"), np.full(8, 0.1))
    kept = remember(sick, 1)
    assert kept.event_labels.tolist() == sick.event_labels.tolist()
    assert kept.onset_step == 2 and kept.run_id == "f"
    # Without memory 3 of the 6 anomalous steps tie with the 10 healthy ones.
    assert event_time_auprc([sick, calm]) < 1.0
    assert event_time_auprc([kept, remember(calm, 1)]) == 1.0


def test_select_memory_prefers_the_smallest_best_window() -> None:
    transient = (_stream("hhshhh"), np.array([0, 0, 1, 1, 1, 1], bool))
    calm = (_stream("hhhhhh"), np.zeros(6, bool))
    best, scores = select_memory([transient, calm], grid=(0, 1, 2, 5), sustain=1)
    assert scores[0] < scores[1] == 1.0
    assert best == 1                                     # 1, 2 and 5 tie at 1.0; least memory wins
    # A lasting anomaly is already perfect without memory: none is chosen.
    lasting = (_stream("hhssss"), np.array([0, 0, 1, 1, 1, 1], bool))
    assert select_memory([lasting, calm], grid=(0, 1, 2), sustain=1)[0] == 0
    with pytest.raises(ValueError, match="both anomalous and healthy"):
        select_memory([calm], grid=(0, 1))
    with pytest.raises(ValueError, match="empty grid"):
        select_memory([transient, calm], grid=())


def test_calibrate_chooses_the_memory_and_sets_thresholds_on_remembered_streams() -> None:
    clip_logits, clip_labels = _clips()
    streams = [(_logits("hhhssshh"), np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)),
               (_logits("hhhhhhhh"), np.zeros(8, bool))]
    cal = calibrate(clip_logits, clip_labels, [(_logits("hhhhhhhh"), "Healthy")],
                    memory_runs=streams, memory_grid=(0, 1, 3))
    assert cal.memory == 1
    assert Calibration.from_dict(cal.to_dict()) == cal
    # Checkpoints written before the run memory existed load without one.
    old = {k: v for k, v in cal.to_dict().items() if k != "memory"}
    assert Calibration.from_dict(old).memory == 0
    assert calibrate(clip_logits, clip_labels, [(_logits("hhhh"), "Healthy")]).memory == 0


def test_diagnostician_reports_the_remembered_diagnosis() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # "untrained model" warning
        raw = Diagnostician.from_pretrained("tiny", device="cpu")
    kept = Diagnostician(raw.model, Calibration(memory=2), device="cpu")
    gen = torch.Generator().manual_seed(0)
    p = raw.profile
    frames = [Frame(torch.randn(p.in_chans, p.frame_size, p.frame_size, generator=gen) * (1 + t),
                    step=10 * t, epoch=0) for t in range(8)]
    raw_probs, raw_u = [], []
    for f in frames:
        d = raw.update(f)
        raw_probs.append([d.probs[c] for c in raw.known_labels])
        raw_u.append(d.vacuity)
    expected, expected_u = apply_memory(np.array(raw_probs), np.array(raw_u), 2)
    for f, want, want_u in zip(frames, expected, expected_u):
        d = kept.update(f)
        np.testing.assert_allclose([d.probs[c] for c in kept.known_labels], want, rtol=1e-6)
        assert d.vacuity == pytest.approx(want_u, rel=1e-6)
    # The burn-in is withheld in both streams alike ...
    w = raw.evidence_frames - 1
    np.testing.assert_allclose(expected[:w], 1 / len(raw.known_labels))
    assert np.all(expected_u[:w] == 1.0) and np.all(expected_u[w:] < 1.0)
    # ... and a new run starts from scratch.
    kept.reset()
    first = kept.update(frames[0])
    np.testing.assert_allclose([first.probs[c] for c in kept.known_labels], raw_probs[0],
                               rtol=1e-6)


def test_saved_memory_is_the_live_calibration_and_bad_inputs_are_refused(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = Diagnostician.from_pretrained("tiny", device="cpu")
    path = Diagnostician(first.model, Calibration(memory=5), device="cpu").save_pretrained(
        tmp_path / "five")
    loaded = Diagnostician.from_pretrained(path, device="cpu")
    assert loaded.calibration.memory == 5 and "memory" not in loaded.metadata
    # Recalibrating a loaded diagnostician: the new memory is what gets saved.
    again = Diagnostician(loaded.model, Calibration(memory=0), metadata=loaded.metadata,
                          device="cpu")
    assert again.config()["memory"] == 0
    with pytest.raises(ValueError, match="needs a 'Healthy' class"):
        Diagnostician(first.model, Calibration(memory=2), labels=list("abcde"), device="cpu")
    p = _stream("hhsh")
    with pytest.raises(ValueError, match="flags"):
        select_memory([(p, np.zeros(3, bool)), (p, np.ones(5, bool))], grid=(0, 1))
    with pytest.raises(ValueError, match="non-negative integer"):
        select_memory([(p, np.array([0, 0, 1, 1], bool))], grid=(0, 1.5))


def test_calibrate_chooses_the_burn_in_with_the_memory_on_validation() -> None:
    # Issue 24, point 1: the burn-in is decided by measurement. Healthy val runs whose first
    # windows look anomalous (a still, padded picture read as Instability) make a short burn-in
    # cost precision; runs whose anomaly starts late lose nothing by waiting.
    clip_logits, clip_labels = _clips()
    noisy_start = (_logits("sss" + "h" * 9), np.zeros(12, bool))
    late_fault = (_logits("h" * 6 + "s" * 6), np.r_[np.zeros(6, bool), np.ones(6, bool)])
    cal = calibrate(clip_logits, clip_labels, [(noisy_start[0], "Healthy")],
                    memory_runs=[noisy_start, late_fault], memory_grid=(0, 1),
                    burn_in_grid=(1, 2, 4, 6))
    assert cal.burn_in == 6          # 4 and 6 tie at AUPRC 1.0: the longer wait wins ties
    # An anomaly that starts at once is only found with a short burn-in.
    early_fault = (_logits("s" * 12), np.ones(12, bool))
    calm = (_logits("h" * 12), np.zeros(12, bool))
    cal = calibrate(clip_logits, clip_labels, [(calm[0], "Healthy")],
                    memory_runs=[early_fault, calm], memory_grid=(0,), burn_in_grid=(1, 4))
    assert cal.burn_in == 1
    # The thresholds are fitted on the healthy run withheld at the chosen burn-in: the noisy
    # start is never surfaced, so no threshold has to sit above it.
    cal = calibrate(clip_logits, clip_labels, [(noisy_start[0], "Healthy")],
                    memory_runs=[noisy_start, late_fault], memory_grid=(0,), burn_in_grid=(6,))
    assert cal.tau_c["Instability"] <= 0.5
