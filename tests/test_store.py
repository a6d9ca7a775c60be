"""RunStore: round trip, atomic publication, errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_factory.frames import Frame
from data_factory.store import RunStore, RunStoreError, load_run


def frame(step: int, finite: bool = True) -> Frame:
    return Frame(torch.randn(6, 8, 8).to(torch.bfloat16), step=step, epoch=step // 10,
                 layers=("a", "b", "c"), finite=finite, stats={"act0_rms": float(step)})


def write(store: RunStore, run_id: str = "r1", n: int = 3):
    frames = [frame(10 * i, finite=i < n - 1) for i in range(n)]
    with store.create(run_id, {"arch": "cnn", "seed": np.int64(3)}) as w:
        for f in frames:
            w.add_frame(f)
            w.log_step(step=f.step, epoch=f.epoch, loss=1.0 / (f.step + 1))
        w.log_epoch(epoch=0, val_acc=0.5)
        w.add_array("probe_correct", np.array([True, False, True]))
    return frames


def test_round_trip(tmp_path):
    store = RunStore(tmp_path)
    frames = write(store)
    run = store.load("r1")
    assert run.meta["arch"] == "cnn" and run.meta["seed"] == 3 and run.meta["complete"]
    assert len(run) == 3 and run.frames.layers == ["a", "b", "c"]
    assert torch.equal(run.frames.tensor[1], frames[1].tensor)
    again = run.frames[2]
    assert again.step == 20 and again.epoch == 2 and not again.finite and again.stats["act0_rms"] == 20.0
    assert list(run.steps.columns) == ["step", "epoch", "loss"]
    assert run.arrays["probe_correct"].tolist() == [True, False, True]
    assert store.list() == ["r1"] and "r1" in store and len(store) == 1


def test_crash_leaves_no_run(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with store.create("r1", {}) as w:
            w.add_frame(frame(0))
            1 / 0
    assert store.list() == [] and list(tmp_path.iterdir()) == []


def test_existing_run_needs_overwrite(tmp_path):
    store = RunStore(tmp_path)
    write(store)
    with pytest.raises(FileExistsError):
        write(store)
    with store.create("r1", {"arch": "new"}, overwrite=True):
        pass
    assert store.load("r1").meta["arch"] == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["r1"]


def test_errors_name_the_file(tmp_path):
    store = RunStore(tmp_path)
    write(store)
    (tmp_path / "r1" / "frames.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match="frames.safetensors"):
        store.load("r1").frames
    (tmp_path / "r1" / "steps.csv").unlink()
    with pytest.raises(RunStoreError, match="steps.csv"):
        store.load("r1")
    (tmp_path / "r1" / "meta.json").write_text("{not json")
    with pytest.raises(RunStoreError, match="meta.json"):
        store.load("r1")
    with pytest.raises(RunStoreError, match="no run directory"):
        load_run(tmp_path / "absent")


def test_bad_input(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError):
        store.create("../escape", {})
    with store.create("r2", {}) as w:
        w.add_frame(frame(0))
        with pytest.raises(ValueError, match="differs"):
            w.add_frame(Frame(torch.zeros(6, 4, 4, dtype=torch.bfloat16), step=1))
        with pytest.raises(ValueError, match="step"):
            w.log_step(loss=1.0)


def test_clipped_share_round_trips_and_is_recomputed_for_old_runs(tmp_path):
    from safetensors.torch import load_file, save_file

    tensor = torch.zeros(6, 4, 4, dtype=torch.bfloat16)
    tensor[3, :2] = 8.0                                   # half of grad0 at the clip
    store = RunStore(tmp_path)
    with store.create("r", {}) as w:
        w.add_frame(Frame(tensor, step=0, clipped=(0.0, 0.0, 0.0, 0.5, 0.0, 0.0)))
        w.add_frame(Frame(tensor, step=1))                # built by hand: measured at ±8
    frames = store.load("r").frames
    assert frames.clipped.tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 0.0]] * 2
    assert frames[1].clipped == (0.0, 0.0, 0.0, 0.5, 0.0, 0.0)
    # A run written before `clipped` existed: read back, recomputed from the frames.
    path = tmp_path / "r" / "frames.safetensors"
    data = load_file(str(path))
    del data["clipped"]
    save_file(data, str(path), metadata={"stat_names": "[]", "layers": "[]"})
    assert load_run(tmp_path / "r").frames.clipped.tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 0.0]] * 2
