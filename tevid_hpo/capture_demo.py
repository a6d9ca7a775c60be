"""A two-run capture demo: the same small CNN trained on digits with a sane and a diverging
learning rate, captured with :class:`~data_factory.capture.StateCapture`, stored with
:class:`~data_factory.store.RunStore` and rendered as PNG strips.

Example:
    >>> import tempfile
    >>> paths = run_capture_demo(tempfile.mkdtemp(), epochs=1, quiet=True)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from data_factory.architectures import small_cnn
from data_factory.capture import StateCapture
from data_factory.datasets import digits
from data_factory.store import RunStore
from tevid_hpo.render import render_strip

#: name → (optimizer, learning rate); SGD at lr 20 blows the loss up within the first epoch.
DEMO_RUNS: dict[str, tuple[str, float]] = {"healthy-adam-lr3e-3": ("adam", 3e-3),
                                           "diverging-sgd-lr20": ("sgd", 20.0)}


def run_capture_demo(out_dir: str | Path = "tevid_runs/capture-demo", epochs: int = 6,
                     every: int = 5, frame_size: int = 32, seed: int = 0,
                     quiet: bool = False) -> list[Path]:
    """Train, capture, store and render the demo runs; returns the PNG paths."""
    out_dir = Path(out_dir)
    store = RunStore(out_dir / "runs")
    data = digits(image_size=16, seed=seed)
    pngs = []
    for name, (optimizer, lr) in DEMO_RUNS.items():
        torch.manual_seed(seed)
        model = small_cnn(in_channels=1, num_classes=10)
        opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
               else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
        n = len(data.x_train)
        batch = 64
        meta = {"arch": "small_cnn", "dataset": "digits", "optimizer": optimizer, "lr": lr, "seed": seed}
        start = time.perf_counter()
        with store.create(name, meta, overwrite=True) as writer, \
                StateCapture(model, every=every, frame_size=frame_size) as cap:
            bar = tqdm(total=epochs * ((n + batch - 1) // batch), desc=name, disable=quiet)
            for epoch in range(epochs):
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
                for i in range(0, n, batch):
                    idx = perm[i:i + batch]
                    loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    step = cap.step_count
                    frame = cap.step(epoch=epoch)
                    if frame is not None:
                        writer.add_frame(frame)
                    writer.log_step(step=step, epoch=epoch, loss=loss.item())
                    opt.step()
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.3g}")
                with torch.no_grad():
                    val_acc = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
                writer.log_epoch(epoch=epoch, val_acc=val_acc)
            bar.close()
            writer.update_meta(layers=list(cap.layers), seconds=time.perf_counter() - start)
        run = store.load(name)
        png = render_strip(list(run.frames), out_dir / f"{name}.png",
                           title=f"{name}: {len(run)} frames, final val acc {val_acc:.2f}")
        pngs.append(png)
        if not quiet:
            finite = int(run.frames.finite.sum())
            print(f"{name:>16}: {len(run)} frames ({finite} finite), layers {list(cap.layers)}, "
                  f"val acc {val_acc:.3f} -> {png}")
    return pngs
