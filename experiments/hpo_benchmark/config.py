"""The benchmark's configuration: ``conf/hpo_benchmark.yaml``, overrides and the quick profile,
and the names the report and command line use.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.cli import CONF

COMMAND = "python -m experiments.hpo_benchmark"
#: The section of docs/results.md this experiment owns.
SECTION = "hpo-benchmark"
FIGURE = "hpo_benchmark.png"
#: Epochs per trial vs best validation accuracy, every arm (docs/figures/ with write_results).
PARETO_FIGURE = "hpo_pareto.png"


def _say(msg: str) -> None:
    print(f"[hpo_benchmark] {msg}", flush=True)


def load_config(overrides: Sequence[str] = (), quick: bool | None = None) -> DictConfig:
    """The benchmark's configuration without Hydra: ``conf/hpo_benchmark.yaml`` plus overrides.

    Args:
        overrides: ``key=value`` strings as on the command line (``seeds=[0,1]``,
            ``ray.enabled=false``).
        quick: apply ``quick_profile`` (``None``: as the ``quick`` key says after overrides);
            keys named in ``overrides`` keep the overridden value.

    Example:
        >>> cfg = load_config(["n_trials=5"], quick=True)
        >>> cfg.quick, cfg.n_trials, cfg.problem.max_epochs
        (True, 5, 3)
    """
    cfg = OmegaConf.load(CONF / "hpo_benchmark.yaml")
    cfg.pop("hydra", None)
    args = list(overrides)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args))
    if quick is not None:
        cfg.quick = bool(quick)
    cfg = apply_task(cfg, args)
    if cfg.quick:
        cfg = apply_quick(cfg, _override_keys(args))
    return cfg


def apply_task(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with ``tasks[task]`` merged into ``problem`` (unchanged when ``task`` is null);
    ``problem.*`` keys in ``overrides`` keep the overridden value.

    Example:
        >>> cfg = load_config(["task=gru_text", "problem.warmup_epochs=1"])
        >>> cfg.problem.arch, cfg.problem.schedule, cfg.problem.warmup_epochs
        ('gru', 'warmup_cosine', 1)
        >>> load_config(["task=nope"])
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'nope'; choose from ['gn_cnn_gratings', 'gru_text', 'transformer_text']
    """
    name = cfg.get("task")
    if not name:
        return cfg
    tasks = cfg.get("tasks") or {}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(tasks)}")
    out = copy.deepcopy(cfg)
    out.problem = OmegaConf.merge(cfg.problem, tasks[name])
    mine = [a for a in overrides if a.lstrip("+~").startswith("problem.") and "=" in a]
    return OmegaConf.merge(out, OmegaConf.from_dotlist([a.lstrip("+~") for a in mine])) \
        if mine else out


def _override_keys(args: Sequence[str]) -> list[str]:
    return [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_quick(cfg: DictConfig, keep: Sequence[str] = ()) -> DictConfig:
    """``cfg`` with ``quick_profile`` applied, except keys in ``keep`` (user overrides win).

    Example:
        >>> cfg = OmegaConf.create({"n_trials": 48, "seeds": [0, 1, 2],
        ...                         "quick_profile": {"n_trials": 4, "seeds": [0]}})
        >>> q = apply_quick(cfg, keep=["seeds"])
        >>> q.n_trials, list(q.seeds)
        (4, [0, 1, 2])
    """
    out = copy.deepcopy(cfg)
    profile = OmegaConf.to_container(cfg.get("quick_profile") or {}, resolve=False)
    for key, value in _flatten(profile).items():   # type: ignore[arg-type]
        if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keep):
            continue
        OmegaConf.update(out, key, value, force_add=True)
    out.quick = True
    return out
