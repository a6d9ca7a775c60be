"""tevid-hpo: diagnosis-driven pruning for hyperparameter search and NAS.

Example:
    >>> from tevid_hpo import LABELS, CostModel
    >>> LABELS[-1], CostModel().c_md
    ('Unknown', 10.0)
"""

from data_factory.labels import LABELS
from data_factory.privacy import DPTelemetry
from tevid_hpo._optuna_private import fail_trials_without_heartbeat
from tevid_hpo.cost import CostModel
from tevid_hpo.diagnostician import Diagnosis, Diagnostician
from tevid_hpo.monitor import TrialMonitor
from tevid_hpo.pruners import TEViDPruner, prune_reason

__all__ = ["LABELS", "CostModel", "DPTelemetry", "Diagnosis", "Diagnostician", "TEViDPruner",
           "TrialMonitor", "fail_trials_without_heartbeat", "prune_reason"]
__version__ = "0.1.0"
