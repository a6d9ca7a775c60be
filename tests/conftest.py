"""Shared fixtures: a small but really trained diagnostician, and the digits data it was made on.

No test may assume the shipped default checkpoint (``tevid_hpo/checkpoints/default.*``) exists:
tests that need a trained diagnostician use :func:`toy_checkpoint` / :func:`toy_diagnostician`,
trained once per session in ~15 s by :func:`tevid_hpo.testing.train_toy_diagnostician`
(digits runs captured with StateCapture at the ``tiny`` profile, Healthy vs Instability clips,
``core_models.train.finetune``, minimal calibration, ``save_pretrained`` →
``Diagnostician.from_pretrained``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_factory.datasets import TensorData, digits
from tevid_hpo.diagnostician import Diagnostician
from tevid_hpo.testing import QUICK_CORPUS, train_toy_diagnostician


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
