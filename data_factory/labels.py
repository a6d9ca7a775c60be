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


def is_healthy_reference(label: str, intervention: str | None) -> bool:
    """Whether a run may serve as a *healthy reference* when false-alarm rates are budgeted.

    A false alarm is an alert on a run that is healthy. A run the Appendix A rules label Healthy
    although the factory injected a fault into it (an overfitting run whose validation loss
    stayed just under the practical-significance gap, say) is not a clean negative: the fault
    is there, only below the rule's threshold. Counting alerts on such runs as false alarms sets
    every alert threshold by the most anomalous-looking of them, so operating points are chosen
    on runs that are Healthy by label *and* by intent (``intervention`` ``"healthy"``, or
    ``None`` when the run has no factory metadata, e.g. a user's run).

    Example:
        >>> is_healthy_reference("Healthy", "healthy"), is_healthy_reference("Healthy", None)
        (True, True)
        >>> is_healthy_reference("Healthy", "overfitting"), is_healthy_reference("Overfitting", "healthy")
        (False, False)
    """
    return label == HEALTHY and intervention in (None, "healthy")


def sets_operating_points(label: str, intervention: str | None) -> bool:
    """Whether a validation run may take part in choosing alert thresholds: every anomalous run,
    and the Healthy runs that are healthy references (:func:`is_healthy_reference`).

    Example:
        >>> [sets_operating_points(lab, iv) for lab, iv in
        ...  [("Instability", "instability"), ("Healthy", "healthy"), ("Healthy", "overfitting")]]
        [True, True, False]
    """
    return label != HEALTHY or is_healthy_reference(label, intervention)
