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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = [
    "FORMAT",
    "CheckpointError",
    "checkpoint_digest",
    "checkpoint_paths",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "to_jsonable",
]

#: Written into every config; bump when the layout changes incompatibly.
FORMAT = "tevid-hpo-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used (truncated, corrupt, wrong format).

    Attributes:
        path: the offending file.
        problem: what is wrong with it.
        hint: how to get a good checkpoint (callers that know better pass their own).

    Example:
        >>> str(CheckpointError("m.json", "not valid JSON"))[:23]
        'm.json: not valid JSON.'
    """

    #: What to do about a bad file when the caller has nothing more specific to say.
    DEFAULT_HINT = ("Re-copy or re-download the checkpoint, or write it again (save_checkpoint, "
                    "`make pipeline`); saves are atomic, so a partial file comes from a copy or "
                    "download that was cut off")

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str | None = None
                 ) -> None:
        self.path, self.problem = Path(path), problem
        self.hint = self.DEFAULT_HINT if hint is None else hint
        super().__init__(f"{self.path}: {problem}. {self.hint}")


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
        CheckpointError: a truncated or corrupt file (naming it), a config/weights mismatch or
            an unknown format.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(f"{d}/cut.safetensors", "wb").write(b"\x10")   # a truncated download
        >>> _ = open(f"{d}/cut.json", "w").write('{"format": "%s"}' % FORMAT)
        >>> try:
        ...     load_checkpoint(f"{d}/cut")
        ... except CheckpointError as err:
        ...     print(str(err).split(":")[0].endswith("cut.safetensors"))
        True
    """
    weights, cfg_path = checkpoint_paths(path)
    for f in (weights, cfg_path):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {f}")
    text = cfg_path.read_text(encoding="utf-8", errors="replace").rstrip("\n")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(cfg_path, f"not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(cfg_path, f"holds a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        raise CheckpointError(cfg_path, f"unsupported checkpoint format "
                                        f"{config.get('format')!r} (expected {FORMAT!r})")
    target = str(resolve_device(device))
    try:
        with safe_open(str(weights), framework="pt", device=target) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(weights, f"truncated or corrupt safetensors file ({err})") from None
    recorded = meta.get("config_sha256")
    if strict_hash and recorded and recorded != hashlib.sha256(text.encode()).hexdigest():
        raise CheckpointError(cfg_path, f"does not match {weights.name} (edited or mixed up); "
                                        "pass strict_hash=False to load anyway")
    return tensors, config


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise the named device, which must exist.

    Raises:
        TypeError: ``device`` is neither a string nor a ``torch.device``.
        ValueError: an unknown device string, or an accelerator this machine does not have
            (the message suggests ``device="auto"``).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> try:
        ...     resolve_device("gpu")
        ... except ValueError as err:
        ...     print(str(err)[:44])
        device: unknown device string 'gpu'; use 'au
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', or a "
                        f"torch.device; got {type(device).__name__}")
    if isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device: unknown device string {device!r}; use 'auto', 'cpu', "
                             "'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine "
                             "(no GPU, or a CPU-only torch build); pass device='auto' to use CUDA "
                             "when present and the CPU otherwise, or device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); pass device='auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} but MPS is not available on this machine; "
                         "pass device='auto' or device='cpu'")
    return device
