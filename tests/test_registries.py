"""Registries of the data factory: architectures, data sets, optimizers, shortcut helpers and the
torchvision loader (on small files written in torchvision's own on-disk formats)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data_factory.architectures import ARCHITECTURES, ArchSpec, build_model, small_cnn
from data_factory.capture import StateCapture
from data_factory.datasets import (
    DATASETS,
    TEXT_FILES,
    TEXT_VOCAB_SIZE,
    TensorData,
    _text_windows,
    add_tabular_shortcut,
    add_watermark,
    decode_text,
    digits,
    encode_text,
    load_dataset,
    shapes,
    torchvision_dataset,
)
from data_factory.optimizers import OPTIMIZERS, build_optimizer

IMAGE_SHAPE = (3, 16, 16)
TEXT_LEN = 32


@pytest.fixture(autouse=True)
def _one_thread():
    # timings and results must not depend on how many cores the test machine lends us
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(spec: ArchSpec, n: int = 4, num_classes: int = 10
           ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A freshly built model of ``spec`` and a random batch of its modality."""
    torch.manual_seed(0)
    if spec.modality == "text":
        model = build_model(spec.name, (TEXT_LEN,), TEXT_VOCAB_SIZE)
        x = torch.randint(0, TEXT_VOCAB_SIZE, (n, TEXT_LEN))
        return model, x, torch.randint(0, TEXT_VOCAB_SIZE, (n, TEXT_LEN))
    shape = (32,) if spec.modality == "tabular" else IMAGE_SHAPE
    model = build_model(spec.name, shape, num_classes)
    return model, torch.randn(n, *shape), torch.randint(0, num_classes, (n,))


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# -- architectures ------------------------------------------------------------------------------

def test_registry_covers_the_families():
    families = {spec.family for spec in ARCHITECTURES.values()}
    assert len(families) >= 10
    assert {"cnn", "resnet", "densenet", "mobilenet", "convnext", "regnet", "vit", "deit", "mixer",
            "swin", "mlp", "transformer_lm", "gru_lm"} <= set(ARCHITECTURES)
    assert {spec.modality for spec in ARCHITECTURES.values()} == {"image", "tabular", "text"}
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_trains_and_is_capturable(name):
    spec = ARCHITECTURES[name]
    model, x, y = _batch(spec)
    logits = model(x)
    expected = (len(x), TEXT_LEN, TEXT_VOCAB_SIZE) if spec.modality == "text" else (len(x), 10)
    assert tuple(logits.shape) == expected

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with StateCapture(model, every=1, frame_size=8, stats=True) as cap:
        loss = _loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        frame = cap.step()
        opt.step()
    assert torch.isfinite(loss)
    assert len(cap.layers) == 3 and len(set(cap.layers)) == 3
    assert frame is not None and frame.finite and tuple(frame.tensor.shape) == (6, 8, 8)
    for i in range(3):  # raw magnitudes: the frame itself is normalised against its own run
        assert frame.stats[f"grad{i}_rms"] > 0, (name, cap.layers[i])
        assert frame.stats[f"act{i}_rms"] > 0, (name, cap.layers[i])


def test_residual_families_hook_the_residual_branch():
    # known block types must be picked up by capture's adapters, not the generic fallback
    expected = {"resnet": ".bn2", "convnext": ".drop_path", "vit": ".attn", "deit": ".attn",
                "mixer": ".mlp_channels", "transformer_lm": ".dropout1"}
    for name, suffix in expected.items():
        model, x, y = _batch(ARCHITECTURES[name])
        with StateCapture(model, every=1, frame_size=8) as cap:
            _loss(model(x), y).backward()
            cap.step()
        assert all(layer.endswith(suffix) for layer in cap.layers), (name, cap.layers)


@pytest.mark.parametrize("name", sorted(n for n, s in ARCHITECTURES.items() if s.modality == "text"))
def test_language_models_are_causal(name):
    model = build_model(name, (TEXT_LEN,), TEXT_VOCAB_SIZE).eval()
    x = torch.randint(1, TEXT_VOCAB_SIZE, (2, TEXT_LEN))
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 7) % TEXT_VOCAB_SIZE
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_build_model_errors_are_clear():
    with pytest.raises(KeyError, match="choose from .*resnet"):
        build_model("resnet9000", IMAGE_SHAPE, 10)
    with pytest.raises(ValueError, match="square image"):
        build_model("vit", (32,), 10)
    with pytest.raises(ValueError, match="token input_shape"):
        build_model("transformer_lm", IMAGE_SHAPE, 10)


def test_mlp_reads_images_and_small_cnn_is_kept():
    assert build_model("mlp", IMAGE_SHAPE, 7)(torch.randn(2, *IMAGE_SHAPE)).shape == (2, 7)
    assert small_cnn(in_channels=1, num_classes=10)(torch.randn(2, 1, 16, 16)).shape == (2, 10)


# -- data sets ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded() -> dict[str, TensorData]:
    return {name: load_dataset(name, seed=0) for name in DATASETS}


def _parts(data: TensorData) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_contract(name, loaded):
    data, modality = loaded[name], DATASETS[name].modality
    assert data.name == name
    assert 1000 <= len(data.x_train) <= 1500
    assert 300 <= len(data.x_val) <= 500 and 300 <= len(data.x_test) <= 500
    for x, y in _parts(data):
        assert len(x) == len(y) and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
        if modality == "image":
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == IMAGE_SHAPE
        elif modality == "tabular":
            assert x.dtype == torch.float32 and x.dim() == 2 and 24 <= x.shape[1] <= 40
        else:
            assert x.dtype == torch.long and tuple(x.shape[1:]) == (TEXT_LEN,)
            assert y.shape == x.shape
            assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    if modality != "text":
        assert data.num_classes == 10
        assert abs(float(data.x_train.mean())) < 0.05 and abs(float(data.x_train.std()) - 1) < 0.05
        assert len(torch.unique(data.y_train)) == 10
        # disjoint splits: no example occurs in two of them
        rows = [x.reshape(len(x), -1) for x, _ in _parts(data)]
        assert not (torch.cdist(rows[0], rows[2]) < 1e-6).any()
        assert not (torch.cdist(rows[0], rows[1]) < 1e-6).any()
    else:
        assert data.num_classes <= 100
        assert data.num_classes == TEXT_VOCAB_SIZE or name != "text"


def test_markov_sequences_follow_one_sparse_order2_chain(loaded):
    """Every pair of tokens allows at most ``branching`` successors, the same ones in every split
    (one task, three samples), and the pairs carry real information about the next token."""
    data = loaded["markov"]
    successors: dict[tuple[int, int], set[int]] = {}
    for x, y in _parts(data):
        seq = torch.cat([x, y[:, -1:]], dim=1).tolist()
        for row in seq:
            for a, b, c in zip(row, row[1:], row[2:]):
                successors.setdefault((a, b), set()).add(c)
    assert max(len(v) for v in successors.values()) <= 4
    assert len(successors) > 0.5 * data.num_classes ** 2   # most pairs occur
    # The pair predicts the next token far better than chance.
    counts: dict[tuple[int, int], dict[int, int]] = {}
    for row in torch.cat([data.x_train, data.y_train[:, -1:]], dim=1).tolist():
        for a, b, c in zip(row, row[1:], row[2:]):
            counts.setdefault((a, b), {}).setdefault(c, 0)
            counts[(a, b)][c] += 1
    val = torch.cat([data.x_val, data.y_val[:, -1:]], dim=1).tolist()
    hits = [c == max(counts.get((a, b), {-1: 1}).items(), key=lambda kv: kv[1])[0]
            for row in val for a, b, c in zip(row, row[1:], row[2:])]
    assert sum(hits) / len(hits) > 5 / data.num_classes


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_is_deterministic_by_seed(name, loaded):
    again, other = load_dataset(name, seed=0), load_dataset(name, seed=1)
    for (x0, y0), (x1, y1) in zip(_parts(loaded[name]), _parts(again)):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(loaded[name].x_train, other.x_train)


def test_text_regions_are_disjoint():
    parts = _text_windows(0, TEXT_LEN, (1200, 400, 400), None, TEXT_FILES, (0.7, 0.15))
    span = TEXT_LEN + 1
    covered = [set() for _ in parts]
    for i, (_, starts) in enumerate(parts):
        for s in starts.tolist():
            covered[i].update(range(s, s + span))
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not covered[a] & covered[b]
    data = load_dataset("text", seed=0)
    assert torch.equal(parts[2][0][:, :-1], data.x_test)
    assert decode_text(encode_text("def f(x):\n    return x")) == "def f(x):\n    return x"


def test_digits_stays_backwards_compatible():
    grey, rgb = digits(seed=0), digits(seed=0, channels=3)
    assert tuple(grey.x_train.shape[1:]) == (1, 16, 16)
    assert torch.equal(rgb.x_train, grey.x_train.expand(-1, 3, -1, -1))
    assert torch.equal(grey.y_train, load_dataset("digits", seed=0).y_train)


def test_shapes_difficulty_and_speed():
    import time

    start = time.perf_counter()
    data = shapes(seed=0, n_train=3000, n_val=0, n_test=0)
    elapsed = time.perf_counter() - start
    assert len(data.x_train) == 3000
    assert elapsed < 5.0  # ~0.2 s here; a generous bound that still catches a per-image loop
    easy = shapes(seed=0, n_train=200, n_val=10, n_test=10, difficulty=0.0, clutter=0.0)
    hard = shapes(seed=0, n_train=200, n_val=10, n_test=10, difficulty=1.0)
    assert not torch.equal(easy.x_train, hard.x_train)


def test_cnn_learns_shapes_quickly(loaded):
    data = loaded["shapes"]
    torch.manual_seed(0)
    model = build_model("cnn", IMAGE_SHAPE, data.num_classes)
    opt = build_optimizer("adamw", model.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = _loss(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert accuracy > 0.3, accuracy  # chance is 0.1


# -- optimizers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_steps_and_exposes_state(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(64, 32), torch.randint(0, 3, (64,))
    opt = build_optimizer(name, model.parameters(), weight_decay=1e-4)
    assert opt.param_groups[0]["lr"] == OPTIMIZERS[name].reference_lr > 0
    losses = []
    for _ in range(30):
        loss = _loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    tensors = [v for state in opt.state.values() for v in state.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    assert build_optimizer(name, model.parameters(), lr=0.123).param_groups[0]["lr"] == 0.123


def test_optimizer_registry_errors_and_roles():
    assert {"adamw", "sgd", "lion", "adafactor"} <= set(OPTIMIZERS)
    sgd = build_optimizer("sgd", [nn.Parameter(torch.ones(2))])
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    with pytest.raises(KeyError, match="choose from"):
        build_optimizer("adam9000", [nn.Parameter(torch.ones(2))])


# -- shortcuts ----------------------------------------------------------------------------------

def test_watermark_is_pure_and_class_positioned():
    x = torch.zeros(10, 3, 16, 16)
    out = add_watermark(x, torch.arange(10), strength=1.0)
    assert x.abs().sum() == 0  # input untouched
    masks = out.abs().sum(1) > 0
    assert (masks.sum((1, 2)) == 4).all()  # one 2×2 patch per image
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) == 10  # ten distinct positions
    assert not (masks[:, None] & masks[None]).sum((2, 3)).fill_diagonal_(0).any()  # never overlap
    assert torch.equal(add_watermark(x, torch.arange(10), strength=0.0), x)
    half = add_watermark(torch.ones(1, 3, 16, 16), torch.tensor([3]), strength=0.5, value=3.0)
    assert half.max() == 2.0
    big = add_watermark(torch.zeros(2, 3, 32, 32), torch.tensor([2, 7]))
    assert int((big.abs().sum(1) > 0).sum()) == 8


def test_tabular_shortcut_leaks_the_key():
    x = torch.randn(20, 32)
    key = torch.arange(20) % 10
    out = add_tabular_shortcut(x, key, strength=1.0)
    assert torch.equal(out[:, :-1], x[:, :-1]) and not torch.equal(out, x)
    order = out[:10, -1]
    assert (order[1:] > order[:-1]).all()  # a monotone code: a linear readout recovers the key
    assert torch.equal(add_tabular_shortcut(x, key, strength=0.0), x)


# -- torchvision loader -------------------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    # MNIST's IDX format: magic (0, 0, dtype=0x08 ubyte, ndim), big-endian dims, raw bytes
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_loader_reads_mnist_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = torchvision_dataset("MNIST", tmp_path, n_train=30, n_val=10, n_test=10)
    assert tuple(data.x_train.shape) == (30, 3, 16, 16) and data.x_train.dtype == torch.float32
    assert len(data.x_val) == 10 and len(data.x_test) == 10 and data.num_classes == 10
    assert abs(float(data.x_train.mean())) < 1e-4
    test_split = torchvision_dataset("mnist", tmp_path, train=False, n_train=10, n_val=5, n_test=5)
    assert len(test_split.x_train) == 10


def test_torchvision_loader_reads_cifar_batches(tmp_path, monkeypatch):
    import torchvision

    # torchvision verifies the md5 of the real CIFAR files: keep only its existence check;
    # everything else (folder, pickled batches, meta file) is the real on-disk format
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: Path(fpath).is_file())
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "labels": list(range(8))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    data = torchvision_dataset("cifar10", tmp_path, n_train=24, n_val=8, n_test=8, channels=3)
    assert tuple(data.x_train.shape) == (24, 3, 16, 16) and data.num_classes == 10


def test_torchvision_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found under"):
        torchvision_dataset("cifar10", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="download=False"):
        torchvision_dataset("mnist", tmp_path)  # root exists, files do not
    with pytest.raises(KeyError, match="choose from"):
        torchvision_dataset("imagenet", tmp_path)
    with pytest.raises(KeyError, match="choose from"):
        load_dataset("nope")
