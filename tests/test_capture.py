"""StateCapture across architecture families: layer choice, frame shape, gradients, cleanup."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torchvision
from conftest import capture_frames
from torch import nn

from data_factory.capture import StateCapture, candidate_layers, pick_depths
from data_factory.frames import FrameEncoder, reduce_to_map

S = 16


class GRUClassifier(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim)  # seq-first on purpose: layout handling is under test
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(tokens).transpose(0, 1))
        return self.head(out[-1])


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 16, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, batch_first=True,
                                           dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.encoder(self.embed(tokens), mask=mask, is_causal=True))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def with_random_head(model: nn.Module) -> nn.Module:
    # timm zero-initialises the Mixer head, so no gradient reaches any block on step 0.
    nn.init.normal_(model.head.weight, std=0.02)
    return model


def image_batch():
    return torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))


def image_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def lm_batch():
    return torch.randint(0, 30, (4, 12)), None


def lm_loss(model, batch):
    tokens, _ = batch
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), image_batch, image_loss),
    "vit": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4,
                                      num_classes=10), image_batch, image_loss),
    "mixer": (lambda: with_random_head(timm.models.mlp_mixer.MlpMixer(
        img_size=32, patch_size=8, num_blocks=4, embed_dim=32, num_classes=10)), image_batch, image_loss),
    "convnext": (lambda: timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                                       num_classes=10), image_batch, image_loss),
    "mlp": (mlp, lambda: (torch.randn(4, 10), torch.randint(0, 3, (4,))), image_loss),
    "transformer_lm": (TinyLM, lm_batch, lm_loss),
    "gru": (GRUClassifier, lambda: (torch.randint(0, 20, (4, 7)), torch.randint(0, 3, (4,))),
            image_loss),
}


def execution_order(model: nn.Module, batch, loss_fn) -> list[str]:
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
               for n, m in model.named_modules()]
    loss_fn(model, batch)
    for h in handles:
        h.remove()
    return order


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("name", list(CASES))
def test_capture_three_layers_in_depth_order(name):
    torch.manual_seed(0)
    build, make_batch, loss_fn = CASES[name]
    model = build()
    before = hook_count(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    frames, cap = capture_frames(model, opt, lambda _: loss_fn(model, make_batch()), 5,
                                 every=2, frame_size=S, stats=True)
    assert [f.step for f in frames] == [0, 2, 4]
    assert len(set(cap.layers)) == 3
    order = execution_order(model, make_batch(), loss_fn)
    positions = [order.index(n) for n in cap.layers]
    assert positions == sorted(positions), (cap.layers, positions)
    for f in frames:
        assert tuple(f.tensor.shape) == (6, S, S) and f.tensor.dtype == torch.bfloat16
        assert f.finite and torch.isfinite(f.tensor.float()).all()
        assert f.layers == cap.layers
        for i in range(3):
            assert f.stats[f"grad{i}_rms"] > 0, f"no gradient reached {cap.layers[i]}"
            assert f.stats[f"act{i}_rms"] > 0
    # Later frames are normalised against the first: gradient channels carry signal.
    assert frames[-1].tensor[3:].float().abs().sum() > 0
    assert hook_count(model) == before


def test_residual_adapters_hook_branch_before_skip():
    assert [p.name for p in candidate_layers(torchvision.models.resnet18())][0] == "layer1.0.bn2"
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4)
    assert [p.name for p in candidate_layers(vit)] == [f"blocks.{i}.attn" for i in range(4)]
    lm = TinyLM()
    assert [p.name for p in candidate_layers(lm)] == [f"encoder.layers.{i}.dropout1" for i in range(4)]


def test_explicit_layers_and_errors():
    model = mlp()
    with StateCapture(model, every=1, layers=["0", "2", "6"], frame_size=8) as cap:
        nn.functional.cross_entropy(model(torch.randn(3, 10)), torch.zeros(3, dtype=torch.long)).backward()
        assert cap.step() is not None
    assert cap.layers == ("0", "2", "6")
    with pytest.raises(ValueError, match="no module named"):
        StateCapture(model, layers=["0", "2", "nope"]).__enter__()
    with pytest.raises(ValueError, match="exactly 3"):
        StateCapture(model, layers=["0"])
    with pytest.raises(ValueError, match="capturable"):
        StateCapture(nn.Sequential(nn.BatchNorm1d(3))).__enter__()


def test_non_capture_steps_do_no_tensor_work(monkeypatch):
    import data_factory.capture as capture

    calls = []
    real = capture.summarise
    monkeypatch.setattr(capture, "summarise", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = mlp()
    calls_at_last_capture = 0
    with StateCapture(model, every=3, frame_size=8) as cap:
        for step in range(6):
            nn.functional.cross_entropy(model(torch.randn(3, 10)), torch.zeros(3, dtype=torch.long)).backward()
            n = len(calls)
            cap.step()
            if step in (1, 2, 4, 5):
                assert len(calls) == n == calls_at_last_capture
            else:  # capture steps 0 and 3 summarise in the hooks, before step() is called
                assert len(calls) > calls_at_last_capture
            calls_at_last_capture = len(calls)


def test_frame_produced_when_activations_blow_up():
    model = mlp()
    with torch.no_grad():
        model[0].weight.fill_(1e38)  # first layer output overflows to inf, later layers NaN
    with StateCapture(model, every=1, frame_size=8) as cap:
        out = model(torch.ones(3, 10))
        nn.functional.cross_entropy(out, torch.zeros(3, dtype=torch.long)).backward()
        frame = cap.step()
    assert frame is not None and not frame.finite
    assert torch.isfinite(frame.tensor.float()).all()
    assert frame.tensor.float().abs().max() == FrameEncoder().clip


def test_eval_passes_do_not_overwrite_training_capture():
    model = mlp()
    with StateCapture(model, every=1, frame_size=8, stats=True) as cap:
        x = torch.randn(3, 10)
        nn.functional.cross_entropy(model(x), torch.zeros(3, dtype=torch.long)).backward()
        with torch.no_grad():
            model(torch.full((3, 10), 1e6))
        frame = cap.step()
    assert frame.finite and frame.stats["act0_rms"] < 1e4


def test_state_dict_resumes_step_and_layers():
    model = mlp()
    with StateCapture(model, every=2, frame_size=8) as cap:
        for _ in range(3):
            nn.functional.cross_entropy(model(torch.randn(3, 10)), torch.zeros(3, dtype=torch.long)).backward()
            cap.step()
    state = cap.state_dict()
    resumed = StateCapture(model, every=2, frame_size=8)
    resumed.load_state_dict(state)
    with resumed:
        nn.functional.cross_entropy(model(torch.randn(3, 10)), torch.zeros(3, dtype=torch.long)).backward()
        assert resumed.step() is None  # step 3: not a capture step
        nn.functional.cross_entropy(model(torch.randn(3, 10)), torch.zeros(3, dtype=torch.long)).backward()
        frame = resumed.step()
    assert frame.step == 4 and resumed.layers == cap.layers


def test_pick_depths_and_layouts():
    assert pick_depths(4) == [1, 2, 3]
    assert pick_depths(100) == [25, 50, 75]
    assert pick_depths(2) == [0, 1, 1]
    with pytest.raises(ValueError):
        pick_depths(0)
    assert reduce_to_map(torch.ones(2, 64, 5)).shape == (8, 8)          # sequence
    assert reduce_to_map(torch.ones(2, 50, 5)).shape == (7, 7)          # 49 tokens + CLS
    assert reduce_to_map(torch.ones(2, 10)).shape == (4, 4)             # vector, padded
    assert reduce_to_map(torch.ones(12, 2, 5), batch_first=False).shape == (4, 4)
    m = reduce_to_map(torch.full((2, 3, 4, 4), 2.0))
    assert torch.allclose(m, torch.full((4, 4), math.log(2.0)), atol=1e-5)


def test_encoder_normalisation_is_causal_and_frozen():
    enc = FrameEncoder(frame_size=4, warmup=2)
    maps = [torch.randn(4, 4) for _ in range(6)]
    enc.encode_maps(maps)
    enc.encode_maps([m + 1 for m in maps])
    enc2 = FrameEncoder(frame_size=4, warmup=2)
    enc2.load_state_dict(enc.state_dict())
    probe, _ = enc.encode_maps(maps)
    assert enc.frozen  # warm-up over and, with no lone jump at the next capture, nothing wakes
    assert torch.equal(enc2.encode_maps(maps)[0], probe)
    assert torch.equal(enc.encode_maps(maps)[0], probe)


# -- issue 22: the normalisation reference is never degenerate ------------------------------------

def zero_layer_cnn() -> nn.Module:
    """A CNN whose middle conv is all zeros at init (a LoRA-B / zero-init adapter stand-in).
    GELU, not ReLU: ReLU'(0) = 0 would keep a zero layer dead for ever."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 3))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    return model


ZERO_INIT_MODELS = {
    # zero-initialised last BN of every block: dL/d(conv3) is exactly 0 on the first step
    "regnetx_002": lambda: timm.create_model("regnetx_002", num_classes=3, pretrained=False),
    # zero-initialised bn2: the hooked residual branch outputs exactly 0 on the first step
    "resnet18_zero_init_residual": lambda: torchvision.models.resnet18(num_classes=3,
                                                                       zero_init_residual=True),
    # layer scale 1e-6: the hooked branch is 1e-6 of its later size
    "convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=3, pretrained=False),
    "zero_layer_cnn": zero_layer_cnn,
}


@pytest.mark.parametrize("name", sorted(ZERO_INIT_MODELS))
def test_zero_init_models_do_not_saturate_against_their_reference(name):
    torch.manual_seed(0)
    model = ZERO_INIT_MODELS[name]()
    side = 16 if name == "zero_layer_cnn" else 32
    xs, ys = torch.randn(64, 3, side, side), torch.randint(0, 3, (64,))
    if name == "convnext_atto":  # its usual recipe; Adam's first step lifts the 1e-6 gain ~1000×
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_at(_: int) -> torch.Tensor:
        batch = torch.randint(0, 64, (8,))   # fresh mini-batches: a healthy run, not memorising
        return nn.functional.cross_entropy(model(xs[batch]), ys[batch])

    frames, _ = capture_frames(model, opt, loss_at, 12, every=2, frame_size=8)
    assert len(frames) == 6 and all(f.finite for f in frames)
    tensor = torch.stack([f.tensor.float() for f in frames])
    # Measured on the tensor itself, not on Frame.clipped, so the check means the same on any code.
    at_clip = (tensor.abs() >= FrameEncoder().clip).flatten(2).float().mean(dim=2)  # frames × 6
    assert at_clip[1:].max() <= 0.01, f"{name}: share at the clip per frame × channel {at_clip.tolist()}"
    for c in range(3, 6):
        assert (tensor[:, c] - tensor[0, c]).abs().max() > 0.1, f"{name}: grad channel {c} is constant"
    assert torch.allclose(torch.tensor([f.clipped for f in frames]), at_clip)


def test_silent_channel_waits_for_information_and_healthy_frames_are_unchanged():
    enc = FrameEncoder(frame_size=4)
    torch.manual_seed(0)
    maps = [torch.randn(4, 4) - 5 for _ in range(6)]
    zero = torch.full((4, 4), 1.5 * math.log(1e-12))   # the map of an all-zero tensor
    f0, _ = enc.encode_maps(maps[:3] + [zero] + maps[4:])
    assert torch.equal(f0[3], torch.zeros(4, 4, dtype=torch.bfloat16))  # no reference yet: 0
    assert enc.referenced == (True, True, True, False, True, True)
    f1, _ = enc.encode_maps(maps[:3] + [maps[3] - 10] + maps[4:])        # wakes 1e-4 × smaller
    assert enc.referenced == (True,) * 6
    assert float(f1[3].float().median()) == pytest.approx(0.0, abs=0.3)   # centred on itself
    # The channels that had a reference at the first capture read exactly as with a plain
    # first-capture reference (median, IQR/1.349 floored at 0.5).
    ref = torch.stack(maps)
    q = torch.quantile(ref.flatten(1), torch.tensor([0.25, 0.5, 0.75]), dim=1)
    expected = ((ref - q[1][:, None, None]) / ((q[2] - q[0]) / 1.349).clamp_min(0.5)[:, None, None])
    keep = [0, 1, 2, 4, 5]
    assert torch.equal(f1[keep], expected.clamp(-8, 8).to(torch.bfloat16)[keep])


def test_lone_jump_rebases_but_joint_divergence_saturates():
    torch.manual_seed(0)
    maps = [torch.randn(4, 4) for _ in range(6)]
    # Layer scale waking: act0 grows e^7 between the first two captures, grad0 stays.
    enc = FrameEncoder(frame_size=4)
    enc.encode_maps(maps)
    woke, _ = enc.encode_maps([maps[0] + 7] + maps[1:])
    assert woke.float().abs().max() < 8
    climbing, _ = enc.encode_maps([maps[0] + 7.5] + maps[1:])   # still climbing: followed
    assert climbing.float().abs().max() < 8 and not enc.frozen
    enc.encode_maps([maps[0] + 7.6] + maps[1:])                 # slowed down: frozen at +7.5
    assert enc.frozen
    q = torch.quantile(maps[0].flatten(), torch.tensor([0.25, 0.5, 0.75]))
    scale = max(0.5, float(q[2] - q[0]) / 1.349)
    later, _ = enc.encode_maps([maps[0] + 9.5] + maps[1:])     # +2 nats over the frozen reference
    assert torch.allclose(later[0].float(), ((maps[0] + 2 - q[1]) / scale).clamp(-8, 8), atol=0.05)
    # Divergence: act0 and grad0 jump together, the first reference stays and the frame saturates.
    enc = FrameEncoder(frame_size=4)
    enc.encode_maps(maps)
    diverged, _ = enc.encode_maps([maps[0] + 20] + maps[1:3] + [maps[3] + 20] + maps[4:])
    assert bool((diverged[[0, 3]].float() == 8).all())
    # A branch waking up while the loss drops (its gradient falls) is still a wake-up.
    enc = FrameEncoder(frame_size=4)
    enc.encode_maps(maps)
    woke, _ = enc.encode_maps([maps[0] + 7] + maps[1:3] + [maps[3] - 3] + maps[4:])
    assert woke[0].float().abs().max() < 8


def test_encoder_state_round_trips_and_reads_the_old_layout():
    enc = FrameEncoder(frame_size=4)
    zero = torch.full((4, 4), 1.5 * math.log(1e-12))
    maps = [torch.randn(4, 4) for _ in range(6)]
    enc.encode_maps(maps[:5] + [zero])
    again = FrameEncoder(frame_size=4)
    again.load_state_dict(json.loads(json.dumps(enc.state_dict())))
    assert torch.equal(again.encode_maps(maps)[0], enc.encode_maps(maps)[0])
    old = FrameEncoder(frame_size=4)
    old.load_state_dict({"history": [], "center": [0.0] * 6, "scale": [1.0] * 6})  # version 1
    assert old.frozen and torch.equal(old.encode_maps(maps)[0][0], maps[0].to(torch.bfloat16))


def test_encoder_rejects_bad_arguments():
    for kwargs, message in (({"clip": 0}, "clip must be > 0"), ({"min_scale": -1}, "min_scale"),
                            ({"wake_nats": 0}, "wake_nats"), ({"warmup": 0}, "warmup")):
        with pytest.raises(ValueError, match=message):
            FrameEncoder(**kwargs)


def test_waking_channel_shows_its_climb_even_as_a_single_pixel():
    # A stride-32 stage on a 32×32 input gives a 1×1 map; centred on itself it read exactly 0
    # in every frame while it climbed (regnetx_002's s4 gradient, issue 22).
    enc = FrameEncoder(frame_size=4)
    torch.manual_seed(0)
    maps = [torch.randn(4, 4) - 5 for _ in range(5)]
    zero = torch.full((4, 4), 1.5 * math.log(1e-12))
    enc.encode_maps(maps + [zero])                                   # silent: no reference
    first, _ = enc.encode_maps(maps + [torch.full((1, 1), -13.0)])   # wakes, centred: 0
    assert torch.equal(first[5], torch.zeros(4, 4, dtype=torch.bfloat16))
    for level in (-11.0, -9.0):                                      # climbs 2 nats a capture
        frame, _ = enc.encode_maps(maps + [torch.full((1, 1), level)])
        # Against the reference it climbed from, scale widened to rise/2: reads +2, not the clip.
        assert torch.equal(frame[5], torch.full((4, 4), 2.0, dtype=torch.bfloat16))
    frame, _ = enc.encode_maps(maps + [torch.full((1, 1), -9.1)])    # settles: frozen, centred
    assert abs(float(frame[5].float().mean())) <= 0.3
    assert enc.frozen
