"""docs/results.md sections: replaced in place, and concurrent writers keep each other's sections."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from experiments.report import write_section


def _write_many(args: tuple[str, str]) -> None:
    name, path = args
    for i in range(20):
        write_section(name, f"{name} body {i}", command=f"python -m {name}", path=Path(path))


def test_section_is_replaced_in_place(tmp_path):
    doc = tmp_path / "results.md"
    write_section("a", "first", command="x", path=doc)
    write_section("b", "other", command="y", path=doc)
    write_section("a", "second", command="x", seed=3, path=doc)
    text = doc.read_text()
    assert text.count("<!-- BEGIN a -->") == 1 and "second" in text and "first" not in text
    assert text.index("BEGIN a") < text.index("BEGIN b") and "seed=3" in text


def test_concurrent_writers_keep_every_section(tmp_path):
    doc = tmp_path / "results.md"
    names = [f"exp{i}" for i in range(4)]
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_write_many, [(n, str(doc)) for n in names]))
    text = doc.read_text()
    for n in names:
        assert text.count(f"<!-- BEGIN {n} -->") == 1 and f"{n} body 19" in text
