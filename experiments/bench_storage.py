"""Storage cost of tevid-hpo at scale: what ``TrialMonitor`` and ``TEViDPruner`` cost an Optuna
RDB storage (PostgreSQL) per trial epoch, measured with several worker processes.

Each worker (multiprocessing ``spawn``) loads one study from an ``RDBStorage`` with a heartbeat
and trains the digits CNN under a ``TrialMonitor``, reporting and calling ``should_prune()`` once
per epoch. An SQLAlchemy ``before_cursor_execute`` listener on the worker's engine counts every
SQL statement and the bytes of its bound parameters, attributed to what was running on the
training thread when it was issued — the monitor (``step``/``epoch_end``/the ``with`` block's
exit), ``trial.report``, ``trial.should_prune`` (the pruner), Optuna's own ask/tell — or to
another thread (the heartbeat). On the server, ``pg_stat_database`` (commits, rows written) and
the WAL position give what PostgreSQL wrote for the whole run.

By design the monitor writes its trial attribute (one statement batch) at each ``epoch_end``,
on its first confirmed alert of each label, every ``sync_every`` diagnoses within an epoch and at
the end of the ``with`` block, never per step: the table shows the cost per epoch and per
``should_prune()`` call, which do not grow with the steps per epoch.

    python -m experiments.bench_storage [--workers 4] [--trials 12] [--epochs 3]
                                        [--steps 34] [--url postgresql://...] [--no-write]

Without ``--url`` it starts a throwaway PostgreSQL server (``experiments/postgres_server.py``: needs
the server binaries, e.g. ``apt-get install postgresql``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from experiments.postgres_server import one_omp_thread_in_children

__all__ = ["PhaseCounter", "StorageCost", "main", "measure"]

_PHASES = ("monitor", "report", "should_prune", "optuna", "heartbeat")


class PhaseCounter:
    """Count SQL statements and bound-parameter bytes per phase of the training thread.

    ``attach(engine)`` installs the listener; ``with counter.phase("report"): ...`` attributes
    what the current thread issues inside the block; statements from other threads land in
    ``other`` (in a worker: the heartbeat), the rest of the training thread in ``default``.

    Example:
        >>> import sqlalchemy
        >>> engine = sqlalchemy.create_engine("sqlite://")
        >>> counter = PhaseCounter(default="optuna", other="heartbeat").attach(engine)
        >>> with engine.connect() as conn, counter.phase("report"):
        ...     _ = conn.execute(sqlalchemy.text("SELECT :x"), {"x": "abcd"})
        >>> counter.statements["report"], counter.writes["report"], counter.bytes["report"]
        (1, 0, 4)
    """

    def __init__(self, default: str = "optuna", other: str = "heartbeat") -> None:
        self.default, self.other = default, other
        self.statements: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()   # INSERT / UPDATE / DELETE
        self.bytes: Counter[str] = Counter()
        self._owner = threading.get_ident()
        self._local = threading.local()

    def attach(self, engine: Any) -> PhaseCounter:
        """Listen to ``engine`` (an SQLAlchemy engine); returns ``self``."""
        import sqlalchemy

        sqlalchemy.event.listen(engine, "before_cursor_execute", self._on_execute)
        return self

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute this thread's statements inside the block to ``name``."""
        previous = getattr(self._local, "name", None)
        self._local.name = name
        try:
            yield
        finally:
            self._local.name = previous

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        name = getattr(self._local, "name", None)
        if name is None:
            name = self.default if threading.get_ident() == self._owner else self.other
        self.statements[name] += 1
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.writes[name] += 1
        self.bytes[name] += _param_bytes(parameters)


def _param_bytes(parameters: Any) -> int:
    """Bytes of the bound values (strings/bytes by length, numbers as 8)."""
    if parameters is None:
        return 0
    if isinstance(parameters, dict):
        values = parameters.values()
    elif isinstance(parameters, (list, tuple)) and parameters and isinstance(
            parameters[0], (dict, list, tuple)):
        return sum(_param_bytes(p) for p in parameters)
    else:
        values = parameters
    total = 0
    for v in values:
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v.encode() if isinstance(v, str) else v)
        elif v is not None:
            total += 8
    return total


@dataclass
class StorageCost:
    """What a run cost the storage, in total and per unit.

    Attributes:
        workers, trials, epochs, steps_per_epoch: the workload.
        statements, writes, param_bytes: per phase (``monitor``, ``report``, ``should_prune``,
            ``optuna``, ``heartbeat``), summed over workers.
        reports: ``trial.report`` calls (= ``should_prune`` calls = trial epochs run).
        server: PostgreSQL's own counters for the run (``xact_commit``, ``tup_inserted``,
            ``tup_updated``, ``wal_bytes``), or empty if unavailable.
        seconds: wall time of the workers.
    """

    workers: int
    trials: int
    epochs: int
    steps_per_epoch: int
    statements: dict[str, int]
    writes: dict[str, int]
    param_bytes: dict[str, int]
    reports: int
    server: dict[str, int]
    seconds: float

    def per_epoch(self, phase: str) -> tuple[float, float, float]:
        """(statements, writes, parameter bytes) of ``phase`` per trial epoch (= per
        ``should_prune()`` call)."""
        n = max(self.reports, 1)
        return (self.statements.get(phase, 0) / n, self.writes.get(phase, 0) / n,
                self.param_bytes.get(phase, 0) / n)


# ----------------------------------------------------------------------------- worker
def _worker(url: str, study_name: str, n_trials: int, epochs: int, steps: int, out: str,
            barrier: Any) -> None:
    import optuna
    import torch
    from torch import nn

    from data_factory.architectures import small_cnn
    from data_factory.datasets import digits
    from tevid_hpo.diagnostician import Diagnostician
    from tevid_hpo.monitor import TrialMonitor
    from tevid_hpo.pruners import TEViDPruner

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                         heartbeat_interval=1, grace_period=10)
    counter = PhaseCounter().attach(storage.engine)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=TEViDPruner(
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # untrained weights: writes cost the same
        diag = Diagnostician.from_pretrained("tiny", device="cpu")
    data = digits(image_size=16, seed=0)
    reports = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal reports
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        torch.manual_seed(trial.number)
        model = small_cnn(in_channels=1, num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, y = data.x_train, data.y_train
        acc = 0.0
        mon = TrialMonitor(model, trial, diagnostician=diag)
        with counter.phase("monitor"):
            mon.__enter__()
        try:
            for epoch in range(epochs):
                for k in range(steps):
                    i = (k * 32) % (len(x) - 32)
                    loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
                    opt.zero_grad()
                    loss.backward()
                    with counter.phase("monitor"):
                        mon.step(loss=loss.item())
                    opt.step()
                with counter.phase("monitor"):
                    mon.epoch_end(epoch)
                with torch.no_grad():
                    acc = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
                with counter.phase("report"):
                    trial.report(acc, epoch)
                reports += 1
                with counter.phase("should_prune"):
                    pruned = trial.should_prune()
                if pruned:
                    raise optuna.TrialPruned()
        finally:
            with counter.phase("monitor"):
                mon.__exit__(None, None, None)
        return acc

    barrier.wait(timeout=300)
    study.optimize(objective, n_trials=n_trials)
    with open(out, "w") as f:
        json.dump({"statements": dict(counter.statements), "writes": dict(counter.writes),
                   "bytes": dict(counter.bytes),
                   "reports": reports}, f)


def _server_counters(url: str) -> dict[str, int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sqlalchemy.text(
                "SELECT xact_commit, tup_inserted, tup_updated, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint "
                "FROM pg_stat_database WHERE datname = current_database()")).one()
            return dict(zip(("xact_commit", "tup_inserted", "tup_updated", "wal_bytes"),
                            (int(v) for v in row)))
    finally:
        engine.dispose()


def measure(url: str, workers: int = 4, trials: int = 12, epochs: int = 3,
            steps: int = 34) -> StorageCost:
    """Run ``trials`` trials with ``workers`` processes on the study database ``url``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"bench-storage-{os.getpid()}-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=url, direction="maximize")
    per_worker = [trials // workers + (i < trials % workers) for i in range(workers)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        outs = [os.path.join(tmp, f"w{i}.json") for i in range(workers)]
        with one_omp_thread_in_children():
            procs = [ctx.Process(target=_worker, args=(url, name, n, epochs, steps, out,
                                                       barrier))
                     for n, out in zip(per_worker, outs)]
            for p in procs:
                p.start()
        barrier.wait(timeout=300)
        before = _server_counters(url)
        start = time.perf_counter()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - start
        after = _server_counters(url)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
        parts = []
        for out in outs:
            with open(out) as f:
                parts.append(json.load(f))
    statements: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    for part in parts:
        statements.update(part["statements"])
        writes.update(part["writes"])
        nbytes.update(part["bytes"])
    return StorageCost(workers, trials, epochs, steps, dict(statements), dict(writes),
                       dict(nbytes),
                       sum(p["reports"] for p in parts),
                       {k: after[k] - before[k] for k in after}, seconds)


def table(cost: StorageCost) -> str:
    """The markdown section for ``docs/results.md``."""
    rows = []
    for phase, what in (("monitor", "`TrialMonitor` (step, epoch_end, exit)"),
                        ("report", "`trial.report`"),
                        ("should_prune", "`trial.should_prune()` → `TEViDPruner.prune`"),
                        ("optuna", "Optuna ask/tell/suggest (per epoch, for scale)"),
                        ("heartbeat", "heartbeat thread (per epoch, for scale)")):
        n, w, b = cost.per_epoch(phase)
        rows.append(f"| {what} | {n:.2f} | {w:.2f} | {b:,.0f} |")
    epochs = max(cost.reports, 1)
    server = cost.server
    return "\n".join([
        "## Storage cost at scale: Optuna on PostgreSQL with TrialMonitor + TEViDPruner", "",
        (f"{cost.workers} worker processes, one study on PostgreSQL (`RDBStorage`, heartbeat "
         f"1 s), {cost.trials} trials of the digits CNN, up to {cost.epochs} epochs of "
         f"{cost.steps_per_epoch} steps ({cost.reports} trial epochs ran, "
         f"{cost.reports} `should_prune()` calls), monitor every 10 steps, history 16. "
         "SQL statements and bytes of bound parameters, counted by an SQLAlchemy listener in "
         "each worker, per trial epoch (= per `should_prune()` call):"), "",
        "| issued by | SQL statements / epoch | of which writes | parameter bytes / epoch |",
        "|---|---|---|---|",
        *rows, "",
        (f"Server side (`pg_stat_database`, WAL position) for the whole run: "
         f"{server.get('xact_commit', 0) / epochs:.1f} commits, "
         f"{(server.get('tup_inserted', 0) + server.get('tup_updated', 0)) / epochs:.1f} rows "
         f"written and {server.get('wal_bytes', 0) / epochs / 1024:.1f} KiB of WAL per trial "
         f"epoch (all sessions, heartbeats included); {cost.seconds:.0f} s wall time."),
    ])


def _throwaway_server() -> tuple[Any, str]:
    from experiments.postgres_server import INSTALL_HINT, PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(INSTALL_HINT)
    server = PostgresServer(bindir, __import__("pathlib").Path(
        tempfile.mkdtemp(prefix="tevid-pg-", dir="/tmp")))
    server.init()
    server.start()
    return server, server.create_database("bench")


def main(argv: list[str] | None = None) -> StorageCost:
    """Run the benchmark, print the table and write it to ``docs/results.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=34)
    parser.add_argument("--url", default=None, help="an existing PostgreSQL database")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave docs/results.md alone")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server, url = _throwaway_server()
    try:
        cost = measure(url, args.workers, args.trials, args.epochs, args.steps)
    finally:
        if server is not None:
            import shutil

            server.stop("immediate")
            shutil.rmtree(server.root, ignore_errors=True)
    body = table(cost)
    print(body)
    if not args.no_write:
        from experiments.report import write_section

        write_section("storage-cost", body, command="python -m experiments.bench_storage",
                      workers=args.workers, trials=args.trials, epochs=args.epochs,
                      steps=args.steps)
    return cost


if __name__ == "__main__":
    main()
