"""A throwaway PostgreSQL server: ``initdb`` in a temporary directory, ``pg_ctl`` on a free
loopback port, stopped and removed by its owner.

Used by the storage benchmark (``python -m experiments.bench_storage``) and by the tests' fixture
(``tests/postgres_fixture.py``), so it lives here rather than under ``tests/`` (nothing in the
packages imports ``tests``). ``.ci/run`` installs the server binaries (Debian/Ubuntu package
``postgresql``).

PostgreSQL refuses to run as root. When run as root (CI containers do), the server runs as the
``postgres`` OS user that the ``postgresql`` package creates, or else as ``nobody``; its temporary
directory is created under ``/tmp`` and handed to that user. Durability settings are off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): a throwaway server never survives a
machine crash, and a clean ``pg_ctl restart`` loses nothing without them.

:func:`one_omp_thread_in_children` starts the benchmark's and the tests' worker processes, which
share the machine with the server, on one OpenMP thread each.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install them, e.g. "
                "`apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql` "
                "(macOS), or put their directory on PATH")
SUPERUSER = "tevid"


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version), else ``None``."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


@contextlib.contextmanager
def one_omp_thread_in_children() -> Iterator[None]:
    """``OMP_NUM_THREADS=1`` while the block starts worker processes; the old value (or its
    absence) is restored after.

    A spawned child inherits the environment at start and its OpenMP pool is sized when torch is
    imported, before the child's own code could lower it; several workers on a few cores each
    running one thread per core only fight over them.

    Example:
        >>> import os
        >>> before = os.environ.get("OMP_NUM_THREADS")
        >>> with one_omp_thread_in_children():
        ...     os.environ["OMP_NUM_THREADS"]
        '1'
        >>> os.environ.get("OMP_NUM_THREADS") == before
        True
    """
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_account() -> pwd.struct_passwd | None:
    """The OS user to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists: "
                       "PostgreSQL refuses to run as root")


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in ``root`` (data directory, Unix socket, log), on ``port``."""

    bindir: Path
    root: Path
    port: int = field(default_factory=_free_port)
    account: pwd.struct_passwd | None = field(default_factory=_server_account)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` over TCP on the loopback interface (trust auth)."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> str:
        kwargs = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid,
                      "extra_groups": []}
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "LC_ALL": "C"}, **kwargs)
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}"
                               f"{done.stderr}\n{log[-2000:]}")
        return done.stdout

    def init(self) -> None:
        """``initdb``: a new cluster with a trusted superuser ``tevid``, durability off."""
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 100\nshared_buffers = 16MB\n")

    def start(self) -> None:
        """``pg_ctl start``, waiting until the server accepts connections."""
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` (``fast``: disconnect clients, shut down cleanly)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: every open client connection is dropped."""
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-m", mode,
                  "-w", "-t", "60", "restart")

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URL."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)
