"""The factory corpus the trained baselines learn from: the full one if it is built, else a quick one.

The baselines that need training (Curve-TCN, Stats-GBDT, Stats-GBDT + curves; the unsupervised
detectors' validation choices) learn from factory runs only, never from external runs. When
``make corpus labels`` has been run (``~/.cache/tevid-hpo/corpus/labels.csv``) that corpus is
used. Otherwise a **quick corpus** is built once under ``~/.cache/tevid-hpo/external/factory-quick``:
12 runs of the default factory plan (:data:`QUICK_MIX`: healthy, instability and overfitting runs
of distinct architectures, one forgetting and one concept-bias run), 12 epochs, no Lyapunov probe, labelled by ``experiments.label`` exactly as the
full corpus is. It is smaller and shorter than the corpus the shipped checkpoint was trained on,
so the trained baselines are weaker than in ``make evaluate`` — the tables say which was used.
``python -m experiments.external --corpus DIR`` fits them on a given labelled corpus instead,
e.g. the one the shipped checkpoint learned from, so that both sides saw the same runs.

Example:
    >>> [s.split for s in quick_plan()][:1], len(quick_plan())
    (['train'], 12)
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from data_factory.runner import RunSpec as FactorySpec
from data_factory.runner import execute_run
from data_factory.store import RunStore

__all__ = ["FULL_CORPUS", "QUICK_CORPUS", "factory_corpus", "quick_plan"]

_CACHE = Path(os.environ.get("TEVID_CACHE", Path.home() / ".cache" / "tevid-hpo"))
#: The full corpus of ``make corpus labels``.
FULL_CORPUS = _CACHE / "corpus"
#: Where the quick corpus is built.
QUICK_CORPUS = _CACHE / "external" / "factory-quick"


#: Runs per intervention kind in the quick corpus, by split (distinct architectures first).
QUICK_MIX: dict[str, dict[str, int]] = {
    "train": {"healthy": 2, "instability": 2, "overfitting": 3, "forgetting": 1,
              "concept_bias": 1},
    "val": {"healthy": 1, "instability": 1, "overfitting": 1},
}


def quick_plan(mix: dict[str, dict[str, int]] | None = None) -> list[FactorySpec]:
    """The quick corpus's runs: from the default factory plan (one repeat, 12 epochs, no Lyapunov
    probe), per split and intervention kind the first runs of distinct architectures."""
    from experiments.factory import plan_corpus

    specs = plan_corpus(repeats={"train": 1, "val": 1}, splits=["train", "val"], epochs=12,
                        lyapunov_every=0)
    out = []
    for split, kinds in (mix or QUICK_MIX).items():
        for kind, n in kinds.items():
            pool = [s for s in specs if s.split == split and s.intervention == kind]
            seen: set[str] = set()
            picked = []
            for s in pool:                      # distinct architectures first, then the rest
                if s.arch not in seen and len(picked) < n:
                    picked.append(s)
                    seen.add(s.arch)
            picked += [s for s in pool if s not in picked][:n - len(picked)]
            out.extend(picked)
    return out


def factory_corpus(root: Path | None = None, build: bool = True, progress: bool = True,
                   given: Path | None = None) -> tuple[Path, str]:
    """``(corpus root, kind)`` with ``kind`` ``"full"``, ``"quick"`` or, for a labelled corpus
    ``given`` by the caller (e.g. the one the shipped checkpoint was trained on, so TEViD and
    the trained baselines learn from the same runs), its directory name; builds and labels the
    quick corpus (resumable, at ``root``) when no full one exists and ``build`` is true.

    Raises:
        FileNotFoundError: no labelled corpus and ``build`` is false, or ``given`` unlabelled.
    """
    if given is not None:
        given = Path(given).expanduser()
        if not (given / "labels.csv").is_file():
            raise FileNotFoundError(f"{given} has no labels.csv (python -m experiments.label "
                                    f"--root {given})")
        return given, given.name
    if root is None and (FULL_CORPUS / "labels.csv").is_file():
        return FULL_CORPUS, "full"
    root = root or QUICK_CORPUS
    if (root / "labels.csv").is_file():
        return root, "quick"
    if not build:
        raise FileNotFoundError(f"no labelled factory corpus at {FULL_CORPUS} or {root}")
    import torch

    from experiments.factory import corpus_index
    from experiments.label import label_corpus

    torch.set_num_threads(1)
    store = RunStore(root)
    for spec in tqdm(quick_plan(), desc="quick factory corpus", disable=not progress):
        if spec.run_id not in store:
            execute_run(spec, store)
    corpus_index(store).to_csv(root / "index.csv", index=False)
    label_corpus(root, workers=1, variants=False)
    return root, "quick"
