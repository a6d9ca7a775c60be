"""DYNAMICS-MAE, TEViD, the EDL head/loss, profiles, checkpoints and the training loops.

Everything runs on the ``tiny`` profile (16×16 frames, W=4, dim 32) so the file takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from core_models.checkpoint import load_checkpoint, save_checkpoint
from core_models.edl import edl_loss, evidential_output, kl_annealing, kl_to_uniform_dirichlet
from core_models.mae import DynamicsMAE, tube_masking
from core_models.model_io import load_model, save_model
from core_models.profiles import PROFILES, Profile, get_profile
from core_models.tevid import TEViD
from core_models.train import (
    FinetuneConfig,
    PretrainConfig,
    cosine_lr,
    drop_modalities,
    finetune,
    predict,
    pretrain,
)

TINY = get_profile("tiny")


def clips(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY.window, 6, TINY.frame_size, TINY.frame_size, generator=g)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- profiles
def test_profiles_match_the_spec_and_round_trip_through_json():
    cpu, paper = PROFILES["cpu"], PROFILES["paper"]
    assert (cpu.frame_size, cpu.patch_size, cpu.embed_dim, cpu.depth, cpu.num_heads,
            cpu.window, cpu.every) == (32, 8, 128, 4, 4, 10, 10)
    assert (paper.frame_size, paper.patch_size, paper.embed_dim, paper.depth, paper.num_heads,
            paper.window, paper.every) == (224, 16, 768, 12, 12, 10, 50)
    for p in PROFILES.values():
        assert Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError):
        Profile(name="bad", frame_size=30, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(KeyError):
        get_profile("nope")


# ----------------------------------------------------------------------------- masking
def test_tube_mask_has_exact_ratio_and_is_identical_in_every_slot():
    n_slots, n_patches = 5, 16
    mask, ids_keep, ids_restore = tube_masking(7, n_slots, n_patches, 0.9)
    per_slot = mask.view(7, n_slots, n_patches)
    assert (per_slot.sum(-1) == round(n_patches * 0.9)).all()          # 14 of 16 in every slot
    assert (per_slot == per_slot[:, :1]).all()                          # a tube through time
    assert ids_keep.shape == (7, n_slots * 2)
    # ids_keep are exactly the visible tokens, ids_restore inverts [visible, masked].
    assert (torch.gather(mask, 1, ids_keep) == 0).all()
    order = torch.cat([ids_keep, torch.nonzero(mask)[:, 1].view(7, -1)], dim=1)
    assert torch.equal(torch.gather(order, 1, ids_restore), torch.arange(80).expand(7, -1))
    # Different samples get different masks.
    assert not (per_slot[:, 0] == per_slot[:1, 0]).all()
    with pytest.raises(ValueError):
        tube_masking(1, 2, 4, 0.9)                                      # would hide everything


def test_mae_forward_shapes_and_mask():
    mae = DynamicsMAE("tiny")
    loss, pred, mask = mae(clips(3))
    n_tokens = TINY.num_tokens
    assert torch.isfinite(loss) and loss.ndim == 0
    assert pred.shape == (3, n_tokens, TINY.tubelet_t * TINY.patch_size ** 2 * 6)
    assert mask.shape == (3, n_tokens)
    assert (mask.sum(1) == TINY.num_slots * round(TINY.num_patches * 0.9)).all()
    assert torch.equal(mae.unpatchify(mae.patchify(clips(1))), clips(1))


def test_mae_loss_only_on_masked_patches():
    mae = DynamicsMAE("tiny").eval()
    x = mae.input_norm(clips(2))
    _, pred, mask = mae(clips(2))
    base = mae.forward_loss(x, pred, mask)
    visible = mask == 0
    changed = pred.clone()
    changed[visible] += 100.0                          # wreck predictions of visible patches
    assert torch.equal(mae.forward_loss(x, changed, mask), base)
    changed = pred.clone()
    changed[~visible] += 1.0
    assert mae.forward_loss(x, changed, mask) > base


def test_mae_encoder_never_sees_masked_patches():
    mae = DynamicsMAE("tiny").eval()
    x = mae.input_norm(clips(1))
    torch.manual_seed(1)
    latent, mask, _ = mae.forward_encoder(x, 0.75)
    hidden = int(torch.nonzero(mask[0, : TINY.num_patches] == 1)[0])   # a masked tube
    row, col = divmod(hidden, TINY.grid_size)
    p = TINY.patch_size
    y = x.clone()
    y[:, :, :, row * p:(row + 1) * p, col * p:(col + 1) * p] = 5.0     # whole tube, all frames
    torch.manual_seed(1)
    latent2, mask2, _ = mae.forward_encoder(y, 0.75)
    assert torch.equal(mask, mask2) and torch.allclose(latent, latent2)


# ----------------------------------------------------------------------------- EDL
def test_evidential_head_vacuity_is_k_over_s():
    model = TEViD("tiny").eval()
    out = model(clips(4))
    k = model.num_classes
    assert torch.allclose(out.vacuity, k / out.alpha.sum(-1))
    assert torch.allclose(out.probs.sum(-1), torch.ones(4))
    assert (out.alpha >= 1).all() and (out.evidence >= 0).all()
    assert torch.allclose(out.alpha, out.evidence + 1)


def test_temperature_scales_the_evidence_logits():
    model = TEViD("tiny").eval()
    x = clips(2)
    logits = model.head(model.embed(x))
    out = model(x, temperature=2.5)
    assert torch.allclose(out.evidence, torch.nn.functional.softplus(logits / 2.5), atol=1e-6)
    model.temperature = 2.5
    assert torch.allclose(model(x).probs, out.probs)


def test_edl_loss_is_finite_and_pushes_evidence_to_the_true_class():
    target = torch.tensor([0, 1, 2, 3, 4, 2])
    rows = torch.arange(6)
    for scale in (1.0, 1e4):                       # ordinary and extreme logits
        logits = (scale * torch.randn(6, 5)).requires_grad_()
        for epoch in (0, 5, 20):
            loss = edl_loss(evidential_output(logits).alpha, target, epoch)
            assert torch.isfinite(loss)
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.isfinite(grad).all()
            # Descent raises the true-class logit (saturated softplus may make it ~0) ...
            assert (grad[rows, target] <= 0).all()
            if scale == 1.0:
                # ... strictly, and more than any other logit, raising p_true.
                assert (grad[rows, target] < 0).all()
                assert (grad.argmin(dim=1) == target).all()
                with torch.no_grad():
                    p0 = evidential_output(logits).probs[rows, target]
                    p1 = evidential_output(logits - 0.5 * grad).probs[rows, target]
                assert (p1 > p0).all()


def test_edl_kl_term_and_annealing():
    assert [kl_annealing(e) for e in (0, 1, 10, 11)] == [0.0, 0.1, 1.0, 1.0]
    assert float(kl_to_uniform_dirichlet(torch.ones(1, 5))) == pytest.approx(0.0, abs=1e-6)
    alpha = torch.rand(20, 5) * 10 + 1
    assert (kl_to_uniform_dirichlet(alpha) >= -1e-5).all()
    # Evidence on a wrong class costs more once the KL term is on.
    alpha = torch.tensor([[1.0, 50.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([0])
    assert edl_loss(alpha, target, epoch=10) > edl_loss(alpha, target, epoch=0)
    # The true class's own evidence is not penalised by the KL term (alpha-tilde removes it).
    alpha = torch.tensor([[50.0, 1.0, 1.0, 1.0, 1.0]])
    assert edl_loss(alpha, target, epoch=10) == pytest.approx(float(edl_loss(alpha, target, 0)))


# ----------------------------------------------------------------------------- TEViD
def test_tevid_shapes_embed_and_channel_ablation():
    x = clips(2)
    model = TEViD("tiny").eval()
    assert model.embed(x).shape == (2, TINY.embed_dim)
    with pytest.raises(ValueError):
        model(x[:, :3])                                    # wrong window
    act_only = TEViD("tiny", channels="act").eval()
    grad_only = TEViD("tiny", channels="grad").eval()
    y = x.clone()
    y[:, :, 3:] = torch.randn_like(y[:, :, 3:])            # new gradient channels
    assert torch.allclose(act_only(x).probs, act_only(y).probs)
    assert not torch.allclose(grad_only(x).probs, grad_only(y).probs)
    with pytest.raises(ValueError):
        TEViD("tiny", channels="both+")


def test_tevid_attends_across_time():
    model = TEViD("tiny").eval()
    for blk in model.blocks:                               # open every temporal branch
        torch.nn.init.normal_(blk.temporal_fc.weight, std=0.02)
    x = clips(1)
    assert not torch.allclose(model(x).probs, model(x.flip(1)).probs)


def test_load_mae_encoder_copies_encoder_weights():
    mae = DynamicsMAE("tiny")
    tevid = TEViD("tiny")
    copied = tevid.load_mae_encoder(mae.state_dict())
    own, src = tevid.state_dict(), mae.state_dict()
    for key in ("patch_embed.proj.weight", "cls_token", "norm.weight", "input_norm.std",
                "blocks.1.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "blocks.0.norm2.weight"):
        assert key in copied and torch.equal(own[key], src[key])
    for i in range(TINY.depth):                            # TimeSformer init of the time half
        assert torch.equal(own[f"blocks.{i}.temporal_attn.qkv.weight"],
                           src[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(own[f"blocks.{i}.temporal_norm.weight"], src[f"blocks.{i}.norm1.weight"])
        assert (own[f"blocks.{i}.temporal_fc.weight"] == 0).all()
    assert not any(k.startswith("decoder") for k in copied)
    # With temporal_fc zeroed the temporal branch contributes nothing yet (near-identity init):
    # scrambling the temporal attention leaves the embedding unchanged.
    x = clips(1)
    tevid.eval()
    before = tevid.embed(x)
    for blk in tevid.blocks:
        torch.nn.init.normal_(blk.temporal_attn.qkv.weight)
    assert torch.allclose(tevid.embed(x), before)
    with pytest.raises((KeyError, ValueError)):
        TEViD("cpu").load_mae_encoder(mae.state_dict())


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_identical_and_never_unpickles(tmp_path, request):
    model = TEViD("tiny", temperature=1.7).eval()
    model.input_norm.std.fill_(2.0)
    path = save_model(model, tmp_path / "tevid", {"note": "x"})
    request.getfixturevalue("no_unpickling")   # from here on, any unpickling fails the test
    loaded, cfg = load_model(path)
    x = clips(2)
    assert cfg["note"] == "x" and loaded.temperature == pytest.approx(1.7)
    assert torch.equal(loaded(x).alpha, model(x).alpha)
    mae = DynamicsMAE("tiny")
    mae_loaded, _ = load_model(save_model(mae, tmp_path / "mae"))
    assert isinstance(mae_loaded, DynamicsMAE)
    # The JSON sidecar is bound to its weights.
    json_path = tmp_path / "tevid.json"
    json_path.write_text(json_path.read_text().replace('"x"', '"y"'))
    with pytest.raises(ValueError):
        load_checkpoint(path)
    assert load_checkpoint(path, strict_hash=False)[1]["note"] == "y"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_save_checkpoint_handles_numpy_and_tuples(tmp_path):
    save_checkpoint(tmp_path / "c", {"a": torch.arange(3)[1:]},     # a view: copied on save
                    {"v": np.float32(1.5), "t": (1, 2), "arr": np.arange(2)})
    tensors, cfg = load_checkpoint(tmp_path / "c.json")
    assert tensors["a"].tolist() == [1, 2] and cfg["v"] == 1.5 and cfg["t"] == [1, 2]


# ----------------------------------------------------------------------------- training
def test_cosine_schedule():
    assert cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 10, 1.0, floor=0.1) == pytest.approx(0.1)
    assert PretrainConfig(batch_size=512).peak_lr == pytest.approx(3e-4)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pretrain_two_steps_and_resume_matches_uninterrupted(tmp_path):
    data = TensorDataset(clips(4, seed=3))
    cfg = {"epochs": 1, "batch_size": 2, "warmup_epochs": 0, "progress": False, "base_lr": 1e-3,
           "lr_batch_ref": None, "device": "cpu"}
    torch.manual_seed(10)
    full = DynamicsMAE("tiny")
    before = _state(full)
    res = pretrain(full, data, PretrainConfig(**cfg), out_dir=tmp_path / "a")
    assert res.finished and res.steps == 2 and len(res.history) == 1
    assert np.isfinite(res.history[0]["loss"])
    assert not torch.equal(full.state_dict()["blocks.0.attn.qkv.weight"],
                           before["blocks.0.attn.qkv.weight"])
    assert (tmp_path / "a" / "model.safetensors").is_file()

    torch.manual_seed(10)
    part = DynamicsMAE("tiny")
    first = pretrain(part, data, PretrainConfig(**cfg, max_steps=1), out_dir=tmp_path / "b")
    assert not first.finished and first.steps == 1 and first.checkpoint is None
    torch.manual_seed(99)                                  # a "new process" with other weights
    resumed_model = DynamicsMAE("tiny")
    resumed = pretrain(resumed_model, data, PretrainConfig(**cfg), out_dir=tmp_path / "b")
    assert resumed.resumed_from == 1 and resumed.steps == 2 and resumed.finished
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed.history[0]["loss"] == pytest.approx(res.history[0]["loss"])
    _reloaded, cfg_json = load_model(tmp_path / "b" / "model")
    assert cfg_json["training"]["steps"] == 2


def test_finetune_two_steps_resume_and_validation(tmp_path):
    x = clips(5, seed=4)
    labels = torch.tensor([0, 2, -1, 1, 2])                # one Unknown clip is skipped
    data, val = TensorDataset(x, labels), TensorDataset(x[:3], labels[:3])
    cfg = {"epochs": 1, "batch_size": 3, "warmup_epochs": 0, "progress": False, "base_lr": 1e-3,
           "lr_batch_ref": None, "device": "cpu"}
    torch.manual_seed(5)
    full = TEViD("tiny")
    full.load_mae_encoder(DynamicsMAE("tiny"))
    init = _state(full)
    res = finetune(full, data, FinetuneConfig(**cfg), out_dir=tmp_path / "a", val_dataset=val)
    assert res.finished and res.steps == 2
    row = res.history[0]
    assert {"loss", "val_loss", "val_acc", "val_vacuity"} <= set(row)
    assert np.isfinite(row["loss"]) and 0 <= row["val_acc"] <= 1

    interrupted = TEViD("tiny")
    interrupted.load_state_dict(init)
    finetune(interrupted, data, FinetuneConfig(**cfg, max_steps=1), out_dir=tmp_path / "b")
    resumed = TEViD("tiny")
    out = finetune(resumed, data, FinetuneConfig(**cfg), out_dir=tmp_path / "b", val_dataset=val)
    assert out.resumed_from == 1 and out.finished
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(ValueError):                       # resuming another profile's run
        finetune(TEViD("cpu"), data, FinetuneConfig(**cfg), out_dir=tmp_path / "b")


class _TelemetryClips(torch.utils.data.Dataset):
    """Clips whose label lives in both the frames and the scalars (sign of every input)."""

    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(7)
        self.labels = torch.arange(n) % 2
        sign = (self.labels * 2 - 1).float().view(-1, 1, 1, 1, 1)
        self.clips = sign * (1 + torch.rand(n, 4, 6, 16, 16, generator=g))
        self.tele = sign.view(-1, 1, 1) * torch.ones(n, 4, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"clips": self.clips[i], "telemetry": self.tele[i]}, self.labels[i]


def test_modality_dropout_hides_one_input_of_that_share_of_training_clips(monkeypatch):
    data = _TelemetryClips(64)
    cfg = {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, "progress": False,
           "lr_batch_ref": None, "device": "cpu"}
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = TEViD.forward

    def spy(self, clips, temperature=None, telemetry=None, **kw):
        if self.training:   # per clip: scalars hidden, frames zeroed
            seen.append((telemetry.detach().abs().sum(dim=(1, 2)) == 0,
                         clips.detach().abs().flatten(1).sum(1) == 0))
        return forward(self, clips, temperature=temperature, telemetry=telemetry, **kw)

    monkeypatch.setattr(TEViD, "forward", spy)
    hidden = {}
    for shares in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.4, 0.6)):
        seen.clear()
        torch.manual_seed(3)
        finetune(TEViD("tiny", telemetry=3), data,
                 FinetuneConfig(**cfg, telemetry_dropout=shares[0], frame_dropout=shares[1]))
        tele = torch.cat([t for t, _ in seen]).float()
        frames = torch.cat([f for _, f in seen]).float()
        hidden[shares] = (float(tele.mean()), float(frames.mean()), float((tele * frames).sum()))
    assert hidden[(0.0, 0.0)] == (0.0, 0.0, 0.0)
    assert 0.35 < hidden[(0.5, 0.0)][0] < 0.65 and hidden[(0.5, 0.0)][1] == 0.0   # 128 clips
    assert hidden[(0.0, 0.5)][0] == 0.0 and 0.35 < hidden[(0.0, 0.5)][1] < 0.65
    t, f, both = hidden[(0.4, 0.6)]
    assert both == 0.0 and t + f == 1.0                # every clip loses exactly one input
    with pytest.raises(ValueError, match="telemetry_dropout"):
        FinetuneConfig(telemetry_dropout=1.0)
    with pytest.raises(ValueError, match="frame_dropout"):
        FinetuneConfig(frame_dropout=-0.1)
    with pytest.raises(ValueError, match="at most 1"):
        FinetuneConfig(telemetry_dropout=0.6, frame_dropout=0.6)
    # A model that reads one modality trains on it whole: nothing to drop between.
    seen.clear()
    finetune(TEViD("tiny", telemetry=3, channels="none"), data,
             FinetuneConfig(**cfg, telemetry_dropout=0.4, frame_dropout=0.6))
    assert not any(t.any() or f.any() for t, f in seen)
    monkeypatch.undo()
    frames_only = torch.utils.data.TensorDataset(data.clips, data.labels)
    finetune(TEViD("tiny"), frames_only, FinetuneConfig(**cfg, frame_dropout=0.6))
    batch = {"clips": torch.ones(3, 1), "telemetry": torch.ones(3, 2)}
    assert drop_modalities(batch) is batch
    assert drop_modalities({"clips": batch["clips"]}, 0.5, 0.5) == {"clips": batch["clips"]}


def test_predict_returns_calibration_inputs():
    x = clips(3)
    out = predict(TEViD("tiny"), TensorDataset(x), batch_size=2, device="cpu")
    assert out["logits"].shape == (3, 5) and out["labels"].tolist() == [-1, -1, -1]
    assert np.allclose(out["vacuity"], 5 / out["alpha"].sum(1), atol=1e-6)
