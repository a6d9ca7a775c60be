"""Parts of external-dev, so one part can train or calibrate and another judge.

external-dev grew in blocks: 58 written-out rows (v1–v3), which every checkpoint up to attempts
row 16 used as its transfer set (calibration and the run-memory choice), then blocks of 120
drawn rows each (v4–v7; :func:`experiments.external.suite._draw`), each drawn to judge
what the earlier ones' results informed. A change that *uses* dev runs — fine-tuning on them,
calibrating on more of them — is judged on a part it did not use. The parts, by the row index in
the run id (``external-dev-NN-…``):

==============  ==============================================================================
``all``         every dev run
``written``     rows 0–57 (the transfer set of rows 14 and 16)
``drawn``       rows 58–177 (the first drawn block, v4)
``drawn-even``  drawn rows with an even index
``drawn-odd``   drawn rows with an odd index
``drawn2``      rows 178–297 (the second drawn block, v5: drawn after rows 17–23 were judged on
                the first, to judge what those results informed)
``drawn3``      rows 298–417 (the third, v6: drawn after row 22 was judged on ``drawn2``)
``drawn4``      rows 418–537 (the fourth, v7: drawn after row 24 was judged on ``drawn3``)
``pool``        the external-train pool (:data:`experiments.external.suite.POOL`), not a dev
                part: families, data and optimizers of neither half, only ever trained on
==============  ==============================================================================

Parts join with ``+`` (``written+drawn-even``: every dev run but the odd drawn ones), and
``@families`` keeps a part's runs of those model families only (``drawn@mlp,lstm``), so runs
of some families can train and another family's runs judge.
External-test has no parts: nothing may use it (:class:`experiments.evaluate.LeakageGuard`).

:mod:`experiments.external.part_scores` scores a checkpoint on one part
(``python -m experiments.external.part_scores --checkpoint CKPT --part drawn-odd``). This module
imports nothing of the evaluation, so the pipeline can select its transfer runs with it.

Example:
    >>> in_part("external-dev-07-mlp-digits-lr_jump-6d87fafc843d", "written")
    True
    >>> [in_part(f"external-dev-{i}-mlp-digits-healthy", "drawn-odd") for i in (58, 59, 177, 179)]
    [False, True, True, False]
    >>> [in_part(f"external-dev-{i}-mlp-digits-healthy", "drawn2") for i in (177, 178)]
    [False, True]
    >>> in_part("external-test-03-mlp_norm-wine-healthy", "all")
    False
    >>> [in_part(f"external-dev-{i}-mlp-digits-healthy", "written+drawn-even") for i in (3, 58, 59)]
    [True, True, False]
    >>> [in_part(f"external-dev-60-{f}-x-healthy", "drawn@mlp,lstm") for f in ("mlp", "mixer")]
    [True, False]
    >>> [in_part(r, "pool") for r in ("external-train-03-tcn-chirps-healthy", "external-dev-03-mlp-x-healthy")]
    [True, False]
"""

from __future__ import annotations

import re

from experiments.external.suite import DEV_HALF, POOL_HALF

__all__ = ["DRAWN_BLOCKS", "PARTS", "WRITTEN_ROWS", "in_part", "uses_pool"]

#: external-dev's rows before the drawn block.
WRITTEN_ROWS = 58
#: The drawn blocks' rows ``[first, end)`` by part name.
DRAWN_BLOCKS: dict[str, tuple[int, int]] = {"drawn": (58, 178), "drawn2": (178, 298),
                                            "drawn3": (298, 418), "drawn4": (418, 538)}
#: The parts :func:`in_part` knows.
PARTS: tuple[str, ...] = ("all", "written", "drawn", "drawn-even", "drawn-odd", "drawn2",
                          "drawn3", "drawn4", "pool")
_ROW = re.compile(rf"^({DEV_HALF}|{POOL_HALF})-(\d+)-")


def uses_pool(part: str) -> bool:
    """Whether ``part`` names the external-train pool (its recordings must then be read too).

    Example:
        >>> uses_pool("written+pool@tcn"), uses_pool("drawn")
        (True, False)
    """
    return any(p.partition("@")[0] == "pool" for p in part.split("+"))


def in_part(run_id: str, part: str) -> bool:
    """Whether the external-dev run ``run_id`` belongs to ``part`` — one of :data:`PARTS` or
    several joined with ``+`` (any other run: never).

    Raises:
        ValueError: for an unknown part.
    """
    names = part.split("+")
    bad = [p for p in names if p.partition("@")[0] not in PARTS]
    if bad:
        raise ValueError(f"unknown external-dev part {bad[0]!r}; choose from {list(PARTS)}, "
                         "joined with '+', each optionally @family,family")
    if len(names) > 1:
        return any(in_part(run_id, p) for p in names)
    part, _, families = part.partition("@")
    m = _ROW.match(run_id)
    if m is None or (m.group(1) == POOL_HALF) != (part == "pool"):
        return False
    if families and run_id.split("-")[3] not in families.split(","):
        return False
    row = int(m.group(2))
    if part in ("all", "pool"):
        return True
    if part == "written":
        return row < WRITTEN_ROWS
    first, end = DRAWN_BLOCKS[part.removesuffix("-even").removesuffix("-odd")]
    parity = {"drawn-even": 0, "drawn-odd": 1}.get(part)
    return first <= row < end and (parity is None or row % 2 == parity)
