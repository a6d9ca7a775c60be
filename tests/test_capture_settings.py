"""StateCapture under the settings users actually train with (issue 22, point 2).

Each test trains a tiny model for a few steps under one setting and checks that frames come out,
are finite, have informative gradient channels, and (where a reference exists) match the plain
setting. The conventions the tests pin down are documented in ``docs/architecture.md``
("Capture under common training settings").
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import capture_frames
from torch import nn
from torch.utils.checkpoint import checkpoint

from data_factory.capture import StateCapture
from data_factory.frames import Frame


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def batch(seed: int = 0, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model: nn.Module, steps: int = 4, every: int = 1, forward=None, **capture) -> list[Frame]:
    """Plain SGD loop with capture; ``forward(model, x)`` overrides ``model(x)``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss_at(s: int) -> torch.Tensor:
        x, y = batch(s)
        out = forward(model, x) if forward else model(x)
        return nn.functional.cross_entropy(out.float(), y)

    return capture_frames(model, opt, loss_at, steps, every=every, frame_size=8, **capture)[0]


def assert_informative(frames: list[Frame], n: int, max_clipped: float = 0.01) -> None:
    assert len(frames) == n and all(f.finite for f in frames)
    stack = torch.stack([f.tensor.float() for f in frames])
    for c in range(6):  # every channel moves after the reference frame
        assert (stack[1:, c] - stack[0, c]).abs().max() > 0, f"channel {c} never changes"
    assert max(max(f.clipped) for f in frames[1:]) <= max_clipped


def test_reference_setting():
    frames = train(cnn())
    assert_informative(frames, 4)


# -- torch.compile --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [
    # Dynamo + AOT autograd without code generation: the same tracing of hooks as inductor,
    # in seconds. Inductor itself compiles C++ (minutes on a loaded 2-core machine): slow.
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.slow),
])
def test_compiled_model_is_captured_like_the_eager_one(backend):
    torch._dynamo.reset()
    eager = train(cnn())
    compiled = torch.compile(cnn(), backend=backend)
    frames = train(compiled)
    assert_informative(frames, 4)
    assert [f.layers for f in frames] == [tuple(f"_orig_mod.{n}" for n in eager[0].layers)] * 4
    for a, b in zip(eager, frames):
        assert torch.allclose(a.tensor.float(), b.tensor.float(), atol=0.1)


# -- DataParallel / DistributedDataParallel --------------------------------------------------------

def test_data_parallel_wrapper():
    eager = train(cnn())
    frames = train(nn.DataParallel(cnn()))
    assert [f.layers for f in frames] == [tuple(f"module.{n}" for n in eager[0].layers)] * 4
    for a, b in zip(eager, frames):
        assert torch.equal(a.tensor, b.tensor)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ddp = nn.parallel.DistributedDataParallel(cnn())
        frames = train(ddp, steps=3)
        torch.save({"layers": [f.layers for f in frames], "tensor": [f.tensor for f in frames],
                    "finite": [f.finite for f in frames], "clipped": [f.clipped for f in frames]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_gloo_two_processes(tmp_path):
    init_file = tempfile.mktemp(prefix="tevid-ddp-", dir=tmp_path)
    mp.spawn(_ddp_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for got in ranks:
        assert len(got["tensor"]) == 3 and all(got["finite"])
        assert got["layers"][0][0].startswith("module.")
        assert max(max(c) for c in got["clipped"][1:]) <= 0.01
    # Same data on both ranks and all-reduced gradients: both ranks film the same run.
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["tensor"], ranks[1]["tensor"]))


# -- precision and memory layout ------------------------------------------------------------------

def test_bf16_autocast_on_cpu():
    def forward(model, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    eager = train(cnn())
    frames = train(cnn(), forward=forward)
    assert_informative(frames, 4)
    for a, b in zip(eager, frames):  # bf16 rounding moves log-magnitudes by ~1e-2 nats
        assert (a.tensor.float() - b.tensor.float()).abs().mean() < 0.2


def test_channels_last():
    eager = train(cnn())
    model = cnn().to(memory_format=torch.channels_last)
    frames = train(model, forward=lambda m, x: m(x.to(memory_format=torch.channels_last)))
    for a, b in zip(eager, frames):
        assert torch.allclose(a.tensor.float(), b.tensor.float(), atol=0.05)


# -- activation checkpointing ---------------------------------------------------------------------

class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.net = cnn()
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, body, tail = self.net[:2], self.net[2:6], self.net[6:]
        x = head(x)
        if self.reentrant:  # the reentrant variant needs an input that requires grad
            x = checkpoint(body, x, use_reentrant=True)
        else:
            x = checkpoint(body, x, use_reentrant=False)
        return tail(x)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(reentrant):
    eager = train(cnn())
    frames = train(Checkpointed(reentrant))
    assert [f.layers for f in frames] == [tuple(f"net.{n}" for n in eager[0].layers)] * 4
    for a, b in zip(eager, frames):
        assert torch.allclose(a.tensor.float(), b.tensor.float(), atol=0.05)


# -- gradient accumulation ------------------------------------------------------------------------

def test_gradient_accumulation_captures_the_last_micro_batch():
    """Convention: ``step()`` once per optimizer step; its frame shows the step's last
    micro-batch (activation and gradient of the same micro-batch)."""
    model = cnn()
    before = copy.deepcopy(model)
    x, y = batch(0, n=8)
    with StateCapture(model, every=1, frame_size=8) as cap:
        for k in range(4):  # four micro-batches of 2
            loss = nn.functional.cross_entropy(model(x[2 * k:2 * k + 2]), y[2 * k:2 * k + 2]) / 4
            loss.backward()
        accumulated = cap.step()
    with StateCapture(before, every=1, frame_size=8) as cap:
        (nn.functional.cross_entropy(before(x[6:]), y[6:]) / 4).backward()
        last_only = cap.step()
    assert accumulated.layers == last_only.layers
    assert torch.equal(accumulated.tensor, last_only.tensor)


# -- structured outputs ---------------------------------------------------------------------------

@dataclasses.dataclass
class BlockOutput:
    mask: None
    hidden: torch.Tensor


class DictBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {"aux": None, "hidden": torch.tanh(self.lin(x))}


class TupleBlock(DictBlock):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.lin(x))
        return h, h.detach().mean()


class DataclassBlock(DictBlock):
    def forward(self, x: torch.Tensor) -> BlockOutput:
        return BlockOutput(mask=None, hidden=torch.tanh(self.lin(x)))


class Structured(nn.Module):
    """Three blocks returning a dict, a tuple and a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([DictBlock(6, 8), TupleBlock(8, 8), DataclassBlock(8, 8)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x)["hidden"]
        h, _ = self.blocks[1](h)
        return self.head(self.blocks[2](h).hidden)


def test_dict_tuple_and_dataclass_outputs():
    torch.manual_seed(0)
    model = Structured()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    frames = []
    with StateCapture(model, every=1, frame_size=8, layers=["blocks.0", "blocks.1", "blocks.2"]) as cap:
        for s in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(5, 6)), torch.zeros(5, dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            frames.append(cap.step())
            opt.step()
    assert_informative(frames, 3)


# -- frozen layers and parameter-free blocks ------------------------------------------------------

def test_layers_frozen_for_the_first_steps_read_zero_then_join_without_saturating():
    model = cnn()
    for p in model[:5].parameters():  # the first three convs frozen: no gradient reaches them
        p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    frames = []
    with StateCapture(model, every=1, frame_size=8, layers=["0", "2", "6"]) as cap:
        for s in range(6):
            if s == 3:  # unfreeze, as fine-tuning schedules do after a few epochs
                for p in model.parameters():
                    p.requires_grad_(True)
                opt = torch.optim.SGD(model.parameters(), lr=0.05)
            x, y = batch(s)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            frames.append(cap.step())
            opt.step()
    grad0 = torch.stack([f.tensor[3].float() for f in frames])
    assert grad0[:3].abs().max() == 0          # no gradient yet: no reference, reads 0
    assert grad0[3:].abs().max() > 0          # then it carries information ...
    assert max(max(f.clipped) for f in frames) <= 0.01   # ... without saturating against a void


def test_parameter_free_blocks_can_be_named():
    frames = train(cnn(), layers=["1", "5", "7"])   # ReLUs: no parameters of their own
    assert_informative(frames, 4)
    assert frames[0].layers == ("1", "5", "7")


def test_two_layer_mlp_counts_its_activation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3))
    frames = train(model)               # two Linear layers: the ReLU between them is the middle
    assert frames[0].layers == ("1", "2", "3")
    # a 16-unit layer's map has 16 pixels, so one pixel past the clip is already 6 %
    assert_informative(frames, 4, max_clipped=0.2)


class GRUClassifier(nn.Module):
    """A GRU reading each image as 64 steps of 3 features: only two leaves, both with weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(3, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(2).transpose(1, 2))
        return self.head(out[:, -1])


def test_fewer_than_three_leaves_repeat_a_layer_and_say_so(caplog):
    with caplog.at_level("WARNING", logger="data_factory.capture"):
        frames = train(GRUClassifier())
    assert frames[0].layers == ("rnn", "head", "head")
    assert "runs only 2 capturable layers" in caplog.text
    stack = torch.stack([f.tensor.float() for f in frames])
    moved = (stack[1:] - stack[:1]).abs().flatten(2).amax(dim=(0, 2))
    # Every channel moves but the GRU's gradient: the head reads only the last time step, so
    # dL/d(output) is 0 at 63 of 64 positions and the map has no spread to normalise against.
    assert moved[[0, 1, 2, 4, 5]].min() > 0 and moved[3] == 0
    assert torch.equal(stack[:, 1], stack[:, 2]) and torch.equal(stack[:, 4], stack[:, 5])


def test_a_model_without_capturable_leaves_is_a_clear_error():
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"no capturable layers .*pass layers=\[three module names\]"):
        StateCapture(model).__enter__()


