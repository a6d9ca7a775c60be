"""The ``postgres`` pytest fixture: a throwaway PostgreSQL server per test module
(:class:`experiments.postgres_server.PostgresServer`), torn down at the end.

Import the fixture into a test module (``from postgres_fixture import postgres``); tests that use
it skip, saying what to install, on a machine without the server binaries. ``.ci/run`` installs
them (Debian/Ubuntu package ``postgresql``), so CI always runs these tests.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.postgres_server import INSTALL_HINT, PostgresServer, _free_port, find_bindir


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the test module; skips when the binaries are missing."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(INSTALL_HINT)
    root = Path(tempfile.mkdtemp(prefix="tevid-pg-", dir="/tmp"))   # short: socket path limit
    server = PostgresServer(bindir, root)
    try:
        server.init()
        for attempt in range(3):   # the free port may be taken between probing and binding
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = _free_port()
                with open(server.datadir / "postgresql.conf", "a") as conf:
                    conf.write(f"\nport = {server.port}\n")
        yield server
    finally:
        try:
            if (server.datadir / "postmaster.pid").exists():
                server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
