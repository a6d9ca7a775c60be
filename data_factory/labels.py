"""The diagnostic label set (paper Section 3, Appendix A).

Every package names labels through these constants, so a typo is an ``AttributeError``
instead of a silently unmatched string.

Example:
    >>> from data_factory.labels import LABELS, KNOWN_LABELS, PRIORITY
    >>> LABELS[-1]
    'Unknown'
    >>> PRIORITY[0]
    'Instability'
"""

from __future__ import annotations

HEALTHY = "Healthy"
OVERFITTING = "Overfitting"
INSTABILITY = "Instability"
FORGETTING = "Forgetting"
CONCEPT_BIAS = "ConceptBias"
UNKNOWN = "Unknown"

#: Classes the evidential head has an output for, in head order.
KNOWN_LABELS: tuple[str, ...] = (HEALTHY, OVERFITTING, INSTABILITY, FORGETTING, CONCEPT_BIAS)
#: Everything a diagnosis can say; ``Unknown`` is reached by abstention, not by a head output.
LABELS: tuple[str, ...] = KNOWN_LABELS + (UNKNOWN,)
#: Appendix A.1: acute, systemic failures outrank slower ones.
PRIORITY: tuple[str, ...] = (INSTABILITY, FORGETTING, CONCEPT_BIAS, OVERFITTING, HEALTHY)
