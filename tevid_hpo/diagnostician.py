"""Streaming diagnosis of one training run from its internal-state frames (Section 4.3, App. E.1).

:class:`Diagnostician` keeps the last ``W`` frames in a ring buffer and, at every
:meth:`~Diagnostician.update`, runs TEViD on them and returns a :class:`Diagnosis`: calibrated
class probabilities, vacuity, the label (``"Unknown"`` when the vacuity exceeds ``tau_u``) and an
alert once a class has been confirmed by ``calibration.consecutive`` consecutive non-abstained
predictions with ``p_c ≥ tau_c`` (3 by default, the paper's; a checkpoint stores its own, see
docs/models.md). Everything it uses is in the past: the diagnosis at step ``t`` depends only on
frames up to ``t``.

With a run memory in the calibration (``calibration.memory > 0``, chosen on validation by the
pipeline) each diagnosis is the mean of the last ``memory`` window outputs, latched at the most
anomalous one so far (:class:`~core_models.memory.RunMemory`): the labels are states that last
from their onset on, and a window of ``W`` frames would otherwise forget a transient it saw.

Evidence before verdict: before ``W`` frames have arrived the window is left-padded by repeating
the *first* frame, a still picture with no dynamics in it. Until the run has produced its
burn-in of real frames (``calibration.burn_in``; 0, the default, means the whole window ``W``)
the diagnosis is *withheld*: TEViD is not run, the probabilities are uniform, the vacuity is 1,
the label is ``"Unknown"`` and nothing can alert (``Diagnosis.withheld``). The only verdict a
run can get that early is the monitor's non-finite-loss rule. The run memory's latch needs a
level held for ``consecutive`` diagnoses (:class:`~core_models.memory.RunMemory`), so one
transient cannot become a permanent verdict.

Example:
    >>> import tempfile, torch, warnings
    >>> from data_factory.frames import Frame
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")             # "untrained model" warning
    ...     diag = Diagnostician.from_pretrained("tiny", device="cpu")
    >>> d = diag.update(Frame(torch.zeros(6, 16, 16, dtype=torch.bfloat16), step=10, epoch=0))
    >>> d.step, sorted(d.probs) == sorted(diag.known_labels), d.alert, d.withheld, d.vacuity
    (10, True, None, True, 1.0)
    >>> for i in range(1, diag.evidence_frames):      # W = 4 frames for the "tiny" profile
    ...     d = diag.update(torch.zeros(6, 16, 16))
    >>> d.withheld, d.vacuity < 1
    (False, True)
    >>> path = diag.save_pretrained(f"{tempfile.mkdtemp()}/mine")
    >>> Diagnostician.from_pretrained(path, device="cpu").window
    4
"""

from __future__ import annotations

import base64
import os
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core_models.calibration import Calibration, ConsecutiveAlert
from core_models.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from core_models.loss_confirmation import LossConfirmation
from core_models.memory import RunMemory
from core_models.profiles import PROFILES, Profile
from core_models.telemetry import FEATURES, NUM_FEATURES, TelemetryStream
from core_models.tevid import TEViD
from data_factory.frames import Frame
from data_factory.labels import HEALTHY, KNOWN_LABELS, LABELS, UNKNOWN

__all__ = ["DEFAULT_CHECKPOINT", "LABELS", "Diagnosis", "Diagnostician"]

#: Stem of the checkpoint shipped with the package (``default.safetensors`` + ``default.json``).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"

_GET_A_CHECKPOINT = ("Re-copy or re-download it, or make a good one with `make pipeline` (or "
                     "Diagnostician.save_pretrained); Diagnostician.from_pretrained() without a "
                     "path loads the shipped default")


@dataclass(frozen=True)
class Diagnosis:
    """One streaming diagnosis.

    Attributes:
        step: optimisation step of the newest frame in the window.
        epoch: its epoch (``None`` when the loop has no epochs).
        probs: calibrated expected probability per known class (``α_c / S``).
        vacuity: ``K / S``; above ``tau_u`` the diagnosis abstains.
        label: argmax class, or ``"Unknown"`` when abstained.
        alert: the class confirmed by the consecutive rule at this step, else ``None``
            (Healthy never alerts).
        confidence: probability of the most likely known class (also when abstained).
        abstained: ``vacuity > tau_u``.
        finite: ``False`` when the newest frame held NaN/inf (clamped before the model saw it).
        withheld: ``True`` during the burn-in (fewer real frames than
            :attr:`Diagnostician.evidence_frames`): no evidence, uniform ``probs``, vacuity 1.
    """

    step: int
    epoch: int | None
    probs: dict[str, float]
    vacuity: float
    label: str
    alert: str | None
    confidence: float
    abstained: bool = False
    finite: bool = True
    withheld: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for Optuna user attrs, Ray Tune result dicts, logs)."""
        return asdict(self)


class Diagnostician:
    """Causal, streaming TEViD diagnostician for one run at a time.

    Args:
        model: a (trained) :class:`~core_models.tevid.TEViD`.
        calibration: temperature, ``tau_u``, ``tau_c``, the consecutive count ``k`` and the
            run memory window (defaults: ``T=1``, 0.35, 0.9, 3, no memory).
        labels: known class names in head order.
        metadata: provenance stored in saved checkpoints (corpus/split hash, validation
            metrics, …).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, …

    Use :meth:`from_pretrained` to get the shipped default, a saved checkpoint, or an untrained
    model of a named profile.
    """

    def __init__(self, model: TEViD, calibration: Calibration | None = None,
                 labels: Sequence[str] = KNOWN_LABELS, metadata: Mapping[str, Any] | None = None,
                 device: str | torch.device = "auto") -> None:
        if not isinstance(model, TEViD):
            raise TypeError(f"model must be a core_models.tevid.TEViD, got {type(model).__name__}"
                            " (use Diagnostician.from_pretrained to load a checkpoint)")
        if isinstance(labels, str) or not all(isinstance(c, str) and c for c in labels) \
                or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct non-empty class names, got {labels!r}")
        if len(labels) != model.num_classes:
            raise ValueError(f"{len(labels)} labels for a head with {model.num_classes} outputs")
        if model.telemetry and model.telemetry != NUM_FEATURES:
            raise ValueError(f"the model reads {model.telemetry} telemetry features per frame but "
                             f"this version computes {NUM_FEATURES} ({', '.join(FEATURES)}): "
                             "retrain it (python -m experiments.pipeline telemetry=true)")
        if calibration is not None and not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a core_models.calibration.Calibration or None, "
                            f"got {type(calibration).__name__}")
        self.calibration = calibration or Calibration()
        self.calibration.check()
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.model.temperature = float(self.calibration.temperature)
        self.known_labels: tuple[str, ...] = tuple(labels)
        self.metadata: dict[str, Any] = dict(metadata or {})
        #: The checkpoint this was loaded from and its full JSON config (``None`` if built).
        self.source: Path | None = None
        self.source_config: dict[str, Any] | None = None
        self._rule = ConsecutiveAlert(
            {c: t for c, t in self.calibration.tau_c.items() if c in self.known_labels},
            self.calibration.tau_u, self.known_labels, self.calibration.consecutive)
        if self.calibration.memory and HEALTHY not in self.known_labels:
            raise ValueError(f"a run memory needs a {HEALTHY!r} class to rank anomalies by; "
                             f"labels are {self.known_labels}")
        healthy = self.known_labels.index(HEALTHY) if HEALTHY in self.known_labels else 0
        self._memory = RunMemory(self.calibration.memory, healthy, self.calibration.consecutive)
        self._loss_check = LossConfirmation(self.calibration.loss_confirm)
        self.reset()

    # ------------------------------------------------------------------ streaming
    @property
    def profile(self) -> Profile:
        """The model's profile (frame size, window, cadence)."""
        return self.model.profile

    @property
    def window(self) -> int:
        """Frames per diagnosis ``W``."""
        return self.profile.window

    @property
    def evidence_frames(self) -> int:
        """Real frames a run must produce before its first verdict (the burn-in)."""
        return self.calibration.evidence_frames(self.window)

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label a diagnosis can carry: the known classes then ``"Unknown"``."""
        return self.known_labels + (UNKNOWN,)

    def reset(self) -> None:
        """Forget the buffered frames, run memory, alert streaks and latched alert (start of a
        new run)."""
        self._frames: deque[torch.Tensor] = deque(maxlen=self.window)
        # Telemetry models: the frames' scalars as features, padded and windowed like frames.
        self._telemetry_stream = TelemetryStream()
        self._telemetry: deque[torch.Tensor] = deque(maxlen=self.window)
        # Tubelet tokens of every run of ``tubelet_t`` consecutive frames in the window: each
        # update embeds only the newest group (issue 22); see _window_tubelets.
        self._groups: deque[torch.Tensor] = deque(
            maxlen=self.window - self.profile.tubelet_t + 1)
        self._groups_key: tuple[int, ...] | None = None
        self._updates = 0
        self._rule.reset()
        self._memory.reset()
        self._loss_check.reset()
        self.first_alert: tuple[int, str] | None = None
        self.last: Diagnosis | None = None

    def update(self, frame: Frame | torch.Tensor, step: int | None = None,
               epoch: int | None = None) -> Diagnosis:
        """Add the newest frame and diagnose the window ending at it.

        Args:
            frame: a :class:`~data_factory.frames.Frame` or a bare ``(6, S, S)`` tensor. A
                telemetry model (``model.telemetry > 0``) reads the frame's ``scalars``
                through :class:`~core_models.telemetry.TelemetryStream`; a bare tensor or
                empty scalars read as unknown (masked features).
            step, epoch: override the frame's (for bare tensors ``step`` defaults to the
                number of earlier updates).
        """
        scalars: Mapping[str, float] = {}
        if isinstance(frame, Frame):
            tensor, finite, scalars = frame.tensor, frame.finite, frame.scalars
            step = frame.step if step is None else step
            epoch = frame.epoch if epoch is None else epoch
        else:
            tensor, finite = frame, True
            step = self._updates if step is None else step
        p = self.profile
        if tuple(tensor.shape) != (p.in_chans, p.frame_size, p.frame_size):
            raise ValueError(f"frame of shape {tuple(tensor.shape)} does not match profile "
                             f"{p.name!r} ({p.in_chans}, {p.frame_size}, {p.frame_size})")
        x = tensor.detach().to(self.device, torch.float32)
        if not bool(torch.isfinite(x).all()):
            finite = False
            clip = self.model.input_norm.clip  # the same saturation the model applies
            x = torch.nan_to_num(x, nan=clip, posinf=clip, neginf=-clip)
        tele = (torch.from_numpy(self._telemetry_stream.update_scalars(scalars)).to(self.device)
                if getattr(self.model, "telemetry", 0) else None)
        if not self._frames:
            self._frames.extend([x] * self.window)   # left-pad with the first frame
            if tele is not None:
                self._telemetry.extend([tele] * self.window)
        else:
            self._frames.append(x)
            if tele is not None:
                self._telemetry.append(tele)
        self._updates += 1

        withheld = self._updates < self.evidence_frames
        if withheld:   # zero evidence: what the EDL head gives for logits of -inf
            raw = torch.full((len(self.known_labels),), 1.0 / len(self.known_labels),
                             dtype=torch.float64)
            raw_vacuity = 1.0
        else:
            with torch.inference_mode():
                tele = torch.stack(tuple(self._telemetry))[None] if self._telemetry else None
                out = self.model(None, telemetry=tele, tubelets=self._window_tubelets())
            raw, raw_vacuity = out.probs[0].double().cpu(), float(out.vacuity[0])
        remembered, vacuity = self._memory.update(raw.numpy(), raw_vacuity)
        probs = remembered.tolist()
        abstained = withheld or vacuity > self.calibration.tau_u
        best = max(range(len(probs)), key=probs.__getitem__)
        loss = scalars.get("loss")
        confirmed = self._loss_check.update(None if loss is None else float(loss))
        alert = self._loss_check.vet(self._rule.update(probs, vacuity), confirmed)
        if alert is not None and self.first_alert is None:
            self.first_alert = (int(step), alert)
        self.last = Diagnosis(
            step=int(step), epoch=epoch, probs=dict(zip(self.known_labels, probs)),
            vacuity=vacuity, label=UNKNOWN if abstained else self.known_labels[best],
            alert=alert, confidence=probs[best], abstained=abstained, finite=finite,
            withheld=withheld)
        return self.last

    def _window_tubelets(self) -> torch.Tensor:
        """The window's tubelet tokens ``1×T'×N×D``, as ``model.tubelets`` of the whole window.

        The window's slots are every ``tubelet_t``-th group of consecutive frames, and the
        window slides by one frame, so the groups an update needs were embedded at earlier
        updates; only the newest one is new. The cache is rebuilt from the frames when it is
        not from the previous update (start, burn-in, a loaded state) or when the embedding's
        weights were replaced or changed in place since (``_version``).
        """
        m, pt = self.model, self.profile.tubelet_t
        stem = (m.patch_embed.proj.weight, m.patch_embed.proj.bias, m.input_norm.mean,
                m.input_norm.std, m.channel_mask)
        key = (self._updates, *(id(t) for t in stem), *(t._version for t in stem))
        frames = tuple(self._frames)
        fresh = self._groups_key == (key[0] - 1, *key[1:]) \
            and len(self._groups) == self._groups.maxlen
        # One group per call, also when rebuilding: the same call on the same frames gives the
        # same bits, so a resumed stream continues exactly (a batched call may round otherwise).
        for i in range(self._groups.maxlen - 1 if fresh else 0, self._groups.maxlen):
            self._groups.append(m.tubelets(torch.stack(frames[i:i + pt])[None])[0, 0])
        self._groups_key = key
        return torch.stack(tuple(self._groups)[::pt])[None]

    # ------------------------------------------------------------------ streaming state
    def state_dict(self) -> dict[str, Any]:
        """The run so far — buffered frames, telemetry, alert streaks, run memory, latched
        alert — JSON-serialisable, so a paused trial resumes its stream exactly
        (:meth:`TrialMonitor.state_dict <tevid_hpo.monitor.TrialMonitor.state_dict>`).

        Example:
            >>> import json, torch, warnings; from core_models.tevid import TEViD
            >>> from core_models.calibration import Calibration
            >>> warnings.simplefilter("ignore")            # an uncalibrated demo model
            >>> a = Diagnostician(TEViD("tiny"), Calibration(memory=2), device="cpu")
            >>> b = Diagnostician(a.model, Calibration(memory=2), device="cpu")
            >>> frames = [torch.randn(6, 16, 16).bfloat16() for _ in range(14)]   # as captured
            >>> for f in frames[:9]: _ = a.update(f)
            >>> b.load_state_dict(json.loads(json.dumps(a.state_dict())))
            >>> a.update(frames[9]).probs == b.update(frames[9]).probs
            True
        """
        frames = list(self._frames)
        return {
            "frames": _encode_frames(torch.stack(frames)) if frames else None,
            "updates": int(self._updates),
            "streaks": [int(s) for s in self._rule.streaks],
            "first_alert": list(self.first_alert) if self.first_alert is not None else None,
            "last": self.last.to_dict() if self.last is not None else None,
            "telemetry": [t.tolist() for t in self._telemetry],
            "telemetry_stream": self._telemetry_stream.state_dict(),
            "memory": self._memory.state_dict(),
            "loss_check": self._loss_check.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run :meth:`state_dict` described (states saved before the run memory
        was part of it resume with an empty memory)."""
        self.reset()
        if state["frames"] is not None:
            frames = _decode_frames(state["frames"]).to(self.device)
            self._frames.extend(frames.unbind(0))
        self._updates = int(state["updates"])
        self._rule.streaks = np.asarray(state["streaks"], dtype=np.int64)
        self.first_alert = tuple(state["first_alert"]) if state["first_alert"] else None
        self.last = Diagnosis(**state["last"]) if state["last"] is not None else None
        if state.get("loss_check") is not None:   # states saved before it existed: a fresh one
            self._loss_check.load_state_dict(state["loss_check"])
        self._telemetry.extend(torch.tensor(t, device=self.device)
                               for t in state.get("telemetry", []))
        if state.get("telemetry_stream") is not None:
            self._telemetry_stream.load_state_dict(state["telemetry_stream"])
        elif state.get("telemetry_refs"):   # states saved before the stream kept its own
            first, prev = state["telemetry_refs"]
            self._telemetry_stream.load_state_dict({"first": first, "prev": prev})
        if state.get("memory") is not None:
            self._memory.load_state_dict(state["memory"])

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The checkpoint JSON: architecture, labels, calibration, provenance."""
        return {**self.model.config(), "labels": list(self.known_labels),
                **self.calibration.to_dict(),
                "corpus_hash": None, "split_hash": None, "val_metrics": {},
                **self.metadata,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save_pretrained(self, path: str | os.PathLike[str], **metadata: Any) -> Path:
        """Write ``path.safetensors`` + ``path.json``; ``metadata`` adds/overrides provenance
        keys (``corpus_hash``, ``split_hash``, ``val_metrics``, …). Returns the weights path."""
        self.metadata.update(metadata)
        return save_checkpoint(path, self.model.state_dict(), self.config())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None = None,
                        device: str | torch.device = "auto") -> Diagnostician:
        """Load a diagnostician.

        Args:
            name_or_path: ``None`` for the default checkpoint shipped in
                ``tevid_hpo/checkpoints/``; a checkpoint stem/file or a directory holding
                ``default.*`` or ``model.*``; or a profile name (``"cpu"``, ``"paper"``,
                ``"tiny"``), which builds an *untrained* model and warns.
            device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, …

        Raises:
            FileNotFoundError: no checkpoint where expected (the message says how to make one).
            CheckpointError: a truncated, corrupt or foreign checkpoint (a ``ValueError`` naming
                the file and how to get a good one).
            ValueError: ``device`` names an unknown device or one this machine lacks.
        """
        resolve_device(device)   # a bad device fails first, before any file is looked for
        if name_or_path is not None and not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(f"name_or_path must be None, a path or a profile name, got "
                            f"{type(name_or_path).__name__}")
        if name_or_path is None:
            weights, cfg = checkpoint_paths(DEFAULT_CHECKPOINT)
            if not (weights.is_file() and cfg.is_file()):
                raise FileNotFoundError(
                    f"no default TEViD checkpoint at {weights} (+ {cfg.name}). It is produced by "
                    "`make pipeline` (corpus -> labels -> pretrain -> finetune -> calibrate); "
                    "or pass a checkpoint path, or a profile name "
                    f"({', '.join(sorted(PROFILES))}) for an untrained model.")
            return cls._load(DEFAULT_CHECKPOINT, device)
        if isinstance(name_or_path, str) and name_or_path in PROFILES and not Path(
                name_or_path).exists():
            warnings.warn(f"Diagnostician.from_pretrained({name_or_path!r}) builds an UNTRAINED "
                          "model: its diagnoses are meaningless until it is trained.",
                          UserWarning, stacklevel=2)
            return cls(TEViD(name_or_path), device=device,
                       metadata={"trained": False, "profile_name": name_or_path})
        path = Path(name_or_path)
        if path.is_dir():
            for stem in ("default", "model"):
                if checkpoint_paths(path / stem)[0].is_file():
                    return cls._load(path / stem, device)
            raise FileNotFoundError(f"no default.safetensors or model.safetensors in {path}")
        return cls._load(path, device)

    @classmethod
    def _load(cls, path: str | os.PathLike[str], device: str | torch.device) -> Diagnostician:
        try:
            tensors, config = load_checkpoint(path)
            if config.get("kind") != "tevid":
                raise CheckpointError(checkpoint_paths(path)[1],
                                      f"a {config.get('kind')!r} checkpoint, not a TEViD one")
            model = TEViD.from_config(config)
            model.load_state_dict(tensors, strict=True)
        except CheckpointError as err:
            raise CheckpointError(err.path, err.problem, _GET_A_CHECKPOINT) from None
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}. {_GET_A_CHECKPOINT}; a profile name "
                                    f"({', '.join(sorted(PROFILES))}) builds an untrained model"
                                    ) from None
        except (KeyError, TypeError, RuntimeError) as err:
            # A config that parses but does not describe these weights (hand-edited, or from
            # another version): name the file instead of surfacing torch's key listing.
            raise CheckpointError(checkpoint_paths(path)[1], f"does not describe a loadable "
                                  f"TEViD ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                                  _GET_A_CHECKPOINT) from None
        # Calibration keys come from Calibration itself, so a new field (``memory``) can never
        # slip into the metadata and override a later calibration on save.
        skip = {"format", "kind", "profile", "num_classes", "channels", "normalization", "labels",
                "created", *Calibration().to_dict()}
        diag = cls(model, Calibration.from_dict(config), config.get("labels", KNOWN_LABELS),
                   metadata={k: v for k, v in config.items() if k not in skip}, device=device)
        diag.source, diag.source_config = checkpoint_paths(path)[0], config
        return diag


def _encode_frames(x: torch.Tensor) -> dict[str, Any]:
    # Frames are bfloat16 from capture (and NaN-clamped to a bf16-exact value), so bf16 bytes
    # are lossless and ~8x smaller than a JSON list of floats.
    raw = x.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    return {"dtype": "bfloat16", "shape": list(x.shape), "data": base64.b64encode(raw).decode()}


def _decode_frames(d: Mapping[str, Any]) -> torch.Tensor:
    buf = np.frombuffer(base64.b64decode(d["data"]), dtype=np.int16).copy()
    return torch.from_numpy(buf).view(torch.bfloat16).reshape(d["shape"]).float()
