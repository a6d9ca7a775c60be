"""Checkpoints as ``NAME.safetensors`` (tensors) + ``NAME.json`` (config) — never pickle.

``torch.load`` unpickles arbitrary objects, so a shared checkpoint would be a code-execution
vector; safetensors holds only tensors and JSON only data. The safetensors header records the
SHA-256 of the JSON text, so a weights file paired with the wrong (or edited) config is noticed.

Example:
    >>> import tempfile, torch
    >>> from core_models.checkpoint import save_checkpoint, load_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> path = save_checkpoint(f"{d}/model", {"w": torch.ones(2)}, {"profile": "tiny"})
    >>> tensors, config = load_checkpoint(path)
    >>> tensors["w"].tolist(), config["profile"]
    ([1.0, 1.0], 'tiny')
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "FORMAT",
    "checkpoint_digest",
    "checkpoint_paths",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "save_checkpoint",
    "save_model",
    "to_jsonable",
]

#: Written into every config; bump when the layout changes incompatibly.
FORMAT = "tevid-hpo-checkpoint/1"


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, config)`` paths for a checkpoint given as a stem or either file.

    Example:
        >>> [p.name for p in checkpoint_paths("ckpt/default.json")]
        ['default.safetensors', 'default.json']
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """A short SHA-256 of a checkpoint's weights and config files: what results computed with
    it (recordings, fine-tuned descendants) are keyed by, so they are reused only for the same
    checkpoint.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> _ = save_checkpoint(f"{d}/a", {"w": torch.zeros(2)}, {"kind": "demo"})
        >>> len(checkpoint_digest(f"{d}/a")), checkpoint_digest(f"{d}/a") == checkpoint_digest(f"{d}/a.json")
        (12, True)
    """
    h = hashlib.sha256()
    for file in checkpoint_paths(path):
        if file.is_file():
            h.update(file.read_bytes())
    return h.hexdigest()[:12]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples into plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalar or array
        return obj.tolist()
    return obj


def _atomic_write(path: Path, write: Any) -> None:
    # Write next to the target, then rename: an interrupted save never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                    config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``config`` atomically; returns the ``.safetensors`` path.

    Tensors are copied to contiguous CPU memory (safetensors refuses views and shared storage).
    ``config`` must be JSON-serialisable after :func:`to_jsonable`; ``"format"`` is added.
    """
    weights, cfg_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, **to_jsonable(dict(config))}, indent=2, sort_keys=True,
                      allow_nan=True)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}
    _atomic_write(weights, lambda tmp: save_file(flat, tmp, metadata=meta))
    _atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return weights


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                    strict_hash: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no unpickling anywhere).

    Args:
        path: stem, ``.safetensors`` or ``.json`` path.
        device: where the tensors are placed.
        strict_hash: raise if the JSON does not match the hash recorded with the weights.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: on a config/weights mismatch or an unknown format.
    """
    weights, cfg_path = checkpoint_paths(path)
    for f in (weights, cfg_path):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {f}")
    text = cfg_path.read_text(encoding="utf-8").rstrip("\n")
    config = json.loads(text)
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: unsupported checkpoint format {config.get('format')!r}")
    with safe_open(str(weights), framework="pt", device=str(resolve_device(device))) as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    recorded = meta.get("config_sha256")
    if strict_hash and recorded and recorded != hashlib.sha256(text.encode()).hexdigest():
        raise ValueError(f"{cfg_path} does not match {weights.name} (edited or mixed up); "
                         "pass strict_hash=False to load anyway")
    return tensors, config


def save_model(model: torch.nn.Module, path: str | os.PathLike[str],
               extra: Mapping[str, Any] | None = None) -> Path:
    """Save a :class:`~core_models.mae.DynamicsMAE` or :class:`~core_models.tevid.TEViD`:
    its weights plus ``model.config()`` (architecture, normalisation) and ``extra`` metadata."""
    return save_checkpoint(path, model.state_dict(), {**model.config(), **(extra or {})})


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes (by its ``"kind"``) and load its weights.

    Returns ``(model in eval mode on device, config)``.

    Example:
        >>> import tempfile
        >>> from core_models.tevid import TEViD
        >>> d = tempfile.mkdtemp()
        >>> _ = save_model(TEViD("tiny"), f"{d}/m", {"note": "demo"})
        >>> model, cfg = load_model(f"{d}/m")
        >>> type(model).__name__, cfg["note"]
        ('TEViD', 'demo')
    """
    # Imported here: the model modules import this one (TEViD.load_mae_encoder).
    from core_models.mae import DynamicsMAE
    from core_models.tevid import TEViD

    tensors, config = load_checkpoint(path)
    kinds = {"tevid": TEViD, "dynamics-mae": DynamicsMAE}
    if config.get("kind") not in kinds:
        raise ValueError(f"{path}: not a model checkpoint (kind={config.get('kind')!r})")
    model = kinds[config["kind"]].from_config(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(resolve_device(device)).eval(), config


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
