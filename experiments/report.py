"""Writing measured results into ``docs/results.md``: each experiment owns one marked section,
replaced in place on every rerun, stamped with the command, seed, config and date.

Example:
    >>> import tempfile, pathlib
    >>> doc = pathlib.Path(tempfile.mkdtemp()) / "results.md"
    >>> _ = write_section("demo", "| a |\\n|---|\\n| 1 |", command="python -m x", path=doc)
    >>> "BEGIN demo" in doc.read_text()
    True
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
_HEADER = "# Measured results\n\nEvery section below is written by the command it names; rerun it to refresh.\n"


def provenance(command: str, **config: object) -> str:
    """One line naming how a result was produced."""
    cfg = ", ".join(f"{k}={v}" for k, v in config.items())
    host = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    date = _dt.date.today().isoformat()
    return f"_Command: `{command}`{'; ' + cfg if cfg else ''}; {host}; {date}._"


def write_section(name: str, body: str, command: str, path: str | os.PathLike[str] = RESULTS,
                  **config: object) -> Path:
    """Replace (or append) the section ``name`` of the results file with ``body``.

    Experiments often run side by side and each rewrites its own section: the read-modify-write
    holds an exclusive lock (``path.lock``) and replaces the file atomically, so two writers never
    lose each other's sections and a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n\n{provenance(command, **config)}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else _HEADER
        text = (pattern.sub(lambda _: block, text) if pattern.search(text)
                else text.rstrip() + "\n\n" + block + "\n")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` (creating its folder) and close it, so a
    report that draws many figures does not keep them all open. Returns ``path``.

    Example:
        >>> import tempfile, pathlib, matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> out = save_figure(plt.figure(), pathlib.Path(tempfile.mkdtemp()) / "a" / "f.png", dpi=50)
        >>> out.exists(), plt.get_fignums()
        (True, [])
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
