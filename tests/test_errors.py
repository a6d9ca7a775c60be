"""Where a user can go wrong, the error says what is wrong and what to do (issue 22, point 3).

Each test provokes one misuse and asserts the message, not just the exception type: a message
that stopped naming the file, the argument or the way out would fail here.
"""

from __future__ import annotations

import json
import pkgutil
import warnings

import optuna
import pytest
import torch

from core_models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from tevid_hpo.diagnostician import Diagnostician

optuna.logging.set_verbosity(optuna.logging.WARNING)
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def untrained() -> Diagnostician:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "untrained model"
        return Diagnostician.from_pretrained("tiny", device="cpu")


@pytest.fixture
def saved(untrained, tmp_path):
    """A good checkpoint's two files: ``(weights, config)``."""
    weights = untrained.save_pretrained(tmp_path / "mine")
    return weights, weights.with_suffix(".json")


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("keep", [0.5, 0.999, 8])
def test_a_truncated_checkpoint_names_the_file_and_how_to_get_a_good_one(saved, keep):
    weights, _ = saved
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(CheckpointError) as info:
        Diagnostician.from_pretrained(weights, device="cpu")
    message = str(info.value)
    assert message.startswith(f"{weights}: truncated or corrupt safetensors file")
    assert "make pipeline" in message and "from_pretrained() without a path" in message
    assert info.value.path == weights
    assert isinstance(info.value, ValueError)   # callers that caught ValueError still do


@pytest.mark.parametrize(("text", "problem"), [
    ('{"format": "tevid-hpo-checkpoint/1", "kind": ', "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"format": "something-else/9"}', "unsupported checkpoint format 'something-else/9'"),
])
def test_a_garbled_config_names_the_json_file(saved, text, problem):
    weights, config = saved
    config.write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{config}: {problem}.*make pipeline"):
        Diagnostician.from_pretrained(weights, device="cpu")


def test_a_config_that_does_not_describe_the_weights_names_the_json_file(saved):
    weights, config = saved
    cfg = json.loads(config.read_text())
    cfg["profile"]["depth"] += 1
    tensors, _ = load_checkpoint(weights)
    save_checkpoint(weights, tensors, cfg)   # a consistent pair, of the wrong architecture
    with pytest.raises(CheckpointError, match=rf"^{config}: does not describe a loadable TEViD "
                                              r"\(RuntimeError: .*make pipeline"):
        Diagnostician.from_pretrained(weights, device="cpu")


def test_a_checkpoint_of_another_kind_says_what_it_is(saved):
    weights, config = saved
    cfg = json.loads(config.read_text())
    cfg["kind"] = "dynamics-mae"
    save_checkpoint(weights, load_checkpoint(weights)[0], cfg)
    with pytest.raises(CheckpointError, match=r"a 'dynamics-mae' checkpoint, not a TEViD one"):
        Diagnostician.from_pretrained(weights, device="cpu")


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*nothing"
                                                r"\.safetensors.*make pipeline.*profile name"):
        Diagnostician.from_pretrained(tmp_path / "nothing", device="cpu")


def test_a_path_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="name_or_path must be None, a path or a profile name, "
                                        "got int"):
        Diagnostician.from_pretrained(3)


# ---------------------------------------------------------------------- devices
@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.filterwarnings("ignore:Diagnostician.from_pretrained")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_cuda_says_so_and_suggests_auto(saved, device):
    message = r"CUDA is not available on this machine.*device='auto'"
    with pytest.raises(ValueError, match=message):
        Diagnostician.from_pretrained(saved[0], device=device)
    with pytest.raises(ValueError, match=message):
        Diagnostician.from_pretrained("tiny", device=device)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_a_trial_monitor_asked_for_cuda_without_cuda_says_so():
    from data_factory.architectures import small_cnn
    from tevid_hpo.monitor import TrialMonitor

    with pytest.raises(ValueError, match=r"CUDA is not available.*device='auto'"):
        TrialMonitor(small_cnn(in_channels=1), device="cuda")


@pytest.mark.parametrize(("device", "error", "message"), [
    ("gpu", ValueError, r"device: unknown device string 'gpu'; use 'auto', 'cpu', 'cuda'"),
    ("cuda:x", ValueError, r"unknown device string 'cuda:x'"),
    (0, TypeError, (r"device must be a string such as 'auto', 'cpu' or 'cuda', or a "
                    r"torch.device; got int")),
])
def test_unknown_devices_list_the_allowed_ones(device, error, message):
    with pytest.raises(error, match=message):
        resolve_device(device)


def test_auto_and_cpu_always_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------- multi-objective
def test_a_monitor_in_a_multi_objective_study_with_a_tevid_pruner_fails_at_once(untrained):
    from data_factory.architectures import small_cnn
    from tevid_hpo.monitor import TrialMonitor
    from tevid_hpo.pruners import TEViDPruner

    study = optuna.create_study(directions=["minimize", "minimize"],
                                pruner=TEViDPruner(wrapped=None))
    trial = study.ask()
    with pytest.raises(ValueError, match=r"TEViDPruner cannot serve a multi-objective study "
                                         r"\(2 directions\): Optuna cannot report intermediate"):
        TrialMonitor(small_cnn(in_channels=1), trial, diagnostician=untrained)
    # Without a TEViD pruner the monitor is a plain recorder, also in a multi-objective study.
    other = optuna.create_study(directions=["minimize", "minimize"])
    TrialMonitor(small_cnn(in_channels=1), other.ask(), diagnostician=untrained)


# ---------------------------------------------------------------------- constructors
@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"calibration": "strict"}, TypeError, "calibration must be a core_models.calibration"),
    ({"labels": "Healthy"}, ValueError, "labels must be distinct non-empty class names"),
    ({"labels": ("A", "A", "B", "C", "D")}, ValueError, "labels must be distinct"),
    ({"labels": ("A", "B")}, ValueError, "2 labels for a head with 5 outputs"),
    ({"cal": {"temperature": 0.0}}, ValueError,
     r"calibration.temperature must be a finite number > 0, got 0.0"),
    ({"cal": {"tau_u": 1.5}}, ValueError, r"calibration.tau_u must be in \(0, 1\] .*, got 1.5"),
    ({"cal": {"tau_c": {"Instability": -0.1}}}, ValueError,
     r"calibration.tau_c\['Instability'\] must be a probability in \[0, 1\], got -0.1"),
    ({"cal": {"consecutive": 0}}, ValueError, "calibration.consecutive must be >= 1, got 0"),
    ({"cal": {"memory": -1}}, ValueError, "calibration.memory must be >= 0"),
])
def test_diagnostician_arguments_are_validated(untrained, kwargs, error, message):
    from core_models.calibration import Calibration

    kwargs = dict(kwargs)
    if "cal" in kwargs:
        kwargs["calibration"] = Calibration(**kwargs.pop("cal"))
    with pytest.raises(error, match=message):
        Diagnostician(untrained.model, device="cpu", **kwargs)


def test_diagnostician_needs_a_tevid_model():
    with pytest.raises(TypeError, match="model must be a core_models.tevid.TEViD, got Linear"):
        Diagnostician(torch.nn.Linear(2, 2))


#: Misuse of the constructors that need no fixture: ``{"module:Class": [(kwargs, error,
#: message), ...]}``, one parametrised test over all of them.
BAD_ARGUMENTS = {
    "tevid_hpo.pruners:TEViDPruner": [
        ({"wrapped": "median"}, ValueError, "wrapped must be a BasePruner, None or 'hyperband'"),
        ({"wrapped": 3}, TypeError, "wrapped must be an optuna BasePruner or None"),
        ({"prune_on": ("Healthy",)}, ValueError,
         r"prune_on must name labels from .* \(not Healthy\)"),
        ({"prune_on": ()}, ValueError, "prune_on must name labels from"),
        ({"cost": "cheap"}, TypeError, "cost must be a CostModel or None"),
        ({"min_confidence": 2.0}, ValueError, r"min_confidence must lie in \[0, 1\], got 2.0"),
        ({"max_resource": 0}, ValueError, "max_resource must be None or an int >= 1, got 0"),
        ({"max_resource": 2.5}, ValueError, "max_resource must be None or an int >= 1, got 2.5"),
    ],
    "tevid_hpo.cost:CostModel": [
        ({"c_fa": -1.0}, ValueError, "c_fa must be >= 0, got -1.0"),
        ({"c_md": float("nan")}, ValueError, "c_md"),
        ({"c_lead": 0.5}, ValueError, r"c_lead must be <= 0 \(a positive value would reward late"),
    ],
    "tevid_hpo.lightgbm:FeatureImportanceFrames": [
        ({"frame_size": 1}, ValueError, (r"frame_size must be an int >= 2 \(a diagnostician's "
                                        r"profile.frame_size\), got 1")),
        ({"frame_size": 16.0}, ValueError, "frame_size must be an int >= 2"),
        ({"layout": "spiral"}, ValueError, "layout must be 'grid' or 'pad', got 'spiral'"),
        ({"clip": 0}, ValueError, "clip must be a finite number > 0, got 0"),
    ],
}


@pytest.mark.parametrize(("constructor", "kwargs", "error", "message"),
                         [(c, *case) for c, cases in BAD_ARGUMENTS.items() for case in cases])
def test_constructor_arguments_are_validated(constructor, kwargs, error, message):
    with pytest.raises(error, match=message):
        pkgutil.resolve_name(constructor)(**kwargs)


@pytest.mark.parametrize("every", [0, -5, 2.5, True])
def test_monitor_cadence_is_validated(untrained, every):
    from data_factory.architectures import small_cnn
    from tevid_hpo.monitor import TrialMonitor

    with pytest.raises(ValueError, match=rf"every must be None \(the diagnostician's cadence\) "
                                         rf"or an int >= 1, got {every!r}"):
        TrialMonitor(small_cnn(in_channels=1), every=every, diagnostician=untrained)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"diagnostician": 3}, TypeError, (r"diagnostician must be a Diagnostician \(or have its "
                                      r"update/reset\) or a checkpoint path, got int")),
    ({"every": 0}, ValueError, "every must be an int >= 1, got 0"),
    ({"history_size": 1.5}, ValueError, "history_size must be an int >= 1, got 1.5"),
    ({"prune_on": ("Healthy",)}, ValueError, "prune_on must name labels"),
])
def test_lightgbm_callback_arguments_are_validated(untrained, kwargs, error, message):
    from tevid_hpo.lightgbm import TEViDLightGBMCallback

    kwargs = {"diagnostician": untrained, **kwargs}
    with pytest.raises(error, match=message):
        TEViDLightGBMCallback(**kwargs)


def _smac_function(config, seed=0, budget=1, *, tevid):
    return 0.0


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"worst_cost": float("inf")}, ValueError, "worst_cost must be a finite number, got inf"),
    ({"diagnostician": 3}, TypeError, ("diagnostician must be a Diagnostician, a checkpoint path "
                                      "or None, got int")),
    ({"max_budget": 0}, ValueError, "max_budget must be None or a finite number > 0, got 0"),
    ({"monitor_kwargs": ["every"]}, TypeError, ("monitor_kwargs must be a mapping of "
                                               "TrialMonitor arguments, got list")),
    ({"monitor_kwargs": {"evry": 5}}, TypeError, (r"monitor_kwargs has unknown TrialMonitor "
                                                 r"arguments \['evry'\]; allowed: .*'every'")),
    ({"prune_on": "Healthy"}, ValueError, "prune_on must name labels"),
    ({"min_confidence": -0.5}, ValueError, r"min_confidence must lie in \[0, 1\]"),
])
def test_smac_target_arguments_are_validated(untrained, kwargs, error, message):
    from tevid_hpo.smac import TEViDTarget

    kwargs = {"worst_cost": 1.0, "diagnostician": untrained, **kwargs}
    with pytest.raises(error, match=message):
        TEViDTarget(_smac_function, **kwargs)
    with pytest.raises(TypeError, match="the target function must accept a keyword argument "
                                        "'tevid'"):
        TEViDTarget(lambda config: 0.0, worst_cost=1.0, diagnostician=untrained)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "maximize"}, "mode must be 'min', 'max' or None, got 'maximize'"),
    ({"max_t": 0}, r"max_t must be an int >= 1 \(in time_attr units\), got 0"),
    ({"max_t": 9.5}, "max_t must be an int >= 1"),
    ({"reduction_factor": 1}, "reduction_factor must be a number > 1, got 1"),
    ({"prune_on": ("Healthy",)}, "prune_on must name labels"),
    ({"min_confidence": 3}, r"min_confidence must lie in \[0, 1\]"),
])
def test_ray_hyperband_arguments_are_validated(kwargs, message):
    from tevid_hpo.ray import TEViDHyperband

    with pytest.raises(ValueError, match=message):
        TEViDHyperband(metric="acc", **{"mode": "max", **kwargs})


def test_ray_scheduler_arguments_are_validated():
    from tevid_hpo.cost import CostModel
    from tevid_hpo.ray import TEViDScheduler

    with pytest.raises(TypeError, match="base must be a ray.tune TrialScheduler"):
        TEViDScheduler(base="asha")
    with pytest.raises(ValueError, match="the cost rule needs the trial budget: pass max_t"):
        TEViDScheduler(cost=CostModel())
    with pytest.raises(ValueError, match="max_t must be None or a number > 0, got -3"):
        TEViDScheduler(max_t=-3)


def test_nas_hook_arguments_are_validated(untrained):
    from tevid_hpo.nas import TEViDHook

    with pytest.raises(ValueError, match="prune_on must name labels"):
        TEViDHook(untrained, prune_on=("Healthy",))
    with pytest.raises(TypeError, match="cost must be a CostModel or None"):
        TEViDHook(untrained, cost=1.0)
