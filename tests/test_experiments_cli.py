"""The experiments' shared command line (experiments/cli.py): SIGTERM ends a command's process pools with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# A command that starts two spawn workers on long tasks, writes their pids, and is then
# SIGTERMed; without the handler the workers would keep running after the parent died.
_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from experiments.cli import sigterm_as_interrupt

    def work(path):
        open(path + f".{os.getpid()}", "w").close()
        time.sleep(2)
        return os.getpid()

    if __name__ == "__main__":
        out = sys.argv[1]
        with sigterm_as_interrupt():
            try:
                with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
                    list(pool.map(work, [out] * 8))
            except KeyboardInterrupt:
                open(out + ".interrupted", "w").close()
                raise
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_sigterm_stops_a_command_and_its_spawn_workers(tmp_path: Path) -> None:
    script = tmp_path / "cmd.py"
    script.write_text(_SCRIPT)
    out = str(tmp_path / "mark")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), out], env=env,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(tmp_path.glob("mark.[0-9]*"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    workers = [int(p.suffix[1:]) for p in tmp_path.glob("mark.[0-9]*")]
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert (tmp_path / "mark.interrupted").exists()   # the pool saw an interrupt, not a kill
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    # the queue was dropped: no more than the tasks running at the signal (and 2 more) ran
    assert len(list(tmp_path.glob("mark.[0-9]*"))) <= 4
