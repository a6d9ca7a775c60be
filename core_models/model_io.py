"""Save a DYNAMICS-MAE or TEViD model as a checkpoint and rebuild it from one by its ``"kind"``.

The file format itself lives in :mod:`core_models.checkpoint`, which imports no model; this
module maps a checkpoint's ``"kind"`` to the model class, so it sits above both model modules
(and :meth:`~core_models.tevid.TEViD.load_mae_encoder` can read a checkpoint without a cycle).

Example:
    >>> import tempfile
    >>> from core_models.tevid import TEViD
    >>> d = tempfile.mkdtemp()
    >>> _ = save_model(TEViD("tiny"), f"{d}/m", {"note": "demo"})
    >>> model, cfg = load_model(f"{d}/m")
    >>> type(model).__name__, cfg["note"]
    ('TEViD', 'demo')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core_models.checkpoint import load_checkpoint, resolve_device, save_checkpoint
from core_models.mae import DynamicsMAE
from core_models.tevid import TEViD

__all__ = ["MODEL_KINDS", "load_model", "save_model"]

#: The model class each checkpoint ``"kind"`` is rebuilt as.
MODEL_KINDS: dict[str, type[torch.nn.Module]] = {"tevid": TEViD, "dynamics-mae": DynamicsMAE}


def save_model(model: torch.nn.Module, path: str | os.PathLike[str],
               extra: Mapping[str, Any] | None = None) -> Path:
    """Save a :class:`~core_models.mae.DynamicsMAE` or :class:`~core_models.tevid.TEViD`:
    its weights plus ``model.config()`` (architecture, normalisation) and ``extra`` metadata."""
    return save_checkpoint(path, model.state_dict(), {**model.config(), **(extra or {})})


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes (by its ``"kind"``) and load its weights.

    Returns ``(model in eval mode on device, config)``.

    Example: see the module docstring.
    """
    tensors, config = load_checkpoint(path)
    if config.get("kind") not in MODEL_KINDS:
        raise ValueError(f"{path}: not a model checkpoint (kind={config.get('kind')!r}; "
                         f"expected one of {sorted(MODEL_KINDS)})")
    model = MODEL_KINDS[config["kind"]].from_config(config)  # type: ignore[attr-defined]
    model.load_state_dict(tensors, strict=True)
    return model.to(resolve_device(device)).eval(), config
