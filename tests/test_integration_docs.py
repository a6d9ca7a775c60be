"""The runnable examples of the integration pages (docs/lightning.md, transformers.md,
dashboard.md, loggers.md) run as written.

Every ```` ```python ```` block of a page runs, in order, in one namespace, in a temporary working
directory; ``diagnostician`` is the suite's toy diagnostician (the pages say so). Blocks fenced
otherwise (```` ```bash ````) are shell commands and are not run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
PAGES = {"lightning.md": ["Instability"], "transformers.md": ["tevid/label"],
         "dashboard.md": ["PRUNED"], "loggers.md": ["(0, "]}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", sorted(PAGES))
def test_integration_page_examples_run(page, toy_diagnostician, tmp_path, monkeypatch):
    code = blocks(page)
    assert code, f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {"diagnostician": toy_diagnostician, "__name__": f"docs_{page[:-3]}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, source in enumerate(code):
            exec(compile(source, f"{DOCS / page}:block{i}", "exec"), namespace)  # noqa: S102
    printed = out.getvalue()
    for expected in PAGES[page]:
        assert expected in printed, printed
    assert os.getcwd() == str(tmp_path)
