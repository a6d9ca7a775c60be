"""Shared fixtures: a small but really trained diagnostician, and the digits data it was made on.

No test may assume the shipped default checkpoint (``tevid_hpo/checkpoints/default.*``) exists:
tests that need a trained diagnostician use :func:`toy_checkpoint` / :func:`toy_diagnostician`,
trained once per session in ~15 s by :func:`tevid_hpo.testing.train_toy_diagnostician`
(digits runs captured with StateCapture at the ``tiny`` profile, Healthy vs Instability clips,
``core_models.train.finetune``, minimal calibration, ``save_pretrained`` →
``Diagnostician.from_pretrained``).

The integration tests (Optuna, Ray, SMAC, loggers) train ``small_cnn`` on those digits with the
same monitored step; :func:`train_step`, :func:`val_accuracy` and :func:`silent` are that shared
code (import them with ``from conftest import ...``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import torch
from torch import nn

from core_models.calibration import ALERT_LABELS, Calibration
from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from data_factory.datasets import TensorData, digits
from data_factory.frames import Frame
from data_factory.labels import HEALTHY, INSTABILITY
from tevid_hpo.cost import CostModel
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.testing import QUICK_CORPUS, train_toy_diagnostician


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread for the whole session. Float sums differ with the thread count, and
    # several tests set one thread for themselves without restoring it, so the toy diagnostician
    # (trained once, by whichever test asks first) came out different with test order and core
    # count: on 2 threads it once collapsed to a constant "Healthy". One thread everywhere makes
    # every run of the suite compute the same numbers, and the tiny models gain nothing from more.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding ``model.safetensors`` + ``model.json`` of the toy diagnostician."""
    return train_toy_diagnostician(tmp_path_factory.mktemp("toy-diagnostician"), QUICK_CORPUS)


@pytest.fixture(scope="session")
def toy_diagnostician(toy_checkpoint: Path) -> Diagnostician:
    """The toy diagnostician, loaded from its checkpoint on CPU.

    Shared by the session: a :class:`~tevid_hpo.monitor.TrialMonitor` resets it on entry, so
    sequential use is safe. Tests that change it or run trials concurrently load their own with
    ``Diagnostician.from_pretrained(toy_checkpoint, device="cpu")``.
    """
    return Diagnostician.from_pretrained(toy_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def digits_data() -> TensorData:
    """scikit-learn digits at 16×16, the data the toy diagnostician was trained on."""
    return digits(image_size=16, seed=0)


#: Batch size of every digits training loop in the suite.
BATCH = 32
#: One pass over the digits training split at batch 32.
STEPS_PER_EPOCH = 34


class _Steps(Protocol):
    def step(self, loss: float | None = ...) -> object: ...


def train_step(model: nn.Module, opt: torch.optim.Optimizer, data: TensorData, mon: _Steps,
               k: int) -> float:
    """The run's ``k``-th step: batch ``k`` of the training split (cycling, so the batch depends on
    ``k`` alone and a resumed run sees the same data), backward, ``mon.step``, optimiser step.
    Returns the loss."""
    x, y = data.x_train, data.y_train
    i = (k * BATCH) % (len(x) - BATCH)
    loss = nn.functional.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH])
    opt.zero_grad()
    loss.backward()
    mon.step(loss=loss.item())
    opt.step()
    return loss.item()


def digits_cnn(optimizer: str, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``small_cnn`` for the 16×16 digits and its optimiser as the integration studies search
    them: ``"adam"`` (Adam) or anything else (SGD with momentum 0.9), at ``lr``."""
    model = small_cnn(in_channels=1, num_classes=10)
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    return model, opt


def capture_frames(model: nn.Module, opt: torch.optim.Optimizer,
                   loss_at: Callable[[int], torch.Tensor], steps: int,
                   **capture: object) -> tuple[list[Frame], StateCapture]:
    """Train ``steps`` steps under ``StateCapture(model, **capture)``: step ``k`` computes
    ``loss_at(k)``, backward, ``cap.step()`` (between backward and the optimiser step, where the
    gradients are), optimiser step. Returns the frames produced and the (closed) capture."""
    frames = []
    with StateCapture(model, **capture) as cap:  # type: ignore[arg-type]
        for k in range(steps):
            loss = loss_at(k)
            opt.zero_grad()
            loss.backward()
            frame = cap.step()
            opt.step()
            if frame is not None:
                frames.append(frame)
    return frames, cap


def val_accuracy(model: nn.Module, data: TensorData) -> float:
    """Accuracy on the validation split (no gradients, so the monitor ignores the pass)."""
    with torch.no_grad():
        return (model(data.x_val).argmax(1) == data.y_val).float().mean().item()


def recording(diag: Diagnostician) -> list[Frame]:
    """Make ``diag`` (a test's own) keep every frame it is given; returns that list. For tests
    that an integration's frames carry what the monitor adds (``Frame.scalars``)."""
    frames: list[Frame] = []
    update = diag.update

    def record(frame: Frame, *args: object, **kwargs: object) -> Diagnosis:
        frames.append(frame)
        return update(frame, *args, **kwargs)  # type: ignore[arg-type]

    diag.update = record  # type: ignore[method-assign]
    return frames


def silent(toy: Diagnostician) -> Diagnostician:
    """The toy model with alert thresholds no probability reaches: diagnoses, never alerts.

    A threshold of 1.0 is never reached: every Dirichlet parameter is at least 1, so each class
    probability is below 1 (thresholds above 1 are rejected by ``Calibration``).
    """
    return Diagnostician(toy.model, Calibration(tau_c={c: 1.0 for c in ALERT_LABELS}),
                         device="cpu")


def contested_belief(done: float, budget: float, label: str = INSTABILITY,
                     step: int = 10) -> Diagnosis:
    """A diagnosis (no alert) whose belief in ``label`` ``CostModel()``'s cost rule, with
    ``done`` of ``budget`` used, stops at standing 0 or unknown and spares at standing 1 (issue
    25: the leader is spared where a trailing trial is stopped): midway between the two
    thresholds."""
    cm = CostModel()
    p = (cm.stop_threshold(done, budget, 0.0) + cm.stop_threshold(done, budget, 1.0)) / 2
    return Diagnosis(step=step, epoch=0, probs={HEALTHY: 1.0 - p, label: p}, vacuity=0.0,
                     label=label if p > 0.5 else HEALTHY, alert=None, confidence=max(p, 1.0 - p))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread (and Optuna quiet) for the test: the suite shares two cores, and a
    test that trains many small models is faster without intra-op threads fighting for them."""
    import optuna

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every unpickling entry point (``pickle.load(s)``, ``Unpickler``, ``torch.load``) fail
    the test: checkpoint loading must never execute pickled code."""
    import pickle

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("checkpoint loading must not unpickle")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                        (torch, "load")):
        monkeypatch.setattr(owner, name, forbidden)


@contextlib.contextmanager
def local_ray_session(temp_dir: str) -> Iterator[None]:
    """Ray on 2 CPUs with its files under ``temp_dir`` (a short path: socket names are limited);
    shut down at the end only if this call started it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
                 configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
