"""The Hydra command line the experiments share: their configuration folder, a ``--quick``
shorthand for ``quick=true``, and SIGTERM handled as Ctrl-C (:func:`sigterm_as_interrupt`).

Example:
    >>> command, args = hydra_args(["--quick", "seed=1"], "python -m experiments.x")
    >>> command, args
    ('python -m experiments.x --quick seed=1', ['quick=true', 'seed=1'])
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig

#: The experiments' Hydra configurations (``conf/<name>.yaml``).
CONF = Path(__file__).resolve().parent / "conf"


def hydra_args(argv: Sequence[str] | None, command: str) -> tuple[str, list[str]]:
    """``(the command line as typed, Hydra's arguments)`` for ``argv`` (``None``: ``sys.argv``);
    ``--quick`` becomes ``quick=true``."""
    args = list(sys.argv[1:] if argv is None else argv)
    line = " ".join([command, *args])
    return line, ["quick=true" if a == "--quick" else a for a in args]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` as Ctrl-C does.

    Python's default SIGTERM handler ends the process at once: no ``finally`` runs, so the
    spawn workers of a ``ProcessPoolExecutor`` outlive it and keep training (seen with
    ``python -m experiments.hpo_benchmark workers=2`` under ``timeout``). As an interrupt, every
    pool's shutdown runs: finished work is on disk, queued work is dropped, the workers exit.
    Outside the main thread (where signals cannot be handled) it does nothing.

    Example:
        >>> import os, signal
        >>> with sigterm_as_interrupt():
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...     except KeyboardInterrupt:
        ...         print("interrupted")
        interrupted
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_hydra(config_name: str, command: str, argv: Sequence[str] | None,
              run: Callable[[DictConfig, str, list[str]], None]) -> None:
    """Run ``run(cfg, command line, Hydra arguments)`` under ``hydra.main`` with
    ``conf/<config_name>.yaml`` and the arguments of :func:`hydra_args`.

    The configuration names its Hydra job (``hydra.job.name``): Hydra would otherwise name it
    after this file.
    """
    import hydra

    line, args = hydra_args(argv, command)
    sys.argv = [sys.argv[0], *args]

    @hydra.main(config_path=str(CONF), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        with sigterm_as_interrupt():
            run(cfg, line, args)

    _main()
